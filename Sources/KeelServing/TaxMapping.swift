import KeelAPI
import KeelInference
import KeelPortfolio
import Synchronization

/// `TaxContext`, tax lots and harvest proposals (API) ↔ the tax-loss
/// harvester (domain): validation that names the request field at fault,
/// the forecaster's score, and the memory of harvested instruments that
/// blocks their repurchase in `Rebalance` for 31 days (docs/TAX.md).
public enum TaxMapping {
    /// The day of the intended trades: `tax.trade_date`, or `today`.
    static func tradeDay(_ tax: Keel_V1_TaxContext, field: String, today: Int) throws(RPCStatus) -> Int {
        if tax.tradeDate.isEmpty { return today }
        guard let day = CivilDay.parse(tax.tradeDate), CivilDay.supported.contains(day) else {
            throw RPCStatus(.invalidArgument, "\(field).trade_date '\(tax.tradeDate)' is not a date of the form YYYY-MM-DD")
        }
        return day
    }

    /// Today in UTC as a ``CivilDay`` number.
    public static func today(unixNanos: Int64 = MarketState.nowUnixNanos()) -> Int {
        Int(unixNanos / 86_400_000_000_000)
    }

    /// The holdings' tax lots, validated: ids unique, quantities > 0 that
    /// add up to their holding's quantity, dates on or before `tradeDay`,
    /// costs ≥ 0, and every holding's instrument among `known`.
    static func lots(_ portfolio: Keel_V1_Portfolio, tradeDay: Int, known: Set<String>) throws(RPCStatus) -> [TaxLot] {
        func bad(_ message: String) -> RPCStatus { RPCStatus(.invalidArgument, message) }
        let count = portfolio.holdings.reduce(0) { $0 + $1.lots.count }
        var lots: [TaxLot] = []
        lots.reserveCapacity(count)
        // Field names are built only for an error message: this runs for
        // every lot of every Rebalance.
        var seen: [String: (holding: Int, lot: Int)] = [:]
        seen.reserveCapacity(count)
        func holdingField(_ h: Int) -> String { "portfolio.holdings[\(h)]" }
        func lotField(_ h: Int, _ k: Int) -> String { "\(holdingField(h)).lots[\(k)]" }
        for h in portfolio.holdings.indices {
            let holding = portfolio.holdings[h]
            guard known.contains(holding.instrumentID) else {
                throw bad("\(holdingField(h)).instrument_id '\(holding.instrumentID)' is not among the request's instruments")
            }
            guard holding.quantity.isFinite, holding.quantity >= 0 else {
                throw bad("\(holdingField(h)).quantity \(holding.quantity) is not a finite number >= 0")
            }
            guard !holding.lots.isEmpty else { continue }
            var total = 0.0
            for (k, lot) in holding.lots.enumerated() {
                guard !lot.lotID.isEmpty else { throw bad("\(lotField(h, k)).lot_id is empty") }
                if let first = seen.updateValue((h, k), forKey: lot.lotID) {
                    throw bad("\(lotField(h, k)).lot_id '\(lot.lotID)' is also the id of \(lotField(first.holding, first.lot))")
                }
                guard lot.quantity.isFinite, lot.quantity > 0 else {
                    throw bad("\(lotField(h, k)).quantity \(lot.quantity) is not a finite number > 0")
                }
                guard lot.costPerShare.isFinite, lot.costPerShare >= 0 else {
                    throw bad("\(lotField(h, k)).cost_per_share \(lot.costPerShare) is not a finite number >= 0")
                }
                guard let day = CivilDay.parse(lot.acquiredOn), CivilDay.supported.contains(day) else {
                    throw bad("\(lotField(h, k)).acquired_on '\(lot.acquiredOn)' is not a date of the form YYYY-MM-DD")
                }
                guard day <= tradeDay else {
                    throw bad("\(lotField(h, k)).acquired_on \(lot.acquiredOn) is after the trade date "
                        + "\(CivilDay.iso(tradeDay))")
                }
                total += lot.quantity
                lots.append(TaxLot(id: lot.lotID, instrumentID: holding.instrumentID, quantity: lot.quantity,
                                   acquiredDay: day, costPerShare: lot.costPerShare))
            }
            guard abs(total - holding.quantity) <= 1e-9 * max(1, holding.quantity) else {
                let f = holdingField(h)
                throw bad("\(f).lots add up to \(total) shares but \(f).quantity is \(holding.quantity)")
            }
        }
        return lots
    }

