/// Stress scenarios injected into a data set (docs/BACKTEST.md):
///
/// - `crash`: one period in which every listed asset falls 20 % (its
///   relative is replaced by 0.8), then a slow recovery: the next 252
///   periods' relatives are multiplied by 1.25^(1/252), so that after a year
///   the crash alone is made good.
/// - `regime-flip`: from the event on, every relative x becomes 1/x: each
///   asset's log returns change sign, so trends reverse and the winners of
///   the first part become the losers of the second.
///
/// The event sits at a given row (a row number or a date), or by default in
/// the middle of the data.
public struct StressScenario: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable { case crash, regimeFlip = "regime-flip" }

    public let kind: Kind
    /// The price row after which the event happens (the first stressed
    /// period is `row`); nil = the middle of the data.
    public let at: String?

    public static let crashDrop = 0.8
    public static let recoveryPeriods = 252

    public init(kind: Kind, at: String? = nil) {
        self.kind = kind
        self.at = at
    }

    /// `crash`, `crash@ROW`, `crash@YYYY-MM-DD`, and the same for `regime-flip`.
    public static func parse(_ text: String) throws(ResearchError) -> StressScenario {
        let parts = text.split(separator: "@", maxSplits: 1).map(String.init)
        guard let kind = Kind(rawValue: parts.first ?? "") else {
            throw ResearchError(.invalidArgument, "stress '\(text)': unknown scenario; use crash or regime-flip, "
                + "optionally with @ROW or @YYYY-MM-DD")
        }
        return StressScenario(kind: kind, at: parts.count > 1 ? parts[1] : nil)
    }

    public var description: String { at.map { "\(kind.rawValue)@\($0)" } ?? kind.rawValue }

    /// The event's row in `data`; without `at`, the middle of `window`
    /// (default: of the data).
    public func row(in data: MarketData, window: ClosedRange<Int>? = nil) throws(ResearchError) -> Int {
        guard let at else {
            let w = window ?? 0...(data.rows - 1)
            return (w.lowerBound + w.upperBound) / 2
        }
        let r: Int
        if let row = Int(at) {
            guard row >= 0, row < data.periods else {
                throw ResearchError(.invalidArgument, "stress \(self): row \(row) is outside 0..<\(data.periods)")
            }
            r = row
        } else {
            guard let row = data.row(onOrAfter: at), row < data.periods else {
                throw ResearchError(.invalidArgument, "stress \(self): \(data.name) has no row on or after '\(at)'")
            }
            r = row
        }
        // The event must fall inside the backtest window, or it has nothing to show.
        if let window, !(window.lowerBound..<window.upperBound).contains(r) {
            throw ResearchError(.invalidArgument, "stress \(self): row \(r) is outside the backtest window "
                + "\(window.lowerBound)..<\(window.upperBound) (set --from/--to to include it)")
        }
        return r
    }

    /// The stressed data and the event's row.
    public func apply(to data: MarketData, window: ClosedRange<Int>? = nil) throws(ResearchError)
        -> (data: MarketData, row: Int)
    {
        let r = try row(in: data, window: window)
        let m = data.assetCount
        var x = data.relatives
        switch kind {
        case .crash:
            let lift = pow(1 / Self.crashDrop, 1 / Double(Self.recoveryPeriods))
            for i in 0..<m where data.firstRow[i] <= r { x[r * m + i] = Self.crashDrop }
            for t in (r + 1)..<min(data.periods, r + 1 + Self.recoveryPeriods) {
                for i in 0..<m where data.firstRow[i] <= t { x[t * m + i] *= lift }
            }
        case .regimeFlip:
            for t in r..<data.periods {
                for i in 0..<m where data.firstRow[i] <= t { x[t * m + i] = 1 / x[t * m + i] }
            }
        }
        return (try data.replacingRelatives(x, name: "\(data.name) + \(self)"), r)
    }
}

/// How a strategy fared around a stress event.
public struct StressOutcome: Sendable, Equatable {
    public var strategy: String
    /// Return over the event period itself (the crash day).
    public var eventReturn: Double
    /// Return from the event row to the end of the recovery window.
    public var windowReturn: Double
    /// Deepest fall from the event row within the window.
    public var fallBelowEvent: Double
    /// Window return minus the return of holding the event row's book
    /// unchanged through the window: what the strategy's own trading added
    /// (negative = its trading made the stress worse).
    public var tradingEffect: Double
    /// Turnover within the window.
    public var windowTurnover: Double

    /// Measures `result` (a backtest over `data`) around the event row.
    public init(result: BacktestResult, data: MarketData, eventRow r: Int, windowPeriods: Int) {
        strategy = result.strategy
        let base = r - result.firstRow
        let last = min(result.wealth.count - 1, base + windowPeriods)
        let w = result.wealth
        eventReturn = base + 1 < w.count ? w[base + 1] / w[base] - 1 : 0
        windowReturn = w[last] / w[base] - 1
        var worst = 0.0
        for k in base...last { worst = max(worst, 1 - w[k] / w[base]) }
        fallBelowEvent = worst
        // Holding the book after the event row's decision unchanged: its
        // weights (recorded) grow with prices.
        var held = 0.0
        if let weights = result.weights {
            let m = data.assetCount
            let row = base * m
            var cash = 1.0
            for i in 0..<m where weights[row + i] > 0 {
                cash -= weights[row + i]
                held += weights[row + i] * data.price(result.firstRow + last, i) / data.price(r, i)
            }
            held += max(0, cash)
            tradingEffect = (1 + windowReturn) - held
        } else {
            tradingEffect = 0
        }
        windowTurnover = result.turnoverPath[base..<last].reduce(0, +)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
