import KeelClient
import KeelServing
import Testing

@Suite("LoadGenerator against in-process fakes")
struct LoadGeneratorTests {
    static let request: [UInt8] = Array(repeating: 7, count: 64)

    func run(_ plan: LoadPlan, _ clients: [any UnaryClient]) async throws -> LoadResult {
        let result = await withTimeout(.seconds(20)) { await LoadGenerator().run(plan, using: clients) }
        return try #require(result, "the run did not finish in 20 s")
    }

    @Test("open loop sends rate x duration requests and measures at least the service time")
    func openLoopCounts() async throws {
        let server = FakeServer(.init(latency: .milliseconds(2)))
        let plan = LoadPlan(
            method: .rebalance, request: Self.request, mode: .openLoop(rate: 400), duration: .milliseconds(500))
        let clock = ContinuousClock()
        let started = clock.now
        let result = try await run(plan, [FakeClient(server)])
        let took = clock.now - started
        #expect(result.sent == 200)
        #expect(result.ok == 200)
        #expect(result.errors == 0)
        #expect(server.callCount == 200)
        #expect(result.latencies.totalCount == 200)
        // Every latency includes the 2 ms service time.
        #expect(result.latencies.min >= 2_000_000)
        #expect(result.latencies.valueAtPercentile(50) >= 2_000_000)
        // Requests are spread over the duration, not sent in a burst.
        #expect(took >= .milliseconds(480))
        #expect(took < .seconds(3))
        let report = BenchReport(result: result, plan: plan, target: "fake", connections: 1)
        #expect(report.throughput > 300 && report.throughput < 450)
        #expect(report.latencyMicros.p50 >= 2000)
    }

    @Test("open loop: a 200 ms server stall shows in p99 and max (no coordinated omission)")
    func openLoopSeesStall() async throws {
        let server = FakeServer(.init(latency: .milliseconds(1), stallAtCall: 100, stallLength: .milliseconds(200)))
        let plan = LoadPlan(
            method: .rebalance, request: Self.request, mode: .openLoop(rate: 400), duration: .seconds(1))
        let result = try await run(plan, [FakeClient(server)])
        #expect(result.ok == 400)
        // About 80 of 400 requests were due during the stall: well over 1 %.
        #expect(result.latencies.valueAtPercentile(99) >= 150_000_000)
        #expect(result.latencies.maxRecorded >= 195_000_000)
        #expect(result.latencies.valueAtPercentile(50) < 50_000_000)
        // Requests kept being sent during the stall: many were in flight at once.
        #expect(server.maxInFlight >= 40)
    }

    @Test("closed loop with one connection hides the same stall from p99 (for contrast)")
    func closedLoopHidesStall() async throws {
        let server = FakeServer(.init(latency: .milliseconds(1), stallAtCall: 100, stallLength: .milliseconds(200)))
        let plan = LoadPlan(
            method: .rebalance, request: Self.request, mode: .closedLoop(concurrency: 1), duration: .seconds(1))
        let result = try await run(plan, [FakeClient(server)])
        #expect(result.latencies.maxRecorded >= 195_000_000)
        #expect(result.latencies.valueAtPercentile(99) < 100_000_000)
        #expect(server.maxInFlight == 1)
    }

    @Test("errors are counted by status code and kept out of the latency histogram")
    func errorsByCode() async throws {
        let server = FakeServer(
            .init(
                latency: .microseconds(200),
                failure: { i in i % 5 == 0 ? .unavailable : i % 5 == 1 ? .deadlineExceeded : nil }))
        let plan = LoadPlan(
            method: .rebalance, request: Self.request, mode: .openLoop(rate: 500), duration: .milliseconds(200))
        let result = try await run(plan, [FakeClient(server)])
        #expect(result.sent == 100)
        #expect(result.errorsByCode[.unavailable] == 20)
        #expect(result.errorsByCode[.deadlineExceeded] == 20)
        #expect(result.errorsByCode.count == 2)
        #expect(result.ok == 60)
        #expect(result.latencies.totalCount == 60)
        #expect(!result.sampleErrors.isEmpty)
        let report = BenchReport(result: result, plan: plan, target: "fake", connections: 1)
        #expect(report.errorsByCode.map(\.code) == ["DEADLINE_EXCEEDED", "UNAVAILABLE"])
        #expect(report.errorsByCode.map(\.count) == [20, 20])
        #expect(abs(report.errorRate - 0.4) < 1e-9)
    }

    @Test("closed loop keeps C callers busy, one per connection")
    func closedLoopConnections() async throws {
        let server = FakeServer(.init(latency: .milliseconds(5)))
        let clients = (0..<4).map { _ in FakeClient(server) }
        let plan = LoadPlan(
            method: .rebalance, request: Self.request, mode: .closedLoop(concurrency: 4), duration: .milliseconds(500))
        let result = try await run(plan, clients)
        #expect(server.maxInFlight == 4)
        for client in clients {
            // About 100 back-to-back 5 ms calls in 500 ms each.
            #expect(client.callCount >= 40 && client.callCount <= 101)
        }
        #expect(result.ok == clients.map(\.callCount).reduce(0, +))
        #expect(result.sent == result.ok)
        #expect(result.latencies.min >= 5_000_000)
        #expect(result.lateSends == 0)
    }

