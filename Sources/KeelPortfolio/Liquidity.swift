#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Calendar days as integers: days since 1970-01-01 (day 0, a Thursday).
/// Proleptic Gregorian; business days are Monday to Friday (no holiday
/// calendar).
public enum CivilDay {
    /// The day number of a date (month 1...12, day 1...31), or nil.
    public static func day(year: Int, month: Int, day: Int) -> Int? {
        guard (1...12).contains(month), day >= 1, day <= daysIn(year: year, month: month) else { return nil }
        return dayNumber(year: year, month: month, day: day)
    }

    /// The day number of a date without validation (month 1…12, day 1…31
    /// assumed). Days from civil (H. Hinnant's algorithm, in our own words):
    /// the year starts in March so that the leap day ends it.
    public static func dayNumber(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = (month + 9) % 12
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    /// The days of the years 0001...9999: what ``parse`` accepts and what
    /// ``iso`` prints in four digits.
    public static let supported = dayNumber(year: 1, month: 1, day: 1)...dayNumber(year: 9999, month: 12, day: 31)

    /// Year, month and day of a day number.
    public static func date(_ n: Int) -> (year: Int, month: Int, day: Int) {
        let z = n + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (m <= 2 ? 1 : 0), m, d)
    }

    /// `YYYY-MM-DD` → day number, or nil when malformed or impossible.
    public static func parse(_ text: String) -> Int? {
        var text = text
        // The UTF-8 in place (no array: every tax lot's date is parsed per request).
        return text.withUTF8 { u -> Int? in
            guard u.count == 10, u[4] == UInt8(ascii: "-"), u[7] == UInt8(ascii: "-") else { return nil }
            func number(_ r: Range<Int>) -> Int? {
                var v = 0
                for k in r {
                    guard u[k] >= 48, u[k] <= 57 else { return nil }
                    v = v * 10 + Int(u[k] - 48)
                }
                return v
            }
            guard let y = number(0..<4), let m = number(5..<7), let d = number(8..<10) else { return nil }
            return day(year: y, month: m, day: d)
        }
    }

