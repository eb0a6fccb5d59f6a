import Histogram
import KeelServing
import Synchronization

/// What to send, how, and for how long.
public struct LoadPlan: Sendable {
    public enum Mode: Sendable, Equatable {
        /// Requests at a fixed rate (per second) whatever the server does:
        /// request `i` is due at `start + i / rate`, and its latency is
        /// measured from that intended time, so queueing (on either side) is
        /// never hidden (no coordinated omission).
        case openLoop(rate: Double)
        /// `concurrency` callers, each sending its next request as soon as
        /// the previous one is answered; latency from the actual send.
        case closedLoop(concurrency: Int)
    }

    public var method: RPCMethod
    /// The serialized requests, sent in turn; never empty. Open loop: the
    /// `i`th request due is `requests[i % requests.count]`; closed loop:
    /// caller `k` of `C` sends `k`, `k + C`, `k + 2C`, ... (modulo the count).
    public private(set) var requests: [[UInt8]]
    /// The first request (the only one for a plan of one request).
    public var request: [UInt8] { requests[0] }
    public var mode: Mode
    public var duration: Duration
    /// The per-call deadline; nil means the server's default.
    public var timeout: Duration?
    /// Open loop: the most requests outstanding at once (callers waiting for
    /// an answer). When all are busy, due requests are sent late, and the
    /// lateness is counted in their latency and in ``LoadResult/lateSends``.
    public var maxInFlight: Int
    /// After the schedule ends, how long to wait for answers still
    /// outstanding before cancelling them (they then count as CANCELLED).
    public var drainTimeout: Duration

    /// A plan that sends the same request every time.
    public init(
        method: RPCMethod, request: [UInt8], mode: Mode, duration: Duration,
        timeout: Duration? = nil, maxInFlight: Int = 10_000, drainTimeout: Duration = .seconds(10)
    ) {
        self.init(method: method, requests: [request], mode: mode, duration: duration, timeout: timeout,
                  maxInFlight: maxInFlight, drainTimeout: drainTimeout)
    }

    /// A plan that sends `requests` in turn; an empty list sends one empty
    /// request (the method's default message).
    public init(
        method: RPCMethod, requests: [[UInt8]], mode: Mode, duration: Duration,
        timeout: Duration? = nil, maxInFlight: Int = 10_000, drainTimeout: Duration = .seconds(10)
    ) {
        self.method = method
        self.requests = requests.isEmpty ? [[]] : requests
        self.mode = mode
        self.duration = duration
        self.timeout = timeout
        self.maxInFlight = max(1, maxInFlight)
        self.drainTimeout = drainTimeout
    }
}

/// What a run measured.
public struct LoadResult: Sendable {
    /// Latencies of successful calls, in nanoseconds (3 significant digits).
    public var latencies: Histogram<UInt64>
    /// Calls started.
    public var sent: Int
    public var ok: Int
    public var errorsByCode: [RPCStatusCode: Int]
    /// The first few distinct error messages, for the report.
    public var sampleErrors: [String]
    /// From the start of the run until the last answer.
    public var elapsed: Duration
    /// Open loop: sends more than ``LoadGenerator/lateThreshold`` after their intended time.
    public var lateSends: Int
    /// Open loop: the largest delay between a request's intended and actual send.
    public var maxSendLag: Duration

    public init(
        latencies: Histogram<UInt64>, sent: Int, ok: Int, errorsByCode: [RPCStatusCode: Int], sampleErrors: [String],
        elapsed: Duration, lateSends: Int, maxSendLag: Duration
    ) {
        self.latencies = latencies
        self.sent = sent
        self.ok = ok
        self.errorsByCode = errorsByCode
        self.sampleErrors = sampleErrors
        self.elapsed = elapsed
        self.lateSends = lateSends
        self.maxSendLag = maxSendLag
    }

    public var errors: Int { errorsByCode.values.reduce(0, +) }
    public var completed: Int { ok + errors }
}

/// Drives a ``UnaryClient`` (or several) with an open- or closed-loop load and
/// records every latency in an HdrHistogram.
///
/// The generator is cheap per request: one pacer timer per tick (not per
/// request), a bounded pool of caller tasks that loop (no task per request),
/// shared request bytes, and one short critical section per result.
///
/// Thread-safety: a value type holding only Sendable state; ``run(_:using:)``
/// may be called from any task, one run per call.
public struct LoadGenerator: Sendable {
    /// A send later than this after its intended time counts as late.
    public static let lateThreshold: Duration = .milliseconds(1)

