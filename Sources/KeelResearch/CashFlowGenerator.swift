import KeelPortfolio
// Synthetic daily cash flows of pension funds and retail accounts, two
// forecasting baselines and the forecast metrics of `keel train liquidity`.
//
// THE DATA IS SYNTHETIC. Every flow below is made up by a seeded random
// generator following the rules listed here; no real account data is used
// or imitated record by record. The rules aim at the shape of real flows
// (calendar-driven lumps, noise, rare announced transfers), not at any
// particular fund or customer.
//
// Days are integers: days since 1970-01-01 (day 0, a Thursday), proleptic
// Gregorian calendar. Business days are Monday to Friday; there is no
// holiday calendar. "d → next business day" means d itself when it is a
// business day, else the following Monday ("previous business day": the
// preceding Friday).
//
// Determinism: `CashFlowGenerator.account(kind:seed:firstDay:days:)` is a
// pure function of (kind, seed, firstDay, days). Every component draws
// from its own SplitMix64 stream (`SplitMix64.derived(seed, kindTag,
// component)`), day by day and only for days inside the range, so a longer
// series starts with exactly the shorter one (prefix property).
// `population(count:seed:days:firstDay:)` alternates pension (even index)
// and retail (odd index) accounts; account i's seed is
// `SplitMix64.derived(seed, i, 0xACC7).next()`.
//
// Notation: U[a, b] is uniform on [a, b); LU[a, b] is log-uniform (uniform
// in log); N(0, σ) is normal; V is the account's value; t is the time since
// `firstDay` in years (days / 365.25). Parameters marked "per account" are
// drawn once from the account's seed; "per event" noise is drawn for each
// payment. Every day's total is rounded to cents. `flows` holds the flows
// NOT known in advance, `scheduled` the lump sums announced ahead (the two
// never hold the same event). Positive = cash in, negative = cash out.
//
// Pension fund (`AccountKind.pension`)
//   value V                   LU[50e6, 500e6] per account
//   contributions (+)         on the LAST business day of every month:
//                             V · c · (1 + g_c)^t · (1 + U[−0.10, 0.10]),
//                             c ~ U[0.003, 0.008], g_c ~ U[0, 0.03] per year
//   benefit payments (−)      on the FIRST business day of every month:
//                             V · b · (1 + g_b)^t · (1 + U[−0.01, 0.01]),
//                             b ~ U[0.004, 0.010], drift g_b ~ U[−0.01, 0.03] per year
//   dividends (+)             15th → next business day of Mar, Jun, Sep, Dec:
//                             V · q · (1 + U[−0.15, 0.15]), q ~ U[0.003, 0.006]
//   management fee (−)        10th → next business day of every month:
//                             V · f, f ~ U[0.00008, 0.00012] (≈ 0.01 %), fixed amount
//   daily noise (±)           every business day: N(0, V · s), s ~ U[0.00002, 0.0001]
//   lump sums (±, scheduled)  each business day with probability 2 / 261
//                             (≈ 2 per year, Poisson-like): V · U[0.02, 0.10],
//                             transfer in or out with probability 1/2 each
//
// Retail account (`AccountKind.retail`)
//   value V                   LU[20e3, 2e6] per account
//   payday scheme             per account, probability 1/2 each:
//                             semi-monthly: the 1st and the 15th, each → previous
//                               business day (so the 1st may fall at the end of
//                               the previous month);
//                             bi-weekly: every second Friday (Fridays d with
//                               floor((d − 1) / 7) mod 2 = phase, phase ∈ {0, 1})
//   payday deposits (+)       V · p · (1 + U[−0.02, 0.02]), p ~ U[0.005, 0.02];
//                             monthly income I = V · p · (2 semi-monthly | 26/12 bi-weekly)
//   standing order (−)        day of month D ~ {1…28} → next business day, every
//                             month: I · r, r ~ U[0.25, 0.40], fixed amount
//   irregular withdrawals (−) each business day with probability λ / 21.75,
//                             λ ~ U[3, 8] per month; lognormal amounts
//                             exp(μ + σ·N(0, 1)) with σ ~ U[0.6, 1.0] and mean
//                             e^(μ + σ²/2) = I · k / λ, k ~ U[0.30, 0.55] (the share
//                             of income spent this way); capped at V · 0.25
//   dividends (+)             15th → next business day in months m with
//                             m mod 3 = phase, phase ~ {0, 1, 2} per account
//                             (0: Mar/Jun/Sep/Dec): V · y · (1 + U[−0.10, 0.10]),
//                             y ~ U[0.0005, 0.0025]
//   large withdrawals (−, scheduled)
//                             each business day with probability 1 / 261
//                             (≈ 1 per year): V · U[0.05, 0.20]
//
// Both kinds: no flow on Saturdays or Sundays (every rule above lands on a
// business day), and no value is NaN or infinite.
//
// Also here: `CashFlowCalendar` (civil dates, weekdays, business days),
// `LiquidityBaselines` (seasonal naive, exponential smoothing) and
// `ForecastMetrics` (pinball loss, interval coverage).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Calendar

