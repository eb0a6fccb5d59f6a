import Foundation
import Testing

@testable import KeelPortfolio

/// Small hand-made cases that pin the engine's behaviour.
@Suite("Engine: hand-made cases")
struct EngineUnitTests {
    /// `count` daily prices ending at `last` with a fixed, seeded daily volatility.
    static func history(_ seed: UInt64, vol: Double = 0.012, count: Int = 80, last: Double = 100) -> [Double] {
        var rng = SplitMix64(seed: seed)
        return randomWalk(&rng, count: count, dailyVol: vol, last: last)
    }

    static func equity(_ id: String, seed: UInt64, price: Double = 100, sector: String = "S", esg: Double? = 50,
                       lot: Double = 1, knowledge: KnowledgeLevel = .basic, vol: Double = 0.012) -> Instrument
    {
        Instrument.test(id, price: price, sector: sector, esg: esg, lot: lot, knowledge: knowledge,
                        history: history(seed, vol: vol, last: price))
    }

    static let tolerant = RiskProfile(riskTolerance: 7, capacityForLoss: .full, horizonYears: 10, knowledge: .advanced,
                                      objectives: [.growth])

    static func input(_ instruments: [Instrument], holdings: [String: Double], cash: Double, mandate: Mandate,
                      profile: RiskProfile = tolerant) -> RebalanceInput
    {
        RebalanceInput(portfolio: Portfolio(accountID: "acct", holdings: holdings.sorted { $0.key < $1.key }
                .map { Holding(instrumentID: $0.key, quantity: $0.value) }, cash: cash),
                       instruments: instruments, profile: profile, mandate: mandate)
    }

    static func run(_ input: RebalanceInput, policy: some PolicyScorer = LinearPolicy.flat) throws -> RebalanceDecision {
        let d = try RebalanceEngine().rebalance(input, policy: policy)
        let problems = EnginePropertyTests.violations(input, d, policyUsed: true)
        #expect(problems.isEmpty, "independent checker: \(problems)")
        return d
    }

    static func order(_ d: RebalanceDecision, _ id: String) -> Order? { d.orders.first { $0.instrumentID == id } }
    static func weight(_ d: RebalanceDecision, _ id: String) -> Double {
        d.targets.first { $0.instrumentID == id }!.targetWeight
    }

    // MARK: - Forced sales

    @Test("an excluded holding is sold entirely, with reason EXCLUSION")
    func excludedHoldingSold() throws {
        let instruments = [Self.equity("A", seed: 1), Self.equity("B", seed: 2)]
        let mandate = Mandate(strategicWeights: [("A", 0.5), ("B", 0.5)], excludedInstruments: ["A"])
        let d = try Self.run(Self.input(instruments, holdings: ["A": 100, "B": 100], cash: 0, mandate: mandate))
        #expect(d.status == .executable)
        let sell = try #require(Self.order(d, "A"))
        #expect(sell.side == .sell && sell.quantity == 100 && sell.required)
        #expect(sell.reasons.contains(.exclusion))
        #expect(sell.explanation.contains("excludes"))
        #expect(Self.weight(d, "A") == 0)
        #expect(d.compliance.checks.contains { $0.rule == "mandate.excluded_instruments" && $0.passed })
    }

    @Test("a holding rated below the ESG floor is sold, with reason ESG_EXCLUSION; unrated ones are not bought")
    func esgBelowFloorSold() throws {
        let instruments = [Self.equity("A", seed: 1, esg: 10), Self.equity("B", seed: 2, esg: 80),
                           Self.equity("U", seed: 3, esg: nil)]
        let mandate = Mandate(strategicWeights: [("A", 0.4), ("B", 0.3), ("U", 0.3)], esgFloor: 30)
        let d = try Self.run(Self.input(instruments, holdings: ["A": 100], cash: 10_000, mandate: mandate))
        let sell = try #require(Self.order(d, "A"))
        #expect(sell.side == .sell && sell.quantity == 100)
        #expect(sell.reasons.contains(.esgExclusion))
        #expect(sell.explanation.contains("below the floor"))
        #expect(Self.order(d, "U") == nil, "an unrated instrument is not bought under an ESG floor")
        #expect(Self.order(d, "B")?.side == .buy)
    }

