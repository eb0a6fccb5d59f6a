#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Scores assets with the policy network: one row of ``FeatureSet`` features
/// per asset in, one score per row out. The serving layer adapts a loaded
/// ONNX model to it; tests use plain closures.
public protocol PolicyScorer {
    /// The model's `keel.features`; must equal ``FeatureSet/names``.
    var featureNames: [String] { get }
    /// Scores for `rows` rows of `FeatureSet.count` features, row-major.
    func scores(_ features: [Float], rows: Int) throws -> [Float]
}

/// Why the engine could not decide.
public struct EngineError: Error, Sendable, CustomStringConvertible, Equatable {
    public enum Code: String, Sendable { case invalidInput, policyFailed }
    public let code: Code
    public let message: String
    public init(_ code: Code, _ message: String) { self.code = code; self.message = message }
    public var description: String { message }
}

/// Tunable economics of the engine (defaults documented in docs/ENGINE.md).
public struct EngineConfig: Sendable, Equatable {
    /// Maximum one-way tilt away from the strategic weights per SRI level
    /// (risk tolerance 4 gives 4 × 1.5 % = 6 %).
    public var tiltBudgetPerRiskLevel = 0.015
    /// Expected annual excess return of an asset per standard deviation of
    /// its policy score above the portfolio's mean.
    public var alphaPerScoreUnit = 0.05
    /// How long a decision is expected to stand (21 trading days).
    public var horizonYears = 21.0 / 252.0
    /// Value, as a fraction of portfolio value, of removing squared drift:
    /// moving an asset from drift d to 0 is worth `driftAversion · d²` of the
    /// portfolio. Sets the width of the no-trade band. (For order benefits,
    /// drift is measured against the target after the constraints.)
    public var driftAversion = 0.1
    public var defaultHalfSpreadBps = 5.0
    /// Market impact ≈ coefficient × daily volatility × √(quantity / ADV).
    public var impactCoefficient = 0.1
    /// Features named per order.
    public var topFeatures = 3

    public init() {}
}

/// Turns a portfolio, a risk profile, a mandate and market data into a
/// decision: target weights, whole-lot orders that never break a hard
/// constraint, compliance results, explanations and risk figures.
///
/// The steps (docs/ENGINE.md):
/// 1. Features (``FeatureSet``) and the EWMA risk model (``RiskModel``).
/// 2. Policy scores → standardised signal z → target = strategic + tilt,
///    with the tilt's one-way size equal to the risk tolerance's budget.
/// 3. The forced point f: the nearest point reachable by sales alone that
///    satisfies every static constraint (caps, exclusions, ESG, min cash),
///    scaled toward cash when those sales alone would leave volatility above
///    its allowed level.
/// 4. The target projected exactly onto the static constraints (p), scaled
///    toward cash when its volatility exceeds the profile's limit.
/// 5. The largest step α ∈ [0, 1] along f → p that keeps turnover and
///    volatility within their limits (both convex along the segment).
/// 6. Whole-lot orders, costs and expected benefits; orders whose benefit
///    does not cover their cost are dropped unless a constraint forces them;
///    cash repaired by trimming buys; sector/asset-class caps, minimum cash
///    and (for sell-only plans) volatility repaired by the smallest sufficient
///    whole-lot sales. Every candidate order list is checked against all
///    constraints; a failing one retries with a smaller α.
///
/// Thread safety: a value; `rebalance` may run concurrently on copies.
public struct RebalanceEngine: Sendable {
    public var config: EngineConfig

    public init(config: EngineConfig = EngineConfig()) { self.config = config }

    public func rebalance(_ input: RebalanceInput, policy: some PolicyScorer) throws(EngineError)
        -> RebalanceDecision
    {
        let prepared = try Prepared(input)
        return try decide(prepared, policy: policy)
    }

    // MARK: - Decision

