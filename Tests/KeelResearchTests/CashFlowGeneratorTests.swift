import Testing
@testable import KeelResearch

@Suite("Cash-flow calendar")
struct CashFlowCalendarTests {
    typealias C = CashFlowCalendar

    @Test func knownDates() {
        #expect(C.dayNumber(year: 1970, month: 1, day: 1) == 0)
        #expect(C.weekday(0) == 3)                                        // Thursday
        #expect(C.dayNumber(year: 2010, month: 1, day: 1) == 14_610)
        #expect(C.weekday(14_610) == 4)                                   // Friday
        #expect(C.dayNumber(year: 2000, month: 3, day: 1) == 11_017)
        #expect(C.dayNumber(year: 1969, month: 12, day: 31) == -1)
        #expect(C.dayNumber(year: 1900, month: 1, day: 1) == -25_567)
        #expect(C.weekday(-25_567) == 0)                                  // 1900-01-01, a Monday
        #expect(C.dayNumber(year: 2024, month: 2, day: 29) == 19_782)
        #expect(C.weekday(19_782) == 3)                                   // 2024-02-29, a Thursday
        #expect(C.validDayNumber(year: 2024, month: 2, day: 29) == 19_782)
        #expect(C.validDayNumber(year: 2023, month: 2, day: 29) == nil)
        #expect(C.validDayNumber(year: 1900, month: 2, day: 29) == nil)
        #expect(C.validDayNumber(year: 2000, month: 2, day: 29) != nil)
        #expect(C.validDayNumber(year: 2024, month: 13, day: 1) == nil)
        #expect(C.validDayNumber(year: 2024, month: 4, day: 31) == nil)
        #expect(C.civil(14_610) == (2010, 1, 1))
        #expect(C.civil(19_782) == (2024, 2, 29))
        #expect(C.civil(-1) == (1969, 12, 31))
        #expect(C.addMonths(year: 2010, month: 1, -1) == (2009, 12))
        #expect(C.addMonths(year: 2010, month: 12, 1) == (2011, 1))
        #expect(C.addMonths(year: 2010, month: 3, -27) == (2007, 12))
    }

    /// Every day from 1900-01-01 to 2100-12-31, walked with an independent
    /// date counter: both directions agree and weekdays cycle.
    @Test func roundTrip1900To2100() {
        var (y, m, d) = (1900, 1, 1)
        var n = C.dayNumber(year: 1900, month: 1, day: 1)
        var weekday = C.weekday(n)
        var mismatches = 0
        while y <= 2100 {
            if C.dayNumber(year: y, month: m, day: d) != n || C.civil(n) != (y, m, d) || C.weekday(n) != weekday {
                mismatches += 1
            }
            d += 1
            if d > C.daysInMonth(year: y, month: m) {
                d = 1
                m += 1
                if m > 12 { m = 1; y += 1 }
            }
            n += 1
            weekday = (weekday + 1) % 7
        }
        #expect(mismatches == 0)
        #expect(n == C.dayNumber(year: 2101, month: 1, day: 1))
        #expect(n - C.dayNumber(year: 1900, month: 1, day: 1) == 73_414)   // 201 years, 49 leap days
    }

    @Test func daysInMonthAndLeapYears() {
        #expect(C.daysInMonth(year: 2024, month: 2) == 29)
        #expect(C.daysInMonth(year: 2023, month: 2) == 28)
        #expect(C.daysInMonth(year: 1900, month: 2) == 28)
        #expect(C.daysInMonth(year: 2000, month: 2) == 29)
        #expect([1, 3, 5, 7, 8, 10, 12].allSatisfy { C.daysInMonth(year: 2010, month: $0) == 31 })
        #expect([4, 6, 9, 11].allSatisfy { C.daysInMonth(year: 2010, month: $0) == 30 })
    }