    /// The harvesting rules of a request: rates, household trades, lot
    /// selection, identical groups and replacements from the instruments.
    static func rules(_ tax: Keel_V1_TaxContext, field: String, tradeDay: Int, instruments: [Keel_V1_Instrument],
                      lots: [TaxLot]) throws(RPCStatus) -> TaxRules
    {
        func bad(_ message: String) -> RPCStatus { RPCStatus(.invalidArgument, message) }
        for (name, rate) in [("short_term_rate", tax.shortTermRate), ("long_term_rate", tax.longTermRate)]
            where !(rate >= 0 && rate <= 1)
        {
            throw bad("\(field).\(name) \(rate) is not in 0...1")
        }
        guard tax.minHarvest.isFinite, tax.minHarvest >= 0 else {
            throw bad("\(field).min_harvest \(tax.minHarvest) is not a finite number >= 0")
        }
        let selection: LotSelection
        switch tax.lotSelection {
        case .unspecified, .hifo: selection = .hifo
        case .fifo: selection = .fifo
        case .specific:
            let ids = Set(lots.map(\.id))
            for (k, id) in tax.specificLotIds.enumerated() where !ids.contains(id) {
                throw bad("\(field).specific_lot_ids[\(k)] '\(id)' is not one of the portfolio's tax lots")
            }
            guard !tax.specificLotIds.isEmpty else {
                throw bad("\(field).specific_lot_ids is empty but lot_selection is LOT_SELECTION_SPECIFIC")
            }
            selection = .specific(tax.specificLotIds)
        case .UNRECOGNIZED(let raw): throw bad("\(field).lot_selection: unknown value \(raw)")
        }
        if case .specific = selection {} else if !tax.specificLotIds.isEmpty {
            throw bad("\(field).specific_lot_ids is set but lot_selection is not LOT_SELECTION_SPECIFIC")
        }
        var trades: [RecentTrade] = []
        for (k, t) in tax.recentTrades.enumerated() {
            let g = "\(field).recent_trades[\(k)]"
            guard !t.instrumentID.isEmpty else { throw bad("\(g).instrument_id is empty") }
            let side: KeelPortfolio.Side
            switch t.side {
            case .buy: side = .buy
            case .sell: side = .sell
            case .unspecified: throw bad("\(g).side is unset (SIDE_BUY or SIDE_SELL)")
            case .UNRECOGNIZED(let raw): throw bad("\(g).side: unknown value \(raw)")
            }
            guard t.quantity.isFinite, t.quantity > 0 else {
                throw bad("\(g).quantity \(t.quantity) is not a finite number > 0")
            }
            guard let day = CivilDay.parse(t.tradeDate), CivilDay.supported.contains(day) else {
                throw bad("\(g).trade_date '\(t.tradeDate)' is not a date of the form YYYY-MM-DD")
            }
            guard day <= tradeDay else {
                throw bad("\(g).trade_date \(t.tradeDate) is after the trade date \(CivilDay.iso(tradeDay))")
            }
            if k > 0, let previous = CivilDay.parse(tax.recentTrades[k - 1].tradeDate), day < previous {
                throw bad("\(g).trade_date \(t.tradeDate) comes before the previous trade's "
                    + "\(tax.recentTrades[k - 1].tradeDate) (trades must be oldest first)")
            }
            // Older trades cannot make a wash sale.
            if day >= tradeDay - 30 {
                trades.append(RecentTrade(instrumentID: t.instrumentID, day: day, side: side, quantity: t.quantity,
                                          accountID: t.accountID))
            }
        }
        return TaxRules(shortTermRate: tax.shortTermRate, longTermRate: tax.longTermRate,
                        identicalGroups: identicalGroups(instruments), replacements: replacements(instruments),
                        minHarvest: tax.minHarvest, lotSelection: selection, tradeDay: tradeDay, recentTrades: trades)
    }

    /// Instruments that share a `substantially_identical_group`.
    static func identicalGroups(_ instruments: [Keel_V1_Instrument]) -> [[String]] {
        var groups: [String: [String]] = [:]
        for m in instruments where !m.substantiallyIdenticalGroup.isEmpty {
            groups[m.substantiallyIdenticalGroup, default: []].append(m.id)
        }
        return groups.keys.sorted().map { groups[$0]! }
    }

    /// Replacement candidates per instrument, in order of preference:
    /// `replacement_for_tax`, then `replacement_candidates`.
    static func replacements(_ instruments: [Keel_V1_Instrument]) -> [String: [String]] {
        var out: [String: [String]] = [:]
        for m in instruments where !m.replacementForTax.isEmpty || !m.replacementCandidates.isEmpty {
            var list: [String] = []
            if !m.replacementForTax.isEmpty { list.append(m.replacementForTax) }
            for id in m.replacementCandidates where !id.isEmpty && !list.contains(id) { list.append(id) }
            if !list.isEmpty { out[m.id] = list }
        }
        return out
    }

    /// Checks that every replacement names an instrument of the request
    /// other than itself; `ids` are the instruments' ids.
    static func checkReplacements(_ instruments: [Keel_V1_Instrument], ids: Set<String>) throws(RPCStatus) {
        guard instruments.contains(where: { !$0.replacementForTax.isEmpty || !$0.replacementCandidates.isEmpty }) else {
            return
        }
        // Fields are read in place (binding each message would copy it).
        for k in instruments.indices {
            func check(_ id: String, _ field: @autoclosure () -> String) throws(RPCStatus) {
                guard ids.contains(id) else {
                    throw RPCStatus(.invalidArgument, "instruments[\(k)].\(field()) '\(id)' is not among the request's instruments")
                }
                guard id != instruments[k].id else {
                    throw RPCStatus(.invalidArgument, "instruments[\(k)].\(field()) names the instrument itself")
                }
            }
            if !instruments[k].replacementForTax.isEmpty {
                try check(instruments[k].replacementForTax, "replacement_for_tax")
            }
            let candidates = instruments[k].replacementCandidates
            for j in candidates.indices { try check(candidates[j], "replacement_candidates[\(j)]") }
        }
    }