/// Calendar helpers of the cash-flow generator and its baselines. Days are
/// days since 1970-01-01 (day 0, a Thursday); proleptic Gregorian calendar;
/// business days are Monday to Friday (no holidays).
/// The generator's calendar: KeelPortfolio's ``CivilDay`` (the one the
/// liquidity features use) plus the month arithmetic the generator needs.
public enum CashFlowCalendar {
    /// The day number of a civil date; no validation (month 1…12, day 1…31 assumed).
    public static func dayNumber(year: Int, month: Int, day: Int) -> Int {
        CivilDay.dayNumber(year: year, month: month, day: day)
    }

    /// The day number of a date, or nil when the date does not exist.
    public static func validDayNumber(year: Int, month: Int, day: Int) -> Int? {
        CivilDay.day(year: year, month: month, day: day)
    }

    public static func civil(_ n: Int) -> (year: Int, month: Int, day: Int) { CivilDay.date(n) }

    /// 0 = Monday … 6 = Sunday (day 0 is a Thursday).
    public static func weekday(_ n: Int) -> Int { CivilDay.weekday(n) }

    public static func isBusinessDay(_ n: Int) -> Bool { CivilDay.isBusinessDay(n) }

    public static func isLeapYear(_ year: Int) -> Bool { CivilDay.daysIn(year: year, month: 2) == 29 }

    public static func daysInMonth(year: Int, month: Int) -> Int { CivilDay.daysIn(year: year, month: month) }

    /// `(year, month)` moved by `months` (negative: backwards).
    public static func addMonths(year: Int, month: Int, _ months: Int) -> (year: Int, month: Int) {
        let index = year * 12 + (month - 1) + months
        let y = index >= 0 ? index / 12 : (index - 11) / 12
        return (y, index - y * 12 + 1)
    }

    /// `n` when it is a business day, else the following Monday.
    public static func nextBusinessDay(onOrAfter n: Int) -> Int {
        var d = n
        while !isBusinessDay(d) { d += 1 }
        return d
    }

    /// `n` when it is a business day, else the preceding Friday.
    public static func previousBusinessDay(onOrBefore n: Int) -> Int {
        var d = n
        while !isBusinessDay(d) { d -= 1 }
        return d
    }

    public static func firstBusinessDay(year: Int, month: Int) -> Int {
        nextBusinessDay(onOrAfter: dayNumber(year: year, month: month, day: 1))
    }

    public static func lastBusinessDay(year: Int, month: Int) -> Int {
        previousBusinessDay(onOrBefore: dayNumber(year: year, month: month, day: daysInMonth(year: year, month: month)))
    }

    /// The first business day of the month that contains day `n`.
    public static func firstBusinessDay(ofMonthOf n: Int) -> Int { CivilDay.firstBusinessDay(ofMonthOf: n) }

    /// The last business day of the month that contains day `n`.
    public static func lastBusinessDay(ofMonthOf n: Int) -> Int { CivilDay.lastBusinessDay(ofMonthOf: n) }
}

// MARK: - Accounts

public enum AccountKind: String, Sendable, CaseIterable {
    case pension, retail
}

/// One synthetic account: its daily flows over `days` calendar days from
/// `firstDay`. Synthetic: made by ``CashFlowGenerator``.
public struct SyntheticAccount: Sendable {
    public let kind: AccountKind
    public let seed: UInt64
    /// Day number of `flows[0]` (days since 1970-01-01).
    public let firstDay: Int
    /// Portfolio value, for cash-drag figures.
    public let value: Double
    /// Per calendar day: net flow NOT known in advance (+ in, − out).
    public let flows: [Double]
    /// Per calendar day: flows known in advance (lump sums announced ahead).
    public let scheduled: [Double]
    public var days: Int { flows.count }