    @Test("an overweight instrument is trimmed to its cap, with reason CAP")
    func overweightTrimmed() throws {
        let instruments = [Self.equity("A", seed: 1), Self.equity("B", seed: 2), Self.equity("C", seed: 3)]
        let mandate = Mandate(strategicWeights: [("A", 0.6), ("B", 0.2), ("C", 0.2)], maxInstrumentWeight: 0.4)
        // A is 60 % of 100,000.
        let d = try Self.run(Self.input(instruments, holdings: ["A": 600, "B": 200, "C": 200], cash: 0,
                                        mandate: mandate))
        let sell = try #require(Self.order(d, "A"))
        #expect(sell.side == .sell && sell.required && sell.reasons.contains(.cap))
        let after = Self.weight(d, "A")
        #expect(after <= 0.4 + 1e-12)
        #expect(after >= 0.4 - 0.01, "trimmed to the cap, not far below it (got \(after))")
        #expect(d.compliance.checks.contains { $0.rule == "mandate.max_instrument_weight" && $0.passed })
    }

    @Test("a sector above its cap is brought back under it")
    func sectorCap() throws {
        let instruments = [Self.equity("A", seed: 1, sector: "Tech"), Self.equity("B", seed: 2, sector: "Tech"),
                           Self.equity("C", seed: 3, sector: "Health")]
        let mandate = Mandate(strategicWeights: [("A", 0.35), ("B", 0.35), ("C", 0.3)], sectorCaps: ["Tech": 0.5])
        let d = try Self.run(Self.input(instruments, holdings: ["A": 350, "B": 350, "C": 300], cash: 0,
                                        mandate: mandate))
        #expect(Self.weight(d, "A") + Self.weight(d, "B") <= 0.5 + 1e-9)
        #expect(d.orders.contains { $0.side == .sell && $0.reasons.contains(.cap) })
    }

    @Test("cash below its minimum is raised by sales, with reason CASH_TARGET")
    func minimumCashRaised() throws {
        let instruments = [Self.equity("A", seed: 1), Self.equity("B", seed: 2)]
        let mandate = Mandate(strategicWeights: [("A", 0.5), ("B", 0.5)], minCashWeight: 0.1)
        let d = try Self.run(Self.input(instruments, holdings: ["A": 500, "B": 500], cash: 0, mandate: mandate))
        #expect(d.status == .executable)
        #expect(d.cashWeightAfter >= 0.1)
        #expect(d.orders.allSatisfy { $0.side == .sell })
        #expect(d.orders.contains { $0.reasons.contains(.cashTarget) })
        #expect(d.notes.contains { $0.contains("minimum cash") }, "strategic weights scaled to leave the cash")
    }

    @Test("a tiny minimum-cash gap in a portfolio of coarse lots sells one small lot, not a big position")
    func smallCashGapCoarseLots() throws {
        // Regression: the cash pass sold from the largest position first, and the
        // forced point spread the sale over every holding, each rounded up to a lot.
        var instruments: [Instrument] = [Self.equity("BIG", seed: 1, price: 900, lot: 100)]
        var holdings: [String: Double] = ["BIG": 90]  // an odd lot: only a full exit is possible
        for k in 0..<10 {
            instruments.append(Self.equity("S\(k)", seed: UInt64(10 + k), price: 10, lot: 10))
            holdings["S\(k)"] = 1_000
        }
        // Value 81,000 + 100,000 = 181,000; cash 0; the minimum cash 0.5 % needs about 905.
        let mandate = Mandate(strategicWeights: instruments.map { ($0.id, 1.0 / 11) }, minCashWeight: 0.005,
                              maxTurnover: 0.02)
        let d = try Self.run(Self.input(instruments, holdings: holdings, cash: 0, mandate: mandate))
        #expect(d.status == .executable, "\(d.compliance.conflicts)")
        #expect(Self.order(d, "BIG") == nil)
        #expect(d.turnover <= 0.02)
        #expect(d.cashWeightAfter >= 0.005)
    }

    @Test("floating-point noise at a limit forces no sale")
    func noiseAtLimit() throws {
        // Weights that sum to 1 + 1 ulp with no cash: nothing is over any limit.
        let prices = [0.1, 0.2, 0.7]
        let instruments = prices.enumerated().map { k, p in Self.equity("I\(k)", seed: UInt64(k), price: p * 1000, lot: 1) }
        let mandate = Mandate(strategicWeights: instruments.enumerated().map { ($1.id, prices[$0]) }, maxTurnover: 0.01)
        let holdings = Dictionary(uniqueKeysWithValues: instruments.map { ($0.id, 1_000_000.0) })
        let d = try Self.run(Self.input(instruments, holdings: holdings, cash: 0, mandate: mandate))
        #expect(d.status == .noTrade, "\(d.orders.map { "\($0.side) \($0.quantity) \($0.instrumentID)" })")
    }

