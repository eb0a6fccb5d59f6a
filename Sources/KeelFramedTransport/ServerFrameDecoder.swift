import KeelServing
import NIOCore

/// What the server's decoder hands the connection handler.
enum ServerInboundFrame {
    /// A well-formed request frame. `method` is the raw id (it may be unknown);
    /// `receivedAt` is when its header was read (deadlines count from there).
    case request(method: UInt16, requestID: UInt64, timeoutMicroseconds: UInt32, receivedAt: ContinuousClock.Instant, payload: [UInt8])
    /// The stream is broken: answer with this error frame, then close the connection.
    case fatal(method: UInt16, requestID: UInt64, status: RPCStatus)
}

/// Splits the byte stream of a client connection into request frames and validates
/// each header (docs/PROTOCOL.md, "Errors in the stream itself"). After a fatal
/// error it emits nothing more and discards every later byte: the connection handler
/// closes the connection.
///
/// Not thread-safe: lives in one channel pipeline, used on its event loop only.
struct ServerFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = ServerInboundFrame

    /// Largest payload accepted.
    let maxPayloadBytes: Int
    private var failed = false
    /// When the header of a frame still waiting for its payload was read.
    private var headerReadAt: ContinuousClock.Instant?

    init(maxPayloadBytes: Int) {
        self.maxPayloadBytes = maxPayloadBytes
    }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if self.failed {
            buffer.moveReaderIndex(to: buffer.writerIndex)
            return .needMoreData
        }
        // A length below 16 can be refused as soon as the length field is in.
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return .needMoreData }
        if length < UInt32(FrameHeader.lengthCountedSize) {
            return self.fail(
                context: context, buffer: &buffer, method: 0, requestID: 0,
                RPCStatus(.invalidArgument, "frame length \(length) is below the minimum of 16"))
        }
        guard let header = buffer.peekFrameHeader() else { return .needMoreData }
        if header.version != FrameHeader.currentVersion {
            return self.fail(
                context: context, buffer: &buffer, method: header.method, requestID: header.requestID,
                RPCStatus(.invalidArgument, "unsupported protocol version \(header.version) (this server speaks version 1)"))
        }
        if header.kind != FrameKind.request.rawValue {
            return self.fail(
                context: context, buffer: &buffer, method: header.method, requestID: header.requestID,
                RPCStatus(.invalidArgument, "frame kind \(header.kind) from a client (only 1, request, is allowed)"))
        }
        let payloadLength = Int(length) - FrameHeader.lengthCountedSize
        if payloadLength > self.maxPayloadBytes {
            return self.fail(
                context: context, buffer: &buffer, method: header.method, requestID: header.requestID,
                RPCStatus(.resourceExhausted, "frame payload of \(payloadLength) bytes exceeds the maximum of \(self.maxPayloadBytes)"))
        }
        guard buffer.readableBytes >= FrameHeader.size + payloadLength else {
            if self.headerReadAt == nil { self.headerReadAt = .now }
            return .needMoreData
        }
        let receivedAt = self.headerReadAt ?? .now
        self.headerReadAt = nil
        buffer.moveReaderIndex(forwardBy: FrameHeader.size)
        // readBytes cannot fail: the length was checked above.
        let payload = buffer.readBytes(length: payloadLength) ?? []
        context.fireChannelRead(
            Self.wrapInboundOut(
                .request(
                    method: header.method, requestID: header.requestID,
                    timeoutMicroseconds: header.timeoutMicroseconds, receivedAt: receivedAt, payload: payload)))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try self.decode(context: context, buffer: &buffer) == .continue {}
        // A frame cut short by the peer closing is dropped (docs/PROTOCOL.md).
        buffer.moveReaderIndex(to: buffer.writerIndex)
        return .needMoreData
    }

    private mutating func fail(
        context: ChannelHandlerContext, buffer: inout ByteBuffer, method: UInt16, requestID: UInt64, _ status: RPCStatus
    ) -> DecodingState {
        self.failed = true
        buffer.moveReaderIndex(to: buffer.writerIndex)
        context.fireChannelRead(Self.wrapInboundOut(.fatal(method: method, requestID: requestID, status: status)))
        return .needMoreData
    }
}
