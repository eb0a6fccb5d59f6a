import Dispatch
import Foundation
import GRDB
import GRDBSQLite
import Synchronization

/// The append-only, hash-chained audit log of one SQLite file (docs/AUDIT.md).
///
/// Appends are queued and written by one dedicated writer thread (never a
/// thread of the Swift concurrency pool) with group commit: the writer takes
/// everything queued (at most `maxBatch` entries), inserts it in one
/// transaction, commits, and only then completes every append of the batch.
/// An append that returned is therefore in the file (the WAL) and survives a
/// process kill; with ``AuditDurability/full`` it also survives a power loss.
/// When a transaction fails, every append of that batch fails with the same
/// error and the chain is left as it was: nothing is half acknowledged.
///
/// No API edits or deletes a record; the schema's triggers refuse UPDATE and
/// DELETE, and an INSERT anywhere but at the end of the chain. One process
/// should own a file's writer; a second writer's appends fail instead of
/// forking the chain.
///
/// Thread safety: every method may be called from any thread or task.
/// ``close()`` (or releasing the last reference) flushes what is queued and
/// stops the writer thread.
public final class AuditLog: Sendable {
    /// Most entries waiting for the writer; beyond that ``append(_:)`` fails
    /// with ``AuditError/Code/queueFull`` instead of growing without bound.
    public static let maxQueued = 65_536

    /// The database file.
    public let path: String
    public let durability: AuditDurability
    /// Whether `append` decodes each payload before queueing it.
    public let checksPayloads: Bool
    private let checkpointer: Checkpointer
    /// Most records per transaction.
    public let maxBatch: Int
    /// Bytes of WAL in use above which the writer restarts it under load.
    public let walLimit: Int

    private let writer: Writer

    /// Opens (creating if needed) the audit log at `path` in WAL mode and
    /// starts its writer thread. A file with records continues their chain.
    ///
    /// Throws ``AuditError/Code/corrupt`` when the file is not an SQLite
    /// database, not a Keel audit log, has another schema version, or when
    /// its last record's stored hash does not match its contents (the chain
    /// is not extended past a broken record: run `keel audit verify`), and
    /// ``AuditError/Code/io`` when it cannot be opened or created.
    ///
    /// `checksPayloads`: decode every payload before queueing it (the default).
    /// A caller that encodes its records itself from the generated messages,
    /// as the server does, may turn it off to save the decode on its request
    /// path; `AuditReader.verify` decodes every payload either way.
    ///
    /// `walLimit`: bytes of WAL in use above which the writer restarts the
    /// WAL between two batches even while records keep arriving (see
    /// ``defaultWALLimit``); at least ``minimumWALLimit``. `onWALRestart`, if
    /// given, is told of each such restart (on the writer thread: keep it
    /// short) with how long the commits waited for it and the WAL's size.
    public convenience init(path: String, durability: AuditDurability = .full, maxBatch: Int = 1024,
                            checksPayloads: Bool = true, walLimit: Int = AuditLog.defaultWALLimit,
                            onWALRestart: (@Sendable (_ waited: Duration, _ walBytes: Int) -> Void)? = nil)
        throws(AuditError)
    {
        try self.init(path: path, durability: durability, maxBatch: maxBatch, maxQueued: Self.maxQueued,
                      checksPayloads: checksPayloads, walLimit: walLimit, onWALRestart: onWALRestart)
    }

    /// The default `walLimit` of ``init(path:durability:maxBatch:checksPayloads:walLimit:onWALRestart:)``:
    /// 4 GiB. Under load that never pauses, the checkpointer copies the WAL
    /// into the database, but SQLite can start the WAL over only between two
    /// commits once every frame is copied, which new commits keep preventing,
    /// so the WAL would grow by every record (74 MB/s at 2,000 decisions/s of
    /// 100 assets) until the load eases. Past the limit the writer itself
    /// checkpoints with RESTART between two batches: the commits queued
    /// meanwhile wait for the frames not yet copied and for the syncs (35 to
    /// 129 ms per restart at 2,000 decisions/s on the development machine's
    /// disk, benchmarks/RESULTS.md; longer when the checkpointer has fallen
    /// far behind), and the WAL is then reused from its beginning. The limit
    /// is overshot by what arrives until a restart gets through: a reader of
    /// an older snapshot (an export of the live file) holds it off while it
    /// reads. The default leaves about a minute of that load between stalls.
    public static let defaultWALLimit = 4 << 30
    /// The smallest `walLimit` accepted: 1 MiB.
    public static let minimumWALLimit = 1 << 20

