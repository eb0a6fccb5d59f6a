#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The state after a list of orders, in the terms the constraints use.
///
/// Weights after trading are measured against the value before trading, at
/// current prices; estimated costs are paid from cash. So
/// Σ weights + cash weight + costs / value = 1 exactly.
struct Outcome {
    struct Trade { var asset: Int; var side: Side; var quantity: Double }
    var trades: [Trade]
    var quantities: [Double]
    var weights: [Double]
    var cashWeight: Double
    var cost: Double
    var buyNotional: Double
    var sellNotional: Double
    var value: Double
    /// One-way turnover: max(buys, sells) / value.
    var turnover: Double { max(buyNotional, sellNotional) / value }
}

struct Plan {
    var orders: [Order]
    var orderAsset: [Int]
    var outcome: Outcome
}

extension RebalanceEngine {
    /// Round `quantity` to whole lots (`lot` 0 = any quantity), down or up.
    static func round(_ quantity: Double, lot: Double, up: Bool) -> Double {
        guard lot > 0 else { return quantity }
        let lots = quantity / lot
        // A quantity within 1e-9 lots of a whole number is that number (floating noise).
        let nearest = lots.rounded()
        if abs(lots - nearest) < 1e-9 { return nearest * lot }
        return (up ? lots.rounded(.up) : lots.rounded(.down)) * lot
    }

    func cost(_ x: Prepared, _ i: Int, _ quantity: Double) -> Double {
        guard quantity > 0 else { return 0 }
        let instrument = x.input.instruments[i]
        let notional = quantity * x.prices[i]
        let mandate = x.input.mandate
        let commission = max(mandate.commissionMin, mandate.commissionBps / 10_000 * notional)
        let halfSpread = (instrument.halfSpreadBps > 0 ? instrument.halfSpreadBps : config.defaultHalfSpreadBps) / 10_000
        var impact = 0.0
        if instrument.averageDailyVolume > 0 {
            let daily = x.stats[i].dailyVolatility ?? x.defaultVolatility[i] / FeatureSet.tradingDaysPerYear.squareRoot()
            impact = config.impactCoefficient * daily * (quantity / instrument.averageDailyVolume).squareRoot()
        }
        return commission + (halfSpread + impact) * notional
    }

    /// The policy's expected excess return over the horizon plus the value
    /// of the drift the trade removes. Drift is measured against `goal`, the
    /// engine's target after the constraints (the projected target), not the
    /// raw strategic weight: when a cap, an exclusion, a knowledge or ESG
    /// restriction or the volatility limit moves the target away from the
    /// strategic weights, measuring against the strategic weight called the
    /// trades toward the feasible target worthless (e.g. buying the rest of
    /// the allocation when one instrument may not be bought) and left the
    /// portfolio in cash.
    func benefit(_ x: Prepared, _ i: Int, _ side: Side, _ quantity: Double, z: [Double], goal: [Double]) -> Double {
        let notional = quantity * x.prices[i]
        let edge = config.alphaPerScoreUnit * z[i] * config.horizonYears
        let policy = notional * edge * (side == .buy ? 1 : -1)
        let w1 = x.w0[i] + (side == .buy ? 1 : -1) * notional / x.value
        let before = x.w0[i] - goal[i], after = w1 - goal[i]
        let drift = x.value * config.driftAversion * (before * before - after * after)
        return policy + drift
    }

    func outcome(_ x: Prepared, _ trades: [Outcome.Trade]) -> Outcome {
        var q = x.quantity
        var cash = x.input.portfolio.cash
        var cost = 0.0, buys = 0.0, sells = 0.0
        for t in trades {
            let notional = t.quantity * x.prices[t.asset]
            if t.side == .buy { q[t.asset] += t.quantity; cash -= notional; buys += notional }
            else { q[t.asset] -= t.quantity; cash += notional; sells += notional }
            let c = self.cost(x, t.asset, t.quantity)
            cost += c
            cash -= c
        }
        for i in 0..<x.n where abs(q[i]) < 1e-12 * max(1, x.quantity[i]) { q[i] = 0 }
        let weights = (0..<x.n).map { q[$0] * x.prices[$0] / x.value }
        return Outcome(trades: trades, quantities: q, weights: weights, cashWeight: cash / x.value, cost: cost,
                       buyNotional: buys, sellNotional: sells, value: x.value)
    }

