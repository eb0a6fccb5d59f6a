import Synchronization

/// Admission control and deadlines for request bodies.
///
/// - At most `maxConcurrent` bodies run at once; up to `maxQueued` more wait
///   in FIFO order. Beyond that a request fails at once with
///   RESOURCE_EXHAUSTED ("server queue full: N requests waiting").
/// - A waiter whose deadline passes leaves the queue with DEADLINE_EXCEEDED;
///   no body starts after its deadline; a body that succeeds after its
///   deadline yields DEADLINE_EXCEEDED (the caller has stopped waiting).
/// - A waiter whose task is cancelled leaves the queue with CANCELLED. Slots
///   are released on every path (success, error, cancellation, deadline).
/// - ``drain()`` makes new requests fail with UNAVAILABLE and returns when
///   the running and queued ones have finished.
///
/// Thread safety: all methods may be called from any task. The fast path (a
/// free slot) takes the lock once to enter and once to leave and does not
/// suspend; only a request that must queue allocates (a continuation and a
/// timer task for its deadline).
public final class RequestGate: Sendable {
    public let maxConcurrent: Int
    public let maxQueued: Int

    private enum Admission: Sendable {
        case granted
        case deadlineExceeded
        case cancelled
        case unavailable
        case full(Int)
    }

    private struct Waiter {
        let id: UInt64
        let continuation: CheckedContinuation<Admission, Never>
        var timer: Task<Void, Never>?
    }

    /// A FIFO with O(1) amortized pops and O(n) removal by id (only on
    /// timeout or cancellation).
    private struct WaiterQueue {
        private var items: [Waiter] = []
        private var head = 0

        var count: Int { items.count - head }
        var isEmpty: Bool { count == 0 }

        mutating func append(_ waiter: Waiter) { items.append(waiter) }

        mutating func popFirst() -> Waiter? {
            guard head < items.count else { return nil }
            let first = items[head]
            head += 1
            if head == items.count {
                items.removeAll(keepingCapacity: true)
                head = 0
            } else if head >= 64, head * 2 >= items.count {
                items.removeFirst(head)
                head = 0
            }
            return first
        }

        mutating func remove(id: UInt64) -> Waiter? {
            guard let index = items[head...].firstIndex(where: { $0.id == id }) else { return nil }
            return items.remove(at: index)
        }
    }

    private struct State {
        var running = 0
        var queue = WaiterQueue()
        var draining = false
        var drainWaiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())
    private let nextID = Atomic<UInt64>(0)

    /// `maxConcurrent` at least 1; `maxQueued` at least 0.
    public init(maxConcurrent: Int, maxQueued: Int) {
        self.maxConcurrent = max(1, maxConcurrent)
        self.maxQueued = max(0, maxQueued)
    }

    /// Bodies running now.
    public var running: Int { state.withLock { $0.running } }
    /// Requests waiting for a slot now.
    public var queued: Int { state.withLock { $0.queue.count } }
    /// Whether ``drain()`` has been called.
    public var isDraining: Bool { state.withLock { $0.draining } }

    /// Runs `body` in a slot, subject to the limits and `deadline` (see the
    /// type's documentation). Errors thrown by `body` pass through unchanged.
    ///
    /// `nonisolated(nonsending)`: the body runs on the caller's executor (an
    /// actor may pass a closure that is not `Sendable`, and nothing hops).
    nonisolated(nonsending) public func run<T>(
        deadline: ContinuousClock.Instant,
        _ body: () async throws(RPCStatus) -> T
    ) async throws(RPCStatus) -> T {
        try await enter(deadline: deadline)
        let result: T
        do {
            result = try await body()
        } catch {
            release()
            throw error
        }
        release()
        if ContinuousClock.now > deadline {
            throw RPCStatus(.deadlineExceeded, "deadline exceeded: the answer was ready after the deadline")
        }
        return result
    }

    /// Takes a slot, waiting in the queue if needed. On return the caller
    /// holds a slot and must call `release()`.
    private func enter(deadline: ContinuousClock.Instant) async throws(RPCStatus) {
        if ContinuousClock.now >= deadline {
            throw RPCStatus(.deadlineExceeded, "deadline exceeded before the request could start")
        }
        // Fast path: a free slot and nobody queued ahead.
        let fast: Admission? = state.withLock { s in
            if s.draining { return .unavailable }
            if s.running < maxConcurrent && s.queue.isEmpty {
                s.running += 1
                return .granted
            }
            return nil
        }
        let admission: Admission
        if let fast {
            admission = fast
        } else {
            admission = await wait(deadline: deadline)
        }
        switch admission {
        case .granted:
            break
        case .unavailable:
            throw RPCStatus(.unavailable, "server is shutting down")
        case .full(let waiting):
            throw RPCStatus(.resourceExhausted, "server queue full: \(waiting) requests waiting")
        case .deadlineExceeded:
            throw RPCStatus(.deadlineExceeded, "deadline exceeded while waiting in the server queue")
        case .cancelled:
            throw RPCStatus(.cancelled, "request cancelled while waiting in the server queue")
        }
        // Granted, possibly after waiting: never start work after the
        // deadline or for a cancelled caller.
        if ContinuousClock.now >= deadline {
            release()
            throw RPCStatus(.deadlineExceeded, "deadline exceeded while waiting in the server queue")
        }
        if Task.isCancelled {
            release()
            throw RPCStatus(.cancelled, "request cancelled while waiting in the server queue")
        }
    }

