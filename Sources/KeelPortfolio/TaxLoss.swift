#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// Tax-loss harvesting under United States rules: sell lots standing at a
// loss to realise it, without creating a wash sale (IRC §1091: no purchase of
// a substantially identical security within 30 days before or after the
// sale, in any account of the household), and buy a replacement that is not
// substantially identical so that the money stays invested.
//
// Days are ``CivilDay`` numbers (days since 1970-01-01).

/// One purchase of an instrument still held.
public struct TaxLot: Sendable, Equatable {
    public var id: String
    public var instrumentID: String
    /// Shares, > 0.
    public var quantity: Double
    /// The day of purchase (``CivilDay`` number), on or before the trade day.
    public var acquiredDay: Int
    /// ≥ 0.
    public var costPerShare: Double

    public init(id: String, instrumentID: String, quantity: Double, acquiredDay: Int, costPerShare: Double) {
        self.id = id
        self.instrumentID = instrumentID
        self.quantity = quantity
        self.acquiredDay = acquiredDay
        self.costPerShare = costPerShare
    }
}

/// A trade in any account of the household within the 30 days up to the
/// trade day.
public struct RecentTrade: Sendable, Equatable {
    public var instrumentID: String
    public var day: Int
    public var side: Side
    /// > 0.
    public var quantity: Double
    public var accountID: String

    public init(instrumentID: String, day: Int, side: Side, quantity: Double, accountID: String) {
        self.instrumentID = instrumentID
        self.day = day
        self.side = side
        self.quantity = quantity
        self.accountID = accountID
    }
}

/// Which loss lots a harvest sells.
public enum LotSelection: Sendable, Equatable {
    /// Highest cost per share first: every lot at a loss.
    case hifo
    /// Oldest first, as the broker relieves lots under FIFO: the run of loss
    /// lots before the oldest lot that is not at a loss (selling past it
    /// would realise its gain first).
    case fifo
    /// Exactly these lots (those of them at a loss), in this order.
    case specific([String])
}

/// The tax situation and the harvesting policy.
public struct TaxRules: Sendable {
    /// Marginal rate on short-term gains, 0...1.
    public var shortTermRate: Double
    /// Rate on long-term gains, 0...1.
    public var longTermRate: Double
    /// Groups of substantially identical instruments (e.g. two S&P 500 funds).
    public var identicalGroups: [[String]]
    /// Replacement candidates per instrument, in order of preference.
    public var replacements: [String: [String]]
    /// The smallest total loss worth harvesting, ≥ 0.
    public var minHarvest: Double
    public var lotSelection: LotSelection
    /// The day of the intended trades.
    public var tradeDay: Int
    /// Household trades (all accounts) up to tradeDay; those more than 30
    /// days before it cannot make a wash sale and are ignored.
    public var recentTrades: [RecentTrade]

    public init(shortTermRate: Double, longTermRate: Double, identicalGroups: [[String]] = [],
                replacements: [String: [String]] = [:], minHarvest: Double = 0, lotSelection: LotSelection = .hifo,
                tradeDay: Int, recentTrades: [RecentTrade] = [])
    {
        self.shortTermRate = shortTermRate
        self.longTermRate = longTermRate
        self.identicalGroups = identicalGroups
        self.replacements = replacements
        self.minHarvest = minHarvest
        self.lotSelection = lotSelection
        self.tradeDay = tradeDay
        self.recentTrades = recentTrades
    }
}

/// One proposed harvest: sell `lots` of `instrumentID`, buy the replacement.
public struct HarvestProposal: Sendable, Equatable {
    public var instrumentID: String
    /// Lots sold, whole, in selection order.
    public var lots: [(id: String, quantity: Double)]
    /// Shares sold (the sum of `lots`).
    public var quantity: Double
    /// The loss realised, a positive amount: `shortTermLoss + longTermLoss`.
    public var realisedLoss: Double
    public var shortTermLoss: Double
    public var longTermLoss: Double
    /// True when all of the loss is long-term.
    public var longTerm: Bool
    /// shortTermLoss · shortTermRate + longTermLoss · longTermRate.
    public var estimatedTaxSaving: Double
    public var replacementID: String?
    /// Whole shares of the replacement the proceeds buy; 0 without one.
    public var replacementQuantity: Double
    /// The last day of the wash-sale window (tradeDay + 30): the instrument,
    /// or one substantially identical, may be bought again from the next day.
    public var washSaleWindowEnd: Int
    /// The forecaster's estimate that harvesting now beats waiting; nil
    /// without a model.
    public var score: Double?
    /// One sentence for the client and the advisor.
    public var reason: String

