import Foundation
import SwiftProtobuf

// Protobuf binary coding for the hot messages, specialised at compile time.
//
// Why: swift-protobuf's `init(serializedBytes:)` and `serializedBytes()` run
// the generated `decodeMessage`/`traverse` unspecialised (its binary decoder
// and encoder are internal to SwiftProtobuf, so the generic methods are
// reached through witness tables, with generic metadata looked up at run
// time on every nested message), and its encoder sizes every nested message
// once per level of nesting. For a 100-asset RebalanceRequest (15 KB) that
// was 60 us to decode; the RebalanceResponse (14 KB) took 42 us to encode.
//
// Here the decoder and the encoding visitor are Keel's own types, in the
// module of the generated messages, so the optimiser specialises the whole
// tree for the concrete message types named by the public entry points
// below. Nested lengths are back-patched, so each message is visited once.
//
// Contract: the bytes and messages are exactly swift-protobuf's.
// - Decoding handles the field kinds Keel's protos use (double, float,
//   int32/64, uint32/64, bool, string, open enums, messages; repeated ones
//   packed or not). Anything else (unknown fields, which swift-protobuf keeps;
//   a wire type that does not match the field; maps, bytes, groups,
//   extensions; malformed or truncated input; invalid UTF-8; nesting over
//   100) makes the fast path give up, and swift-protobuf decodes the bytes
//   from the start: the same message, or its own error.
// - Encoding writes the same bytes as `serializedBytes()` (tested); a field
//   kind it does not handle falls back to `serializedBytes()`.

/// The fast path gave up; swift-protobuf takes over.
struct FastPathUnsupported: Error {}

// MARK: - Public entry points (concrete types, so they specialise)

extension Keel_V1_RebalanceRequest {
    /// Decodes like `init(serializedBytes:)` (same message, same errors), faster.
    public init(fastSerializedBytes bytes: [UInt8]) throws {
        self = try FastBinaryCodec.decode(Self.self, bytes)
    }
}

extension Keel_V1_RebalanceResponse {
    /// The same bytes as `serializedBytes()`, faster.
    public func fastSerializedBytes() throws -> [UInt8] { try FastBinaryCodec.encode(self) }
}

extension Keel_V1_DecisionRecord {
    /// The same bytes as `serializedBytes()`, faster.
    public func fastSerializedBytes() throws -> [UInt8] { try FastBinaryCodec.encode(self) }
}

enum FastBinaryCodec {
    /// Decodes with the fast decoder; on anything it does not handle, with
    /// swift-protobuf (which gives the same message or throws its error).
    @inline(__always)
    static func decode<M: Message>(_ type: M.Type, _ bytes: [UInt8]) throws -> M {
        if let message = fastDecode(M.self, bytes) { return message }
        return try M(serializedBytes: bytes)
    }

    /// The fast path alone: nil when it gives up (tests compare both paths).
    static func fastDecode<M: Message>(_ type: M.Type, _ bytes: [UInt8]) -> M? {
        bytes.withUnsafeBytes { raw -> M? in
            var decoder = FastBinaryDecoder(raw, start: 0, end: raw.count, depth: 0)
            var message = M()
            do {
                try message.decodeMessage(decoder: &decoder)
                return decoder.finished ? message : nil
            } catch {
                return nil
            }
        }
    }

    @inline(__always)
    static func encode<M: Message>(_ message: M) throws -> [UInt8] {
        if let bytes = fastEncode(message) { return bytes }
        return try message.serializedBytes()
    }

    /// The fast path alone: nil when the message has a field kind it does not encode.
    static func fastEncode<M: Message>(_ message: M) -> [UInt8]? {
        var visitor = FastBinaryEncoder()
        do {
            try message.traverse(visitor: &visitor)
        } catch {
            return nil
        }
        return visitor.bytes
    }
}

// MARK: - Decoder

/// Reads one message's bytes in `[position, end)` of a buffer that outlives it.
struct FastBinaryDecoder: SwiftProtobuf.Decoder {
    private let base: UnsafeRawBufferPointer
    private var position: Int
    private let end: Int
    private let depth: Int
    /// The wire type of the field `nextFieldNumber` returned.
    private var wireType: UInt8 = 0
    /// Whether that field was read (false: unknown to the message, or of another kind).
    private var consumed = true
    /// True once `nextFieldNumber` has reached the end cleanly.
    private(set) var finished = false

