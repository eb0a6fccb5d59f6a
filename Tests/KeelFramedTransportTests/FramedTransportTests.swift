import Foundation
import KeelAPI
import KeelFramedTransport
import KeelServing
import NIOCore
import NIOPosix
import Synchronization
import Testing

@Suite("Framed transport: calls through FramedClient")
struct FramedClientServerTests {
    @Test("a request round-trips and the payload comes back intact")
    func roundTrip() async throws {
        try await withServer { _, port in
            let client = try await FramedClient.connect(host: "127.0.0.1", port: port)
            let request = Array("hello keel".utf8)
            let response = try await client.call(.listModels, request: request, timeout: .seconds(1))
            #expect(response == request)
            let empty = try await client.call(.listModels, request: [], timeout: nil)
            #expect(empty.isEmpty)
            await client.close()
        }
    }

    @Test("1000 concurrent calls pipelined on one connection are each matched to their own response")
    func pipelined() async throws {
        try await withServer { _, port in
            let client = try await FramedClient.connect(host: "127.0.0.1", port: port)
            let mismatches = try await withTimeLimit(.seconds(20)) {
                await withTaskGroup(of: Int.self) { group in
                    for i in 0..<1000 {
                        group.addTask {
                            let request = withUnsafeBytes(of: UInt32(i).bigEndian) { Array($0) } + Array(repeating: UInt8(i % 251), count: i % 64)
                            do {
                                let response = try await client.call(.listModels, request: request, timeout: .seconds(5))
                                return response == request ? 0 : 1
                            } catch {
                                return 1
                            }
                        }
                    }
                    return await group.reduce(0, +)
                }
            }
            #expect(mismatches == 0)
            await client.close()
        }
    }

    @Test("responses come back in completion order, not request order")
    func outOfOrder() async throws {
        try await withServer { _, port in
            let client = try await FramedClient.connect(host: "127.0.0.1", port: port)
            let order = try await withThrowingTaskGroup(of: String.self) { group in
                group.addTask {
                    let r = try await client.call(.rebalance, request: TestHandler.slowRequest(milliseconds: 1000, tag: 1), timeout: .seconds(3))
                    #expect(r.last == 1)
                    return "slow"
                }
                try await Task.sleep(for: .milliseconds(50))  // the slow one is sent first
                group.addTask {
                    let r = try await client.call(.rebalance, request: TestHandler.slowRequest(milliseconds: 0, tag: 2), timeout: .seconds(3))
                    #expect(r.last == 2)
                    return "fast"
                }
                var order: [String] = []
                for try await name in group { order.append(name) }
                return order
            }
            #expect(order == ["fast", "slow"])
            await client.close()
        }
    }