    public init(instrumentID: String, lots: [(id: String, quantity: Double)], quantity: Double, realisedLoss: Double,
                shortTermLoss: Double, longTermLoss: Double, longTerm: Bool, estimatedTaxSaving: Double,
                replacementID: String?, replacementQuantity: Double, washSaleWindowEnd: Int, score: Double?,
                reason: String)
    {
        self.instrumentID = instrumentID
        self.lots = lots
        self.quantity = quantity
        self.realisedLoss = realisedLoss
        self.shortTermLoss = shortTermLoss
        self.longTermLoss = longTermLoss
        self.longTerm = longTerm
        self.estimatedTaxSaving = estimatedTaxSaving
        self.replacementID = replacementID
        self.replacementQuantity = replacementQuantity
        self.washSaleWindowEnd = washSaleWindowEnd
        self.score = score
        self.reason = reason
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.instrumentID == b.instrumentID
            && a.lots.count == b.lots.count
            && zip(a.lots, b.lots).allSatisfy { $0.id == $1.id && $0.quantity == $1.quantity }
            && a.quantity == b.quantity && a.realisedLoss == b.realisedLoss
            && a.shortTermLoss == b.shortTermLoss && a.longTermLoss == b.longTermLoss && a.longTerm == b.longTerm
            && a.estimatedTaxSaving == b.estimatedTaxSaving && a.replacementID == b.replacementID
            && a.replacementQuantity == b.replacementQuantity && a.washSaleWindowEnd == b.washSaleWindowEnd
            && a.score == b.score && a.reason == b.reason
    }
}

/// Why harvesting could not be proposed; `message` names the field (and
/// index) at fault.
public struct TaxLossError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable { case invalidInput }
    public let code: Code
    public let message: String
    public init(_ code: Code, _ message: String) { self.code = code; self.message = message }
    public var description: String { message }
}