    static let maxDepth = 100  // swift-protobuf's default messageDepthLimit

    init(_ base: UnsafeRawBufferPointer, start: Int, end: Int, depth: Int) {
        self.base = base
        self.position = start
        self.end = end
        self.depth = depth
    }

    // MARK: Primitives

    @inline(__always)
    private mutating func varint() throws -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while position < end {
            let byte = base[position]
            position += 1
            if shift == 63 && byte > 1 { throw FastPathUnsupported() }
            result |= UInt64(byte & 0x7F) << shift
            if byte < 0x80 { return result }
            shift += 7
            if shift > 63 { throw FastPathUnsupported() }
        }
        throw FastPathUnsupported()
    }

    @inline(__always)
    private mutating func fixed64() throws -> UInt64 {
        guard end - position >= 8 else { throw FastPathUnsupported() }
        let v = base.loadUnaligned(fromByteOffset: position, as: UInt64.self)
        position += 8
        return UInt64(littleEndian: v)
    }

    @inline(__always)
    private mutating func fixed32() throws -> UInt32 {
        guard end - position >= 4 else { throw FastPathUnsupported() }
        let v = base.loadUnaligned(fromByteOffset: position, as: UInt32.self)
        position += 4
        return UInt32(littleEndian: v)
    }

    /// The payload range of a length-delimited field.
    @inline(__always)
    private mutating func delimited() throws -> Range<Int> {
        let length = try varint()
        guard length <= UInt64(end - position) else { throw FastPathUnsupported() }
        let start = position
        position += Int(length)
        return start..<position
    }

    @inline(__always)
    private mutating func expect(_ wire: UInt8) throws {
        guard wireType == wire else { throw FastPathUnsupported() }
        consumed = true
    }

    /// Reads a singular value of `wire` type, or a repeated field's values
    /// (packed in one length-delimited run, or one unpacked value).
    @inline(__always)
    private mutating func repeated<T>(_ wire: UInt8, _ values: inout [T], _ read: (inout Self) throws -> T) throws {
        if wireType == 2 {
            consumed = true
            let range = try delimited()
            var packed = FastBinaryDecoder(base, start: range.lowerBound, end: range.upperBound, depth: depth)
            while packed.position < packed.end { values.append(try read(&packed)) }
        } else {
            try expect(wire)
            values.append(try read(&self))
        }
    }

    private mutating func string() throws -> String {
        let range = try delimited()
        let slice = UnsafeRawBufferPointer(rebasing: base[range]).assumingMemoryBound(to: UInt8.self)
        // ASCII is valid UTF-8 as it is; `String(validating:as:)` runs
        // unspecialised (generic metadata lookups), so only other text takes it.
        var ascii = true
        for byte in slice where byte >= 0x80 {
            ascii = false
            break
        }
        if ascii { return String(decoding: slice, as: UTF8.self) }
        guard let text = String(validating: slice, as: UTF8.self) else { throw FastPathUnsupported() }
        return text
    }

    // MARK: Decoder

    mutating func handleConflictingOneOf() throws {}

    mutating func nextFieldNumber() throws -> Int? {
        guard consumed else { throw FastPathUnsupported() }
        if position == end {
            finished = true
            return nil
        }
        let tag = try varint()
        let field = tag >> 3
        let wire = UInt8(tag & 7)
        guard field > 0, field <= 0x1FFF_FFFF, wire == 0 || wire == 1 || wire == 2 || wire == 5 else {
            throw FastPathUnsupported()
        }
        wireType = wire
        consumed = false
        return Int(field)
    }

    mutating func decodeSingularDoubleField(value: inout Double) throws {
        try expect(1)
        value = Double(bitPattern: try fixed64())
    }
    mutating func decodeSingularDoubleField(value: inout Double?) throws {
        try expect(1)
        value = Double(bitPattern: try fixed64())
    }
    mutating func decodeRepeatedDoubleField(value: inout [Double]) throws {
        try repeated(1, &value) { Double(bitPattern: try $0.fixed64()) }
    }

    mutating func decodeSingularFloatField(value: inout Float) throws {
        try expect(5)
        value = Float(bitPattern: try fixed32())
    }
    mutating func decodeSingularFloatField(value: inout Float?) throws {
        try expect(5)
        value = Float(bitPattern: try fixed32())
    }
    mutating func decodeRepeatedFloatField(value: inout [Float]) throws {
        try repeated(5, &value) { Float(bitPattern: try $0.fixed32()) }
    }

    mutating func decodeSingularInt32Field(value: inout Int32) throws {
        try expect(0)
        value = Int32(truncatingIfNeeded: try varint())
    }
    mutating func decodeSingularInt32Field(value: inout Int32?) throws {
        try expect(0)
        value = Int32(truncatingIfNeeded: try varint())
    }
    mutating func decodeRepeatedInt32Field(value: inout [Int32]) throws {
        try repeated(0, &value) { Int32(truncatingIfNeeded: try $0.varint()) }
    }

    mutating func decodeSingularInt64Field(value: inout Int64) throws {
        try expect(0)
        value = Int64(bitPattern: try varint())
    }
    mutating func decodeSingularInt64Field(value: inout Int64?) throws {
        try expect(0)
        value = Int64(bitPattern: try varint())
    }
    mutating func decodeRepeatedInt64Field(value: inout [Int64]) throws {
        try repeated(0, &value) { Int64(bitPattern: try $0.varint()) }
    }

    mutating func decodeSingularUInt32Field(value: inout UInt32) throws {
        try expect(0)
        value = UInt32(truncatingIfNeeded: try varint())
    }
    mutating func decodeSingularUInt32Field(value: inout UInt32?) throws {
        try expect(0)
        value = UInt32(truncatingIfNeeded: try varint())
    }
    mutating func decodeRepeatedUInt32Field(value: inout [UInt32]) throws {
        try repeated(0, &value) { UInt32(truncatingIfNeeded: try $0.varint()) }
    }

    mutating func decodeSingularUInt64Field(value: inout UInt64) throws {
        try expect(0)
        value = try varint()
    }
    mutating func decodeSingularUInt64Field(value: inout UInt64?) throws {
        try expect(0)
        value = try varint()
    }
    mutating func decodeRepeatedUInt64Field(value: inout [UInt64]) throws {
        try repeated(0, &value) { try $0.varint() }
    }

    mutating func decodeSingularBoolField(value: inout Bool) throws {
        try expect(0)
        value = try varint() != 0
    }
    mutating func decodeSingularBoolField(value: inout Bool?) throws {
        try expect(0)
        value = try varint() != 0
    }
    mutating func decodeRepeatedBoolField(value: inout [Bool]) throws {
        try repeated(0, &value) { try $0.varint() != 0 }
    }

    mutating func decodeSingularStringField(value: inout String) throws {
        try expect(2)
        value = try string()
    }
    mutating func decodeSingularStringField(value: inout String?) throws {
        try expect(2)
        value = try string()
    }
    mutating func decodeRepeatedStringField(value: inout [String]) throws {
        try expect(2)
        value.append(try string())
    }

    @inline(__always)
    private mutating func enumValue<E: Enum>(_ type: E.Type) throws -> E where E.RawValue == Int {
        // As swift-protobuf: the low 32 bits, sign-extended; a value the enum
        // cannot hold stays an unknown field there, so the fast path gives up.
        guard let v = E(rawValue: Int(Int32(truncatingIfNeeded: try varint()))) else { throw FastPathUnsupported() }
        return v
    }
    mutating func decodeSingularEnumField<E: Enum>(value: inout E) throws where E.RawValue == Int {
        try expect(0)
        value = try enumValue(E.self)
    }
    mutating func decodeSingularEnumField<E: Enum>(value: inout E?) throws where E.RawValue == Int {
        try expect(0)
        value = try enumValue(E.self)
    }
    mutating func decodeRepeatedEnumField<E: Enum>(value: inout [E]) throws where E.RawValue == Int {
        try repeated(0, &value) { try $0.enumValue(E.self) }
    }

    /// Decodes the current length-delimited field into `message` (merging, as
    /// protobuf does for a repeated occurrence of a singular message field).
    @inline(__always)
    private mutating func merge<M: Message>(into message: inout M) throws {
        try expect(2)
        guard depth < Self.maxDepth else { throw FastPathUnsupported() }
        let range = try delimited()
        var inner = FastBinaryDecoder(base, start: range.lowerBound, end: range.upperBound, depth: depth + 1)
        try message.decodeMessage(decoder: &inner)
        guard inner.finished else { throw FastPathUnsupported() }
    }
    mutating func decodeSingularMessageField<M: Message>(value: inout M?) throws {
        var message = value ?? M()
        try merge(into: &message)
        value = message
    }
    mutating func decodeRepeatedMessageField<M: Message>(value: inout [M]) throws {
        var message = M()
        try merge(into: &message)
        value.append(message)
    }

    // Kinds Keel's protos do not use on the hot path: swift-protobuf decodes them.
    mutating func decodeSingularSInt32Field(value: inout Int32) throws { throw FastPathUnsupported() }
    mutating func decodeSingularSInt32Field(value: inout Int32?) throws { throw FastPathUnsupported() }
    mutating func decodeRepeatedSInt32Field(value: inout [Int32]) throws { throw FastPathUnsupported() }
    mutating func decodeSingularSInt64Field(value: inout Int64) throws { throw FastPathUnsupported() }
    mutating func decodeSingularSInt64Field(value: inout Int64?) throws { throw FastPathUnsupported() }
    mutating func decodeRepeatedSInt64Field(value: inout [Int64]) throws { throw FastPathUnsupported() }
    mutating func decodeSingularFixed32Field(value: inout UInt32) throws { throw FastPathUnsupported() }
    mutating func decodeSingularFixed32Field(value: inout UInt32?) throws { throw FastPathUnsupported() }
    mutating func decodeRepeatedFixed32Field(value: inout [UInt32]) throws { throw FastPathUnsupported() }
    mutating func decodeSingularFixed64Field(value: inout UInt64) throws { throw FastPathUnsupported() }
    mutating func decodeSingularFixed64Field(value: inout UInt64?) throws { throw FastPathUnsupported() }
    mutating func decodeRepeatedFixed64Field(value: inout [UInt64]) throws { throw FastPathUnsupported() }
    mutating func decodeSingularSFixed32Field(value: inout Int32) throws { throw FastPathUnsupported() }
    mutating func decodeSingularSFixed32Field(value: inout Int32?) throws { throw FastPathUnsupported() }
    mutating func decodeRepeatedSFixed32Field(value: inout [Int32]) throws { throw FastPathUnsupported() }
    mutating func decodeSingularSFixed64Field(value: inout Int64) throws { throw FastPathUnsupported() }
    mutating func decodeSingularSFixed64Field(value: inout Int64?) throws { throw FastPathUnsupported() }
    mutating func decodeRepeatedSFixed64Field(value: inout [Int64]) throws { throw FastPathUnsupported() }
    mutating func decodeSingularBytesField(value: inout Data) throws { throw FastPathUnsupported() }
    mutating func decodeSingularBytesField(value: inout Data?) throws { throw FastPathUnsupported() }
    mutating func decodeRepeatedBytesField(value: inout [Data]) throws { throw FastPathUnsupported() }
    mutating func decodeSingularGroupField<G: Message>(value: inout G?) throws { throw FastPathUnsupported() }
    mutating func decodeRepeatedGroupField<G: Message>(value: inout [G]) throws { throw FastPathUnsupported() }
    mutating func decodeMapField<KeyType, ValueType: MapValueType>(
        fieldType: _ProtobufMap<KeyType, ValueType>.Type, value: inout _ProtobufMap<KeyType, ValueType>.BaseType
    ) throws { throw FastPathUnsupported() }
    mutating func decodeMapField<KeyType, ValueType>(
        fieldType: _ProtobufEnumMap<KeyType, ValueType>.Type, value: inout _ProtobufEnumMap<KeyType, ValueType>.BaseType
    ) throws where ValueType.RawValue == Int { throw FastPathUnsupported() }
    mutating func decodeMapField<KeyType, ValueType>(
        fieldType: _ProtobufMessageMap<KeyType, ValueType>.Type,
        value: inout _ProtobufMessageMap<KeyType, ValueType>.BaseType
    ) throws { throw FastPathUnsupported() }
    mutating func decodeExtensionField(values: inout ExtensionFieldValueSet, messageType: any Message.Type,
                                       fieldNumber: Int) throws { throw FastPathUnsupported() }
}

