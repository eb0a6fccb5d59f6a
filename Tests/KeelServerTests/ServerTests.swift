import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
#if canImport(Glibc)
import Glibc
#endif
import KeelAPI
import KeelAudit
import KeelClient
@testable import KeelServer
import KeelPortfolio
import KeelServing
import Logging
import NIOPosix
import Testing

/// The whole server on loopback (port 0 everywhere), driven through both
/// transports' real clients.
@Suite("keel server", .serialized)
struct ServerTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let shippedPolicy = root.appendingPathComponent("models/policy/1/model.onnx")

    /// A fresh repository holding the shipped policy as version 1.
    static func makeRepository() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("keel-server-\(UUID().uuidString)")
        try install(try Data(contentsOf: shippedPolicy), in: dir, version: 1)
        return dir
    }

    static func install(_ bytes: Data, in dir: URL, version: Int) throws {
        let vdir = dir.appendingPathComponent("policy/\(version)")
        try FileManager.default.createDirectory(at: vdir, withIntermediateDirectories: true)
        // Write then rename, as an operator's deploy script should.
        let tmp = dir.appendingPathComponent(".incoming-\(UUID().uuidString)")
        try bytes.write(to: tmp)
        guard rename(tmp.path, vdir.appendingPathComponent("model.onnx").path) == 0 else {
            throw CocoaError(.fileWriteUnknown)
        }
    }

    /// The shipped model with one more metadata entry appended: a valid ONNX
    /// file with different bytes (so a different SHA-256). Field 14 of
    /// ModelProto is metadata_props; appending a field is valid protobuf.
    static func variant(_ tag: String) throws -> Data {
        var bytes = try Data(contentsOf: shippedPolicy)
        let key = Array("keel.variant".utf8), value = Array(tag.utf8)
        let entry: [UInt8] = [0x0A, UInt8(key.count)] + key + [0x12, UInt8(value.count)] + value
        bytes.append(contentsOf: [0x72, UInt8(entry.count)] + entry)
        return bytes
    }

    static func config(models: URL) -> ServerConfig {
        var c = ServerConfig()
        c.grpcPort = 0
        c.tcpPort = 0
        c.metricsPort = 0
        c.modelsDirectory = models.path
        c.modelPollInterval = .milliseconds(50)
        // Inside the (temporary) repository: a file there is not a model and goes with it.
        c.auditDatabase = models.appendingPathComponent(".audit.sqlite").path
        return c
    }

    static func rebalanceBytes(assets: Int, id: String = "t") throws -> [UInt8] {
        var req = BenchRequests.rebalance(assets: assets, historyDays: 30)
        req.requestID = id
        return try req.serializedBytes()
    }

    @Test("Rebalance answers identically over framed TCP and gRPC, with one I/O thread per transport or more",
          arguments: zip([1, 10, 100, 100], [1, 1, 1, 2]))
    func bothTransports(assets: Int, eventLoopThreads: Int) async throws {
        let dir = try Self.makeRepository()
        defer { try? FileManager.default.removeItem(at: dir) }
        var config = Self.config(models: dir)
        config.eventLoopThreads = eventLoopThreads
        let server = try await KeelServerRunner(config: config, logger: Logger(label: "test")).start()
        let framed = try await KeelClients.connect(Endpoint(transport: .tcp, host: "127.0.0.1", port: server.ports.tcp))
        let grpc = try await KeelClients.connect(Endpoint(transport: .grpc, host: "127.0.0.1", port: server.ports.grpc))
        let request = try Self.rebalanceBytes(assets: assets)
        let a = try Keel_V1_RebalanceResponse(serializedBytes: try await framed.call(.rebalance, request: request, timeout: .seconds(5)))
        let b = try Keel_V1_RebalanceResponse(serializedBytes: try await grpc.call(.rebalance, request: request, timeout: .seconds(5)))
        #expect(a.targets == b.targets)
        #expect(a.orders == b.orders)
        #expect(a.targets.count == assets)
        #expect(a.compliance.compliant && b.compliance.compliant,
                "\(a.compliance.checks.filter { !$0.passed }) \(a.compliance.conflicts)")
        #expect(abs(a.targets.map(\.targetWeight).reduce(0, +) + a.cashWeightAfter + a.totalEstimatedCost / a.totalValue - 1) < 1e-9)
        #expect(a.model.version == 1 && b.model.sha256 == a.model.sha256)
        #expect(a.auditRecordHash.count == 64 && b.auditRecordHash.count == 64 && a.auditRecordHash != b.auditRecordHash)
        // The same bad request gets the same status on both transports.
        var bad = try Keel_V1_RebalanceRequest(serializedBytes: request)
        bad.instruments[0].price = -1
        let badBytes: [UInt8] = try bad.serializedBytes()
        for client in [framed, grpc] {
            do {
                _ = try await client.call(.rebalance, request: badBytes, timeout: .seconds(5))
                Issue.record("a negative price was accepted")
            } catch {
                #expect(error.code == .invalidArgument)
                #expect(error.message.contains("price -1.0 is not a finite number from 1e-8 to 1e12"))
            }
        }
        await framed.close()
        await grpc.close()
        await server.shutdown()
    }

    @Test("hot swap under load: no failed request, new version serves, a corrupt file never serves")
    func hotSwapUnderLoad() async throws {
        let dir = try Self.makeRepository()
        defer { try? FileManager.default.removeItem(at: dir) }
        let server = try await KeelServerRunner(config: Self.config(models: dir), logger: Logger(label: "test")).start()
        let client = try await KeelClients.connect(Endpoint(transport: .tcp, host: "127.0.0.1", port: server.ports.tcp))
        let request = try Self.rebalanceBytes(assets: 20)
        let v2 = try Self.variant("two")

        // Four loops send back to back until told to stop; they record every
        // version seen, with the SHA-256 each response names.
        let stop = Flag()
        let results = try await withThrowingTaskGroup(of: [Int64: [String: Int]].self) { group in
            for _ in 0..<4 {
                group.addTask {
                    var seen: [Int64: [String: Int]] = [:]
                    while !stop.isSet {
                        let bytes = try await client.call(.rebalance, request: request, timeout: .seconds(5))
                        let response = try Keel_V1_RebalanceResponse(serializedBytes: bytes)
                        seen[response.model.version, default: [:]][response.model.sha256, default: 0] += 1
                    }
                    return seen
                }
            }
            try await Task.sleep(for: .milliseconds(300))
            try Self.install(v2, in: dir, version: 2)
            try await waitUntil { server.repository.serving(name: "policy")?.version == 2 }
            try await Task.sleep(for: .milliseconds(300))
            // A corrupt version 3: truncated halfway.
            try Self.install(v2.prefix(v2.count / 2), in: dir, version: 3)
            try await waitUntil { server.repository.lastError(name: "policy")?.version == 3 }
            try await Task.sleep(for: .milliseconds(300))
            stop.set()
            var merged: [Int64: [String: Int]] = [:]
            for try await seen in group {
                merged.merge(seen) { a, b in a.merging(b, uniquingKeysWith: +) }
            }
            return merged
        }
        #expect(results[1, default: [:]].values.reduce(0, +) > 0, "requests were answered by version 1 before the swap")
        #expect(results[2, default: [:]].values.reduce(0, +) > 0, "requests were answered by version 2 after the swap")
        #expect(results[3] == nil, "the corrupt version 3 never served")
        #expect(server.repository.serving(name: "policy")?.version == 2)
        // Every response names the file that produced it: one SHA-256 per
        // version, version 2's that of the file dropped in.
        let v2Hash = try #require(server.repository.serving(name: "policy")?.sha256)
        #expect(v2Hash == AuditDigest.sha256Hex(v2))
        #expect(Array(results[2, default: [:]].keys) == [v2Hash])
        let v1Hashes = Array(results[1, default: [:]].keys)
        #expect(v1Hashes.count == 1 && v1Hashes != [v2Hash], "\(v1Hashes)")
        await client.close()
        await server.shutdown()
    }

    @Test("graceful shutdown lets requests in flight finish")
    func gracefulShutdown() async throws {
        let dir = try Self.makeRepository()
        defer { try? FileManager.default.removeItem(at: dir) }
        let server = try await KeelServerRunner(config: Self.config(models: dir), logger: Logger(label: "test")).start()
        let client = try await KeelClients.connect(Endpoint(transport: .tcp, host: "127.0.0.1", port: server.ports.tcp))
        let request = try Self.rebalanceBytes(assets: 1000)
        // Each request either completes or is refused cleanly with UNAVAILABLE
        // (sent after shutdown began); none fails otherwise or hangs.
        async let outcomes = withTaskGroup(of: RPCStatusCode.self) { group in
            for _ in 0..<32 {
                group.addTask {
                    do {
                        _ = try await client.call(.rebalance, request: request, timeout: .seconds(5))
                        return .ok
                    } catch {
                        return (error as? RPCStatus)?.code ?? .unknown
                    }
                }
            }
            var codes: [RPCStatusCode] = []
            for await code in group { codes.append(code) }
            return codes
        }
        // Long enough for the first requests to be decoded and admitted (a
        // 1000-asset request takes milliseconds to decode in a debug build).
        try await Task.sleep(for: .milliseconds(100))
        await server.shutdown()
        let codes = await outcomes
        #expect(codes.count == 32)
        #expect(codes.contains(.ok), "requests in flight before shutdown were answered: \(codes)")
        #expect(codes.allSatisfy { $0 == .ok || $0 == .unavailable }, "\(codes)")
        await client.close()
    }
}