    public init() {}

    /// Runs `plan` over `clients` (callers are spread round-robin across them;
    /// a closed loop typically gets one client per caller). The clients stay
    /// open; the caller closes them.
    public func run(_ plan: LoadPlan, using clients: [any UnaryClient]) async -> LoadResult {
        guard !clients.isEmpty else {
            return Recorder(start: .now).result(end: .now)
        }
        switch plan.mode {
        case .openLoop(let rate):
            return await runOpenLoop(plan, rate: rate, clients: clients)
        case .closedLoop(let concurrency):
            return await runClosedLoop(plan, concurrency: max(1, concurrency), clients: clients)
        }
    }

    /// Opens `count` clients with `factory`, closing those already open when one fails.
    public static func connect(
        count: Int, _ factory: @Sendable () async throws(RPCStatus) -> any UnaryClient
    ) async throws(RPCStatus) -> [any UnaryClient] {
        var clients: [any UnaryClient] = []
        do {
            for _ in 0..<max(1, count) { clients.append(try await factory()) }
        } catch {
            for c in clients { await c.close() }
            throw error
        }
        return clients
    }

    // MARK: open loop

    /// The pacer's period at `rate`: about four requests per tick, from 100 us
    /// to 1 ms. One timer per tick (timers cost tens of microseconds of CPU
    /// each on Linux), never one per request.
    static func pacingTick(rate: Double) -> Duration {
        let fourIntervals = 4e9 / rate
        return .nanoseconds(Int64(Swift.min(1_000_000, Swift.max(100_000, fourIntervals))))
    }

    private func runOpenLoop(_ plan: LoadPlan, rate: Double, clients: [any UnaryClient]) async -> LoadResult {
        let clock = ContinuousClock()
        let safeRate = rate.isFinite && rate > 0 ? rate : 1
        let seconds = Double(plan.duration.nanoseconds) / 1e9
        let total = max(0, Int((safeRate * seconds).rounded(.down)))
        // Start a little in the future so the first callers are ready.
        let start = clock.now.advanced(by: .milliseconds(1))
        let schedule = Schedule(start: start, total: total, rate: safeRate)
        let recorder = Recorder(start: start)
        let pool = CallerPool(total: total)
        let tick = Self.pacingTick(rate: safeRate)

        await withTaskGroup(of: Void.self) { group in
            var callers = 0
            // Pacer: every tick, release the requests due before the next
            // tick to idle callers, and add callers (up to maxInFlight) when
            // released requests have nobody to send them.
            var nextTick = start
            while !Task.isCancelled {
                let now = clock.now
                let due = schedule.dueCount(by: now.advanced(by: tick))
                let backlog = pool.release(upTo: due)
                if backlog > 0, callers < plan.maxInFlight {
                    for _ in 0..<min(backlog, plan.maxInFlight - callers) {
                        let client = clients[callers % clients.count]
                        group.addTask { await openLoopCaller(client, plan, schedule, pool, recorder) }
                        callers += 1
                    }
                }
                if due >= total { break }
                repeat { nextTick = nextTick.advanced(by: tick) } while nextTick <= now
                // Timers fire late by tens of microseconds: aim a little early.
                try? await Task.sleep(until: nextTick.advanced(by: .microseconds(-50)), clock: .continuous)
            }
            // Every request is released: idle callers may stop.
            pool.finish()
            // Drain: wait for the last answers, then cancel what is left.
            let drainEnd = schedule.end.advanced(by: plan.drainTimeout)
            let drainTick: Duration = .milliseconds(1)
            while recorder.sentCount < total || recorder.inFlight > 0, clock.now < drainEnd, !Task.isCancelled {
                try? await Task.sleep(for: drainTick)
            }
            pool.cancel()
            group.cancelAll()
        }
        return recorder.result(end: clock.now)
    }

    // MARK: closed loop

