import KeelClient
import KeelServing
import Synchronization

/// What the fake server does, shared by every fake connection of one test.
///
/// Thread-safety: all state is behind a mutex or atomics.
final class FakeServer: Sendable {
    struct Behaviour: Sendable {
        /// Service time of every call.
        var latency: Duration = .milliseconds(2)
        /// When set, the call with this (0-based) arrival index stalls the
        /// whole server for `stallLength`: every call in the window waits for
        /// its end (as a GC pause or a lock would).
        var stallAtCall: Int? = nil
        var stallLength: Duration = .milliseconds(200)
        /// Status by arrival index; nil answers OK.
        var failure: @Sendable (Int) -> RPCStatusCode? = { _ in nil }
    }

    private struct State {
        var stalledUntil: ContinuousClock.Instant?
        var inFlight = 0
        var maxInFlight = 0
    }

    let behaviour: Behaviour
    private let calls = Atomic<Int>(0)
    private let state = Mutex(State())

    init(_ behaviour: Behaviour) { self.behaviour = behaviour }

    var callCount: Int { calls.load(ordering: .relaxed) }
    var maxInFlight: Int { state.withLock { $0.maxInFlight } }

    func handle() async throws(RPCStatus) -> [UInt8] {
        let index = calls.wrappingAdd(1, ordering: .relaxed).oldValue
        let now = ContinuousClock.now
        let stallEnd: ContinuousClock.Instant? = state.withLock { s in
            s.inFlight += 1
            s.maxInFlight = max(s.maxInFlight, s.inFlight)
            if index == behaviour.stallAtCall { s.stalledUntil = now.advanced(by: behaviour.stallLength) }
            if let until = s.stalledUntil, until > now { return until }
            return nil
        }
        defer { state.withLock { $0.inFlight -= 1 } }
        do {
            if let stallEnd { try await Task.sleep(until: stallEnd, clock: .continuous) }
            try await Task.sleep(for: behaviour.latency)
        } catch {
            throw RPCStatus(.cancelled, "cancelled")
        }
        if let code = behaviour.failure(index) { throw RPCStatus(code, "fake failure \(index)") }
        return [1, 2, 3]
    }
}

/// One fake connection to a ``FakeServer``; counts its own calls.
final class FakeClient: UnaryClient {
    let server: FakeServer
    private let calls = Atomic<Int>(0)
    private let closed = Atomic<Bool>(false)

    init(_ server: FakeServer) { self.server = server }

    /// How many calls carried each request (by its bytes).
    private let sent = Mutex<[[UInt8]: Int]>([:])

    var callCount: Int { calls.load(ordering: .relaxed) }
    var isClosed: Bool { closed.load(ordering: .relaxed) }
    var callsByRequest: [[UInt8]: Int] { sent.withLock { $0 } }

    func call(_ method: RPCMethod, request: [UInt8], timeout: Duration?) async throws(RPCStatus) -> [UInt8] {
        if closed.load(ordering: .relaxed) { throw RPCStatus(.unavailable, "closed") }
        calls.wrappingAdd(1, ordering: .relaxed)
        sent.withLock { $0[request, default: 0] += 1 }
        return try await server.handle()
    }

    func close() async { closed.store(true, ordering: .relaxed) }
}

/// Runs `body`, failing the test's expectations with a timeout instead of hanging.
func withTimeout<T: Sendable>(
    _ limit: Duration, _ body: @escaping @Sendable () async -> T
) async -> T? {
    await withTaskGroup(of: T?.self) { group in
        group.addTask { await body() }
        group.addTask {
            try? await Task.sleep(for: limit)
            return nil
        }
        let first = await group.next() ?? nil
        group.cancelAll()
        return first
    }
}