    // MARK: - Suitability

    @Test("an instrument that needs more knowledge than the client has is not bought")
    func knowledgeRestrictedNotBought() throws {
        let instruments = [Self.equity("A", seed: 1), Self.equity("X", seed: 2, knowledge: .advanced)]
        let mandate = Mandate(strategicWeights: [("A", 0.5), ("X", 0.5)])
        let profile = RiskProfile(riskTolerance: 7, knowledge: .basic)
        let d = try Self.run(Self.input(instruments, holdings: [:], cash: 100_000, mandate: mandate, profile: profile))
        #expect(Self.order(d, "X") == nil)
        #expect(Self.order(d, "A")?.side == .buy)
        #expect(d.compliance.checks.contains { $0.rule == "suitability.knowledge" && $0.passed })
    }

    @Test("a knowledge-restricted holding is kept (not bought, not forced out)")
    func knowledgeRestrictedHeld() throws {
        let instruments = [Self.equity("A", seed: 1), Self.equity("X", seed: 2, knowledge: .advanced)]
        let mandate = Mandate(strategicWeights: [("A", 0.3), ("X", 0.7)])
        let profile = RiskProfile(riskTolerance: 7, knowledge: .informed)
        let d = try Self.run(Self.input(instruments, holdings: ["X": 100], cash: 50_000, mandate: mandate,
                                        profile: profile))
        #expect(Self.order(d, "X") == nil)
    }

    @Test("risk tolerance 2 on an all-equity strategic target: volatility after within 5 %, reasons say why")
    func volatilityLimitFromCash() throws {
        let instruments = (0..<4).map { Self.equity("E\($0)", seed: UInt64(20 + $0), vol: 0.015) }
        let mandate = Mandate(strategicWeights: instruments.map { ($0.id, 0.25) })
        let profile = RiskProfile(riskTolerance: 2, knowledge: .advanced)
        let d = try Self.run(Self.input(instruments, holdings: [:], cash: 1_000_000, mandate: mandate,
                                        profile: profile))
        #expect(d.status == .executable)
        #expect(d.riskAfter.maxVolatility == 0.05)
        #expect(d.riskAfter.volatility <= 0.05)
        #expect(d.riskAfter.volatility >= 0.04, "invests up to the limit (got \(d.riskAfter.volatility))")
        #expect(d.orders.allSatisfy { $0.side == .buy })
        #expect(d.orders.allSatisfy { $0.reasons.contains(.suitability) || $0.reasons.contains(.riskLimit) })
        #expect(d.compliance.checks.contains { $0.rule.hasPrefix("suitability.risk_tolerance") && $0.passed })
        #expect(d.summary.contains("risk profile"))
    }

    @Test("a portfolio above its volatility limit is de-risked toward it, never to more risk")
    func aboveLimitNoMoreRisk() throws {
        let instruments = [Self.equity("E0", seed: 30, vol: 0.02), Self.equity("E1", seed: 31, vol: 0.02)]
        let mandate = Mandate(strategicWeights: [("E0", 0.5), ("E1", 0.5)])
        let profile = RiskProfile(riskTolerance: 3, knowledge: .advanced)
        let d = try Self.run(Self.input(instruments, holdings: ["E0": 700], cash: 30_000, mandate: mandate,
                                        profile: profile))
        #expect(d.riskBefore.volatility > 0.12)
        #expect(d.riskAfter.volatility <= d.riskBefore.volatility)
        // The target is scaled toward cash, so the engine de-risks toward the limit.
        #expect(d.riskAfter.volatility <= 0.12 * 1.05, "volatility after \(d.riskAfter.volatility)")
        #expect(Self.order(d, "E0")?.side == .sell)
        #expect(Self.order(d, "E0")?.reasons.contains(.riskLimit) == true)
        // With no turnover allowed it stays, and the summary does not call it suitable.
        var frozen = mandate
        frozen.maxTurnover = 0
        let stay = try Self.run(Self.input(instruments, holdings: ["E0": 700], cash: 30_000, mandate: frozen,
                                           profile: profile))
        #expect(stay.status == .noTrade)
        #expect(stay.summary.contains("is above the 12.0% the client's risk profile allows"), "\(stay.summary)")
    }

