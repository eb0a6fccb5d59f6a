#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Performance figures of a wealth path (docs/BACKTEST.md).
///
/// Per-period simple returns r_t = W_t / W_(t−1) − 1; P periods; Y periods
/// per year (252 for daily data). Risk-free rate 0.
/// - `cagr` = W_P^(Y/P) − 1
/// - `volatility` = sample standard deviation of r × √Y
/// - `sharpe` = mean(r) / sd(r) × √Y
/// - `sortino` = mean(r) / √(mean(min(r, 0)²)) × √Y
/// - `maxDrawdown` = max over t of 1 − W_t / max_(s ≤ t) W_s (a positive fraction)
/// - `calmar` = cagr / maxDrawdown
/// - `turnover` = one-way turnover per year (Σ over decisions × Y / P)
public struct Metrics: Sendable, Equatable {
    public var finalWealth: Double
    public var cagr: Double
    public var volatility: Double
    public var sharpe: Double
    public var sortino: Double
    public var maxDrawdown: Double
    public var calmar: Double
    /// Annualised one-way turnover.
    public var turnover: Double
    /// Costs paid, as a fraction of the starting wealth.
    public var costs: Double
    public var trades: Int
    public var periods: Int

    public init(wealth: [Double], periodsPerYear: Double, turnover: Double = 0, costs: Double = 0, trades: Int = 0) {
        let p = max(0, wealth.count - 1)
        periods = p
        let w0 = wealth.first ?? 1
        finalWealth = (wealth.last ?? 1) / w0
        self.costs = costs
        self.trades = trades
        guard p > 0 else {
            cagr = 0; volatility = 0; sharpe = 0; sortino = 0; maxDrawdown = 0; calmar = 0; self.turnover = 0
            return
        }
        cagr = finalWealth > 0 ? pow(finalWealth, periodsPerYear / Double(p)) - 1 : -1
        var sum = 0.0, downside = 0.0
        for t in 1...p {
            let r = wealth[t] / wealth[t - 1] - 1
            sum += r
            if r < 0 { downside += r * r }
        }
        let mean = sum / Double(p)
        var squares = 0.0
        for t in 1...p {
            let e = wealth[t] / wealth[t - 1] - 1 - mean
            squares += e * e
        }
        let sd = p > 1 ? (squares / Double(p - 1)).squareRoot() : 0
        let annual = periodsPerYear.squareRoot()
        volatility = sd * annual
        sharpe = sd > 0 ? mean / sd * annual : 0
        let dd = (downside / Double(p)).squareRoot()
        sortino = dd > 0 ? mean / dd * annual : 0
        var peak = w0, worst = 0.0
        for v in wealth {
            peak = max(peak, v)
            worst = max(worst, 1 - v / peak)
        }
        maxDrawdown = worst
        calmar = worst > 0 ? cagr / worst : 0
        self.turnover = turnover * periodsPerYear / Double(p)
    }

    /// The drawdown path: 1 − W_t / max_(s ≤ t) W_s, as a negative fraction.
    public static func drawdowns(_ wealth: [Double]) -> [Double] {
        var peak = -Double.infinity
        return wealth.map { v in
            peak = max(peak, v)
            return peak > 0 ? v / peak - 1 : 0
        }
    }
}
