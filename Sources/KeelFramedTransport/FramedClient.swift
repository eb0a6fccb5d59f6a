import KeelServing
import NIOCore
import NIOPosix
import Synchronization

/// A client of the framed TCP protocol (docs/PROTOCOL.md) over one connection.
///
/// Concurrent calls are pipelined: each gets the next request id, its frame is written
/// at once, and responses, in whatever order they come, are matched by request id.
/// Error frames become ``RPCStatus`` with the server's code and message; a lost
/// connection fails every pending call with `UNAVAILABLE`; a call whose answer does
/// not come within its timeout (or the server's default deadline, 1 s) plus
/// ``Configuration/timeoutGrace`` fails with `DEADLINE_EXCEEDED`, so a dead server
/// cannot hang a caller.
///
/// Thread-safety: every method may be called from any task, concurrently.
public final class FramedClient: Sendable {
    public struct Configuration: Sendable {
        /// How long ``FramedClient/connect(host:port:configuration:eventLoopGroup:)`` tries.
        public var connectTimeout: Duration
        /// Largest response payload accepted; a longer frame closes the connection.
        public var maxMessageBytes: Int
        /// The server's deadline for requests sent without a timeout (PROTOCOL.md: 1 s).
        public var serverDefaultDeadline: Duration
        /// How much longer than the deadline the client waits before giving up itself.
        public var timeoutGrace: Duration

        public init(
            connectTimeout: Duration = .seconds(3),
            maxMessageBytes: Int = 64 * 1024 * 1024,
            serverDefaultDeadline: Duration = .seconds(1),
            timeoutGrace: Duration = .milliseconds(250)
        ) {
            self.connectTimeout = connectTimeout
            self.maxMessageBytes = maxMessageBytes
            self.serverDefaultDeadline = serverDefaultDeadline
            self.timeoutGrace = timeoutGrace
        }
    }

    public let configuration: Configuration
    private let channel: any Channel
    private let handler: NIOLoopBound<FramedClientHandler>
    private let nextRequestID = Atomic<UInt64>(1)

    private init(channel: any Channel, handler: NIOLoopBound<FramedClientHandler>, configuration: Configuration) {
        self.channel = channel
        self.handler = handler
        self.configuration = configuration
    }

    deinit {
        self.channel.close(promise: nil)
    }

    /// Opens a connection. Fails with `UNAVAILABLE` when the server cannot be reached.
    /// `eventLoopGroup` must outlive the client (the default, NIO's singleton, does).
    public static func connect(
        host: String, port: Int, configuration: Configuration = Configuration(),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws(RPCStatus) -> FramedClient {
        let maxPayload = configuration.maxMessageBytes
        let bootstrap = ClientBootstrap(group: eventLoopGroup)
            .connectTimeout(TimeAmount(configuration.connectTimeout))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            // Responses of up to a few hundred KiB: one read per frame (NIO starts at 2 KiB).
            .channelOption(.recvAllocator,
                           value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 64 * 1024,
                                                                  maximum: 1024 * 1024))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers(
                        ByteToMessageHandler(ClientFrameDecoder(maxPayloadBytes: maxPayload)),
                        FramedClientHandler())
                }
            }
        do {
            let channel = try await bootstrap.connect(host: host, port: port).get()
            let handler = try await channel.eventLoop.submit {
                NIOLoopBound(try channel.pipeline.syncOperations.handler(type: FramedClientHandler.self), eventLoop: channel.eventLoop)
            }.get()
            return FramedClient(channel: channel, handler: handler, configuration: configuration)
        } catch {
            throw RPCStatus(.unavailable, "cannot connect to \(host):\(port): \(error)")
        }
    }

    /// Sends one request and waits for its answer. `timeout` becomes the frame's
    /// `timeout_us` (clamped to 1 µs ... 2^32-1 µs); nil means the server's default.
    public func call(_ method: RPCMethod, request: [UInt8], timeout: Duration? = nil) async throws(RPCStatus) -> [UInt8] {
        if Task.isCancelled { throw RPCStatus(.cancelled, "the call was cancelled before it was sent") }
        let requestID = self.nextRequestID.wrappingAdd(1, ordering: .relaxed).oldValue
        let timeoutMicroseconds = timeout.map(FrameCodec.timeoutMicroseconds) ?? 0
        // The deadline the server applies (timeout_us is clamped), plus the grace.
        let deadline = timeoutMicroseconds == 0 ? self.configuration.serverDefaultDeadline : .microseconds(timeoutMicroseconds)
        let wait = deadline + max(.zero, self.configuration.timeoutGrace)
        let frame = FrameCodec.encode(
            kind: .request, method: method.rawValue, requestID: requestID,
            timeoutMicroseconds: timeoutMicroseconds, payload: request, allocator: self.channel.allocator)
        let handler = self.handler
        let loop = self.channel.eventLoop
        let result = await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Result<[UInt8], RPCStatus>, Never>) in
                loop.execute {
                    handler.value.send(frame, requestID: requestID, waitingAtMost: wait, continuation: continuation)
                }
            }
        } onCancel: {
            loop.execute { handler.value.cancel(requestID: requestID) }
        }
        return try result.get()
    }

    /// Closes the connection; calls in flight fail with `UNAVAILABLE`.
    public func close() async {
        try? await self.channel.close()
    }

}