    /// As the public initializer, with a smaller queue bound and WAL
    /// truncation threshold for tests.
    init(path: String, durability: AuditDurability, maxBatch: Int, maxQueued: Int,
         checksPayloads: Bool = true, walTruncateAbove: Int = AuditStore.walSizeLimit,
         walLimit: Int = AuditLog.defaultWALLimit,
         onWALRestart: (@Sendable (_ waited: Duration, _ walBytes: Int) -> Void)? = nil) throws(AuditError) {
        self.checksPayloads = checksPayloads
        guard maxBatch >= 1 else { throw AuditError(.invalidArgument, "maxBatch must be at least 1, not \(maxBatch)") }
        guard maxQueued >= 1 else { throw AuditError(.invalidArgument, "maxQueued must be at least 1, not \(maxQueued)") }
        guard walLimit >= Self.minimumWALLimit else {
            throw AuditError(.invalidArgument, "walLimit must be at least \(Self.minimumWALLimit) bytes, not \(walLimit)")
        }
        self.walLimit = walLimit
        self.path = path
        self.durability = durability
        self.maxBatch = maxBatch
        let database = try AuditStore.open(path: path, readonly: false, durability: durability)
        let head = try Writer.readHead(database, path: path, verifyingLast: true)
        // WAL checkpoints move committed pages into the main file. SQLite runs
        // them inside a commit by default, which stalls every request of that
        // batch; here a second connection on its own thread does them.
        do {
            try database.writeWithoutTransaction { try $0.execute(sql: "PRAGMA wal_autocheckpoint = 0") }
        } catch {
            throw AuditStore.auditError(path, error, doing: "cannot configure checkpoints")
        }
        let wal = WALStatus()
        checkpointer = try Checkpointer(path: path, durability: durability, wal: wal, truncateAbove: walTruncateAbove)
        writer = try Writer(database: database, path: path, head: head, maxBatch: maxBatch, maxQueued: maxQueued,
                            wal: wal, walLimit: walLimit, onWALRestart: onWALRestart)
        writer.start()
        checkpointer.start()
    }

    deinit {
        writer.close()
        checkpointer.stop()
    }