    private func runClosedLoop(_ plan: LoadPlan, concurrency: Int, clients: [any UnaryClient]) async -> LoadResult {
        let clock = ContinuousClock()
        let start = clock.now
        let end = start.advanced(by: plan.duration)
        let recorder = Recorder(start: start)
        await withTaskGroup(of: Bool.self) { group in
            for k in 0..<concurrency {
                let client = clients[k % clients.count]
                group.addTask {
                    let clock = ContinuousClock()
                    // Caller k sends requests k, k + concurrency, ... in turn.
                    var next = k % plan.requests.count
                    while !Task.isCancelled {
                        let sent = clock.now
                        if sent >= end { break }
                        recorder.noteSend()
                        let request = plan.requests[next]
                        next = (next + concurrency) % plan.requests.count
                        do throws(RPCStatus) {
                            _ = try await client.call(plan.method, request: request, timeout: plan.timeout)
                            recorder.success(latency: clock.now - sent)
                        } catch {
                            recorder.failure(error, at: clock.now)
                        }
                    }
                    return true
                }
            }
            // Watchdog: cancels callers still waiting after the drain timeout.
            group.addTask {
                try? await Task.sleep(until: end.advanced(by: plan.drainTimeout), clock: .continuous)
                return false
            }
            var finished = 0
            while let callerDone = await group.next() {
                if callerDone {
                    finished += 1
                    if finished == concurrency { break }
                } else {
                    break
                }
            }
            group.cancelAll()
        }
        return recorder.result(end: clock.now)
    }
}

/// One open-loop caller: takes the next released request (waiting, without
/// a timer, when there is none), sends it, records its latency; repeats.
///
/// Latency runs from the request's intended send time when it went out late
/// (all callers were busy, or the pacer woke late: that delay is part of what
/// a real client would see), and from the actual send when it went out early
/// (released up to one pacer tick ahead).
private func openLoopCaller(
    _ client: any UnaryClient, _ plan: LoadPlan, _ schedule: Schedule, _ pool: CallerPool, _ recorder: Recorder
) async {
    let clock = ContinuousClock()
    while let slot = await pool.next() {
        let intended = schedule.time(of: slot)
        let now = clock.now
        let measuredFrom = min(intended, now)
        let lag = intended < now ? now - intended : .zero
        recorder.noteSend()
        do {
            _ = try await client.call(plan.method, request: plan.requests[slot % plan.requests.count],
                                      timeout: plan.timeout)
            recorder.success(latency: clock.now - measuredFrom, lag: lag)
        } catch {
            recorder.failure(error, at: clock.now, lag: lag)
        }
    }
}

/// Hands released open-loop requests (slot indices, in order) to callers.
/// A caller that finds nothing released waits on a continuation, which the
/// pacer resumes: no timers and no task per request.
///
/// Thread-safety: all state behind one mutex; continuations are resumed
/// outside it.
final class CallerPool: Sendable {
    private struct State {
        var released = 0
        var taken = 0
        var finished = false
        var idle: [UnsafeContinuation<Int?, Never>] = []
    }

    private let state = Mutex(State())
    let total: Int

    init(total: Int) { self.total = total }

    /// The next request to send, or nil when there are no more.
    func next() async -> Int? {
        if Task.isCancelled { return nil }
        enum Quick { case slot(Int), done, wait }
        let quick: Quick = state.withLock { s in
            if s.taken < s.released {
                s.taken += 1
                return .slot(s.taken - 1)
            }
            return s.finished || s.taken >= total ? .done : .wait
        }
        switch quick {
        case .slot(let slot): return slot
        case .done: return nil
        case .wait: break
        }
        return await withUnsafeContinuation { (continuation: UnsafeContinuation<Int?, Never>) in
            let answer: Int?? = state.withLock { s in
                if s.taken < s.released {
                    s.taken += 1
                    return .some(s.taken - 1)
                }
                if s.finished || s.taken >= total { return .some(nil) }
                s.idle.append(continuation)
                return nil
            }
            if let answer { continuation.resume(returning: answer) }
        }
    }

    /// Releases requests up to (not including) `upTo`, waking idle callers;
    /// returns how many released requests no caller has taken yet.
    func release(upTo: Int) -> Int {
        var wake: [(UnsafeContinuation<Int?, Never>, Int)] = []
        let backlog: Int = state.withLock { s in
            s.released = max(s.released, min(upTo, total))
            while s.taken < s.released, let c = s.idle.popLast() {
                wake.append((c, s.taken))
                s.taken += 1
            }
            return s.released - s.taken
        }
        for (c, slot) in wake { c.resume(returning: slot) }
        return backlog
    }

    /// No more releases: idle callers stop (busy ones take what is left).
    func finish() {
        let idle: [UnsafeContinuation<Int?, Never>] = state.withLock { s in
            s.finished = true
            defer { s.idle.removeAll() }
            return s.idle
        }
        for c in idle { c.resume(returning: nil) }
    }

