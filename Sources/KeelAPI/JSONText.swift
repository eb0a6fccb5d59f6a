/// `text` as a JSON string literal, quotes included (RFC 8259 escaping; U+2028
/// and U+2029 escaped too, so the text is also a valid JavaScript literal).
/// For Keel's hand-written JSON, which keeps a fixed key order that
/// Foundation's encoder does not promise: `keel model inspect`, `keel bench`,
/// the JSON logs and `keel audit export`.
public func jsonQuoted(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where scalar.value < 0x20 || scalar.value == 0x2028 || scalar.value == 0x2029:
            let hex = String(scalar.value, radix: 16)
            out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out + "\""
}