    public init(kind: AccountKind, seed: UInt64, firstDay: Int, value: Double, flows: [Double], scheduled: [Double]) {
        self.kind = kind
        self.seed = seed
        self.firstDay = firstDay
        self.value = value
        self.flows = flows
        self.scheduled = scheduled
    }
}

/// The seeded generator of synthetic accounts; its rules and parameter
/// ranges are in this file's header. THE DATA IS SYNTHETIC.
public enum CashFlowGenerator {
    /// 2010-01-01.
    public static let defaultFirstDay = 14_610
    /// Business days per year (365.25 · 5 / 7 ≈ 260.9) and per month.
    static let businessDaysPerYear = 261.0
    static let businessDaysPerMonth = 21.75

    /// `days` calendar days of one account starting at `firstDay`;
    /// deterministic in (kind, seed, firstDay, days).
    public static func account(kind: AccountKind, seed: UInt64, firstDay: Int = 14_610 /* 2010-01-01 */, days: Int)
        -> SyntheticAccount
    {
        switch kind {
        case .pension: pension(seed: seed, firstDay: firstDay, days: max(0, days))
        case .retail: retail(seed: seed, firstDay: firstDay, days: max(0, days))
        }
    }

    /// A mixed population: `count` accounts alternating pension/retail
    /// (pension first), seeds derived from `seed`.
    public static func population(count: Int, seed: UInt64, days: Int, firstDay: Int = 14_610) -> [SyntheticAccount] {
        (0..<max(0, count)).map { i in
            account(kind: i % 2 == 0 ? .pension : .retail, seed: accountSeed(seed, index: i), firstDay: firstDay,
                    days: days)
        }
    }

    /// The seed of account `index` of a population.
    static func accountSeed(_ seed: UInt64, index: Int) -> UInt64 {
        var g = SplitMix64.derived(seed, UInt64(index), 0xACC7)
        return g.next()
    }

    // MARK: Random helpers

    static func uniform(_ rng: inout SplitMix64, _ low: Double, _ high: Double) -> Double {
        low + (high - low) * rng.unit()
    }

    static func logUniform(_ rng: inout SplitMix64, _ low: Double, _ high: Double) -> Double {
        exp(uniform(&rng, log(low), log(high)))
    }

    static func cents(_ x: Double) -> Double { x.isFinite ? (x * 100).rounded() / 100 : 0 }

    /// Stream tags: "PENS" and "RETA".
    static func kindTag(_ kind: AccountKind) -> UInt64 {
        switch kind {
        case .pension: 0x5045_4E53
        case .retail: 0x5245_5441
        }
    }

    static func stream(_ seed: UInt64, _ kind: AccountKind, _ component: UInt64) -> SplitMix64 {
        SplitMix64.derived(seed, kindTag(kind), component)
    }

    // MARK: Pension funds

    struct PensionParameters: Sendable, Equatable {
        static let valueRange = 50e6...500e6
        static let lumpSumsPerYear = 2.0
        static let lumpSumShare = 0.02...0.10

        var value: Double
        var contributionRate: Double      // U[0.003, 0.008] of V per month
        var contributionGrowth: Double    // U[0, 0.03] per year
        var benefitRate: Double           // U[0.004, 0.010] of V per month
        var benefitDrift: Double          // U[−0.01, 0.03] per year
        var dividendRate: Double          // U[0.003, 0.006] of V per quarter
        var feeRate: Double               // U[0.00008, 0.00012] of V per month
        var noiseRate: Double             // U[0.00002, 0.0001] of V: daily noise σ

        static func draw(seed: UInt64) -> PensionParameters {
            var r = stream(seed, .pension, 1)
            return PensionParameters(
                value: logUniform(&r, valueRange.lowerBound, valueRange.upperBound),
                contributionRate: uniform(&r, 0.003, 0.008),
                contributionGrowth: uniform(&r, 0, 0.03),
                benefitRate: uniform(&r, 0.004, 0.010),
                benefitDrift: uniform(&r, -0.01, 0.03),
                dividendRate: uniform(&r, 0.003, 0.006),
                feeRate: uniform(&r, 0.000_08, 0.000_12),
                noiseRate: uniform(&r, 0.000_02, 0.000_1))
        }
    }

