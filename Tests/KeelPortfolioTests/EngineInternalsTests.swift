import Testing

@testable import KeelPortfolio

/// The engine's inner helpers, against slower reference computations.
@Suite("Engine internals: the step along the segment, name lookups, texts")
struct EngineInternalsTests {
    /// A random segment whose start satisfies `limit` and whose end does not.
    static func segment(seed: UInt64, n: Int) -> (shift: [Double], d: [Double], limit: Double) {
        var rng = SplitMix64(seed: seed)
        let shift = (0..<n).map { _ in rng.chance(0.3) ? rng.uniform(-0.02, 0.02) : 0 }
        let d = (0..<n).map { _ in rng.chance(0.2) ? 0 : rng.uniform(-0.05, 0.05) }
        let atStart = oneWayTurnover(shift, d, 0), atEnd = oneWayTurnover(shift, d, 1)
        return (shift, d, atStart + (atEnd - atStart) * rng.uniform(0.05, 0.95))
    }

    @Test("the turnover-limited step equals a 60-step bisection", arguments: Array(UInt64(1)...40))
    func largestStepMatchesBisection(seed: UInt64) throws {
        let n = [1, 3, 10, 100, 1000][Int(seed % 5)]
        let (shift, d, limit) = Self.segment(seed: seed, n: n)
        guard oneWayTurnover(shift, d, 1) > limit else { return }  // nothing to limit (e.g. d = 0)
        var lo = 0.0, hi = 1.0
        for _ in 0..<60 {
            let mid = (lo + hi) / 2
            if oneWayTurnover(shift, d, mid) <= limit { lo = mid } else { hi = mid }
        }
        let step = try #require(largestStep(shift, d, limit: limit))
        #expect(oneWayTurnover(shift, d, step) <= limit)
        #expect(abs(step - lo) <= 1e-9, "step \(step), bisection \(lo)")
    }

    @Test("a limit the start already meets exactly, and one met only at the start")
    func boundaryLimits() throws {
        let shift = [0.01, -0.01, 0], d = [0.1, 0, -0.1]
        // At α = 0 turnover is 0.01; any step raises it.
        let step = try #require(largestStep(shift, d, limit: 0.01))
        #expect(step < 1e-9)
        #expect(oneWayTurnover(shift, d, step) <= 0.01)
        let half = try #require(largestStep(shift, d, limit: oneWayTurnover(shift, d, 0.5)))
        #expect(abs(half - 0.5) < 1e-12)
    }

    @Test("names resolve the same below and above the switch to a dictionary", arguments: [3, 16, 17, 200])
    func nameIndex(count: Int) {
        var index = NameIndex()
        let names = (0..<count).map { "sector \($0 * 7919 % 1000)" }
        for (k, name) in names.enumerated() {
            #expect(index[name] == nil)
            index.insert(name, k % 2 == 0 ? k : -1)
        }
        for (k, name) in names.enumerated() { #expect(index[name] == (k % 2 == 0 ? k : -1)) }
        #expect(index["not a sector"] == nil)
    }

    @Test("asset-class ordinals number the cases in order")
    func ordinals() {
        #expect(AssetClass.allCases.map(\.ordinal) == Array(0..<AssetClass.caseCount))
    }

    @Test("numbers are trimmed in place", arguments: [
        (1_400.0, "1400"), (0.123456, "0.1235"), (-2.5, "-2.5"), (-0.00001, "0"), (10.0, "10"), (0.1, "0.1"),
        (.nan, "nan"), (2e20, "2e+20"),
    ])
    func trimmed(_ value: Double, _ expected: String) {
        #expect(Format.trimmed(value) == expected)
        var t = TextBuilder()
        t.add("x=")
        t.number(value)
        #expect(t.text == "x=" + expected)
    }

    @Test("the summary paragraph of an executable decision, word for word")
    func executableParagraph() {
        func order(_ id: String, _ side: Side, _ quantity: Double, _ reasons: [ReasonCode]) -> Order {
            Order(instrumentID: id, side: side, quantity: quantity, price: 100, estimatedCost: 1.5, expectedBenefit: 3,
                  required: false, reasons: reasons, topFeatures: [], explanation: "")
        }
        let before = RiskFigures(volatility: 0.143, trackingError: 0.021, concentration: 0.1, maxVolatility: 0.2)
        let after = RiskFigures(volatility: 0.1384, trackingError: 0.0125, concentration: 0.1, maxVolatility: 0.2)
        var d = RebalanceDecision(
            status: .executable, targets: [],
            orders: [order("A", .buy, 10, [.drift, .policySignal]), order("B", .sell, 1, [.esgExclusion]),
                     order("C", .buy, 12_345, [.drift])],
            compliance: ComplianceReport(checks: [], conflicts: []), riskBefore: before, riskAfter: after,
            turnover: 0.0315, totalValue: 1e7, cashWeightBefore: 0.02, cashWeightAfter: 0.01,
            totalEstimatedCost: 4.5, summary: "", notes: [])
        let profile = RiskProfile(riskTolerance: 4, capacityForLoss: .full, horizonYears: 10, knowledge: .advanced,
                                  objectives: [.growth])
        #expect(Summary.paragraph(d, profile: profile, volRule: "") == "We propose 3 trades (2 buys, 1 sale) worth "
            + "about 1,235,600.00 in all, a one-way turnover of 3.2% of the portfolio. Of these, 1 sell excluded or "
            + "low-ESG holdings, 2 bring the allocation back toward its strategic weights, 1 follow the model's market "
            + "signal. Expected portfolio volatility moves from 14.3% to 13.8% (the client's profile, risk tolerance 4 "
            + "of 7, allows up to 20.0%), and tracking error against the strategic allocation from 2.1% to 1.3%. "
            + "Estimated trading costs are 4.50. Every trade respects the mandate's limits and the client's "
            + "suitability profile.")
        d.orders = [order("A", .sell, 1, [])]
        #expect(Summary.paragraph(d, profile: profile, volRule: "").hasPrefix(
            "We propose 1 trade (0 buys, 1 sale) worth about 100.00 in all, a one-way turnover of 3.2% of the "
                + "portfolio. Expected portfolio volatility"))
    }
}