public enum TaxLossHarvester {
    /// Harvest proposals, largest estimated tax saving first (ties by
    /// instrument id), and one sentence per instrument at a loss that is not
    /// harvested, by instrument id.
    ///
    /// - Parameters:
    ///   - prices: current price per instrument (every lot's instrument and
    ///     any replacement to be bought must have one).
    ///   - score: the forecaster's estimate that harvesting now beats waiting
    ///     (nil = no model; non-finite values count as nil); proposals with a
    ///     score < 0 are skipped with a reason.
    /// - Throws: ``TaxLossError`` (`invalidInput`) before anything is
    ///   proposed when any input is invalid.
    public static func propose(lots: [TaxLot], prices: [String: Double], rules: TaxRules,
                               score: (String) -> Double? = { _ in nil }) throws(TaxLossError)
        -> (proposals: [HarvestProposal], skipped: [String])
    {
        try validate(lots: lots, prices: prices, rules: rules)
        let identical = IdenticalSets(rules.identicalGroups)
        let tradeDay = rules.tradeDay
        let latestBuys = LatestBuys(rules.recentTrades, identical: identical, from: tradeDay - 30, through: tradeDay)
        var skipped: [String] = []

        // Lots per instrument, in input order; instruments in id order.
        var byInstrument: [String: [TaxLot]] = [:]
        for lot in lots { byInstrument[lot.instrumentID, default: []].append(lot) }
        var specificOrder: [String: Int] = [:]
        if case .specific(let ids) = rules.lotSelection {
            for (k, id) in ids.enumerated() where specificOrder[id] == nil { specificOrder[id] = k }
        }

        struct Selected { var instrumentID: String; var lots: [TaxLot]; var price: Double; var score: Double? }
        var selected: [Selected] = []
        for instrumentID in byInstrument.keys.sorted() {
            let held = byInstrument[instrumentID]!
            let price = prices[instrumentID]!
            guard held.contains(where: { $0.costPerShare > price }) else { continue }
            let name = "Not harvesting \(instrumentID)"

            // 1. The lots the selection rule sells.
            var sell: [TaxLot]
            switch rules.lotSelection {
            case .hifo:
                sell = held.filter { $0.costPerShare > price }.sorted(by: hifoOrder)
            case .fifo:
                let oldestFirst = held.sorted(by: fifoOrder)
                sell = Array(oldestFirst.prefix { $0.costPerShare > price })
                if sell.isEmpty {
                    let first = oldestFirst[0]
                    skipped.append("\(name): under FIFO its oldest lot \(first.id) would be sold first, and it stands at a gain of \(money(price - first.costPerShare)) per share.")
                    continue
                }
            case .specific:
                let named = held.filter { specificOrder[$0.id] != nil }
                    .sorted { specificOrder[$0.id]! < specificOrder[$1.id]! }
                sell = named.filter { $0.costPerShare > price }
                if named.isEmpty {
                    skipped.append("\(name): none of its lots is among the specific lots to sell.")
                    continue
                }
                if sell.isEmpty {
                    skipped.append("\(name): none of the specific lots \(list(named.map(\.id))) stands at a loss.")
                    continue
                }
            }

            // 2. No wash sale: no substantially identical purchase in the
            // household within the 30 days before (or on) the trade day.
            if let buy = latestBuys.latest(identicalTo: instrumentID) {
                let what = buy.instrumentID == instrumentID
                    ? "\(instrumentID) was bought"
                    : "\(buy.instrumentID), substantially identical to it, was bought"
                skipped.append("\(name): \(what) on \(CivilDay.iso(buy.day)) in account \(buy.accountID), so a sale at a loss before \(CivilDay.iso(buy.day + 31)) would be a wash sale.")
                continue
            }

            // 3. Worth it.
            let loss = sell.reduce(0.0) { $0 + ($1.costPerShare - price) * $1.quantity }
            if loss < rules.minHarvest {
                skipped.append("\(name): the loss of \(money(loss)) is below the minimum harvest of \(money(rules.minHarvest)).")
                continue
            }

            // 4. The forecaster.
            var s = score(instrumentID)
            if let v = s, !v.isFinite { s = nil }
            if let v = s, v < 0 {
                skipped.append("\(name): the forecaster's score \(number(v)) says waiting is better than harvesting now.")
                continue
            }
            selected.append(Selected(instrumentID: instrumentID, lots: sell, price: price, score: s))
        }

        // Replacements may not be substantially identical to anything sold
        // at a loss today (that purchase would be a wash sale).
        let harvested = Set(selected.map(\.instrumentID))
        // The first harvested instrument (by id) of each group.
        var harvestedInGroup: [Int: String] = [:]
        for id in harvested.sorted() {
            for g in identical.groups(of: id) where harvestedInGroup[g] == nil { harvestedInGroup[g] = id }
        }
        var proposals: [HarvestProposal] = []
        proposals.reserveCapacity(selected.count)
        for item in selected {
            let id = item.instrumentID, price = item.price
            var st = 0.0, lt = 0.0, quantity = 0.0
            for lot in item.lots {
                let loss = (lot.costPerShare - price) * lot.quantity
                if isLongTerm(acquiredDay: lot.acquiredDay, soldDay: tradeDay) { lt += loss } else { st += loss }
                quantity += lot.quantity
            }
            let saving = st * rules.shortTermRate + lt * rules.longTermRate
            let proceeds = quantity * price

            // The first usable candidate.
            var replacement: (id: String, quantity: Double)?
            var refusals: [String] = []
            let candidates = rules.replacements[id] ?? []
            for candidate in candidates {
                guard let p = prices[candidate] else { refusals.append("\(candidate) has no price"); continue }
                if identical.same(id, candidate) {
                    refusals.append("\(candidate) is substantially identical to \(id)"); continue
                }
                let other = harvested.contains(candidate)
                    ? candidate : identical.groups(of: candidate).compactMap { harvestedInGroup[$0] }.min()
                if let other {
                    refusals.append(other == candidate
                        ? "\(candidate) is itself being sold at a loss"
                        : "\(candidate) is substantially identical to \(other), which is being sold at a loss")
                    continue
                }
                let shares = wholeShares(proceeds / p)
                if shares < 1 { refusals.append("one share of \(candidate) costs more than the proceeds"); continue }
                replacement = (candidate, shares)
                break
            }

            var text = "Sell \(shares(quantity)) of \(id) in \(item.lots.count == 1 ? "lot" : "lots") \(list(item.lots.map(\.id))) to realise a \(money(st + lt)) loss ("
            if st > 0 && lt > 0 {
                text += "\(money(st)) short-term, \(money(lt)) long-term"
            } else {
                text += lt > 0 ? "all long-term" : "all short-term"
            }
            text += "), saving about \(money(saving)) in tax; "
            if let r = replacement {
                text += "buy \(shares(r.quantity)) of \(r.id) to stay invested; "
            } else if candidates.isEmpty {
                text += "no replacement is listed for \(id), so the proceeds stay in cash; "
            } else {
                text += "no replacement is usable (\(refusals.joined(separator: "; "))), so the proceeds stay in cash; "
            }
            text += "\(id) may be bought again from \(CivilDay.iso(tradeDay + 31))."

            proposals.append(HarvestProposal(
                instrumentID: id, lots: item.lots.map { ($0.id, $0.quantity) }, quantity: quantity,
                realisedLoss: st + lt, shortTermLoss: st, longTermLoss: lt, longTerm: st == 0,
                estimatedTaxSaving: saving, replacementID: replacement?.id, replacementQuantity: replacement?.quantity ?? 0,
                washSaleWindowEnd: tradeDay + 30, score: item.score, reason: text))
        }
        proposals.sort {
            $0.estimatedTaxSaving != $1.estimatedTaxSaving
                ? $0.estimatedTaxSaving > $1.estimatedTaxSaving : $0.instrumentID < $1.instrumentID
        }
        return (proposals, skipped)
    }

