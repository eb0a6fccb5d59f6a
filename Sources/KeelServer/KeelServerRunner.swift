import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import KeelFramedTransport
import KeelInference
import KeelAudit
import KeelPortfolio
import KeelServing
import Logging
import Metrics
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

/// The ports a running server bound (useful with port 0).
public struct BoundPorts: Sendable, Equatable {
    public var grpc: Int
    public var tcp: Int
    public var metrics: Int
}

/// Why the server could not start; the message names the setting or file.
public struct ServerStartError: Error, Sendable, CustomStringConvertible {
    public var description: String
    init(_ message: String) { description = message }
}

/// Builds and runs the whole server: the model repository and its watcher,
/// the request handlers behind one admission gate, the gRPC and framed TCP
/// transports, and the metrics endpoint.
public final class KeelServerRunner: Sendable {
    public let config: ServerConfig
    let logger: Logger

    public init(config: ServerConfig, logger: Logger) {
        self.config = config
        self.logger = logger
    }

    /// Starts everything, then waits for SIGTERM or SIGINT and shuts down
    /// gracefully: stop accepting, finish requests in flight, return.
    public func runUntilSignalled() async throws {
        // The server starts inside the service group, after its signal handlers
        // are installed: a SIGTERM right after the "serving" log line is graceful.
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: ServeUntilShutdown(runner: self))],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        try await group.run()
    }

    /// Starts every component and returns once all of them listen.
    public func start() async throws -> RunningServer {
        KeelMetrics.bootstrap()
        do {
            try Blas.setThreads(config.blasThreads)
        } catch {
            throw ServerStartError("blasThreads: \(error.message)")
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: config.modelsDirectory, isDirectory: &isDirectory),
              isDirectory.boolValue else {
            throw ServerStartError("models directory '\(config.modelsDirectory)' does not exist")
        }
        let host = config.host == "localhost" ? "127.0.0.1" : config.host

        let repository = ModelRepository(root: URL(fileURLWithPath: config.modelsDirectory),
                                         logger: Logger(label: "keel.models"))
        let loaded = repository.loadAll()
        for model in loaded {
            logger.info("model loaded", metadata: ["model": "\(model.name)", "version": "\(model.version)",
                                                   "sha256": "\(model.sha256)", "kind": "\(model.kind)"])
        }
        for failure in repository.failures() {
            logger.warning("model rejected", metadata: ["model": "\(failure.name)", "version": "\(failure.version)",
                                                         "reason": "\(failure.reason)"])
        }
        let gate = RequestGate(maxConcurrent: config.maxConcurrentRequests, maxQueued: config.maxQueuedRequests)
        let audit: AuditLog
        let service: KeelService
        let restored: Int
        do throws(AuditError) {
            // The service encodes its records from the generated messages itself:
            // no decode-to-check on the request path (verify decodes them all).
            let auditLogger = Logger(label: "keel.audit")
            let walRestarts = Counter(label: "keel_audit_wal_restarts_total")
            audit = try AuditLog(path: config.auditDatabase, durability: config.auditSync == "normal" ? .normal : .full,
                                 checksPayloads: false, walLimit: config.auditWALMaxBytes) { waited, walBytes in
                walRestarts.increment()
                let ms = Double(waited.components.seconds) * 1e3 + Double(waited.components.attoseconds) / 1e15
                auditLogger.warning("audit WAL restarted at its limit under steady load; commits waited for it",
                                    metadata: ["waited_ms": "\(Int(ms.rounded()))", "wal_bytes": "\(walBytes)"])
            }
            var rules = config.approvalRules
            rules.expiry = config.approvalExpiry
            do throws(AuditError) {
                service = try KeelService(repository: repository, gate: gate, audit: audit, approvalRules: rules,
                                          logger: Logger(label: "keel.service"))
                restored = try service.restorePendingApprovals()
            } catch {
                audit.close()
                throw error
            }
            if restored > 0 { logger.info("pending approvals restored from the audit trail", metadata: ["pending": "\(restored)"]) }
        } catch {
            throw ServerStartError("audit trail '\(config.auditDatabase)': \(error)")
        }
        logger.info("audit trail open", metadata: ["path": "\(config.auditDatabase)", "records": "\(audit.count)",
                                                   "sync": "\(config.auditSync)"])

        let framed = FramedServer(
            handler: service,
            configuration: .init(host: host, port: config.tcpPort, maxMessageBytes: config.maxMessageBytes,
                                 defaultDeadline: config.defaultDeadline, maxInFlightBytes: config.maxInFlightBytes,
                                 eventLoopThreads: config.eventLoopThreads),
            logger: Logger(label: "keel.framed"))
        let tcpPort: Int
        do {
            tcpPort = try await framed.start()
        } catch {
            audit.close()
            throw error
        }

        let address: GRPCNIOTransportCore.SocketAddress = host.contains(":")
            ? .ipv6(host: host, port: config.grpcPort) : .ipv4(host: host, port: config.grpcPort)
        let grpc = GRPCServing(
            address: address, maxRequestBytes: config.maxMessageBytes, threads: config.eventLoopThreads,
            services: [KeelGRPCServices(handler: service, defaultDeadline: config.defaultDeadline,
                                        maxRequestBytes: config.maxMessageBytes,
                                        isShuttingDown: { gate.isDraining },
                                        budget: PayloadBudget(limit: config.maxInFlightBytes))])
        let transport = grpc.transport
        let grpcServer = grpc.server
        let grpcLogger = logger
        let grpcTask = Task {
            do {
                try await grpc.serve()
            } catch {
                grpcLogger.error("gRPC server stopped", metadata: ["error": "\(error)"])
            }
        }
        let grpcPort: Int
        do {
            let bound = try await transport.listeningAddress
            grpcPort = bound.ipv4?.port ?? bound.ipv6?.port ?? config.grpcPort
        } catch {
            await framed.shutdown(gracefully: false)
            grpcTask.cancel()
            await grpcTask.value
            audit.close()
            throw ServerStartError("cannot listen for gRPC on \(host):\(config.grpcPort): \(error)")
        }

        let metricsChannel: any Channel
        do {
            metricsChannel = try await MetricsEndpoint(host: host, port: config.metricsPort, logger: logger).start()
        } catch {
            grpcServer.beginGracefulShutdown()
            await framed.shutdown(gracefully: false)
            grpcTask.cancel()  // no drain began: a health Watch stream would not end by itself
            await grpcTask.value
            audit.close()
            throw ServerStartError("cannot listen for metrics on \(host):\(config.metricsPort): \(error)")
        }
        let metricsPort = metricsChannel.localAddress?.port ?? config.metricsPort

        let interval = config.modelPollInterval
        let watcher = Task { await repository.watch(every: interval) }

        let ports = BoundPorts(grpc: grpcPort, tcp: tcpPort, metrics: metricsPort)
        logger.info("keel serving grpc=\(host):\(grpcPort) tcp=\(host):\(tcpPort) metrics=\(host):\(metricsPort)",
                    metadata: ["models": "\(config.modelsDirectory)", "loaded": "\(loaded.count)",
                               "blas_threads": "\(Blas.threads)", "blas_core": "\(Blas.coreName)",
                               "event_loop_threads": "\(config.eventLoopThreads)"])
        if let warning = Blas.kernelWarning { logger.warning("\(warning)") }
        return RunningServer(ports: ports, repository: repository, service: service, gate: gate, framed: framed,
                             grpcServer: grpcServer, grpcTask: grpcTask, metricsChannel: metricsChannel,
                             watcher: watcher, logger: logger)
    }
}

