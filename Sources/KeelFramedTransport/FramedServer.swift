import KeelServing
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// The framed TCP protocol's server (docs/PROTOCOL.md) on SwiftNIO.
///
/// Each request frame is handed to a ``RequestHandler`` off the event loop (in a
/// `Task`); its response, or an error frame, goes back on the connection's event
/// loop in completion order. Requests of one connection run concurrently, up to
/// ``Configuration/maxInFlightPerConnection``; beyond that they are answered at
/// once with `RESOURCE_EXHAUSTED`. Every request has a deadline (its `timeout_us`
/// or ``Configuration/defaultDeadline``): when it passes before the handler
/// answers, the client gets `DEADLINE_EXCEEDED` at the deadline, the handler's task
/// is cancelled and its late answer is dropped.
///
/// Thread-safety: all methods may be called from any task. Call ``start()`` once,
/// then ``shutdown(gracefully:)`` once.
public final class FramedServer: Sendable {
    /// How the server listens and what it accepts.
    public struct Configuration: Sendable {
        /// Address to bind, e.g. `127.0.0.1`, `::1` or `0.0.0.0`.
        public var host: String
        /// Port to bind; `0` picks a free one (read it from ``FramedServer/localPort``).
        public var port: Int
        /// Largest request payload accepted; longer frames are answered with
        /// `RESOURCE_EXHAUSTED` and the connection is closed.
        public var maxMessageBytes: Int
        /// Deadline of a request whose `timeout_us` is `0`.
        public var defaultDeadline: Duration
        /// Requests running at once on one connection before new ones are refused.
        public var maxInFlightPerConnection: Int
        /// Request bytes held by requests in flight over all connections;
        /// a request beyond it is refused with `RESOURCE_EXHAUSTED`.
        public var maxInFlightBytes: Int
        /// Event-loop threads for socket I/O (inference runs elsewhere).
        public var eventLoopThreads: Int
        /// How long a graceful shutdown waits for in-flight requests before closing
        /// the connections that still have some.
        public var shutdownGracePeriod: Duration

        public init(
            host: String = "127.0.0.1",
            port: Int = 50052,
            maxMessageBytes: Int = 4 * 1024 * 1024,
            defaultDeadline: Duration = .seconds(1),
            maxInFlightPerConnection: Int = 1024,
            maxInFlightBytes: Int = 256 << 20,
            eventLoopThreads: Int = 1,
            shutdownGracePeriod: Duration = .seconds(10)
        ) {
            self.host = host
            self.port = port
            self.maxMessageBytes = maxMessageBytes
            self.defaultDeadline = defaultDeadline
            self.maxInFlightPerConnection = maxInFlightPerConnection
            self.maxInFlightBytes = maxInFlightBytes
            self.eventLoopThreads = eventLoopThreads
            self.shutdownGracePeriod = shutdownGracePeriod
        }
    }

    /// Why ``start()`` failed.
    public enum StartError: Error, Sendable, CustomStringConvertible {
        case alreadyStarted
        case shutDown
        case bind(host: String, port: Int, reason: String)

        public var description: String {
            switch self {
            case .alreadyStarted: "the framed server is already started"
            case .shutDown: "the framed server is shut down"
            case .bind(let host, let port, let reason): "cannot listen on \(host):\(port): \(reason)"
            }
        }
    }

    public let configuration: Configuration
    let shared: Shared
    private let group: MultiThreadedEventLoopGroup

