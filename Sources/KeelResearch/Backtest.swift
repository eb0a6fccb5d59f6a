#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// What a strategy wants at one decision point.
public enum Decision: Sendable {
    /// No trade.
    case hold
    /// Rebalance exactly to these weights of wealth (one per asset, ≥ 0,
    /// summing to at most 1; the rest is cash), net of costs.
    case weights([Double])
    /// Execute these orders: signed quantities (buy > 0, sell < 0) per asset
    /// index, at the row's prices.
    case orders([(asset: Int, quantity: Double)])
}

/// The portfolio as the backtest holds it: quantities and cash.
public struct BookState: Sendable {
    public internal(set) var quantity: [Double]
    public internal(set) var cash: Double

    /// Value at row `r`'s prices.
    public func value(_ data: MarketData, row r: Int) -> Double {
        var v = cash
        let m = data.assetCount
        let base = r * m
        for i in 0..<m where quantity[i] != 0 { v += quantity[i] * data.prices[base + i] }
        return v
    }
}

/// A rule that decides, at each row, what to trade.
public protocol Strategy {
    var name: String { get }
    /// Weights to start from at row `start` (bought without cost).
    func initialWeights(_ data: MarketData, start: Int, end: Int) throws(ResearchError) -> [Double]
    /// The decision at row `row` (after its prices are known), given the
    /// book before trading. `first` is the window's first row.
    mutating func decide(_ data: MarketData, row: Int, first: Int, book: BookState) throws(ResearchError) -> Decision
}

/// Options shared by every strategy of one backtest.
public struct BacktestOptions: Sendable, Equatable {
    /// Proportional cost in basis points of traded notional, each side
    /// (a buy and a sell of 1 each pay `costBps / 10,000`).
    public var costBps: Double = 0
    public var periodsPerYear: Double = 252
    /// Starting capital (currency units). Wealth is reported relative to it;
    /// it matters only where orders are whole shares (priced data).
    public var capital: Double = 1_000_000
    /// Keep the weights after each decision (for the weights chart).
    public var recordWeights = false

    public init(costBps: Double = 0, periodsPerYear: Double = 252, capital: Double = 1_000_000,
                recordWeights: Bool = false)
    {
        self.costBps = costBps
        self.periodsPerYear = periodsPerYear
        self.capital = capital
        self.recordWeights = recordWeights
    }

    public func validate() throws(ResearchError) {
        guard costBps.isFinite, costBps >= 0, costBps < 10_000 else {
            throw ResearchError(.invalidArgument, "--cost-bps \(costBps) must be a number in 0..<10000")
        }
        guard periodsPerYear.isFinite, periodsPerYear > 0 else {
            throw ResearchError(.invalidArgument, "periods per year \(periodsPerYear) must be > 0")
        }
        guard capital.isFinite, capital > 0 else {
            throw ResearchError(.invalidArgument, "--capital \(capital) must be > 0")
        }
    }
}

/// One strategy's path through one window.
public struct BacktestResult: Sendable {
    public var strategy: String
    /// Wealth relative to the start, one per row of the window (first = 1).
    public var wealth: [Double]
    /// Σ over decisions of one-way turnover (half the traded notional over
    /// the value before trading).
    public var turnover: Double
    /// One-way turnover of each decision (one per row but the last).
    public var turnoverPath: [Double]
    /// Costs paid, relative to the starting wealth.
    public var costs: Double
    /// Asset-level trades (one per asset per decision that trades it).
    public var trades: Int
    /// Decisions that traded.
    public var rebalances: Int
    /// When recorded: weights after each decision, `decisions × assets`.
    public var weights: [Double]?
    /// The window's first and last price rows.
    public var firstRow: Int
    public var lastRow: Int
    public var metrics: Metrics
}

