import KeelAPI
import KeelServing
import NIOCore

/// The kind byte of a frame (docs/PROTOCOL.md, "Frames").
public enum FrameKind: UInt8, Sendable {
    case request = 1
    case response = 2
    case error = 3
}

/// The fixed part of a frame: everything but the payload.
///
/// A value type; safe to share between threads.
public struct FrameHeader: Sendable, Equatable {
    /// Bytes on the wire before the payload: `length` (4) + version, kind, method, request id, timeout (16).
    public static let size = 20
    /// The part of the header counted by `length`.
    public static let lengthCountedSize = 16
    /// The only protocol version there is.
    public static let currentVersion: UInt8 = 1

    /// Bytes following the `length` field: 16 + payload length.
    public var length: UInt32
    public var version: UInt8
    /// The raw kind byte (it may be invalid in a frame read from the network).
    public var kind: UInt8
    /// The raw method id (it may be unknown to this build).
    public var method: UInt16
    public var requestID: UInt64
    /// Requests: the deadline in microseconds from receipt, `0` for the server default.
    public var timeoutMicroseconds: UInt32

    public init(
        length: UInt32, version: UInt8 = FrameHeader.currentVersion, kind: UInt8, method: UInt16,
        requestID: UInt64, timeoutMicroseconds: UInt32 = 0
    ) {
        self.length = length
        self.version = version
        self.kind = kind
        self.method = method
        self.requestID = requestID
        self.timeoutMicroseconds = timeoutMicroseconds
    }

    /// Payload length this header announces, when `length` is at least 16.
    public var payloadLength: Int? {
        length >= UInt32(Self.lengthCountedSize) ? Int(length) - Self.lengthCountedSize : nil
    }
}

extension ByteBuffer {
    /// Reads a 20-byte header if one is complete, without checking any field.
    @inlinable
    mutating func readFrameHeader() -> FrameHeader? {
        guard let (length, version, kind, method, requestID, timeout) =
            self.readMultipleIntegers(as: (UInt32, UInt8, UInt8, UInt16, UInt64, UInt32).self)
        else { return nil }
        return FrameHeader(
            length: length, version: version, kind: kind, method: method,
            requestID: requestID, timeoutMicroseconds: timeout)
    }

    /// Peeks at a complete 20-byte header at the reader index without consuming it.
    @inlinable
    func peekFrameHeader() -> FrameHeader? {
        guard self.readableBytes >= FrameHeader.size else { return nil }
        var copy = self
        return copy.readFrameHeader()
    }

    /// Appends a frame header for a payload of `payloadLength` bytes.
    @inlinable
    mutating func writeFrameHeader(
        kind: FrameKind, method: UInt16, requestID: UInt64, timeoutMicroseconds: UInt32 = 0, payloadLength: Int
    ) {
        self.writeMultipleIntegers(
            UInt32(truncatingIfNeeded: payloadLength + FrameHeader.lengthCountedSize),
            FrameHeader.currentVersion, kind.rawValue, method, requestID, timeoutMicroseconds)
    }
}

/// Encoding and decoding of whole frames and of the error-frame body.
public enum FrameCodec {
    /// A complete frame in a freshly allocated buffer.
    public static func encode(
        kind: FrameKind, method: UInt16, requestID: UInt64, timeoutMicroseconds: UInt32 = 0,
        payload: [UInt8], allocator: ByteBufferAllocator = ByteBufferAllocator()
    ) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: FrameHeader.size + payload.count)
        buffer.writeFrameHeader(
            kind: kind, method: method, requestID: requestID, timeoutMicroseconds: timeoutMicroseconds,
            payloadLength: payload.count)
        buffer.writeBytes(payload)
        return buffer
    }

    /// The payload of an error frame: a serialized `keel.v1.ErrorStatus`.
    public static func errorPayload(_ status: RPCStatus) -> [UInt8] {
        // Serializing a message with an int32 and a string cannot fail; fall back to an
        // empty message (code 0) rather than trap if it ever did.
        (try? status.errorStatus.serializedBytes()) ?? []
    }

    /// A complete error frame.
    public static func encodeError(
        _ status: RPCStatus, method: UInt16, requestID: UInt64,
        allocator: ByteBufferAllocator = ByteBufferAllocator()
    ) -> ByteBuffer {
        encode(kind: .error, method: method, requestID: requestID, payload: errorPayload(status), allocator: allocator)
    }

    /// The status an error frame's payload carries. A payload that does not decode, or a
    /// code this build does not know, becomes `UNKNOWN` with an explanation.
    public static func decodeErrorPayload(_ payload: [UInt8]) -> RPCStatus {
        guard let status = try? Keel_V1_ErrorStatus(serializedBytes: payload) else {
            return RPCStatus(.unknown, "the server sent an error frame whose payload is not a keel.v1.ErrorStatus")
        }
        guard let code = RPCStatusCode(rawValue: status.code) else {
            return RPCStatus(.unknown, "status code \(status.code): \(status.message)")
        }
        return RPCStatus(code, status.message)
    }

    /// A request's `timeout_us` for a timeout: 1 µs ... 2^32-1 µs (about 71 minutes). Zero or
    /// negative timeouts become 1 µs (already expired), since `0` means the server's default.
    public static func timeoutMicroseconds(_ timeout: Duration) -> UInt32 {
        let (seconds, attoseconds) = timeout.components
        if seconds < 0 || (seconds == 0 && attoseconds < 1_000_000_000_000) { return 1 }
        if seconds > Int64(UInt32.max / 1_000_000) { return UInt32.max }
        return UInt32(clamping: seconds * 1_000_000 + attoseconds / 1_000_000_000_000)
    }
}