    /// (year, month, first business day, last business day).
    @Test(arguments: [
        (2010, 1, 1, 29),    // Fri 1 Jan; 30/31 Jan are Sat/Sun
        (2010, 5, 3, 31),    // Sat 1 May → Mon 3; Mon 31 May
        (2024, 2, 1, 29),    // Thu 1 Feb; Thu 29 Feb
        (2024, 6, 3, 28),    // Sat 1 Jun → Mon 3; Sun 30 → Fri 28
        (2025, 8, 1, 29),    // Fri 1 Aug; Sun 31 → Fri 29
    ])
    func businessDaysOfMonth(year: Int, month: Int, first: Int, last: Int) {
        let firstDay = C.firstBusinessDay(year: year, month: month)
        let lastDay = C.lastBusinessDay(year: year, month: month)
        #expect(C.civil(firstDay) == (year, month, first))
        #expect(C.civil(lastDay) == (year, month, last))
        #expect(C.isBusinessDay(firstDay) && C.isBusinessDay(lastDay))
        let mid = C.dayNumber(year: year, month: month, day: 15)
        #expect(C.firstBusinessDay(ofMonthOf: mid) == firstDay)
        #expect(C.lastBusinessDay(ofMonthOf: mid) == lastDay)
    }

    @Test func businessDayMoves() {
        let saturday = C.dayNumber(year: 2010, month: 1, day: 2)
        #expect(C.weekday(saturday) == 5 && !C.isBusinessDay(saturday))
        #expect(C.nextBusinessDay(onOrAfter: saturday) == saturday + 2)
        #expect(C.previousBusinessDay(onOrBefore: saturday) == saturday - 1)
        #expect(C.nextBusinessDay(onOrAfter: saturday - 1) == saturday - 1)
    }
}

@Suite("Synthetic cash-flow generator")
struct CashFlowGeneratorTests {
    typealias C = CashFlowCalendar
    static let threeYears = 3 * 365 + 1

    @Test(arguments: AccountKind.allCases, [1, 42, 20_261_121] as [UInt64])
    func deterministicForASeed(kind: AccountKind, seed: UInt64) {
        let a = CashFlowGenerator.account(kind: kind, seed: seed, days: 400)
        let b = CashFlowGenerator.account(kind: kind, seed: seed, days: 400)
        #expect(a.flows == b.flows)
        #expect(a.scheduled == b.scheduled)
        #expect(a.value == b.value)
        #expect(a.kind == kind && a.seed == seed && a.firstDay == 14_610 && a.days == 400)
        #expect(a.scheduled.count == 400)
        // A longer series starts with the shorter one.
        let longer = CashFlowGenerator.account(kind: kind, seed: seed, days: 900)
        #expect(Array(longer.flows.prefix(400)) == a.flows)
        #expect(Array(longer.scheduled.prefix(400)) == a.scheduled)
    }

    @Test(arguments: AccountKind.allCases)
    func differentSeedsDiffer(kind: AccountKind) {
        let accounts = (1...6).map { CashFlowGenerator.account(kind: kind, seed: UInt64($0), days: 365) }
        for i in 0..<accounts.count {
            for j in (i + 1)..<accounts.count {
                #expect(accounts[i].flows != accounts[j].flows)
                #expect(accounts[i].value != accounts[j].value)
            }
        }
        // Another start day gives another series.
        let shifted = CashFlowGenerator.account(kind: kind, seed: 1, firstDay: 14_611, days: 365)
        #expect(shifted.flows != accounts[0].flows)
    }

    @Test(arguments: AccountKind.allCases, [3, 77] as [UInt64])
    func finiteAndQuietOnWeekends(kind: AccountKind, seed: UInt64) {
        let a = CashFlowGenerator.account(kind: kind, seed: seed, days: Self.threeYears)
        #expect(a.flows.allSatisfy(\.isFinite) && a.scheduled.allSatisfy(\.isFinite))
        #expect(a.value.isFinite && a.value > 0)
        var weekendFlows = 0, businessDaysWithFlows = 0
        for k in 0..<a.days {
            if C.isBusinessDay(a.firstDay + k) {
                if a.flows[k] != 0 { businessDaysWithFlows += 1 }
            } else if a.flows[k] != 0 || a.scheduled[k] != 0 {
                weekendFlows += 1
            }
        }
        #expect(weekendFlows == 0)
        #expect(businessDaysWithFlows > 100)
    }

