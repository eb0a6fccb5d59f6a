import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus

/// Prometheus metrics for the whole process: a registry, the swift-metrics
/// factory that records into it (installed once per process), and a small
/// HTTP/1.1 endpoint serving `GET /metrics` in the text exposition format.
public enum KeelMetrics {
    /// The registry every Keel metric lands in.
    public static let registry = PrometheusCollectorRegistry()

    private static let bootstrapped: Bool = {
        var factory = PrometheusMetricsFactory(registry: registry)
        // Keel answers in microseconds: the default buckets start at 5 ms.
        factory.defaultDurationHistogramBuckets = [
            .microseconds(10), .microseconds(25), .microseconds(50), .microseconds(100),
            .microseconds(250), .microseconds(500), .milliseconds(1), .microseconds(2500),
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(100),
            .milliseconds(250), .seconds(1), .seconds(5),
        ]
        MetricsSystem.bootstrap(factory)
        return true
    }()

    /// Installs the Prometheus backend for swift-metrics (idempotent; the
    /// first call wins for the whole process).
    public static func bootstrap() { _ = bootstrapped }
}

/// `GET /metrics` (and `GET /healthz`, a plain liveness probe) over HTTP/1.1.
public final class MetricsEndpoint: Sendable {
    private let host: String
    private let port: Int
    private let registry: PrometheusCollectorRegistry
    private let logger: Logger
    private let group: MultiThreadedEventLoopGroup

    public init(host: String, port: Int, registry: PrometheusCollectorRegistry = KeelMetrics.registry,
                logger: Logger, group: MultiThreadedEventLoopGroup = .singleton) {
        self.host = host
        self.port = port
        self.registry = registry
        self.logger = logger
        self.group = group
    }

    /// Binds and returns the channel; the bound port is `channel.localAddress?.port`.
    public func start() async throws -> Channel {
        let registry = self.registry
        return try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(registry: registry))
                }
            }
            .bind(host: host, port: port)
            .get()
    }
}

private final class MetricsHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let registry: PrometheusCollectorRegistry
    private var head: HTTPRequestHead?

    init(registry: PrometheusCollectorRegistry) { self.registry = registry }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
        case .body:
            break
        case .end:
            guard let h = head else { return }
            head = nil
            let path = h.uri.split(separator: "?").first.map(String.init) ?? h.uri
            let (status, type, body): (HTTPResponseStatus, String, [UInt8])
            switch (h.method, path) {
            case (.GET, "/metrics"):
                (status, type, body) = (.ok, "text/plain; version=0.0.4; charset=utf-8", registry.emitToBuffer())
            case (.GET, "/healthz"):
                (status, type, body) = (.ok, "text/plain; charset=utf-8", Array("ok\n".utf8))
            case (_, "/metrics"), (_, "/healthz"):
                (status, type, body) = (.methodNotAllowed, "text/plain; charset=utf-8", Array("use GET\n".utf8))
            default:
                (status, type, body) = (.notFound, "text/plain; charset=utf-8", Array("not found: try /metrics\n".utf8))
            }
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: type)
            headers.add(name: "Content-Length", value: String(body.count))
            let keepAlive = h.isKeepAlive
            if !keepAlive { headers.add(name: "Connection", value: "close") }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: h.version, status: status, headers: headers))),
                          promise: nil)
            var buffer = context.channel.allocator.buffer(capacity: body.count)
            buffer.writeBytes(body)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
            let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
            if !keepAlive {
                let channel = context.channel
                done.whenComplete { _ in channel.close(promise: nil) }
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
