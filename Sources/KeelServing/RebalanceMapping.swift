import KeelAPI
import KeelAudit
import KeelPortfolio

/// Translation between the API's messages (keel.v1) and the portfolio
/// domain's types. Rejects what the domain cannot represent (unknown enum
/// values, unknown asset-class names) with INVALID_ARGUMENT naming the field.
public enum RebalanceMapping {
    static let assetClassNames: [String: AssetClass] = [
        "ASSET_CLASS_UNSPECIFIED": .unspecified, "ASSET_CLASS_EQUITY": .equity,
        "ASSET_CLASS_FIXED_INCOME": .fixedIncome, "ASSET_CLASS_CASH_EQUIVALENT": .cashEquivalent,
        "ASSET_CLASS_COMMODITY": .commodity, "ASSET_CLASS_REAL_ESTATE": .realEstate,
        "ASSET_CLASS_ALTERNATIVE": .alternative, "ASSET_CLASS_MULTI_ASSET": .multiAsset,
    ]

    static func assetClass(_ value: Keel_V1_AssetClass, _ field: @autoclosure () -> String) throws(RPCStatus)
        -> AssetClass
    {
        switch value {
        case .unspecified: .unspecified
        case .equity: .equity
        case .fixedIncome: .fixedIncome
        case .cashEquivalent: .cashEquivalent
        case .commodity: .commodity
        case .realEstate: .realEstate
        case .alternative: .alternative
        case .multiAsset: .multiAsset
        case .UNRECOGNIZED(let raw): throw RPCStatus(.invalidArgument, "\(field()): unknown asset class \(raw)")
        }
    }

    static func knowledge(_ value: Keel_V1_KnowledgeLevel, _ field: @autoclosure () -> String) throws(RPCStatus)
        -> KnowledgeLevel
    {
        switch value {
        case .unspecified, .basic: .basic
        case .informed: .informed
        case .advanced: .advanced
        case .UNRECOGNIZED(let raw): throw RPCStatus(.invalidArgument, "\(field()): unknown knowledge level \(raw)")
        }
    }

    /// The domain input of a request. Instruments without a price or price
    /// history in the request take them from `market` (PublishMarketData).
    public static func input(_ request: Keel_V1_RebalanceRequest, market: MarketState) throws(RPCStatus)
        -> (input: RebalanceInput, marketStateUnixNanos: Int64)
    {
        var instruments: [Instrument] = []
        instruments.reserveCapacity(request.instruments.count)
        var newest: Int64 = 0
        // The market state's analysed series of every instrument that brings
        // no history of its own, fetched under one lock.
        let states = market.analysedSeries(for: request.instruments.map { $0.priceHistory.isEmpty ? $0.id : nil })
        for (k, m) in request.instruments.enumerated() {
            var price = m.price
            var history: [Double] = []
            var analysed: FeatureSet.SeriesData? = nil
            if !m.priceHistory.isEmpty {
                history.reserveCapacity(m.priceHistory.count)
                for point in m.priceHistory { history.append(point.price) }
                newest = max(newest, m.priceHistory.last?.timeUnixNanos ?? 0)
            } else if let state = states[k], price == 0 || price == state.latestPrice {
                // The market state's series, already analysed: the common case
                // of a client that streams prices and sends portfolios.
                price = state.latestPrice
                analysed = state.series
                newest = max(newest, state.latestTime)
            }
            if analysed == nil, price == 0 || history.isEmpty, let window = market.window(for: m.id) {
                if history.isEmpty { history = window.prices }
                if price == 0, let latest = window.latestPrice { price = latest }
                newest = max(newest, window.latestTime ?? 0)
            }
            if price == 0 {
                throw RPCStatus(.invalidArgument,
                                "instrument \(k) ('\(m.id)') has no price and the market state holds none for it")
            }
            instruments.append(Instrument(
                id: m.id, price: price, sector: m.sector,
                assetClass: try assetClass(m.assetClass, "instruments[\(k)].asset_class"),
                esgScore: m.hasEsgScore ? m.esgScore : nil, lotSize: m.lotSize,
                requiredKnowledge: try knowledge(m.requiredKnowledge, "instruments[\(k)].required_knowledge"),
                halfSpreadBps: m.halfSpreadBps, averageDailyVolume: m.averageDailyVolume, priceHistory: history,
                series: analysed))
        }
        let p = request.portfolio
        guard p.accountID.utf8.count <= AuditEntry.maxIDBytes else {
            throw RPCStatus(.invalidArgument, "portfolio.account_id is \(p.accountID.utf8.count) bytes; "
                + "at most \(AuditEntry.maxIDBytes) allowed")
        }
        guard !p.accountID.utf8.contains(0) else {
            throw RPCStatus(.invalidArgument, "portfolio.account_id contains a NUL character")
        }
        let portfolio = Portfolio(accountID: p.accountID,
                                  holdings: p.holdings.map { Holding(instrumentID: $0.instrumentID, quantity: $0.quantity) },
                                  cash: p.cash)
        let r = request.riskProfile
        var objectives: [Objective] = []
        for (k, o) in r.objectives.enumerated() {
            guard let objective = Objective(rawValue: o.rawValue) else {
                throw RPCStatus(.invalidArgument, "risk_profile.objectives[\(k)]: unknown objective \(o.rawValue)")
            }
            objectives.append(objective)
        }
        guard let capacity = CapacityForLoss(rawValue: r.capacityForLoss.rawValue) else {
            throw RPCStatus(.invalidArgument,
                            "risk_profile.capacity_for_loss: unknown value \(r.capacityForLoss.rawValue)")
        }
        let profile = RiskProfile(riskTolerance: Int(r.riskTolerance), capacityForLoss: capacity,
                                  horizonYears: Int(r.horizonYears),
                                  knowledge: try knowledge(r.knowledge, "risk_profile.knowledge"),
                                  objectives: objectives)
        let m = request.mandate
        var sectorCaps: [String: Double] = [:]
        for (k, cap) in m.sectorCaps.enumerated() {
            guard sectorCaps.updateValue(cap.weight, forKey: cap.id) == nil else {
                throw RPCStatus(.invalidArgument, "mandate.sector_caps[\(k)]: sector '\(cap.id)' is capped twice")
            }
        }
        var classCaps: [AssetClass: Double] = [:]
        for (k, cap) in m.assetClassCaps.enumerated() {
            guard let c = assetClassNames[cap.id] else {
                throw RPCStatus(.invalidArgument, "mandate.asset_class_caps[\(k)]: unknown asset class '\(cap.id)' "
                    + "(expected a keel.v1.AssetClass name such as ASSET_CLASS_EQUITY)")
            }
            guard classCaps.updateValue(cap.weight, forKey: c) == nil else {
                throw RPCStatus(.invalidArgument, "mandate.asset_class_caps[\(k)]: '\(cap.id)' is capped twice")
            }
        }
        let mandate = Mandate(
            strategicWeights: m.strategicWeights.map { (id: $0.id, weight: $0.weight) },
            maxInstrumentWeight: m.maxInstrumentWeight > 0 ? m.maxInstrumentWeight : nil,
            sectorCaps: sectorCaps, assetClassCaps: classCaps, excludedInstruments: Set(m.excludedInstruments),
            esgFloor: m.esgFloor, minCashWeight: m.minCashWeight,
            maxTurnover: m.maxTurnover > 0 ? m.maxTurnover : nil, minTradeNotional: m.minTradeNotional,
            commissionBps: m.commissionBps, commissionMin: m.commissionMin, allowFractional: m.allowFractional)
        let marketTime = request.asOfUnixNanos > 0 ? request.asOfUnixNanos : newest
        return (RebalanceInput(portfolio: portfolio, instruments: instruments, profile: profile, mandate: mandate),
                marketTime)
    }