// MARK: - Encoder

/// Writes a message's fields in `traverse` order, as swift-protobuf's binary
/// encoder does; a nested message's length is patched in after its fields.
struct FastBinaryEncoder: SwiftProtobuf.Visitor {
    private(set) var bytes: [UInt8] = []

    init() { bytes.reserveCapacity(4096) }

    @inline(__always)
    private mutating func varint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    @inline(__always)
    private mutating func tag(_ fieldNumber: Int, _ wire: UInt64) {
        varint(UInt64(fieldNumber) << 3 | wire)
    }

    @inline(__always)
    private mutating func fixed64(_ value: UInt64) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    @inline(__always)
    private mutating func fixed32(_ value: UInt32) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    /// Writes `body` as a length-delimited payload: one byte is reserved for
    /// the length, and the payload moves when its length needs more.
    @inline(__always)
    private mutating func delimited(_ body: (inout Self) throws -> Void) rethrows {
        bytes.append(0)
        let start = bytes.count
        try body(&self)
        let length = bytes.count - start
        if length < 0x80 {
            bytes[start - 1] = UInt8(length)
            return
        }
        // Make room for the longer length (the payload moves), then write it.
        var size = 1
        while length >> (7 * size) != 0 { size += 1 }
        bytes.insert(contentsOf: repeatElement(0, count: size - 1), at: start)
        var v = length
        for i in 0..<size {
            bytes[start - 1 + i] = UInt8(truncatingIfNeeded: v) | (i < size - 1 ? 0x80 : 0)
            v >>= 7
        }
    }