    func decide(_ x: Prepared, policy: some PolicyScorer) throws(EngineError) -> RebalanceDecision {
        let n = x.n
        if let why = FeatureSet.mismatch(policy.featureNames) { throw EngineError(.policyFailed, why) }
        // 1. Features and risk.
        var features = [Float](repeating: 0, count: n * FeatureSet.count)
        FeatureSet.fill(&features, stats: x.stats, defaultVolatility: x.defaultVolatility, current: x.w0,
                        strategic: x.strategic)
        // Prices within Instrument.validPrices keep every feature finite; this
        // guard names the input should that ever fail, instead of letting the
        // policy answer a non-finite score (a policy failure).
        if let bad = features.firstIndex(where: { !$0.isFinite }) {
            let (i, j) = bad.quotientAndRemainder(dividingBy: FeatureSet.count)
            throw EngineError(.invalidInput, "instrument '\(x.ids[i])': feature '\(FeatureSet.names[j])' is not "
                + "finite (from its price history)")
        }
        let risk = RiskModel(returns: x.returns, defaultVolatility: x.defaultVolatility)
        let (maxVol, volRule) = Suitability.maxVolatility(x.input.profile)
        let scores: [Float]
        do {
            scores = try policy.scores(features, rows: n)
        } catch {
            throw EngineError(.policyFailed, "the policy failed on \(n) assets: \(error)")
        }
        guard scores.count == n else {
            throw EngineError(.policyFailed, "the policy gave \(scores.count) scores for \(n) assets")
        }
        if let bad = scores.firstIndex(where: { !$0.isFinite }) {
            throw EngineError(.policyFailed, "the policy gave a non-finite score for '\(x.ids[bad])'")
        }
        // 2. Signal and target.
        let z = signal(scores, strategic: x.strategic)
        let budget = config.tiltBudgetPerRiskLevel * Double(min(7, max(1, x.input.profile.riskTolerance)))
        var tilt = [Double](repeating: 0, count: n)
        var spread = 0.0
        for i in 0..<n { spread += x.strategic[i] * abs(z[i]) }
        if spread > 1e-12 {
            let c = 2 * budget / spread
            for i in 0..<n { tilt[i] = c * x.strategic[i] * z[i] }
        }
        var target = x.strategic
        for i in 0..<n { target[i] += tilt[i] }

        // 3-4. Constraints.
        let limits = Limits(instruments: x.input.instruments, current: x.w0, mandate: x.input.mandate,
                            profile: x.input.profile)
        var (forced, force) = limits.forcedPoint(x.w0)
        var p = limits.project(target, invested: x.investedTarget)
        let volBefore = risk.volatility(x.w0)
        var riskScaled = false
        let volP = risk.volatility(p)
        if volP > maxVol {
            let k = maxVol / volP * (1 - 1e-9)
            for i in 0..<n { p[i] *= k }
            riskScaled = true
        }
        // Volatility allowed after trading: the profile's limit, or no
        // increase when the portfolio is already above it.
        let volLimit = max(maxVol, volBefore)
        let maxTurnover = x.input.mandate.maxTurnover ?? .infinity
        // The forced sales can raise volatility (selling a hedge or a low-risk
        // holding). That used to be reported as a conflict, but it is not
        // one: scaling the forced point toward cash lowers volatility in
        // proportion and keeps every static constraint (all are upper
        // bounds). Only the turnover cap can then make it infeasible.
        var forcedRuleSet = Set(force.compactMap { Self.rule(for: $0, volRule: volRule) })
        let volForcedRaw = risk.volatility(forced)
        var volForced = volForcedRaw
        if volForcedRaw > volLimit * (1 + 1e-9) {
            let k = volLimit / volForcedRaw * (1 - 1e-9)
            volForced = volForcedRaw * k
            for i in 0..<n where forced[i] > 0 {
                forced[i] *= k
                if force[i] == .none || force[i] == .minCash { force[i] = .volatility }
            }
            forcedRuleSet.insert(volRule)
        }

        var checks: [ComplianceCheck] = []
        var conflicts: [String] = []
        let forcedRules = forcedRuleSet.sorted()
        let forcedTurnover = turnover(x.w0, forced)
        if forcedTurnover > maxTurnover + 1e-12 {
            conflicts.append("mandate.max_turnover (\(pct(maxTurnover))) conflicts with "
                + "\(forcedRules.joined(separator: ", ")): the sales they force need \(pct(forcedTurnover)) turnover")
        }
        if volForced > volLimit * (1 + 1e-9) {
            conflicts.append("\(volRule) (max volatility \(pct(maxVol))) conflicts with "
                + "\(forcedRules.joined(separator: ", ")): the sales they force raise volatility to \(pct(volForced))")
        }
        if !conflicts.isEmpty {
            return infeasible(x, risk: risk, maxVol: maxVol, scores: scores, conflicts: conflicts)
        }

        // 5. Largest step along forced → p.
        var d = p
        for i in 0..<n { d[i] -= forced[i] }
        let (qa, qb, qc) = risk.quadratic(forced, d)
        var shift = forced
        for i in 0..<n { shift[i] -= x.w0[i] }
        let varianceLimit = volLimit * volLimit * (1 + 1e-12)
        let volOK = { (alpha: Double) in qa + 2 * alpha * qb + alpha * alpha * qc <= varianceLimit }
        let turnoverOK = { (alpha: Double) in oneWayTurnover(shift, d, alpha) <= maxTurnover }
        var alpha = 1.0
        let full = (turnover: turnoverOK(1), vol: volOK(1))
        let limitedBy = (turnover: !full.turnover, vol: !full.vol)
        if limitedBy.turnover {
            alpha = largestStep(shift, d, limit: maxTurnover) ?? bisect(turnoverOK)
        }
        if limitedBy.vol {
            alpha = min(alpha, bisect(volOK))
        }

        // 6. Orders, with a smaller step whenever rounding breaks a limit:
        // the steps α(1 − k/16), k = 0...16, the largest whose whole-lot
        // orders pass every check. Rounding (sales round up to whole lots)
        // can keep every k < 16 failing, and a plan costs 10 to 35 us, so
        // after k = 0 fails, k = 16 (the forced point alone) is tried, and
        // if it passes a bisection over the k between finds the boundary
        // (fewer trades pass more easily); if it fails, every k is tried in
        // turn, as the conflicts must come from a full search.
        var step = alpha
        func attempt(_ k: Int) -> (plan: Plan, checks: [ComplianceCheck], failures: [ComplianceCheck]) {
            let s = alpha * (1 - Double(k) / 16)
            var w = forced
            for i in 0..<n { w[i] += s * d[i] }
            let candidate = makePlan(x, continuous: w, goal: p, force: force, tilt: tilt, z: z, limits: limits,
                                     risk: risk, volLimit: volLimit)
            let candidateChecks = Compliance.check(candidate.outcome, prepared: x, limits: limits, risk: risk,
                                                   maxVol: maxVol, volRule: volRule, volBefore: volBefore)
            return (candidate, candidateChecks, candidateChecks.filter { !$0.passed })
        }
        func conflictText(_ failures: [ComplianceCheck]) -> [String] {
            failures.map { "\($0.rule) cannot hold with \(forcedRules.joined(separator: ", ")): \($0.detail)" }
        }
        var found: (k: Int, plan: Plan, checks: [ComplianceCheck])? = nil
        let first = attempt(0)
        if first.failures.isEmpty {
            found = (0, first.plan, first.checks)
        } else if alpha == 0 {
            // Every k gives the same point: nothing else to try.
            conflicts = conflictText(first.failures)
        } else {
            let last = attempt(16)
            if last.failures.isEmpty {
                var failing = 0, passing = (k: 16, plan: last.plan, checks: last.checks)
                while passing.k - failing > 1 {
                    let mid = (failing + passing.k) / 2
                    let result = attempt(mid)
                    if result.failures.isEmpty { passing = (mid, result.plan, result.checks) } else { failing = mid }
                }
                found = passing
            } else {
                for k in 1...15 {
                    let result = attempt(k)
                    if result.failures.isEmpty { found = (k, result.plan, result.checks); break }
                }
                if found == nil { conflicts = conflictText(last.failures) }
            }
        }
        var plan: Plan? = nil
        var planChecks: [ComplianceCheck] = []
        if let found {
            plan = found.plan
            planChecks = found.checks
            step = alpha * (1 - Double(found.k) / 16)
        }
        guard var chosen = plan else {
            return infeasible(x, risk: risk, maxVol: maxVol, scores: scores, conflicts: conflicts)
        }
        checks = planChecks
        if limitedBy.vol {
            checks.append(ComplianceCheck(rule: volRule, passed: true,
                detail: "trades toward the target limited to \(pct(step)) of the way so that volatility stays within "
                    + "\(pct(volLimit))"))
        }
        if limitedBy.turnover {
            checks.append(ComplianceCheck(rule: "mandate.max_turnover", passed: true,
                detail: "trades toward the target limited to \(pct(step)) of the way by the turnover cap"))
        }
        if riskScaled {
            checks.append(ComplianceCheck(rule: volRule, passed: true,
                detail: "target scaled toward cash: its volatility \(pct(volP)) exceeded \(pct(maxVol))"))
        }

        // Reasons, explanations.
        let suitabilityLimited = limitedBy.vol || riskScaled
        for k in chosen.orders.indices {
            let i = chosen.orderAsset[k]
            var reasons = chosen.orders[k].reasons
            if suitabilityLimited && !chosen.orders[k].required {
                reasons.append(chosen.orders[k].side == .sell && riskScaled ? .riskLimit : .suitability)
            }
            chosen.orders[k].reasons = Self.unique(reasons)
            _ = i
        }
        try explain(&chosen, x: x, features: features, scores: scores, z: z, policy: policy, limits: limits,
                    maxVol: maxVol)

        let w1 = chosen.outcome.weights
        var targets: [TargetWeight] = []
        targets.reserveCapacity(n)
        for i in 0..<n {
            targets.append(TargetWeight(instrumentID: x.ids[i], currentWeight: x.w0[i], strategicWeight: x.strategic[i],
                                        targetWeight: w1[i], policyScore: Double(scores[i])))
        }
        let riskBefore = risk.figures(x.w0, strategic: x.strategic, maxVolatility: maxVol, volatility: volBefore)
        let riskAfter = risk.figures(w1, strategic: x.strategic, maxVolatility: maxVol)
        var notes = x.notes
        if !risk.defaulted.isEmpty {
            let names = risk.defaulted.prefix(5).map { x.ids[$0] }.joined(separator: ", ")
            notes.append("\(risk.defaulted.count) instrument(s) have fewer than \(RiskModel.minimumReturns + 1) prices "
                + "(\(names)\(risk.defaulted.count > 5 ? ", ..." : "")): their asset class's default volatility is used")
        }
        var decision = RebalanceDecision(
            status: chosen.orders.isEmpty ? .noTrade : .executable, targets: targets, orders: chosen.orders,
            compliance: ComplianceReport(checks: checks, conflicts: []), riskBefore: riskBefore, riskAfter: riskAfter,
            turnover: chosen.outcome.turnover, totalValue: x.value, cashWeightBefore: x.cash0,
            cashWeightAfter: chosen.outcome.cashWeight, totalEstimatedCost: chosen.outcome.cost, summary: "",
            notes: notes)
        decision.summary = Summary.paragraph(decision, profile: x.input.profile, volRule: volRule)
        return decision
    }

