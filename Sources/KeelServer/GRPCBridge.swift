import GRPCCore
import KeelServing

/// Serves every ``RPCMethod`` over gRPC by handing the request's serialized
/// bytes to the same ``RequestHandler`` the framed transport uses, so both
/// transports decode, validate, queue, time and answer identically.
///
/// Messages cross gRPC as raw bytes (no second protobuf decode); the handler
/// decodes once. The deadline comes from the client's `grpc-timeout` header
/// (grpc-swift also cancels the handler when it passes), or the server default.
/// An answer ready after the deadline is replaced by DEADLINE_EXCEEDED, for
/// every method (the compute methods' gate does the same; this also covers
/// the light ones, such as a LoadModel of a large file).
struct KeelGRPCServices: RegistrableRPCService {
    let handler: any RequestHandler
    let defaultDeadline: Duration
    /// Largest request accepted, in bytes: PublishMarketData's whole stream counts.
    let maxRequestBytes: Int
    /// True once the server is shutting down: Watch streams then send their
    /// last status and end, so a graceful shutdown does not wait on them forever.
    let isShuttingDown: @Sendable () -> Bool
    /// The bridge's own error answers (`keel_transport_errors_total{transport="grpc"}`).
    let transportErrors = TransportErrorMetrics(transport: "grpc")
    /// Bytes of the requests in flight over gRPC (`maxInFlightBytes`).
    let budget: PayloadBudget

    func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
        for method in RPCMethod.allCases {
            let parts = method.fullName.split(separator: "/")
            let descriptor = MethodDescriptor(fullyQualifiedService: String(parts[0]), method: String(parts[1]))
            let handler = self.handler
            let defaultDeadline = self.defaultDeadline
            let maxBytes = self.maxRequestBytes
            let transportErrors = self.transportErrors
            let budget = self.budget
            router.registerHandler(
                forMethod: descriptor,
                deserializer: RawBytes(),
                serializer: RawBytes()
            ) { request, context in
                let deadline = ContinuousClock.now + (GRPCTimeout.parse(request.metadata) ?? defaultDeadline)
                let body: [UInt8]
                do {
                    body = try await Self.requestBytes(for: method, from: request.messages, maxBytes: maxBytes,
                                                       deadline: deadline)
                } catch let status as RPCStatus {
                    transportErrors.count(status.code)
                    return StreamingServerResponse(of: [UInt8].self, error: RPCError(status))
                }
                guard budget.take(body.count) else {
                    transportErrors.count(.resourceExhausted)
                    return StreamingServerResponse(of: [UInt8].self, error: RPCError(budget.refusal(body.count)))
                }
                // The call's task runs on the gRPC event loop (KeelServerRunner);
                // the handler's work (decode, engine, audit) goes to the pool.
                let result = await withTaskExecutorPreference(globalConcurrentExecutor) {
                    await handler.handle(method, request: body, deadline: deadline)
                }
                budget.give(body.count)
                switch result {
                case .success where ContinuousClock.now > deadline:
                    transportErrors.count(.deadlineExceeded)
                    return StreamingServerResponse(of: [UInt8].self, error: RPCError(RPCStatus(
                        .deadlineExceeded, "\(method.fullName): deadline exceeded: the answer was ready after the "
                            + "deadline (its effects, if any, took place)")))
                case .success(let bytes):
                    return StreamingServerResponse(single: ServerResponse(message: bytes))
                case .failure(let status):
                    return StreamingServerResponse(of: [UInt8].self, error: RPCError(status))
                }
            }
        }
        // Health/Watch: the current status, then a new message whenever it changes,
        // until the client leaves or the server shuts down.
        let watch = MethodDescriptor(fullyQualifiedService: "grpc.health.v1.Health", method: "Watch")
        let handler = self.handler
        let isShuttingDown = self.isShuttingDown
        router.registerHandler(forMethod: watch, deserializer: RawBytes(), serializer: RawBytes()) { request, _ in
            var body: [UInt8] = []
            for try await message in request.messages { body = message; break }
            let query = body
            return StreamingServerResponse(of: [UInt8].self) { writer in
                var last: [UInt8]? = nil
                while !Task.isCancelled {
                    let result = await withTaskExecutorPreference(globalConcurrentExecutor) {
                        await handler.handle(.healthCheck, request: query, deadline: .now + .seconds(1))
                    }
                    // SERVICE_UNKNOWN (3) for a service the health check does not know.
                    let status = (try? result.get()) ?? [0x08, 0x03]
                    if status != last {
                        try await writer.write(status)
                        last = status
                    }
                    if isShuttingDown() { break }
                    try await Task.sleep(for: .milliseconds(200))
                }
                return [:]
            }
        }
    }

    /// The request bytes: the single message of a unary call, or for the
    /// client-streaming PublishMarketData the stream re-encoded as one
    /// `keel.v1.PriceUpdateBatch` (field 1 repeated), without decoding.
    /// Reading stops at the deadline (a client that never half-closes cannot
    /// hold the call open) and at `maxBytes` (a stream cannot grow without end).
    static func requestBytes(for method: RPCMethod, from messages: RPCAsyncSequence<[UInt8], any Error>,
                             maxBytes: Int, deadline: ContinuousClock.Instant) async throws -> [UInt8]
    {
        try await withThrowingTaskGroup(of: [UInt8]?.self) { group in
            group.addTask { try await readRequest(for: method, from: messages, maxBytes: maxBytes) }
            group.addTask {
                try? await Task.sleep(until: deadline, clock: .continuous)
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let bytes = first else {
                throw RPCStatus(.deadlineExceeded, "\(method.fullName): the request was not complete before its deadline")
            }
            return bytes
        }
    }

    private static func readRequest(for method: RPCMethod, from messages: RPCAsyncSequence<[UInt8], any Error>,
                                    maxBytes: Int) async throws -> [UInt8]
    {
        if method == .publishMarketData {
            var batch: [UInt8] = []
            for try await update in messages {
                batch.append(0x0A)  // field 1, length-delimited
                var n = UInt64(update.count)
                while n >= 0x80 {
                    batch.append(UInt8(n & 0x7F) | 0x80)
                    n >>= 7
                }
                batch.append(UInt8(n))
                batch.append(contentsOf: update)
                if batch.count > maxBytes {
                    throw RPCStatus(.resourceExhausted, "\(method.fullName): the stream exceeds \(maxBytes) bytes; "
                                        + "send the updates in several calls")
                }
            }
            return batch
        }
        var first: [UInt8]? = nil
        for try await message in messages {
            guard first == nil else {
                throw RPCStatus(.invalidArgument, "\(method.fullName) is unary but the client sent more than one message")
            }
            first = message
        }
        guard let request = first else {
            throw RPCStatus(.invalidArgument, "\(method.fullName): the client sent no request message")
        }
        return request
    }
}

