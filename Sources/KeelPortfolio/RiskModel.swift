#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// An EWMA covariance of daily log returns, annualised, held in factor form:
/// Σ = Fᵀ F + D, where row t of F is √(252 · ω_t) · r_t (ω_t the normalised
/// EWMA weight of day t, RiskMetrics convention: no demeaning) and D is a
/// diagonal of default variances for assets without enough history. The
/// quadratic form wᵀΣw then costs O(n·T) instead of O(n²·T), and it is
/// exact: it is the covariance, not an approximation of it.
///
/// Assets with at least ``minimumReturns`` returns share a window of the
/// last T returns (T = the shortest such history, at most ``maximumWindow``),
/// aligned at the newest observation. The others get their asset class's
/// default volatility and no correlation.
public struct RiskModel: Sendable {
    public static let minimumReturns = 20
    public static let maximumWindow = 126

    public let assets: Int
    /// Days in the window (rows of F).
    public let window: Int
    /// F, row-major [window × assets].
    private let factors: [Double]
    /// Diagonal variances (0 for assets in F).
    private let diagonal: [Double]
    /// Assets that have no estimate of their own.
    public let defaulted: [Int]

    /// - Parameters:
    ///   - series: per asset, its price series (oldest first, positive).
    ///   - defaultVolatility: per asset, the annualised volatility for short histories.
    public init(series: [[Double]], defaultVolatility: [Double], lambda: Double = FeatureSet.ewmaLambda) {
        self.init(returns: series.map(FeatureSet.logReturns), defaultVolatility: defaultVolatility, lambda: lambda)
    }

    /// The same from each asset's daily log returns (oldest first), as
    /// ``FeatureSet/logReturns(_:)`` gives them.
    public init(returns: [[Double]], defaultVolatility: [Double], lambda: Double = FeatureSet.ewmaLambda) {
        let n = returns.count
        assets = n
        var usable = [Bool](repeating: false, count: n)
        var shortest = Int.max
        for i in 0..<n where returns[i].count >= Self.minimumReturns {
            usable[i] = true
            shortest = min(shortest, returns[i].count)
        }
        let t = shortest == Int.max ? 0 : min(shortest, Self.maximumWindow)
        window = t
        var f = [Double](repeating: 0, count: t * n)
        if t > 0 {
            // Weights λ^(t-1-k), normalised to sum 1; k = 0 is the oldest day.
            var weights = [Double](repeating: 0, count: t)
            var w = 1.0
            var total = 0.0
            for k in stride(from: t - 1, through: 0, by: -1) { weights[k] = w; total += w; w *= lambda }
            for k in 0..<t { weights[k] = (weights[k] / total * FeatureSet.tradingDaysPerYear).squareRoot() }
            f.withUnsafeMutableBufferPointer { fp in
                for i in 0..<n where usable[i] {
                    returns[i].withUnsafeBufferPointer { r in
                        let offset = r.count - t
                        for k in 0..<t { fp[k &* n &+ i] = weights[k] * r[offset &+ k] }
                    }
                }
            }
        }
        factors = f
        var d = [Double](repeating: 0, count: n)
        var defaulted: [Int] = []
        for i in 0..<n where !usable[i] {
            d[i] = defaultVolatility[i] * defaultVolatility[i]
            defaulted.append(i)
        }
        diagonal = d
        self.defaulted = defaulted
    }

    /// wᵀΣw for instrument weights `w` (cash carries no risk).
    public func variance(_ w: [Double]) -> Double {
        var total = 0.0
        let n = assets
        factors.withUnsafeBufferPointer { fp in
            w.withUnsafeBufferPointer { wp in
                guard let f = fp.baseAddress, let v = wp.baseAddress else { return }
                for k in 0..<window {
                    let x = dot(f + k * n, v, n)
                    total += x * x
                }
            }
        }
        for i in 0..<n where diagonal[i] != 0 { total += diagonal[i] * w[i] * w[i] }
        return total
    }

    /// Annualised volatility of `w`.
    public func volatility(_ w: [Double]) -> Double { variance(w).squareRoot() }

    /// Σw, the marginal variance (half the gradient of wᵀΣw). O(n·T).
    func covarianceTimes(_ w: [Double]) -> [Double] {
        let n = assets
        var out = [Double](repeating: 0, count: n)
        factors.withUnsafeBufferPointer { fp in
            w.withUnsafeBufferPointer { wp in
                guard let f = fp.baseAddress, let v = wp.baseAddress else { return }
                for k in 0..<window {
                    let row = k * n
                    let x = dot(f + row, v, n)
                    if x != 0 { for i in 0..<n { out[i] += fp[row + i] * x } }
                }
            }
        }
        for i in 0..<n { out[i] += diagonal[i] * w[i] }
        return out
    }

    /// Σᵢᵢ, each asset's own variance. O(n·T).
    func ownVariance() -> [Double] {
        let n = assets
        var out = diagonal
        for k in 0..<window {
            for i in 0..<n { let v = factors[k * n + i]; out[i] += v * v }
        }
        return out
    }

