extension RebalanceEngine {
    /// Top features per order by batched occlusion: for every ordered asset
    /// and every feature, a row with that feature replaced by its
    /// cross-sectional mean, all scored in one policy call. A feature's
    /// contribution is the asset's score minus the occluded score.
    func explain(_ plan: inout Plan, x: Prepared, features: [Float], scores: [Float], z: [Double],
                 policy: some PolicyScorer, limits: Limits, maxVol: Double) throws(EngineError)
    {
        let width = FeatureSet.count
        let assets = plan.orderAsset
        if !assets.isEmpty && config.topFeatures > 0 {
            var mean = [Double](repeating: 0, count: width)
            for i in 0..<x.n { for j in 0..<width { mean[j] += Double(features[i * width + j]) } }
            for j in 0..<width { mean[j] /= Double(x.n) }
            let rows = assets.count * width
            var batch = [Float](repeating: 0, count: rows * width)
            for (k, i) in assets.enumerated() {
                for j in 0..<width {
                    let row = (k * width + j) * width
                    for c in 0..<width { batch[row + c] = features[i * width + c] }
                    batch[row + j] = Float(mean[j])
                }
            }
            let occluded: [Float]
            do {
                occluded = try policy.scores(batch, rows: rows)
            } catch {
                throw EngineError(.policyFailed, "the policy failed on the explanation batch (\(rows) rows): \(error)")
            }
            guard occluded.count == rows else {
                throw EngineError(.policyFailed, "the policy gave \(occluded.count) scores for \(rows) explanation rows")
            }
            for (k, i) in assets.enumerated() {
                var contributions: [FeatureContribution] = []
                for j in 0..<width {
                    let c = Double(scores[i]) - Double(occluded[k * width + j])
                    contributions.append(FeatureContribution(feature: FeatureSet.names[j],
                                                             value: Double(features[i * width + j]),
                                                             contribution: c.isFinite ? c : 0))
                }
                contributions.sort { a, b in
                    abs(a.contribution) != abs(b.contribution) ? abs(a.contribution) > abs(b.contribution) : a.feature < b.feature
                }
                plan.orders[k].topFeatures = Array(contributions.prefix(config.topFeatures))
            }
        }
        for (k, i) in assets.enumerated() {
            plan.orders[k].explanation = Summary.explanation(plan.orders[k], asset: i, x: x, z: z[i], limits: limits,
                                                             weightAfter: plan.outcome.weights[i], maxVol: maxVol)
        }
    }
}

/// Plain-language text for advisors and clients.
enum Summary {
    static func money(_ v: Double) -> String { Format.money(v) }

    static func number(_ v: Double) -> String { Format.trimmed(v) }

    static func explanation(_ order: Order, asset i: Int, x: Prepared, z: Double, limits: Limits, weightAfter: Double,
                            maxVol: Double) -> String
    {
        let instrument = x.input.instruments[i]
        var t = TextBuilder(capacity: 320)
        t.add(order.side == .buy ? "Buy " : "Sell ")
        t.add(number(order.quantity))
        t.add(" ")
        t.add(order.instrumentID)
        t.add(" (about ")
        t.money(order.notional)
        t.add("): ")
        for (k, reason) in order.reasons.enumerated() {
            if k > 0 { t.add("; ") }
            switch reason {
            case .exclusion: t.add("the mandate excludes it")
            case .esgExclusion:
                t.add("its ESG score ")
                t.add(number(instrument.esgScore ?? 0))
                t.add(" is below the floor of ")
                t.add(number(x.input.mandate.esgFloor))
            case .cap:
                if limits.hiReason[i] == .instrumentCap && x.w0[i] > limits.hi[i] {
                    t.add("it is ")
                    t.percent(x.w0[i])
                    t.add(" of the portfolio, above the ")
                    t.percent(limits.hi[i])
                    t.add(" cap")
                } else if limits.sectorOf[i] >= 0 {
                    t.add("sector ")
                    t.add(instrument.sector)
                    t.add(" is above its cap")
                } else {
                    t.add("its asset class is above its cap")
                }
            case .cashTarget:
                if order.side == .sell {
                    t.add("to keep cash at or above the ")
                    t.percent(x.input.mandate.minCashWeight)
                    t.add(" minimum")
                } else {
                    t.add("to invest cash above the target")
                }
            case .riskLimit:
                t.add("to keep portfolio volatility within the ")
                t.percent(maxVol)
                t.add(" the client's profile allows")
            case .suitability: t.add("its size is limited by the client's risk profile")
            case .drift:
                t.add("it moves the weight from ")
                t.percent(x.w0[i])
                t.add(" to ")
                t.percent(weightAfter)
                t.add(", toward the strategic ")
                t.percent(x.strategic[i])
            case .policySignal:
                t.add("the policy scores it ")
                if z >= 0 { t.add("+") }
                t.fixed(z, 2)
                t.add(" standard deviations from the portfolio's mean")
                if let top = order.topFeatures.first {
                    t.add(" (mostly ")
                    t.add(top.feature)
                    t.add(")")
                }
            case .tax, .liquidity, .washSaleBlock: t.add(reason.rawValue.lowercased())
            }
        }
        t.add(". Estimated cost ")
        t.money(order.estimatedCost)
        if order.required {
            t.add(", required by a hard constraint.")
        } else {
            t.add(", expected benefit ")
            t.money(order.expectedBenefit)
            t.add(".")
        }
        return t.text
    }

