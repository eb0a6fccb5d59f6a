import Synchronization
import Testing

import KeelServing

@Suite("Request gate")
struct RequestGateTests {
    static func far() -> ContinuousClock.Instant { .now + .seconds(30) }

    /// Starts a request whose body holds its slot until `release` opens.
    static func holder(_ gate: RequestGate, _ release: Latch, deadline: ContinuousClock.Instant = far())
        -> Task<Result<Int, RPCStatus>, Never>
    {
        Task {
            do throws(RPCStatus) {
                return .success(try await gate.run(deadline: deadline) { () async throws(RPCStatus) -> Int in
                    await release.wait()
                    return 1
                })
            } catch {
                return .failure(error)
            }
        }
    }

    static func status<T: Sendable>(_ task: Task<Result<T, RPCStatus>, Never>) async throws -> RPCStatus? {
        let result = try await withTimeout(.seconds(5), "request result") { await task.value }
        if case .failure(let status) = result { return status }
        return nil
    }

    @Test("a full queue fails at once with RESOURCE_EXHAUSTED")
    func overload() async throws {
        let gate = RequestGate(maxConcurrent: 1, maxQueued: 2)
        let release = Latch()
        let running = Self.holder(gate, release)
        try await eventually { gate.running == 1 }
        let queued = [Self.holder(gate, release), Self.holder(gate, release)]
        try await eventually { gate.queued == 2 }

        let start = ContinuousClock.now
        var status: RPCStatus?
        do throws(RPCStatus) {
            _ = try await gate.run(deadline: Self.far()) { () async throws(RPCStatus) in 0 }
        } catch {
            status = error
        }
        #expect(ContinuousClock.now - start < .milliseconds(100))
        #expect(status == RPCStatus(.resourceExhausted, "server queue full: 2 requests waiting"))

        release.open()
        #expect(try await Self.status(running) == nil)
        for task in queued { #expect(try await Self.status(task) == nil) }
        #expect(gate.running == 0 && gate.queued == 0)
    }

    @Test("a waiter whose deadline passes leaves the queue with DEADLINE_EXCEEDED")
    func deadlineInQueue() async throws {
        let gate = RequestGate(maxConcurrent: 1, maxQueued: 4)
        let release = Latch()
        let running = Self.holder(gate, release)
        try await eventually { gate.running == 1 }

        let started = Locked(false)
        let start = ContinuousClock.now
        let waiter = Task { () -> Result<Int, RPCStatus> in
            do throws(RPCStatus) {
                return .success(try await gate.run(deadline: .now + .milliseconds(50)) {
                    () async throws(RPCStatus) -> Int in
                    started.withLock { $0 = true }
                    return 1
                })
            } catch {
                return .failure(error)
            }
        }
        let status = try await Self.status(waiter)
        #expect(status?.code == .deadlineExceeded)
        #expect(ContinuousClock.now - start < .seconds(2))
        #expect(gate.queued == 0)
        #expect(!started.withLock { $0 })

        release.open()
        #expect(try await Self.status(running) == nil)
        #expect(gate.running == 0)
    }

    @Test("no work starts after the deadline; a late answer is DEADLINE_EXCEEDED")
    func deadlines() async throws {
        let gate = RequestGate(maxConcurrent: 2, maxQueued: 2)
        let started = Locked(false)
        var status: RPCStatus?
        do throws(RPCStatus) {
            _ = try await gate.run(deadline: .now - .milliseconds(1)) { () async throws(RPCStatus) -> Int in
                started.withLock { $0 = true }
                return 1
            }
        } catch {
            status = error
        }
        #expect(status?.code == .deadlineExceeded)
        #expect(!started.withLock { $0 })

        status = nil
        do throws(RPCStatus) {
            _ = try await gate.run(deadline: .now + .milliseconds(20)) { () async throws(RPCStatus) -> Int in
                try? await Task.sleep(for: .milliseconds(60))
                return 1
            }
        } catch {
            status = error
        }
        #expect(status?.code == .deadlineExceeded)
        #expect(gate.running == 0)

        // A body's own error passes through and frees the slot.
        status = nil
        do throws(RPCStatus) {
            _ = try await gate.run(deadline: Self.far()) { () async throws(RPCStatus) -> Int in
                throw RPCStatus(.invalidArgument, "bad")
            }
        } catch {
            status = error
        }
        #expect(status == RPCStatus(.invalidArgument, "bad"))
        #expect(gate.running == 0)
    }

    @Test("cancellation releases queue places and slots")
    func cancellation() async throws {
        let gate = RequestGate(maxConcurrent: 1, maxQueued: 4)
        let release = Latch()
        let running = Self.holder(gate, release)
        try await eventually { gate.running == 1 }

        // Cancel queued waiters.
        let waiters = (0..<3).map { _ in Self.holder(gate, Latch()) }
        try await eventually { gate.queued == 3 }
        for w in waiters { w.cancel() }
        for w in waiters { #expect(try await Self.status(w)?.code == .cancelled) }
        #expect(gate.queued == 0)
        #expect(gate.running == 1)

        // Cancel the running request: its body sees the cancellation and ends; the slot frees.
        let cancellable = Task { () -> Result<Int, RPCStatus> in
            do throws(RPCStatus) {
                return .success(try await gate.run(deadline: Self.far()) { () async throws(RPCStatus) -> Int in
                    do {
                        try await Task.sleep(for: .seconds(30))
                    } catch {
                        throw RPCStatus(.cancelled, "cancelled")
                    }
                    return 1
                })
            } catch {
                return .failure(error)
            }
        }
        release.open()
        #expect(try await Self.status(running) == nil)
        try await eventually { gate.running == 1 }
        cancellable.cancel()
        #expect(try await Self.status(cancellable)?.code == .cancelled)
        #expect(gate.running == 0 && gate.queued == 0)

        // Cancelling a task before it reaches the queue is safe too.
        let blocker = Latch()
        let busy = Self.holder(gate, blocker)
        try await eventually { gate.running == 1 }
        let early = Task { () -> Result<Int, RPCStatus> in
            withUnsafeCurrentTask { $0?.cancel() }
            do throws(RPCStatus) {
                return .success(try await gate.run(deadline: Self.far()) { () async throws(RPCStatus) in 1 })
            } catch {
                return .failure(error)
            }
        }
        #expect(try await Self.status(early)?.code == .cancelled)
        blocker.open()
        #expect(try await Self.status(busy) == nil)
        #expect(gate.running == 0 && gate.queued == 0)
    }

    @Test("at most maxConcurrent bodies run at once; every request completes")
    func concurrencyLimit() async throws {
        let gate = RequestGate(maxConcurrent: 2, maxQueued: 100)
        let current = Locked(0)
        let peak = Locked(0)
        try await withTimeout(.seconds(10), "50 requests") {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<50 {
                    group.addTask {
                        try await gate.run(deadline: .now + .seconds(20)) { () async throws(RPCStatus) in
                            let now = current.withLock { $0 += 1; return $0 }
                            peak.withLock { $0 = max($0, now) }
                            try? await Task.sleep(for: .milliseconds(1))
                            current.withLock { $0 -= 1 }
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
        #expect(peak.withLock { $0 } <= 2)
        #expect(gate.running == 0 && gate.queued == 0)
    }

    @Test("drain refuses new requests with UNAVAILABLE and waits for in-flight ones")
    func drain() async throws {
        let gate = RequestGate(maxConcurrent: 1, maxQueued: 4)
        let release = Latch()
        let running = Self.holder(gate, release)
        try await eventually { gate.running == 1 }
        let queued = Self.holder(gate, release)
        try await eventually { gate.queued == 1 }

        let drained = Locked(false)
        let drainer = Task {
            await gate.drain()
            drained.withLock { $0 = true }
        }
        try await eventually { gate.isDraining }
        var status: RPCStatus?
        do throws(RPCStatus) {
            _ = try await gate.run(deadline: Self.far()) { () async throws(RPCStatus) in 1 }
        } catch {
            status = error
        }
        #expect(status?.code == .unavailable)
        try await Task.sleep(for: .milliseconds(20))
        #expect(!drained.withLock { $0 })

        release.open()
        #expect(try await Self.status(running) == nil)
        #expect(try await Self.status(queued) == nil)  // queued before the drain: still served
        try await withTimeout(.seconds(5), "drain") { await drainer.value }
        #expect(drained.withLock { $0 })
        await gate.drain()  // idempotent, returns at once when idle
    }
}