    /// `YYYY-MM-DD`.
    public static func iso(_ n: Int) -> String {
        let (y, m, d) = date(n)
        func pad(_ v: Int, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(pad(y, 4))-\(pad(m, 2))-\(pad(d, 2))"
    }

    /// 0 = Monday … 6 = Sunday.
    public static func weekday(_ n: Int) -> Int { ((n % 7 + 7) % 7 + 3) % 7 }

    public static func isBusinessDay(_ n: Int) -> Bool { weekday(n) < 5 }

    public static func daysIn(year: Int, month: Int) -> Int {
        switch month {
        case 2: (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: 30
        default: 31
        }
    }

    /// The first business day of `n`'s month.
    public static func firstBusinessDay(ofMonthOf n: Int) -> Int {
        let (y, m, _) = date(n)
        var d = day(year: y, month: m, day: 1)!
        while !isBusinessDay(d) { d += 1 }
        return d
    }

    /// The last business day of `n`'s month.
    public static func lastBusinessDay(ofMonthOf n: Int) -> Int {
        let (y, m, _) = date(n)
        var d = day(year: y, month: m, day: daysIn(year: y, month: m))!
        while !isBusinessDay(d) { d -= 1 }
        return d
    }

    /// The business day on or before the 15th of `n`'s month.
    public static func midMonthBusinessDay(ofMonthOf n: Int) -> Int {
        let (y, m, _) = date(n)
        var d = day(year: y, month: m, day: 15)!
        while !isBusinessDay(d) { d -= 1 }
        return d
    }
}

/// The liquidity forecaster's input features, defined once here and used by
/// the server, training and evaluation alike. A `keel.kind = liquidity`
/// model's `keel.features` must equal ``names``.
///
/// One row per forecast day d (origin + h, h = 1…horizon), from the
/// account's daily net flows up to the origin (unscheduled flows only:
/// known, scheduled flows are added exactly afterwards). Flows are divided
/// by the account's scale (the mean absolute daily flow of its last 365
/// days) so that one model serves accounts of any size; the model's outputs
/// are multiplied back.
///
/// | name | meaning |
/// |---|---|
/// | `horizon` | h / 90 |
/// | `business_day` | 1 on Monday–Friday |
/// | `weekday_0` … `weekday_4` | one-hot Monday … Friday |
/// | `first_business_day`, `mid_month_business_day`, `last_business_day` | 1 on the month's first business day, the business day on or before the 15th, the last business day |
/// | `quarter_month` | 1 in March, June, September, December |
/// | `mean_same_day_of_month` | mean flow on the same day of the month over the last 6 months |
/// | `mean_first_business_day`, `mean_mid_month`, `mean_last_business_day` | mean flow on that kind of day over the last 6 months, times the indicator for d |
/// | `mean_same_weekday` | mean flow on d's weekday over the last 8 weeks |
/// | `lag_14` | the flow 14 days before d when that day is in the history, else `mean_same_weekday` |
/// | `mean_30`, `mean_abs_30` | mean and mean absolute flow of the last 30 days |
/// | `sd_same_weekday` | standard deviation of the flows on d's weekday over the last 8 weeks |
/// | `mean_same_day_quarter` | mean flow on the same day of the month in the quarter months of the last 12 months, times `quarter_month` |
/// Why a forecaster's `keel.features` are not `expected`, or nil.
func featureMismatch(_ modelFeatures: [String], expected: [String], kind: String, family: String) -> String? {
    if modelFeatures == expected { return nil }
    return "a \(kind) model's keel.features must be Keel's \(family) features (\(expected.joined(separator: ","))); "
        + "this one has \(modelFeatures.count): \(modelFeatures.prefix(6).joined(separator: ","))"
        + (modelFeatures.count > 6 ? ",..." : "")
}

public enum LiquidityFeatures {
    public static let names: [String] = [
        "horizon", "business_day", "weekday_0", "weekday_1", "weekday_2", "weekday_3", "weekday_4",
        "first_business_day", "mid_month_business_day", "last_business_day", "quarter_month",
        "mean_same_day_of_month", "mean_first_business_day", "mean_mid_month", "mean_last_business_day",
        "mean_same_weekday", "lag_14", "mean_30", "mean_abs_30", "sd_same_weekday", "mean_same_day_quarter",
    ]
    public static var count: Int { names.count }
    public static let maxHorizon = 90

    /// Why `modelFeatures` cannot be served by a liquidity model, or nil.
    public static func mismatch(_ modelFeatures: [String]) -> String? {
        featureMismatch(modelFeatures, expected: names, kind: "liquidity", family: "liquidity")
    }

    /// The scale of an account's flows: mean absolute daily flow over the
    /// last 365 days (1 when there is none).
    public static func scale(_ history: [Double]) -> Double {
        let recent = history.suffix(365)
        guard !recent.isEmpty else { return 1 }
        let s = recent.reduce(0) { $0 + abs($1) } / Double(recent.count)
        return s > 0 && s.isFinite ? s : 1
    }

    /// Feature rows (row-major, ``count`` each) for days origin+1 …
    /// origin+horizon, where `history[k]` is the flow of day
    /// `firstDay + k` and the origin is the last history day.
    public static func rows(history: [Double], firstDay: Int, horizon: Int, scale: Double) -> [Float] {
        let n = history.count
        let origin = firstDay + n - 1
        var out = [Float](repeating: 0, count: horizon * count)
        guard n > 0 else { return out }
        func flow(_ day: Int) -> Double? {
            let k = day - firstDay
            return k >= 0 && k < n ? history[k] / scale : nil
        }
        func mean(_ days: [Int]) -> Double {
            var s = 0.0, c = 0
            for d in days { if let v = flow(d) { s += v; c += 1 } }
            return c > 0 ? s / Double(c) : 0
        }
        // Kinds of days over the last 6 months of history.
        var firstDays: [Int] = [], midDays: [Int] = [], lastDays: [Int] = []
        var cursor = origin
        for _ in 0..<6 {
            let (y, m, _) = CivilDay.date(cursor)
            guard let start = CivilDay.day(year: y, month: m, day: 1) else { break }
            firstDays.append(CivilDay.firstBusinessDay(ofMonthOf: start))
            midDays.append(CivilDay.midMonthBusinessDay(ofMonthOf: start))
            lastDays.append(CivilDay.lastBusinessDay(ofMonthOf: start))
            cursor = start - 1
        }
        let meanFirst = mean(firstDays), meanMid = mean(midDays), meanLast = mean(lastDays)
        var last30 = 0.0, abs30 = 0.0
        let window = min(30, n)
        for k in (n - window)..<n { last30 += history[k] / scale; abs30 += abs(history[k]) / scale }
        last30 /= Double(window)
        abs30 /= Double(window)
        // Per weekday over the last 8 weeks: mean and standard deviation.
        var weekdayMean = [Double](repeating: 0, count: 7), weekdaySD = weekdayMean
        for w in 0..<7 {
            var values: [Double] = []
            for k in stride(from: n - 1, through: max(0, n - 56), by: -1) where CivilDay.weekday(firstDay + k) == w {
                values.append(history[k] / scale)
            }
            guard !values.isEmpty else { continue }
            let m = values.reduce(0, +) / Double(values.count)
            weekdayMean[w] = m
            weekdaySD[w] = (values.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(values.count)).squareRoot()
        }
        for h in 1...max(1, horizon) where h <= horizon {
            let d = origin + h
            let (y, m, dom) = CivilDay.date(d)
            let w = CivilDay.weekday(d)
            let business = w < 5
            let isFirst = business && d == CivilDay.firstBusinessDay(ofMonthOf: d)
            let isMid = business && d == CivilDay.midMonthBusinessDay(ofMonthOf: d)
            let isLast = business && d == CivilDay.lastBusinessDay(ofMonthOf: d)
            let quarter = m % 3 == 0
            // The same day of the month in the last 6 (and, for quarter
            // months, the last 4 quarter months) months before the origin.
            var sameDOM: [Int] = [], sameQuarter: [Int] = []
            var yy = y, mm = m
            for _ in 1...15 {
                mm -= 1
                if mm == 0 { mm = 12; yy -= 1 }
                let day = min(dom, CivilDay.daysIn(year: yy, month: mm))
                guard let candidate = CivilDay.day(year: yy, month: mm, day: day), candidate <= origin else { continue }
                if sameDOM.count < 6 { sameDOM.append(candidate) }
                if mm % 3 == 0 && sameQuarter.count < 4 { sameQuarter.append(candidate) }
            }
            let row = (h - 1) * count
            var f = [Double](repeating: 0, count: count)
            f[0] = Double(h) / Double(maxHorizon)
            f[1] = business ? 1 : 0
            if w < 5 { f[2 + w] = 1 }
            f[7] = isFirst ? 1 : 0
            f[8] = isMid ? 1 : 0
            f[9] = isLast ? 1 : 0
            f[10] = quarter ? 1 : 0
            f[11] = mean(sameDOM)
            f[12] = isFirst ? meanFirst : 0
            f[13] = isMid ? meanMid : 0
            f[14] = isLast ? meanLast : 0
            f[15] = weekdayMean[w]
            f[16] = flow(d - 14) ?? weekdayMean[w]
            f[17] = last30
            f[18] = abs30
            f[19] = weekdaySD[w]
            f[20] = quarter ? mean(sameQuarter) : 0
            for j in 0..<count { out[row + j] = Float(max(-1e6, min(1e6, f[j]))) }
        }
        return out
    }
}

/// One day of a liquidity forecast (amounts in the account's currency).
public struct LiquidityDay: Sendable, Equatable {
    public var day: Int
    public var p5: Double
    public var p50: Double
    public var p95: Double
    /// Known, scheduled flows of the day (already included in the quantiles).
    public var scheduled: Double
}

public enum LiquidityPlanner {
    /// The standard normal quantile (Acklam's rational approximation,
    /// relative error below 1.2e-9).
    public static func normalQuantile(_ p: Double) -> Double {
        let a = [-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
                 -3.066479806614716e+01, 2.506628277459239e+00]
        let b = [-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
                 -1.328068155288572e+01]
        let c = [-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
                 4.374664141464968e+00, 2.938163982698783e+00]
        let d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00]
        let q = min(max(p, 1e-12), 1 - 1e-12)
        if q < 0.02425 {
            let r = (-2 * log(q)).squareRoot()
            return (((((c[0] * r + c[1]) * r + c[2]) * r + c[3]) * r + c[4]) * r + c[5])
                / ((((d[0] * r + d[1]) * r + d[2]) * r + d[3]) * r + 1)
        }
        if q > 1 - 0.02425 { return -normalQuantile(1 - q) }
        let r = q - 0.5, s = r * r
        return (((((a[0] * s + a[1]) * s + a[2]) * s + a[3]) * s + a[4]) * s + a[5]) * r
            / (((((b[0] * s + b[1]) * s + b[2]) * s + b[3]) * s + b[4]) * s + 1)
    }

    /// The cumulative forecast to each day: its median μ_t and spread σ_t.
    /// Each day's flow counts as normal with the forecast median and the
    /// downside spread of its interval (σ = (p50 − p5) / 1.645), days
    /// independent; scheduled flows are certain.
    public static func cumulative(_ path: [LiquidityDay]) -> [(mean: Double, sigma: Double)] {
        var mean = 0.0, variance = 0.0
        return path.map { day in
            mean += day.p50
            let sigma = max(0, day.p50 - day.p5) / 1.6448536269514722
            variance += sigma * sigma
            return (mean, variance.squareRoot())
        }
    }

    /// The cash to hold now: max over t of (−μ_t + k·σ_t), never below 0,
    /// where k is the multiplier for the confidence: from the model's
    /// calibration when it has one, else the normal quantile.
    public static func buffer(_ path: [LiquidityDay], confidence: Double,
                              calibration: BufferCalibration? = nil) -> Double
    {
        let k = calibration?.multiplier(confidence) ?? normalQuantile(min(max(confidence, 0.5), 0.9999))
        return buffer(path, multiplier: k)
    }

    public static func buffer(_ path: [LiquidityDay], multiplier k: Double) -> Double {
        var need = 0.0
        for c in cumulative(path) { need = max(need, -c.mean + k * c.sigma) }
        return need
    }

    /// Builds the path from the model's scaled quantiles (three per day, any
    /// order: sorted here so that p5 ≤ p50 ≤ p95), the account's scale and
    /// the scheduled flows per forecast day.
    public static func path(quantiles: [Float], firstForecastDay: Int, scale: Double, scheduled: [Double])
        -> [LiquidityDay]
    {
        let days = scheduled.count
        var out: [LiquidityDay] = []
        out.reserveCapacity(days)
        for h in 0..<days {
            var q = [Double(quantiles[h * 3]), Double(quantiles[h * 3 + 1]), Double(quantiles[h * 3 + 2])].map {
                $0.isFinite ? $0 * scale : 0
            }
            q.sort()
            out.append(LiquidityDay(day: firstForecastDay + h, p5: q[0] + scheduled[h], p50: q[1] + scheduled[h],
                                    p95: q[2] + scheduled[h], scheduled: scheduled[h]))
        }
        return out
    }
}

/// How many spreads of the cumulative forecast the buffer must add to
/// meet a confidence, measured on training accounts: for each training
/// forecast, the smallest k with −C_t ≤ −μ_t + k·σ_t on every day of the
/// horizon; the multiplier for confidence c is the c-quantile of those.
/// Stored in a liquidity model's metadata as `keel.buffer_calibration`
/// (`0.9=1.31,0.95=1.92,...`); between levels it is interpolated
/// linearly, above the highest it grows with the normal quantile.
public struct BufferCalibration: Sendable, Equatable {
    public let levels: [(confidence: Double, multiplier: Double)]

