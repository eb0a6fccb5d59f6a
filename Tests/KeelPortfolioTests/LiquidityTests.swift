import Testing
@testable import KeelPortfolio

@Suite("Liquidity: calendar, features and the cash buffer")
struct LiquidityTests {
    @Test(arguments: [
        ("1970-01-01", 0, 3), ("2010-01-01", 14_610, 4), ("2024-02-29", 19_782, 3), ("2000-03-01", 11_017, 2),
        ("1969-12-31", -1, 2), ("2100-12-31", 47_846, 4),
    ])
    func knownDates(iso: String, day: Int, weekday: Int) {
        #expect(CivilDay.parse(iso) == day)
        #expect(CivilDay.iso(day) == iso)
        #expect(CivilDay.weekday(day) == weekday)
    }

    @Test func roundTripsAndRejects() {
        for n in stride(from: -30_000, through: 60_000, by: 97) {
            let (y, m, d) = CivilDay.date(n)
            #expect(CivilDay.day(year: y, month: m, day: d) == n)
            #expect(CivilDay.parse(CivilDay.iso(n)) == n)
        }
        for bad in ["2023-02-29", "2024-13-01", "2024-00-10", "2024-1-01", "20240101", "abcd-ef-gh", ""] {
            #expect(CivilDay.parse(bad) == nil, "\(bad)")
        }
    }

    @Test func businessDaysOfAMonth() {
        let june = CivilDay.parse("2024-06-10")!
        #expect(CivilDay.iso(CivilDay.firstBusinessDay(ofMonthOf: june)) == "2024-06-03")
        #expect(CivilDay.iso(CivilDay.lastBusinessDay(ofMonthOf: june)) == "2024-06-28")
        #expect(CivilDay.iso(CivilDay.midMonthBusinessDay(ofMonthOf: june)) == "2024-06-14")
        #expect(!CivilDay.isBusinessDay(CivilDay.parse("2024-06-15")!))
    }

    @Test func normalQuantiles() {
        #expect(abs(LiquidityPlanner.normalQuantile(0.95) - 1.6448536269514722) < 1e-8)
        #expect(abs(LiquidityPlanner.normalQuantile(0.5)) < 1e-12)
        #expect(abs(LiquidityPlanner.normalQuantile(0.01) + 2.3263478740408408) < 1e-8)
        #expect(abs(LiquidityPlanner.normalQuantile(0.999) - 3.090232306167813) < 1e-7)
    }

    @Test func bufferCoversCumulativeOutflows() {
        func path(_ flows: [Double], spread: Double = 0) -> [LiquidityDay] {
            flows.enumerated().map { LiquidityDay(day: $0.offset, p5: $0.element - spread, p50: $0.element,
                                                  p95: $0.element + spread, scheduled: 0) }
        }
        #expect(abs(LiquidityPlanner.buffer(path([-10, -10, -10]), confidence: 0.95) - 30) < 1e-12)
        #expect(LiquidityPlanner.buffer(path([5, 5, 5]), confidence: 0.95) == 0)
        #expect(abs(LiquidityPlanner.buffer(path([-10, 50, -10]), confidence: 0.95) - 10) < 1e-12)
        let wide = path([Double](repeating: 0, count: 30), spread: 10)
        let b95 = LiquidityPlanner.buffer(wide, confidence: 0.95), b99 = LiquidityPlanner.buffer(wide, confidence: 0.99)
        // σ per day = 20 / 3.29; 30 days: σ√30 × 1.645 = 10√30.
        #expect(abs(b95 - 10 * 30.0.squareRoot()) < 1e-6)
        #expect(b99 > b95)
    }

    @Test func pathSortsQuantilesAndAddsScheduledFlows() {
        let p = LiquidityPlanner.path(quantiles: [3, 1, 2, -1, 0, 1], firstForecastDay: 10, scale: 100,
                                      scheduled: [0, -50])
        #expect(p.map(\.p5) == [100, -150] && p.map(\.p50) == [200, -50] && p.map(\.p95) == [300, 50])
        #expect(p.map(\.day) == [10, 11] && p[1].scheduled == -50)
    }

    /// Features are scale-free, calendar-aware and one row per day.
    @Test func featureRows() {
        let first = CivilDay.parse("2024-01-01")!
        var history: [Double] = []
        for d in first..<(first + 400) {
            history.append(d == CivilDay.firstBusinessDay(ofMonthOf: d) ? -500 : (CivilDay.isBusinessDay(d) ? 20 : 0))
        }
        let scale = LiquidityFeatures.scale(history)
        let rows = LiquidityFeatures.rows(history: history, firstDay: first, horizon: 40, scale: scale)
        let w = LiquidityFeatures.count
        #expect(rows.count == 40 * w)
        let big = LiquidityFeatures.rows(history: history.map { $0 * 1000 }, firstDay: first, horizon: 40,
                                         scale: LiquidityFeatures.scale(history.map { $0 * 1000 }))
        #expect(zip(rows, big).allSatisfy { abs($0 - $1) < 1e-4 })
        let origin = first + 399
        let names = LiquidityFeatures.names
        for h in 1...40 {
            let d = origin + h
            let row = Array(rows[((h - 1) * w)..<(h * w)])
            #expect(row[names.firstIndex(of: "horizon")!] == Float(h) / 90)
            let isFirst = d == CivilDay.firstBusinessDay(ofMonthOf: d)
            #expect(row[names.firstIndex(of: "first_business_day")!] == (isFirst ? 1 : 0))
            if isFirst { #expect(abs(Double(row[names.firstIndex(of: "mean_first_business_day")!]) + 500 / scale) < 1e-4) }
        }
        #expect(LiquidityFeatures.mismatch(names) == nil)
        #expect(LiquidityFeatures.mismatch(["a"]) != nil)
        #expect(LiquidityFeatures.rows(history: [], firstDay: 0, horizon: 5, scale: 1).allSatisfy { $0 == 0 })
    }
}