    private func infeasible(_ x: Prepared, risk: RiskModel, maxVol: Double, scores: [Float], conflicts: [String])
        -> RebalanceDecision
    {
        let figures = risk.figures(x.w0, strategic: x.strategic, maxVolatility: maxVol)
        var targets: [TargetWeight] = []
        for i in 0..<x.n {
            targets.append(TargetWeight(instrumentID: x.ids[i], currentWeight: x.w0[i], strategicWeight: x.strategic[i],
                                        targetWeight: x.w0[i], policyScore: Double(scores[i])))
        }
        var decision = RebalanceDecision(
            status: .infeasible, targets: targets, orders: [],
            compliance: ComplianceReport(checks: [], conflicts: conflicts), riskBefore: figures, riskAfter: figures,
            turnover: 0, totalValue: x.value, cashWeightBefore: x.cash0, cashWeightAfter: x.cash0,
            totalEstimatedCost: 0, summary: "", notes: x.notes)
        decision.summary = Summary.paragraph(decision, profile: x.input.profile, volRule: "")
        return decision
    }

    /// Standardised score: (s − mean) / sd, weighted by the strategic weights
    /// (equal weights when there are none), clipped to ±3. Zero when the
    /// scores do not vary.
    func signal(_ scores: [Float], strategic: [Double]) -> [Double] {
        let n = scores.count
        var weights = strategic
        var total = weights.reduce(0, +)
        if total <= 1e-12 { weights = [Double](repeating: 1, count: n); total = Double(n) }
        var mean = 0.0
        for i in 0..<n { mean += weights[i] * Double(scores[i]) }
        mean /= total
        var variance = 0.0
        for i in 0..<n { let e = Double(scores[i]) - mean; variance += weights[i] * e * e }
        variance /= total
        let sd = variance.squareRoot()
        guard sd > 1e-9 else { return [Double](repeating: 0, count: n) }
        return scores.map { min(3, max(-3, (Double($0) - mean) / sd)) }
    }

