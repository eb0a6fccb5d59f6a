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
            var contributions: [FeatureContribution] = []
            contributions.reserveCapacity(width)
            for (k, i) in assets.enumerated() {
                contributions.removeAll(keepingCapacity: true)
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
        var text = TextBuilder(capacity: 512)
        for (k, i) in assets.enumerated() {
            text.clear()
            Summary.explanation(into: &text, plan.orders[k], asset: i, x: x, z: z[i], limits: limits,
                                weightAfter: plan.outcome.weights[i], maxVol: maxVol)
            plan.orders[k].explanation = text.text
        }
    }
}

/// Plain-language text for advisors and clients.
enum Summary {
    /// The plain-language reason for one order, appended to `t`.
    static func explanation(into t: inout TextBuilder, _ order: Order, asset i: Int, x: Prepared, z: Double,
                            limits: Limits, weightAfter: Double, maxVol: Double)
    {
        t.add(order.side == .buy ? "Buy " : "Sell ")
        t.number(order.quantity)
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
                t.number(x.input.instruments[i].esgScore ?? 0)
                t.add(" is below the floor of ")
                t.number(x.input.mandate.esgFloor)
            case .cap:
                if limits.hiReason[i] == .instrumentCap && x.w0[i] > limits.hi[i] {
                    t.add("it is ")
                    t.percent(x.w0[i])
                    t.add(" of the portfolio, above the ")
                    t.percent(limits.hi[i])
                    t.add(" cap")
                } else if limits.sectorOf[i] >= 0 {
                    t.add("sector ")
                    t.add(x.input.instruments[i].sector)
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
            var tally = [Int](repeating: 0, count: 16)
            for order in d.orders {
                if order.side == .buy { buyCount += 1 }
                for code in order.reasons { tally[code.bit.trailingZeroBitCount] += 1 }
            }
            let count = { (code: ReasonCode) in tally[code.bit.trailingZeroBitCount] }
            let sellCount = d.orders.count - buyCount
            let traded = d.orders.reduce(0) { $0 + $1.notional }
            var t = TextBuilder(capacity: 768)
            func plural(_ k: Int, _ one: StaticString, _ many: StaticString) {
                t.integer(k)
                t.add(k == 1 ? one : many)
            }
            t.add("We propose ")
            plural(d.orders.count, " trade", " trades")
            t.add(" (")
            plural(buyCount, " buy", " buys")
            t.add(", ")
            plural(sellCount, " sale", " sales")
            t.add(") worth about ")
            t.money(traded)
            t.add(" in all, a one-way turnover of ")
            t.percent(d.turnover)
            t.add(" of the portfolio. ")
            var first = true
            func why(_ k: Int, _ text: StaticString) {
                guard k > 0 else { return }
                t.add(first ? "Of these, " : ", ")
                first = false
                t.integer(k)
                t.add(text)
            }
            why(count(.exclusion) + count(.esgExclusion), " sell excluded or low-ESG holdings")
            why(count(.cap), " bring positions back under their caps")
            why(count(.drift), " bring the allocation back toward its strategic weights")
            why(count(.policySignal), " follow the model's market signal")
            why(count(.riskLimit) + count(.suitability), " are sized to respect the client's risk profile")
            why(count(.cashTarget), " manage the cash balance")
            if !first { t.add(". ") }
            t.add("Expected portfolio volatility moves from ")
            t.percent(d.riskBefore.volatility)
            t.add(" to ")
            t.percent(d.riskAfter.volatility)
            t.add(" (the client's profile, risk tolerance ")
            t.integer(profile.riskTolerance)
            t.add(" of 7, allows up to ")
            t.percent(d.riskAfter.maxVolatility)
            t.add("), and tracking error against the strategic allocation from ")
            t.percent(d.riskBefore.trackingError)
            t.add(" to ")
            t.percent(d.riskAfter.trackingError)
            t.add(". Estimated trading costs are ")
            t.money(d.totalEstimatedCost)
            t.add(". Every trade respects the mandate's limits and the client's suitability profile.")
            return t.text
        }
    }
}