    /// Instruments that may not be bought on `day` because Keel harvested a
    /// substantially identical one within the last 31 days (harvest day
    /// through harvest day + 30; buying is allowed again from harvest day + 31).
    public static func blockedPurchases(harvested: [(instrumentID: String, day: Int)], rules: TaxRules,
                                        day: Int) -> Set<String>
    {
        Set(blockedPurchaseDays(harvested: harvested, rules: rules, day: day).keys)
    }

    /// ``blockedPurchases(harvested:rules:day:)`` with, for each blocked
    /// instrument, the latest harvest day that blocks it.
    public static func blockedPurchaseDays(harvested: [(instrumentID: String, day: Int)], rules: TaxRules,
                                           day: Int) -> [String: Int]
    {
        let identical = IdenticalSets(rules.identicalGroups)
        var out: [String: Int] = [:]
        var expanded: Set<Int> = []
        // Latest harvest first, so that each group is expanded once, with its latest day.
        for h in harvested.filter({ day >= $0.day && day - $0.day <= 30 }).sorted(by: { $0.day > $1.day }) {
            if out[h.instrumentID] == nil { out[h.instrumentID] = h.day }
            for g in identical.groups(of: h.instrumentID) where expanded.insert(g).inserted {
                for id in identical.members(of: g) where out[id] == nil { out[id] = h.day }
            }
        }
        return out
    }