    /// Queues `entry` and returns once the transaction holding it has
    /// committed. Suspends the task; never blocks its thread. The append
    /// completes even if the task is cancelled meanwhile (the record may
    /// already be committed).
    ///
    /// Throws ``AuditError/Code/invalidArgument`` for an entry outside the
    /// limits of ``AuditEntry`` (checked on the caller's task, before queueing),
    /// ``AuditError/Code/queueFull`` when ``maxQueued`` entries are waiting,
    /// ``AuditError/Code/closed`` after ``close()``, and
    /// ``AuditError/Code/io`` when its transaction failed.
    public func append(_ entry: AuditEntry) async throws(AuditError) -> AuditReceipt {
        try Self.validate(entry, payload: checksPayloads)
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<AuditReceipt, AuditError>, Never>) in
            do throws(AuditError) {
                try writer.enqueue(entry) { continuation.resume(returning: $0) }
            } catch {
                continuation.resume(returning: .failure(error))
            }
        }
        return try result.get()
    }

    /// ``append(_:)`` that blocks the calling thread until the commit. For
    /// tools and tests; server code on the concurrency pool uses ``append(_:)``.
    public func appendAndWait(_ entry: AuditEntry) throws(AuditError) -> AuditReceipt {
        try Self.validate(entry, payload: checksPayloads)
        let done = DispatchSemaphore(value: 0)
        let outcome = Mutex<Result<AuditReceipt, AuditError>?>(nil)
        try writer.enqueue(entry) { result in
            outcome.withLock { $0 = result }
            done.signal()
        }
        done.wait()
        guard let result = outcome.withLock({ $0 }) else {
            throw AuditError(.io, "\(path): the writer completed an append without a result")
        }
        return try result.get()
    }

    /// Account ids with at least one decision record, committed ones only.
    /// The first call reads them from the file; later calls copy a set the
    /// writer keeps current.
    public func accountsWithDecisions() throws(AuditError) -> Set<String> {
        try writer.accountsWithDecisions()
    }

    /// Number of committed records (the sequence of the last one).
    public var count: Int64 {
        writer.committedCount
    }

    /// Hash of the last committed record; 64 zeros (the genesis `prev_hash`)
    /// when the log is empty. Worth logging: a head hash kept outside the
    /// file anchors the chain (docs/AUDIT.md).
    public var headHash: String {
        writer.headHash
    }

    /// Stops accepting appends (later ones throw ``AuditError/Code/closed``),
    /// waits for the writer to commit what is queued, stops it and closes the
    /// file. Idempotent; blocks the calling thread until the writer is done.
    public func close() {
        writer.close()
        checkpointer.stop()
    }

    /// Transactions committed by this instance (tests: proof of group commit).
    var transactionCount: Int {
        writer.transactionCount
    }

    /// Holds the writer before its next batch, so tests can fill the queue.
    func pauseWriter() { writer.setPaused(true) }
    /// Lets a paused writer continue.
    func resumeWriter() { writer.setPaused(false) }
    /// Entries waiting for the writer.
    var queuedCount: Int { writer.queuedCount }
    /// WAL restarts the writer has done past ``walLimit`` (tests).
    var walRestarts: Int { writer.walRestarts }
    /// WAL restarts past ``walLimit`` that readers held off (tests).
    var walRestartsHeldOff: Int { writer.walRestartsHeldOff }
    /// Checkpoint passes the checkpoint thread has run (tests).
    var checkpointPasses: Int { checkpointer.passes.load(ordering: .relaxed) }
    /// Whether the checkpoint thread runs under SCHED_IDLE; nil until it has
    /// started (tests).
    var checkpointerInBackground: Bool? { checkpointer.inBackground.withLock { $0 } }

    /// `PRAGMA name` on the writer's connection, as text (tests).
    func pragma(_ name: String) throws -> String? {
        try writer.database.read { db in
            switch try DatabaseValue.fetchOne(db, sql: "PRAGMA \(name)")?.storage {
            case .int64(let n): String(n)
            case .string(let s): s
            default: nil
            }
        }
    }

    static func validate(_ entry: AuditEntry, payload checkPayload: Bool = true) throws(AuditError) {
        for (name, value) in [("accountID", entry.accountID), ("decisionID", entry.decisionID)] {
            guard value.utf8.count <= AuditEntry.maxIDBytes else {
                throw AuditError(.invalidArgument,
                                 "\(name) is \(value.utf8.count) bytes; at most \(AuditEntry.maxIDBytes) allowed")
            }
            guard !value.utf8.contains(0) else {
                throw AuditError(.invalidArgument, "\(name) contains a NUL character")
            }
        }
        guard entry.payload.count <= AuditEntry.maxPayloadBytes else {
            throw AuditError(.invalidArgument,
                             "payload is \(entry.payload.count) bytes; at most \(AuditEntry.maxPayloadBytes) allowed")
        }
        guard checkPayload else { return }
        do {
            _ = try AuditStore.decodePayload(entry.payload, kind: entry.kind)
        } catch {
            throw AuditError(.invalidArgument, error.reason)
        }
    }
}

// MARK: - WAL status

/// What the writer and the checkpointer share about the WAL.
final class WALStatus: Sendable {
    /// Frames in the WAL after the last commit (SQLite's WAL hook on the
    /// writer's connection), 0 right after a restart.
    let frames = Atomic<Int>(0)
    /// Set by the writer while a restart of a WAL past ``AuditLog/walLimit``
    /// is due or being tried (not while it waits after readers held one
    /// off); the checkpointer starts no pass meanwhile.
    let overLimit = Atomic<Bool>(false)
    /// Set when the writer lifted the checkpoint thread out of SCHED_IDLE;
    /// the thread goes back once its pass is done.
    let checkpointerBoosted = Atomic<Bool>(false)

    #if os(Linux)
    /// The checkpoint thread while it runs.
    private let checkpointThread = Mutex<pthread_t?>(nil)

    func registerCheckpointThread(_ thread: pthread_t?) {
        checkpointThread.withLock { $0 = thread }
    }

    /// Gives the checkpoint thread normal priority: a pass it began before
    /// the WAL crossed the limit holds the lock the writer's restart needs,
    /// and under SCHED_IDLE on busy cores it might not finish for a long time.
    func boostCheckpointer() {
        checkpointThread.withLock { thread in
            guard let thread else { return }
            var param = sched_param()
            param.sched_priority = 0
            if pthread_setschedparam(thread, Int32(SCHED_OTHER), &param) == 0 {
                checkpointerBoosted.store(true, ordering: .relaxed)
            }
        }
    }
    #else
    func boostCheckpointer() {}
    #endif
}

/// What the writer does about the WAL after a batch.
enum WALStep: Equatable {
    /// At or under ``AuditLog/walLimit``: nothing; the checkpointer copies.
    case underLimit
    /// Over it, but readers held the last restart off and its back-off
    /// (`retryAt`) has not passed: the checkpointer copies meanwhile.
    case backOff
    /// Over it: the checkpointer starts no pass; restart the WAL now.
    case restart

