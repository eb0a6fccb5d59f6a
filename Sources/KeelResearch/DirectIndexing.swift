#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import KeelPortfolio

/// Settings of the direct-indexing tax-alpha backtest (`keel tax-alpha`).
public struct DirectIndexingConfig: Sendable, Equatable {
    public var initialInvestment = 100_000.0
    /// Added on the first row of every calendar month after the first.
    public var monthlyContribution = 1_000.0
    public var shortTermRate = 0.37
    public var longTermRate = 0.20
    /// The rate of the ordinary income that net losses offset.
    public var ordinaryRate = 0.37
    /// Net losses offset at most this much ordinary income per year (US: 3,000).
    public var ordinaryOffsetCap = 3_000.0
    /// A lot is a harvest candidate when (cost − price) / cost reaches it.
    public var lossThreshold = 0.05
    /// Proportional cost of every trade, in basis points of its notional.
    public var costBps = 0.0
    /// The investor has unlimited outside long-term gains: every net loss
    /// is used in its year at the long-term rate (the convention of
    /// Chaudhuri, Burnham and Lo, 2020), instead of the 3,000 cap with
    /// carry-forward.
    public var unlimitedOutsideGains = false
    public var fromRow = 0
    public var toRow: Int? = nil

    public init() {}

    public func validate() throws(ResearchError) {
        func need(_ ok: Bool, _ what: String) throws(ResearchError) {
            if !ok { throw ResearchError(.invalidArgument, what) }
        }
        try need(initialInvestment > 0 && initialInvestment <= 1e12, "--initial must be within (0, 1e12]")
        try need(monthlyContribution >= 0 && monthlyContribution <= 1e12, "--monthly must be within 0...1e12")
        for (name, rate) in [("--short-term-rate", shortTermRate), ("--long-term-rate", longTermRate),
                             ("--ordinary-rate", ordinaryRate)] {
            try need(rate >= 0 && rate <= 1, "\(name) must be within 0...1")
        }
        try need(ordinaryOffsetCap >= 0 && ordinaryOffsetCap <= 1e12, "--ordinary-offset must be within 0...1e12")
        try need(lossThreshold >= 0 && lossThreshold < 1, "--loss-threshold must be within 0...1 (exclusive)")
        try need(costBps >= 0 && costBps <= 1_000, "--cost-bps must be within 0...1000")
    }
}

/// What the direct-indexing backtest found.
public struct DirectIndexingResult: Sendable {
    public var dataset: String
    public var firstDate: String
    public var lastDate: String
    public var years: Double
    public var contributed: Double
    /// Pre-tax value at the end, without and with harvesting.
    public var finalValue: (baseline: Double, harvesting: Double)
    /// After paying the tax on liquidating everything at the end.
    public var afterTaxValue: (baseline: Double, harvesting: Double)
    /// (afterTax.harvesting / afterTax.baseline)^(1 / years) − 1.
    public var taxAlpha: Double
    /// (final.harvesting / final.baseline)^(1 / years) − 1: how far the
    /// two accounts' holdings drifted apart before any tax; the part of
    /// ``taxAlpha`` that is tracking, not tax.
    public var preTaxDifference: Double
    /// Mean over the years of the year's tax saving over the year's mean value.
    public var annualSavingsRate: Double
    public var harvests: Int
    public var lossesHarvested: (shortTerm: Double, longTerm: Double)
    /// Tax saved (negative: paid) in each calendar year, before the final liquidation.
    public var savingsByYear: [(year: Int, saving: Double)]
    /// Unused losses left at the end (lost at liquidation).
    public var carryForwardAtEnd: Double
    /// Annualised standard deviation of the daily return difference.
    public var trackingError: Double
    /// One-way turnover per year of the harvesting portfolio.
    public var turnover: Double
    public var trades: (baseline: Int, harvesting: Int)
    /// Sales at a loss with a purchase of the same asset within 30 days
    /// before or after, found by an audit of the trade log independent of
    /// the harvester.
    public var washSaleViolations: Int
}