@Suite("server configuration")
struct ConfigTests {
    @Test("precedence: defaults < file < environment < flags")
    func precedence() throws {
        var c = ServerConfig()
        try c.apply(json: Data(#"{"grpcPort": 7001, "tcpPort": 7002, "host": "0.0.0.0"}"#.utf8), source: "keel.json")
        #expect(c.grpcPort == 7001 && c.tcpPort == 7002 && c.host == "0.0.0.0")
        try c.apply(environment: ["KEEL_TCP_PORT": "7102", "KEEL_MODELS": "/srv/models"])
        #expect(c.tcpPort == 7102 && c.modelsDirectory == "/srv/models" && c.grpcPort == 7001)
        try c.set("tcpPort", "7202", source: "--tcp-port")
        #expect(c.tcpPort == 7202)
        #expect(c.metricsPort == 9090)
    }

    @Test("bad values name the setting and its source",
          arguments: [(#"{"grpcPort": 70000}"#, "'grpcPort'"), (#"{"nope": 1}"#, "unknown setting"),
                      (#"[1, 2]"#, "JSON object"), (#"{"grpcPort": true}"#, "keel.json")])
    func badFile(json: String, needle: String) {
        var c = ServerConfig()
        #expect(throws: ConfigError.self) { try c.apply(json: Data(json.utf8), source: "keel.json") }
        do {
            try c.apply(json: Data(json.utf8), source: "keel.json")
        } catch {
            #expect(error.message.contains(needle), "\(error.message)")
        }
    }

    @Test("the approval rules are settings: thresholds, off, and the first-rebalance rule")
    func approvalRules() throws {
        var c = ServerConfig()
        #expect(c.approvalRules == ApprovalRules())
        try c.apply(json: Data(#"{"approvalTurnoverAbove": 0.35, "approvalFirstRebalance": false}"#.utf8),
                    source: "keel.json")
        try c.apply(environment: ["KEEL_APPROVAL_ORDER_SHARE_ABOVE": "off"])
        try c.set("approvalVolatilityRiseAbove", "0.02", source: "--approval-volatility-rise-above")
        #expect(c.approvalRules.turnoverAbove == 0.35)
        #expect(c.approvalRules.firstRebalance == false)
        #expect(c.approvalRules.orderShareAbove == nil)
        #expect(c.approvalRules.volatilityRiseAbove == 0.02)
        for (key, value, needle) in [("approvalTurnoverAbove", "1.5", "a fraction from 0 to 1"),
                                     ("approvalOrderShareAbove", "lots", "or off"),
                                     ("approvalFirstRebalance", "maybe", "true or false")] {
            do {
                try c.set(key, value, source: "--x")
                Issue.record("\(key) = \(value) was accepted")
            } catch {
                #expect(error.message.contains(needle) && error.message.contains("--x"), "\(error.message)")
            }
        }
    }

    @Test("the audit WAL limit: 4 GiB by default, set in bytes, at least 1 MiB")
    func auditWALLimit() throws {
        var c = ServerConfig()
        #expect(c.auditWALMaxBytes == AuditLog.defaultWALLimit)
        try c.apply(environment: ["KEEL_AUDIT_WAL_MAX_BYTES": "268435456"])
        #expect(c.auditWALMaxBytes == 256 << 20)
        do {
            try c.set("auditWalMaxBytes", "4096", source: "--audit-wal-max-bytes")
            Issue.record("a 4 KB WAL limit was accepted")
        } catch {
            #expect(error.message.contains("--audit-wal-max-bytes"), "\(error.message)")
        }
    }

    @Test("the transports' I/O threads: one each by default, 1 to 256")
    func eventLoopThreads() throws {
        var c = ServerConfig()
        #expect(c.eventLoopThreads == 1)
        try c.apply(environment: ["KEEL_EVENT_LOOP_THREADS": "4"])
        #expect(c.eventLoopThreads == 4)
        try c.apply(json: Data(#"{"eventLoopThreads": 2}"#.utf8), source: "keel.json")
        #expect(c.eventLoopThreads == 2)
        for value in ["0", "257", "many"] {
            do {
                try c.set("eventLoopThreads", value, source: "--event-loop-threads")
                Issue.record("\(value) I/O threads were accepted")
            } catch {
                #expect(error.message.contains("--event-loop-threads"), "\(error.message)")
            }
        }
        #expect(c.eventLoopThreads == 2)
    }

    @Test("duplicate ports are refused")
    func duplicatePorts() throws {
        var c = ServerConfig()
        c.grpcPort = 6000
        c.tcpPort = 6000
        #expect(throws: ConfigError.self) { try c.validate() }
        c.tcpPort = 0
        c.grpcPort = 0
        try c.validate()
    }

    @Test("environment values are checked", arguments: ["KEEL_GRPC_PORT", "KEEL_MAX_QUEUED_REQUESTS"])
    func badEnvironment(variable: String) {
        var c = ServerConfig()
        do {
            try c.apply(environment: [variable: "-5"])
            Issue.record("accepted -5 for \(variable)")
        } catch {
            #expect(error.message.contains(variable))
        }
    }
}

final class Flag: Sendable {
    private let value = Mutex(false)
    var isSet: Bool { value.withLock { $0 } }
    func set() { value.withLock { $0 = true } }
}

import Synchronization

func waitUntil(timeout: Duration = .seconds(10), _ condition: () -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        if ContinuousClock.now > deadline { throw WaitTimeout() }
        try await Task.sleep(for: .milliseconds(10))
    }
}

struct WaitTimeout: Error {}

/// A handler that answers every call OK after `delay`.
private struct SlowHandler: RequestHandler {
    let delay: Duration
    func handle(_ method: RPCMethod, request: [UInt8], deadline: ContinuousClock.Instant) async
        -> Result<[UInt8], RPCStatus>
    {
        try? await Task.sleep(for: delay)
        return .success([])
    }
}

/// Answers 1 when called on a NIO event loop thread, 0 otherwise.
private struct WhereHandler: RequestHandler {
    func handle(_ method: RPCMethod, request: [UInt8], deadline: ContinuousClock.Instant) async
        -> Result<[UInt8], RPCStatus>
    {
        .success([MultiThreadedEventLoopGroup.currentEventLoop == nil ? 0 : 1])
    }
}

/// Counts the calls whose task ran on the gRPC event loop when they reached
/// the server's interceptors (before the bridge hands them to the pool).
private final class LoopProbe: ServerInterceptor {
    let onLoop = Mutex(0)
    let calls = Mutex(0)

    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>, context: ServerContext,
        next: (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        calls.withLock { $0 += 1 }
        if MultiThreadedEventLoopGroup.currentEventLoop != nil { onLoop.withLock { $0 += 1 } }
        return try await next(request, context)
    }
}

@Suite("gRPC bridge")
struct GRPCBridgeTests {
    @Test("served as keel serve does, a call's handler runs off every loop, and with one I/O thread its task on that loop",
          arguments: [RPCMethod.rebalance, .listModels], [1, 3])
    func handlerRunsOffTheEventLoop(_ method: RPCMethod, threads: Int) async throws {
        let probe = LoopProbe()
        let grpc = GRPCServing(
            address: .ipv4(host: "127.0.0.1", port: 0), maxRequestBytes: 1 << 20, threads: threads,
            services: [KeelGRPCServices(handler: WhereHandler(), defaultDeadline: .seconds(1),
                                        maxRequestBytes: 1 << 20, isShuttingDown: { false },
                                        budget: PayloadBudget(limit: 1 << 30))],
            interceptors: [probe])
        let serving = Task { try await grpc.serve() }
        defer {
            grpc.server.beginGracefulShutdown()
            serving.cancel()
        }
        let port = try #require(try await grpc.transport.listeningAddress.ipv4?.port)
        let client = try GRPCUnaryClient(host: "127.0.0.1", port: port)
        for _ in 0..<20 {
            #expect(try await client.call(method, request: [], timeout: .seconds(5)) == [0])
        }
        await client.close()
        #expect(probe.calls.withLock { $0 } == 20)
        // With more threads the calls' tasks run on the global pool (grpc-swift's default).
        #expect(probe.onLoop.withLock { $0 } == (threads == 1 ? 20 : 0))
        #expect(grpc.group === GRPCServing.group(threads: threads))
        #expect(grpc.group.makeIterator().map { _ in 1 }.count == threads)
        #expect((grpc.executor != nil) == (threads == 1))
        grpc.server.beginGracefulShutdown()
        _ = try? await serving.value
    }

    @Test("an answer ready after the server's default deadline is DEADLINE_EXCEEDED, on a light method too",
          arguments: [RPCMethod.listModels, .rebalance])
    func lateAnswerIsReplaced(_ method: RPCMethod) async throws {
        let transport = HTTP2ServerTransport.Posix(
            address: .ipv4(host: "127.0.0.1", port: 0), transportSecurity: .plaintext)
        let services = KeelGRPCServices(handler: SlowHandler(delay: .milliseconds(300)),
                                        defaultDeadline: .milliseconds(100), maxRequestBytes: 1 << 20,
                                        isShuttingDown: { false }, budget: PayloadBudget(limit: 1 << 30))
        let server = GRPCServer(transport: transport, services: [services])
        let serving = Task { try await server.serve() }
        defer {
            server.beginGracefulShutdown()
            serving.cancel()
        }
        let port = try #require(try await transport.listeningAddress.ipv4?.port)
        // A grpc-swift client that sends no deadline (keel's own clients always send one).
        let client = GRPCClient(transport: try .http2NIOPosix(target: .ipv4(address: "127.0.0.1", port: port),
                                                              transportSecurity: .plaintext))
        let connections = Task { try? await client.runConnections() }
        defer {
            client.beginGracefulShutdown()
            connections.cancel()
        }
        func call(timeout: Duration?) async throws -> [UInt8] {
            var options = CallOptions.defaults
            options.timeout = timeout
            let parts = method.fullName.split(separator: "/").map(String.init)
            let descriptor = MethodDescriptor(fullyQualifiedService: parts[0], method: parts[1])
            return try await client.unary(request: ClientRequest(message: []), descriptor: descriptor,
                                          serializer: RawBytes(), deserializer: RawBytes(), options: options) {
                try $0.message
            }
        }
        do {
            _ = try await call(timeout: nil)
            Issue.record("a late answer was delivered")
        } catch let error as RPCError {
            #expect(error.code == .deadlineExceeded)
            #expect(error.message.contains("the answer was ready after the deadline"), "\(error.message)")
        }
        // A client deadline longer than the delay replaces the default: the answer arrives.
        #expect(try await call(timeout: .seconds(5)).isEmpty)
    }
}