    @Test("forced sales that raise volatility are scaled toward cash instead of declared infeasible")
    func forcedSaleRaisingVolatility() throws {
        // A hedge (negatively correlated) is excluded: selling it raises the
        // volatility above the limit; selling part of the equity brings it back.
        var rng = SplitMix64(seed: 99)
        let market = (0..<80).map { _ in 0.015 * rng.normal() }
        func path(_ sign: Double) -> [Double] {
            var p = [100.0]
            for r in market.dropFirst() { p.append(p.last! * exp(sign * r + 0.001 * rng.normal())) }
            return p
        }
        let eq = path(1), hedge = path(-1)
        let instruments = [Instrument.test("EQ", price: eq.last!, history: eq),
                           Instrument.test("HEDGE", price: hedge.last!, history: hedge)]
        let mandate = Mandate(strategicWeights: [("EQ", 0.5)], excludedInstruments: ["HEDGE"])
        let profile = RiskProfile(riskTolerance: 2, knowledge: .advanced)
        let value = 100_000.0
        let input = Self.input(instruments, holdings: ["EQ": (value * 0.5 / eq.last!).rounded(.down),
                                                       "HEDGE": (value * 0.5 / hedge.last!).rounded(.down)],
                               cash: 1_000, mandate: mandate, profile: profile)
        let d = try Self.run(input)
        #expect(d.riskBefore.volatility < 0.05)
        #expect(d.status == .executable, "\(d.compliance.conflicts)")
        #expect(Self.order(d, "HEDGE")?.reasons.contains(.exclusion) == true)
        let eqSale = try #require(Self.order(d, "EQ"))
        #expect(eqSale.side == .sell && eqSale.required && eqSale.reasons.contains(.riskLimit))
        #expect(d.riskAfter.volatility <= 0.05)
        #expect(d.riskAfter.volatility >= 0.04, "sells no more than needed (got \(d.riskAfter.volatility))")
    }

    // MARK: - Turnover