    public init(handler: any RequestHandler, configuration: Configuration = Configuration(), logger: Logger = Logger(label: "keel.framed")) {
        self.configuration = configuration
        self.shared = Shared(handler: handler, configuration: configuration, logger: logger)
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, configuration.eventLoopThreads))
    }

    /// The bound port once started, else nil.
    public var localPort: Int? { self.shared.state.withLock { $0.serverChannel?.localAddress?.port } }

    /// The bound address once started, else nil.
    public var localAddress: SocketAddress? { self.shared.state.withLock { $0.serverChannel?.localAddress } }

    /// Binds and starts accepting connections. Returns the bound port.
    @discardableResult
    public func start() async throws -> Int {
        try self.shared.state.withLock { state in
            if state.phase == .stopped { throw StartError.shutDown }
            if state.phase != .idle { throw StartError.alreadyStarted }
            state.phase = .starting
        }
        let shared = self.shared
        let maxPayload = self.configuration.maxMessageBytes
        let bootstrap = ServerBootstrap(group: self.group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            // At most 4 reads of at most 256 KiB per read cycle: what a client can push
            // past backpressure (see channelWritabilityChanged) stays around 1 MiB.
            .childChannelOption(.maxMessagesPerRead, value: 4)
            // Requests of a few to a few hundred KiB (a Rebalance of 100 assets is ~21 KiB):
            // start with a 64 KiB read buffer instead of NIO's 2 KiB so a frame arrives in one read.
            .childChannelOption(.recvAllocator,
                                value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 64 * 1024,
                                                                       maximum: 256 * 1024))
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let connection = FramedConnectionHandler(shared: shared)
                    try channel.pipeline.syncOperations.addHandlers(
                        ByteToMessageHandler(ServerFrameDecoder(maxPayloadBytes: maxPayload)),
                        connection)
                    if !shared.register(channel, NIOLoopBound(connection, eventLoop: channel.eventLoop)) {
                        channel.close(promise: nil)  // shutting down: refuse
                    }
                }
            }
        let channel: Channel
        do {
            channel = try await bootstrap.bind(host: self.configuration.host, port: self.configuration.port).get()
        } catch {
            self.shared.state.withLock { $0.phase = .idle }
            throw StartError.bind(host: self.configuration.host, port: self.configuration.port, reason: "\(error)")
        }
        let stoppedMeanwhile = self.shared.state.withLock { state -> Bool in
            if state.phase == .stopped { return true }
            state.phase = .running
            state.serverChannel = channel
            return false
        }
        if stoppedMeanwhile {
            try? await channel.close()
            throw StartError.shutDown
        }
        let port = channel.localAddress?.port ?? self.configuration.port
        self.shared.logger.info("framed transport listening", metadata: ["host": "\(self.configuration.host)", "port": "\(port)"])
        return port
    }

    /// Stops the server. Gracefully: stops accepting connections, answers new requests
    /// on open connections with `UNAVAILABLE`, lets in-flight requests finish and their
    /// responses flush (up to ``Configuration/shutdownGracePeriod``), then closes the
    /// connections. Otherwise: closes everything at once. Calling it again does nothing.
    public func shutdown(gracefully: Bool = true) async {
        let (serverChannel, connections, alreadyStopped) = self.shared.state.withLock { state in
            let was = state.phase == .stopped
            state.phase = .stopped
            let channel = state.serverChannel
            state.serverChannel = nil
            return (channel, Array(state.connections.values), was)
        }
        if alreadyStopped { return }
        try? await serverChannel?.close()
        if gracefully {
            for connection in connections {
                let handler = connection.handler
                connection.channel.eventLoop.execute { handler.value.beginDrain() }
            }
            let drained = await withTaskGroup(of: Bool.self) { group in
                group.addTask {
                    for connection in connections { try? await connection.channel.closeFuture.get() }
                    return true
                }
                let grace = self.configuration.shutdownGracePeriod
                group.addTask {
                    try? await Task.sleep(for: grace)
                    return false
                }
                let first = await group.next() ?? true
                group.cancelAll()
                return first
            }
            if !drained {
                self.shared.logger.warning("framed transport: grace period over, closing connections with requests in flight")
            }
        }
        for connection in connections { try? await connection.channel.close() }
        // Handler tasks still running must not touch the event loops once they are gone.
        self.shared.state.withLock { $0.loopsOpen = false }
        try? await self.group.shutdownGracefully()
        self.shared.logger.info("framed transport stopped")
    }
}

extension FramedServer {
    struct Connection: Sendable {
        let channel: any Channel
        let handler: NIOLoopBound<FramedConnectionHandler>
    }

    enum Phase: Sendable { case idle, starting, running, stopped }

    struct State: ~Copyable {
        var phase = Phase.idle
        var serverChannel: (any Channel)?
        var connections: [ObjectIdentifier: Connection] = [:]
        var loopsOpen = true
    }

    /// What every connection shares with the server. Thread-safe.
    final class Shared: Sendable {
        let handler: any RequestHandler
        let configuration: Configuration
        let logger: Logger
        let state = Mutex(State())
        /// The transport's own error answers (`keel_transport_errors_total{transport="framed"}`).
        let transportErrors = TransportErrorMetrics(transport: "framed")
        /// Bytes of the requests in flight (``Configuration/maxInFlightBytes``).
        let budget: PayloadBudget