    mutating func visitUnknown(bytes unknown: Data) throws { bytes.append(contentsOf: unknown) }

    mutating func visitSingularDoubleField(value: Double, fieldNumber: Int) throws {
        tag(fieldNumber, 1)
        fixed64(value.bitPattern)
    }
    mutating func visitSingularFloatField(value: Float, fieldNumber: Int) throws {
        tag(fieldNumber, 5)
        fixed32(value.bitPattern)
    }
    mutating func visitSingularInt64Field(value: Int64, fieldNumber: Int) throws {
        tag(fieldNumber, 0)
        varint(UInt64(bitPattern: value))
    }
    mutating func visitSingularInt32Field(value: Int32, fieldNumber: Int) throws {
        tag(fieldNumber, 0)
        varint(UInt64(bitPattern: Int64(value)))
    }
    mutating func visitSingularUInt64Field(value: UInt64, fieldNumber: Int) throws {
        tag(fieldNumber, 0)
        varint(value)
    }
    mutating func visitSingularUInt32Field(value: UInt32, fieldNumber: Int) throws {
        tag(fieldNumber, 0)
        varint(UInt64(value))
    }
    mutating func visitSingularBoolField(value: Bool, fieldNumber: Int) throws {
        tag(fieldNumber, 0)
        bytes.append(value ? 1 : 0)
    }
    mutating func visitSingularStringField(value: String, fieldNumber: Int) throws {
        tag(fieldNumber, 2)
        var text = value
        text.withUTF8 { utf8 in
            varint(UInt64(utf8.count))
            bytes.append(contentsOf: utf8)
        }
    }
    mutating func visitSingularEnumField<E: Enum>(value: E, fieldNumber: Int) throws {
        tag(fieldNumber, 0)
        varint(UInt64(bitPattern: Int64(value.rawValue)))
    }
    mutating func visitSingularMessageField<M: Message>(value: M, fieldNumber: Int) throws {
        tag(fieldNumber, 2)
        try delimited { try value.traverse(visitor: &$0) }
    }
    mutating func visitRepeatedMessageField<M: Message>(value: [M], fieldNumber: Int) throws {
        for message in value {
            tag(fieldNumber, 2)
            try delimited { try message.traverse(visitor: &$0) }
        }
    }
    mutating func visitRepeatedStringField(value: [String], fieldNumber: Int) throws {
        for text in value { try visitSingularStringField(value: text, fieldNumber: fieldNumber) }
    }

