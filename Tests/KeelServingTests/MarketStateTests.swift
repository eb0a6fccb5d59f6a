import KeelAPI
import KeelPortfolio
import Testing

@testable import KeelServing

@Suite("Market state: analysed series")
struct MarketStateTests {
    static func updates(_ id: String, prices: [Double]) -> [Keel_V1_PriceUpdate] {
        prices.enumerated().map { day, price in
            .with {
                $0.instrumentID = id
                $0.price = price
                $0.timeUnixNanos = Int64(day + 1) * MarketState.nanosPerDay
            }
        }
    }

    @Test("the batch lookup answers as the single one, nil for unknown and skipped instruments")
    func batchMatchesSingle() {
        let market = MarketState()
        _ = market.apply(Self.updates("A", prices: [100, 101, 99, 102]) + Self.updates("B", prices: [50, 49]))
        let batch = market.analysedSeries(for: ["A", nil, "Z", "B"])
        #expect(batch.count == 4)
        #expect(batch[1] == nil && batch[2] == nil)
        for (k, id) in [(0, "A"), (3, "B")] {
            let single = market.analysedSeries(for: id)
            #expect(batch[k]?.series.prices == single?.series.prices)
            #expect(batch[k]?.latestPrice == single?.latestPrice && batch[k]?.latestTime == single?.latestTime)
        }
        #expect(batch[0]?.series.prices == [100, 101, 99, 102])
        #expect(batch[0]?.series.returns.count == 3)
        // A new price replaces the cached analysis.
        _ = market.apply(Self.updates("A", prices: [100, 101, 99, 102, 104]))
        #expect(market.analysedSeries(for: ["A"])[0]?.series.prices.last == 104)
    }
}