/// A direct-indexing account: equal weight across the listed stocks,
/// monthly contributions that top up the most underweight stocks, and,
/// in one of two otherwise identical runs, daily tax-loss harvesting with
/// ``TaxLossHarvester``: loss lots are sold, the asset is not bought for 31
/// days, and the proceeds go to the rest of the index at once (docs/TAX.md).
public enum DirectIndexing {
    public static func run(_ data: MarketData, config: DirectIndexingConfig) throws(ResearchError)
        -> DirectIndexingResult
    {
        try config.validate()
        guard data.hasPrices, let dates = data.dates else {
            throw ResearchError(.invalidData, "\(data.name): the tax-alpha backtest needs dated prices "
                + "(a first column named `date`); price relatives carry no cost basis")
        }
        var days: [Int] = []
        days.reserveCapacity(dates.count)
        for (r, text) in dates.enumerated() {
            guard let d = CivilDay.parse(text), CivilDay.supported.contains(d) else {
                throw ResearchError(.invalidData, "\(data.name): row \(r) has no calendar date ('\(text)')")
            }
            if let last = days.last, d <= last {
                throw ResearchError(.invalidData, "\(data.name): row \(r) date \(text) is not after the previous row's")
            }
            days.append(d)
        }
        let to = min(config.toRow ?? data.rows - 1, data.rows - 1)
        // The account opens at the window's first row with a listed asset.
        let from = max(config.fromRow, data.firstRow.min() ?? data.rows)
        guard config.fromRow >= 0, from < to else {
            throw ResearchError(.invalidArgument, "the window rows \(config.fromRow)...\(to) hold fewer than two "
                + "rows with a listed asset")
        }
        var base = Account(data: data, days: days, config: config, harvesting: false)
        var tlh = Account(data: data, days: days, config: config, harvesting: true)
        var differences: [Double] = []
        differences.reserveCapacity(to - from)
        for r in from...to {
            let a = try base.step(r), b = try tlh.step(r)
            if r > from { differences.append(b - a) }
        }
        let afterBase = base.liquidate(to), afterTLH = tlh.liquidate(to)
        let years = Double(days[to] - days[from]) / 365.25
        let mean = differences.reduce(0, +) / Double(max(1, differences.count))
        let variance = differences.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(max(1, differences.count - 1))
        let rates = tlh.savings.map { $0.saving / max(1e-9, $0.meanValue) }
        return DirectIndexingResult(
            dataset: data.name, firstDate: dates[from], lastDate: dates[to], years: years,
            contributed: tlh.contributed, finalValue: (base.value(to), tlh.value(to)),
            afterTaxValue: (afterBase, afterTLH), taxAlpha: pow(afterTLH / afterBase, 1 / years) - 1,
            preTaxDifference: pow(tlh.value(to) / base.value(to), 1 / years) - 1,
            annualSavingsRate: rates.isEmpty ? 0 : rates.reduce(0, +) / Double(rates.count),
            harvests: tlh.harvests, lossesHarvested: (tlh.harvestedShortTerm, tlh.harvestedLongTerm),
            savingsByYear: tlh.savings.map { ($0.year, $0.saving) },
            carryForwardAtEnd: tlh.carryShortTerm + tlh.carryLongTerm,
            trackingError: (variance * 252).squareRoot(), turnover: tlh.traded / 2 / max(1e-9, tlh.valueSum / Double(max(1, tlh.rows))) / years,
            trades: (base.tradeCount, tlh.tradeCount),
            washSaleViolations: washSaleViolations(sales: tlh.lossSales, purchases: tlh.purchases))
    }

    // MARK: - Taxes

    /// One year's US netting: realised short- and long-term results (gains
    /// positive) with the losses carried in (positive amounts). Returns the
    /// tax due (negative: a saving) and the losses carried out, keeping
    /// their character. Net losses offset ordinary income up to the cap
    /// (short-term first), or, with unlimited outside gains, outside
    /// long-term gains without limit.
    public static func settle(shortTerm: Double, longTerm: Double, carryShortTerm: Double, carryLongTerm: Double,
                              config: DirectIndexingConfig) -> (tax: Double, carryShortTerm: Double, carryLongTerm: Double)
    {
        let st = shortTerm - carryShortTerm, lt = longTerm - carryLongTerm
        if st >= 0 && lt >= 0 { return (st * config.shortTermRate + lt * config.longTermRate, 0, 0) }
        if st < 0 && lt > 0 || st > 0 && lt < 0 {
            let net = st + lt
            if net >= 0 { return (net * (st > 0 ? config.shortTermRate : config.longTermRate), 0, 0) }
        }
        // A net loss: short-term part and long-term part (each ≥ 0).
        var stLoss = max(0, -st), ltLoss = max(0, -lt)
        if st > 0 { ltLoss -= st; stLoss = 0 }
        if lt > 0 { stLoss -= lt; ltLoss = 0 }
        if config.unlimitedOutsideGains { return (-(stLoss + ltLoss) * config.longTermRate, 0, 0) }
        let fromShort = min(config.ordinaryOffsetCap, stLoss)
        let fromLong = min(config.ordinaryOffsetCap - fromShort, ltLoss)
        return (-(fromShort + fromLong) * config.ordinaryRate, stLoss - fromShort, ltLoss - fromLong)
    }