/// The backtest loop, one strategy at a time (docs/BACKTEST.md).
///
/// At each row t of the window except the last: the strategy decides on the
/// book at row t's prices; the trades execute at those prices and pay
/// `costBps` on their notional; then prices move to row t + 1. Wealth is
/// the book's value at each row. The starting allocation is bought at the
/// first row without cost, the same for every strategy.
public enum Backtester {
    public static func run(_ strategy: inout some Strategy, data: MarketData, rows: ClosedRange<Int>? = nil,
                           options: BacktestOptions = BacktestOptions()) throws(ResearchError) -> BacktestResult
    {
        try options.validate()
        let m = data.assetCount
        let window = rows ?? 0...(data.rows - 1)
        guard window.lowerBound >= 0, window.upperBound < data.rows, window.count >= 2 else {
            throw ResearchError(.invalidArgument, "window rows \(window) is outside the data's 0...\(data.rows - 1) "
                + "or shorter than two rows")
        }
        // A window that opens before any asset lists starts at the first
        // listing (the result's firstRow says where).
        let firstListing = data.firstRow.min() ?? data.rows
        let start = max(window.lowerBound, firstListing), end = window.upperBound
        guard start < end else {
            throw ResearchError(.invalidArgument, "no asset of \(data.name) is listed before the window's last row "
                + "\(end) (the first listing is at row \(firstListing))")
        }
        let c = options.costBps / 10_000
        var book = BookState(quantity: [Double](repeating: 0, count: m), cash: 0)
        let initial = try strategy.initialWeights(data, start: start, end: end)
        guard initial.count == m else {
            throw ResearchError(.invalidArgument, "\(strategy.name): \(initial.count) initial weights for \(m) assets")
        }
        if let k = initial.firstIndex(where: { !($0 >= 0 && $0.isFinite) }) {
            throw ResearchError(.invalidArgument, "\(strategy.name): initial weight \(initial[k]) of '\(data.assets[k])' "
                + "is not a finite number >= 0")
        }
        guard initial.reduce(0, +) <= 1 + 1e-9 else {
            throw ResearchError(.invalidArgument, "\(strategy.name): initial weights sum to \(initial.reduce(0, +)) > 1")
        }
        let capital = options.capital
        var invested = 0.0
        for i in 0..<m where initial[i] > 0 {
            guard data.firstRow[i] <= start else {
                throw ResearchError(.invalidArgument, "\(strategy.name): asset '\(data.assets[i])' is not listed at row \(start)")
            }
            book.quantity[i] = capital * initial[i] / data.price(start, i)
            invested += initial[i]
        }
        book.cash = capital * max(0, 1 - invested)

        var wealth = [Double](repeating: 1, count: end - start + 1)
        var turnover = 0.0, costs = 0.0
        var turnoverPath = [Double](repeating: 0, count: end - start)
        var trades = 0, rebalances = 0
        var recorded: [Double]? = options.recordWeights ? [] : nil
        recorded?.reserveCapacity((end - start) * m)
        var target = [Double](repeating: 0, count: m)
        for row in start..<end {
            let decision = try strategy.decide(data, row: row, first: start, book: book)
            let before = book.value(data, row: row)
            var traded = 0.0, cost = 0.0, count = 0
            switch decision {
            case .hold:
                break
            case .weights(let w):
                guard w.count == m else {
                    throw ResearchError(.invalidArgument, "\(strategy.name): \(w.count) weights for \(m) assets")
                }
                for i in 0..<m { target[i] = data.firstRow[i] <= row ? max(0, w[i]) : 0 }
                let sum = target.reduce(0, +)
                if sum > 1 { for i in 0..<m { target[i] /= sum } }
                // Wealth after costs, W' = W − c Σ|W' b_i − h_i|: a
                // contraction (factor ≤ c), solved by fixed-point iteration.
                var after = before
                for _ in 0..<100 {
                    var total = 0.0
                    for i in 0..<m {
                        let h = book.quantity[i] == 0 ? 0 : book.quantity[i] * data.price(row, i)
                        total += abs(after * target[i] - h)
                    }
                    let next = before - c * total
                    if abs(next - after) <= 1e-15 * before { after = next; break }
                    after = next
                }
                cost = before - after
                for i in 0..<m {
                    let p = data.price(row, i)
                    let h = book.quantity[i] == 0 ? 0 : book.quantity[i] * p
                    let goal = after * target[i]
                    let delta = goal - h
                    if abs(delta) > 1e-12 * before {
                        traded += abs(delta)
                        count += 1
                        book.quantity[i] = goal / p
                    }
                }
                book.cash = after * max(0, 1 - target.reduce(0, +))
            case .orders(let orders):
                for order in orders where order.quantity != 0 {
                    guard order.asset >= 0, order.asset < m, data.firstRow[order.asset] <= row else {
                        throw ResearchError(.invalidArgument, "\(strategy.name): an order for an asset not listed at row \(row)")
                    }
                    let notional = abs(order.quantity) * data.price(row, order.asset)
                    book.quantity[order.asset] += order.quantity
                    if book.quantity[order.asset] < 0 && book.quantity[order.asset] > -1e-9 { book.quantity[order.asset] = 0 }
                    book.cash -= order.quantity * data.price(row, order.asset) + c * notional
                    traded += notional
                    cost += c * notional
                    count += 1
                }
                if book.cash < 0 && book.cash > -1e-9 * before { book.cash = 0 }
                if book.cash < 0 || book.quantity.contains(where: { $0 < 0 }) {
                    throw ResearchError(.policyFailed, "\(strategy.name): the orders at row \(row) "
                        + "(\(data.label(ofRow: row))) leave cash \(book.cash) or a short position")
                }
            }
            if count > 0 {
                rebalances += 1
                trades += count
                turnover += traded / (2 * before)
                turnoverPath[row - start] = traded / (2 * before)
                costs += cost / capital
            }
            if recorded != nil {
                let v = book.value(data, row: row)
                for i in 0..<m { recorded!.append(book.quantity[i] == 0 ? 0 : book.quantity[i] * data.price(row, i) / v) }
            }
            wealth[row + 1 - start] = book.value(data, row: row + 1) / capital
        }
        let metrics = Metrics(wealth: wealth, periodsPerYear: options.periodsPerYear, turnover: turnover, costs: costs,
                              trades: trades)
        return BacktestResult(strategy: strategy.name, wealth: wealth, turnover: turnover, turnoverPath: turnoverPath,
                              costs: costs, trades: trades,
                              rebalances: rebalances, weights: recorded, firstRow: start, lastRow: end, metrics: metrics)
    }
}