    static func pension(seed: UInt64, firstDay: Int, days: Int) -> SyntheticAccount {
        typealias C = CashFlowCalendar
        let p = PensionParameters.draw(seed: seed)
        let v = p.value
        var contributionRng = stream(seed, .pension, 2)
        var benefitRng = stream(seed, .pension, 3)
        var dividendRng = stream(seed, .pension, 4)
        var noiseRng = stream(seed, .pension, 5)
        var lumpRng = stream(seed, .pension, 6)
        let lumpProbability = PensionParameters.lumpSumsPerYear / businessDaysPerYear
        var flows = [Double](repeating: 0, count: days)
        var scheduled = flows
        for k in 0..<days {
            let d = firstDay + k
            guard C.isBusinessDay(d) else { continue }
            let (y, m, _) = C.civil(d)
            let t = Double(k) / 365.25
            var x = 0.0
            if d == C.firstBusinessDay(year: y, month: m) {
                x -= v * p.benefitRate * pow(1 + p.benefitDrift, t) * (1 + uniform(&benefitRng, -0.01, 0.01))
            }
            if d == C.lastBusinessDay(year: y, month: m) {
                x += v * p.contributionRate * pow(1 + p.contributionGrowth, t)
                    * (1 + uniform(&contributionRng, -0.10, 0.10))
            }
            if m % 3 == 0, d == C.nextBusinessDay(onOrAfter: C.dayNumber(year: y, month: m, day: 15)) {
                x += v * p.dividendRate * (1 + uniform(&dividendRng, -0.15, 0.15))
            }
            if d == C.nextBusinessDay(onOrAfter: C.dayNumber(year: y, month: m, day: 10)) {
                x -= v * p.feeRate
            }
            x += v * p.noiseRate * noiseRng.normal()
            flows[k] = cents(x)
            if lumpRng.unit() < lumpProbability {
                let share = uniform(&lumpRng, PensionParameters.lumpSumShare.lowerBound,
                                    PensionParameters.lumpSumShare.upperBound)
                scheduled[k] = cents((lumpRng.unit() < 0.5 ? 1 : -1) * v * share)
            }
        }
        return SyntheticAccount(kind: .pension, seed: seed, firstDay: firstDay, value: v, flows: flows,
                                scheduled: scheduled)
    }

    // MARK: Retail accounts

    struct RetailParameters: Sendable, Equatable {
        enum Payday: Sendable, Equatable {
            /// The 1st and the 15th, each moved to the previous business day.
            case semiMonthly
            /// Fridays d with floor((d − 1) / 7) mod 2 == phase.
            case biweeklyFriday(phase: Int)
        }

        static let valueRange = 20e3...2e6
        static let largeWithdrawalsPerYear = 1.0
        static let largeWithdrawalShare = 0.05...0.20
        static let withdrawalCap = 0.25

        var value: Double
        var payday: Payday
        var paydayRate: Double            // U[0.005, 0.02] of V per deposit
        var standingOrderDay: Int         // 1…28
        var standingOrderShare: Double    // U[0.25, 0.40] of monthly income
        var withdrawalsPerMonth: Double   // U[3, 8]
        var spendShare: Double            // U[0.30, 0.55] of monthly income
        var withdrawalSigma: Double       // U[0.6, 1.0]
        var dividendRate: Double          // U[0.0005, 0.0025] of V per quarter
        var dividendPhase: Int            // 0…2

        /// Payday income per month.
        var monthlyIncome: Double {
            let perMonth = payday == .semiMonthly ? 2.0 : 26.0 / 12.0
            return value * paydayRate * perMonth
        }

        static func draw(seed: UInt64) -> RetailParameters {
            var r = stream(seed, .retail, 1)
            let value = logUniform(&r, valueRange.lowerBound, valueRange.upperBound)
            let payday: Payday = r.unit() < 0.5 ? .semiMonthly : .biweeklyFriday(phase: Int(r.next() % 2))
            return RetailParameters(
                value: value,
                payday: payday,
                paydayRate: uniform(&r, 0.005, 0.02),
                standingOrderDay: 1 + Int(r.next() % 28),
                standingOrderShare: uniform(&r, 0.25, 0.40),
                withdrawalsPerMonth: uniform(&r, 3, 8),
                spendShare: uniform(&r, 0.30, 0.55),
                withdrawalSigma: uniform(&r, 0.6, 1.0),
                dividendRate: uniform(&r, 0.000_5, 0.002_5),
                dividendPhase: Int(r.next() % 3))
        }