    // MARK: - The wash-sale audit

    /// Sales at a loss with a purchase of the same asset within 30 days
    /// before or after, other than of a lot the sale itself relieved.
    public static func washSaleViolations(sales: [(asset: Int, day: Int, lots: Set<Int>)],
                                          purchases: [(asset: Int, day: Int, lot: Int)]) -> Int
    {
        var byAsset: [Int: [(day: Int, lot: Int)]] = [:]
        for p in purchases { byAsset[p.asset, default: []].append((p.day, p.lot)) }
        var violations = 0
        for s in sales {
            let bought = byAsset[s.asset] ?? []
            if bought.contains(where: { abs($0.day - s.day) <= 30 && !s.lots.contains($0.lot) }) { violations += 1 }
        }
        return violations
    }

    // MARK: - One account

    struct Lot {
        var id: Int
        var quantity: Double
        var day: Int
        var cost: Double
    }

    /// The replacement lots of one day's harvests and the share of their
    /// proceeds that goes back into each harvested asset.
    struct SwitchBack {
        var due: Int
        var assets: [(asset: Int, share: Double)]
        var lots: [(asset: Int, id: Int)]
    }

    struct Account {
        let data: MarketData
        let days: [Int]
        let config: DirectIndexingConfig
        let harvesting: Bool
        let n: Int
        let fee: Double
        var lots: [[Lot]]
        /// Shares held per asset (the sum of its lots).
        var shares: [Double]
        var maxCost: [Double]
        var cash = 0.0
        var nextLot = 0
        var blockedThrough: [Int]
        var recent: [(asset: Int, day: Int, quantity: Double)] = []
        var purchases: [(asset: Int, day: Int, lot: Int)] = []
        var lossSales: [(asset: Int, day: Int, lots: Set<Int>)] = []
        /// Harvests whose replacement lots go back into the harvested asset
        /// once its window has closed: asset, first day it may be bought,
        /// replacement lots (asset, lot id).
        var switchBacks: [SwitchBack] = []
        var realisedShortTerm = 0.0, realisedLongTerm = 0.0
        var carryShortTerm = 0.0, carryLongTerm = 0.0
        var harvestedShortTerm = 0.0, harvestedLongTerm = 0.0
        var harvests = 0, tradeCount = 0
        var traded = 0.0, valueSum = 0.0, rows = 0
        var contributed = 0.0
        var savings: [(year: Int, saving: Double, meanValue: Double)] = []
        var yearValueSum = 0.0, yearRows = 0
        var lastValue = 0.0
        var lastRow: Int? = nil

        init(data: MarketData, days: [Int], config: DirectIndexingConfig, harvesting: Bool) {
            self.data = data
            self.days = days
            self.config = config
            self.harvesting = harvesting
            n = data.assetCount
            fee = config.costBps / 10_000
            lots = Array(repeating: [], count: n)
            shares = Array(repeating: 0, count: n)
            maxCost = Array(repeating: 0, count: n)
            blockedThrough = Array(repeating: Int.min, count: n)
        }

        func value(_ r: Int) -> Double {
            var v = cash
            for i in 0..<n where shares[i] > 0 { v += shares[i] * data.price(r, i) }
            return v
        }

        /// One row: taxes at a new year, the contribution at a new month,
        /// harvesting; returns the day's time-weighted return.
        mutating func step(_ r: Int) throws(ResearchError) -> Double {
            let day = days[r]
            let before = value(r)
            let dailyReturn = lastRow == nil || lastValue <= 0 ? 0 : before / lastValue - 1
            if let previous = lastRow {
                let (y0, m0, _) = CivilDay.date(days[previous]), (y1, m1, _) = CivilDay.date(day)
                if y1 != y0 { settleYear(y0) }
                if y1 != y0 || m1 != m0 {
                    cash += config.monthlyContribution
                    contributed += config.monthlyContribution
                }
            } else {
                cash += config.initialInvestment
                contributed += config.initialInvestment
            }
            if harvesting {
                switchBack(r)
                try harvest(r)
            }
            invest(r)
            lastValue = value(r)
            lastRow = r
            valueSum += lastValue
            rows += 1
            yearValueSum += lastValue
            yearRows += 1
            return dailyReturn
        }