// MARK: - Static rules

/// Equal weights over the assets listed at `row`.
func equalWeights(_ data: MarketData, row: Int) -> [Double] {
    let m = data.assetCount
    var listed = 0
    for i in 0..<m where data.firstRow[i] <= row { listed += 1 }
    guard listed > 0 else { return [Double](repeating: 0, count: m) }
    let w = 1 / Double(listed)
    return (0..<m).map { data.firstRow[$0] <= row ? w : 0 }
}

/// Uniform buy-and-hold: 1/N at the start, never trades (assets listed
/// later are not bought).
public struct BuyAndHold: Strategy {
    public var name = "buy-and-hold"
    public init() {}
    public func initialWeights(_ data: MarketData, start: Int, end: Int) -> [Double] { equalWeights(data, row: start) }
    public func decide(_ data: MarketData, row: Int, first: Int, book: BookState) -> Decision { .hold }
}

/// Rebalance to 1/N of the listed assets every `every` rows (1 = UCRP, the
/// uniform constant-rebalanced portfolio).
public struct CalendarRebalance: Strategy {
    public let every: Int
    public var name: String { every == 1 ? "ucrp" : "calendar:\(every)" }
    public init(every: Int) { self.every = every }
    public func initialWeights(_ data: MarketData, start: Int, end: Int) -> [Double] { equalWeights(data, row: start) }
    public func decide(_ data: MarketData, row: Int, first: Int, book: BookState) -> Decision {
        (row - first) % every == 0 ? .weights(equalWeights(data, row: row)) : .hold
    }
}

/// Rebalance to 1/N when half the sum of absolute deviations from 1/N
/// exceeds `threshold` (e.g. 0.03).
public struct DriftBand: Strategy {
    public let threshold: Double
    public var name: String { "band:\(formatNumber(threshold))" }
    public init(threshold: Double) { self.threshold = threshold }
    public func initialWeights(_ data: MarketData, start: Int, end: Int) -> [Double] { equalWeights(data, row: start) }
    public func decide(_ data: MarketData, row: Int, first: Int, book: BookState) -> Decision {
        let target = equalWeights(data, row: row)
        let v = book.value(data, row: row)
        var deviation = abs(book.cash / v)
        for i in 0..<data.assetCount {
            let w = book.quantity[i] == 0 ? 0 : book.quantity[i] * data.price(row, i) / v
            deviation += abs(w - target[i])
        }
        return deviation / 2 > threshold ? .weights(target) : .hold
    }
}

/// Buy and hold one asset: a named one, or the best one in hindsight over
/// the window (among the assets listed at its start).
public struct SingleAsset: Strategy {
    public let asset: String?
    public var name: String { asset.map { "asset:\($0)" } ?? "best-asset" }
    public init(asset: String?) { self.asset = asset }

    public func initialWeights(_ data: MarketData, start: Int, end: Int) throws(ResearchError) -> [Double] {
        let m = data.assetCount
        var pick = -1
        if let asset {
            guard let i = data.assets.firstIndex(of: asset) else {
                throw ResearchError(.invalidArgument, "asset:\(asset): unknown column '\(asset)' (the data's assets: "
                    + "\(data.assets.prefix(12).joined(separator: ", "))\(m > 12 ? ", ..." : ""))")
            }
            guard data.firstRow[i] <= start else {
                throw ResearchError(.invalidArgument, "asset:\(asset) is not listed at the window's first row")
            }
            pick = i
        } else {
            var best = -Double.infinity
            for i in 0..<m where data.firstRow[i] <= start {
                let growth = data.price(end, i) / data.price(start, i)
                if growth > best { best = growth; pick = i }
            }
        }
        var w = [Double](repeating: 0, count: m)
        if pick >= 0 { w[pick] = 1 }
        return w
    }

    public func decide(_ data: MarketData, row: Int, first: Int, book: BookState) -> Decision { .hold }
}

/// `%g`-like shortest form of a number for strategy names.
func formatNumber(_ v: Double) -> String {
    if v == v.rounded() && abs(v) < 1e15 { return String(Int(v)) }
    var s = String(v)
    if s.hasSuffix(".0") { s.removeLast(2) }
    return s
}
