/// The few bytes of protobuf wire format the server writes by hand: appending
/// a length-delimited field (a string, bytes or an embedded message) to an
/// encoded message. Appending a field to a message's bytes is the same as
/// setting it (https://protobuf.dev/programming-guides/encoding/#optional).
enum ProtobufWire {
    static func appendVarint(_ out: inout [UInt8], _ value: UInt64) {
        var v = value
        while v >= 0x80 {
            out.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        out.append(UInt8(v))
    }

    /// Appends field `field` (wire type 2) holding `bytes`.
    static func appendLengthDelimited(_ out: inout [UInt8], field: Int, _ bytes: [UInt8]) {
        appendVarint(&out, UInt64(field) << 3 | 2)
        appendVarint(&out, UInt64(bytes.count))
        out.append(contentsOf: bytes)
    }
}
