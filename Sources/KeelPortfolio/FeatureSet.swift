#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Keel's policy feature set: defined once, here, and used identically by
/// the server, the backtester and training. A policy file's `keel.features`
/// must equal ``FeatureSet/names`` (checked when the model loads).
///
/// Every asset gets one row; the policy network is shared by all assets, so
/// any number of assets works. Features are computed from the asset's price
/// series (daily closes, oldest first, the current price last), its current
/// and strategic weight, and the cross-section of the request:
///
/// | name | meaning |
/// |---|---|
/// | `ret_1d_z`, `ret_5d_z`, `ret_21d_z`, `ret_63d_z` | log return over the window divided by the EWMA daily volatility × √window (a risk-adjusted return) |
/// | `momentum_z` | log return from 63 to 5 days ago, risk-adjusted the same way |
/// | `vol_ann` | EWMA (λ = 0.94) volatility of daily log returns, annualised (× √252) |
/// | `vol_rel` | `vol_ann` divided by the cross-sectional mean of `vol_ann` |
/// | `drawdown_63d` | price over its 63-day high, minus 1 (≤ 0) |
/// | `rel_ret_21d_z` | `ret_21d_z` minus its cross-sectional mean |
/// | `weight_current`, `weight_strategic`, `drift` | the asset's weight now, its strategic weight and their difference |
///
/// A window longer than the history uses what there is; with no return at
/// all the return features are 0 and the volatility is the asset class's
/// default. Risk-adjusted features are clipped to ±10.
public enum FeatureSet {
    public static let names: [String] = [
        "ret_1d_z", "ret_5d_z", "ret_21d_z", "ret_63d_z", "momentum_z", "vol_ann", "vol_rel",
        "drawdown_63d", "rel_ret_21d_z", "weight_current", "weight_strategic", "drift",
    ]
    public static var count: Int { names.count }

    /// RiskMetrics' daily decay for the EWMA variance.
    public static let ewmaLambda = 0.94
    public static let tradingDaysPerYear = 252.0
    static let clip = 10.0

    /// Per-asset statistics of a price series that the features and the risk
    /// model share.
    public struct SeriesStats: Sendable, Equatable {
        /// Number of log returns in the series.
        public var returns: Int
        /// EWMA daily volatility (nil without returns).
        public var dailyVolatility: Double?
        public var logReturn1: Double
        public var logReturn5: Double
        public var logReturn21: Double
        public var logReturn63: Double
        public var momentum: Double
        public var drawdown63: Double
        public var windows: (Int, Int, Int, Int, Int)

        public static func == (a: Self, b: Self) -> Bool {
            a.returns == b.returns && a.dailyVolatility == b.dailyVolatility && a.logReturn1 == b.logReturn1
                && a.logReturn5 == b.logReturn5 && a.logReturn21 == b.logReturn21 && a.logReturn63 == b.logReturn63
                && a.momentum == b.momentum && a.drawdown63 == b.drawdown63
        }
    }

    /// Daily log returns of `prices` (oldest first): count − 1 values.
    public static func logReturns(_ prices: [Double]) -> [Double] {
        guard prices.count > 1 else { return [] }
        var r = [Double](repeating: 0, count: prices.count - 1)
        for k in 1..<prices.count { r[k - 1] = log(prices[k] / prices[k - 1]) }
        return r
    }

    /// Statistics of `prices` (oldest first, all finite and > 0).
    public static func stats(_ prices: some RandomAccessCollection<Double>) -> SeriesStats {
        let p = Array(prices)
        return stats(p, returns: logReturns(p))
    }

    /// The same, with the series' ``logReturns(_:)`` already computed.
    public static func stats(_ p: [Double], returns logReturns: [Double]) -> SeriesStats {
        let n = p.count
        let returns = max(0, n - 1)
        var variance: Double? = nil
        if returns > 0 {
            // Seed with the mean square of the first (up to) 10 returns, then decay.
            let seedCount = min(10, returns)
            var seed = 0.0
            for k in 1...seedCount { let r = logReturns[k - 1]; seed += r * r }
            var v = seed / Double(seedCount)
            if returns > seedCount {
                for k in (seedCount + 1)...returns {
                    let r = logReturns[k - 1]
                    v = ewmaLambda * v + (1 - ewmaLambda) * r * r
                }
            }
            variance = v
        }
        func logReturn(back window: Int) -> (Double, Int) {
            let w = min(window, returns)
            guard w > 0 else { return (0, 0) }
            return (log(p[n - 1] / p[n - 1 - w]), w)
        }
        let (r1, w1) = logReturn(back: 1)
        let (r5, w5) = logReturn(back: 5)
        let (r21, w21) = logReturn(back: 21)
        let (r63, w63) = logReturn(back: 63)
        // Momentum: from 63 to 5 days ago.
        var momentum = 0.0
        var wm = 0
        if returns > 5 {
            let start = max(0, n - 1 - 63)
            let end = n - 1 - 5
            if end > start { momentum = log(p[end] / p[start]); wm = end - start }
        }
        var high = 0.0
        if n > 0 { for k in max(0, n - 64)..<n { high = max(high, p[k]) } }
        let drawdown = n > 0 && high > 0 ? p[n - 1] / high - 1 : 0
        return SeriesStats(returns: returns, dailyVolatility: variance.map { $0.squareRoot() },
                           logReturn1: r1, logReturn5: r5, logReturn21: r21, logReturn63: r63,
                           momentum: momentum, drawdown63: drawdown, windows: (w1, w5, w21, w63, wm))
    }