    // MARK: - The forecaster

    /// Median log return over the next 21 trading days per instrument, from
    /// the tax-loss model, for the instruments with enough price history.
    static func forecasts(_ histories: [String: [Double]], model: LoadedModel) throws(RPCStatus) -> [String: Double] {
        var ids: [String] = []
        var rows: [Float] = []
        for id in histories.keys.sorted() {
            let closes = histories[id]!
            if TaxLossFeatures.appendRow(prices: closes, end: closes.count - 1, to: &rows) { ids.append(id) }
        }
        guard !ids.isEmpty else { return [:] }
        let outputs: [Tensor]
        do {
            outputs = try model.withSession { session in try session.run(features: rows, rows: ids.count) }
        } catch {
            throw RPCStatus(.internal, "model '\(model.name)' v\(model.version) failed: \(error)")
        }
        guard let t = outputs.first, t.shape.first == ids.count, t.values.count % ids.count == 0 else {
            throw RPCStatus(.internal, "model '\(model.name)' v\(model.version) returned \(outputs.first?.shape ?? []); "
                + "a tax_loss model returns one forecast per row")
        }
        let width = t.values.count / ids.count
        var out: [String: Double] = [:]
        for (r, id) in ids.enumerated() where t.values[r * width].isFinite { out[id] = Double(t.values[r * width]) }
        return out
    }

    /// The score of harvesting now: the tax saving as a share of the
    /// proceeds, plus the forecast return of what the proceeds buy (the
    /// replacement, or cash at 0) minus that of the instrument sold. Below 0,
    /// waiting is expected to be better. nil without a forecast.
    static func score(_ p: HarvestProposal, price: Double, forecasts: [String: Double]) -> Double? {
        guard let sold = forecasts[p.instrumentID] else { return nil }
        var bought = 0.0
        if let r = p.replacementID {
            guard let f = forecasts[r] else { return nil }
            bought = f
        }
        let proceeds = p.quantity * price
        guard proceeds > 0 else { return nil }
        return p.estimatedTaxSaving / proceeds + bought - sold
    }

    static func response(_ p: HarvestProposal) -> Keel_V1_HarvestProposal {
        var out = Keel_V1_HarvestProposal()
        out.instrumentID = p.instrumentID
        out.lotIds = p.lots.map(\.id)
        out.quantity = p.quantity
        out.realisedLoss = p.realisedLoss
        out.longTerm = p.longTerm
        out.estimatedTaxSaving = p.estimatedTaxSaving
        out.replacementInstrumentID = p.replacementID ?? ""
        out.replacementQuantity = p.replacementQuantity
        out.washSaleWindowEnd = CivilDay.iso(p.washSaleWindowEnd)
        out.forecasterScore = p.score ?? 0
        out.reason = p.reason
        return out
    }
}

/// Instruments Keel harvested (or sold at a loss in a rebalance), per
/// household, so that `Rebalance` does not buy them back inside the
/// wash-sale window. In memory: a restart forgets it (docs/TAX.md).
public final class HarvestMemory: Sendable {
    private let state = Mutex<[String: [String: Int]]>([:])
    /// Set by the first record: until then `harvested` takes no lock (the
    /// Rebalance hot path of a server that never harvests).
    private let used = Atomic<Bool>(false)

    public init() {}

    /// Remembers that `household` sold `instruments` at a loss on `day`.
    public func record(household: String, instruments: [String], day: Int) {
        guard !household.isEmpty, !instruments.isEmpty else { return }
        used.store(true, ordering: .releasing)
        state.withLock { s in
            var entry = s[household] ?? [:]
            for id in instruments where (entry[id] ?? Int.min) < day { entry[id] = day }
            // Forget windows that closed before this day.
            entry = entry.filter { day - $0.value <= 30 }
            s[household] = entry
            if s.count > 100_000 {
                s = s.filter { $0.value.values.contains { day - $0 <= 30 } }
            }
        }
    }

    /// The household's instruments in their window on `day` (harvest day
    /// through harvest day + 30), with their harvest days.
    public func harvested(household: String, day: Int) -> [(instrumentID: String, day: Int)] {
        guard !household.isEmpty, used.load(ordering: .acquiring) else { return [] }
        return state.withLock { s in
            (s[household] ?? [:]).filter { day >= $0.value && day - $0.value <= 30 }
                .map { (instrumentID: $0.key, day: $0.value) }
                .sorted { $0.instrumentID < $1.instrumentID }
        }
    }
}