    @Test("a handler's status reaches the caller with its code and message; the connection stays usable")
    func handlerError() async throws {
        try await withServer { _, port in
            let client = try await FramedClient.connect(host: "127.0.0.1", port: port)
            // Bytes that are not a DecideRequest: the transport passes them through, the handler decides.
            let garbage: [UInt8] = [0xFF, 0xFF, 0xFF, 0x07]
            await #expect(throws: RPCStatus(.invalidArgument, "the payload does not decode as keel.v1.DecideRequest")) {
                _ = try await client.call(.decide, request: garbage, timeout: .seconds(1))
            }
            #expect(try await client.call(.listModels, request: [1, 2, 3], timeout: .seconds(1)) == [1, 2, 3])
            await client.close()
        }
    }

    @Test("a slow handler is answered with DEADLINE_EXCEEDED near the request's timeout")
    func deadline() async throws {
        try await withServer { _, port in
            // A long grace: the answer must be the server's, not the client's own timeout.
            let client = try await FramedClient.connect(host: "127.0.0.1", port: port, configuration: .init(timeoutGrace: .seconds(2)))
            let clock = ContinuousClock()
            let start = clock.now
            let outcome: RPCStatus? = await {
                do {
                    _ = try await client.call(.rebalance, request: TestHandler.slowRequest(milliseconds: 3000), timeout: .milliseconds(100))
                    return nil
                } catch { return error as? RPCStatus }
            }()
            let elapsed = clock.now - start
            #expect(outcome?.code == .deadlineExceeded)
            #expect(outcome?.message.contains("deadline") == true)
            #expect(elapsed >= .milliseconds(90))
            #expect(elapsed < .milliseconds(1000), "DEADLINE_EXCEEDED came after \(elapsed)")
            await client.close()
        }
    }

    @Test("timeout_us 0 means the server's configured default deadline")
    func defaultDeadline() async throws {
        try await withServer(configure: { $0.defaultDeadline = .milliseconds(200) }) { _, port in
            let client = try await FramedClient.connect(host: "127.0.0.1", port: port)
            let clock = ContinuousClock()
            let start = clock.now
            await #expect {
                _ = try await client.call(.rebalance, request: TestHandler.slowRequest(milliseconds: 3000), timeout: nil)
            } throws: { error in
                (error as? RPCStatus)?.code == .deadlineExceeded
            }
            let elapsed = clock.now - start
            // The client itself would give up only after 1 s + 250 ms.
            #expect(elapsed >= .milliseconds(180) && elapsed < .milliseconds(1100), "answered after \(elapsed)")
            await client.close()
        }
    }

    @Test("more requests in flight than the per-connection limit are refused with RESOURCE_EXHAUSTED")
    func inFlightLimit() async throws {
        let handler = TestHandler()
        try await withServer(handler, configure: { $0.maxInFlightPerConnection = 4 }) { _, port in
            let client = try await FramedClient.connect(host: "127.0.0.1", port: port)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<4 {
                    group.addTask {
                        _ = try await client.call(.rebalance, request: TestHandler.slowRequest(milliseconds: 1500, tag: UInt8(i)), timeout: .seconds(3))
                    }
                }
                // Wait (bounded) until the four slow ones are running.
                for _ in 0..<200 where handler.started.load(ordering: .relaxed) < 4 {
                    try await Task.sleep(for: .milliseconds(5))
                }
                #expect(handler.started.load(ordering: .relaxed) == 4)
                let clock = ContinuousClock()
                let start = clock.now
                await #expect {
                    _ = try await client.call(.listModels, request: [9], timeout: .seconds(2))
                } throws: { error in
                    (error as? RPCStatus)?.code == .resourceExhausted
                }
                #expect(clock.now - start < .milliseconds(1000), "the refusal must come at once, not when a slot frees")
                try await group.waitForAll()
            }
            // Once they finished, the connection serves again.
            #expect(try await client.call(.listModels, request: [7], timeout: .seconds(1)) == [7])
            await client.close()
        }
    }

    @Test("request bytes in flight are bounded across connections: beyond the budget RESOURCE_EXHAUSTED at once")
    func inFlightBytesBudget() async throws {
        let handler = TestHandler()
        // Two slow 600-byte requests fit a 1,500-byte budget; a third does not.
        let slow = TestHandler.slowRequest(milliseconds: 1500) + [UInt8](repeating: 1, count: 595)
        try await withServer(handler, configure: { $0.maxInFlightBytes = 1500 }) { _, port in
            let a = try await FramedClient.connect(host: "127.0.0.1", port: port)
            let b = try await FramedClient.connect(host: "127.0.0.1", port: port)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { _ = try await a.call(.rebalance, request: slow, timeout: .seconds(3)) }
                group.addTask { _ = try await b.call(.rebalance, request: slow, timeout: .seconds(3)) }
                for _ in 0..<200 where handler.started.load(ordering: .relaxed) < 2 {
                    try await Task.sleep(for: .milliseconds(5))
                }
                #expect(handler.started.load(ordering: .relaxed) == 2)
                do {
                    _ = try await a.call(.listModels, request: [UInt8](repeating: 2, count: 600), timeout: .seconds(2))
                    Issue.record("a request past the byte budget was accepted")
                } catch let error as RPCStatus {
                    #expect(error.code == .resourceExhausted)
                    #expect(error.message.contains("limit of 1500 bytes"), "\(error.message)")
                }
                // A small one still fits.
                #expect(try await b.call(.listModels, request: [5], timeout: .seconds(2)) == [5])
                try await group.waitForAll()
            }
            // Once they finished, their bytes are given back.
            #expect(try await a.call(.listModels, request: [UInt8](repeating: 3, count: 600), timeout: .seconds(1)).count
                == 600)
            await a.close()
            await b.close()
        }
    }

    @Test("PayloadBudget: takes while within its limit, always fits one request when empty, gives back")
    func payloadBudget() {
        let budget = PayloadBudget(limit: 100)
        #expect(budget.take(60))
        #expect(!budget.take(50))
        #expect(budget.take(40))
        #expect(budget.inUse == 100)
        budget.give(60)
        budget.give(40)
        #expect(budget.inUse == 0)
        #expect(budget.take(500), "a request larger than the limit is still served alone")
        #expect(!budget.take(1))
        budget.give(500)
        #expect(budget.inUse == 0)
    }

    @Test("graceful shutdown lets in-flight calls finish, then refuses new connections")
    func gracefulShutdown() async throws {
        let handler = TestHandler()
        let server = FramedServer(handler: handler, configuration: .init(host: "127.0.0.1", port: 0, shutdownGracePeriod: .seconds(3)))
        let port = try await server.start()
        let client = try await FramedClient.connect(host: "127.0.0.1", port: port)
        try await withThrowingTaskGroup(of: [UInt8].self) { group in
            for i in 0..<5 {
                group.addTask {
                    try await client.call(.rebalance, request: TestHandler.slowRequest(milliseconds: 300, tag: UInt8(i)), timeout: .seconds(2))
                }
            }
            for _ in 0..<200 where handler.started.load(ordering: .relaxed) < 5 {
                try await Task.sleep(for: .milliseconds(5))
            }
            let clock = ContinuousClock()
            let start = clock.now
            await server.shutdown(gracefully: true)
            #expect(clock.now - start >= .milliseconds(150), "shutdown returned before the in-flight calls finished")
            var tags: [UInt8] = []
            for try await response in group { tags.append(response.last ?? 255) }
            #expect(tags.sorted() == [0, 1, 2, 3, 4])
        }
        // The connection was closed after draining; new ones are refused.
        await #expect(throws: RPCStatus.self) {
            _ = try await client.call(.listModels, request: [], timeout: .milliseconds(200))
        }
        await #expect {
            _ = try await FramedClient.connect(host: "127.0.0.1", port: port, configuration: .init(connectTimeout: .seconds(1)))
        } throws: { error in
            (error as? RPCStatus)?.code == .unavailable
        }
        #expect(server.localPort == nil)
    }

    @Test("a request arriving on an open connection during a graceful shutdown gets UNAVAILABLE")
    func requestDuringDrain() async throws {
        let handler = TestHandler()
        let server = FramedServer(handler: handler, configuration: .init(host: "127.0.0.1", port: 0, shutdownGracePeriod: .seconds(3)))
        let port = try await server.start()
        let raw = try RawConnection(port: port)
        raw.write(rawFrame(method: RPCMethod.rebalance.rawValue, requestID: 1, payload: TestHandler.slowRequest(milliseconds: 800)))
        for _ in 0..<200 where handler.started.load(ordering: .relaxed) < 1 {
            try await Task.sleep(for: .milliseconds(5))
        }
        async let stopped: Void = server.shutdown(gracefully: true)
        try await Task.sleep(for: .milliseconds(200))
        raw.write(rawFrame(method: RPCMethod.listModels.rawValue, requestID: 2))
        let first = await raw.readFrame()
        #expect(first?.requestID == 2)
        #expect(first?.status?.code == .unavailable)
        let second = await raw.readFrame()
        #expect(second?.requestID == 1)
        #expect(second?.kind == FrameKind.response.rawValue)
        #expect(await raw.sawEOF())
        await stopped
    }

    @Test("a dead server cannot hang a caller: the client times out by itself")
    func clientSideTimeout() async throws {
        let silent = try await SilentServer.start(closeOnRead: false)
        let client = try await FramedClient.connect(
            host: "127.0.0.1", port: silent.port, configuration: .init(timeoutGrace: .milliseconds(100)))
        let clock = ContinuousClock()
        let start = clock.now
        await #expect {
            _ = try await client.call(.listModels, request: [], timeout: .milliseconds(100))
        } throws: { error in
            (error as? RPCStatus)?.code == .deadlineExceeded
        }
        let elapsed = clock.now - start
        #expect(elapsed >= .milliseconds(190) && elapsed < .seconds(2), "gave up after \(elapsed)")
        await client.close()
        await silent.stop()
    }

    @Test("when the connection drops, every pending call fails with UNAVAILABLE")
    func connectionLoss() async throws {
        let silent = try await SilentServer.start(closeOnRead: true)
        let client = try await FramedClient.connect(host: "127.0.0.1", port: silent.port)
        let codes = await withTaskGroup(of: RPCStatusCode?.self) { group in
            for _ in 0..<10 {
                group.addTask {
                    do {
                        _ = try await client.call(.listModels, request: [], timeout: .seconds(5))
                        return nil
                    } catch { return (error as? RPCStatus)?.code }
                }
            }
            return await group.reduce(into: [RPCStatusCode?]()) { $0.append($1) }
        }
        #expect(codes.count == 10)
        #expect(codes.allSatisfy { $0 == .unavailable })
        // Later calls fail at once, too.
        await #expect(throws: RPCStatus.self) { _ = try await client.call(.listModels, request: [], timeout: .seconds(5)) }
        await silent.stop()
    }

    @Test("close() fails calls in flight with UNAVAILABLE")
    func closeFailsPending() async throws {
        try await withServer { _, port in
            let client = try await FramedClient.connect(host: "127.0.0.1", port: port)
            async let pending: RPCStatusCode? = {
                do {
                    _ = try await client.call(.rebalance, request: TestHandler.slowRequest(milliseconds: 1000), timeout: .seconds(2))
                    return nil
                } catch { return (error as? RPCStatus)?.code }
            }()
            try await Task.sleep(for: .milliseconds(100))
            await client.close()
            #expect(await pending == .unavailable)
        }
    }

    @Test("cancelling the calling task fails the call with CANCELLED at once")
    func cancellation() async throws {
        try await withServer { _, port in
            let client = try await FramedClient.connect(host: "127.0.0.1", port: port)
            let clock = ContinuousClock()
            let start = clock.now
            let task = Task { () -> RPCStatusCode? in
                do {
                    _ = try await client.call(.rebalance, request: TestHandler.slowRequest(milliseconds: 2000), timeout: .seconds(3))
                    return nil
                } catch { return (error as? RPCStatus)?.code }
            }
            try await Task.sleep(for: .milliseconds(50))
            task.cancel()
            #expect(await task.value == .cancelled)
            #expect(clock.now - start < .milliseconds(1000))
            // The connection is still usable.
            #expect(try await client.call(.listModels, request: [4], timeout: .seconds(1)) == [4])
            await client.close()
        }
    }

    @Test("connecting to a port nobody listens on fails with UNAVAILABLE")
    func refused() async throws {
        let silent = try await SilentServer.start(closeOnRead: false)
        let port = silent.port
        await silent.stop()
        await #expect {
            _ = try await FramedClient.connect(host: "127.0.0.1", port: port)
        } throws: { error in
            (error as? RPCStatus)?.code == .unavailable
        }
    }
}

