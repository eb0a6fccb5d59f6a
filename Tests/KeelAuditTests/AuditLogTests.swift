import Foundation
import GRDB
import KeelAPI
import Testing

@testable import KeelAudit

@Suite("Audit log: appends, chain, group commit")
struct AuditLogTests {
    @Test("appends get sequences 1, 2, 3 chained by hash, and the chain verifies")
    func appendsChainAndVerify() async throws {
        let scratch = try ScratchDirectory()
        let path = scratch.path("audit.db")
        let log = try AuditLog(path: path)
        let first = try await log.append(Records.decision(account: "acct-1", decision: "dec-1"))
        let second = try log.appendAndWait(Records.approval(account: "acct-1", decision: "dec-1"))
        let third = try await log.append(Records.decision(account: "acct-2", decision: "dec-2"))
        #expect([first.sequence, second.sequence, third.sequence] == [1, 2, 3])
        #expect(Set([first.hash, second.hash, third.hash]).count == 3)
        #expect([first, second, third].allSatisfy { AuditStore.isHashText($0.hash) })
        #expect(log.count == 3)
        #expect(log.headHash == third.hash)

        // Each record names its predecessor's hash, and its own hash is the
        // documented encoding.
        let rows = try RawSQL.fetchRows(path, "SELECT \(AuditStore.selectList) FROM audit_records ORDER BY sequence")
        var previous = AuditStore.genesisHash
        for row in rows {
            let record = try AuditStore.StoredRecord.decode(row).get()
            #expect(record.prevHash == previous)
            #expect(record.recomputedHash() == record.hash)
            previous = record.hash
        }

        let verification = try AuditReader.verify(path: path)
        #expect(verification.records == 3)
        #expect(verification.headHash == third.hash)
        #expect(verification.firstBroken == nil)
        log.close()
    }

    @Test("the hash is SHA-256 over length-prefixed fields (a fixed vector)")
    func hashEncodingVector() {
        // Recomputed independently with Python's hashlib (docs/AUDIT.md).
        let hash = AuditStore.hash(prevHash: AuditStore.genesisHash, sequence: 1, recordedUnixNanos: 1_795_219_200_000_000_000,
                                   kind: "decision", accountID: "acct-1", decisionID: "dec-1", payload: [1, 2, 3])
        #expect(hash == "e70a213dad6f3283962446738171d3c5c6c3ced2c8c695fc0c8eeaaabd32390d")
    }

    @Test("a re-opened file continues the chain")
    func reopenContinuesChain() async throws {
        let scratch = try ScratchDirectory()
        let path = scratch.path("audit.db")
        let before: [AuditReceipt]
        do {
            let log = try AuditLog(path: path)
            before = try fill(log, count: 3)
            log.close()
        }
        let log = try AuditLog(path: path)
        #expect(log.count == 3)
        #expect(log.headHash == before.last?.hash)
        let next = try await log.append(Records.numbered(3))
        #expect(next.sequence == 4)
        log.close()

        let rows = try RawSQL.fetchRows(path, "SELECT prev_hash FROM audit_records WHERE sequence = 4")
        #expect(rows.first?["prev_hash"] == before.last?.hash)
        let verification = try AuditReader.verify(path: path)
        #expect(verification.records == 4)
        #expect(verification.isIntact)
    }

    @Test("concurrent appends from many tasks get distinct contiguous sequences")
    func concurrentAppends() async throws {
        let scratch = try ScratchDirectory()
        let path = scratch.path("audit.db")
        let log = try AuditLog(path: path)
        let tasks = 200
        let perTask = 5
        let receipts = try await withThrowingTaskGroup(of: [AuditReceipt].self) { group in
            for t in 0..<tasks {
                group.addTask {
                    var mine: [AuditReceipt] = []
                    for k in 0..<perTask { mine.append(try await log.append(Records.numbered(t * perTask + k))) }
                    return mine
                }
            }
            var all: [AuditReceipt] = []
            for try await some in group { all += some }
            return all
        }
        let total = tasks * perTask
        #expect(Set(receipts.map(\.sequence)) == Set(1...Int64(total)))
        #expect(Set(receipts.map(\.hash)).count == total)
        #expect(log.count == Int64(total))
        log.close()
        let verification = try AuditReader.verify(path: path)
        #expect(verification.records == Int64(total))
        #expect(verification.isIntact)
    }