/// The gRPC server as `keel serve` runs it. With one I/O thread (the
/// default), gRPC has an event loop of its own, and ``serve()`` makes that
/// loop the preferred executor of the server's tasks: a call's HTTP/2 work
/// then stays on that thread instead of hopping to the global pool and back
/// at each step (half the context switches, 15 % less server CPU per call;
/// RESULTS.md, eighth pass). With more threads, connections are spread over
/// them and the calls' tasks run on the global pool, as grpc-swift runs them
/// by default: one loop cannot be every task's executor without pulling the
/// other loops' calls onto it. Either way the handlers run on the global
/// pool (`KeelGRPCServices`), never on a loop.
struct GRPCServing: Sendable {
    /// The process's event loops for gRPC, one group per thread count,
    /// created on first use and never shut down, like NIO's singletons: NIO
    /// still hands a closed server channel's last callbacks to its loop after
    /// `serve()` has returned, and a loop shut down at that point refuses them.
    private static let groups = Mutex<[Int: MultiThreadedEventLoopGroup]>([:])
    /// The one-thread group's loop, as a task executor.
    static let executor = EventLoopTaskExecutor(group(threads: 1).next())

    /// The group of `threads` threads (at least 1). Each thread count asked
    /// for keeps its threads for the life of the process (one in `keel serve`).
    static func group(threads: Int) -> MultiThreadedEventLoopGroup {
        let threads = max(1, threads)
        return groups.withLock { groups in
            if let group = groups[threads] { return group }
            let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
            groups[threads] = group
            return group
        }
    }