        mutating func settleYear(_ year: Int) {
            let s = DirectIndexing.settle(shortTerm: realisedShortTerm, longTerm: realisedLongTerm,
                                          carryShortTerm: carryShortTerm, carryLongTerm: carryLongTerm, config: config)
            cash -= s.tax  // a saving is reinvested; tax due is paid from the account
            carryShortTerm = s.carryShortTerm
            carryLongTerm = s.carryLongTerm
            realisedShortTerm = 0
            realisedLongTerm = 0
            savings.append((year, -s.tax, yearValueSum / Double(max(1, yearRows))))
            yearValueSum = 0
            yearRows = 0
        }

        /// Invests the cash: the shortfalls below equal weight first (among
        /// listed assets not blocked), the rest equally.
        @discardableResult
        mutating func invest(_ r: Int) -> [(asset: Int, id: Int)] {
            guard cash > 1e-6 else { return [] }
            let day = days[r]
            let open = (0..<n).filter { data.isListed($0, atRow: r) && blockedThrough[$0] < day }
            guard !open.isEmpty else { return [] }
            var bought: [(asset: Int, id: Int)] = []
            let listed = (0..<n).filter { data.isListed($0, atRow: r) }
            let total = value(r)
            let target = total / Double(listed.count)
            var held = [Double](repeating: 0, count: n)
            for i in open { held[i] = shares[i] * data.price(r, i) }
            let shortfall = open.map { max(0, target - held[$0]) }
            let short = shortfall.reduce(0, +)
            var amounts = [Double](repeating: 0, count: open.count)
            if short >= cash {
                for k in open.indices { amounts[k] = cash * shortfall[k] / short }
            } else {
                let rest = (cash - short) / Double(open.count)
                for k in open.indices { amounts[k] = shortfall[k] + rest }
            }
            for (k, i) in open.enumerated() where amounts[k] > 1e-6 {
                bought.append((i, buy(i, amount: amounts[k], row: r)))
            }
            cash = 0
            return bought
        }

        /// Buys `amount` (costs included) of asset `i`; returns the lot id.
        mutating func buy(_ i: Int, amount: Double, row r: Int) -> Int {
            let p = data.price(r, i), day = days[r]
            let quantity = amount / (p * (1 + fee))
            lots[i].append(Lot(id: nextLot, quantity: quantity, day: day, cost: p * (1 + fee)))
            shares[i] += quantity
            maxCost[i] = max(maxCost[i], p * (1 + fee))
            purchases.append((i, day, nextLot))
            recent.append((i, day, quantity))
            nextLot += 1
            tradeCount += 1
            traded += amount
            return nextLot - 1
        }

        /// Sells one whole lot of asset `i` at row `r`; returns the proceeds
        /// and books the realised result.
        mutating func sell(_ i: Int, lot id: Int, row r: Int) -> Double? {
            guard let k = lots[i].firstIndex(where: { $0.id == id }) else { return nil }
            let lot = lots[i].remove(at: k)
            let p = data.price(r, i), day = days[r]
            let proceeds = lot.quantity * p * (1 - fee)
            let gain = proceeds - lot.quantity * lot.cost
            if TaxLossHarvester.isLongTerm(acquiredDay: lot.day, soldDay: day) {
                realisedLongTerm += gain
            } else {
                realisedShortTerm += gain
            }
            shares[i] = lots[i].reduce(0) { $0 + $1.quantity }
            maxCost[i] = lots[i].map(\.cost).max() ?? 0
            traded += lot.quantity * p
            tradeCount += 1
            return proceeds
        }