    /// Benefits (out) on every month's first business day, contributions
    /// (in) on its last; other business days are small next to either.
    @Test(arguments: [5, 6, 1234] as [UInt64])
    func pensionCalendar(seed: UInt64) {
        let a = CashFlowGenerator.account(kind: .pension, seed: seed, firstDay: 14_610, days: Self.threeYears)
        let v = a.value
        var months = 0
        var (y, m) = (2010, 1)
        while C.lastBusinessDay(year: y, month: m) < a.firstDay + a.days {
            let first = C.firstBusinessDay(year: y, month: m) - a.firstDay
            let last = C.lastBusinessDay(year: y, month: m) - a.firstDay
            #expect(a.flows[first] < -0.003 * v, "benefits on the first business day of \(y)-\(m)")
            #expect(a.flows[last] > 0.002 * v, "contributions on the last business day of \(y)-\(m)")
            months += 1
            (y, m) = C.addMonths(year: y, month: m, 1)
        }
        #expect(months == 36)
        // Quarterly dividends on 15 Mar 2010 (a Monday) and 15 Jun 2010 (a Tuesday).
        for day in [C.dayNumber(year: 2010, month: 3, day: 15), C.dayNumber(year: 2010, month: 6, day: 15)] {
            #expect(a.flows[day - a.firstDay] > 0.002 * v)
        }
        // Days with no calendar event carry noise and the fee only.
        let p = CashFlowGenerator.PensionParameters.draw(seed: seed)
        #expect(p.value == v)
        for k in 0..<a.days where C.isBusinessDay(a.firstDay + k) {
            let d = a.firstDay + k
            let (yy, mm, _) = C.civil(d)
            let event = d == C.firstBusinessDay(year: yy, month: mm) || d == C.lastBusinessDay(year: yy, month: mm)
                || (mm % 3 == 0 && d == C.nextBusinessDay(onOrAfter: C.dayNumber(year: yy, month: mm, day: 15)))
            if !event { #expect(abs(a.flows[k]) < 0.0012 * v) }
        }
    }

    /// Deposits on the account's paydays: the 1st and 15th (moved back to a
    /// business day) or every second Friday; no deposit-sized inflow on
    /// other days.
    @Test(arguments: Array(UInt64(1)...UInt64(8)))
    func retailPaydays(seed: UInt64) {
        let a = CashFlowGenerator.account(kind: .retail, seed: seed, days: 730)
        let p = CashFlowGenerator.RetailParameters.draw(seed: seed)
        #expect(p.value == a.value)
        let range = a.firstDay..<(a.firstDay + a.days)
        // The paydays, built independently of `isPayday`.
        var expected = Set<Int>()
        switch p.payday {
        case .semiMonthly:
            var (y, m) = (2009, 12)
            while (y, m) != (2012, 3) {
                for dom in [1, 15] {
                    var d = C.dayNumber(year: y, month: m, day: dom)
                    while C.weekday(d) >= 5 { d -= 1 }
                    if range.contains(d) { expected.insert(d) }
                }
                (y, m) = C.addMonths(year: y, month: m, 1)
            }
            #expect(expected.count == 49)   // 24 months × 2, and 1 Jan 2012 (a Sunday) moved to Fri 30 Dec 2011
        case .biweeklyFriday(let phase):
            // Day 1 (1970-01-02) is a Friday in week 0 of the cycle.
            var d = 1 + 7 * phase
            while d < a.firstDay { d += 14 }
            while d < range.upperBound { expected.insert(d); d += 14 }
            #expect((52...53).contains(expected.count))
        }
        let found = Set(range.filter { C.isBusinessDay($0) && p.isPayday($0) })
        #expect(found == expected)
        let deposit = a.value * p.paydayRate
        #expect(deposit >= 0.0049 * a.value && deposit <= 0.0201 * a.value)
        var positivePaydays = 0
        for d in range where C.isBusinessDay(d) {
            let x = a.flows[d - a.firstDay]
            if expected.contains(d) {
                // A deposit, at most a dividend (0.275 % of value), less any outflows.
                #expect(x <= deposit * 1.02 + 0.00275 * a.value + 0.01)
                if x > 0 { positivePaydays += 1 }
            } else {
                // Only dividends come in on other days.
                #expect(x <= 0.00275 * a.value + 0.01)
            }
        }
        #expect(positivePaydays * 2 > expected.count)
    }

    /// About 2 lump sums per year for pension funds (±2–10 % of value),
    /// about 1 large withdrawal per year for retail accounts (5–20 %).
    @Test(arguments: AccountKind.allCases)
    func scheduledLumpSums(kind: AccountKind) {
        let accounts = (0..<30).map { CashFlowGenerator.account(kind: kind, seed: 1000 + UInt64($0), days: Self.threeYears) }
        var count = 0, inflows = 0
        for a in accounts {
            for x in a.scheduled where x != 0 {
                count += 1
                if x > 0 { inflows += 1 }
                let share = abs(x) / a.value
                switch kind {
                case .pension: #expect(share >= 0.0199 && share <= 0.1001)
                case .retail: #expect(share >= 0.0499 && share <= 0.2001 && x < 0)
                }
            }
        }
        let perYear = Double(count) / (Double(accounts.count) * 3)
        switch kind {
        case .pension:
            #expect(perYear > 1.5 && perYear < 2.5, "pension lump sums per year: \(perYear)")
            #expect(inflows > count / 4 && inflows < 3 * count / 4)
        case .retail:
            #expect(perYear > 0.6 && perYear < 1.4, "retail large withdrawals per year: \(perYear)")
        }
    }

    @Test func valueRangesAndPopulation() {
        let population = CashFlowGenerator.population(count: 60, seed: 9, days: 60)
        #expect(population.count == 60)
        #expect(Set(population.map(\.seed)).count == 60)
        for (i, a) in population.enumerated() {
            #expect(a.kind == (i % 2 == 0 ? .pension : .retail))
            #expect(a.days == 60 && a.firstDay == 14_610)
            switch a.kind {
            case .pension: #expect(a.value >= 50e6 && a.value <= 500e6)
            case .retail: #expect(a.value >= 20e3 && a.value <= 2e6)
            }
        }
        let again = CashFlowGenerator.population(count: 60, seed: 9, days: 60)
        #expect(zip(population, again).allSatisfy { $0.seed == $1.seed && $0.flows == $1.flows })
        #expect(CashFlowGenerator.population(count: 0, seed: 9, days: 60).isEmpty)
        #expect(CashFlowGenerator.account(kind: .retail, seed: 1, days: 0).days == 0)
        // Both payday schemes occur.
        let schemes = (1...40).map { CashFlowGenerator.RetailParameters.draw(seed: UInt64($0)).payday == .semiMonthly }
        #expect(schemes.contains(true) && schemes.contains(false))
    }

    /// Retail spending: about 3–8 irregular withdrawals per month.
    @Test func retailWithdrawalRate() {
        var withdrawals = 0.0, expected = 0.0
        for seed in UInt64(1)...UInt64(20) {
            let a = CashFlowGenerator.account(kind: .retail, seed: seed, days: 365)
            let p = CashFlowGenerator.RetailParameters.draw(seed: seed)
            #expect((3...8).contains(p.withdrawalsPerMonth))
            expected += p.withdrawalsPerMonth * 12
            for k in 0..<a.days where a.flows[k] < 0 {
                let d = a.firstDay + k
                if !p.isStandingOrderDay(d) && !p.isPayday(d) { withdrawals += 1 }
            }
        }
        // Paydays and standing-order days are excluded above, so a little under.
        #expect(withdrawals > 0.75 * expected && withdrawals < 1.1 * expected)
    }
}

@Suite("Liquidity baselines and metrics")
struct LiquidityBaselineTests {
    typealias C = CashFlowCalendar
    typealias Forecast = [(p5: Double, p50: Double, p95: Double)]