    @inline(__always)
    private mutating func packed<T>(_ values: [T], _ fieldNumber: Int, _ write: (inout Self, T) -> Void) {
        tag(fieldNumber, 2)
        delimited { encoder in for v in values { write(&encoder, v) } }
    }
    mutating func visitPackedDoubleField(value: [Double], fieldNumber: Int) throws {
        packed(value, fieldNumber) { $0.fixed64($1.bitPattern) }
    }
    mutating func visitPackedFloatField(value: [Float], fieldNumber: Int) throws {
        packed(value, fieldNumber) { $0.fixed32($1.bitPattern) }
    }
    mutating func visitPackedInt64Field(value: [Int64], fieldNumber: Int) throws {
        packed(value, fieldNumber) { $0.varint(UInt64(bitPattern: $1)) }
    }
    mutating func visitPackedInt32Field(value: [Int32], fieldNumber: Int) throws {
        packed(value, fieldNumber) { $0.varint(UInt64(bitPattern: Int64($1))) }
    }
    mutating func visitPackedUInt64Field(value: [UInt64], fieldNumber: Int) throws {
        packed(value, fieldNumber) { $0.varint($1) }
    }
    mutating func visitPackedUInt32Field(value: [UInt32], fieldNumber: Int) throws {
        packed(value, fieldNumber) { $0.varint(UInt64($1)) }
    }
    mutating func visitPackedBoolField(value: [Bool], fieldNumber: Int) throws {
        packed(value, fieldNumber) { $0.bytes.append($1 ? 1 : 0) }
    }
    mutating func visitPackedEnumField<E: Enum>(value: [E], fieldNumber: Int) throws {
        packed(value, fieldNumber) { $0.varint(UInt64(bitPattern: Int64($1.rawValue))) }
    }