        /// Once a harvested asset's window has closed, its replacement lots
        /// that stand at a gain or at cost are sold and the asset bought
        /// back with the proceeds, so that the account keeps tracking the
        /// index. Replacement lots at a loss stay (a sale would be a loss
        /// sale of its own, left to the harvester).
        mutating func switchBack(_ r: Int) {
            let day = days[r]
            var waiting: [SwitchBack] = []
            for s in switchBacks {
                // Not before every harvested asset may be bought again.
                guard s.due <= day, s.assets.allSatisfy({ blockedThrough[$0.asset] < day }) else {
                    waiting.append(s)
                    continue
                }
                var proceeds = 0.0
                for (j, id) in s.lots {
                    guard let lot = lots[j].first(where: { $0.id == id }),
                          data.price(r, j) * (1 - fee) >= lot.cost else { continue }
                    proceeds += sell(j, lot: id, row: r) ?? 0
                }
                for (i, share) in s.assets where proceeds * share > 1e-6 && data.isListed(i, atRow: r) {
                    _ = buy(i, amount: proceeds * share, row: r)  // the new lot is in `lots`; its id is not needed here
                }
            }
            switchBacks = waiting
        }

        /// Proposes and executes harvests through ``TaxLossHarvester``.
        mutating func harvest(_ r: Int) throws(ResearchError) {
            let day = days[r]
            recent.removeAll { $0.day < day - 30 }
            var candidates: [TaxLot] = []
            var prices: [String: Double] = [:]
            for i in 0..<n where data.isListed(i, atRow: r) {
                let p = data.price(r, i)
                guard maxCost[i] > 0, (maxCost[i] - p) / maxCost[i] >= config.lossThreshold else { continue }
                prices[String(i)] = p
                for lot in lots[i] where (lot.cost - p) / lot.cost >= config.lossThreshold {
                    candidates.append(TaxLot(id: String(lot.id), instrumentID: String(i), quantity: lot.quantity,
                                             acquiredDay: lot.day, costPerShare: lot.cost))
                }
            }
            guard !candidates.isEmpty else { return }
            let rules = TaxRules(shortTermRate: config.shortTermRate, longTermRate: config.longTermRate,
                                 tradeDay: day,
                                 recentTrades: recent.map { RecentTrade(instrumentID: String($0.asset), day: $0.day,
                                                                        side: .buy, quantity: $0.quantity, accountID: "A") })
            let proposals: [HarvestProposal]
            do throws(TaxLossError) {
                proposals = try TaxLossHarvester.propose(lots: candidates, prices: prices, rules: rules).proposals
            } catch {
                throw ResearchError(.invalidData, "\(data.name) row \(r): \(error.message)")
            }
            // Sell everything first, so that no asset harvested today is
            // bought today with another's proceeds.
            var harvested: [(asset: Int, proceeds: Double)] = []
            for proposal in proposals {
                guard let i = Int(proposal.instrumentID) else { continue }
                let sold = Set(proposal.lots.compactMap { Int($0.id) })
                let before = (realisedShortTerm, realisedLongTerm)
                var proceeds = 0.0
                for id in sold { proceeds += sell(i, lot: id, row: r) ?? 0 }
                harvestedShortTerm -= realisedShortTerm - before.0
                harvestedLongTerm -= realisedLongTerm - before.1
                blockedThrough[i] = day + 30
                lossSales.append((i, day, sold))
                harvests += 1
                harvested.append((i, proceeds))
            }
            // The proceeds go to the rest of the index now, and back into the
            // harvested assets when their windows have closed.
            let total = harvested.reduce(0) { $0 + $1.proceeds }
            guard total > 0 else { return }
            let other = cash
            cash = total
            let replacements = invest(r)
            cash += other
            switchBacks.append(SwitchBack(due: day + 31, assets: harvested.map { ($0.asset, $0.proceeds / total) },
                                          lots: replacements))
        }

        /// The after-tax value of selling everything at row `r`: the last
        /// year's results and the liquidation's are settled together (any
        /// loss still carried after that is worth nothing more).
        mutating func liquidate(_ r: Int) -> Double {
            let day = days[r]
            var v = cash
            for i in 0..<n where data.isListed(i, atRow: r) {
                let p = data.price(r, i)
                for lot in lots[i] {
                    let proceeds = lot.quantity * p * (1 - fee)
                    v += proceeds
                    let gain = proceeds - lot.quantity * lot.cost
                    if TaxLossHarvester.isLongTerm(acquiredDay: lot.day, soldDay: day) {
                        realisedLongTerm += gain
                    } else {
                        realisedShortTerm += gain
                    }
                }
            }
            let s = DirectIndexing.settle(shortTerm: realisedShortTerm, longTerm: realisedLongTerm,
                                          carryShortTerm: carryShortTerm, carryLongTerm: carryLongTerm, config: config)
            carryShortTerm = s.carryShortTerm
            carryLongTerm = s.carryLongTerm
            return v - s.tax
        }
    }
}
