/// Reading and writing durations as people type them: `500us`, `2ms`, `1s`,
/// `1.5s`, `30s`, `2m`, `250ns`, `1h`.
public enum DurationText {
    /// Parses a non-negative number followed by a unit: `ns`, `us` (or `µs`),
    /// `ms`, `s`, `m` (or `min`), `h`. A unit is required.
    public static func parse(_ text: String) throws(DurationParseError) -> Duration {
        let trimmed = text.trimmingWhitespace()
        let numberEnd = trimmed.firstIndex(where: { !($0.isASCII && ($0.isNumber || $0 == ".")) }) ?? trimmed.endIndex
        let numberText = trimmed[..<numberEnd]
        let unit = trimmed[numberEnd...].lowercased()
        guard !numberText.isEmpty, let value = Double(numberText), value.isFinite, value >= 0 else {
            throw DurationParseError(text: text, reason: "expected a non-negative number followed by a unit, e.g. 500us, 2ms, 1s")
        }
        let nanosPerUnit: Double
        switch unit {
        case "ns": nanosPerUnit = 1
        case "us", "µs", "μs": nanosPerUnit = 1e3
        case "ms": nanosPerUnit = 1e6
        case "s": nanosPerUnit = 1e9
        case "m", "min": nanosPerUnit = 60e9
        case "h": nanosPerUnit = 3600e9
        case "": throw DurationParseError(text: text, reason: "missing unit (ns, us, ms, s, m, h)")
        default: throw DurationParseError(text: text, reason: "unknown unit '\(unit)' (use ns, us, ms, s, m or h)")
        }
        let nanos = (value * nanosPerUnit).rounded()
        guard nanos < 1e18 else { throw DurationParseError(text: text, reason: "too long") }
        return .nanoseconds(Int64(nanos))
    }

    /// A short human form: `850ns`, `12.3us`, `4.56ms`, `1.23s`.
    public static func format(_ duration: Duration) -> String {
        format(nanoseconds: Double(duration.nanoseconds))
    }

    public static func format(nanoseconds n: Double) -> String {
        let a = abs(n)
        if a < 1e3 { return "\(Int(n.rounded()))ns" }
        if a < 1e6 { return trim(n / 1e3) + "us" }
        if a < 1e9 { return trim(n / 1e6) + "ms" }
        return trim(n / 1e9) + "s"
    }

    /// Three significant digits, without trailing zeros.
    private static func trim(_ v: Double) -> String {
        let digits = abs(v) >= 100 ? 0 : abs(v) >= 10 ? 1 : 2
        var s = fixed(v, digits: digits)
        if s.contains(".") {
            while s.hasSuffix("0") { s.removeLast() }
            if s.hasSuffix(".") { s.removeLast() }
        }
        return s
    }
}

public struct DurationParseError: Error, Sendable, CustomStringConvertible {
    public var text: String
    public var reason: String
    public var description: String { "invalid duration '\(text)': \(reason)" }
}

extension Duration {
    /// Whole nanoseconds, saturating (Keel's durations are far below 292 years).
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        return scaled &+ attoseconds / 1_000_000_000
    }
}

extension String {
    func trimmingWhitespace() -> Substring {
        var s = self[...]
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return s
    }
}

/// `v` with exactly `digits` decimals, without Foundation.
func fixed(_ v: Double, digits: Int) -> String {
    guard v.isFinite else { return v.isNaN ? "0" : (v > 0 ? "1e308" : "-1e308") }
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let scaled = (abs(v) * scale).rounded()
    guard scaled < 9e18 else { return "\(v)" }
    let whole = UInt64(scaled)
    let intPart = whole / UInt64(scale)
    let fracPart = whole % UInt64(scale)
    var text = (v < 0 && whole != 0 ? "-" : "") + String(intPart)
    if digits > 0 {
        var frac = String(fracPart)
        while frac.count < digits { frac = "0" + frac }
        text += "." + frac
    }
    return text
}
