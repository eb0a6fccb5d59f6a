#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The tax-loss forecaster's inputs: one row per instrument, computed from
/// its daily closes (oldest first), identically in `keel train tax-loss`
/// and in the server. The model (`keel.kind = tax_loss`) answers the median
/// log return of the instrument over the next ``horizonDays`` trading days
/// (about the 31 calendar days of the wash-sale window); the server turns
/// the forecasts of an instrument and of its replacement into the score of
/// harvesting now (docs/TAX.md).
///
/// | name | definition (P = closes, t = the last) |
/// |---|---|
/// | `ret_5`, `ret_21`, `ret_63`, `ret_126` | log(P[t] / P[t − k]) |
/// | `vol_21`, `vol_63` | standard deviation of the last k daily log returns × √252 |
/// | `drawdown_126` | log(P[t] / max P over the last 127 closes) (≤ 0) |
public enum TaxLossFeatures {
    public static let names = ["ret_5", "ret_21", "ret_63", "ret_126", "vol_21", "vol_63", "drawdown_126"]
    public static var count: Int { names.count }
    /// Closes needed for one row.
    public static let minimumHistory = 127
    /// Trading days the forecast looks ahead: the 31-day repurchase block.
    public static let horizonDays = 21

    /// Why `modelFeatures` cannot be served by a tax-loss model, or nil.
    public static func mismatch(_ modelFeatures: [String]) -> String? {
        featureMismatch(modelFeatures, expected: names, kind: "tax_loss", family: "tax-loss")
    }

    /// The row for the series ending at `prices[end]` (inclusive), appended
    /// to `out`; false (nothing appended) when fewer than
    /// ``minimumHistory`` closes end there or a close is not a positive,
    /// finite number.
    @discardableResult
    public static func appendRow(prices: [Double], end: Int, to out: inout [Float]) -> Bool {
        let start = end - (minimumHistory - 1)
        guard start >= 0, end < prices.count else { return false }
        var peak = 0.0
        for k in start...end {
            let p = prices[k]
            guard p > 0, p.isFinite else { return false }
            peak = max(peak, p)
        }
        let last = prices[end]
        func ret(_ k: Int) -> Double { log(last / prices[end - k]) }
        func vol(_ k: Int) -> Double {
            var sum = 0.0, sumSquares = 0.0
            for j in (end - k + 1)...end {
                let r = log(prices[j] / prices[j - 1])
                sum += r
                sumSquares += r * r
            }
            let mean = sum / Double(k)
            return (max(0, sumSquares / Double(k) - mean * mean) * 252).squareRoot()
        }
        out.append(Float(ret(5)))
        out.append(Float(ret(21)))
        out.append(Float(ret(63)))
        out.append(Float(ret(126)))
        out.append(Float(vol(21)))
        out.append(Float(vol(63)))
        out.append(Float(log(last / peak)))
        return true
    }
}