    /// Lots to sell for `quantity` of an instrument in a rebalance: loss lots
    /// first (largest loss per share first), then lots at cost, then gains,
    /// long-term lots before short-term lots, smallest gain per share first
    /// within each, so that Keel avoids realising short-term gains when a
    /// long-term lot would do. Whole lots, the last one partly; all of the
    /// lots when `quantity` exceeds them; none when `quantity` ≤ 0.
    public static func lotsToSell(_ lots: [TaxLot], instrumentID: String, quantity: Double, price: Double,
                                  tradeDay: Int) -> [(id: String, quantity: Double)]
    {
        guard quantity > 0, quantity.isFinite else { return [] }
        func tier(_ lot: TaxLot) -> Int {
            if lot.costPerShare > price { return 0 }
            if lot.costPerShare == price { return 1 }
            return isLongTerm(acquiredDay: lot.acquiredDay, soldDay: tradeDay) ? 2 : 3
        }
        let ordered = lots.filter { $0.instrumentID == instrumentID && $0.quantity > 0 }
            .map { (lot: $0, tier: tier($0)) }
            .sorted { a, b in
                if a.tier != b.tier { return a.tier < b.tier }
                // Higher cost = larger loss or smaller gain per share.
                if a.lot.costPerShare != b.lot.costPerShare { return a.lot.costPerShare > b.lot.costPerShare }
                if a.lot.acquiredDay != b.lot.acquiredDay { return a.lot.acquiredDay < b.lot.acquiredDay }
                return a.lot.id < b.lot.id
            }
        var out: [(id: String, quantity: Double)] = []
        var remaining = quantity
        for (lot, _) in ordered {
            guard remaining > 1e-9 else { break }
            let q = lot.quantity <= remaining + 1e-9 ? lot.quantity : remaining
            out.append((lot.id, q))
            remaining -= q
        }
        return out
    }

    /// Held more than one year: sold after the anniversary of the purchase
    /// (the same calendar date a year later; Feb 29 → Feb 28, so a lot bought
    /// on 2024-02-29 is long-term when sold on or after 2025-03-01).
    public static func isLongTerm(acquiredDay: Int, soldDay: Int) -> Bool {
        let (y, m, d) = CivilDay.date(acquiredDay)
        let anniversary = CivilDay.dayNumber(year: y + 1, month: m, day: min(d, CivilDay.daysIn(year: y + 1, month: m)))
        return soldDay > anniversary
    }

    // MARK: - Validation

    static func validate(lots: [TaxLot], prices: [String: Double], rules: TaxRules) throws(TaxLossError) {
        func fail(_ message: String) -> TaxLossError { TaxLossError(.invalidInput, message) }
        let tradeDay = rules.tradeDay
        // Bounded days keep every ±31 and every date text in range.
        if !CivilDay.supported.contains(tradeDay) {
            throw fail("trade_day \(tradeDay) is outside the years 0001...9999")
        }
        for (field, rate) in [("short_term_rate", rules.shortTermRate), ("long_term_rate", rules.longTermRate)]
            where !(0...1).contains(rate)
        {
            throw fail("\(field) \(number(rate)) is not in 0...1")
        }
        if !rules.minHarvest.isFinite { throw fail("min_harvest \(number(rules.minHarvest)) is not a finite number") }
        if rules.minHarvest < 0 { throw fail("min_harvest \(number(rules.minHarvest)) is not >= 0") }
        for id in prices.keys.sorted() {
            let p = prices[id]!
            if !p.isFinite { throw fail("prices[\"\(id)\"] \(number(p)) is not a finite number") }
            if p <= 0 { throw fail("prices[\"\(id)\"] \(number(p)) is not > 0") }
        }
        var firstIndex: [String: Int] = [:]
        for (k, lot) in lots.enumerated() {
            let f = "tax_lots[\(k)]"
            if lot.id.isEmpty { throw fail("\(f).id is empty") }
            if let j = firstIndex[lot.id] { throw fail("\(f).id \"\(lot.id)\" duplicates tax_lots[\(j)].id") }
            firstIndex[lot.id] = k
            if prices[lot.instrumentID] == nil {
                throw fail("\(f).instrument_id \"\(lot.instrumentID)\" is unknown: it has no price")
            }
            if !lot.quantity.isFinite { throw fail("\(f).quantity \(number(lot.quantity)) is not a finite number") }
            if lot.quantity <= 0 { throw fail("\(f).quantity \(number(lot.quantity)) is not > 0") }
            if !lot.costPerShare.isFinite {
                throw fail("\(f).cost_per_share \(number(lot.costPerShare)) is not a finite number")
            }
            if lot.costPerShare < 0 { throw fail("\(f).cost_per_share \(number(lot.costPerShare)) is not >= 0") }
            if !CivilDay.supported.contains(lot.acquiredDay) {
                throw fail("\(f).acquired_day \(lot.acquiredDay) is outside the years 0001...9999")
            }
            if lot.acquiredDay > tradeDay {
                throw fail("\(f).acquired_day \(CivilDay.iso(lot.acquiredDay)) is after the trade day \(CivilDay.iso(tradeDay))")
            }
        }
        if case .specific(let ids) = rules.lotSelection {
            for (k, id) in ids.enumerated() where firstIndex[id] == nil {
                throw fail("specific_lot_ids[\(k)] \"\(id)\" is not one of the tax lots")
            }
        }
        for (k, t) in rules.recentTrades.enumerated() {
            let f = "recent_trades[\(k)]"
            if !t.quantity.isFinite { throw fail("\(f).quantity \(number(t.quantity)) is not a finite number") }
            if t.quantity <= 0 { throw fail("\(f).quantity \(number(t.quantity)) is not > 0") }
            if t.day > tradeDay {
                throw fail("\(f).day \(CivilDay.iso(t.day)) is after the trade day \(CivilDay.iso(tradeDay))")
            }
            if !CivilDay.supported.contains(t.day) {
                throw fail("\(f).day \(t.day) is outside the years 0001...9999")
            }
        }
    }