    @Test("group commit: a queue of 2,000 appends is written in ceil(2000 / maxBatch) transactions")
    func groupCommitBatchesQueuedAppends() async throws {
        let scratch = try ScratchDirectory()
        let log = try AuditLog(path: scratch.path("audit.db"), maxBatch: 1024)
        log.pauseWriter()
        let count = 2000
        try await withThrowingTaskGroup(of: AuditReceipt.self) { group in
            for i in 0..<count { group.addTask { try await log.append(Records.numbered(i)) } }
            try await eventually { log.queuedCount == count }
            #expect(log.transactionCount == 0)
            log.resumeWriter()
            var sequences = Set<Int64>()
            for try await receipt in group { sequences.insert(receipt.sequence) }
            #expect(sequences == Set(1...Int64(count)))
        }
        #expect(log.transactionCount == 2)
        log.close()
    }

    @Test("group commit: 2,000 concurrent appends take far fewer transactions than appends")
    func groupCommitUnderLoad() async throws {
        let scratch = try ScratchDirectory()
        let log = try AuditLog(path: scratch.path("audit.db"))
        let count = 2000
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<count { group.addTask { _ = try await log.append(Records.numbered(i)) } }
            try await group.waitForAll()
        }
        #expect(log.count == Int64(count))
        print("group commit: \(count) appends in \(log.transactionCount) transactions")
        #expect(log.transactionCount < count)
        log.close()
    }

    @Test("the queue is bounded: beyond it append fails with queueFull, the queued ones still commit")
    func queueBound() async throws {
        let scratch = try ScratchDirectory()
        let log = try AuditLog(path: scratch.path("audit.db"), durability: .full, maxBatch: 1024, maxQueued: 8)
        log.pauseWriter()
        try await withThrowingTaskGroup(of: AuditReceipt.self) { group in
            for i in 0..<8 { group.addTask { try await log.append(Records.numbered(i)) } }
            try await eventually { log.queuedCount == 8 }
            let error = auditError { _ = try log.appendAndWait(Records.numbered(8)) }
            #expect(error?.code == .queueFull)
            #expect(error?.message.contains("audit queue full") == true)
            log.resumeWriter()
            var committed = 0
            for try await _ in group { committed += 1 }
            #expect(committed == 8)
        }
        #expect(log.count == 8)
        log.close()
    }

    @Test("a failed transaction fails every append of its batch and leaves the chain intact")
    func failedBatchFailsEveryWaiter() async throws {
        let scratch = try ScratchDirectory()
        let path = scratch.path("audit.db")
        let log = try AuditLog(path: path)
        log.pauseWriter()
        let results = await withTaskGroup(of: Result<AuditReceipt, AuditError>.self) { group in
            for i in 0..<5 {
                group.addTask {
                    do throws(AuditError) {
                        return .success(try await log.append(Records.numbered(i)))
                    } catch {
                        return .failure(error)
                    }
                }
            }
            try? await eventually { log.queuedCount == 5 }
            // Another connection appends record 1 behind the writer's back, so
            // the writer's batch (also starting at 1) is refused by the schema.
            let entry = Records.numbered(99)
            let nanos = AuditStore.nowUnixNanos()
            let hash = AuditStore.hash(prevHash: AuditStore.genesisHash, sequence: 1, recordedUnixNanos: nanos,
                                       kind: entry.kind.rawValue, accountID: entry.accountID,
                                       decisionID: entry.decisionID, payload: entry.payload)
            try? RawSQL.execute(path, AuditStore.insertSQL, [
                1, nanos, entry.kind.rawValue, entry.accountID, entry.decisionID, Data(entry.payload),
                AuditStore.genesisHash, hash,
            ])
            log.resumeWriter()
            var all: [Result<AuditReceipt, AuditError>] = []
            for await result in group { all.append(result) }
            return all
        }
        #expect(results.count == 5)
        for result in results {
            guard case .failure(let error) = result else {
                Issue.record("an append of the failed batch succeeded: \(result)")
                continue
            }
            #expect(error.code == .io)
            #expect(error.message.contains("appended at the end of the chain"))
        }
        // The writer re-read the head: the next append continues after the
        // foreign record, and the chain verifies.
        let next = try await log.append(Records.numbered(5))
        #expect(next.sequence == 2)
        log.close()
        let verification = try AuditReader.verify(path: path)
        #expect(verification.records == 2)
        #expect(verification.isIntact)
    }

    @Test("close flushes what is queued; later appends throw closed; close is idempotent")
    func closeFlushesAndRefuses() async throws {
        let scratch = try ScratchDirectory()
        let path = scratch.path("audit.db")
        let log = try AuditLog(path: path)
        log.pauseWriter()
        try await withThrowingTaskGroup(of: AuditReceipt.self) { group in
            for i in 0..<10 { group.addTask { try await log.append(Records.numbered(i)) } }
            try await eventually { log.queuedCount == 10 }
            log.close()  // overrides the pause: flushes all ten
            var count = 0
            for try await _ in group { count += 1 }
            #expect(count == 10)
        }
        #expect(log.count == 10)
        log.close()
        let error = auditError { _ = try log.appendAndWait(Records.numbered(10)) }
        #expect(error?.code == .closed)
        do {
            _ = try await log.append(Records.numbered(11))
            Issue.record("append after close succeeded")
        } catch {
            #expect(error.code == .closed)
        }
        #expect(try AuditReader.verify(path: path).records == 10)
    }

    @Test("releasing the last reference closes the log after flushing")
    func deinitCloses() throws {
        let scratch = try ScratchDirectory()
        let path = scratch.path("audit.db")
        do {
            let log = try AuditLog(path: path)
            try fill(log, count: 4)
        }
        // Closed: a new writer can open it and the -wal was checkpointed away.
        #expect(!FileManager.default.fileExists(atPath: path + "-wal"))
        let log = try AuditLog(path: path)
        #expect(log.count == 4)
        log.close()
    }

    @Test("every acknowledged append is in the files on disk while the writer still runs (as after SIGKILL)")
    func acknowledgedAppendsAreOnDisk() async throws {
        let scratch = try ScratchDirectory()
        let path = scratch.path("audit.db")
        let log = try AuditLog(path: path)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<300 { group.addTask { _ = try await log.append(Records.numbered(i)) } }
            try await group.waitForAll()
        }
        // Copy the database and its WAL as a killed process would leave them
        // (no checkpoint, no -shm): SQLite recovers every committed record.
        let copy = scratch.path("after-kill.db")
        try FileManager.default.copyItem(atPath: path, toPath: copy)
        try FileManager.default.copyItem(atPath: path + "-wal", toPath: copy + "-wal")
        let verification = try AuditReader.verify(path: copy)
        #expect(verification.records == 300)
        #expect(verification.headHash == log.headHash)
        #expect(verification.isIntact)
        // A reader of the live file sees them too.
        #expect(try AuditReader.verify(path: path).records == 300)
        log.close()
    }

    /// A log that commits one record per transaction and truncates its idle
    /// WAL above `truncateAbove` bytes, and a decision payload of about
    /// `recordBytes`.
    static func smallWALLog(path: String, truncateAbove: Int, recordBytes: Int) throws -> (AuditLog, [UInt8]) {
        let log = try AuditLog(path: path, durability: .normal, maxBatch: 1, maxQueued: 1024,
                               walTruncateAbove: truncateAbove)
        var record = Records.decisionRecord(account: "A", decision: "D")
        record.response.summary = String(repeating: "x", count: recordBytes)
        return (log, try record.serializedBytes())
    }

    @Test("a reader holding an old snapshot delays the idle truncation, never the writer")
    func truncationDoesNotWaitForReaders() async throws {
        let scratch = try ScratchDirectory()
        let path = scratch.path("audit.db")
        let (log, payload) = try Self.smallWALLog(path: path, truncateAbove: 64 << 10, recordBytes: 4 << 10)
        for k in 0..<100 {
            _ = try log.appendAndWait(AuditEntry(kind: .decision, accountID: "A", decisionID: "D\(k)", payload: payload))
        }
        // A reader (an export, say) holds its snapshot for 1.5 s from now.
        let reader = try DatabaseQueue(path: path, configuration: { var c = Configuration(); c.readonly = true; return c }())
        let holding = Task.detached {
            try reader.read { db in
                _ = try Int.fetchOne(db, sql: "SELECT count(*) FROM audit_records")
                Thread.sleep(forTimeInterval: 1.5)
            }
        }
        // Idle passes try to truncate meanwhile; an append must not wait for the reader.
        try await Task.sleep(for: .milliseconds(500))
        let clock = ContinuousClock()
        let start = clock.now
        _ = try log.appendAndWait(AuditEntry(kind: .decision, accountID: "A", decisionID: "during", payload: payload))
        #expect(clock.now - start < .milliseconds(700), "the append waited \(clock.now - start)")
        try await holding.value
        log.close()
        #expect(try AuditReader.verify(path: path).records == 101)
    }

    @Test("WAL mode and the synchronous level follow the durability", arguments: AuditDurability.allCases)
    func pragmas(durability: AuditDurability) throws {
        let scratch = try ScratchDirectory()
        let log = try AuditLog(path: scratch.path("audit.db"), durability: durability)
        #expect(try log.pragma("journal_mode") == "wal")
        // PRAGMA synchronous: 1 = NORMAL, 2 = FULL.
        #expect(try log.pragma("synchronous") == (durability == .full ? "2" : "1"))
        // The writer never truncates the WAL (the checkpointer does, when idle).
        #expect(try log.pragma("journal_size_limit") == "-1")
        try fill(log, count: 2)
        log.close()
    }

    @Test("a WAL grown past the threshold is truncated once the log is idle, and the chain still verifies")
    func idleTruncation() async throws {
        let scratch = try ScratchDirectory()
        let path = scratch.path("audit.db")
        let (log, payload) = try Self.smallWALLog(path: path, truncateAbove: 256 << 10, recordBytes: 8 << 10)
        func walBytes() -> Int {
            ((try? FileManager.default.attributesOfItem(atPath: path + "-wal"))?[.size] as? NSNumber)?.intValue ?? 0
        }
        // One record per transaction, 8 KB each: a few MB of WAL at once.
        var peak = 0
        for k in 0..<400 {
            _ = try log.appendAndWait(AuditEntry(kind: .decision, accountID: "A\(k % 7)", decisionID: "D\(k)",
                                                 payload: payload))
            peak = max(peak, walBytes())
        }
        #expect(peak > 1 << 20, "the WAL grew to \(peak) bytes")
        // Idle: the checkpointer's passes find nothing new and cut the file back.
        var now = walBytes()
        for _ in 0..<100 where now > 256 << 10 {
            try await Task.sleep(for: .milliseconds(50))
            now = walBytes()
        }
        #expect(now <= 256 << 10, "the WAL is still \(now) bytes")
        // Appends continue on the truncated WAL; the chain is whole.
        _ = try log.appendAndWait(AuditEntry(kind: .decision, accountID: "A", decisionID: "after", payload: payload))
        log.close()
        let verification = try AuditReader.verify(path: path)
        #expect(verification.records == 401 && verification.firstBroken == nil)
    }

    @Test("under appends that never pause, the writer restarts a WAL past its limit, which then stops growing",
          arguments: [(AuditDurability.normal, 1), (.full, 16)])
    func walLimitUnderSteadyLoad(durability: AuditDurability, maxBatch: Int) async throws {
        let scratch = try ScratchDirectory()
        let path = scratch.path("audit.db")
        // Small transactions (under `full` a few records share each sync), so
        // every append writes frames; no idle truncation.
        let log = try AuditLog(path: path, durability: durability, maxBatch: maxBatch, maxQueued: 4096,
                               walTruncateAbove: 1 << 40, walLimit: AuditLog.minimumWALLimit)
        var record = Records.decisionRecord(account: "A", decision: "D")
        record.response.summary = String(repeating: "x", count: 8 << 10)
        let payload: [UInt8] = try record.serializedBytes()
        func walBytes() -> Int {
            ((try? FileManager.default.attributesOfItem(atPath: path + "-wal"))?[.size] as? NSNumber)?.intValue ?? 0
        }
        // 16 appenders keep the writer busy: 3,200 records of about 8 KB, some
        // 80 MB of WAL frames in all (measured with the restart disabled), with
        // no pause for the WAL to start over by itself.
        let highest = try await withThrowingTaskGroup(of: Int.self) { group in
            for t in 0..<16 {
                group.addTask {
                    var peak = 0
                    for k in 0..<200 {
                        _ = try await log.append(AuditEntry(kind: .decision, accountID: "A\(t)", decisionID: "D\(t)-\(k)",
                                                            payload: payload))
                        if k % 10 == 0 { peak = max(peak, walBytes()) }
                    }
                    return peak
                }
            }
            return try await group.reduce(0, max)
        }
        let restarts = log.walRestarts
        log.close()
        #expect(restarts >= 1, "the writer never restarted the WAL")
        #expect(highest < 6 << 20, "the WAL reached \(highest) bytes with a 1 MiB limit")
        let verification = try AuditReader.verify(path: path)
        #expect(verification.records == 3200 && verification.firstBroken == nil)
    }

    /// Without passes during the back-off, the restart after the reader lets
    /// go would copy (and sync) everything written meanwhile, up to 5 s of
    /// records, while the commits behind it wait.
    @Test("over the WAL limit with a reader holding it, the checkpointer keeps copying while the restart waits")
    func walLimitWithReader() async throws {
        let scratch = try ScratchDirectory()
        let path = scratch.path("audit.db")
        let log = try AuditLog(path: path, durability: .normal, maxBatch: 1, maxQueued: 4096,
                               walTruncateAbove: 1 << 40, walLimit: AuditLog.minimumWALLimit)
        var record = Records.decisionRecord(account: "A", decision: "D")
        record.response.summary = String(repeating: "x", count: 32 << 10)
        let payload: [UInt8] = try record.serializedBytes()
        for k in 0..<4 {
            _ = try log.appendAndWait(AuditEntry(kind: .decision, accountID: "A", decisionID: "first-\(k)", payload: payload))
        }
        // A reader (an export of the live file, say) takes its snapshot now
        // and holds it until released, on a thread of its own.
        let started = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        let readerDone = DispatchSemaphore(value: 0)
        let reader = try DatabaseQueue(path: path, configuration: { var c = Configuration(); c.readonly = true; return c }())
        Thread {
            _ = try? reader.read { db in
                _ = try Int.fetchOne(db, sql: "SELECT count(*) FROM audit_records")
                started.signal()
                release.wait()
            }
            readerDone.signal()
        }.start()
        try #require(started.wait(timeout: .now() + 10) == .success, "the reader did not start")
        // 2,000 appends of 32 KB (some 75 MB of WAL) queued while the writer
        // is held, then let go: it commits one record after another without
        // ever idling (an idle writer lets the checkpointer run anyway).
        log.pauseWriter()
        let count = 2000
        let load = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for k in 0..<count {
                    group.addTask {
                        _ = try await log.append(AuditEntry(kind: .decision, accountID: "A\(k % 16)",
                                                            decisionID: "D\(k)", payload: payload))
                    }
                }
                try await group.waitForAll()
            }
        }
        for _ in 0..<3000 where log.queuedCount < count { try await Task.sleep(for: .milliseconds(10)) }
        #expect(log.queuedCount == count)
        log.resumeWriter()
        // The WAL passes its 1 MiB limit; the reader holds the restart off.
        var heldOff = 0
        for _ in 0..<3000 where heldOff == 0 {
            try await Task.sleep(for: .milliseconds(1))
            heldOff = log.walRestartsHeldOff
        }
        #expect(heldOff >= 1, "no WAL restart was held off by the reader")
        // During the back-off that follows (20 ms, 40 ms, ...) and while the
        // writer still has work, the checkpointer runs passes (none at all
        // before this change). Up to 300 ms; at least 50 ms for a verdict.
        let clock = ContinuousClock()
        let start = clock.now, before = log.checkpointPasses
        var end = start, passes = 0
        while clock.now - start < .milliseconds(300) {
            try await Task.sleep(for: .milliseconds(5))
            guard log.queuedCount > 0 else { break }
            end = clock.now
            passes = log.checkpointPasses - before
        }
        #expect(end - start >= .milliseconds(50), "the writer ran out of work after \(end - start): no verdict")
        #expect(passes >= 1, "the checkpointer ran no pass in \(end - start) of back-off")
        release.signal()
        readerDone.wait()
        try await load.value
        log.close()
        #expect(log.count == Int64(4 + count))
    }

    @Test("the writer restarts the WAL past its limit, except while readers' back-off lasts", arguments: [
        (900, nil, WALStep.underLimit),   // under the limit
        (1000, nil, .underLimit),         // at it
        (1001, nil, .restart),            // over it, no earlier refusal
        (5000, 20, .backOff),             // over it, 20 ms of back-off left
        (5000, -1, .restart),             // over it, back-off passed
        (900, 20, .underLimit),           // back under it (SQLite restarted the WAL)
    ] as [(Int, Int?, WALStep)])
    func walSteps(frames: Int, retryInMilliseconds: Int?, step: WALStep) {
        let now = ContinuousClock.now
        let retryAt = retryInMilliseconds.map { now + .milliseconds($0) }
        #expect(WALStep(frames: frames, limit: 1000, retryAt: retryAt, now: now) == step)
    }

    @Test("a WAL limit under 1 MiB is refused")
    func walLimitTooSmall() throws {
        let scratch = try ScratchDirectory()
        #expect(throws: AuditError.self) {
            _ = try AuditLog(path: scratch.path("audit.db"), walLimit: AuditLog.minimumWALLimit - 1)
        }
    }

    #if os(Linux)
    @Test("the checkpoint thread runs under SCHED_IDLE, so its copying never takes a core from a request")
    func checkpointerRunsInBackground() async throws {
        let scratch = try ScratchDirectory()
        let log = try AuditLog(path: scratch.path("audit.db"), durability: .normal)
        var state = log.checkpointerInBackground
        for _ in 0..<200 where state == nil {
            try await Task.sleep(for: .milliseconds(10))
            state = log.checkpointerInBackground
        }
        #expect(state == true)
        _ = try fill(log, count: 3)
        log.close()
        #expect(try AuditReader.verify(path: scratch.path("audit.db")).records == 3)
    }

    /// Operators find the two threads by name (`top -H`, `perf`); without
    /// the name they show their creator's (a dispatch worker's).
    @Test("the writer and checkpoint threads carry their names")
    func threadNames() async throws {
        let scratch = try ScratchDirectory()
        let log = try AuditLog(path: scratch.path("audit.db"), durability: .normal)
        func names() -> Set<String> {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
            return Set(tasks.compactMap { task in
                (try? String(contentsOfFile: "/proc/self/task/\(task)/comm", encoding: .utf8))?
                    .trimmingCharacters(in: .newlines)
            })
        }
        let wanted: Set = ["keel-audit", "keel-checkpoint"]
        var found = names()
        for _ in 0..<200 where !wanted.isSubset(of: found) {
            try await Task.sleep(for: .milliseconds(10))
            found = names()
        }
        #expect(wanted.isSubset(of: found), "threads named \(found.sorted())")
        log.close()
    }
    #endif

    /// Checkpoint passes come quickly while records arrive and slowly once
    /// a pass found nothing new.
    @Test("checkpoint pacing", arguments: [
        (nil, nil, false),                 // the pass failed
        (nil, (frames: 0, copied: 0), true),  // first pass: nothing known yet
        ((frames: 40, copied: 40), (frames: 40, copied: 40), false),  // nothing new, all copied
        ((frames: 40, copied: 40), (frames: 52, copied: 52), true),   // new frames, all copied
        ((frames: 40, copied: 40), (frames: 52, copied: 45), true),   // new frames, some left
        ((frames: 52, copied: 45), (frames: 52, copied: 45), true),   // still some left (a reader held them)
        ((frames: 900, copied: 900), (frames: 12, copied: 12), true), // the WAL restarted
    ] as [((frames: Int64, copied: Int64)?, (frames: Int64, copied: Int64)?, Bool)])
    func checkpointPacing(previous: (frames: Int64, copied: Int64)?, now: (frames: Int64, copied: Int64)?,
                          busy: Bool) {
        #expect(Checkpointer.isBusy(previous: previous, now: now) == busy)
    }

    /// Quick passes under `normal` durability only (`full` syncs every commit).
    @Test("checkpoint intervals by durability", arguments: [AuditDurability.normal, .full])
    func checkpointIntervals(durability: AuditDurability) throws {
        let scratch = try ScratchDirectory()
        let path = scratch.path("audit.db")
        _ = try AuditLog(path: path, durability: durability)  // creates the file
        let checkpointer = try Checkpointer(path: path, durability: durability)
        defer { checkpointer.stop() }
        #expect(checkpointer.busyInterval == (durability == .normal ? .milliseconds(10) : Checkpointer.idleInterval))
    }

    @Test("entries outside the limits are refused before queueing", arguments: [
        ("NUL in account", AuditEntry(kind: .decision, accountID: "a\u{0}b", decisionID: "d",
                                      payload: Records.decision(account: "a", decision: "d").payload)),
        ("NUL in decision", AuditEntry(kind: .decision, accountID: "a", decisionID: "d\u{0}",
                                       payload: Records.decision(account: "a", decision: "d").payload)),
        ("long account", AuditEntry(kind: .decision, accountID: String(repeating: "x", count: 4097), decisionID: "d",
                                    payload: Records.decision(account: "a", decision: "d").payload)),
        ("garbage payload", AuditEntry(kind: .decision, accountID: "a", decisionID: "d", payload: [0xFF, 0xFF, 0xFF])),
        ("truncated payload", AuditEntry(kind: .approval, accountID: "a", decisionID: "d",
                                         payload: Array(Records.approval(account: "a", decision: "d").payload.dropLast()))),
    ])
    func invalidEntries(label: String, entry: AuditEntry) async throws {
        let scratch = try ScratchDirectory()
        let log = try AuditLog(path: scratch.path("audit.db"))
        let error = auditError { _ = try log.appendAndWait(entry) }
        #expect(error?.code == .invalidArgument, "\(label)")
        do {
            _ = try await log.append(entry)
            Issue.record("\(label): append succeeded")
        } catch {
            #expect(error.code == .invalidArgument)
        }
        #expect(log.count == 0)
        log.close()
    }

    @Test("with payload checks off an undecodable payload is stored, and verify names its record")
    func uncheckedPayloads() throws {
        let scratch = try ScratchDirectory()
        let path = scratch.path("audit.db")
        let log = try AuditLog(path: path, checksPayloads: false)
        #expect(!log.checksPayloads)
        _ = try log.appendAndWait(Records.decision(account: "a", decision: "d1"))
        let receipt = try log.appendAndWait(AuditEntry(kind: .decision, accountID: "a", decisionID: "d2",
                                                       payload: [0xFF, 0xFF, 0xFF]))
        #expect(receipt.sequence == 2)
        log.close()
        let verification = try AuditReader.verify(path: path)
        #expect(verification.firstBroken?.sequence == 2)
    }

    @Test("an empty payload (a default approval message) is stored and verifies")
    func emptyPayload() throws {
        let scratch = try ScratchDirectory()
        let path = scratch.path("audit.db")
        let log = try AuditLog(path: path)
        let receipt = try log.appendAndWait(AuditEntry(kind: .approval, accountID: "a", decisionID: "d", payload: []))
        #expect(receipt.sequence == 1)
        log.close()
        #expect(try AuditReader.verify(path: path).isIntact)
    }

    @Test("accountsWithDecisions: decision accounts only, kept current, read back after re-open")
    func accountsWithDecisions() throws {
        let scratch = try ScratchDirectory()
        let path = scratch.path("audit.db")
        do {
            let log = try AuditLog(path: path)
            #expect(try log.accountsWithDecisions().isEmpty)
            _ = try log.appendAndWait(Records.decision(account: "A", decision: "1"))
            _ = try log.appendAndWait(Records.approval(account: "B", decision: "1"))
            _ = try log.appendAndWait(Records.decision(account: "C", decision: "2"))
            #expect(try log.accountsWithDecisions() == ["A", "C"])
            _ = try log.appendAndWait(Records.decision(account: "D", decision: "3"))
            #expect(try log.accountsWithDecisions() == ["A", "C", "D"])
            log.close()
        }
        let log = try AuditLog(path: path)
        #expect(try log.accountsWithDecisions() == ["A", "C", "D"])
        log.close()
    }

    @Test("the database refuses UPDATE and DELETE, and INSERT anywhere but the end of the chain")
    func triggersRefuseEdits() throws {
        let scratch = try ScratchDirectory()
        let path = scratch.path("audit.db")
        let log = try AuditLog(path: path)
        let receipts = try fill(log, count: 3)
        log.close()

        func refusal(_ sql: String, _ arguments: StatementArguments = StatementArguments()) -> String? {
            do {
                try RawSQL.execute(path, sql, arguments)
                return nil
            } catch let error as DatabaseError {
                return error.message
            } catch {
                return "\(error)"
            }
        }
        #expect(refusal("UPDATE audit_records SET account_id = 'x' WHERE sequence = 2") == "audit records are append-only")
        #expect(refusal("DELETE FROM audit_records WHERE sequence = 3") == "audit records are append-only")
        #expect(refusal("DELETE FROM audit_records") == "audit records are append-only")
        let entry = Records.numbered(9)
        let row: StatementArguments = [2, 0, entry.kind.rawValue, entry.accountID, entry.decisionID, Data(entry.payload),
                                       receipts[0].hash, String(repeating: "1", count: 64)]
        // Replacing record 2, or inserting a record whose prev_hash is not the head.
        #expect(refusal("INSERT OR REPLACE INTO audit_records VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
                == "audit records are appended at the end of the chain")
        let wrongPrev: StatementArguments = [4, 0, entry.kind.rawValue, entry.accountID, entry.decisionID,
                                             Data(entry.payload), receipts[0].hash, String(repeating: "1", count: 64)]
        #expect(refusal("INSERT INTO audit_records VALUES (?, ?, ?, ?, ?, ?, ?, ?)", wrongPrev)
                == "audit records are appended at the end of the chain")
        let verification = try AuditReader.verify(path: path)
        #expect(verification.records == 3)
        #expect(verification.isIntact)
    }

    @Test("a writer refuses to extend a chain whose last record is broken")
    func refusesBrokenHead() throws {
        let scratch = try ScratchDirectory()
        let path = scratch.path("audit.db")
        do {
            let log = try AuditLog(path: path)
            try fill(log, count: 3)
            log.close()
        }
        try RawSQL.dropTriggers(path)
        try RawSQL.execute(path, "UPDATE audit_records SET account_id = 'mallory' WHERE sequence = 3")
        let error = auditError { _ = try AuditLog(path: path) }
        #expect(error?.code == .corrupt)
        #expect(error?.message.contains("record 3") == true)
        #expect(error?.message.contains("refusing to extend a broken chain") == true)
    }

    @Test("throughput with durability full and normal (printed, not asserted)", .serialized,
          arguments: AuditDurability.allCases)
    func throughput(durability: AuditDurability) async throws {
        let scratch = try ScratchDirectory()
        let log = try AuditLog(path: scratch.path("audit.db"), durability: durability)
        let producers = 64
        let perProducer = 200
        let entry = Records.decision(account: "acct-1", decision: "dec-1")
        let clock = ContinuousClock()
        let elapsed = try await clock.measure {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<producers {
                    group.addTask { for _ in 0..<perProducer { _ = try await log.append(entry) } }
                }
                try await group.waitForAll()
            }
        }
        let total = producers * perProducer
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
        print("audit throughput (\(durability)): \(total) appends from \(producers) tasks in "
              + "\(String(format: "%.3f", seconds)) s = \(Int(Double(total) / seconds)) appends/s, "
              + "\(log.transactionCount) transactions")
        let single = try clock.measure {
            for _ in 0..<200 { _ = try log.appendAndWait(entry) }
        }
        let singleSeconds = Double(single.components.seconds) + Double(single.components.attoseconds) * 1e-18
        print("audit latency (\(durability)): one append at a time: "
              + "\(String(format: "%.1f", singleSeconds / 200 * 1e6)) µs per append")
        #expect(log.count == Int64(total + 200))
        log.close()
    }
}