    @Test func pinballOfAPerfectForecastIsZero() {
        let actual = [3.0, -7.5, 0, 1e6]
        let perfect: Forecast = actual.map { ($0, $0, $0) }
        #expect(ForecastMetrics.pinball(perfect, actual: actual) == 0)
        #expect(ForecastMetrics.coverage(perfect, actual: actual) == 1)
    }

    @Test func pinballByHand() {
        #expect(ForecastMetrics.pinball(quantile: 0.05, forecast: 0, actual: 30) == 0.05 * 30)
        #expect(abs(ForecastMetrics.pinball(quantile: 0.95, forecast: 20, actual: 5) - 0.75) < 1e-12)   // (1 − 0.95) · 15
        #expect(ForecastMetrics.pinball(quantile: 0.5, forecast: 10, actual: 10) == 0)
        // Day 1: actual 30 above all three: 0.05·30 + 0.5·20 + 0.95·10 = 1.5 + 10 + 9.5 = 21.
        // Day 2: actual 5: 0.05·5 + 0.5·5 + 0.05·15 = 0.25 + 2.5 + 0.75 = 3.5.
        let forecast: Forecast = [(0, 10, 20), (0, 10, 20)]
        let loss = ForecastMetrics.pinball(forecast, actual: [30, 5])
        #expect(abs(loss - 24.5 / 6) < 1e-12)
        #expect(abs(ForecastMetrics.pinball([(0, 10, 20)], actual: [30]) - 7) < 1e-12)
        #expect(ForecastMetrics.pinball([], actual: []) == 0)
    }