@Suite("Framed transport: malformed streams on raw sockets")
struct FramedMalformedStreamTests {
    /// After a protocol violation the server still accepts and serves new connections.
    func assertStillServes(port: Int) async throws {
        let client = try await FramedClient.connect(host: "127.0.0.1", port: port)
        #expect(try await client.call(.listModels, request: [42], timeout: .seconds(1)) == [42])
        await client.close()
    }

    @Test("the byte-exact example of PROTOCOL.md is answered")
    func protocolExample() async throws {
        try await withServer { _, port in
            let raw = try RawConnection(port: port)
            raw.write([0, 0, 0, 0x10, 1, 1, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0])
            let frame = try #require(await raw.readFrame())
            #expect(frame.length == 16)
            #expect(frame.version == 1)
            #expect(frame.kind == FrameKind.response.rawValue)
            #expect(frame.method == 16)
            #expect(frame.requestID == 7)
            #expect(frame.timeoutMicroseconds == 0)
            #expect(frame.payload.isEmpty)
        }
    }

    @Test("an unknown method id gets UNIMPLEMENTED and the connection keeps serving")
    func unknownMethod() async throws {
        try await withServer { _, port in
            let raw = try RawConnection(port: port)
            raw.write(rawFrame(method: 999, requestID: 5, payload: [1, 2]))
            let error = try #require(await raw.readFrame())
            #expect(error.kind == FrameKind.error.rawValue)
            #expect(error.method == 999)
            #expect(error.requestID == 5)
            #expect(error.status?.code == .unimplemented)
            #expect(error.status?.message.contains("999") == true)
            raw.write(rawFrame(method: RPCMethod.listModels.rawValue, requestID: 6, payload: [3]))
            let response = try #require(await raw.readFrame())
            #expect(response.kind == FrameKind.response.rawValue)
            #expect(response.requestID == 6)
            #expect(response.payload == [3])
        }
    }