    init(frames: Int, limit: Int, retryAt: ContinuousClock.Instant?, now: ContinuousClock.Instant) {
        if frames <= limit {
            self = .underLimit
        } else if let retryAt, now < retryAt {
            self = .backOff
        } else {
            self = .restart
        }
    }
}

/// Names the calling thread for `top -H`, `ps -L` and `perf` (Linux; a
/// no-op elsewhere, and where it fails). Foundation's `Thread.name` does not
/// reach the OS thread on Linux, and Glibc's Swift overlay has no
/// `pthread_setname_np`; the kernel keeps the first 15 bytes.
func nameCurrentThread(_ name: String) {
    #if os(Linux)
    let fd = open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { return }
    defer { close(fd) }
    let bytes = Array(name.utf8.prefix(15))
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    #endif
}

// MARK: - Checkpointer

/// Checkpoints the WAL from its own connection and thread (PASSIVE: it
/// copies what it can without blocking the writer; the WAL restarts from its
/// beginning once everything was copied), and once more when stopped.
///
/// Passes come every ``busyInterval`` while records arrive and every
/// ``idleInterval`` once a pass finds nothing new.
/// - `normal` durability: small frequent passes (10 ms) keep the tail down.
///   At 2,000 Rebalance/s (100 assets) p99 was 2.8 to 3.1 ms with a pass every
///   200 ms, 2.0 to 2.6 ms every 50 ms, 1.7 to 2.0 ms every 10 to 20 ms, and
///   1.75 ms with no checkpoints at all (one variable changed,
///   benchmarks/RESULTS.md): each pass syncs the WAL and the database file,
///   and a pass of several MB held the disk for milliseconds.
/// - `full` durability: 200 ms. Every commit syncs the WAL already; passes
///   every 10 ms added their syncs to the writer's and took p99 at 2,000/s
///   from about 5 ms to 13 to 21 ms.
///
/// On Linux the thread runs under SCHED_IDLE: a 200 ms pass copied several MB
/// at 2,000 decisions/s (15 to 25 ms of one core), and at normal priority those
/// bursts took a core from the requests in flight: p99 at 2,000 Rebalance/s
/// was 5.9 to 13.3 ms at normal priority and 2.5 to 6.1 ms under SCHED_IDLE
/// (benchmarks/RESULTS.md). The copying then uses the idle time between
/// requests; when the machine is saturated it waits, and the WAL grows until
/// the load eases.
final class Checkpointer: Sendable {
    /// The thread's name as `top -H` and `/proc/PID/task/TID/comm` show it
    /// (at most 15 bytes on Linux).
    static let threadName = "keel-checkpoint"
    static let idleInterval: DispatchTimeInterval = .milliseconds(200)
    /// The wait between passes while records arrive.
    let busyInterval: DispatchTimeInterval

    private let database: DatabaseQueue
    private let path: String
    private let stopping = Mutex(false)
    private let wake = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private let started = Mutex(false)

    private let wal: WALStatus

    init(path: String, durability: AuditDurability, wal: WALStatus = WALStatus(),
         truncateAbove: Int = AuditStore.walSizeLimit) throws(AuditError) {
        self.wal = wal
        self.path = path
        self.truncateAbove = truncateAbove
        busyInterval = durability == .normal ? .milliseconds(10) : Self.idleInterval
        database = try AuditStore.open(path: path, readonly: false, durability: durability)
    }

    func start() {
        started.withLock { $0 = true }
        let thread = Thread { [self] in run() }
        thread.start()
    }

    /// Stops the thread after a last checkpoint. Idempotent.
    func stop() {
        let first = stopping.withLock { (s: inout Bool) -> Bool in
            defer { s = true }
            return !s
        }
        guard started.withLock({ $0 }) else { try? database.close(); return }
        if first { wake.signal() }
        finished.wait()
        finished.signal()
    }

    /// One PASSIVE pass; returns the WAL's size in frames and how many of
    /// them are copied (nil when the pass failed).
    @discardableResult
    private func checkpoint() -> (frames: Int64, copied: Int64)? {
        passes.add(1, ordering: .relaxed)
        let pass = try? database.writeWithoutTransaction { db -> (frames: Int64, copied: Int64)? in
            guard let row = try Row.fetchOne(db, sql: "PRAGMA wal_checkpoint(PASSIVE)"),
                  let frames = row[1] as Int64?, let copied = row[2] as Int64? else { return nil }
            return (frames, copied)
        }
        return pass ?? nil
    }