    static func rule(for force: Limits.Force, volRule: String) -> String? {
        switch force {
        case .volatility: volRule
        case .none: nil
        case .instrumentCap: "mandate.max_instrument_weight"
        case .excluded: "mandate.excluded_instruments"
        case .esg: "mandate.esg_floor"
        case .sectorCap: "mandate.sector_caps"
        case .classCap: "mandate.asset_class_caps"
        case .minCash: "mandate.min_cash_weight"
        }
    }

    static func unique(_ reasons: [ReasonCode]) -> [ReasonCode] {
        var seen: UInt16 = 0
        return reasons.filter { code in
            defer { seen |= code.bit }
            return seen & code.bit == 0
        }
    }
}

/// The largest α in [0, 1] that `feasible` accepts, to within 2⁻⁶⁰, for a
/// condition that holds on an interval starting at 0 (both of the step's
/// limits are convex along the segment).
private func bisect(_ feasible: (Double) -> Bool) -> Double {
    var lo = 0.0, hi = 1.0
    for _ in 0..<60 {
        let mid = (lo + hi) / 2
        if feasible(mid) { lo = mid } else { hi = mid }
    }
    return lo
}

/// One-way turnover of the trades `shift + α·d` (shift = start − current
/// weights), without building the point.
func oneWayTurnover(_ shift: [Double], _ d: [Double], _ alpha: Double) -> Double {
    oneWayTurnover(count: shift.count) { shift[$0] + alpha * d[$0] }
}

