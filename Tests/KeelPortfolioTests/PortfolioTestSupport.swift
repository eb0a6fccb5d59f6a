import Foundation
import Testing

@testable import KeelPortfolio

/// Test conveniences on Keel's seeded generator.
extension SplitMix64 {
    mutating func uniform(_ a: Double, _ b: Double) -> Double { a + (b - a) * unit() }
    mutating func logUniform(_ a: Double, _ b: Double) -> Double { exp(uniform(log(a), log(b))) }
    mutating func int(_ range: ClosedRange<Int>) -> Int {
        range.lowerBound + Int(next() % UInt64(range.upperBound - range.lowerBound + 1))
    }
    mutating func chance(_ p: Double) -> Bool { unit() < p }
    mutating func pick<T>(_ values: [T]) -> T { values[int(0...(values.count - 1))] }
}

/// A policy that is a fixed linear function of the features.
struct LinearPolicy: PolicyScorer {
    var coefficients: [Float]
    var bias: Float = 0
    var featureNames: [String] = FeatureSet.names

    init(coefficients: [Float], bias: Float = 0, featureNames: [String] = FeatureSet.names) {
        self.coefficients = coefficients
        self.bias = bias
        self.featureNames = featureNames
    }

    init(rng: inout SplitMix64) {
        coefficients = (0..<FeatureSet.count).map { _ in Float(rng.uniform(-1, 1)) }
    }

    /// Scores every asset the same: no signal.
    static let flat = LinearPolicy(coefficients: [Float](repeating: 0, count: FeatureSet.count))

    func scores(_ features: [Float], rows: Int) throws -> [Float] {
        let width = FeatureSet.count
        precondition(features.count == rows * width)
        return (0..<rows).map { r in
            var s = bias
            for j in 0..<width { s += coefficients[j] * features[r * width + j] }
            return s
        }
    }
}

/// Scores every asset the same (no signal, so targets are the strategic weights).
struct ConstantPolicy: PolicyScorer {
    var value: Float = 0
    var featureNames: [String] { FeatureSet.names }
    func scores(_ features: [Float], rows: Int) throws -> [Float] { [Float](repeating: value, count: rows) }
}

struct FailingPolicy: PolicyScorer {
    struct Boom: Error {}
    var featureNames: [String] { FeatureSet.names }
    func scores(_ features: [Float], rows: Int) throws -> [Float] { throw Boom() }
}

/// A smooth price history: constant daily log return `r`, `count` points ending at `last`.
func geometricSeries(count: Int, dailyLogReturn r: Double, last: Double) -> [Double] {
    (0..<count).map { k in last * exp(-r * Double(count - 1 - k)) }
}

/// A random-walk price history ending at `last` (so the instrument's price,
/// when equal to `last`, is not appended again).
func randomWalk(_ rng: inout SplitMix64, count: Int, dailyVol: Double, last: Double) -> [Double] {
    guard count > 0 else { return [] }
    var logs = [Double](repeating: 0, count: count)
    for k in stride(from: count - 2, through: 0, by: -1) { logs[k] = logs[k + 1] - dailyVol * rng.normal() }
    return logs.map { last * exp($0) }
}

extension Instrument {
    /// An equity with `count` days of history at daily volatility `vol`.
    static func test(_ id: String, price: Double = 100, sector: String = "S", assetClass: AssetClass = .equity,
                     esg: Double? = 50, lot: Double = 1, knowledge: KnowledgeLevel = .basic,
                     history: [Double] = []) -> Instrument
    {
        Instrument(id: id, price: price, sector: sector, assetClass: assetClass, esgScore: esg, lotSize: lot,
                   requiredKnowledge: knowledge, priceHistory: history)
    }
}

// MARK: - An independent EWMA covariance (the test's own, written from the definition)

/// Σ[i][j] = 252 · Σ_k ω_k r_ik r_jk over the last T returns (T = shortest
/// history with ≥ 20 returns, ≤ 126), ω_k ∝ λ^(T-1-k) normalised; assets with
/// fewer than 20 returns: default variance on the diagonal, no correlation.
func referenceCovariance(series: [[Double]], defaultVolatility: [Double], lambda: Double = 0.94) -> [[Double]] {
    let n = series.count
    let usable = (0..<n).filter { series[$0].count - 1 >= 20 }
    let t = usable.map { series[$0].count - 1 }.min().map { min($0, 126) } ?? 0
    var cov = [[Double]](repeating: [Double](repeating: 0, count: n), count: n)
    var omega = (0..<t).map { k in pow(lambda, Double(t - 1 - k)) }
    let total = omega.reduce(0, +)
    omega = omega.map { $0 / total }
    func ret(_ i: Int, _ k: Int) -> Double {
        // k = 0 is the oldest of the last t returns.
        let p = series[i]
        let day = p.count - t + k
        return log(p[day] / p[day - 1])
    }
    for i in usable {
        for j in usable {
            var s = 0.0
            for k in 0..<t { s += omega[k] * ret(i, k) * ret(j, k) }
            cov[i][j] = 252 * s
        }
    }
    for i in 0..<n where !usable.contains(i) { cov[i][i] = defaultVolatility[i] * defaultVolatility[i] }
    return cov
}

func quadraticForm(_ m: [[Double]], _ w: [Double]) -> Double {
    var s = 0.0
    for i in 0..<w.count { for j in 0..<w.count { s += w[i] * m[i][j] * w[j] } }
    return s
}

/// The EWMA daily volatility as FeatureSet documents it: seeded with the mean
/// square of the first (up to) 10 log returns, then decayed with λ = 0.94.
func referenceDailyVolatility(_ p: [Double]) -> Double? {
    guard p.count >= 2 else { return nil }
    let r = (1..<p.count).map { log(p[$0] / p[$0 - 1]) }
    let seed = min(10, r.count)
    var v = r.prefix(seed).map { $0 * $0 }.reduce(0, +) / Double(seed)
    for k in seed..<r.count { v = 0.94 * v + 0.06 * r[k] * r[k] }
    return v.squareRoot()
}