    /// Whether the next pass comes soon: the WAL changed since the previous
    /// pass or is not all copied. A pass that found nothing new, or failed,
    /// is followed by the idle wait.
    static func isBusy(previous: (frames: Int64, copied: Int64)?, now: (frames: Int64, copied: Int64)?) -> Bool {
        guard let now else { return false }
        return now.copied < now.frames || previous.map { $0 != now } ?? true
    }

    /// Whether the thread runs under SCHED_IDLE; nil until it started (tests).
    let inBackground = Mutex<Bool?>(nil)
    /// PASSIVE passes run so far (tests).
    let passes = Atomic<Int>(0)

    /// Above this many bytes the WAL file is truncated once the log is idle.
    let truncateAbove: Int

    /// The WAL file's size in bytes (0 when there is none).
    private func walBytes() -> Int {
        let attributes = try? FileManager.default.attributesOfItem(atPath: path + "-wal")
        return (attributes?[.size] as? NSNumber)?.intValue ?? 0
    }

    /// Cuts the WAL file back to nothing (TRUNCATE: every frame is copied
    /// first). Only called when a pass found nothing new: the writer is
    /// idle, and a commit that arrives meanwhile waits for the truncation
    /// only (milliseconds), once after a burst, instead of each WAL restart
    /// paying for it as SQLite's journal_size_limit would.
    ///
    /// Without a busy wait: a pass that finds the writer, or a reader of an
    /// older snapshot (`keel audit export` on the live file), gives up at
    /// once and is tried at the next idle pass, instead of holding the
    /// writer's lock for up to the connection's 5 s busy timeout.
    private func truncateWAL() {
        _ = try? database.writeWithoutTransaction { db in
            try db.execute(sql: "PRAGMA busy_timeout = 0")
            defer { try? db.execute(sql: "PRAGMA busy_timeout = \(AuditStore.busyTimeoutMilliseconds)") }
            try db.execute(sql: "PRAGMA wal_checkpoint(TRUNCATE)")
        }
    }

    private func run() {
        nameCurrentThread(Self.threadName)
        let background = Self.runInBackground()
        inBackground.withLock { $0 = background }
        #if os(Linux)
        wal.registerCheckpointThread(pthread_self())
        defer { wal.registerCheckpointThread(nil) }
        #endif
        var interval = Self.idleInterval
        var last: (frames: Int64, copied: Int64)? = nil
        while !stopping.withLock({ $0 }) {
            _ = wake.wait(timeout: .now() + interval)
            if wal.checkpointerBoosted.exchange(false, ordering: .relaxed) { _ = Self.runInBackground() }
            // Past the WAL limit the writer restarts the WAL itself; a pass
            // now would only hold the lock it needs (except the last one).
            if wal.overLimit.load(ordering: .relaxed), !stopping.withLock({ $0 }) {
                interval = busyInterval
                continue
            }
            let now = checkpoint()
            let busy = Self.isBusy(previous: last, now: now)
            if !busy, now != nil, walBytes() > truncateAbove { truncateWAL() }
            interval = busy ? busyInterval : Self.idleInterval
            last = now
        }
        try? database.close()
        finished.signal()
    }

    /// Puts the calling thread under SCHED_IDLE (Linux; elsewhere a no-op)
    /// and says whether it did. A failure leaves it at normal priority, which
    /// only costs latency.
    private static func runInBackground() -> Bool {
        #if os(Linux)
        var param = sched_param()
        param.sched_priority = 0
        let schedIdle: Int32 = 5  // SCHED_IDLE in <sched.h>; Glibc's Swift overlay does not export the name
        guard pthread_setschedparam(pthread_self(), schedIdle, &param) == 0 else { return false }
        var policy: Int32 = 0
        return pthread_getschedparam(pthread_self(), &policy, &param) == 0 && policy == schedIdle
        #else
        return false
        #endif
    }
}

// MARK: - Writer

/// The queue, the chain head and the writer thread behind an ``AuditLog``.
/// The thread holds a reference to this object, not to the log, so releasing
/// the log closes it.
private final class Writer: Sendable {
    /// The thread's name (at most 15 bytes on Linux).
    static let threadName = "keel-audit"
    typealias Completion = @Sendable (Result<AuditReceipt, AuditError>) -> Void

    struct Pending {
        let entry: AuditEntry
        let complete: Completion
    }

    struct Head {
        var sequence: Int64
        var hash: String
        var recordedUnixNanos: Int64
    }

    struct State {
        var queue: [Pending] = []
        var head: Head
        /// The writer waits on `wake`; whoever finds it idle signals once.
        var writerIdle = false
        var closing = false
        var paused = false
        var walRestarts = 0
        /// WAL restarts that readers held off.
        var walRestartsHeldOff = 0
        var transactionCount = 0
        /// nil until ``accountsWithDecisions()`` first reads them.
        var accounts: Set<String>?
    }

