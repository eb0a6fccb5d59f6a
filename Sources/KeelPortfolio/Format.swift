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
        var out: [UInt8] = []
        out.reserveCapacity(24)
        appendTrimmed(&out, v)
        return String(decoding: out, as: UTF8.self)
    }

    /// ``trimmed(_:)`` appended to `out`, trimmed in place (no `String`
    /// editing: explanations print several numbers per order).
    static func appendTrimmed(_ out: inout [UInt8], _ v: Double) {
        let start = out.count
        append(&out, v, 4)
        let dot = UInt8(ascii: "."), zero = UInt8(ascii: "0")
        guard out[start...].contains(dot), !out[start...].contains(UInt8(ascii: "e")) else { return }
        while out.last == zero { out.removeLast() }
        if out.last == dot { out.removeLast() }
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
        // Digits are written backwards into a stack buffer and appended in
        // one piece (appending byte by byte checks capacity every time).
        // At most 15 integer digits, 4 separators, 4 decimals, '.', '-'.
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 32) { buffer in
            var p = buffer.count
            func put(_ byte: UInt8) { p -= 1; buffer[p] = byte }
            if decimals > 0 {
                for _ in 0..<decimals {
                    put(UInt8(48 + fraction % 10))
                    fraction /= 10
                }
                put(UInt8(ascii: "."))
            }
            var count = 0
            repeat {
                if grouping && count > 0 && count % 3 == 0 { put(UInt8(ascii: ",")) }
                put(UInt8(48 + whole % 10))
                whole /= 10
                count += 1
            } while whole > 0
            if v < 0 && scaled != 0 { put(UInt8(ascii: "-")) }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: buffer[p...]))
        }
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

    mutating func add(_ text: String) {
        var text = text
        text.withUTF8 { bytes.append(contentsOf: $0) }
    }

    /// Empties the text, keeping its storage for the next one.
    mutating func clear() { bytes.removeAll(keepingCapacity: true) }

    /// A percentage with one decimal.
    mutating func percent(_ x: Double) {
        guard x.isFinite else { add("unlimited"); return }
        Format.append(&bytes, x * 100, 1)
        bytes.append(UInt8(ascii: "%"))
    }

    mutating func money(_ v: Double) { Format.append(&bytes, v, 2, grouping: true) }

    mutating func fixed(_ v: Double, _ decimals: Int) { Format.append(&bytes, v, decimals) }

    mutating func integer(_ k: Int) { Format.append(&bytes, Double(k), 0) }

    /// Up to 4 decimals, trailing zeros dropped (``Format/trimmed(_:)``).
    mutating func number(_ v: Double) { Format.appendTrimmed(&bytes, v) }

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