    let transport: HTTP2ServerTransport.Posix
    let server: GRPCServer<HTTP2ServerTransport.Posix>
    /// The event loops the transport runs on.
    let group: MultiThreadedEventLoopGroup
    /// The preferred executor of the server's tasks: the loop when there is
    /// one thread, none (the global pool) with more.
    let executor: EventLoopTaskExecutor?

    init(address: GRPCNIOTransportCore.SocketAddress, maxRequestBytes: Int, threads: Int = 1,
         services: [any RegistrableRPCService], interceptors: [any ServerInterceptor] = []) {
        let threads = max(1, threads)
        let group = Self.group(threads: threads)
        self.group = group
        transport = HTTP2ServerTransport.Posix(
            address: address, transportSecurity: .plaintext,
            config: .defaults {
                $0.rpc.maxRequestPayloadSize = maxRequestBytes
                // grpc-swift holds each flush up to 100 us to batch writes; a
                // unary answer then waits for the timer. Off: 100 to 170 us
                // lower p50 at 500/s (RESULTS.md, eighth pass).
                $0.connection.flushCoalescing = nil
            }, eventLoopGroup: group)
        server = GRPCServer(transport: transport, services: services, interceptors: interceptors)
        executor = threads == 1 ? Self.executor : nil
    }

    func serve() async throws {
        let server = self.server
        if let executor {
            try await withTaskExecutorPreference(executor) { try await server.serve() }
        } else {
            try await server.serve()
        }
    }
}

/// A started server. ``shutdown()`` stops it gracefully.
public final class RunningServer: Sendable {
    public let ports: BoundPorts
    public let repository: ModelRepository
    public let service: KeelService
    let gate: RequestGate
    let framed: FramedServer
    let grpcServer: GRPCServer<HTTP2ServerTransport.Posix>
    let grpcTask: Task<Void, Never>
    let metricsChannel: any Channel
    let watcher: Task<Void, Never>
    let logger: Logger

    init(ports: BoundPorts, repository: ModelRepository, service: KeelService, gate: RequestGate,
         framed: FramedServer, grpcServer: GRPCServer<HTTP2ServerTransport.Posix>, grpcTask: Task<Void, Never>,
         metricsChannel: any Channel, watcher: Task<Void, Never>, logger: Logger) {
        self.ports = ports
        self.repository = repository
        self.service = service
        self.gate = gate
        self.framed = framed
        self.grpcServer = grpcServer
        self.grpcTask = grpcTask
        self.metricsChannel = metricsChannel
        self.watcher = watcher
        self.logger = logger
    }

    /// Stops accepting on both transports, lets requests in flight finish and
    /// their responses go out, then closes everything. Idempotent.
    public func shutdown() async {
        logger.info("shutting down: no new requests; finishing requests in flight")
        // First refuse new work (UNAVAILABLE) and report NOT_SERVING to health
        // watchers, which then end their streams; then close the transports.
        gate.beginDrain()
        grpcServer.beginGracefulShutdown()
        async let framedDone: Void = framed.shutdown(gracefully: true)
        // Requests have their deadlines; a stream that outlives the grace period is cut.
        let grpcTask = self.grpcTask
        let grace = Task {
            try? await Task.sleep(for: .seconds(10))
            if !Task.isCancelled { grpcTask.cancel() }
        }
        await grpcTask.value
        grace.cancel()
        await framedDone
        await gate.drain()
        watcher.cancel()
        await watcher.value
        try? await metricsChannel.close()
        service.audit?.close()
        logger.info("stopped")
    }
}

/// Starts the server, waits for the service group's graceful-shutdown signal,
/// then shuts down.
struct ServeUntilShutdown: Service {
    let runner: KeelServerRunner

    func run() async throws {
        let running = try await runner.start()
        try? await gracefulShutdown()
        await running.shutdown()
    }
}