    static func paragraph(_ d: RebalanceDecision, profile: RiskProfile, volRule: String) -> String {
        switch d.status {
        case .infeasible:
            return "No trades are proposed because the portfolio's constraints cannot all be met at once: "
                + d.compliance.conflicts.joined(separator: "; ")
                + ". The mandate or the client's profile needs to change before this account can be rebalanced."
        case .noTrade:
            // A portfolio already above its volatility limit may be left as it
            // is (trades may not raise volatility further, and none that lowers
            // it was worth its cost or fitted the turnover cap): then it is not
            // "within the client's risk profile", and the summary says so.
            if d.riskBefore.volatility > d.riskBefore.maxVolatility * (1 + 1e-9) {
                return "No trades are proposed. The portfolio is within its mandate, but its volatility "
                    + "\(pct(d.riskBefore.volatility)) is above the \(pct(d.riskBefore.maxVolatility)) the client's risk "
                    + "profile allows, and no trade that would lower it is worth its cost within the mandate's limits; "
                    + "the allocation should be reviewed with the client."
            }
            return "No trades are proposed: the portfolio is within its mandate and the client's risk profile "
                + "(volatility \(pct(d.riskBefore.volatility)), limit \(pct(d.riskBefore.maxVolatility))), and no "
                + "trade's expected benefit would cover its cost."
        case .executable:
            var buyCount = 0
            var tally = [ReasonCode: Int]()
            for order in d.orders {
                if order.side == .buy { buyCount += 1 }
                for code in order.reasons { tally[code, default: 0] += 1 }
            }
            let sellCount = d.orders.count - buyCount
            let traded = d.orders.reduce(0) { $0 + $1.notional }
            var text = "We propose \(d.orders.count) trade\(d.orders.count == 1 ? "" : "s") (\(buyCount) "
                + "buy\(buyCount == 1 ? "" : "s"), \(sellCount) sale\(sellCount == 1 ? "" : "s")) worth about "
                + "\(money(traded)) in all, a one-way turnover of \(pct(d.turnover)) of the portfolio. "
            var why: [String] = []
            let count = { (code: ReasonCode) in tally[code] ?? 0 }
            if count(.exclusion) + count(.esgExclusion) > 0 {
                why.append("\(count(.exclusion) + count(.esgExclusion)) sell excluded or low-ESG holdings")
            }
            if count(.cap) > 0 { why.append("\(count(.cap)) bring positions back under their caps") }
            if count(.drift) > 0 { why.append("\(count(.drift)) bring the allocation back toward its strategic weights") }
            if count(.policySignal) > 0 { why.append("\(count(.policySignal)) follow the model's market signal") }
            if count(.riskLimit) + count(.suitability) > 0 {
                why.append("\(count(.riskLimit) + count(.suitability)) are sized to respect the client's risk profile")
            }
            if count(.cashTarget) > 0 { why.append("\(count(.cashTarget)) manage the cash balance") }
            if !why.isEmpty { text += "Of these, " + why.joined(separator: ", ") + ". " }
            text += "Expected portfolio volatility moves from \(pct(d.riskBefore.volatility)) to "
                + "\(pct(d.riskAfter.volatility)) (the client's profile, risk tolerance \(profile.riskTolerance) of 7, "
                + "allows up to \(pct(d.riskAfter.maxVolatility))), and tracking error against the strategic allocation "
                + "from \(pct(d.riskBefore.trackingError)) to \(pct(d.riskAfter.trackingError)). Estimated trading costs "
                + "are \(money(d.totalEstimatedCost)). Every trade respects the mandate's limits and the client's "
                + "suitability profile."
            return text
        }
    }
}