/// The largest α in [0, 1] with `oneWayTurnover(shift, d, α) ≤ limit`,
/// given that α = 0 satisfies it and α = 1 does not; nil when the
/// iteration does not settle (the caller then bisects).
///
/// Σ buys and Σ sells are each convex and piecewise linear in α, so
/// Newton's method from α = 1 with each function's left slope stays at or
/// above the crossing and lands on it after at most one step per linear
/// piece it crosses (in practice two or three): a few O(n) passes instead
/// of the sixty a bisection needs.
func largestStep(_ shift: [Double], _ d: [Double], limit: Double) -> Double? {
    var best = 1.0
    for sign in [1.0, -1.0] {  // buys, then sells (the sum of the negative parts)
        var alpha = 1.0
        var settled = false
        for _ in 0..<64 {
            var value = 0.0, slope = 0.0
            for i in 0..<shift.count {
                let delta = sign * (shift[i] + alpha * d[i])
                let rate = sign * d[i]
                if delta > 0 || (delta == 0 && rate < 0) { value += max(delta, 0); slope += rate }
            }
            if value <= limit { settled = true; break }
            guard slope > 0 else { return nil }
            let next = alpha - (value - limit) / slope
            guard next < alpha, next >= 0 else { return nil }
            alpha = next
        }
        guard settled else { return nil }
        best = min(best, alpha)
    }
    // Rounding may leave the crossing a hair above the limit: step back to
    // a point that passes the same test the plan is held to.
    var alpha = best
    for _ in 0..<8 where oneWayTurnover(shift, d, alpha) > limit { alpha *= 1 - 1e-12 }
    return oneWayTurnover(shift, d, alpha) <= limit ? alpha : nil
}

/// One-way turnover between two weight vectors.
func turnover(_ from: [Double], _ to: [Double]) -> Double {
    oneWayTurnover(count: from.count) { to[$0] - from[$0] }
}

/// max(Σ buys, Σ sells) of the trades `trade(0) ..< trade(count)`.
@inline(__always)
private func oneWayTurnover(count: Int, _ trade: (Int) -> Double) -> Double {
    var buys = 0.0, sells = 0.0
    for i in 0..<count {
        let delta = trade(i)
        if delta > 0 { buys += delta } else { sells -= delta }
    }
    return max(buys, sells)
}