    let database: DatabaseQueue
    let path: String
    let maxBatch: Int
    let maxQueued: Int
    private let state: Mutex<State>
    private let wake = DispatchSemaphore(value: 0)
    /// Signalled once the thread has exited; waiters re-signal it.
    private let finished = DispatchSemaphore(value: 0)

    private let wal: WALStatus
    /// ``AuditLog/walLimit`` in frames.
    let walLimitFrames: Int
    private let onWALRestart: (@Sendable (_ waited: Duration, _ walBytes: Int) -> Void)?
    private let frameBytes: Int

    init(database: DatabaseQueue, path: String, head: Head, maxBatch: Int, maxQueued: Int, wal: WALStatus,
         walLimit: Int, onWALRestart: (@Sendable (_ waited: Duration, _ walBytes: Int) -> Void)?) throws(AuditError) {
        self.onWALRestart = onWALRestart
        self.wal = wal
        self.database = database
        self.path = path
        self.maxBatch = maxBatch
        self.maxQueued = maxQueued
        state = Mutex(State(head: head))
        // SQLite calls the WAL hook after every commit with the WAL's size in
        // frames (each one page and a 24-byte header). Installed after
        // `wal_autocheckpoint = 0`, which clears the hook slot.
        do {
            frameBytes = try database.writeWithoutTransaction { db -> Int in
                let pageSize = try Int.fetchOne(db, sql: "PRAGMA page_size") ?? 4096
                sqlite3_wal_hook(db.sqliteConnection, { context, _, _, pages in
                    guard let context else { return SQLITE_OK }
                    Unmanaged<WALStatus>.fromOpaque(context).takeUnretainedValue()
                        .frames.store(Int(pages), ordering: .relaxed)
                    return SQLITE_OK
                }, Unmanaged.passUnretained(wal).toOpaque())
                return pageSize + 24
            }
        } catch {
            throw AuditStore.auditError(path, error, doing: "cannot install the WAL hook")
        }
        walLimitFrames = max(1, walLimit / frameBytes)
    }

    func start() {
        let thread = Thread { [self] in run() }
        thread.start()
    }

    var committedCount: Int64 { state.withLock { $0.head.sequence } }
    var headHash: String { state.withLock { $0.head.hash } }
    var transactionCount: Int { state.withLock { $0.transactionCount } }
    var queuedCount: Int { state.withLock { $0.queue.count } }
    var walRestarts: Int { state.withLock { $0.walRestarts } }
    var walRestartsHeldOff: Int { state.withLock { $0.walRestartsHeldOff } }

    func enqueue(_ entry: AuditEntry, _ complete: @escaping Completion) throws(AuditError) {
        let signal = try state.withLock { (s: inout State) throws(AuditError) -> Bool in
            if s.closing { throw AuditError(.closed, "\(path): the audit log is closed") }
            guard s.queue.count < maxQueued else {
                throw AuditError(.queueFull, "\(path): audit queue full (\(maxQueued) entries waiting for the disk)")
            }
            s.queue.append(Pending(entry: entry, complete: complete))
            guard s.writerIdle else { return false }
            s.writerIdle = false
            return true
        }
        if signal { wake.signal() }
    }

    func setPaused(_ paused: Bool) {
        let signal = state.withLock { s in
            s.paused = paused
            guard !paused, s.writerIdle else { return false }
            s.writerIdle = false
            return true
        }
        if signal { wake.signal() }
    }

    func close() {
        let signal = state.withLock { s in
            s.closing = true
            guard s.writerIdle else { return false }
            s.writerIdle = false
            return true
        }
        if signal { wake.signal() }
        finished.wait()
        finished.signal()
    }

    // MARK: Writer thread

    private enum Next {
        case batch([Pending])
        case sleep
        case exit
    }