        init(handler: any RequestHandler, configuration: Configuration, logger: Logger) {
            self.handler = handler
            self.configuration = configuration
            self.logger = logger
            self.budget = PayloadBudget(limit: configuration.maxInFlightBytes)
        }

        /// Records a new connection; false when the server is stopping (the caller closes it).
        func register(_ channel: any Channel, _ handler: NIOLoopBound<FramedConnectionHandler>) -> Bool {
            let id = ObjectIdentifier(channel)
            let accepted = self.state.withLock { state -> Bool in
                guard state.phase != .stopped else { return false }
                state.connections[id] = Connection(channel: channel, handler: handler)
                return true
            }
            if accepted {
                channel.closeFuture.whenComplete { _ in
                    _ = self.state.withLock { $0.connections.removeValue(forKey: id) }
                }
            }
            return accepted
        }

        /// Runs `work` on `loop` unless the server's event loops are shut down.
        func execute(on loop: any EventLoop, _ work: @escaping @Sendable () -> Void) {
            self.state.withLock { state in
                if state.loopsOpen { loop.execute(work) }
            }
        }
    }
}

/// One client connection: admission, deadlines, dispatch to the request handler and
/// writing answers.
///
/// Not thread-safe: every method runs on the connection's event loop (tasks come back
/// through ``FramedServer/Shared/execute(on:_:)``).
final class FramedConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ServerInboundFrame
    typealias OutboundOut = ByteBuffer

    private struct InFlight {
        var method: UInt16
        var requestID: UInt64
        var deadline: ContinuousClock.Instant
        var timer: Scheduled<Void>
        var task: Task<Void, Never>
    }

    private let shared: FramedServer.Shared
    private var context: ChannelHandlerContext?
    /// Requests not yet answered, by a connection-local sequence number (clients may
    /// reuse request ids).
    private var inFlight: [UInt64: InFlight] = [:]
    private var nextSequence: UInt64 = 0
    /// Handler tasks not yet finished (including those whose deadline passed).
    private var running = 0
    private var draining = false
    private var closing = false
    private var needsFlush = false

    init(shared: FramedServer.Shared) {
        self.shared = shared
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    /// Backpressure: while answers cannot be written (the client is not reading
    /// them), stop reading its requests, so queued answers stay bounded by NIO's
    /// write-buffer watermark instead of growing without end.
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        _ = try? context.channel.syncOptions?.setOption(ChannelOptions.autoRead, value: writable)
        if writable { context.read() }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        // Requests already received keep running; their answers are dropped.
        for request in self.inFlight.values { request.timer.cancel() }
        self.inFlight.removeAll()
        self.closing = true
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.shared.logger.debug("framed connection error, closing", metadata: ["error": "\(error)"])
        self.closing = true
        context.close(promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if self.needsFlush {
            self.needsFlush = false
            context.flush()
        }
        context.fireChannelReadComplete()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .fatal(let method, let requestID, let status):
            guard !self.closing else { return }
            self.closing = true
            self.shared.logger.debug("framed protocol violation, closing", metadata: ["status": "\(status)"])
            self.shared.transportErrors.count(status.code)
            let frame = FrameCodec.encodeError(status, method: method, requestID: requestID, allocator: context.channel.allocator)
            let channel = context.channel
            context.writeAndFlush(self.wrapOutboundOut(frame)).whenComplete { _ in channel.close(promise: nil) }

        case .request(let method, let requestID, let timeoutMicroseconds, let receivedAt, let payload):
            guard !self.closing else { return }
            guard let rpcMethod = RPCMethod(rawValue: method) else {
                self.writeImmediateError(RPCStatus(.unimplemented, "unknown method id \(method)"), method: method, requestID: requestID, context: context)
                return
            }
            if self.draining {
                self.writeImmediateError(RPCStatus(.unavailable, "the server is shutting down"), method: method, requestID: requestID, context: context)
                return
            }
            let limit = self.shared.configuration.maxInFlightPerConnection
            if self.running >= limit {
                self.writeImmediateError(
                    RPCStatus(.resourceExhausted, "more than \(limit) requests in flight on this connection; retry later"),
                    method: method, requestID: requestID, context: context)
                return
            }
            let size = payload.count
            guard self.shared.budget.take(size) else {
                self.writeImmediateError(self.shared.budget.refusal(size), method: method, requestID: requestID,
                                         context: context)
                return
            }
            let timeout = timeoutMicroseconds == 0 ? self.shared.configuration.defaultDeadline : .microseconds(timeoutMicroseconds)
            let deadline = receivedAt + timeout
            let sequence = self.nextSequence
            self.nextSequence &+= 1
            self.running += 1

            let loop = context.eventLoop
            let bound = NIOLoopBound(self, eventLoop: loop)
            let shared = self.shared
            let task = Task {
                let result: Result<[UInt8], RPCStatus>
                let started = !Task.isCancelled && ContinuousClock.now < deadline
                if started {
                    result = await shared.handler.handle(rpcMethod, request: payload, deadline: deadline)
                } else {
                    // Work not started before the deadline is not started.
                    result = .failure(RPCStatus(.deadlineExceeded, "the deadline passed before the request started"))
                }
                shared.budget.give(size)
                shared.execute(on: loop) { bound.value.complete(sequence, result, transportError: !started) }
            }
            let remaining = max(.zero, deadline - .now)
            let timer = loop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: TimeAmount(remaining)) {
                self.expire(sequence)
            }
            self.inFlight[sequence] = InFlight(method: method, requestID: requestID, deadline: deadline, timer: timer, task: task)
        }
    }

    /// Stop taking requests; close once every request received has been answered.
    func beginDrain() {
        self.draining = true
        self.closeIfDrained()
    }

    /// `transportError`: the failure is this transport's own (the request
    /// never started), counted here once, when it is the answer sent.
    private func complete(_ sequence: UInt64, _ result: Result<[UInt8], RPCStatus>, transportError: Bool) {
        self.running -= 1
        guard let request = self.inFlight.removeValue(forKey: sequence) else { return }  // expired or closed
        request.timer.cancel()
        guard let context = self.context, !self.closing else { return }
        if transportError, case .failure(let status) = result { self.shared.transportErrors.count(status.code) }
        let frame: ByteBuffer
        switch result {
        case .success where ContinuousClock.now > request.deadline:
            // The timer has not fired yet, but the answer is late all the same.
            let status = RPCStatus(.deadlineExceeded, "no answer before the request's deadline")
            self.shared.transportErrors.count(.deadlineExceeded)
            frame = FrameCodec.encodeError(status, method: request.method, requestID: request.requestID, allocator: context.channel.allocator)
        case .success(let payload):
            frame = FrameCodec.encode(kind: .response, method: request.method, requestID: request.requestID, payload: payload, allocator: context.channel.allocator)
        case .failure(let status):
            frame = FrameCodec.encodeError(status, method: request.method, requestID: request.requestID, allocator: context.channel.allocator)
        }
        context.writeAndFlush(self.wrapOutboundOut(frame), promise: nil)
        self.closeIfDrained()
    }

    private func expire(_ sequence: UInt64) {
        guard let request = self.inFlight.removeValue(forKey: sequence) else { return }
        request.task.cancel()
        guard let context = self.context, !self.closing else { return }
        self.shared.transportErrors.count(.deadlineExceeded)
        let status = RPCStatus(.deadlineExceeded, "no answer before the request's deadline")
        let frame = FrameCodec.encodeError(status, method: request.method, requestID: request.requestID, allocator: context.channel.allocator)
        context.writeAndFlush(self.wrapOutboundOut(frame), promise: nil)
        self.closeIfDrained()
    }

    private func writeImmediateError(_ status: RPCStatus, method: UInt16, requestID: UInt64, context: ChannelHandlerContext) {
        self.shared.transportErrors.count(status.code)
        let frame = FrameCodec.encodeError(status, method: method, requestID: requestID, allocator: context.channel.allocator)
        context.write(self.wrapOutboundOut(frame), promise: nil)
        self.needsFlush = true
    }

    private func closeIfDrained() {
        guard self.draining, self.inFlight.isEmpty, !self.closing, let context = self.context else { return }
        self.closing = true
        // Writes complete in order: once this empty one is done, every answer is out.
        let channel = context.channel
        context.writeAndFlush(self.wrapOutboundOut(channel.allocator.buffer(capacity: 0))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }
}