    @Test func coverageCounts() {
        let forecast: Forecast = Array(repeating: (0, 5, 10), count: 5)
        #expect(ForecastMetrics.coverage(forecast, actual: [-1, 0, 5, 10, 11]) == 0.6)   // bounds count as inside
        #expect(ForecastMetrics.coverage(forecast, actual: [1, 2, 3, 4, 5]) == 1)
        #expect(ForecastMetrics.coverage(forecast, actual: [20, 20, 20, 20, -20]) == 0)
        #expect(ForecastMetrics.coverage([], actual: []) == 0)
    }

    /// A series that repeats every month in the business calendar: −100 on
    /// the first business day, +250 on the last, 3 on other business days,
    /// −1 on weekends. Seasonal naive forecasts it exactly, for horizons
    /// beyond a month too.
    @Test(arguments: [14_610, 15_000, 19_700], [1, 30, 90])
    func seasonalNaiveOnAMonthlyPeriodicSeries(firstDay: Int, horizon: Int) {
        let total = 500
        let series = (0..<total).map { k -> Double in
            let d = firstDay + k
            if !C.isBusinessDay(d) { return -1 }
            if d == C.firstBusinessDay(ofMonthOf: d) { return -100 }
            if d == C.lastBusinessDay(ofMonthOf: d) { return 250 }
            return 3
        }
        for originIndex in [60, 200, 400 - horizon] {
            let history = Array(series[0...originIndex])
            let actual = Array(series[(originIndex + 1)...(originIndex + horizon)])
            let forecast = LiquidityBaselines.seasonalNaive(history: history, firstDay: firstDay, horizon: horizon)
            #expect(forecast.count == horizon)
            #expect(ForecastMetrics.pinball(forecast, actual: actual) == 0)
            #expect(zip(forecast, actual).allSatisfy { $0.p5 == $1 && $0.p50 == $1 && $0.p95 == $1 })
        }
    }