    private func run() {
        nameCurrentThread(Self.threadName)
        // When the next WAL restart may be tried after one that readers held
        // off, and the wait after the next such one (20 ms, doubling up to 5 s).
        var retryAt: ContinuousClock.Instant? = nil
        var backoff = Duration.milliseconds(20)
        while true {
            let next = state.withLock { (s: inout State) -> Next in
                if !s.queue.isEmpty && (!s.paused || s.closing) {
                    if s.queue.count <= maxBatch {
                        defer { s.queue = [] }
                        return .batch(s.queue)
                    }
                    let batch = Array(s.queue.prefix(maxBatch))
                    s.queue.removeFirst(maxBatch)
                    return .batch(batch)
                }
                if s.closing { return .exit }
                s.writerIdle = true
                return .sleep
            }
            switch next {
            case .batch(let batch):
                commit(batch)
                // Load that never pauses never lets the WAL start over by
                // itself (the checkpointer copies frames while new ones keep
                // coming): past the limit, restart it here, between two batches.
                let frames = wal.frames.load(ordering: .relaxed)
                switch WALStep(frames: frames, limit: walLimitFrames, retryAt: retryAt, now: .now) {
                case .underLimit:
                    // Under the limit (again: a restart by SQLite itself once
                    // readers let go counts too): the checkpointer carries on,
                    // and the next time readers hold a restart off the wait
                    // starts from 20 ms again.
                    wal.overLimit.store(false, ordering: .relaxed)
                    retryAt = nil
                    backoff = .milliseconds(20)
                    continue
                case .backOff:
                    // Waiting after readers held the last restart off: the
                    // checkpointer carries on (up to what readers still use),
                    // so the next try finds little left to copy and sync
                    // while commits wait.
                    wal.overLimit.store(false, ordering: .relaxed)
                    continue
                case .restart:
                    // The checkpointer starts no pass from now until the
                    // restart got through, so that its lock does not keep
                    // refusing it.
                    wal.overLimit.store(true, ordering: .relaxed)
                }
                switch restartWAL(frames: frames) {
                case .restarted:
                    retryAt = nil
                    backoff = .milliseconds(20)
                case .checkpointerBusy:
                    // Refused at once, nothing done (tens of microseconds):
                    // try again after the next batch, and let the pass finish.
                    wal.boostCheckpointer()
                case .readersBusy:
                    // Frames copied and synced, then a reader held the WAL:
                    // each attempt costs syncs, so wait before the next.
                    retryAt = .now + backoff
                    backoff = min(backoff * 2, .seconds(5))
                    wal.overLimit.store(false, ordering: .relaxed)
                    state.withLock { $0.walRestartsHeldOff += 1 }
                }
            case .sleep:
                // Idle: the checkpointer may copy and truncate again.
                wal.overLimit.store(false, ordering: .relaxed)
                wake.wait()
            case .exit:
                try? database.close()
                finished.signal()
                return
            }
        }
    }

    private enum RestartOutcome {
        case restarted
        /// The checkpointer's pass held its lock: refused before any work.
        case checkpointerBusy
        /// Frames were copied, then readers kept the WAL from starting over
        /// (or the attempt failed).
        case readersBusy
    }

    /// Copies the rest of the WAL into the database and lets the next commit
    /// write the WAL from its beginning (`wal_checkpoint(RESTART)` on this
    /// connection, between two batches: no commit can land meanwhile, which is
    /// what a checkpoint from another thread cannot get under steady load).
    /// Without a busy wait: while a checkpointer pass that began before the
    /// limit was crossed holds its lock, it is refused at once and tried
    /// again after the next batch; while a reader of an older snapshot (an
    /// export of the live file) holds the WAL, it gives up having copied what
    /// it could, and `run()` waits before the next attempt.
    private func restartWAL(frames: Int) -> RestartOutcome {
        let start = ContinuousClock.now
        let outcome = try? database.writeWithoutTransaction { db -> RestartOutcome in
            try db.execute(sql: "PRAGMA busy_timeout = 0")
            defer { try? db.execute(sql: "PRAGMA busy_timeout = \(AuditStore.busyTimeoutMilliseconds)") }
            // One row: busy (0 or 1), frames in the WAL, frames copied (-1, -1
            // when the checkpoint could not start).
            guard let row = try Row.fetchOne(db, sql: "PRAGMA wal_checkpoint(RESTART)") else { return .readersBusy }
            if (row[0] as Int64?) == 0 { return .restarted }
            return (row[1] as Int64?) == -1 ? .checkpointerBusy : .readersBusy
        }
        guard let outcome, outcome == .restarted else { return outcome ?? .readersBusy }
        // The hook reports again at the next commit; until then the WAL is empty.
        wal.frames.store(0, ordering: .relaxed)
        wal.overLimit.store(false, ordering: .relaxed)
        state.withLock { $0.walRestarts += 1 }
        onWALRestart?(ContinuousClock.now - start, frames * frameBytes)
        return .restarted
    }