    @Test("open loop never exceeds --max-in-flight, and counts the late sends it causes")
    func maxInFlightBound() async throws {
        let server = FakeServer(.init(latency: .milliseconds(20)))
        let plan = LoadPlan(
            method: .rebalance, request: Self.request, mode: .openLoop(rate: 1000), duration: .milliseconds(300),
            maxInFlight: 5)
        let result = try await run(plan, [FakeClient(server)])
        #expect(server.maxInFlight <= 5)
        #expect(result.ok == 300)
        // 5 callers x 50 calls/s = 250/s cannot keep up with 1000/s: requests are
        // sent late, and the lateness is part of their latency.
        #expect(result.lateSends > 100)
        #expect(result.maxSendLag > .milliseconds(500))
        #expect(result.latencies.valueAtPercentile(99) > 500_000_000)
    }

    @Test("open loop spreads callers over several connections")
    func openLoopSeveralConnections() async throws {
        let server = FakeServer(.init(latency: .milliseconds(10)))
        let clients = (0..<3).map { _ in FakeClient(server) }
        let plan = LoadPlan(
            method: .rebalance, request: Self.request, mode: .openLoop(rate: 600), duration: .milliseconds(300))
        let result = try await run(plan, clients)
        #expect(result.ok == 180)
        for client in clients { #expect(client.callCount > 0) }
    }

    @Test("several requests are sent in turn, evenly, in either loop", arguments: [
        LoadPlan.Mode.openLoop(rate: 500), .closedLoop(concurrency: 3),
    ])
    func requestsInTurn(_ mode: LoadPlan.Mode) async throws {
        let requests: [[UInt8]] = (1...4).map { [UInt8($0), 9, 9] }
        let server = FakeServer(.init(latency: .milliseconds(2)))
        let client = FakeClient(server)
        let plan = LoadPlan(method: .rebalance, requests: requests, mode: mode, duration: .milliseconds(200))
        let result = try await run(plan, [client])
        let counts = client.callsByRequest
        #expect(Set(counts.keys) == Set(requests))
        // In turn: no request is sent more than one round ahead of another
        // (closed loop: each of the 3 callers may be one round apart).
        let spread = (counts.values.max() ?? 0) - (counts.values.min() ?? 0)
        #expect(spread <= (mode == .openLoop(rate: 500) ? 1 : 3), "counts \(counts)")
        #expect(counts.values.reduce(0, +) == result.sent)
        let report = BenchReport(result: result, plan: plan, target: "fake", connections: 1)
        #expect(report.requestVariants == 4)
        #expect(report.requestBytes == 3)
        #expect(report.renderText().contains("4 requests in turn, 3 bytes on average"))
    }

    @Test("an empty request list sends the method's empty message")
    func emptyRequestList() {
        let plan = LoadPlan(method: .healthCheck, requests: [], mode: .closedLoop(concurrency: 1), duration: .seconds(1))
        #expect(plan.requests == [[]])
        #expect(plan.request == [])
    }

    @Test("calls still unanswered after the drain timeout are cancelled, not waited for")
    func drainTimeout() async throws {
        let server = FakeServer(.init(latency: .seconds(30)))
        let plan = LoadPlan(
            method: .rebalance, request: Self.request, mode: .openLoop(rate: 100), duration: .milliseconds(100),
            drainTimeout: .milliseconds(200))
        let clock = ContinuousClock()
        let started = clock.now
        let result = try await run(plan, [FakeClient(server)])
        #expect(clock.now - started < .seconds(3))
        #expect(result.sent == 10)
        #expect(result.ok == 0)
        #expect(result.errorsByCode[.cancelled] == 10)
    }

    @Test("connect(count:) opens every client, and closes the opened ones when one fails")
    func connectAll() async throws {
        let server = FakeServer(.init())
        let clients = try await LoadGenerator.connect(count: 3) { () async throws(RPCStatus) in FakeClient(server) }
        #expect(clients.count == 3)

        let opened = Opened()
        await #expect(throws: RPCStatus.self) {
            _ = try await LoadGenerator.connect(count: 3) { () async throws(RPCStatus) -> any UnaryClient in
                if opened.count == 2 { throw RPCStatus(.unavailable, "refused") }
                let c = FakeClient(server)
                opened.add(c)
                return c
            }
        }
        #expect(opened.all.count == 2)
        let allClosed = opened.all.allSatisfy { $0.isClosed }
        #expect(allClosed)
    }
}

final class Opened: Sendable {
    private let clients = Mutex<[FakeClient]>([])
    var count: Int { clients.withLock { $0.count } }
    var all: [FakeClient] { clients.withLock { $0 } }
    func add(_ c: FakeClient) { clients.withLock { $0.append(c) } }
}

import Synchronization