    static func reason(_ code: ReasonCode) -> Keel_V1_ReasonCode {
        switch code {
        case .drift: .drift
        case .policySignal: .policySignal
        case .riskLimit: .riskLimit
        case .suitability: .suitability
        case .cap: .cap
        case .esgExclusion: .esgExclusion
        case .cashTarget: .cashTarget
        case .tax: .tax
        case .exclusion: .exclusion
        case .liquidity: .liquidity
        case .washSaleBlock: .washSaleBlock
        }
    }

    static func figures(_ f: RiskFigures) -> Keel_V1_RiskFigures {
        var out = Keel_V1_RiskFigures()
        out.volatility = f.volatility
        out.trackingError = f.trackingError
        out.concentration = f.concentration
        out.maxVolatility = f.maxVolatility.isFinite ? f.maxVolatility : 0
        return out
    }

    /// The response for a decision (without ids, model, status or audit hash).
    public static func response(_ d: RebalanceDecision) -> Keel_V1_RebalanceResponse {
        var r = Keel_V1_RebalanceResponse()
        r.targets = d.targets.map { t in
            var out = Keel_V1_TargetWeight()
            out.instrumentID = t.instrumentID
            out.currentWeight = t.currentWeight
            out.strategicWeight = t.strategicWeight
            out.targetWeight = t.targetWeight
            out.policyScore = t.policyScore
            return out
        }
        r.orders = d.orders.map { o in
            var out = Keel_V1_Order()
            out.instrumentID = o.instrumentID
            out.side = o.side == .buy ? .buy : .sell
            out.quantity = o.quantity
            out.estimatedPrice = o.price
            out.notional = o.notional
            out.estimatedCost = o.estimatedCost
            out.expectedBenefit = o.expectedBenefit
            out.reasons = o.reasons.map(reason)
            out.topFeatures = o.topFeatures.map { f in
                var c = Keel_V1_FeatureContribution()
                c.feature = f.feature
                c.value = f.value
                c.contribution = f.contribution
                return c
            }
            out.explanation = o.explanation
            out.required = o.required
            out.lotIds = o.lotIDs
            return out
        }
        var compliance = Keel_V1_ComplianceReport()
        compliance.compliant = d.compliance.compliant
        compliance.checks = d.compliance.checks.map { c in
            var out = Keel_V1_ComplianceCheck()
            out.rule = c.rule
            out.passed = c.passed
            out.detail = c.detail
            return out
        }
        compliance.conflicts = d.compliance.conflicts
        r.compliance = compliance
        r.summary = d.summary
        r.riskBefore = figures(d.riskBefore)
        r.riskAfter = figures(d.riskAfter)
        r.turnover = d.turnover
        r.cashWeightBefore = d.cashWeightBefore
        r.cashWeightAfter = d.cashWeightAfter
        r.totalEstimatedCost = d.totalEstimatedCost
        r.totalValue = d.totalValue
        r.note = d.notes.joined(separator: "; ")
        switch d.status {
        case .executable: r.status = .executable
        case .noTrade: r.status = .noTrade
        case .infeasible: r.status = .infeasible
        }
        return r
    }

    /// Cash plus holdings at the input's prices.
    public static func totalValue(_ input: RebalanceInput) -> Double {
        var price: [String: Double] = [:]
        for instrument in input.instruments { price[instrument.id] = instrument.price }
        var value = input.portfolio.cash
        for h in input.portfolio.holdings { value += h.quantity * (price[h.instrumentID] ?? 0) }
        return value
    }
}
