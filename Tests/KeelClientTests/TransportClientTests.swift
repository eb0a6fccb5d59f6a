import GRPCCore
import GRPCNIOTransportHTTP2
import KeelAPI
import KeelClient
import KeelFramedTransport
import KeelServing
import SwiftProtobuf
import Synchronization
import Testing

/// A minimal gRPC server for the client tests: canned raw-bytes handlers.
struct CannedService: RegistrableRPCService {
    static func descriptor(_ method: RPCMethod) -> MethodDescriptor {
        let parts = method.fullName.split(separator: "/")
        return MethodDescriptor(fullyQualifiedService: String(parts[0]), method: String(parts[1]))
    }

    func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
        router.registerHandler(
            forMethod: Self.descriptor(.healthCheck), deserializer: RawBytesDeserializer(),
            serializer: RawBytesSerializer()
        ) { request, _ in
            for try await _ in request.messages {}
            var response = Grpc_Health_V1_HealthCheckResponse()
            response.status = .serving
            return StreamingServerResponse(single: ServerResponse(message: try response.serializedBytes()))
        }
        router.registerHandler(
            forMethod: Self.descriptor(.listModels), deserializer: RawBytesDeserializer(),
            serializer: RawBytesSerializer()
        ) { request, _ in
            for try await _ in request.messages {}
            var info = Keel_V1_ModelInfo()
            info.ref.name = "policy"
            info.ref.version = 3
            info.kind = "policy"
            info.features = (0..<12).map { "f\($0)" }
            info.serving = true
            var response = Keel_V1_ListModelsResponse()
            response.models = [info]
            return StreamingServerResponse(single: ServerResponse(message: try response.serializedBytes()))
        }
        // Client streaming: counts the updates.
        router.registerHandler(
            forMethod: Self.descriptor(.publishMarketData), deserializer: RawBytesDeserializer(),
            serializer: RawBytesSerializer()
        ) { request, _ in
            var accepted: Int64 = 0
            var rejected: Int64 = 0
            for try await bytes in request.messages {
                if let update = try? Keel_V1_PriceUpdate(serializedBytes: bytes), update.price > 0 {
                    accepted += 1
                } else {
                    rejected += 1
                }
            }
            var response = Keel_V1_PublishMarketDataResponse()
            response.accepted = accepted
            response.rejected = rejected
            return StreamingServerResponse(single: ServerResponse(message: try response.serializedBytes()))
        }
        // Always overloaded.
        router.registerHandler(
            forMethod: Self.descriptor(.rebalance), deserializer: RawBytesDeserializer(),
            serializer: RawBytesSerializer()
        ) { request, _ in
            for try await _ in request.messages {}
            throw RPCError(code: .resourceExhausted, message: "queue full")
        }
        // Slow: answers after 2 s.
        router.registerHandler(
            forMethod: Self.descriptor(.forecastLiquidity), deserializer: RawBytesDeserializer(),
            serializer: RawBytesSerializer()
        ) { request, _ in
            for try await _ in request.messages {}
            try await Task.sleep(for: .seconds(2))
            return StreamingServerResponse(single: ServerResponse(message: []))
        }
    }
}

/// Runs a gRPC server on 127.0.0.1 port 0 around `body`.
func withCannedGRPCServer<T: Sendable>(_ body: (Int) async throws -> T) async throws -> T {
    let transport = HTTP2ServerTransport.Posix(
        address: .ipv4(host: "127.0.0.1", port: 0), transportSecurity: .plaintext)
    let server = GRPCServer(transport: transport, services: [CannedService()])
    let serving = Task { try await server.serve() }
    defer {
        server.beginGracefulShutdown()
        serving.cancel()
    }
    let address = try await transport.listeningAddress
    let port = try #require(address.ipv4?.port)
    return try await body(port)
}

@Suite("GRPCUnaryClient against an in-test grpc-swift server")
struct GRPCUnaryClientTests {
    @Test func healthAndListModels() async throws {
        try await withCannedGRPCServer { port in
            let client = try await KeelClients.connect(try Endpoint(parsing: "grpc://127.0.0.1:\(port)"))
            let health = try await client.call(.healthCheck, request: [], timeout: .seconds(5))
            #expect(try Grpc_Health_V1_HealthCheckResponse(serializedBytes: health).status == .serving)
            let models = try await client.call(.listModels, request: [], timeout: .seconds(5))
            #expect(try Keel_V1_ListModelsResponse(serializedBytes: models).models.first?.features.count == 12)
            await client.close()
        }
    }

    @Test("PublishMarketData streams the batch's updates one message each")
    func clientStreaming() async throws {
        try await withCannedGRPCServer { port in
            let client = try GRPCUnaryClient(host: "127.0.0.1", port: port)
            let request = try BenchRequests.serialized(.publishMarketData, assets: 37)
            let bytes = try await client.call(.publishMarketData, request: request, timeout: .seconds(5))
            let response = try Keel_V1_PublishMarketDataResponse(serializedBytes: bytes)
            #expect(response.accepted == 37)
            #expect(response.rejected == 0)
            // A request that is not a PriceUpdateBatch is refused before sending.
            do throws(RPCStatus) {
                _ = try await client.call(.publishMarketData, request: [0xFF, 0xFF], timeout: .seconds(5))
                Issue.record("expected INVALID_ARGUMENT")
            } catch {
                #expect(error.code == .invalidArgument)
            }
            await client.close()
        }
    }