    /// The slow path: re-checks everything under the lock and queues.
    private func wait(deadline: ContinuousClock.Instant) async -> Admission {
        let id = nextID.wrappingAdd(1, ordering: .relaxed).newValue
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Admission, Never>) in
                let immediate: Admission? = state.withLock { s in
                    // Cancellation sets the task's flag before running the
                    // handler, and the handler takes this lock: either we see
                    // the flag here, or the handler finds the queued waiter.
                    if Task.isCancelled { return .cancelled }
                    if s.draining { return .unavailable }
                    if s.running < maxConcurrent && s.queue.isEmpty {
                        s.running += 1
                        return .granted
                    }
                    if s.queue.count >= maxQueued { return .full(s.queue.count) }
                    let timer = Task { [self] in
                        do {
                            try await Task.sleep(until: deadline, clock: .continuous)
                        } catch {
                            return  // granted or cancelled first
                        }
                        remove(id, with: .deadlineExceeded)
                    }
                    s.queue.append(Waiter(id: id, continuation: continuation, timer: timer))
                    return nil
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            remove(id, with: .cancelled)
        }
    }

    /// Takes a waiting request out of the queue (deadline or cancellation).
    private func remove(_ id: UInt64, with admission: Admission) {
        let waiter = state.withLock { $0.queue.remove(id: id) }
        guard let waiter else { return }  // already granted or removed
        waiter.timer?.cancel()
        waiter.continuation.resume(returning: admission)
    }

    /// Gives the slot to the first waiter, or frees it.
    private func release() {
        let (next, drained) = state.withLock { s -> (Waiter?, [CheckedContinuation<Void, Never>]) in
            if let next = s.queue.popFirst() { return (next, []) }  // the slot passes on
            s.running -= 1
            if s.draining && s.running == 0 {
                let waiters = s.drainWaiters
                s.drainWaiters = []
                return (nil, waiters)
            }
            return (nil, [])
        }
        if let next {
            next.timer?.cancel()
            next.continuation.resume(returning: .granted)
        }
        for waiter in drained { waiter.resume() }
    }

    /// Stops admitting requests (new ones fail with UNAVAILABLE) and returns
    /// when every running and queued request has finished. Idempotent. The
    /// wait is not bounded: race it against a timeout if needed.
    public func drain() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLock { s -> Bool in
                s.draining = true
                if s.running == 0 { return true }
                s.drainWaiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    /// Stops admitting requests without waiting (see ``drain()``).
    public func beginDrain() {
        state.withLock { $0.draining = true }
    }
}

/// The request bytes held by requests in flight on one transport, bounded:
/// a request that would take the total past ``limit`` is refused at once
/// (RESOURCE_EXHAUSTED) instead of being held. With the per-connection and
/// queue limits alone, many connections could each hold a thousand
/// maximum-size requests.
///
/// Thread safety: lock-free; call from any thread.
public final class PayloadBudget: Sendable {
    public let limit: Int
    private let used = Atomic<Int>(0)

    public init(limit: Int) { self.limit = max(0, limit) }

    /// Bytes held now.
    public var inUse: Int { used.load(ordering: .relaxed) }

    /// Takes `bytes` and returns true, or returns false (taking nothing)
    /// when the total would pass the limit. A request no larger than the
    /// limit always fits when nothing else is held.
    public func take(_ bytes: Int) -> Bool {
        var current = used.load(ordering: .relaxed)
        while true {
            if current > 0 && current + bytes > limit { return false }
            let (exchanged, now) = used.compareExchange(expected: current, desired: current + bytes,
                                                        ordering: .relaxed)
            if exchanged { return true }
            current = now
        }
    }

    /// Gives back what ``take(_:)`` took.
    public func give(_ bytes: Int) { used.wrappingSubtract(bytes, ordering: .relaxed) }

    /// The RESOURCE_EXHAUSTED answer for a refused request of `bytes`.
    public func refusal(_ bytes: Int) -> RPCStatus {
        RPCStatus(.resourceExhausted, "requests in flight hold \(inUse) bytes; this one's \(bytes) would pass the "
            + "server's limit of \(limit) bytes; retry later")
    }
}