    /// A price series with its log returns and statistics, computed once by
    /// ``logReturns(_:)`` and ``stats(_:returns:)``: a holder of market
    /// state can keep it between requests, and the engine uses it as is.
    public struct SeriesData: Sendable {
        public let prices: [Double]
        public let returns: [Double]
        public let stats: SeriesStats
        /// Every price is within `Instrument.validPrices` (checked once here, so that the
        /// engine need not scan the series on every request).
        public let pricesAreValid: Bool

        /// `prices`: oldest first, within `Instrument.validPrices`, the current price last
        /// (the engine refuses a series for which ``pricesAreValid`` is false).
        public init(prices: [Double]) {
            self.prices = prices
            pricesAreValid = prices.allSatisfy(Instrument.isValidPrice)
            returns = FeatureSet.logReturns(prices)
            stats = FeatureSet.stats(prices, returns: returns)
        }
    }

    /// The series of an instrument: its history with the current price as
    /// the newest point (appended when it differs from the last one).
    public static func series(of instrument: Instrument) -> [Double] {
        var p = instrument.priceHistory
        if p.last != instrument.price { p.append(instrument.price) }
        return p
    }

    /// Writes the feature rows (row-major, ``count`` per asset) into
    /// `output`, which must hold `stats.count * count` values.
    ///
    /// - Parameters:
    ///   - stats: per asset, its series statistics.
    ///   - defaultVolatility: per asset, the annualised volatility used when it has no returns.
    ///   - current, strategic: per asset, weights.
    public static func fill(_ output: inout [Float], stats: [SeriesStats], defaultVolatility: [Double],
                            current: [Double], strategic: [Double])
    {
        let n = stats.count
        precondition(output.count >= n * count && defaultVolatility.count == n && current.count == n
            && strategic.count == n, "FeatureSet.fill: mismatched sizes")
        guard n > 0 else { return }
        let sqrtYear = tradingDaysPerYear.squareRoot()
        var volAnn = [Double](repeating: 0, count: n)
        var ret21z = [Double](repeating: 0, count: n)
        for i in 0..<n {
            let daily = stats[i].dailyVolatility ?? defaultVolatility[i] / sqrtYear
            volAnn[i] = daily * sqrtYear
        }
        let meanVol = volAnn.reduce(0, +) / Double(n)
        func z(_ r: Double, _ window: Int, _ daily: Double) -> Double {
            guard window > 0, daily > 1e-12 else { return 0 }
            return min(clip, max(-clip, r / (daily * Double(window).squareRoot())))
        }
        for i in 0..<n {
            let s = stats[i]
            let daily = volAnn[i] / sqrtYear
            ret21z[i] = z(s.logReturn21, s.windows.2, daily)
        }
        let meanRet21z = ret21z.reduce(0, +) / Double(n)
        for i in 0..<n {
            let s = stats[i]
            let daily = volAnn[i] / sqrtYear
            let row = i * count
            output[row + 0] = Float(z(s.logReturn1, s.windows.0, daily))
            output[row + 1] = Float(z(s.logReturn5, s.windows.1, daily))
            output[row + 2] = Float(ret21z[i])
            output[row + 3] = Float(z(s.logReturn63, s.windows.3, daily))
            output[row + 4] = Float(z(s.momentum, s.windows.4, daily))
            output[row + 5] = Float(volAnn[i])
            output[row + 6] = Float(meanVol > 1e-12 ? volAnn[i] / meanVol : 1)
            output[row + 7] = Float(s.drawdown63)
            output[row + 8] = Float(ret21z[i] - meanRet21z)
            output[row + 9] = Float(current[i])
            output[row + 10] = Float(strategic[i])
            output[row + 11] = Float(current[i] - strategic[i])
        }
    }

    /// Why `modelFeatures` (a policy's `keel.features`) cannot be served, or
    /// nil when it equals ``names``.
    public static func mismatch(_ modelFeatures: [String]) -> String? {
        if modelFeatures == names { return nil }
        if modelFeatures.count != names.count {
            return "keel.features names \(modelFeatures.count) features; Keel's feature set has \(names.count): "
                + names.joined(separator: ",")
        }
        let k = names.indices.first { modelFeatures[$0] != names[$0] } ?? 0
        return "keel.features[\(k)] is '\(modelFeatures[k])' but Keel's feature \(k) is '\(names[k])' "
            + "(expected: \(names.joined(separator: ",")))"
    }
}
