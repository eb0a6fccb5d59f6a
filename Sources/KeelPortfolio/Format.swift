/// Number formatting for explanations and summaries, with integer
/// arithmetic (Double's description is slow and prints exponents).
public enum Format {
    private static let powers = [1, 10, 100, 1_000, 10_000]

    /// `v` with `decimals` (0...4) digits after the point, and thousands
    /// separators when `grouping`. Values beyond ±1e15 print as Double does.
    public static func fixed(_ v: Double, _ decimals: Int, grouping: Bool = false) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(28)
        append(&out, v, decimals, grouping: grouping)
        return String(decoding: out, as: UTF8.self)
    }

    /// An amount of money: two decimals, thousands separators.
    public static func money(_ v: Double) -> String { fixed(v, 2, grouping: true) }

    /// Up to 4 decimals, trailing zeros dropped ("-2", "0.125", "nan").
    public static func trimmed(_ v: Double) -> String {
        var s = fixed(v, 4)
        guard s.contains("."), !s.contains("e") else { return s }
        while s.hasSuffix("0") { s.removeLast() }
        if s.hasSuffix(".") { s.removeLast() }
        return s
    }

    /// ``fixed(_:_:grouping:)`` appended to `out`.
    static func append(_ out: inout [UInt8], _ v: Double, _ decimals: Int, grouping: Bool = false) {
        let decimals = min(4, max(0, decimals))
        let scale = powers[decimals]
        // Beyond 1e15 (or where the scaled value would not fit an Int) print as Double does.
        guard v.isFinite, abs(v) < 1e15, abs(v) * Double(scale) < 9e18 else {
            out.append(contentsOf: String(v).utf8)
            return
        }
        let scaled = Int((abs(v) * Double(scale)).rounded())
        var whole = scaled / scale
        var fraction = scaled % scale
        let start = out.count
        if decimals > 0 {
            for _ in 0..<decimals {
                out.append(UInt8(48 + fraction % 10))
                fraction /= 10
            }
            out.append(UInt8(ascii: "."))
        }
        var count = 0
        repeat {
            if grouping && count > 0 && count % 3 == 0 { out.append(UInt8(ascii: ",")) }
            out.append(UInt8(48 + whole % 10))
            whole /= 10
            count += 1
        } while whole > 0
        if v < 0 && scaled != 0 { out.append(UInt8(ascii: "-")) }
        out[start...].reverse()
    }
}

/// Text assembled as UTF-8 bytes: one allocation per text instead of one
/// per piece (explanations are written for every order of every decision).
struct TextBuilder {
    var bytes: [UInt8] = []

    init(capacity: Int = 256) { bytes.reserveCapacity(capacity) }

    mutating func add(_ text: StaticString) {
        text.withUTF8Buffer { bytes.append(contentsOf: $0) }
    }

    mutating func add(_ text: String) { bytes.append(contentsOf: text.utf8) }

    /// A percentage with one decimal.
    mutating func percent(_ x: Double) {
        guard x.isFinite else { add("unlimited"); return }
        Format.append(&bytes, x * 100, 1)
        bytes.append(UInt8(ascii: "%"))
    }

    mutating func money(_ v: Double) { Format.append(&bytes, v, 2, grouping: true) }

    mutating func fixed(_ v: Double, _ decimals: Int) { Format.append(&bytes, v, decimals) }

    var text: String { String(decoding: bytes, as: UTF8.self) }
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
