import Foundation
import Testing

@testable import KeelPortfolio

/// Random portfolios, mandates and profiles, each decision checked by an
/// independent checker written from the product rules (it does not use the
/// module's `Compliance`, `Limits` or `Suitability`).
@Suite("Engine properties over random portfolios")
struct EnginePropertyTests {
    static let batches = 30
    /// 30 × 150 = 4,500 cases by default; KEEL_PORTFOLIO_CASES_PER_BATCH and
    /// KEEL_PORTFOLIO_SEED run more, or other, cases.
    static let casesPerBatch = ProcessInfo.processInfo.environment["KEEL_PORTFOLIO_CASES_PER_BATCH"]
        .flatMap { Int($0) } ?? 150
    static let seedBase = ProcessInfo.processInfo.environment["KEEL_PORTFOLIO_SEED"].flatMap { UInt64($0) } ?? 0

    // MARK: - Generator

    struct Case {
        var input: RebalanceInput
        var policy: LinearPolicy
    }

    static let sectors = ["Tech", "Finance", "Health", "Energy", "Utilities", ""]

    static func makeCase(seed: UInt64) -> Case {
        var rng = SplitMix64(seed: seed)
        let n = rng.chance(0.1) ? rng.int(2...4) : rng.int(2...60)
        let value = rng.logUniform(1e4, 1e7)
        // A common market factor so that histories are correlated.
        let historyLengths = [0, 1, 2, 5, 10, 19, 20, 21, 22, 40, 64, 65, 100, 130]
        let marketLength = 131
        let market = (0..<marketLength).map { _ in 0.01 * rng.normal() }
        var instruments: [Instrument] = []
        for k in 0..<n {
            let price = rng.logUniform(0.5, 2000)
            let lot: Double = rng.chance(0.05) ? 0 : rng.pick([1, 10, 100])
            let assetClass = rng.pick(AssetClass.allCases)
            let esg: Double? = rng.chance(0.2) ? nil : (rng.chance(0.1) ? rng.pick([0, 100]) : rng.uniform(0, 100))
            let length = rng.chance(0.5) ? rng.pick(historyLengths) : rng.int(0...130)
            let beta = rng.uniform(-0.5, 1.5)
            let idio = rng.logUniform(0.001, 0.04)
            var history: [Double] = []
            if length > 0 {
                var logs = [Double](repeating: 0, count: length)
                for d in stride(from: length - 2, through: 0, by: -1) {
                    let r = beta * market[d + marketLength - length] + idio * rng.normal()
                    logs[d] = logs[d + 1] - r
                }
                // Usually the history ends at the current price; sometimes the
                // current price is a new point (appended by the engine).
                let last = rng.chance(0.7) ? price : price * exp(0.01 * rng.normal())
                history = logs.map { last * exp($0) }
            }
            instruments.append(Instrument(
                id: "I\(k)", price: price, sector: rng.pick(sectors), assetClass: assetClass, esgScore: esg,
                lotSize: lot, requiredKnowledge: rng.pick(KnowledgeLevel.allCases),
                halfSpreadBps: rng.chance(0.5) ? 0 : rng.uniform(0, 30),
                averageDailyVolume: rng.chance(0.5) ? 0 : rng.logUniform(100, 1e7), priceHistory: history))
        }
        // Holdings: a random share of the value in a random subset.
        var holdings: [Holding] = []
        let investedShare = rng.pick([0.0, 1.0, rng.uniform(0, 1), rng.uniform(0.8, 1)])
        let held = (0..<n).filter { _ in rng.chance(0.6) }
        if !held.isEmpty && investedShare > 0 {
            var raw = held.map { _ in rng.logUniform(0.05, 1) }
            if rng.chance(0.2) { raw[0] *= 20 }  // one dominant position
            let total = raw.reduce(0, +)
            for (k, i) in held.enumerated() {
                let lot = instruments[i].lotSize > 0 ? instruments[i].lotSize : 1
                var q = (value * investedShare * raw[k] / total / instruments[i].price / lot).rounded(.down) * lot
                if rng.chance(0.15) { q += Double(rng.int(1...max(1, Int(lot) - 1))) }  // odd lot
                if rng.chance(0.05) { q += 0.5 }  // fractional remainder
                if rng.chance(0.03) { q = 0 }
                holdings.append(Holding(instrumentID: instruments[i].id, quantity: q))
            }
            // The same instrument held in two lots.
            if rng.chance(0.03) { holdings.append(Holding(instrumentID: holdings[0].instrumentID, quantity: 7)) }
        }
        var cash = value * (1 - investedShare)
        if rng.chance(0.1) { cash = 0 }
        if rng.chance(0.05) || (holdings.allSatisfy { $0.quantity == 0 } && cash == 0) { cash += value * 0.01 + 1 }

        // Strategic weights.
        var strategic: [(id: String, weight: Double)] = []
        if !rng.chance(0.03) {
            let members = (0..<n).filter { _ in rng.chance(rng.uniform(0.2, 1)) }
            let chosen = members.isEmpty ? [0] : members
            let raw = chosen.map { _ in rng.logUniform(0.05, 1) }
            let total = raw.reduce(0, +)
            let invested = rng.pick([1.0, rng.uniform(0.5, 1), rng.uniform(0.9, 1)])
            strategic = chosen.enumerated().map { (k, i) in (instruments[i].id, raw[k] / total * invested) }
        }
        // Mandate.
        var mandate = Mandate(strategicWeights: strategic)
        if rng.chance(0.6) {
            mandate.maxInstrumentWeight = rng.chance(0.2) ? rng.uniform(0.005, 0.05) : rng.uniform(0.05, 0.6)
        }
        if rng.chance(0.4) {
            for s in sectors where rng.chance(0.4) {
                mandate.sectorCaps[s] = rng.chance(0.2) ? rng.uniform(0, 0.1) : rng.uniform(0.1, 0.8)
            }
        }
        if rng.chance(0.3) {
            for c in AssetClass.allCases where rng.chance(0.3) {
                mandate.assetClassCaps[c] = rng.chance(0.2) ? rng.uniform(0, 0.1) : rng.uniform(0.1, 0.9)
            }
        }
        if rng.chance(0.3) {
            for _ in 0..<rng.int(1...3) { mandate.excludedInstruments.insert("I\(rng.int(0...(n - 1)))") }
            if rng.chance(0.1) { mandate.excludedInstruments.insert("NOT-LISTED") }
        }
        if rng.chance(0.35) { mandate.esgFloor = rng.uniform(5, 60) }
        if rng.chance(0.6) { mandate.minCashWeight = rng.chance(0.1) ? rng.uniform(0.2, 0.9) : rng.uniform(0, 0.1) }
        if rng.chance(0.01) { mandate.minCashWeight = 1 }
        if rng.chance(0.6) {
            mandate.maxTurnover = rng.chance(0.25) ? rng.uniform(0, 0.02) : rng.uniform(0.02, 1)
            if rng.chance(0.03) { mandate.maxTurnover = 0 }
        }
        if rng.chance(0.5) { mandate.minTradeNotional = value * rng.logUniform(1e-5, 0.02) }
        if rng.chance(0.6) { mandate.commissionBps = rng.uniform(0, 20) }
        if rng.chance(0.5) { mandate.commissionMin = rng.uniform(0, 10) }
        mandate.allowFractional = rng.chance(0.15)

        var objectives: [Objective] = []
        for o in Objective.allCases where rng.chance(0.2) { objectives.append(o) }
        if rng.chance(0.1) { objectives = [.capitalPreservation] }
        let profile = RiskProfile(riskTolerance: rng.int(1...7), capacityForLoss: rng.pick(CapacityForLoss.allCases),
                                  horizonYears: rng.chance(0.3) ? 0 : rng.int(1...15),
                                  knowledge: rng.pick(KnowledgeLevel.allCases), objectives: objectives)
        let policy = LinearPolicy(rng: &rng)
        let input = RebalanceInput(portfolio: Portfolio(accountID: "A\(seed)", holdings: holdings, cash: cash),
                                   instruments: instruments, profile: profile, mandate: mandate)
        return Case(input: input, policy: policy)
    }