    public static func == (a: Self, b: Self) -> Bool {
        a.levels.count == b.levels.count
            && zip(a.levels, b.levels).allSatisfy { $0.confidence == $1.confidence && $0.multiplier == $1.multiplier }
    }

    public init?(levels: [(confidence: Double, multiplier: Double)]) {
        let sorted = levels.filter { $0.confidence > 0 && $0.confidence < 1 && $0.multiplier.isFinite }
            .sorted { $0.confidence < $1.confidence }
        guard !sorted.isEmpty else { return nil }
        self.levels = sorted
    }

    /// Parses `keel.buffer_calibration`; nil when absent or malformed.
    public init?(metadata text: String?) {
        guard let text, !text.isEmpty else { return nil }
        var levels: [(Double, Double)] = []
        for part in text.split(separator: ",") {
            let kv = part.split(separator: "=")
            guard kv.count == 2, let c = Double(kv[0]), let k = Double(kv[1]) else { return nil }
            levels.append((c, k))
        }
        self.init(levels: levels)
    }

    /// The quantiles of per-forecast multipliers `ks` at `confidences`,
    /// each taken at a level raised by 1.645 binomial standard errors
    /// (c + 1.645·√(c(1−c)/n)): an upper 95 % tolerance bound, so that a
    /// finite sample does not promise more than it measured.
    public init?(samples ks: [Double], confidences: [Double] = [0.5, 0.8, 0.9, 0.95, 0.975, 0.99, 0.995]) {
        let sorted = ks.filter(\.isFinite).sorted()
        guard !sorted.isEmpty else { return nil }
        let n = Double(sorted.count)
        self.init(levels: confidences.map { c in
            let level = min(1, c + 1.6448536269514722 * (c * (1 - c) / n).squareRoot())
            let position = level * Double(sorted.count - 1)
            let lo = Int(position), hi = min(sorted.count - 1, lo + 1)
            let f = position - Double(lo)
            return (c, sorted[lo] * (1 - f) + sorted[hi] * f)
        })
    }