    @Test(
        "a header the server cannot accept gets INVALID_ARGUMENT, then the connection closes",
        arguments: [
            ("bad version", rawFrame(version: 2, method: 16, requestID: 11), UInt64(11)),
            ("version 0", rawFrame(version: 0, method: 16, requestID: 12), UInt64(12)),
            ("response kind", rawFrame(kind: 2, method: 16, requestID: 13), UInt64(13)),
            ("error kind", rawFrame(kind: 3, method: 16, requestID: 14), UInt64(14)),
            ("unknown kind", rawFrame(kind: 9, method: 16, requestID: 15), UInt64(15)),
            ("length below 16", [0, 0, 0, 15] + Array(repeating: UInt8(0), count: 15), UInt64(0)),
            ("length 0", [0, 0, 0, 0], UInt64(0)),
        ])
    func badHeader(name: String, bytes: [UInt8], expectedRequestID: UInt64) async throws {
        try await withServer { _, port in
            let raw = try RawConnection(port: port)
            // The connection works until the bad frame comes.
            raw.write(rawFrame(method: 16, requestID: 1, payload: [5]))
            let ok = try #require(await raw.readFrame(), "\(name)")
            #expect(ok.requestID == 1 && ok.kind == FrameKind.response.rawValue, "\(name)")
            // Nothing after the bad frame is read: the valid request behind it gets no answer.
            raw.write(bytes + rawFrame(method: 16, requestID: 2))
            let error = try #require(await raw.readFrame(), "\(name)")
            #expect(error.kind == FrameKind.error.rawValue, "\(name)")
            #expect(error.requestID == expectedRequestID, "\(name)")
            #expect(error.status?.code == .invalidArgument, "\(name): \(String(describing: error.status))")
            #expect(await raw.sawEOF(), "\(name): the connection must close")
            try await assertStillServes(port: port)
        }
    }