    /// Whole-lot orders that move the portfolio toward `continuous` (a point
    /// on the way from the forced point to `goal`, the constrained target).
    func makePlan(_ x: Prepared, continuous w: [Double], goal: [Double], force: [Limits.Force], tilt: [Double],
                  z: [Double], limits: Limits, risk: RiskModel, volLimit: Double) -> Plan
    {
        let n = x.n
        let mandate = x.input.mandate
        struct Draft { var asset: Int; var side: Side; var quantity: Double; var required: Bool; var reasons: [ReasonCode] }
        var drafts: [Draft] = []
        for i in 0..<n {
            let delta = (w[i] - x.w0[i]) * x.value / x.prices[i]
            if delta > 0 {
                guard !limits.noBuy[i] else { continue }
                let qty = Self.round(delta, lot: x.lot[i], up: false)
                if qty > 0 { drafts.append(Draft(asset: i, side: .buy, quantity: qty, required: false, reasons: [])) }
            } else if delta < 0, x.quantity[i] > 0 {
                // Sales forced by an aggregate limit (minimum cash, sector or
                // asset-class cap) are spread over every holding of the group by
                // the forced point. Rounded up position by position (and grown
                // to the minimum notional) they sold a lot or more of every
                // holding, often far more than the limit needs (a whole odd-lot
                // position), and broke the turnover cap. So they round down and
                // are not required on their own: the repair passes below sell
                // whole lots, smallest sufficient sale first, for whatever the
                // limit still misses. Sales forced by the volatility limit (the
                // forced point scaled toward cash) stay required but also round
                // down; the volatility repair pass covers the rest.
                let aggregate = force[i] == .minCash || force[i] == .sectorCap || force[i] == .classCap
                let roundDown = aggregate || force[i] == .volatility
                var qty = w[i] <= 1e-15
                    ? x.quantity[i] : min(x.quantity[i], Self.round(-delta, lot: x.lot[i], up: !roundDown))
                let required = force[i] != .none && !aggregate
                if required, qty > 0, qty * x.prices[i] < mandate.minTradeNotional {
                    // A forced sale below the minimum notional grows to it (or the whole
                    // position). Not a sale that rounds to nothing: growing that turned
                    // floating-point noise, and volatility sales rounded down to zero,
                    // into sales of the minimum notional.
                    qty = min(x.quantity[i], Self.round(mandate.minTradeNotional / x.prices[i], lot: x.lot[i], up: true))
                }
                if qty > 0 { drafts.append(Draft(asset: i, side: .sell, quantity: qty, required: required, reasons: [])) }
            }
        }
        // Drop what does not pay for itself or is below the minimum notional.
        drafts = drafts.filter { draft in
            if draft.required { return true }
            let notional = draft.quantity * x.prices[draft.asset]
            let fullExit = draft.side == .sell && draft.quantity >= x.quantity[draft.asset]
            if notional < mandate.minTradeNotional && !fullExit { return false }
            return benefit(x, draft.asset, draft.side, draft.quantity, z: z, goal: goal) > cost(x, draft.asset, draft.quantity)
        }
        func trades() -> [Outcome.Trade] { drafts.map { Outcome.Trade(asset: $0.asset, side: $0.side, quantity: $0.quantity) } }
        var result = outcome(x, trades())
        let maxTurnover = mandate.maxTurnover ?? .infinity
        // Cash and turnover: trim buys, least valuable per unit first.
        func shortfall(_ o: Outcome) -> Double {
            let cashGap = (mandate.minCashWeight - o.cashWeight) * x.value
            let turnoverGap = o.buyNotional - maxTurnover * x.value
            return max(cashGap, turnoverGap, 0)
        }
        var gap = shortfall(result)
        if gap > 1e-9 * x.value {
            let order = drafts.indices.filter { drafts[$0].side == .buy }.sorted { a, b in
                let ra = benefit(x, drafts[a].asset, .buy, drafts[a].quantity, z: z, goal: goal) / (drafts[a].quantity * x.prices[drafts[a].asset])
                let rb = benefit(x, drafts[b].asset, .buy, drafts[b].quantity, z: z, goal: goal) / (drafts[b].quantity * x.prices[drafts[b].asset])
                return ra != rb ? ra < rb : drafts[a].asset < drafts[b].asset
            }
            for k in order where gap > 1e-9 * x.value {
                let i = drafts[k].asset
                let needed = gap / x.prices[i]
                let cut = x.lot[i] > 0 ? max(x.lot[i], Self.round(needed, lot: x.lot[i], up: true)) : needed * (1 + 1e-9)
                drafts[k].quantity = max(0, drafts[k].quantity - cut)
                // A buy trimmed below the minimum notional is dropped (it would
                // break the rule), and so is one that no longer pays for itself
                // (a minimum commission weighs more on a smaller order).
                if drafts[k].quantity * x.prices[i] < mandate.minTradeNotional
                    || !(benefit(x, i, .buy, drafts[k].quantity, z: z, goal: goal) > cost(x, i, drafts[k].quantity))
                {
                    drafts[k].quantity = 0
                }
                result = outcome(x, trades())
                gap = shortfall(result)
            }
            drafts.removeAll { $0.quantity <= 0 }
            result = outcome(x, trades())
        }
        // Repair passes for the aggregate limits: while a capped sector or
        // asset class is above its cap, or cash below its minimum, sell more.
        // Each step sells, from one eligible holding, the smallest whole-lot
        // quantity that closes the gap (at least the minimum notional, or the
        // rest of the position), choosing the holding where that sale is
        // smallest; when no single sale closes the gap, the largest possible
        // one. (Selling from the largest position first, as the cash pass did,
        // turned a tiny gap into a full exit of a big odd-lot position and
        // broke the turnover cap.) Deterministic: ties go to the lower index.
        // At most n steps per limit.
        func sellToClose(_ gap: (Outcome) -> Double, eligible: (Int) -> Bool, paysCosts: Bool, reason: ReasonCode) {
            var missing = gap(result)
            var steps = 0
            while missing > 1e-9 * x.value && steps < n {
                steps += 1
                // For cash: the gap plus this sale's own (at most minimum)
                // commission, with 1 % for spread and impact, as a first guess.
                let need = paysCosts ? missing * 1.01 + mandate.commissionMin : missing * (1 + 1e-9)
                var buying = [Bool](repeating: false, count: n), selling = [Double](repeating: 0, count: n)
                for d in drafts { if d.side == .buy { buying[d.asset] = true } else { selling[d.asset] += d.quantity } }
                var best = -1, bestQty = 0.0, bestCovers = false
                for i in 0..<n where result.quantities[i] > 0 && eligible(i) && !buying[i] {
                    let want = Self.round(need / x.prices[i] + 1e-12, lot: x.lot[i], up: true)
                    let minimum = Self.round(mandate.minTradeNotional / x.prices[i], lot: x.lot[i], up: true)
                    var qty = min(result.quantities[i], max(want, x.lot[i], minimum))
                    guard qty > 0 else { continue }
                    var covers = qty * x.prices[i] >= need
                    if paysCosts {
                        // The cash the sale really brings: its notional less the
                        // cost it adds (spread and market impact can exceed 1 %);
                        // sell more while that falls short (impact grows faster
                        // than the sale, so a few rounds at most).
                        for _ in 0..<8 {
                            let added = cost(x, i, selling[i] + qty) - cost(x, i, selling[i])
                            let gained = qty * x.prices[i] - added
                            covers = gained >= missing
                            if covers || qty >= result.quantities[i] { break }
                            let more = Self.round((missing - gained) * 1.01 / x.prices[i] + 1e-12, lot: x.lot[i], up: true)
                            qty = min(result.quantities[i], qty + max(more, x.lot[i]))
                        }
                    }
                    let notional = qty * x.prices[i]
                    let better: Bool
                    if best < 0 { better = true }
                    else if covers != bestCovers { better = covers }
                    else if covers { better = notional < bestQty * x.prices[best] }
                    else { better = notional > bestQty * x.prices[best] }
                    if better { best = i; bestQty = qty; bestCovers = covers }
                }
                guard best >= 0 else { return }
                if let k = drafts.firstIndex(where: { $0.asset == best && $0.side == .sell }) {
                    drafts[k].quantity += bestQty
                    drafts[k].required = true
                    drafts[k].reasons.append(reason)
                } else {
                    drafts.append(Draft(asset: best, side: .sell, quantity: bestQty, required: true, reasons: [reason]))
                }
                result = outcome(x, trades())
                missing = gap(result)
            }
        }
        for (of, caps) in [(limits.sectorOf, limits.sectorCaps), (limits.classOf, limits.classCaps)] {
            for g in caps.indices {
                sellToClose({ o in
                    var sum = 0.0
                    for i in 0..<n where of[i] == g { sum += o.weights[i] }
                    return (sum - caps[g]) * x.value
                }, eligible: { of[$0] == g }, paysCosts: false, reason: .cap)
            }
        }
        sellToClose({ ($0.value * mandate.minCashWeight - $0.cashWeight * $0.value) }, eligible: { _ in true },
                    paysCosts: true, reason: .cashTarget)
        // Volatility, last (its sales only lower weights and raise cash, so
        // the passes above stay satisfied), for sell-only plans (the forced
        // point, where a smaller step cannot help: a forced sale or the cash
        // pass may have sold a hedge or a low-risk holding) and whenever the
        // forced sales had to be scaled toward cash for the volatility: while
        // the volatility is above the allowed level, sell from the
        // holding whose smallest sufficient whole-lot sale is smallest (the
        // sale δ of weight that brings wᵀΣw − 2δ(Σw)ᵢ + δ²Σᵢᵢ down to the
        // limit), or else the one that lowers the variance most. O(n·T) per
        // step; the forced sales leave only rounding to cover, so at most 16
        // steps (then the compliance check refuses the plan).
        let limit2 = volLimit * volLimit
        if (force.contains(.volatility) || (!drafts.isEmpty && !drafts.contains(where: { $0.side == .buy })))
            && risk.variance(result.weights) > limit2 * (1 + 1e-12)
        {
            let own = risk.ownVariance()
            var steps = 0
            while steps < min(n, 16) {
                let variance = risk.variance(result.weights)
                if variance <= limit2 * (1 + 1e-12) { break }
                steps += 1
                let g = risk.covarianceTimes(result.weights)
                var best = -1, bestQty = 0.0, bestCovers = false, bestValue = 0.0
                for i in 0..<n where result.quantities[i] > 0 && g[i] > 0 && own[i] > 0 {
                    if drafts.contains(where: { $0.asset == i && $0.side == .buy }) { continue }
                    // Smallest δ with variance(δ) ≤ limit², if any; else the minimiser g/Σᵢᵢ.
                    let disc = g[i] * g[i] - own[i] * (variance - limit2)
                    let delta = disc >= 0 ? (g[i] - disc.squareRoot()) / own[i] * (1 + 1e-9) : g[i] / own[i]
                    let want = Self.round(delta * x.value / x.prices[i] + 1e-12, lot: x.lot[i], up: true)
                    let minimum = Self.round(mandate.minTradeNotional / x.prices[i], lot: x.lot[i], up: true)
                    let qty = min(result.quantities[i], max(want, x.lot[i], minimum))
                    guard qty > 0 else { continue }
                    let d = qty * x.prices[i] / x.value
                    let after = variance - 2 * d * g[i] + d * d * own[i]
                    let covers = after <= limit2
                    // Covering: the smallest sale; otherwise: the lowest variance.
                    let value = covers ? qty * x.prices[i] : after
                    let better = best < 0 || (covers != bestCovers ? covers : value < bestValue)
                    if better { best = i; bestQty = qty; bestCovers = covers; bestValue = value }
                }
                guard best >= 0 else { break }
                if let k = drafts.firstIndex(where: { $0.asset == best && $0.side == .sell }) {
                    drafts[k].quantity += bestQty
                    drafts[k].required = true
                    drafts[k].reasons.append(.riskLimit)
                } else {
                    drafts.append(Draft(asset: best, side: .sell, quantity: bestQty, required: true, reasons: [.riskLimit]))
                }
                result = outcome(x, trades())
            }
        }
        drafts.sort { $0.asset < $1.asset }
        result = outcome(x, trades())

        // Orders with reasons, costs and benefits.
        let excessCash = x.cash0 > 1 - x.investedTarget + 1e-9
        var orders: [Order] = []
        var assets: [Int] = []
        for draft in drafts {
            let i = draft.asset
            var reasons = draft.reasons
            if draft.side == .sell {
                switch force[i] {
                case .excluded: reasons.append(.exclusion)
                case .esg: reasons.append(.esgExclusion)
                case .instrumentCap, .sectorCap, .classCap: reasons.append(.cap)
                case .minCash: reasons.append(.cashTarget)
                case .volatility: reasons.append(.riskLimit)
                case .none: break
                }
            }
            let before = abs(x.w0[i] - x.strategic[i]), after = abs(result.weights[i] - x.strategic[i])
            if after < before - 1e-12 { reasons.append(.drift) }
            let direction: Double = draft.side == .buy ? 1 : -1
            if tilt[i] * direction > 0 { reasons.append(.policySignal) }
            if draft.side == .buy && excessCash { reasons.append(.cashTarget) }
            if reasons.isEmpty { reasons.append(draft.side == .sell ? .cashTarget : .drift) }
            orders.append(Order(instrumentID: x.ids[i], side: draft.side, quantity: draft.quantity, price: x.prices[i],
                                estimatedCost: cost(x, i, draft.quantity),
                                expectedBenefit: benefit(x, i, draft.side, draft.quantity, z: z, goal: goal),
                                required: draft.required, reasons: Self.unique(reasons), topFeatures: [],
                                explanation: ""))
            assets.append(i)
        }
        return Plan(orders: orders, orderAsset: assets, outcome: result)
    }
}