        /// Whether `d` (a business day) is a payday.
        func isPayday(_ d: Int) -> Bool {
            typealias C = CashFlowCalendar
            switch payday {
            case .semiMonthly:
                let (y, m, _) = C.civil(d)
                let next = C.addMonths(year: y, month: m, 1)
                return d == C.previousBusinessDay(onOrBefore: C.dayNumber(year: y, month: m, day: 1))
                    || d == C.previousBusinessDay(onOrBefore: C.dayNumber(year: y, month: m, day: 15))
                    || d == C.previousBusinessDay(onOrBefore: C.dayNumber(year: next.year, month: next.month, day: 1))
            case .biweeklyFriday(let phase):
                guard C.weekday(d) == 4 else { return false }
                let week = d - 1 >= 0 ? (d - 1) / 7 : (d - 7) / 7    // floor((d − 1) / 7)
                return ((week % 2) + 2) % 2 == phase
            }
        }

        /// Whether `d` (a business day) carries the standing order.
        func isStandingOrderDay(_ d: Int) -> Bool {
            typealias C = CashFlowCalendar
            let (y, m, _) = C.civil(d)
            let previous = C.addMonths(year: y, month: m, -1)
            return d == C.nextBusinessDay(onOrAfter: C.dayNumber(year: y, month: m, day: standingOrderDay))
                || d == C.nextBusinessDay(onOrAfter: C.dayNumber(year: previous.year, month: previous.month,
                                                                  day: standingOrderDay))
        }
    }

    static func retail(seed: UInt64, firstDay: Int, days: Int) -> SyntheticAccount {
        typealias C = CashFlowCalendar
        let p = RetailParameters.draw(seed: seed)
        let v = p.value
        let income = p.monthlyIncome
        var paydayRng = stream(seed, .retail, 2)
        var withdrawalRng = stream(seed, .retail, 3)
        var dividendRng = stream(seed, .retail, 4)
        var largeRng = stream(seed, .retail, 5)
        let withdrawalProbability = p.withdrawalsPerMonth / businessDaysPerMonth
        let sigma = p.withdrawalSigma
        let mu = log(income * p.spendShare / p.withdrawalsPerMonth) - sigma * sigma / 2
        let largeProbability = RetailParameters.largeWithdrawalsPerYear / businessDaysPerYear
        var flows = [Double](repeating: 0, count: days)
        var scheduled = flows
        for k in 0..<days {
            let d = firstDay + k
            guard C.isBusinessDay(d) else { continue }
            let (y, m, _) = C.civil(d)
            var x = 0.0
            if p.isPayday(d) {
                x += v * p.paydayRate * (1 + uniform(&paydayRng, -0.02, 0.02))
            }
            if p.isStandingOrderDay(d) {
                x -= income * p.standingOrderShare
            }
            if m % 3 == p.dividendPhase, d == C.nextBusinessDay(onOrAfter: C.dayNumber(year: y, month: m, day: 15)) {
                x += v * p.dividendRate * (1 + uniform(&dividendRng, -0.10, 0.10))
            }
            if withdrawalRng.unit() < withdrawalProbability {
                x -= min(exp(mu + sigma * withdrawalRng.normal()), v * RetailParameters.withdrawalCap)
            }
            flows[k] = cents(x)
            if largeRng.unit() < largeProbability {
                let share = uniform(&largeRng, RetailParameters.largeWithdrawalShare.lowerBound,
                                    RetailParameters.largeWithdrawalShare.upperBound)
                scheduled[k] = cents(-v * share)
            }
        }
        return SyntheticAccount(kind: .retail, seed: seed, firstDay: firstDay, value: v, flows: flows,
                                scheduled: scheduled)
    }
}

// MARK: - Baselines

