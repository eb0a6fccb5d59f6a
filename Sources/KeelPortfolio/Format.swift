/// Number formatting for explanations and summaries, with integer
/// arithmetic (Double's description is slow and prints exponents).
enum Format {
    private static let powers = [1, 10, 100, 1_000, 10_000]

    /// `v` with `decimals` (0...4) digits after the point, and thousands
    /// separators when `grouping`. Values beyond ±1e15 print as Double does.
    static func fixed(_ v: Double, _ decimals: Int, grouping: Bool = false) -> String {
        guard v.isFinite, abs(v) < 1e15 else { return String(v) }
        let scale = powers[min(4, max(0, decimals))]
        let scaled = Int((abs(v) * Double(scale)).rounded())
        var whole = scaled / scale
        var fraction = scaled % scale
        var reversed: [UInt8] = []
        reversed.reserveCapacity(28)
        if decimals > 0 {
            for _ in 0..<decimals {
                reversed.append(UInt8(48 + fraction % 10))
                fraction /= 10
            }
            reversed.append(UInt8(ascii: "."))
        }
        var count = 0
        repeat {
            if grouping && count > 0 && count % 3 == 0 { reversed.append(UInt8(ascii: ",")) }
            reversed.append(UInt8(48 + whole % 10))
            whole /= 10
            count += 1
        } while whole > 0
        if v < 0 && scaled != 0 { reversed.append(UInt8(ascii: "-")) }
        reversed.reverse()
        return String(decoding: reversed, as: UTF8.self)
    }
}

/// A percentage with one decimal ("12.5%"), "unlimited" for infinity.
func pct(_ x: Double) -> String {
    guard x.isFinite else { return "unlimited" }
    return Format.fixed(x * 100, 1) + "%"
}

extension ReasonCode {
    /// A bit per code, for order-keeping de-duplication without hashing.
    var bit: UInt16 {
        switch self {
        case .drift: 1 << 0
        case .policySignal: 1 << 1
        case .riskLimit: 1 << 2
        case .suitability: 1 << 3
        case .cap: 1 << 4
        case .esgExclusion: 1 << 5
        case .cashTarget: 1 << 6
        case .tax: 1 << 7
        case .exclusion: 1 << 8
        case .liquidity: 1 << 9
        case .washSaleBlock: 1 << 10
        }
    }
}
