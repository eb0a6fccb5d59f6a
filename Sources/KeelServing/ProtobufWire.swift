/// The few bytes of protobuf wire format the server handles by hand:
/// appending a length-delimited field (a string, bytes or an embedded
/// message) to an encoded message, and copying embedded messages out of one
/// encoded message into another. Appending a field to a message's bytes is
/// the same as setting it, and repeated occurrences of an embedded message
/// merge (https://protobuf.dev/programming-guides/encoding/#optional).
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

    /// Reads a varint at `i`, advancing it; nil when truncated or longer than 10 bytes.
    static func readVarint(_ bytes: [UInt8], _ i: inout Int) -> UInt64? {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while i < bytes.count && shift < 70 {
            let b = bytes[i]
            i += 1
            value |= UInt64(b & 0x7f) << shift
            if b < 0x80 { return value }
            shift += 7
        }
        return nil
    }

    /// Appends to `out`, for every top-level length-delimited field of
    /// `message` whose number is a key of `renumber`, the same bytes as
    /// field `renumber[number]`: the embedded message copied without decoding
    /// and re-encoding it. Returns false (and leaves `out` as it was) when
    /// `message` is not well-formed wire format.
    static func copyFields(from message: [UInt8], renumber: [Int: Int], into out: inout [UInt8]) -> Bool {
        let start = out.count
        var i = 0
        while i < message.count {
            guard let key = readVarint(message, &i), key >> 3 > 0, key >> 3 <= 536_870_911 else {
                out.removeSubrange(start...)
                return false
            }
            let field = Int(key >> 3)
            let skipped: Bool
            switch key & 7 {
            case 0: skipped = readVarint(message, &i) != nil
            case 1: i += 8; skipped = i <= message.count
            case 5: i += 4; skipped = i <= message.count
            case 2:
                guard let length = readVarint(message, &i), length <= UInt64(message.count - i) else {
                    out.removeSubrange(start...)
                    return false
                }
                let end = i + Int(length)
                if let target = renumber[field] {
                    appendVarint(&out, UInt64(target) << 3 | 2)
                    appendVarint(&out, length)
                    out.append(contentsOf: message[i..<end])
                }
                i = end
                skipped = true
            default: skipped = false  // groups (3, 4) are not used by proto3 messages
            }
            guard skipped else {
                out.removeSubrange(start...)
                return false
            }
        }
        return true
    }
}