/// Two forecasting baselines for daily net flows. `history[k]` is the flow
/// of day `firstDay + k`; the last history day is the forecast origin and a
/// forecast covers origin + 1 … origin + horizon. Non-finite history values
/// count as 0. An empty history gives `horizon` zero forecasts; a
/// non-positive horizon gives none.
///
/// Quantiles: the point forecast plus the empirical 5 %, 50 % and 95 %
/// quantiles of the method's own one-step residuals over the history
/// (linear interpolation between order statistics, R's type 7); zero when
/// there are no residuals.
public enum LiquidityBaselines {
    /// Seasonal naive: the forecast for day d is the flow of d's matching
    /// day in the previous month (or, when that is after the origin, in the
    /// latest month before it whose matching day is in the history; 0 when
    /// none is). The matching day of d in a month M (our choice):
    /// - d the first (last) business day of its month: the first (last)
    ///   business day of M;
    /// - another business day: the same day of the month, clamped to M's
    ///   length, if that is a business day other than M's first and last;
    ///   else the nearest such business day of M (the earlier on ties);
    /// - a Saturday or Sunday: the same day of the month, clamped, if that is
    ///   a weekend day; else the nearest weekend day of M (the earlier on ties).
    /// One-step residuals: flow(t) − flow(matching day of t in the previous
    /// month) for every history day whose matching day is in the history.
    public static func seasonalNaive(history: [Double], firstDay: Int, horizon: Int)
        -> [(p5: Double, p50: Double, p95: Double)]
    {
        guard horizon > 0 else { return [] }
        let x = history.map { $0.isFinite ? $0 : 0 }
        let n = x.count
        guard n > 0 else { return Array(repeating: (p5: 0.0, p50: 0.0, p95: 0.0), count: horizon) }
        let origin = firstDay + n - 1
        var residuals: [Double] = []
        residuals.reserveCapacity(n)
        for t in 0..<n {
            let s = matchingDay(of: firstDay + t, monthsBack: 1) - firstDay
            if s >= 0 { residuals.append(x[t] - x[s]) }
        }
        let (q5, q50, q95) = residualQuantiles(&residuals)
        var out: [(p5: Double, p50: Double, p95: Double)] = []
        out.reserveCapacity(horizon)
        for h in 1...horizon {
            let d = origin + h
            var point = 0.0
            var back = 1
            while true {
                let s = matchingDay(of: d, monthsBack: back)
                if s < firstDay { break }
                if s <= origin {
                    point = x[s - firstDay]
                    break
                }
                back += 1
            }
            out.append((point + q5, point + q50, point + q95))
        }
        return out
    }

    /// Exponential smoothing with additive weekday seasonality
    /// (Holt-Winters without trend, season 7): level ℓ and seven seasonal
    /// terms s[w]; for each day t with weekday w: forecast ℓ + s[w], then
    /// ℓ' = α (x_t − s[w]) + (1 − α) ℓ, s[w] = γ (x_t − ℓ') + (1 − γ) s[w],
    /// with α = 0.1 and γ = 0.1. Initial values from the first min(n, 28)
    /// days: ℓ their mean, s[w] the mean of their weekday-w flows minus ℓ.
    /// The forecast for day d is ℓ + s[weekday(d)] after the origin (flat in
    /// the horizon). One-step residuals: x_t − forecast for the days after
    /// the initial window (all days when the history is no longer than it).
    public static func exponentialSmoothing(history: [Double], firstDay: Int, horizon: Int)
        -> [(p5: Double, p50: Double, p95: Double)]
    {
        guard horizon > 0 else { return [] }
        let x = history.map { $0.isFinite ? $0 : 0 }
        let n = x.count
        guard n > 0 else { return Array(repeating: (p5: 0.0, p50: 0.0, p95: 0.0), count: horizon) }
        let alpha = 0.1, gamma = 0.1
        let window = min(n, 28)
        var level = 0.0
        for t in 0..<window { level += x[t] }
        level /= Double(window)
        var season = [Double](repeating: 0, count: 7), counts = [Int](repeating: 0, count: 7)
        for t in 0..<window {
            let w = CashFlowCalendar.weekday(firstDay + t)
            season[w] += x[t] - level
            counts[w] += 1
        }
        for w in 0..<7 where counts[w] > 0 { season[w] /= Double(counts[w]) }
        var residuals: [Double] = []
        residuals.reserveCapacity(n)
        for t in 0..<n {
            let w = CashFlowCalendar.weekday(firstDay + t)
            if t >= window || n <= window { residuals.append(x[t] - (level + season[w])) }
            let newLevel = alpha * (x[t] - season[w]) + (1 - alpha) * level
            season[w] = gamma * (x[t] - newLevel) + (1 - gamma) * season[w]
            level = newLevel
        }
        let (q5, q50, q95) = residualQuantiles(&residuals)
        let origin = firstDay + n - 1
        return (1...horizon).map { h in
            let point = level + season[CashFlowCalendar.weekday(origin + h)]
            return (point + q5, point + q50, point + q95)
        }
    }

