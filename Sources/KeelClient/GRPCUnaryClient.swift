import GRPCCore
import GRPCNIOTransportHTTP2
import KeelAPI
import KeelFramedTransport
import KeelServing
import NIOPosix
import SwiftProtobuf

/// A ``UnaryClient`` over standard gRPC (grpc-swift-2 on the NIO HTTP/2
/// transport, plaintext).
///
/// Every ``RPCMethod`` is called by its gRPC full name with raw serialized
/// bytes in and out. `PublishMarketData`, client-streaming in gRPC, takes a
/// serialized `keel.v1.PriceUpdateBatch` (as on the framed transport) and
/// streams the batch's updates one message each.
///
/// Thread-safety: safe to call from many tasks at once; concurrent calls are
/// multiplexed as HTTP/2 streams over the client's connection.
public final class GRPCUnaryClient: UnaryClient {
    private let client: GRPCClient<HTTP2ClientTransport.Posix>
    private let connections: Task<Void, Never>
    /// One event loop, shared by every gRPC client in the process (like NIO's
    /// singletons, never shut down), whose calls run on it as their task
    /// executor: a call's request, stream and answer then stay on one thread
    /// instead of hopping to the global pool between steps (8 to 10 % less
    /// client CPU per call; RESULTS.md, eighth pass).
    static let loops = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    static let executor = EventLoopTaskExecutor(loops.next())

    /// Creates the client and starts connecting in the background; the first
    /// call waits for the connection. A host containing `:` is taken as an
    /// IPv6 address, a dotted quad as IPv4, anything else is resolved by DNS.
    public init(host: String, port: Int) throws(RPCStatus) {
        let transport: HTTP2ClientTransport.Posix
        do {
            transport = try .http2NIOPosix(
                target: Self.target(host: host, port: port),
                transportSecurity: .plaintext,
                // No flush coalescing: a request is written at once rather
                // than held up to 100 us for company (as the server does).
                config: .defaults { $0.connection.flushCoalescing = nil },
                eventLoopGroup: Self.loops)
        } catch {
            throw RPCStatus(.unavailable, "cannot create a gRPC transport to \(host):\(port): \(error)")
        }
        let client = GRPCClient(transport: transport)
        self.client = client
        let executor = Self.executor
        self.connections = Task { await withTaskExecutorPreference(executor) { try? await client.runConnections() } }
    }

    private static func target(host: String, port: Int) -> any ResolvableTarget {
        if host.contains(":") { return .ipv6(address: host, port: port) }
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        if parts.count == 4, parts.allSatisfy({ UInt8($0) != nil }) { return .ipv4(address: host, port: port) }
        return .dns(host: host, port: port)
    }

    /// The grpc-swift descriptor of a method (`keel.v1.Rebalancer` + `Rebalance`).
    static func descriptor(_ method: RPCMethod) -> MethodDescriptor {
        let full = method.fullName
        let slash = full.lastIndex(of: "/") ?? full.endIndex
        let service = String(full[..<slash])
        let name = slash < full.endIndex ? String(full[full.index(after: slash)...]) : full
        return MethodDescriptor(fullyQualifiedService: service, method: name)
    }

    public func call(_ method: RPCMethod, request: [UInt8], timeout: Duration?) async throws(RPCStatus) -> [UInt8] {
        var options = CallOptions.defaults
        // No timeout given: send the server's default deadline (1 s) rather than none,
        // so a dead or half-open server cannot keep the caller waiting forever.
        options.timeout = timeout ?? .seconds(1)
        let descriptor = Self.descriptor(method)
        do {
            if method == .publishMarketData {
                let batch: Keel_V1_PriceUpdateBatch
                do {
                    batch = try Keel_V1_PriceUpdateBatch(serializedBytes: request)
                } catch {
                    throw RPCStatus(.invalidArgument, "PublishMarketData request is not a keel.v1.PriceUpdateBatch: \(error)")
                }
                var updates: [[UInt8]] = []
                updates.reserveCapacity(batch.updates.count)
                for update in batch.updates {
                    updates.append(try update.serializedBytes() as [UInt8])
                }
                let streamed = updates
                return try await client.clientStreaming(
                    request: StreamingClientRequest(of: [UInt8].self) { writer in
                        try await writer.write(contentsOf: streamed)
                    },
                    descriptor: descriptor,
                    serializer: RawBytesSerializer(),
                    deserializer: RawBytesDeserializer(),
                    options: options
                ) { response in try response.message }
            }
            let client = self.client
            return try await withTaskExecutorPreference(Self.executor) {
                try await client.unary(
                    request: ClientRequest(message: request),
                    descriptor: descriptor,
                    serializer: RawBytesSerializer(),
                    deserializer: RawBytesDeserializer(),
                    options: options
                ) { response in try response.message }
            }
        } catch {
            throw Self.status(from: error)
        }
    }

    /// Maps whatever grpc-swift threw to an ``RPCStatus`` with the same code.
    static func status(from error: any Error) -> RPCStatus {
        switch error {
        case let status as RPCStatus:
            return status
        case let rpcError as RPCError:
            let code = RPCStatusCode(rawValue: Int32(rpcError.code.rawValue)) ?? .unknown
            return RPCStatus(code, rpcError.message)
        case is CancellationError:
            return RPCStatus(.cancelled, "the call was cancelled")
        case let runtime as RuntimeError:
            return RPCStatus(.unavailable, "gRPC client: \(runtime.message)")
        default:
            return RPCStatus(.unknown, "\(error)")
        }
    }

    /// Begins a graceful shutdown and waits up to one second for calls in
    /// flight; then stops the connection, failing what is left.
    public func close() async {
        client.beginGracefulShutdown()
        let runner = connections
        let watchdog = Task {
            try? await Task.sleep(for: .seconds(1))
            runner.cancel()
        }
        await runner.value
        watchdog.cancel()
    }
}