    @Test("the turnover cap limits the trades, and the compliance report says so")
    func turnoverCapLimits() throws {
        let instruments = [Self.equity("A", seed: 1), Self.equity("B", seed: 2)]
        let mandate = Mandate(strategicWeights: [("A", 0.5), ("B", 0.5)], maxTurnover: 0.2)
        let d = try Self.run(Self.input(instruments, holdings: [:], cash: 100_000, mandate: mandate))
        #expect(d.status == .executable)
        #expect(d.turnover <= 0.2)
        #expect(d.turnover >= 0.18, "uses the turnover it is allowed (got \(d.turnover))")
        let check = try #require(d.compliance.checks.first {
            $0.rule == "mandate.max_turnover" && $0.detail.contains("turnover cap")
        })
        #expect(check.passed)
        #expect(d.compliance.checks.contains { $0.rule == "mandate.max_turnover" && $0.detail.contains("<= 20.0%") })
    }

    @Test("whole lots larger than the turnover cap allow no step toward the target: the portfolio is kept")
    func lotsLargerThanTheTurnoverCap() throws {
        // A lot is 10 % of the portfolio and the cap 2 %: every step toward
        // the 50/50 target rounds to at least one lot, so only the step 0
        // (the current holdings) passes; the search finds it by bisection.
        let instruments = [Self.equity("A", seed: 1, lot: 100), Self.equity("B", seed: 2, lot: 100)]
        let mandate = Mandate(strategicWeights: [("A", 0.5), ("B", 0.5)], maxTurnover: 0.02)
        let d = try Self.run(Self.input(instruments, holdings: ["A": 800, "B": 200], cash: 0, mandate: mandate))
        #expect(d.status == .noTrade)
        #expect(d.orders.isEmpty)
        #expect(d.compliance.compliant)
        #expect(d.turnover == 0)
    }

    @Test("lots that let part of the way through the turnover cap: the largest passing step is traded")
    func lotsAllowPartOfTheWay() throws {
        // Lots of 1 % of the portfolio and a 5 % cap: the continuous step
        // uses the cap exactly, rounding a sale up can break it, and a
        // smaller step on the grid then passes; turnover stays within 5 %.
        let instruments = [Self.equity("A", seed: 1, lot: 10), Self.equity("B", seed: 2, lot: 10)]
        let mandate = Mandate(strategicWeights: [("A", 0.5), ("B", 0.5)], maxTurnover: 0.05)
        let d = try Self.run(Self.input(instruments, holdings: ["A": 800, "B": 200], cash: 0, mandate: mandate))
        #expect(d.status == .executable)
        #expect(d.turnover <= 0.05 + 1e-12)
        #expect(d.turnover >= 0.02, "trades part of the way (turnover \(d.turnover))")
        #expect(d.compliance.checks.contains { $0.rule == "mandate.max_turnover" && $0.detail.contains("turnover cap") })
    }

    @Test("forced sales that need more than the turnover cap: infeasible, naming mandate.max_turnover")
    func forcedSalesExceedTurnover() throws {
        let instruments = [Self.equity("A", seed: 1), Self.equity("B", seed: 2)]
        let mandate = Mandate(strategicWeights: [("B", 1)], excludedInstruments: ["A"], maxTurnover: 0.1)
        let d = try Self.run(Self.input(instruments, holdings: ["A": 500, "B": 500], cash: 0, mandate: mandate))
        #expect(d.status == .infeasible)
        #expect(d.orders.isEmpty)
        #expect(d.compliance.conflicts.count == 1)
        let conflict = try #require(d.compliance.conflicts.first)
        #expect(conflict.contains("mandate.max_turnover") && conflict.contains("mandate.excluded_instruments"))
        #expect(d.summary.contains("cannot all be met"))
        #expect(!d.compliance.compliant)
    }

    // MARK: - No trade, lots, minimum notional

    @Test("already at target with no signal: status noTrade")
    func noTradeAtTarget() throws {
        let instruments = [Self.equity("A", seed: 1), Self.equity("B", seed: 2)]
        let mandate = Mandate(strategicWeights: [("A", 0.5), ("B", 0.45)])
        let d = try Self.run(Self.input(instruments, holdings: ["A": 500, "B": 450], cash: 5_000, mandate: mandate))
        #expect(d.status == .noTrade)
        #expect(d.orders.isEmpty)
        #expect(d.turnover == 0 && d.totalEstimatedCost == 0)
        #expect(d.cashWeightAfter == d.cashWeightBefore)
        #expect(d.summary.hasPrefix("No trades are proposed"))
    }

    @Test("a small drift inside the no-trade band is not traded")
    func noTradeBand() throws {
        let instruments = [Self.equity("A", seed: 1), Self.equity("B", seed: 2)]
        let mandate = Mandate(strategicWeights: [("A", 0.5), ("B", 0.5)], commissionMin: 5)
        // 50.2 % / 49.8 %: a 0.2 % drift is worth 0.1 · 0.002² · 100,000 = 0.04, less than any cost.
        let d = try Self.run(Self.input(instruments, holdings: ["A": 502, "B": 498], cash: 0, mandate: mandate))
        #expect(d.status == .noTrade)
    }

    @Test("buys are rounded down to whole lots")
    func lotRounding() throws {
        let instruments = [Self.equity("A", seed: 1, price: 7, lot: 100)]
        let mandate = Mandate(strategicWeights: [("A", 1)])
        let d = try Self.run(Self.input(instruments, holdings: [:], cash: 10_000, mandate: mandate))
        let buy = try #require(Self.order(d, "A"))
        // 10,000 / 7 = 1,428.6 units: 14 lots.
        #expect(buy.side == .buy && buy.quantity == 1_400)
        #expect(d.cashWeightAfter >= 0)
    }

    @Test("fractional mandates trade any quantity")
    func fractional() throws {
        let instruments = [Self.equity("A", seed: 1, price: 7, lot: 100)]
        let mandate = Mandate(strategicWeights: [("A", 0.5)], allowFractional: true)
        let d = try Self.run(Self.input(instruments, holdings: [:], cash: 10_000, mandate: mandate))
        let buy = try #require(Self.order(d, "A"))
        #expect(buy.quantity != buy.quantity.rounded())
        #expect(abs(buy.quantity * 7 - 5_000) < 1)
    }

    @Test("an odd-lot holding can be exited in full")
    func oddLotFullExit() throws {
        let instruments = [Self.equity("A", seed: 1, lot: 100), Self.equity("B", seed: 2)]
        let mandate = Mandate(strategicWeights: [("B", 1)], excludedInstruments: ["A"])
        let d = try Self.run(Self.input(instruments, holdings: ["A": 150], cash: 0, mandate: mandate))
        #expect(Self.order(d, "A")?.quantity == 150)
    }

    @Test("orders below the minimum notional are dropped; a full exit is exempt")
    func minimumNotional() throws {
        let instruments = [Self.equity("A", seed: 1), Self.equity("B", seed: 2), Self.equity("X", seed: 3)]
        let mandate = Mandate(strategicWeights: [("A", 0.5), ("B", 0.5)], excludedInstruments: ["X"],
                              minTradeNotional: 5_000)
        // X is worth 500 (below the minimum, but a full exit); A needs about 4,000 more, below the minimum.
        let d = try Self.run(Self.input(instruments, holdings: ["A": 460, "B": 540, "X": 5], cash: 0,
                                        mandate: mandate))
        #expect(Self.order(d, "X")?.quantity == 5)
        #expect(d.orders.allSatisfy { $0.notional >= 5_000 || $0.instrumentID == "X" })
    }

    // MARK: - Explanations

    @Test("orders carry reasons, top-3 feature contributions that add up, and plain-language text")
    func explanations() throws {
        let instruments = (0..<5).map { Self.equity("E\($0)", seed: UInt64(40 + $0), vol: 0.01 + 0.002 * Double($0)) }
        let mandate = Mandate(strategicWeights: instruments.map { ($0.id, 0.2) })
        var rng = SplitMix64(seed: 7)
        let policy = LinearPolicy(rng: &rng)
        let input = Self.input(instruments, holdings: [:], cash: 500_000, mandate: mandate)
        let d = try Self.run(input, policy: policy)
        #expect(!d.orders.isEmpty)
        // The features as the engine computes them, for the expected contributions.
        let x = try Prepared(input)
        var features = [Float](repeating: 0, count: x.n * FeatureSet.count)
        FeatureSet.fill(&features, stats: x.stats, defaultVolatility: x.defaultVolatility, current: x.w0,
                        strategic: x.strategic)
        for o in d.orders {
            #expect(o.topFeatures.count == 3)
            let magnitudes = o.topFeatures.map { abs($0.contribution) }
            #expect(magnitudes == magnitudes.sorted(by: >))
            let i = x.ids.firstIndex(of: o.instrumentID)!
            // A linear policy: a contribution is coefficient × (value − cross-sectional mean),
            // and the top 3 are the 3 largest in magnitude.
            var expected: [(String, Double)] = []
            for j in 0..<FeatureSet.count {
                var mean = 0.0
                for k in 0..<x.n { mean += Double(features[k * FeatureSet.count + j]) }
                mean /= Double(x.n)
                expected.append((FeatureSet.names[j], Double(policy.coefficients[j])
                    * (Double(features[i * FeatureSet.count + j]) - mean)))
            }
            expected.sort { abs($0.1) > abs($1.1) }
            for (f, e) in zip(o.topFeatures, expected.prefix(3)) {
                #expect(abs(f.contribution - e.1) < 1e-4, "\(f.feature): \(f.contribution) vs \(e.0): \(e.1)")
                let j = FeatureSet.names.firstIndex(of: f.feature)!
                #expect(f.value == Double(features[i * FeatureSet.count + j]))
            }
            #expect(o.explanation.hasPrefix("Buy ") || o.explanation.hasPrefix("Sell "))
            #expect(o.explanation.contains("Estimated cost"))
        }
        #expect(d.summary.hasPrefix("We propose \(d.orders.count) trade"))
        #expect(d.orders.contains { $0.reasons.contains(.policySignal) })
    }

    @Test("a policy scoring every asset alike gives the strategic weights")
    func flatPolicyGivesStrategic() throws {
        let instruments = (0..<3).map { Self.equity("E\($0)", seed: UInt64(50 + $0)) }
        let mandate = Mandate(strategicWeights: [("E0", 0.5), ("E1", 0.3), ("E2", 0.2)], allowFractional: true)
        let d = try Self.run(Self.input(instruments, holdings: [:], cash: 1_000_000, mandate: mandate),
                             policy: ConstantPolicy(value: 3))
        for (id, w) in [("E0", 0.5), ("E1", 0.3), ("E2", 0.2)] { #expect(abs(Self.weight(d, id) - w) < 1e-3) }
    }

    @Test("the policy tilts around the strategic weights by the risk tolerance's budget (1.5 % per SRI level)",
          arguments: 1...7)
    func tiltBudget(level: Int) throws {
        // Very quiet instruments (annual volatility about 0.2 %) so that even SRI 1 allows any mix.
        let instruments = (0..<6).map { k in
            Instrument.test("Q\(k)", price: 100, sector: "S\(k)", assetClass: .fixedIncome,
                            history: Self.history(UInt64(60 + k), vol: 0.00005 * Double(1 + k), count: 100))
        }
        let mandate = Mandate(strategicWeights: instruments.map { ($0.id, 1.0 / 6) }, allowFractional: true)
        let profile = RiskProfile(riskTolerance: level, knowledge: .advanced)
        var rng = SplitMix64(seed: 77)
        let policy = LinearPolicy(rng: &rng)
        let d = try Self.run(Self.input(instruments, holdings: [:], cash: 10_000_000, mandate: mandate,
                                        profile: profile), policy: policy)
        #expect(d.riskAfter.volatility <= d.riskAfter.maxVolatility)
        // One-way tilt of the result against the strategic weights (costs take a few basis points).
        let tilt = d.targets.map { abs($0.targetWeight - $0.strategicWeight) }.reduce(0, +) / 2
        #expect(abs(tilt - 0.015 * Double(level)) < 2e-3, "SRI \(level): one-way tilt \(tilt)")
        // Overweights follow the policy score.
        let byScore = d.targets.sorted { $0.policyScore > $1.policyScore }
        #expect(byScore.first!.targetWeight > byScore.first!.strategicWeight)
        #expect(byScore.last!.targetWeight < byScore.last!.strategicWeight)
    }

    // MARK: - Errors

    @Test("a policy whose feature names differ is refused with the mismatch")
    func featureNameMismatch() throws {
        let instruments = [Self.equity("A", seed: 1)]
        let input = Self.input(instruments, holdings: [:], cash: 1_000, mandate: Mandate(strategicWeights: [("A", 1)]))
        var names = FeatureSet.names
        names.swapAt(0, 1)
        let policy = LinearPolicy(coefficients: [Float](repeating: 0, count: FeatureSet.count), featureNames: names)
        let error = #expect(throws: EngineError.self) { try RebalanceEngine().rebalance(input, policy: policy) }
        #expect(error?.code == .policyFailed)
        #expect(error?.message.contains("keel.features[0] is 'ret_5d_z'") == true)
    }

    @Test("a failing policy is reported as policyFailed")
    func failingPolicy() throws {
        let input = Self.input([Self.equity("A", seed: 1)], holdings: [:], cash: 1_000,
                               mandate: Mandate(strategicWeights: [("A", 1)]))
        let error = #expect(throws: EngineError.self) { try RebalanceEngine().rebalance(input, policy: FailingPolicy()) }
        #expect(error?.code == .policyFailed)
    }

    struct NaNPolicy: PolicyScorer {
        var featureNames: [String] { FeatureSet.names }
        func scores(_ features: [Float], rows: Int) throws -> [Float] { [Float](repeating: .nan, count: rows) }
    }

    struct ShortPolicy: PolicyScorer {
        var featureNames: [String] { FeatureSet.names }
        func scores(_ features: [Float], rows: Int) throws -> [Float] { [Float](repeating: 0, count: rows - 1) }
    }

    @Test("a policy giving non-finite scores or the wrong number of scores is refused")
    func badScores() throws {
        let input = Self.input([Self.equity("A", seed: 1), Self.equity("B", seed: 2)], holdings: [:], cash: 1_000,
                               mandate: Mandate(strategicWeights: [("A", 1)]))
        let nan = #expect(throws: EngineError.self) { try RebalanceEngine().rebalance(input, policy: NaNPolicy()) }
        #expect(nan?.code == .policyFailed && nan?.message.contains("non-finite score for 'A'") == true)
        let short = #expect(throws: EngineError.self) { try RebalanceEngine().rebalance(input, policy: ShortPolicy()) }
        #expect(short?.code == .policyFailed && short?.message.contains("1 scores for 2 assets") == true)
    }

    @Test("the largest prices and absurd amounts do not crash the explanations; larger prices are refused")
    func hugeAmounts() throws {
        func instruments(_ price: Double) -> [Instrument] {
            [Instrument.test("A", price: price, history: geometricSeries(count: 40, dailyLogReturn: 0.001, last: price)),
             Instrument.test("B", price: price, history: geometricSeries(count: 40, dailyLogReturn: -0.001, last: price))]
        }
        let mandate = Mandate(strategicWeights: [("A", 0.5), ("B", 0.5)])
        let input = Self.input(instruments(9e11), holdings: ["A": 1e8], cash: 1e21, mandate: mandate)
        let d = try RebalanceEngine().rebalance(input, policy: LinearPolicy.flat)
        #expect(!d.summary.isEmpty)
        let tooLarge = Self.input(instruments(1e13), holdings: ["A": 10], cash: 1e21, mandate: mandate)
        let refused = #expect(throws: EngineError.self) { try RebalanceEngine().rebalance(tooLarge, policy: LinearPolicy.flat) }
        #expect(refused?.code == .invalidInput)
        #expect(Format.money(1e20) == "1e+20")
        #expect(Format.money(1_234_567.891) == "1,234,567.89" && Format.money(-0.5) == "-0.50")
        #expect(Format.trimmed(1_400) == "1400" && Format.trimmed(0.123456) == "0.1235")
    }

    enum BadInput: String, CaseIterable, Sendable {
        case negativePrice, duplicateID, unknownHolding, riskToleranceZero, strategicAboveOne, negativeCash,
             badHistory, unknownStrategic, negativeQuantity, capAboveOne, noInstruments, zeroValue,
             seriesWithBadPrice, seriesEndingElsewhere
    }

    @Test("invalid inputs are refused with a message naming the problem", arguments: BadInput.allCases)
    func invalidInput(_ bad: BadInput) throws {
        var input = Self.input([Self.equity("A", seed: 1), Self.equity("B", seed: 2)], holdings: ["A": 10],
                               cash: 1_000, mandate: Mandate(strategicWeights: [("A", 0.5), ("B", 0.5)]))
        let expected: String
        switch bad {
        case .negativePrice: input.instruments[1].price = -5; expected = "instrument 'B': price -5.0"
        case .duplicateID: input.instruments[1].id = "A"; expected = "'A' is listed twice"
        case .unknownHolding:
            input.portfolio.holdings.append(Holding(instrumentID: "Z", quantity: 1)); expected = "'Z' is not among"
        case .riskToleranceZero: input.profile.riskTolerance = 0; expected = "risk_tolerance 0"
        case .strategicAboveOne:
            input.mandate.strategicWeights = [("A", 0.7), ("B", 0.5)]; expected = "strategic weights sum to 1.2"
        case .negativeCash: input.portfolio.cash = -1; expected = "cash -1.0"
        case .badHistory: input.instruments[0].priceHistory[3] = .nan; expected = "price_history[3]"
        case .unknownStrategic: input.mandate.strategicWeights = [("Q", 0.5)]; expected = "'Q' is not among"
        case .negativeQuantity: input.portfolio.holdings[0].quantity = -3; expected = "quantity -3.0"
        case .capAboveOne: input.mandate.maxInstrumentWeight = 1.5; expected = "max_instrument_weight 1.5"
        case .noInstruments: input.instruments = []; input.portfolio.holdings = []; input.mandate.strategicWeights = []
            expected = "no instruments"
        case .zeroValue: input.portfolio.holdings = []; input.portfolio.cash = 0; expected = "value"
        case .seriesWithBadPrice:
            // An analysed series (as the market state keeps) is checked once, when it is built.
            var prices = Self.history(1)
            prices[5] = -1
            input.instruments[0].series = FeatureSet.SeriesData(prices: prices)
            expected = "instrument 'A': its analysed series holds a price that is not a finite number from 1e-8 to 1e12"
        case .seriesEndingElsewhere:
            input.instruments[1].series = FeatureSet.SeriesData(prices: Self.history(2, last: 90))
            expected = "instrument 'B': its analysed series does not end at its price 100.0"
        }
        let error = #expect(throws: EngineError.self) { try RebalanceEngine().rebalance(input, policy: LinearPolicy.flat) }
        #expect(error?.code == .invalidInput)
        #expect(error?.message.contains(expected) == true, "message: \(error?.message ?? "")")
    }

    // MARK: - Determinism and concurrency

    @Test("the same input gives the same decision, also when run concurrently")
    func deterministicConcurrently() async throws {
        let c = EnginePropertyTests.makeCase(seed: 12345)
        let reference = try RebalanceEngine().rebalance(c.input, policy: c.policy)
        let results = await withTaskGroup(of: RebalanceDecision?.self) { group in
            for _ in 0..<8 { group.addTask { try? RebalanceEngine().rebalance(c.input, policy: c.policy) } }
            var all: [RebalanceDecision?] = []
            for await r in group { all.append(r) }
            return all
        }
        for r in results {
            let d = try #require(r)
            #expect(d.orders == reference.orders && d.targets == reference.targets && d.summary == reference.summary)
        }
    }
}