    @Test("a frame longer than the maximum gets RESOURCE_EXHAUSTED with its request id, then the connection closes")
    func oversized() async throws {
        try await withServer(configure: { $0.maxMessageBytes = 1024 }) { _, port in
            // Exactly the maximum is fine.
            let atLimit = try RawConnection(port: port)
            atLimit.write(rawFrame(method: 16, requestID: 3, payload: Array(repeating: 0xAB, count: 1024)))
            let echoed = try #require(await atLimit.readFrame())
            #expect(echoed.kind == FrameKind.response.rawValue && echoed.payload.count == 1024)

            // One byte more: only the header is sent; the server must not wait for the rest.
            let raw = try RawConnection(port: port)
            raw.write(rawFrame(length: 16 + 1025, method: 16, requestID: 77))
            let error = try #require(await raw.readFrame())
            #expect(error.kind == FrameKind.error.rawValue)
            #expect(error.requestID == 77)
            #expect(error.method == 16)
            #expect(error.status?.code == .resourceExhausted)
            #expect(await raw.sawEOF())

            // The default maximum (4 MiB) announced by a huge length field.
            let huge = try RawConnection(port: port)
            huge.write(rawFrame(length: UInt32.max, method: 1, requestID: 78))
            #expect(await huge.readFrame()?.status?.code == .resourceExhausted)
            #expect(await huge.sawEOF())
            try await assertStillServes(port: port)
        }
    }