/// Passes message bytes through unchanged in both directions.
struct RawBytes: MessageSerializer, MessageDeserializer {
    func serialize<Bytes: GRPCContiguousBytes>(_ message: [UInt8]) throws -> Bytes { Bytes(message) }
    func deserialize<Bytes: GRPCContiguousBytes>(_ bytes: Bytes) throws -> [UInt8] {
        bytes.withUnsafeBytes { Array($0) }
    }
}

extension RPCError {
    /// The same code and message as the framed transport's error frame.
    init(_ status: RPCStatus) {
        let code = RPCError.Code(Status.Code(rawValue: Int(status.code.rawValue)) ?? .unknown) ?? .unknown
        self.init(code: code, message: status.message)
    }
}

/// The `grpc-timeout` request header: 1 to 8 digits and a unit (H, M, S, m, u, n).
enum GRPCTimeout {
    static func parse(_ metadata: Metadata) -> Duration? {
        guard let text = metadata[stringValues: "grpc-timeout"].first(where: { _ in true }) else { return nil }
        return parse(text)
    }

    static func parse(_ text: String) -> Duration? {
        guard let unit = text.last, text.count >= 2, text.count <= 9,
              let value = Int64(text.dropLast()), value >= 0 else { return nil }
        switch unit {
        case "H": return .seconds(value * 3600)
        case "M": return .seconds(value * 60)
        case "S": return .seconds(value)
        case "m": return .milliseconds(value)
        case "u": return .microseconds(value)
        case "n": return .nanoseconds(value)
        default: return nil
        }
    }
}