    public var metadata: String {
        levels.map { "\($0.confidence)=\((($0.multiplier * 1e6).rounded() / 1e6))" }.joined(separator: ",")
    }

    public func multiplier(_ confidence: Double) -> Double {
        let c = min(max(confidence, 0.5), 0.9999)
        guard let first = levels.first, let last = levels.last else { return LiquidityPlanner.normalQuantile(c) }
        if c <= first.confidence { return first.multiplier }
        if c >= last.confidence {
            let z = LiquidityPlanner.normalQuantile(last.confidence)
            return z > 0 ? last.multiplier * LiquidityPlanner.normalQuantile(c) / z : last.multiplier
        }
        for k in 1..<levels.count where c <= levels[k].confidence {
            let a = levels[k - 1], b = levels[k]
            let f = (c - a.confidence) / (b.confidence - a.confidence)
            return a.multiplier + f * (b.multiplier - a.multiplier)
        }
        return last.multiplier
    }

    /// The smallest k whose buffer, max over t of (−μ_t + k·σ_t), covers
    /// the realised worst cumulative outflow max over t of −C_t (C:
    /// realised cumulative flows, scheduled included). The buffer grows with
    /// k, so bisection finds it; within −10…50.
    public static func requiredMultiplier(_ path: [LiquidityDay], realised: [Double]) -> Double {
        var c = 0.0, worst = 0.0
        for t in 0..<min(path.count, realised.count) {
            c += realised[t]
            worst = max(worst, -c)
        }
        var lo = -10.0, hi = 50.0
        if LiquidityPlanner.buffer(path, multiplier: lo) >= worst { return lo }
        if LiquidityPlanner.buffer(path, multiplier: hi) < worst { return hi }
        for _ in 0..<50 {
            let mid = (lo + hi) / 2
            if LiquidityPlanner.buffer(path, multiplier: mid) >= worst { hi = mid } else { lo = mid }
        }
        return hi
    }
}
