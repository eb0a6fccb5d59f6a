import Foundation
import Testing

@testable import KeelPortfolio

@Suite("RiskModel and Suitability")
struct RiskModelTests {
    /// Correlated random series of the given lengths (all ending on the same day).
    static func correlatedSeries(_ rng: inout SplitMix64, lengths: [Int]) -> [[Double]] {
        let longest = lengths.max() ?? 0
        let market = (0..<longest).map { _ in 0.01 * rng.normal() }
        return lengths.map { count in
            let beta = rng.uniform(-1, 1.5), idio = rng.uniform(0.002, 0.02)
            var logs = [Double](repeating: log(rng.uniform(5, 500)), count: count)
            for k in stride(from: count - 2, through: 0, by: -1) {
                logs[k] = logs[k + 1] - beta * market[longest - count + k + 1] - idio * rng.normal()
            }
            return logs.map { exp($0) }
        }
    }

    @Test("variance equals the hand-built EWMA covariance quadratic form", arguments: [
        [60, 60, 60], [30, 50, 130], [130, 130, 130, 130], [40, 10, 1, 70], [5, 3], [21, 21], [20, 200, 300],
    ])
    func varianceMatchesHandBuiltCovariance(lengths: [Int]) {
        var rng = SplitMix64(seed: UInt64(lengths.reduce(7, &+)))
        let series = Self.correlatedSeries(&rng, lengths: lengths)
        let defaults = lengths.indices.map { 0.1 + 0.05 * Double($0) }
        let model = RiskModel(series: series, defaultVolatility: defaults)
        let sigma = referenceCovariance(series: series, defaultVolatility: defaults)
        // Window: the shortest history with at least 20 returns, at most 126.
        let usable = lengths.filter { $0 - 1 >= 20 }
        #expect(model.window == (usable.min().map { min($0 - 1, 126) } ?? 0))
        #expect(model.defaulted == lengths.indices.filter { lengths[$0] - 1 < 20 })
        for _ in 0..<20 {
            let w = lengths.map { _ in rng.uniform(-0.5, 1) }
            let expected = quadraticForm(sigma, w)
            #expect(abs(model.variance(w) - expected) <= 1e-12 * max(1, expected))
            #expect(abs(model.volatility(w) - expected.squareRoot()) <= 1e-9)
        }
        // Each asset alone: its own (EWMA or default) volatility.
        for i in lengths.indices {
            var e = [Double](repeating: 0, count: lengths.count)
            e[i] = 1
            #expect(abs(model.volatility(e) - sigma[i][i].squareRoot()) <= 1e-12)
            if lengths[i] - 1 < 20 { #expect(abs(model.volatility(e) - defaults[i]) <= 1e-15) }
        }
    }

    @Test("quadratic(f, d) is the variance along the segment f + α·d")
    func quadraticConsistent() {
        var rng = SplitMix64(seed: 5)
        let series = Self.correlatedSeries(&rng, lengths: [80, 80, 15, 100, 60])
        let model = RiskModel(series: series, defaultVolatility: [0.2, 0.2, 0.3, 0.2, 0.1])
        for _ in 0..<50 {
            let f = (0..<5).map { _ in rng.uniform(0, 0.4) }
            let d = (0..<5).map { _ in rng.uniform(-0.3, 0.3) }
            let (a, b, c) = model.quadratic(f, d)
            #expect(abs(a - model.variance(f)) <= 1e-15)
            for alpha in [0.0, 0.25, 0.5, 1.0, 2.0, -1.0] {
                let w = zip(f, d).map { $0 + alpha * $1 }
                let v = model.variance(w)
                #expect(abs(a + 2 * alpha * b + alpha * alpha * c - v) <= 1e-13 * max(1, v))
            }
            #expect(c >= 0)
        }
    }

    @Test("Σw and Σᵢᵢ (the volatility repair's inputs) match the hand-built covariance")
    func marginalRisk() {
        var rng = SplitMix64(seed: 6)
        let series = Self.correlatedSeries(&rng, lengths: [80, 40, 15, 100])
        let defaults = [0.2, 0.2, 0.3, 0.2]
        let model = RiskModel(series: series, defaultVolatility: defaults)
        let sigma = referenceCovariance(series: series, defaultVolatility: defaults)
        let w = [0.3, 0.2, 0.1, 0.4]
        let g = model.covarianceTimes(w), own = model.ownVariance()
        for i in 0..<4 {
            let expected = (0..<4).map { sigma[i][$0] * w[$0] }.reduce(0, +)
            #expect(abs(g[i] - expected) <= 1e-14)
            #expect(abs(own[i] - sigma[i][i]) <= 1e-14)
        }
    }

    @Test("short histories get the asset class's default volatility and no correlation")
    func defaultVolatility() {
        let series: [[Double]] = [[100], [], [1, 2, 3], [10, 11]]
        let classes: [AssetClass] = [.equity, .fixedIncome, .cashEquivalent, .commodity]
        let model = RiskModel(series: series, defaultVolatility: classes.map(\.defaultVolatility))
        #expect(model.window == 0 && model.defaulted == [0, 1, 2, 3])
        #expect(abs(model.volatility([1, 0, 0, 0]) - 0.20) < 1e-15)
        #expect(abs(model.volatility([0, 1, 0, 0]) - 0.06) < 1e-15)
        #expect(abs(model.volatility([0, 0, 1, 0]) - 0.005) < 1e-15)
        let w = [0.25, 0.25, 0.25, 0.25]
        let expected = (0.0625 * (0.04 + 0.0036 + 0.000025 + 0.0625)).squareRoot()
        #expect(abs(model.volatility(w) - expected) < 1e-15)
        #expect(AssetClass.allCases.allSatisfy { $0.defaultVolatility > 0 })
    }

    @Test("figures: volatility, tracking error against strategic, Herfindahl concentration")
    func figures() {
        var rng = SplitMix64(seed: 8)
        let series = Self.correlatedSeries(&rng, lengths: [60, 60, 60])
        let model = RiskModel(series: series, defaultVolatility: [0.2, 0.2, 0.2])
        let w = [0.5, 0.3, 0.1], s = [0.4, 0.4, 0.2]
        let f = model.figures(w, strategic: s, maxVolatility: 0.12)
        #expect(f.volatility == model.volatility(w))
        #expect(f.trackingError == model.volatility([0.1, -0.1, -0.1]))
        #expect(abs(f.concentration - 0.35) < 1e-15)
        #expect(f.maxVolatility == 0.12)
    }

    // MARK: - Suitability

    @Test("the SRI table: the PRIIPs volatility bands", arguments: zip(1...7, [0.005, 0.05, 0.12, 0.20, 0.30, 0.80, Double.infinity]))
    func sriTable(level: Int, limit: Double) {
        let (value, rule) = Suitability.maxVolatility(RiskProfile(riskTolerance: level))
        #expect(value == limit)
        #expect(rule == "suitability.risk_tolerance (SRI \(level))")
    }

    @Test("capacity for loss, horizon and a capital-preservation objective only tighten the limit")
    func tightening() {
        func limit(_ p: RiskProfile) -> (Double, String) { Suitability.maxVolatility(p) }
        #expect(limit(RiskProfile(riskTolerance: 6, capacityForLoss: .none)) == (0.05, "suitability.capacity_for_loss (none)"))
        #expect(limit(RiskProfile(riskTolerance: 6, capacityForLoss: .limited)) == (0.12, "suitability.capacity_for_loss (limited)"))
        #expect(limit(RiskProfile(riskTolerance: 7, capacityForLoss: .significant)) == (0.30, "suitability.capacity_for_loss (significant)"))
        #expect(limit(RiskProfile(riskTolerance: 7, capacityForLoss: .full)).0 == .infinity)
        // Tightening never loosens: SRI 2 stays at 5 % with limited capacity.
        #expect(limit(RiskProfile(riskTolerance: 2, capacityForLoss: .limited)) == (0.05, "suitability.risk_tolerance (SRI 2)"))
        #expect(limit(RiskProfile(riskTolerance: 5, horizonYears: 2)) == (0.12, "suitability.horizon (2 years)"))
        #expect(limit(RiskProfile(riskTolerance: 5, horizonYears: 3)).0 == 0.30)
        #expect(limit(RiskProfile(riskTolerance: 5, horizonYears: 0)).0 == 0.30, "0 = not stated")
        #expect(limit(RiskProfile(riskTolerance: 5, objectives: [.capitalPreservation]))
            == (0.05, "suitability.objectives (capital preservation)"))
        #expect(limit(RiskProfile(riskTolerance: 5, objectives: [.capitalPreservation, .income])).0 == 0.30)
        // The tightest rule wins and is named.
        #expect(limit(RiskProfile(riskTolerance: 7, capacityForLoss: .limited, horizonYears: 1,
                                  objectives: [.capitalPreservation])) == (0.05, "suitability.objectives (capital preservation)"))
    }

    @Test("every profile: the limit is the minimum of the applicable rules")
    func exhaustiveProfiles() {
        for level in 1...7 {
            for capacity in CapacityForLoss.allCases {
                for horizon in [0, 1, 2, 3, 10] {
                    for objectives in [[], [Objective.capitalPreservation], [.growth], [.capitalPreservation, .growth]] {
                        let p = RiskProfile(riskTolerance: level, capacityForLoss: capacity, horizonYears: horizon,
                                            objectives: objectives)
                        #expect(Suitability.maxVolatility(p).limit == EnginePropertyTests.maxVolatility(p))
                    }
                }
            }
        }
    }
}