    /// Stops handing out requests at all.
    func cancel() {
        let idle: [UnsafeContinuation<Int?, Never>] = state.withLock { s in
            s.finished = true
            s.released = s.taken
            defer { s.idle.removeAll() }
            return s.idle
        }
        for c in idle { c.resume(returning: nil) }
    }
}

/// The open-loop timetable: request `i` is due at `start + i / rate`.
///
/// Thread-safety: immutable.
final class Schedule: Sendable {
    let start: ContinuousClock.Instant
    let total: Int
    let intervalNanos: Double

    init(start: ContinuousClock.Instant, total: Int, rate: Double) {
        self.start = start
        self.total = total
        self.intervalNanos = 1e9 / rate
    }

    var end: ContinuousClock.Instant { time(of: total) }

    func time(of index: Int) -> ContinuousClock.Instant {
        start.advanced(by: .nanoseconds(Int64(Double(index) * intervalNanos)))
    }

    /// How many requests are due at or before `instant`.
    func dueCount(by instant: ContinuousClock.Instant) -> Int {
        guard instant >= start else { return 0 }
        let elapsed = Double((instant - start).nanoseconds)
        return min(total, Int(elapsed / intervalNanos) + 1)
    }
}

/// Collects results from every caller.
///
/// Thread-safety: counters are atomics; the histogram and error table are
/// behind a mutex held only to record one value.
final class Recorder: Sendable {
    private struct State {
        var histogram: Histogram<UInt64>
        var ok = 0
        var errorsByCode: [RPCStatusCode: Int] = [:]
        var sampleErrors: [String] = []
        var lateSends = 0
        var maxSendLag: Duration = .zero
        var lastCompletion: ContinuousClock.Instant?
    }

    private let state: Mutex<State>
    private let sent = Atomic<Int>(0)
    private let completed = Atomic<Int>(0)
    let start: ContinuousClock.Instant

    init(start: ContinuousClock.Instant) {
        self.start = start
        // Nanoseconds from 1 ns to 1 minute, growing if a call takes longer.
        var histogram = Histogram<UInt64>(
            lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        histogram.autoResize = true
        state = Mutex(State(histogram: histogram))
    }

    var inFlight: Int { sent.load(ordering: .relaxed) - completed.load(ordering: .relaxed) }
    var sentCount: Int { sent.load(ordering: .relaxed) }

    /// Counts a call as started (for the in-flight count).
    func noteSend() {
        sent.wrappingAdd(1, ordering: .relaxed)
    }

    private static func noteLag(_ lag: Duration, in s: inout State) {
        if lag > s.maxSendLag { s.maxSendLag = lag }
        if lag > LoadGenerator.lateThreshold { s.lateSends += 1 }
    }

    /// Records a successful call; `lag` is how late it was sent.
    func success(latency: Duration, lag: Duration = .zero) {
        let nanos = UInt64(clamping: max(1, latency.nanoseconds))
        let now = ContinuousClock.now
        state.withLock { s in
            _ = s.histogram.record(nanos)
            s.ok += 1
            s.lastCompletion = now
            Self.noteLag(lag, in: &s)
        }
        completed.wrappingAdd(1, ordering: .relaxed)
    }

    /// Records a failed call by its status code.
    func failure(_ status: RPCStatus, at now: ContinuousClock.Instant, lag: Duration = .zero) {
        state.withLock { s in
            Self.noteLag(lag, in: &s)
            s.errorsByCode[status.code, default: 0] += 1
            s.lastCompletion = now
            if s.sampleErrors.count < 5 {
                let line = status.description
                if !s.sampleErrors.contains(line) { s.sampleErrors.append(line) }
            }
        }
        completed.wrappingAdd(1, ordering: .relaxed)
    }

    func result(end: ContinuousClock.Instant) -> LoadResult {
        let sentCount = sent.load(ordering: .relaxed)
        return state.withLock { s in
            let last = s.lastCompletion ?? end
            return LoadResult(
                latencies: s.histogram,
                sent: sentCount,
                ok: s.ok,
                errorsByCode: s.errorsByCode,
                sampleErrors: s.sampleErrors,
                elapsed: last > start ? last - start : .zero,
                lateSends: s.lateSends,
                maxSendLag: s.maxSendLag)
        }
    }
}