    /// The variance along a segment, (f + α·d)ᵀ Σ (f + α·d) = A + 2αB + α²C:
    /// returns (A, B, C).
    public func quadratic(_ f: [Double], _ d: [Double]) -> (Double, Double, Double) {
        var a = 0.0, b = 0.0, c = 0.0
        let n = assets
        factors.withUnsafeBufferPointer { fp in
            f.withUnsafeBufferPointer { fb in
                d.withUnsafeBufferPointer { db in
                    guard let m = fp.baseAddress, let u = fb.baseAddress, let v = db.baseAddress else { return }
                    for k in 0..<window {
                        let x = dot(m + k * n, u, n), y = dot(m + k * n, v, n)
                        a += x * x; b += x * y; c += y * y
                    }
                }
            }
        }
        for i in 0..<n where diagonal[i] != 0 {
            a += diagonal[i] * f[i] * f[i]
            b += diagonal[i] * f[i] * d[i]
            c += diagonal[i] * d[i] * d[i]
        }
        return (a, b, c)
    }

    /// Volatility, tracking error against `strategic`, and concentration.
    /// `volatility`: `w`'s, when the caller has it already.
    public func figures(_ w: [Double], strategic: [Double], maxVolatility: Double, volatility known: Double? = nil)
        -> RiskFigures
    {
        var active = w
        var hhi = 0.0
        for i in 0..<w.count { active[i] -= strategic[i]; hhi += w[i] * w[i] }
        return RiskFigures(volatility: known ?? volatility(w), trackingError: volatility(active), concentration: hhi,
                           maxVolatility: maxVolatility)
    }
}

/// MiFID II suitability: the profile's limits.
public enum Suitability {
    /// The highest annualised volatility of each SRI class (1...7): the
    /// volatility bands of the PRIIPs market-risk classes (MRM 1: < 0.5 %,
    /// 2: < 5 %, 3: < 12 %, 4: < 20 %, 5: < 30 %, 6: < 80 %, 7: above).
    public static let sriVolatility: [Double] = [0.005, 0.05, 0.12, 0.20, 0.30, 0.80, .infinity]

    /// The portfolio volatility the profile allows, with the rule that binds.
    /// Capacity for loss, horizon and a capital-preservation objective can
    /// only lower the risk tolerance's limit:
    /// - capacity for loss none: 5 %; limited: 12 %; significant: 30 %;
    /// - horizon under 3 years: 12 %; under 1 year is not representable (0 = not stated);
    /// - capital preservation as the only objective: 5 %.
    public static func maxVolatility(_ profile: RiskProfile) -> (limit: Double, rule: String) {
        let level = min(7, max(1, profile.riskTolerance))
        var limit = sriVolatility[level - 1]
        var rule = "suitability.risk_tolerance (SRI \(level))"
        func tighten(_ value: Double, _ why: String) {
            if value < limit { limit = value; rule = why }
        }
        switch profile.capacityForLoss {
        case .none: tighten(0.05, "suitability.capacity_for_loss (none)")
        case .limited: tighten(0.12, "suitability.capacity_for_loss (limited)")
        case .significant: tighten(0.30, "suitability.capacity_for_loss (significant)")
        case .full, .unspecified: break
        }
        if profile.horizonYears > 0 && profile.horizonYears < 3 {
            tighten(0.12, "suitability.horizon (\(profile.horizonYears) years)")
        }
        if profile.objectives == [.capitalPreservation] {
            tighten(0.05, "suitability.objectives (capital preservation)")
        }
        return (limit, rule)
    }
}

/// Σ a[i]·b[i] with eight independent partial sums in four two-lane vectors
/// (so the additions pipeline instead of waiting on each other, and each
/// load fetches two values), combined in a fixed order: deterministic, and
/// about eight times faster than one running sum.
@inline(__always)
func dot(_ a: UnsafePointer<Double>, _ b: UnsafePointer<Double>, _ n: Int) -> Double {
    typealias V = SIMD2<Double>
    let pa = UnsafeRawPointer(a), pb = UnsafeRawPointer(b)
    var s0 = V(), s1 = V(), s2 = V(), s3 = V()
    var i = 0
    while i &+ 8 <= n {
        let o = i &* 8
        s0 += pa.loadUnaligned(fromByteOffset: o, as: V.self) * pb.loadUnaligned(fromByteOffset: o, as: V.self)
        s1 += pa.loadUnaligned(fromByteOffset: o &+ 16, as: V.self) * pb.loadUnaligned(fromByteOffset: o &+ 16, as: V.self)
        s2 += pa.loadUnaligned(fromByteOffset: o &+ 32, as: V.self) * pb.loadUnaligned(fromByteOffset: o &+ 32, as: V.self)
        s3 += pa.loadUnaligned(fromByteOffset: o &+ 48, as: V.self) * pb.loadUnaligned(fromByteOffset: o &+ 48, as: V.self)
        i &+= 8
    }
    var tail = 0.0
    while i < n {
        tail += a[i] * b[i]
        i &+= 1
    }
    let s = (s0 + s1) + (s2 + s3)
    return (s[0] + s[1]) + tail
}
