/// A validated input in index form: every array has one entry per
/// instrument of the request, in its order.
struct Prepared {
    /// Instruments one decision may cover.
    static let maxInstruments = 20_000

    let input: RebalanceInput
    let n: Int
    let ids: [String]
    let prices: [Double]
    /// Held quantity per instrument.
    let quantity: [Double]
    /// Portfolio value: cash plus holdings at current prices.
    let value: Double
    let w0: [Double]
    let cash0: Double
    let strategic: [Double]
    /// Σ strategic (after scaling to leave the minimum cash).
    let investedTarget: Double
    /// Daily log returns of each series (computed once for features and risk).
    let returns: [[Double]]
    let stats: [FeatureSet.SeriesStats]
    let defaultVolatility: [Double]
    let lot: [Double]
    var notes: [String]

    init(_ input: RebalanceInput) throws(EngineError) {
        func bad(_ message: String) -> EngineError { EngineError(.invalidInput, message) }
        self.input = input
        let instruments = input.instruments
        n = instruments.count
        guard n > 0 else { throw bad("the request has no instruments") }
        guard n <= Self.maxInstruments else {
            throw bad("the request has \(n) instruments; at most \(Self.maxInstruments) are allowed")
        }
        var index: [String: Int] = [:]
        index.reserveCapacity(n)
        var returns: [[Double]] = []
        var stats: [FeatureSet.SeriesStats] = []
        returns.reserveCapacity(n)
        stats.reserveCapacity(n)
        var lots = [Double](repeating: 1, count: n)
        var ids: [String] = [], prices: [Double] = [], defaultVolatility: [Double] = []
        ids.reserveCapacity(n)
        prices.reserveCapacity(n)
        defaultVolatility.reserveCapacity(n)
        let allowFractional = input.mandate.allowFractional
        // Indexed access: iterating the instruments would copy each one (and
        // retain its strings and arrays) on the engine's hot path.
        for i in 0..<n {
            let id = instruments[i].id, price = instruments[i].price
            guard !id.isEmpty else { throw bad("instrument \(i) has an empty id") }
            guard index.updateValue(i, forKey: id) == nil else { throw bad("instrument '\(id)' is listed twice") }
            guard Instrument.isValidPrice(price) else {
                throw bad("instrument '\(id)': price \(price) is not \(Instrument.validPricesText)")
            }
            let lotSize = instruments[i].lotSize
            guard lotSize.isFinite, lotSize >= 0 else {
                throw bad("instrument '\(id)': lot_size \(lotSize) is not a finite number >= 0")
            }
            if let score = instruments[i].esgScore, !(score.isFinite && score >= 0 && score <= 100) {
                throw bad("instrument '\(id)': esg_score \(score) is outside 0...100")
            }
            let halfSpread = instruments[i].halfSpreadBps
            guard halfSpread.isFinite, halfSpread >= 0 else {
                throw bad("instrument '\(id)': half_spread_bps \(halfSpread) is not a finite number >= 0")
            }
            let volume = instruments[i].averageDailyVolume
            guard volume.isFinite, volume >= 0 else {
                throw bad("instrument '\(id)': average_daily_volume \(volume) is not a finite number >= 0")
            }
            if let given = instruments[i].series {
                guard given.pricesAreValid else {
                    throw bad("instrument '\(id)': its analysed series holds a price that is not "
                        + Instrument.validPricesText)
                }
                guard given.prices.last == price else {
                    throw bad("instrument '\(id)': its analysed series does not end at its price \(price)")
                }
                returns.append(given.returns)
                stats.append(given.stats)
            } else {
                let history = instruments[i].priceHistory
                if let bad = history.firstIndex(where: { !Instrument.isValidPrice($0) }) {
                    throw EngineError(.invalidInput, "instrument '\(id)': price_history[\(bad)] = "
                        + "\(history[bad]) is not \(Instrument.validPricesText)")
                }
                let s = FeatureSet.series(of: instruments[i])
                let r = FeatureSet.logReturns(s)
                returns.append(r)
                stats.append(FeatureSet.stats(s, returns: r))
            }
            lots[i] = allowFractional ? 0 : (lotSize > 0 ? lotSize : 1)
            ids.append(id)
            prices.append(price)
            defaultVolatility.append(instruments[i].assetClass.defaultVolatility)
        }
        self.ids = ids
        self.prices = prices
        self.returns = returns
        self.stats = stats
        lot = lots
        self.defaultVolatility = defaultVolatility

        let portfolio = input.portfolio
        guard portfolio.cash.isFinite, portfolio.cash >= 0 else {
            throw bad("portfolio cash \(portfolio.cash) is not a finite number >= 0")
        }
        var quantity = [Double](repeating: 0, count: n)
        let holdings = portfolio.holdings
        for k in holdings.indices {
            let id = holdings[k].instrumentID, held = holdings[k].quantity
            guard let i = index[id] else {
                throw bad("holding \(k): instrument '\(id)' is not among the request's instruments "
                    + "(every held instrument needs its price)")
            }
            guard held.isFinite, held >= 0 else {
                throw bad("holding '\(id)': quantity \(held) is not a finite number >= 0")
            }
            quantity[i] += held
        }
        self.quantity = quantity
        var value = portfolio.cash
        for i in 0..<n { value += quantity[i] * prices[i] }
        guard value.isFinite, value > 0 else {
            throw bad("the portfolio's value (cash plus holdings at current prices) is \(value); it must be > 0")
        }
        self.value = value
        w0 = (0..<n).map { quantity[$0] * prices[$0] / value }
        cash0 = portfolio.cash / value

        let mandate = input.mandate
        func fraction(_ v: Double, _ name: String) throws(EngineError) {
            guard v.isFinite, v >= 0, v <= 1 else { throw bad("mandate \(name) \(v) is not within 0...1") }
        }
        try fraction(mandate.minCashWeight, "min_cash_weight")
        if let cap = mandate.maxInstrumentWeight { try fraction(cap, "max_instrument_weight") }
        if let t = mandate.maxTurnover { try fraction(t, "max_turnover") }
        for (k, v) in mandate.sectorCaps.sorted(by: { $0.key < $1.key }) { try fraction(v, "sector cap '\(k)'") }
        for (k, v) in mandate.assetClassCaps.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            try fraction(v, "asset class cap '\(k.rawValue)'")
        }
        guard mandate.esgFloor.isFinite, mandate.esgFloor >= 0, mandate.esgFloor <= 100 else {
            throw bad("mandate esg_floor \(mandate.esgFloor) is not within 0...100")
        }
        for (value, name) in [(mandate.minTradeNotional, "min_trade_notional"), (mandate.commissionBps, "commission_bps"),
                              (mandate.commissionMin, "commission_min")]
        where !(value.isFinite && value >= 0) {
            throw bad("mandate \(name) \(value) is not a finite number >= 0")
        }
        let profile = input.profile
        guard (1...7).contains(profile.riskTolerance) else {
            throw bad("risk_profile.risk_tolerance \(profile.riskTolerance) is not on the SRI scale 1...7")
        }
        guard profile.horizonYears >= 0 else {
            throw bad("risk_profile.horizon_years \(profile.horizonYears) is negative")
        }

        var strategic = [Double](repeating: 0, count: n)
        var total = 0.0
        var seen = [Bool](repeating: false, count: n)
        for (k, entry) in mandate.strategicWeights.enumerated() {
            guard let i = index[entry.id] else {
                throw bad("strategic weight \(k): instrument '\(entry.id)' is not among the request's instruments")
            }
            guard !seen[i] else { throw bad("strategic weight for '\(entry.id)' is given twice") }
            seen[i] = true
            guard entry.weight.isFinite, entry.weight >= 0, entry.weight <= 1 else {
                throw bad("strategic weight of '\(entry.id)' is \(entry.weight); it must be within 0...1")
            }
            strategic[i] = entry.weight
            total += entry.weight
        }
        guard total <= 1 + 1e-9 else {
            throw bad("strategic weights sum to \(total); with cash they must sum to at most 1")
        }
        var notes: [String] = []
        let room = max(0, 1 - mandate.minCashWeight)
        if total > room {
            let k = room / total
            for i in 0..<n { strategic[i] *= k }
            notes.append("strategic weights (sum \(pct(total))) scaled to \(pct(room)) to leave the minimum cash")
            total = room
        }
        self.strategic = strategic
        investedTarget = total
        self.notes = notes
    }
}