/// A response or error frame from the server.
struct ClientInboundFrame {
    var kind: FrameKind
    var requestID: UInt64
    var payload: [UInt8]
}

/// Why the client's decoder gave up on the stream.
struct FramedStreamError: Error, CustomStringConvertible {
    var description: String
}

/// Splits the server's byte stream into frames; a malformed frame is an error that
/// closes the connection. Not thread-safe: used on its channel's event loop only.
struct ClientFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = ClientInboundFrame
    let maxPayloadBytes: Int

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let header = buffer.peekFrameHeader() else { return .needMoreData }
        guard let payloadLength = header.payloadLength else {
            throw FramedStreamError(description: "the server sent a frame length of \(header.length), below 16")
        }
        guard header.version == FrameHeader.currentVersion else {
            throw FramedStreamError(description: "the server speaks protocol version \(header.version), not 1")
        }
        guard let kind = FrameKind(rawValue: header.kind), kind != .request else {
            throw FramedStreamError(description: "the server sent a frame of kind \(header.kind)")
        }
        guard payloadLength <= self.maxPayloadBytes else {
            throw FramedStreamError(description: "the server sent a \(payloadLength)-byte payload, above the client's maximum of \(self.maxPayloadBytes)")
        }
        guard buffer.readableBytes >= FrameHeader.size + payloadLength else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: FrameHeader.size)
        let payload = buffer.readBytes(length: payloadLength) ?? []
        context.fireChannelRead(Self.wrapInboundOut(ClientInboundFrame(kind: kind, requestID: header.requestID, payload: payload)))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try self.decode(context: context, buffer: &buffer) == .continue {}
        buffer.moveReaderIndex(to: buffer.writerIndex)  // a cut-off frame is dropped
        return .needMoreData
    }
}

/// The client's pending calls. Not thread-safe: every method runs on the channel's
/// event loop (``FramedClient`` hops there).
final class FramedClientHandler: ChannelInboundHandler {
    typealias InboundIn = ClientInboundFrame
    typealias OutboundOut = ByteBuffer

    private struct Pending {
        var continuation: UnsafeContinuation<Result<[UInt8], RPCStatus>, Never>
        var timer: Scheduled<Void>
    }

    private var context: ChannelHandlerContext?
    private var pending: [UInt64: Pending] = [:]
    /// Set once the connection is gone: new calls fail at once with it.
    private var closedStatus: RPCStatus?
    /// A connection-level error frame (request id 0) explaining a coming close.
    private var connectionError: RPCStatus?

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.failAll(RPCStatus(.unavailable, "the connection is closed"))
    }

    func send(
        _ frame: ByteBuffer, requestID: UInt64, waitingAtMost wait: Duration,
        continuation: UnsafeContinuation<Result<[UInt8], RPCStatus>, Never>
    ) {
        guard self.closedStatus == nil, let context = self.context, context.channel.isActive else {
            continuation.resume(returning: .failure(self.closedStatus ?? RPCStatus(.unavailable, "the connection is closed")))
            return
        }
        let timer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: TimeAmount(wait)) {
            self.timeOut(requestID: requestID, after: wait)
        }
        self.pending[requestID] = Pending(continuation: continuation, timer: timer)
        context.writeAndFlush(self.wrapOutboundOut(frame), promise: nil)
    }

    func cancel(requestID: UInt64) {
        guard let call = self.pending.removeValue(forKey: requestID) else { return }
        call.timer.cancel()
        call.continuation.resume(returning: .failure(RPCStatus(.cancelled, "the call was cancelled")))
    }

    private func timeOut(requestID: UInt64, after wait: Duration) {
        guard let call = self.pending.removeValue(forKey: requestID) else { return }
        call.continuation.resume(returning: .failure(RPCStatus(.deadlineExceeded, "no answer from the server within \(wait)")))
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = self.unwrapInboundIn(data)
        guard let call = self.pending.removeValue(forKey: frame.requestID) else {
            if frame.kind == .error {  // e.g. request id 0: the server is about to close
                self.connectionError = FrameCodec.decodeErrorPayload(frame.payload)
            }
            return  // a late answer to a call that timed out or was cancelled
        }
        call.timer.cancel()
        switch frame.kind {
        case .response: call.continuation.resume(returning: .success(frame.payload))
        case .error: call.continuation.resume(returning: .failure(FrameCodec.decodeErrorPayload(frame.payload)))
        case .request: call.continuation.resume(returning: .failure(RPCStatus(.internal, "the server sent a request frame")))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.failAll(RPCStatus(.unavailable, "the connection was closed" + (self.connectionError.map { " (server said: \($0))" } ?? "")))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.failAll(RPCStatus(.unavailable, "connection failed: \(error)"))
        context.close(promise: nil)
    }

    private func failAll(_ status: RPCStatus) {
        if self.closedStatus == nil { self.closedStatus = status }
        let calls = self.pending
        self.pending.removeAll()
        for call in calls.values {
            call.timer.cancel()
            call.continuation.resume(returning: .failure(status))
        }
    }
}