    @Test("a connection closed in the middle of a frame is dropped; the server keeps serving")
    func truncated() async throws {
        let handler = TestHandler()
        try await withServer(handler) { _, port in
            do {
                let raw = try RawConnection(port: port)
                raw.write(Array(rawFrame(method: 16, requestID: 1, payload: [1, 2, 3, 4]).prefix(22)))
            }  // closed here
            do {
                let raw = try RawConnection(port: port)
                raw.write([0, 0])  // half a length field
            }
            try await Task.sleep(for: .milliseconds(50))
            #expect(handler.started.load(ordering: .relaxed) == 0)
            try await assertStillServes(port: port)
        }
    }

    @Test("requests split across many small writes are reassembled")
    func fragmented() async throws {
        try await withServer { _, port in
            let raw = try RawConnection(port: port)
            let bytes = rawFrame(method: 16, requestID: 9, payload: Array(0..<200))
            for chunk in stride(from: 0, to: bytes.count, by: 7) {
                raw.write(Array(bytes[chunk..<min(chunk + 7, bytes.count)]))
                try await Task.sleep(for: .milliseconds(1))
            }
            let frame = try #require(await raw.readFrame())
            #expect(frame.requestID == 9)
            #expect(frame.payload == Array(0..<200))
        }
    }
}

@Suite("Framed transport: frame encoding")
struct FrameCodecTests {
    @Test("a request frame has the documented layout")
    func layout() {
        let buffer = FrameCodec.encode(kind: .request, method: 16, requestID: 7, timeoutMicroseconds: 0x01020304, payload: [0xAA])
        #expect(Array(buffer.readableBytesView) == [0, 0, 0, 17, 1, 1, 0, 16, 0, 0, 0, 0, 0, 0, 0, 7, 1, 2, 3, 4, 0xAA])
    }

    @Test("timeouts become timeout_us clamped to 1 µs ... 2^32-1 µs")
    func timeouts() {
        #expect(FrameCodec.timeoutMicroseconds(.milliseconds(250)) == 250_000)
        #expect(FrameCodec.timeoutMicroseconds(.nanoseconds(1500)) == 1)
        #expect(FrameCodec.timeoutMicroseconds(.microseconds(3)) == 3)
        #expect(FrameCodec.timeoutMicroseconds(.zero) == 1)
        #expect(FrameCodec.timeoutMicroseconds(.seconds(-5)) == 1)
        #expect(FrameCodec.timeoutMicroseconds(.seconds(4294)) == 4_294_000_000)
        #expect(FrameCodec.timeoutMicroseconds(.seconds(4295)) == UInt32.max)
        #expect(FrameCodec.timeoutMicroseconds(.seconds(Int64.max)) == UInt32.max)
    }

    @Test("error payloads round-trip; unknown codes and garbage become UNKNOWN")
    func errorPayload() {
        let status = RPCStatus(.notFound, "no model named x")
        #expect(FrameCodec.decodeErrorPayload(FrameCodec.errorPayload(status)) == status)
        var odd = Keel_V1_ErrorStatus()
        odd.code = 99
        odd.message = "m"
        let oddBytes: [UInt8] = (try? odd.serializedBytes()) ?? []
        #expect(FrameCodec.decodeErrorPayload(oddBytes).code == .unknown)
        #expect(FrameCodec.decodeErrorPayload([0xFF, 0xFF]).code == .unknown)
    }
}

/// A TCP server that never answers: it ignores what it reads, or closes the
/// connection on the first bytes. For client-side timeout and connection-loss tests.
final class SilentServer: Sendable {
    let channel: any Channel
    var port: Int { self.channel.localAddress?.port ?? 0 }

    private init(channel: any Channel) { self.channel = channel }

    final class Handler: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let closeOnRead: Bool
        init(closeOnRead: Bool) { self.closeOnRead = closeOnRead }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            if self.closeOnRead { context.close(promise: nil) }
        }
    }

    static func start(closeOnRead: Bool) async throws -> SilentServer {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Handler(closeOnRead: closeOnRead))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return SilentServer(channel: channel)
    }

    func stop() async {
        try? await self.channel.close()
    }
}