    // MARK: - Helpers

    static func hifoOrder(_ a: TaxLot, _ b: TaxLot) -> Bool {
        if a.costPerShare != b.costPerShare { return a.costPerShare > b.costPerShare }
        if a.acquiredDay != b.acquiredDay { return a.acquiredDay < b.acquiredDay }
        return a.id < b.id
    }

    static func fifoOrder(_ a: TaxLot, _ b: TaxLot) -> Bool {
        a.acquiredDay != b.acquiredDay ? a.acquiredDay < b.acquiredDay : a.id < b.id
    }

    /// Whole shares, tolerant of division noise (94.9999999999 → 95).
    static func wholeShares(_ x: Double) -> Double { floor(x + 1e-9) }

    static func money(_ v: Double) -> String { Format.money(v) }

    static func number(_ v: Double) -> String { Format.trimmed(v) }

    static func shares(_ q: Double) -> String { q == 1 ? "1 share" : "\(number(q)) shares" }

    static func list(_ ids: [String]) -> String { ids.joined(separator: ", ") }
}

/// Substantially identical instruments: each instrument is identical to
/// itself and to every member of every group that lists it. Linear in the
/// size of the groups to build; `same` is O(1) for an instrument in one
/// group, so a request with one huge group costs no quadratic time.
struct IdenticalSets {
    private var groupsOf: [String: [Int]] = [:]
    private var members: [[String]] = []

    init(_ groups: [[String]]) {
        for group in groups {
            let k = members.count
            members.append(group)
            for id in Set(group) { groupsOf[id, default: []].append(k) }
        }
    }

    func groups(of id: String) -> [Int] { groupsOf[id] ?? [] }

    func members(of group: Int) -> [String] { members[group] }

    func same(_ a: String, _ b: String) -> Bool {
        if a == b { return true }
        guard let ga = groupsOf[a], let gb = groupsOf[b] else { return false }
        return ga.contains { gb.contains($0) }
    }
}

/// The latest household purchase in a window of days of each instrument
/// and of each identical group, so that "was anything substantially
/// identical bought?" costs O(groups of the instrument), not a scan of the
/// trades. Ties on the day go to the larger instrument id, then account.
struct LatestBuys {
    private let identical: IdenticalSets
    private var byInstrument: [String: RecentTrade] = [:]
    private var byGroup: [Int: RecentTrade] = [:]

    init(_ trades: [RecentTrade], identical: IdenticalSets, from: Int, through: Int) {
        self.identical = identical
        for t in trades where t.side == .buy && t.day >= from && t.day <= through {
            if Self.later(t, than: byInstrument[t.instrumentID]) { byInstrument[t.instrumentID] = t }
            for g in identical.groups(of: t.instrumentID) where Self.later(t, than: byGroup[g]) { byGroup[g] = t }
        }
    }

    static func later(_ a: RecentTrade, than b: RecentTrade?) -> Bool {
        guard let b else { return true }
        return (a.day, a.instrumentID, a.accountID) > (b.day, b.instrumentID, b.accountID)
    }