    // MARK: - Independent checker

    /// The profile's volatility limit, from the product rules.
    static func maxVolatility(_ p: RiskProfile) -> Double {
        var limit = [0.005, 0.05, 0.12, 0.20, 0.30, 0.80, Double.infinity][p.riskTolerance - 1]
        switch p.capacityForLoss {
        case .none: limit = min(limit, 0.05)
        case .limited: limit = min(limit, 0.12)
        case .significant: limit = min(limit, 0.30)
        default: break
        }
        if (1...2).contains(p.horizonYears) { limit = min(limit, 0.12) }
        if p.objectives == [.capitalPreservation] { limit = min(limit, 0.05) }
        return limit
    }

    struct Tally {
        var executable = 0, noTrade = 0, infeasible = 0, orders = 0
        var conflicts: [String: Int] = [:]
        var reasons: [String: Int] = [:]
    }

    /// Returns the failures of `decision` (empty = every rule holds).
    static func violations(_ input: RebalanceInput, _ d: RebalanceDecision, policyUsed: Bool = true) -> [String] {
        var problems: [String] = []
        func fail(_ s: String) { problems.append(s) }
        let tol = 1e-9
        let instruments = input.instruments
        let n = instruments.count
        let m = input.mandate
        let index = Dictionary(uniqueKeysWithValues: instruments.enumerated().map { ($1.id, $0) })
        var q0 = [Double](repeating: 0, count: n)
        for h in input.portfolio.holdings { q0[index[h.instrumentID]!] += h.quantity }
        let price = instruments.map(\.price)
        var value = input.portfolio.cash
        for i in 0..<n { value += q0[i] * price[i] }
        if abs(d.totalValue - value) > 1e-9 * value { fail("totalValue \(d.totalValue) != \(value)") }
        let w0 = (0..<n).map { q0[$0] * price[$0] / value }

        switch d.status {
        case .infeasible:
            // Without a turnover cap every constraint can be met by selling
            // (whole positions if need be), as long as the minimum cash leaves
            // room for the costs: no such case may be declared infeasible.
            if m.maxTurnover == nil && m.minCashWeight <= 0.9 {
                fail("infeasible without a turnover cap: \(d.compliance.conflicts)")
            }
            if !d.orders.isEmpty { fail("infeasible with \(d.orders.count) orders") }
            if d.compliance.conflicts.isEmpty { fail("infeasible without conflicts") }
            // Each conflict names at least two rules (the ones that cannot hold together).
            for conflict in d.compliance.conflicts {
                let rules = conflict.components(separatedBy: CharacterSet(charactersIn: " ,:("))
                    .filter { $0.hasPrefix("mandate.") || $0.hasPrefix("suitability.") }
                if rules.count < 2 { fail("conflict naming fewer than two rules: \(conflict)") }
            }
            if d.summary.isEmpty { fail("empty summary") }
            return problems
        case .noTrade:
            if !d.orders.isEmpty { fail("noTrade with orders") }
        case .executable:
            if d.orders.isEmpty { fail("executable without orders") }
        }
        if !d.compliance.conflicts.isEmpty { fail("conflicts on a feasible decision: \(d.compliance.conflicts)") }
        if !d.compliance.compliant { fail("failed checks: \(d.compliance.checks.filter { !$0.passed })") }
        if d.summary.isEmpty { fail("empty summary") }

        // Post-trade state from the orders alone.
        var q = q0
        var cash = input.portfolio.cash
        var buys = 0.0, sells = 0.0, costs = 0.0
        var seen = Set<String>()
        for o in d.orders {
            guard let i = index[o.instrumentID] else { fail("order for unknown \(o.instrumentID)"); continue }
            let inst = instruments[i]
            if !seen.insert(o.instrumentID).inserted { fail("two orders for \(o.instrumentID)") }
            if !(o.quantity > 0 && o.quantity.isFinite) { fail("\(o.instrumentID): quantity \(o.quantity)") }
            if o.price != inst.price { fail("\(o.instrumentID): order price \(o.price) != \(inst.price)") }
            if o.reasons.isEmpty { fail("\(o.instrumentID): no reason") }
            if o.explanation.isEmpty { fail("\(o.instrumentID): no explanation") }
            if policyUsed && o.topFeatures.count != 3 { fail("\(o.instrumentID): \(o.topFeatures.count) top features") }
            if policyUsed && !o.topFeatures.allSatisfy({ FeatureSet.names.contains($0.feature) }) {
                fail("\(o.instrumentID): unknown top feature")
            }
            if !(o.estimatedCost > 0 && o.estimatedCost.isFinite) { fail("\(o.instrumentID): cost \(o.estimatedCost)") }
            if !o.expectedBenefit.isFinite { fail("\(o.instrumentID): benefit \(o.expectedBenefit)") }
            // The no-trade band: an order not forced by a hard constraint pays for itself.
            if !o.required && !(o.expectedBenefit > o.estimatedCost) {
                fail("\(o.instrumentID): optional order with benefit \(o.expectedBenefit) <= cost \(o.estimatedCost)")
            }
            let notional = o.quantity * inst.price
            // Whole lots (a full exit of an odd position is allowed).
            let fullExit = o.side == .sell && abs(o.quantity - q0[i]) <= 1e-9 * max(1, q0[i])
            if !m.allowFractional && !fullExit {
                let lot = inst.lotSize > 0 ? inst.lotSize : 1
                let lots = o.quantity / lot
                if abs(lots - lots.rounded()) > 1e-9 { fail("\(o.instrumentID): \(o.quantity) not whole lots of \(lot)") }
            }
            if !fullExit && notional < m.minTradeNotional * (1 - 1e-12) {
                fail("\(o.instrumentID): notional \(notional) below min \(m.minTradeNotional)")
            }
            if o.side == .buy {
                if m.excludedInstruments.contains(inst.id) { fail("buys excluded \(inst.id)") }
                if inst.requiredKnowledge > input.profile.knowledge { fail("buys knowledge-restricted \(inst.id)") }
                if m.esgFloor > 0 {
                    if let s = inst.esgScore, s < m.esgFloor { fail("buys \(inst.id) rated \(s) below floor") }
                    if inst.esgScore == nil { fail("buys unrated \(inst.id) under an ESG floor") }
                }
                q[i] += o.quantity; cash -= notional; buys += notional
            } else {
                q[i] -= o.quantity; cash += notional; sells += notional
            }
            // The cost from the documented formula.
            let commission = max(m.commissionMin, m.commissionBps / 10_000 * notional)
            let half = (inst.halfSpreadBps > 0 ? inst.halfSpreadBps : 5) / 10_000
            var impact = 0.0
            if inst.averageDailyVolume > 0 {
                let series = FeatureSet.series(of: inst)
                let daily = referenceDailyVolatility(series) ?? inst.assetClass.defaultVolatility / sqrt(252.0)
                impact = 0.1 * daily * (o.quantity / inst.averageDailyVolume).squareRoot()
            }
            let expectedCost = commission + (half + impact) * notional
            if abs(expectedCost - o.estimatedCost) > 1e-9 * max(1, expectedCost) {
                fail("\(o.instrumentID): cost \(o.estimatedCost) != \(expectedCost)")
            }
            costs += o.estimatedCost
            cash -= o.estimatedCost
        }
        let w = (0..<n).map { q[$0] * price[$0] / value }
        // No shorts, no leverage, minimum cash.
        for i in 0..<n where q[i] < -1e-9 * max(1, q0[i]) { fail("\(instruments[i].id) short: \(q[i])") }
        if cash < -tol * value { fail("cash \(cash) < 0") }
        if cash / value < m.minCashWeight - tol { fail("cash weight \(cash / value) < min \(m.minCashWeight)") }
        // Caps.
        if let cap = m.maxInstrumentWeight {
            for i in 0..<n where w[i] > cap + tol { fail("\(instruments[i].id) weight \(w[i]) > cap \(cap)") }
        }
        for (sector, cap) in m.sectorCaps {
            let s = (0..<n).filter { instruments[$0].sector == sector }.map { w[$0] }.reduce(0, +)
            if s > cap + tol { fail("sector '\(sector)' \(s) > cap \(cap)") }
        }
        for (cls, cap) in m.assetClassCaps {
            let s = (0..<n).filter { instruments[$0].assetClass == cls }.map { w[$0] }.reduce(0, +)
            if s > cap + tol { fail("class \(cls) \(s) > cap \(cap)") }
        }
        // Exclusions and the ESG floor: held positions sold down entirely.
        for i in 0..<n {
            let inst = instruments[i]
            if m.excludedInstruments.contains(inst.id) && w[i] > 0 { fail("excluded \(inst.id) still at \(w[i])") }
            if m.esgFloor > 0, let s = inst.esgScore, s < m.esgFloor, w[i] > 0 {
                fail("\(inst.id) rated \(s) < floor \(m.esgFloor) still at \(w[i])")
            }
            if q[i] > q0[i] + 1e-9, inst.requiredKnowledge > input.profile.knowledge {
                fail("knowledge-restricted \(inst.id) increased")
            }
        }
        // Turnover.
        let turnover = max(buys, sells) / value
        if let cap = m.maxTurnover, turnover > cap + tol { fail("turnover \(turnover) > cap \(cap)") }
        if abs(d.turnover - turnover) > 1e-12 { fail("reported turnover \(d.turnover) != \(turnover)") }
        // Suitability: volatility after within the limit, or not above the volatility before.
        let risk = RiskModel(series: instruments.map { FeatureSet.series(of: $0) },
                             defaultVolatility: instruments.map(\.assetClass.defaultVolatility))
        let limit = maxVolatility(input.profile)
        let before = risk.volatility(w0), after = risk.volatility(w)
        let allowed = max(limit, before)
        if after > allowed * (1 + 1e-9) + 1e-12 { fail("volatility \(after) > allowed \(allowed) (limit \(limit))") }
        if abs(d.riskAfter.volatility - after) > 1e-9 { fail("riskAfter \(d.riskAfter.volatility) != \(after)") }
        if abs(d.riskBefore.volatility - before) > 1e-9 { fail("riskBefore \(d.riskBefore.volatility) != \(before)") }
        if d.riskAfter.maxVolatility != limit { fail("maxVolatility \(d.riskAfter.maxVolatility) != \(limit)") }
        // The documented weights convention.
        if abs(d.cashWeightAfter - cash / value) > tol { fail("cashWeightAfter \(d.cashWeightAfter) != \(cash / value)") }
        if abs(d.totalEstimatedCost - costs) > 1e-9 * max(1, costs) { fail("totalEstimatedCost \(d.totalEstimatedCost) != \(costs)") }
        if d.targets.count != n { fail("\(d.targets.count) targets for \(n) instruments") }
        for (i, t) in d.targets.enumerated() where i < n {
            if t.instrumentID != instruments[i].id { fail("target \(i) is \(t.instrumentID)") }
            if abs(t.targetWeight - w[i]) > 1e-12 { fail("\(t.instrumentID): targetWeight \(t.targetWeight) != \(w[i])") }
            if abs(t.currentWeight - w0[i]) > 1e-12 { fail("\(t.instrumentID): currentWeight \(t.currentWeight) != \(w0[i])") }
        }
        let sum = d.targets.map(\.targetWeight).reduce(0, +) + d.cashWeightAfter + d.totalEstimatedCost / d.totalValue
        if abs(sum - 1) > tol { fail("Σ targets + cash + costs = \(sum)") }
        return problems
    }