    /// Writes `batch` in one transaction and completes every entry of it.
    private func commit(_ batch: [Pending]) {
        let start = state.withLock { $0.head }
        var receipts: [AuditReceipt] = []
        receipts.reserveCapacity(batch.count)
        do {
            try database.writeWithoutTransaction { db in
                var head = start
                try db.inTransaction(.immediate) {
                    head.recordedUnixNanos = max(AuditStore.nowUnixNanos(), start.recordedUnixNanos)
                    let insert = try db.cachedStatement(sql: AuditStore.insertSQL)
                    for pending in batch {
                        let entry = pending.entry
                        let sequence = head.sequence + 1
                        let hash = AuditStore.hash(
                            prevHash: head.hash, sequence: sequence, recordedUnixNanos: head.recordedUnixNanos,
                            kind: entry.kind.rawValue, accountID: entry.accountID, decisionID: entry.decisionID,
                            payload: entry.payload)
                        try insert.execute(arguments: [
                            sequence, head.recordedUnixNanos, entry.kind.rawValue, entry.accountID,
                            entry.decisionID, Data(entry.payload), head.hash, hash,
                        ])
                        receipts.append(AuditReceipt(sequence: sequence, hash: hash))
                        head.sequence = sequence
                        head.hash = hash
                    }
                    return .commit
                }
                // Committed. Still inside the database access, so a concurrent
                // first read of the account set cannot miss this batch.
                state.withLock { s in
                    s.head = head
                    s.transactionCount += 1
                    if s.accounts != nil {
                        for pending in batch where pending.entry.kind == .decision {
                            s.accounts?.insert(pending.entry.accountID)
                        }
                    }
                }
            }
        } catch {
            let failure = AuditStore.auditError(path, error, doing: "cannot commit \(batch.count) audit record(s)")
            // The transaction rolled back; re-read the head in case another
            // writer moved it (a stale head only makes later batches fail).
            if let head = try? Self.readHead(database, path: path, verifyingLast: false) {
                state.withLock { $0.head = head }
            }
            for pending in batch { pending.complete(.failure(failure)) }
            return
        }
        for (pending, receipt) in zip(batch, receipts) { pending.complete(.success(receipt)) }
    }

    func accountsWithDecisions() throws(AuditError) -> Set<String> {
        if let cached = state.withLock({ $0.accounts }) { return cached }
        do {
            return try database.writeWithoutTransaction { db in
                if let cached = state.withLock({ $0.accounts }) { return cached }
                var accounts = Set<String>()
                let cursor = try DatabaseValue.fetchCursor(
                    db, sql: "SELECT DISTINCT account_id FROM audit_records WHERE kind = 'decision'")
                while let value = try cursor.next() {
                    if case .string(let id) = value.storage { accounts.insert(id) }
                }
                state.withLock { $0.accounts = accounts }
                return accounts
            }
        } catch {
            throw AuditStore.auditError(path, error, doing: "cannot read the accounts with decisions")
        }
    }

    /// The last record's sequence, hash and time (genesis for an empty log).
    /// With `verifyingLast`, a last record whose stored hash does not match
    /// its contents is an error: the chain is not extended past it.
    static func readHead(_ database: DatabaseQueue, path: String, verifyingLast: Bool) throws(AuditError) -> Head {
        let row: AuditStore.StoredRecord?
        do {
            row = try database.read { db -> AuditStore.StoredRecord? in
                guard let raw = try Row.fetchOne(
                    db, sql: "SELECT \(AuditStore.selectList) FROM audit_records ORDER BY sequence DESC LIMIT 1")
                else { return nil }
                switch AuditStore.StoredRecord.decode(raw) {
                case .success(let record): return record
                case .failure(let malformed):
                    let which = malformed.sequence.map { "record \($0)" } ?? "the last record"
                    throw AuditError(.corrupt, "\(path): \(which): \(malformed.reason); "
                                     + "refusing to extend a broken chain (run keel audit verify)")
                }
            }
        } catch {
            throw AuditStore.auditError(path, error, doing: "cannot read the last record")
        }
        guard let last = row else {
            return Head(sequence: 0, hash: AuditStore.genesisHash, recordedUnixNanos: 0)
        }
        if verifyingLast {
            var problem: String?
            if last.kind == nil {
                problem = "unknown kind '\(last.kindText)'"
            } else if !AuditStore.isHashText(last.hash) {
                problem = "stored hash is not 64 lowercase hexadecimal characters"
            } else if last.recomputedHash() != last.hash {
                problem = "stored hash does not match the record's contents"
            } else if last.sequence < 1 {
                problem = "sequence is not positive"
            }
            if let problem {
                throw AuditError(.corrupt, "\(path): record \(last.sequence): \(problem); "
                                 + "refusing to extend a broken chain (run keel audit verify)")
            }
        }
        return Head(sequence: last.sequence, hash: last.hash, recordedUnixNanos: last.recordedUnixNanos)
    }
}