    /// The matching day keeps business-day status and the month's first and
    /// last business days.
    @Test func seasonalNaiveMatchingDays() {
        // 2010-05-03 (Mon, first business day of May) ← 2010-04-01 (Thu).
        #expect(LiquidityBaselines.matchingDay(of: C.dayNumber(year: 2010, month: 5, day: 3), monthsBack: 1)
            == C.dayNumber(year: 2010, month: 4, day: 1))
        // 2010-04-30 (Fri, last) ← 2010-03-31 (Wed, last).
        #expect(LiquidityBaselines.matchingDay(of: C.dayNumber(year: 2010, month: 4, day: 30), monthsBack: 1)
            == C.dayNumber(year: 2010, month: 3, day: 31))
        // 2010-03-31 (Wed, last business day) ← 2010-02-26 (Fri, last; the clamped 28th is a Sunday).
        #expect(LiquidityBaselines.matchingDay(of: C.dayNumber(year: 2010, month: 3, day: 31), monthsBack: 1)
            == C.dayNumber(year: 2010, month: 2, day: 26))
        // 2010-06-14 (Mon) ← 2010-05-14 (Fri), same day of month.
        #expect(LiquidityBaselines.matchingDay(of: C.dayNumber(year: 2010, month: 6, day: 14), monthsBack: 1)
            == C.dayNumber(year: 2010, month: 5, day: 14))
        // 2010-06-16 (Wed) ← 2010-05-16 is a Sunday: nearest business day, the earlier on ties: Fri 14 (2 days)
        // vs Mon 17 (1 day) → 17.
        #expect(LiquidityBaselines.matchingDay(of: C.dayNumber(year: 2010, month: 6, day: 16), monthsBack: 1)
            == C.dayNumber(year: 2010, month: 5, day: 17))
        // 2010-06-12 (Sat) ← 2010-05-12 (Wed): nearest weekend day, Sat 15 (3) vs Sun 9 (3): the earlier, 9.
        #expect(LiquidityBaselines.matchingDay(of: C.dayNumber(year: 2010, month: 6, day: 12), monthsBack: 1)
            == C.dayNumber(year: 2010, month: 5, day: 9))
        // Across a year.
        #expect(LiquidityBaselines.matchingDay(of: C.dayNumber(year: 2010, month: 1, day: 20), monthsBack: 1)
            == C.dayNumber(year: 2009, month: 12, day: 21))   // Sun 20 Dec 2009 ← a Wednesday target → Mon 21
    }

    @Test func constantSeriesIsForecastExactlyByBoth() {
        let history = [Double](repeating: 42, count: 200)
        let actual = [Double](repeating: 42, count: 30)
        let naive = LiquidityBaselines.seasonalNaive(history: history, firstDay: 14_610, horizon: 30)
        let smooth = LiquidityBaselines.exponentialSmoothing(history: history, firstDay: 14_610, horizon: 30)
        #expect(ForecastMetrics.pinball(naive, actual: actual) == 0)
        #expect(ForecastMetrics.pinball(smooth, actual: actual) < 1e-9)
    }

    /// A pure weekday pattern: exponential smoothing learns it.
    @Test func exponentialSmoothingLearnsWeekdays() {
        let firstDay = 14_610
        let pattern = [10.0, 20, 30, 40, 50, 0, 0]
        let series = (0..<400).map { pattern[C.weekday(firstDay + $0)] }
        let forecast = LiquidityBaselines.exponentialSmoothing(history: Array(series[0..<380]), firstDay: firstDay,
                                                               horizon: 20)
        for h in 0..<20 { #expect(abs(forecast[h].p50 - series[380 + h]) < 1e-6) }
    }

    @Test(arguments: [0, 1, 7, 27, 28, 29, 45])
    func shortOrEmptyHistories(length: Int) {
        let history = (0..<length).map { Double($0 % 5) - 2 }
        for horizon in [1, 30, 90] {
            for forecast in [LiquidityBaselines.seasonalNaive(history: history, firstDay: 14_610, horizon: horizon),
                             LiquidityBaselines.exponentialSmoothing(history: history, firstDay: 14_610, horizon: horizon)]
            {
                #expect(forecast.count == horizon)
                #expect(forecast.allSatisfy { $0.p5.isFinite && $0.p50.isFinite && $0.p95.isFinite })
                if length == 0 { #expect(forecast.allSatisfy { $0 == (0, 0, 0) }) }
            }
        }
        #expect(LiquidityBaselines.seasonalNaive(history: history, firstDay: 14_610, horizon: 0).isEmpty)
        #expect(LiquidityBaselines.exponentialSmoothing(history: history, firstDay: 14_610, horizon: -3).isEmpty)
        let odd = [Double.nan, .infinity, 1, -.infinity]
        #expect(LiquidityBaselines.seasonalNaive(history: odd, firstDay: 0, horizon: 5).allSatisfy { $0.p50.isFinite })
        #expect(LiquidityBaselines.exponentialSmoothing(history: odd, firstDay: 0, horizon: 5)
            .allSatisfy { $0.p5.isFinite && $0.p95.isFinite })
    }

    /// On generated accounts both baselines give ordered, finite quantiles.
    @Test(arguments: AccountKind.allCases)
    func baselinesOnSyntheticAccounts(kind: AccountKind) {
        let a = CashFlowGenerator.account(kind: kind, seed: 31, days: 500)
        let history = Array(a.flows[0..<400])
        let actual = Array(a.flows[400..<490])
        for forecast in [LiquidityBaselines.seasonalNaive(history: history, firstDay: a.firstDay, horizon: 90),
                         LiquidityBaselines.exponentialSmoothing(history: history, firstDay: a.firstDay, horizon: 90)]
        {
            #expect(forecast.count == 90)
            #expect(forecast.allSatisfy { $0.p5 <= $0.p50 && $0.p50 <= $0.p95 && $0.p95.isFinite && $0.p5.isFinite })
            let loss = ForecastMetrics.pinball(forecast, actual: actual)
            #expect(loss.isFinite && loss > 0)
            let coverage = ForecastMetrics.coverage(forecast, actual: actual)
            #expect(coverage >= 0 && coverage <= 1)
        }
    }
}