/// The hard constraints, checked on an outcome: the ground truth for the
/// engine's own retries, for the response's compliance report and for tests.
enum Compliance {
    static let tolerance = 1e-9

    static func check(_ o: Outcome, prepared x: Prepared, limits: Limits, risk: RiskModel, maxVol: Double,
                      volRule: String, volBefore: Double) -> [ComplianceCheck]
    {
        let mandate = x.input.mandate
        var checks: [ComplianceCheck] = []
        func add(_ rule: String, _ failure: String?, _ ok: String) {
            checks.append(ComplianceCheck(rule: rule, passed: failure == nil, detail: failure ?? ok))
        }
        let w = o.weights
        let n = x.n
        add("mandate.no_short", (0..<n).first { o.quantities[$0] < 0 }.map { "\(x.ids[$0]) would be short" },
            "no short positions")
        add("mandate.no_leverage", o.cashWeight < -tolerance ? "cash would be \(o.cashWeight * x.value)" : nil,
            "cash stays >= 0")
        add("mandate.min_cash_weight",
            o.cashWeight < mandate.minCashWeight - tolerance
                ? "cash weight \(pct(o.cashWeight)) below the minimum \(pct(mandate.minCashWeight))" : nil,
            "cash weight \(pct(o.cashWeight)) >= \(pct(mandate.minCashWeight))")
        if let cap = mandate.maxInstrumentWeight {
            add("mandate.max_instrument_weight",
                (0..<n).first { w[$0] > cap + tolerance }.map { "\(x.ids[$0]) at \(pct(w[$0])) above \(pct(cap))" },
                "every instrument <= \(pct(cap))")
        }
        if !limits.sectorCaps.isEmpty {
            let sums = limits.groupSums(w, limits.sectorOf, limits.sectorCaps.count)
            add("mandate.sector_caps", sums.indices.first { sums[$0] > limits.sectorCaps[$0] + tolerance }.map {
                "sector \(limits.sectorNames[$0]) at \(pct(sums[$0])) above \(pct(limits.sectorCaps[$0]))"
            }, "every capped sector within its cap")
        }
        if !limits.classCaps.isEmpty {
            let sums = limits.groupSums(w, limits.classOf, limits.classCaps.count)
            add("mandate.asset_class_caps", sums.indices.first { sums[$0] > limits.classCaps[$0] + tolerance }.map {
                "asset class \(limits.classNames[$0]) at \(pct(sums[$0])) above \(pct(limits.classCaps[$0]))"
            }, "every capped asset class within its cap")
        }
        if !mandate.excludedInstruments.isEmpty {
            add("mandate.excluded_instruments",
                (0..<n).first { limits.hiReason[$0] == .excluded && w[$0] > 0 }.map { "\(x.ids[$0]) still held" },
                "no excluded instrument held")
        }
        if mandate.esgFloor > 0 {
            add("mandate.esg_floor",
                (0..<n).first { limits.hiReason[$0] == .esg && w[$0] > 0 }.map { "\(x.ids[$0]) (ESG below floor) still held" }
                    ?? o.trades.first { $0.side == .buy && x.input.instruments[$0.asset].esgScore == nil }
                    .map { "\(x.ids[$0.asset]) is unrated and would be bought" },
                "nothing below the ESG floor held or bought")
        }
        if let cap = mandate.maxTurnover {
            add("mandate.max_turnover",
                o.turnover > cap + tolerance ? "turnover \(pct(o.turnover)) above \(pct(cap))" : nil,
                "turnover \(pct(o.turnover)) <= \(pct(cap))")
        }
        if mandate.minTradeNotional > 0 {
            add("mandate.min_trade_notional", o.trades.first { t in
                let notional = t.quantity * x.prices[t.asset]
                let fullExit = t.side == .sell && t.quantity >= x.quantity[t.asset] - 1e-12
                return notional < mandate.minTradeNotional - 1e-9 && !fullExit
            }.map { "\(x.ids[$0.asset]): \($0.quantity * x.prices[$0.asset]) below \(mandate.minTradeNotional)" },
                "every order >= \(mandate.minTradeNotional) (or a full exit)")
        }
        add("mandate.lot_sizes", o.trades.first { t in
            let lot = x.lot[t.asset]
            guard lot > 0 else { return false }
            let fullExit = t.side == .sell && abs(t.quantity - x.quantity[t.asset]) < 1e-9
            let lots = t.quantity / lot
            return !fullExit && abs(lots - lots.rounded()) > 1e-9
        }.map { "\(x.ids[$0.asset]): \($0.quantity) is not a whole number of lots of \(x.lot[$0.asset])" },
            mandate.allowFractional ? "fractional quantities allowed" : "whole lots (or a full exit)")
        if !mandate.blockedPurchases.isEmpty {
            add("tax.repurchase_block", o.trades.first { t in
                t.side == .buy && mandate.blockedPurchases.contains(x.ids[t.asset])
            }.map { "\(x.ids[$0.asset]) is blocked from purchase (wash-sale window) and would be bought" },
                "nothing bought inside its wash-sale window")
        }
        add("suitability.knowledge", o.trades.first { t in
            t.side == .buy && x.input.instruments[t.asset].requiredKnowledge > x.input.profile.knowledge
        }.map { "\(x.ids[$0.asset]) needs knowledge level \(x.input.instruments[$0.asset].requiredKnowledge) to buy" },
            "nothing bought above the client's knowledge level")
        let volAfter = risk.volatility(w)
        let allowed = max(maxVol, volBefore)
        add(volRule, volAfter > allowed * (1 + 1e-9) + 1e-12
                ? "volatility after \(pct(volAfter)) above \(pct(maxVol))\(volBefore > maxVol ? " and above the current \(pct(volBefore))" : "")"
                : nil,
            "volatility after \(pct(volAfter)) <= \(pct(allowed))\(volBefore > maxVol ? " (current level; the profile allows \(pct(maxVol)))" : "")")
        return checks
    }
}