    @Test("server errors keep their code; a timeout is DEADLINE_EXCEEDED")
    func statusMapping() async throws {
        try await withCannedGRPCServer { port in
            let client = try GRPCUnaryClient(host: "127.0.0.1", port: port)
            do throws(RPCStatus) {
                _ = try await client.call(.rebalance, request: [], timeout: .seconds(5))
                Issue.record("expected RESOURCE_EXHAUSTED")
            } catch {
                #expect(error.code == .resourceExhausted)
                #expect(error.message.contains("queue full"))
            }
            let clock = ContinuousClock()
            let start = clock.now
            do throws(RPCStatus) {
                _ = try await client.call(.forecastLiquidity, request: [], timeout: .milliseconds(100))
                Issue.record("expected DEADLINE_EXCEEDED")
            } catch {
                #expect(error.code == .deadlineExceeded)
            }
            #expect(clock.now - start < .seconds(1))
            // An unknown method (not registered here) is UNIMPLEMENTED.
            do throws(RPCStatus) {
                _ = try await client.call(.decide, request: [], timeout: .seconds(5))
                Issue.record("expected UNIMPLEMENTED")
            } catch {
                #expect(error.code == .unimplemented)
            }
            await client.close()
        }
    }

    @Test("a server that is not there is UNAVAILABLE")
    func unavailable() async throws {
        // Take a free port, then close the server on it.
        let port = try await withCannedGRPCServer { $0 }
        try await Task.sleep(for: .milliseconds(100))
        let client = try GRPCUnaryClient(host: "127.0.0.1", port: port)
        let outcome = await withTimeout(.seconds(10)) { () -> RPCStatusCode? in
            do throws(RPCStatus) {
                _ = try await client.call(.healthCheck, request: [], timeout: .seconds(3))
                return nil
            } catch {
                return error.code
            }
        }
        #expect(outcome == .some(.unavailable) || outcome == .some(.deadlineExceeded))
        await client.close()
    }

    @Test("the load generator drives the gRPC client")
    func loadOverGRPC() async throws {
        try await withCannedGRPCServer { port in
            let endpoint = try Endpoint(parsing: "grpc://127.0.0.1:\(port)")
            let clients = try await LoadGenerator.connect(count: 2) { () async throws(RPCStatus) in
                try await KeelClients.connect(endpoint)
            }
            let plan = LoadPlan(
                method: .healthCheck, request: [], mode: .closedLoop(concurrency: 2), duration: .milliseconds(500),
                timeout: .seconds(2))
            let result = try #require(await withTimeout(.seconds(15)) { await LoadGenerator().run(plan, using: clients) })
            // Debug builds on a busy 2-core machine manage only a few hundred per second.
            #expect(result.ok >= 2)
            #expect(result.latencies.totalCount == UInt64(result.ok))
            #expect(result.errors == 0)
            for c in clients { await c.close() }
        }
    }
}

/// Answers every request with its own bytes, or with a status for `.decide`.
struct EchoHandler: RequestHandler {
    func handle(_ method: RPCMethod, request: [UInt8], deadline: ContinuousClock.Instant) async
        -> Result<[UInt8], RPCStatus>
    {
        method == .decide ? .failure(RPCStatus(.notFound, "no such approval")) : .success(request)
    }
}

@Suite("Framed client through KeelClients")
struct FramedClientTests {
    func withEchoServer<T: Sendable>(_ body: (Int) async throws -> T) async throws -> T {
        let server = FramedServer(
            handler: EchoHandler(), configuration: FramedServer.Configuration(host: "127.0.0.1", port: 0))
        let port = try await server.start()
        do {
            let value = try await body(port)
            await server.shutdown(gracefully: false)
            return value
        } catch {
            await server.shutdown(gracefully: false)
            throw error
        }
    }

    @Test func callsAndStatuses() async throws {
        try await withEchoServer { port in
            let client = try await KeelClients.connect(try Endpoint(parsing: "tcp://127.0.0.1:\(port)"))
            let request = try BenchRequests.serialized(.rebalance, assets: 20)
            #expect(try await client.call(.rebalance, request: request, timeout: .seconds(2)) == request)
            do throws(RPCStatus) {
                _ = try await client.call(.decide, request: [], timeout: .seconds(2))
                Issue.record("expected NOT_FOUND")
            } catch {
                #expect(error.code == .notFound)
            }
            await client.close()
        }
    }

    @Test("open loop over loopback: every scheduled request answered")
    func openLoopOverLoopback() async throws {
        try await withEchoServer { port in
            let endpoint = try Endpoint(parsing: "tcp://127.0.0.1:\(port)")
            let clients = try await LoadGenerator.connect(count: 1) { () async throws(RPCStatus) in
                try await KeelClients.connect(endpoint)
            }
            let request = try BenchRequests.serialized(.rebalance, assets: 50)
            let plan = LoadPlan(
                method: .rebalance, request: request, mode: .openLoop(rate: 4000), duration: .milliseconds(500),
                timeout: .seconds(2))
            let result = try #require(await withTimeout(.seconds(15)) { await LoadGenerator().run(plan, using: clients) })
            #expect(result.sent == 2000)
            #expect(result.ok == 2000)
            #expect(result.errors == 0)
            for c in clients { await c.close() }
        }
    }

    @Test("a closed port is UNAVAILABLE")
    func refused() async throws {
        let port = try await withEchoServer { $0 }
        await #expect(throws: RPCStatus.self) {
            _ = try await KeelClients.connect(Endpoint(transport: .tcp, host: "127.0.0.1", port: port))
        }
    }
}