    static func run(_ c: Case) -> Result<RebalanceDecision, EngineError> {
        do throws(EngineError) {
            return .success(try RebalanceEngine().rebalance(c.input, policy: c.policy))
        } catch {
            return .failure(error)
        }
    }

    static func describe(_ d: RebalanceDecision) -> String {
        "status \(d.status), \(d.orders.count) orders, conflicts \(d.compliance.conflicts)"
    }

    @Test("every decision satisfies every hard constraint, and is deterministic", arguments: 0..<batches)
    func randomPortfolios(batch: Int) throws {
        var tally = Tally()
        for k in 0..<Self.casesPerBatch {
            let seed = (Self.seedBase &+ UInt64(batch * Self.casesPerBatch + k)) &* 0x9E37_79B9 &+ 17
            let c = Self.makeCase(seed: seed)
            let first = Self.run(c)
            guard case .success(let d) = first else {
                Issue.record("seed \(seed): engine error \(first)")
                continue
            }
            let problems = Self.violations(c.input, d)
            if !problems.isEmpty {
                Issue.record("seed \(seed): \(Self.describe(d)):\n  \(Array(problems.prefix(8)).joined(separator: "\n  "))")
            }
            // Same input, same decision.
            if case .success(let again) = Self.run(c) {
                #expect(again.orders == d.orders, "seed \(seed): orders differ between runs")
                #expect(again.targets == d.targets, "seed \(seed): targets differ between runs")
                #expect(again.status == d.status && again.summary == d.summary, "seed \(seed): differs between runs")
            } else {
                Issue.record("seed \(seed): second run failed")
            }
            switch d.status {
            case .executable: tally.executable += 1
            case .noTrade: tally.noTrade += 1
            case .infeasible:
                tally.infeasible += 1
                for conflict in d.compliance.conflicts {
                    let key = String(conflict.prefix { $0 != " " })
                    tally.conflicts[key, default: 0] += 1
                }
            }
            tally.orders += d.orders.count
            for o in d.orders { for r in o.reasons { tally.reasons[r.rawValue, default: 0] += 1 } }
        }
        print("batch \(batch): executable \(tally.executable), noTrade \(tally.noTrade), infeasible \(tally.infeasible), "
            + "orders \(tally.orders), conflicts \(tally.conflicts.sorted { $0.key < $1.key }), "
            + "reasons \(tally.reasons.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))")
    }
}
