import Foundation
import KeelPortfolio
import Testing
@testable import KeelResearch

@Suite("Direct-indexing tax-alpha backtest")
struct DirectIndexingTests {
    /// Daily rows from 2021-01-04, one per calendar day.
    static func data(_ columns: [[Double]], names: [String]? = nil) throws -> MarketData {
        let rows = columns[0].count, n = columns.count
        var prices = [Double](repeating: 0, count: rows * n)
        for r in 0..<rows { for i in 0..<n { prices[r * n + i] = columns[i][r] } }
        let start = CivilDay.parse("2021-01-04")!
        return try MarketData(name: "synthetic", assets: names ?? (0..<n).map { "S\($0)" }, prices: prices,
                              dates: (0..<rows).map { CivilDay.iso(start + $0) })
    }

    static func config(monthly: Double = 0) -> DirectIndexingConfig {
        var c = DirectIndexingConfig()
        c.monthlyContribution = monthly
        return c
    }

    // MARK: - US netting

    @Test(arguments: [
        // (ST, LT, carry ST, carry LT) → (tax, carry ST, carry LT)
        ([-5000.0, 0, 0, 0], [-1110.0, 2000, 0]),          // capped at 3,000 of ordinary income
        ([-1000, 4000, 0, 0], [600, 0, 0]),                 // the net long-term gain at 20 %
        ([4000, -1000, 0, 0], [1110, 0, 0]),                // the net short-term gain at 37 %
        ([1000, -5000, 0, 0], [-1110, 0, 1000]),            // a net long-term loss keeps its character
        ([500, 0, 2000, 0], [-555, 0, 0]),                  // the carry-forward offsets this year's gain first
        ([-2000, -2000, 0, 0], [-1110, 0, 1000]),           // short-term losses go against income first
        ([0, 0, 0, 0], [0, 0, 0]),
    ])
    func netting(_ input: [Double], _ expected: [Double]) {
        let s = DirectIndexing.settle(shortTerm: input[0], longTerm: input[1], carryShortTerm: input[2],
                                      carryLongTerm: input[3], config: DirectIndexingConfig())
        #expect(abs(s.tax - expected[0]) < 1e-9 && abs(s.carryShortTerm - expected[1]) < 1e-9
            && abs(s.carryLongTerm - expected[2]) < 1e-9, "\(s)")
    }

    @Test func unlimitedOutsideGainsUseEveryLossAtTheLongTermRate() {
        var c = DirectIndexingConfig()
        c.unlimitedOutsideGains = true
        let s = DirectIndexing.settle(shortTerm: -5000, longTerm: 0, carryShortTerm: 0, carryLongTerm: 0, config: c)
        #expect(abs(s.tax + 1000) < 1e-9 && s.carryShortTerm == 0 && s.carryLongTerm == 0)
    }

    // MARK: - Runs

    /// S0 falls 20 % on day 40 and stays there; S1 is flat.
    @Test func oneDropIsHarvestedSavedAndCarriedForward() throws {
        let rows = 500
        let s0 = (0..<rows).map { $0 < 40 ? 100.0 : 80.0 }, s1 = [Double](repeating: 50, count: rows)
        let r = try DirectIndexing.run(Self.data([s0, s1]), config: Self.config())
        #expect(r.harvests == 1)
        #expect(abs(r.lossesHarvested.shortTerm - 10_000) < 1e-6 && r.lossesHarvested.longTerm == 0)
        // 2021 (settled on the first row of 2022): 3,000 of income at 37 %, 7,000 carried.
        #expect(r.savingsByYear.map(\.year) == [2021])
        #expect(abs(r.savingsByYear[0].saving - 1110) < 1e-6)
        // 2022 settles with the liquidation: 3,000 more; 4,000 is left unused.
        #expect(abs(r.carryForwardAtEnd - 4000) < 1e-6)
        // Back in S0 after 31 days: the holdings match; the 2021 saving was reinvested.
        #expect(abs(r.finalValue.harvesting - r.finalValue.baseline - 1110) < 1e-6)
        // The baseline realises the same loss at liquidation and offsets 3,000 of it then:
        // harvesting is ahead by the one extra year of offset.
        #expect(abs(r.afterTaxValue.baseline - 91_110) < 1e-6)
        #expect(abs(r.afterTaxValue.harvesting - 92_220) < 1e-6)
        #expect(r.taxAlpha > 0 && r.trackingError == 0)
        #expect(r.washSaleViolations == 0)
    }

    @Test func risingPricesGiveIdenticalAccounts() throws {
        let rows = 400
        let a = (0..<rows).map { 10 * pow(1.001, Double($0)) }, b = (0..<rows).map { 20 * pow(1.0005, Double($0)) }
        let r = try DirectIndexing.run(Self.data([a, b]), config: Self.config(monthly: 500))
        #expect(r.harvests == 0)
        #expect(r.finalValue.harvesting == r.finalValue.baseline)
        #expect(r.afterTaxValue.harvesting == r.afterTaxValue.baseline && r.taxAlpha == 0)
        #expect(r.trackingError == 0 && r.trades.baseline == r.trades.harvesting)
    }

    /// Random walks with monthly contributions: many harvests, every one
    /// clear of purchases 30 days either side by the independent audit.
    @Test func randomWalksHarvestWithoutWashSales() throws {
        var rng = SplitMix64(seed: 21)
        let rows = 1200
        var columns: [[Double]] = []
        for i in 0..<6 {
            var p = 50.0
            columns.append((0..<rows).map { k in
                p *= exp(0.02 * rng.normal())
                return i == 5 && k < 100 ? .nan : p
            })
        }
        let r = try DirectIndexing.run(Self.data(columns), config: Self.config(monthly: 1000))
        #expect(r.harvests > 10)
        #expect(r.washSaleViolations == 0)
        #expect(r.lossesHarvested.shortTerm > 0)
        #expect(r.contributed == 100_000 + 1000 * 39)   // Jan 2021 .. Apr 2024: 39 new months
        #expect(r.trackingError > 0 && r.trackingError < 0.2)
    }

    /// Nothing is listed for the first 10 rows: both the account and a
    /// backtest open at the first listing.
    @Test func windowsOpenAtTheFirstListing() throws {
        let a = (0..<100).map { $0 < 10 ? Double.nan : 100 + Double($0) }
        let b = (0..<100).map { $0 < 20 ? Double.nan : 50 + Double($0) }
        let d = try Self.data([a, b])
        let r = try DirectIndexing.run(d, config: Self.config())
        #expect(r.firstDate == CivilDay.iso(CivilDay.parse("2021-01-04")! + 10))
        var ucrp = CalendarRebalance(every: 1)
        let bt = try Backtester.run(&ucrp, data: d)
        #expect(bt.firstRow == 10 && bt.lastRow == 99)
        var late = DirectIndexingConfig()
        late.fromRow = 99
        #expect(throws: ResearchError.self) { try DirectIndexing.run(d, config: late) }
    }

    @Test func theAuditFindsAConstructedViolation() {
        let sales: [(asset: Int, day: Int, lots: Set<Int>)] = [(0, 100, [1]), (1, 100, [2])]
        let purchases: [(asset: Int, day: Int, lot: Int)] = [(0, 60, 1), (0, 125, 7), (1, 60, 2), (1, 131, 8)]
        // Asset 0 is bought back on day 125, within 30 days; asset 1 on day 131, outside; the sold lots' own purchases do not count.
        #expect(DirectIndexing.washSaleViolations(sales: sales, purchases: purchases) == 1)
        #expect(DirectIndexing.washSaleViolations(sales: sales, purchases: [(1, 75, 9)]) == 1)
        #expect(DirectIndexing.washSaleViolations(sales: sales, purchases: [(1, 69, 9)]) == 0)
    }

    @Test func badInputIsAClearError() throws {
        let undated = try MarketData(name: "u", assets: ["A"], prices: [1, 2, 3])
        #expect(throws: ResearchError.self) { try DirectIndexing.run(undated, config: DirectIndexingConfig()) }
        let d = try Self.data([[1, 2, 3]])
        var c = DirectIndexingConfig()
        c.monthlyContribution = -5
        #expect(throws: ResearchError(.invalidArgument, "--monthly must be within 0...1e12")) {
            try DirectIndexing.run(d, config: c)
        }
        c = DirectIndexingConfig()
        c.shortTermRate = 1.5
        #expect(throws: ResearchError(.invalidArgument, "--short-term-rate must be within 0...1")) {
            try DirectIndexing.run(d, config: c)
        }
        c = DirectIndexingConfig()
        c.fromRow = 2
        #expect(throws: ResearchError(.invalidArgument, "the window rows 2...2 hold fewer than two rows with a listed asset")) {
            try DirectIndexing.run(d, config: c)
        }
    }
}