    /// The day of the month `monthsBack` months before `d`'s month that
    /// matches `d` (see ``seasonalNaive(history:firstDay:horizon:)``).
    static func matchingDay(of d: Int, monthsBack: Int) -> Int {
        typealias C = CashFlowCalendar
        let (y, m, dom) = C.civil(d)
        let (sy, sm) = C.addMonths(year: y, month: m, -monthsBack)
        let length = C.daysInMonth(year: sy, month: sm)
        let start = C.dayNumber(year: sy, month: sm, day: 1), end = start + length - 1
        let candidate = start + min(dom, length) - 1
        let sourceFirst = C.firstBusinessDay(year: sy, month: sm), sourceLast = C.lastBusinessDay(year: sy, month: sm)
        func nearest(_ ok: (Int) -> Bool) -> Int {
            for offset in 0..<length {
                if candidate - offset >= start && ok(candidate - offset) { return candidate - offset }
                if candidate + offset <= end && ok(candidate + offset) { return candidate + offset }
            }
            return candidate
        }
        if C.isBusinessDay(d) {
            if d == C.firstBusinessDay(year: y, month: m) { return sourceFirst }
            if d == C.lastBusinessDay(year: y, month: m) { return sourceLast }
            return nearest { C.isBusinessDay($0) && $0 != sourceFirst && $0 != sourceLast }
        }
        return nearest { !C.isBusinessDay($0) }
    }

    /// The empirical 5 %, 50 % and 95 % quantiles (type 7) of `values`
    /// (sorted in place); zeros when empty.
    static func residualQuantiles(_ values: inout [Double]) -> (Double, Double, Double) {
        guard !values.isEmpty else { return (0, 0, 0) }
        values.sort()
        return (empiricalQuantile(sorted: values, 0.05), empiricalQuantile(sorted: values, 0.5),
                empiricalQuantile(sorted: values, 0.95))
    }

    /// Linear interpolation between order statistics at (n − 1) τ.
    static func empiricalQuantile(sorted: [Double], _ tau: Double) -> Double {
        guard !sorted.isEmpty else { return 0 }
        let h = Double(sorted.count - 1) * min(max(tau, 0), 1)
        let lo = Int(h.rounded(.down)), hi = min(lo + 1, sorted.count - 1)
        return sorted[lo] + (h - Double(lo)) * (sorted[hi] - sorted[lo])
    }
}

// MARK: - Metrics

public enum ForecastMetrics {
    /// Mean pinball loss over the three quantiles (0.05, 0.5, 0.95) and all
    /// days (the first min(forecast.count, actual.count) days); 0 when
    /// there are none.
    public static func pinball(_ forecast: [(p5: Double, p50: Double, p95: Double)], actual: [Double]) -> Double {
        let n = min(forecast.count, actual.count)
        guard n > 0 else { return 0 }
        var sum = 0.0
        for i in 0..<n {
            let f = forecast[i], y = actual[i]
            sum += pinball(quantile: 0.05, forecast: f.p5, actual: y)
                + pinball(quantile: 0.5, forecast: f.p50, actual: y)
                + pinball(quantile: 0.95, forecast: f.p95, actual: y)
        }
        return sum / Double(3 * n)
    }

    /// Fraction of days (of the first min(forecast.count, actual.count))
    /// whose actual lies within [p5, p95], bounds included; 0 when there
    /// are none.
    public static func coverage(_ forecast: [(p5: Double, p50: Double, p95: Double)], actual: [Double]) -> Double {
        let n = min(forecast.count, actual.count)
        guard n > 0 else { return 0 }
        var inside = 0
        for i in 0..<n where actual[i] >= forecast[i].p5 && actual[i] <= forecast[i].p95 { inside += 1 }
        return Double(inside) / Double(n)
    }

    /// The pinball (quantile) loss: τ (y − q) when y ≥ q, else (1 − τ) (q − y).
    public static func pinball(quantile tau: Double, forecast: Double, actual: Double) -> Double {
        actual >= forecast ? tau * (actual - forecast) : (1 - tau) * (forecast - actual)
    }
}