    func latest(identicalTo id: String) -> RecentTrade? {
        var best = byInstrument[id]
        for g in identical.groups(of: id) { if let t = byGroup[g], Self.later(t, than: best) { best = t } }
        return best
    }
}

/// Tax lots in a rebalance: which lots each sale relieves (loss lots first,
/// then long-term before short-term gains: ``TaxLossHarvester/lotsToSell``),
/// what it realises, and a sentence on it in the order's explanation.
public enum TaxLotAssignment {
    /// What one sale realises.
    public struct Realised: Sendable, Equatable {
        public var instrumentID: String
        /// Gains are positive, losses negative.
        public var shortTerm: Double
        public var longTerm: Double
        public var total: Double { shortTerm + longTerm }
    }

    /// Sets `lotIDs` on every sale of an instrument with lots, adds the TAX
    /// reason to sales that realise a net loss, and appends one sentence to
    /// their explanations. `rules` supplies the trade day, the rates, the
    /// household's recent purchases and the substantially identical groups
    /// (a loss sale after such a purchase is flagged: the loss would be
    /// disallowed). Returns what each sale with lots realises, in order.
    @discardableResult
    public static func apply(to decision: inout RebalanceDecision, lots: [TaxLot], rules: TaxRules) -> [Realised] {
        guard !lots.isEmpty else { return [] }
        let latestBuys = LatestBuys(rules.recentTrades, identical: IdenticalSets(rules.identicalGroups),
                                    from: rules.tradeDay - 30, through: rules.tradeDay)
        var byInstrument: [String: [TaxLot]] = [:]
        for lot in lots { byInstrument[lot.instrumentID, default: []].append(lot) }
        var out: [Realised] = []
        for k in decision.orders.indices where decision.orders[k].side == .sell {
            let order = decision.orders[k]
            guard let held = byInstrument[order.instrumentID] else { continue }
            let sold = TaxLossHarvester.lotsToSell(held, instrumentID: order.instrumentID, quantity: order.quantity,
                                                    price: order.price, tradeDay: rules.tradeDay)
            guard !sold.isEmpty else { continue }
            var cost: [String: TaxLot] = [:]
            for lot in held { cost[lot.id] = lot }
            var st = 0.0, lt = 0.0
            for (id, q) in sold {
                guard let lot = cost[id] else { continue }
                let gain = (order.price - lot.costPerShare) * q
                if TaxLossHarvester.isLongTerm(acquiredDay: lot.acquiredDay, soldDay: rules.tradeDay) {
                    lt += gain
                } else {
                    st += gain
                }
            }
            let realised = Realised(instrumentID: order.instrumentID, shortTerm: st, longTerm: lt)
            out.append(realised)
            decision.orders[k].lotIDs = sold.map(\.id)
            var text = " Lots \(TaxLossHarvester.list(sold.map(\.id))) "
            if realised.total < 0 {
                if !decision.orders[k].reasons.contains(.tax) { decision.orders[k].reasons.append(.tax) }
                let saving = -(min(0, st) * rules.shortTermRate + min(0, lt) * rules.longTermRate)
                text += "(loss lots first) realise a \(TaxLossHarvester.money(-realised.total)) loss" + split(st, lt)
                // Without rates (no tax context) the value is not known.
                if saving > 0 { text += ", worth about \(TaxLossHarvester.money(saving)) in tax" }
                if let buy = latestBuys.latest(identicalTo: order.instrumentID) {
                    text += "; \(buy.instrumentID) was bought on \(CivilDay.iso(buy.day)), so the loss would be "
                        + "disallowed as a wash sale"
                }
                text += "."
            } else if realised.total > 0 {
                text += "realise a \(TaxLossHarvester.money(realised.total)) gain" + split(st, lt)
                    + ": loss lots and long-term lots go before short-term gains."
            } else {
                text += "are sold at cost: nothing is realised."
            }
            decision.orders[k].explanation += text
        }
        return out
    }

    static func split(_ st: Double, _ lt: Double) -> String {
        if st != 0 && lt != 0 {
            return " (\(TaxLossHarvester.money(abs(st))) short-term, \(TaxLossHarvester.money(abs(lt))) long-term)"
        }
        return lt != 0 ? " (all long-term)" : " (all short-term)"
    }
}