    // Kinds Keel's hot messages do not use: swift-protobuf encodes the message.
    mutating func visitSingularSInt32Field(value: Int32, fieldNumber: Int) throws { throw FastPathUnsupported() }
    mutating func visitSingularSInt64Field(value: Int64, fieldNumber: Int) throws { throw FastPathUnsupported() }
    mutating func visitSingularFixed32Field(value: UInt32, fieldNumber: Int) throws { throw FastPathUnsupported() }
    mutating func visitSingularFixed64Field(value: UInt64, fieldNumber: Int) throws { throw FastPathUnsupported() }
    mutating func visitSingularSFixed32Field(value: Int32, fieldNumber: Int) throws { throw FastPathUnsupported() }
    mutating func visitSingularSFixed64Field(value: Int64, fieldNumber: Int) throws { throw FastPathUnsupported() }
    mutating func visitSingularBytesField(value: Data, fieldNumber: Int) throws { throw FastPathUnsupported() }
    mutating func visitSingularGroupField<G: Message>(value: G, fieldNumber: Int) throws { throw FastPathUnsupported() }
    mutating func visitRepeatedGroupField<G: Message>(value: [G], fieldNumber: Int) throws {
        throw FastPathUnsupported()
    }
    mutating func visitRepeatedBytesField(value: [Data], fieldNumber: Int) throws { throw FastPathUnsupported() }
    mutating func visitPackedSInt32Field(value: [Int32], fieldNumber: Int) throws { throw FastPathUnsupported() }
    mutating func visitPackedSInt64Field(value: [Int64], fieldNumber: Int) throws { throw FastPathUnsupported() }
    mutating func visitPackedFixed32Field(value: [UInt32], fieldNumber: Int) throws { throw FastPathUnsupported() }
    mutating func visitPackedFixed64Field(value: [UInt64], fieldNumber: Int) throws { throw FastPathUnsupported() }
    mutating func visitPackedSFixed32Field(value: [Int32], fieldNumber: Int) throws { throw FastPathUnsupported() }
    mutating func visitPackedSFixed64Field(value: [Int64], fieldNumber: Int) throws { throw FastPathUnsupported() }
    mutating func visitMapField<KeyType, ValueType: MapValueType>(
        fieldType: _ProtobufMap<KeyType, ValueType>.Type, value: _ProtobufMap<KeyType, ValueType>.BaseType,
        fieldNumber: Int
    ) throws { throw FastPathUnsupported() }
    mutating func visitMapField<KeyType, ValueType>(
        fieldType: _ProtobufEnumMap<KeyType, ValueType>.Type, value: _ProtobufEnumMap<KeyType, ValueType>.BaseType,
        fieldNumber: Int
    ) throws where ValueType.RawValue == Int { throw FastPathUnsupported() }
    mutating func visitMapField<KeyType, ValueType>(
        fieldType: _ProtobufMessageMap<KeyType, ValueType>.Type,
        value: _ProtobufMessageMap<KeyType, ValueType>.BaseType, fieldNumber: Int
    ) throws { throw FastPathUnsupported() }
    mutating func visitExtensionFields(fields: ExtensionFieldValueSet, start: Int, end: Int) throws {
        throw FastPathUnsupported()
    }
}
