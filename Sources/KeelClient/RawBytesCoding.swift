import GRPCCore

/// Passes already-serialized protobuf bytes through grpc-swift unchanged, so
/// ``GRPCUnaryClient`` can speak ``UnaryClient``'s byte-level contract without
/// decoding and re-encoding every message.
///
/// Thread-safety: stateless; safe to share between tasks.
public struct RawBytesSerializer: MessageSerializer {
    public typealias Message = [UInt8]

    public init() {}

    public func serialize<Bytes: GRPCContiguousBytes>(_ message: [UInt8]) throws -> Bytes {
        Bytes(message)
    }
}

/// Returns a response message's bytes as they came off the wire.
///
/// Thread-safety: stateless; safe to share between tasks.
public struct RawBytesDeserializer: MessageDeserializer {
    public typealias Message = [UInt8]

    public init() {}

    public func deserialize<Bytes: GRPCContiguousBytes>(_ serializedMessageBytes: Bytes) throws -> [UInt8] {
        serializedMessageBytes.withUnsafeBytes { Array($0) }
    }
}
