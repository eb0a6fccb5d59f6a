import Foundation
import GRDB
import Testing

@testable import KeelAudit

@Suite("Audit verification: tampering and hostile files")
struct AuditVerifyTests {
    /// A way to tamper with a 6-record log through raw SQL (triggers dropped),
    /// and the first broken record verify must name.
    enum Tamper: String, CaseIterable, CustomTestStringConvertible {
        case payload, hash, prevHash, accountID, recordedTime, deleteRow, deleteRows, rehashed, hashNotText, kind
        case garbagePayloadRehashed, timeGoesBackRehashed, firstRecordPrevHash, oversizedAccountID

        var testDescription: String { rawValue }

        /// SQL run with triggers dropped.
        func sql(_ rows: [AuditStore.StoredRecord]) -> [String] {
            switch self {
            case .payload: return ["UPDATE audit_records SET payload = X'0a0568656c6c6f' WHERE sequence = 3"]
            case .hash: return ["UPDATE audit_records SET hash = '\(String(repeating: "f", count: 64))' WHERE sequence = 3"]
            case .prevHash: return ["UPDATE audit_records SET prev_hash = '\(rows[0].hash)' WHERE sequence = 3"]
            case .accountID: return ["UPDATE audit_records SET account_id = 'mallory' WHERE sequence = 3"]
            case .recordedTime: return ["UPDATE audit_records SET recorded_unix_nanos = recorded_unix_nanos + 1 WHERE sequence = 3"]
            case .deleteRow: return ["DELETE FROM audit_records WHERE sequence = 3"]
            case .deleteRows: return ["DELETE FROM audit_records WHERE sequence IN (3, 4)"]
            case .rehashed:
                // The attacker edits record 3 and recomputes its hash: record 4's
                // prev_hash no longer matches.
                var edited = rows[2]
                edited.accountID = "mallory"
                return ["UPDATE audit_records SET account_id = 'mallory', hash = '\(edited.recomputedHash())' WHERE sequence = 3"]
            case .hashNotText: return ["UPDATE audit_records SET hash = X'3432' WHERE sequence = 3"]  // a BLOB
            case .kind: return ["UPDATE audit_records SET kind = 'bribe' WHERE sequence = 3"]
            case .garbagePayloadRehashed:
                var edited = rows[2]
                edited.payload = [0xFF, 0xFF]
                return ["UPDATE audit_records SET payload = X'FFFF', hash = '\(edited.recomputedHash())' WHERE sequence = 3"]
            case .timeGoesBackRehashed:
                // Consistently re-chained from record 3 on, but with record 3's time in the past.
                var sql: [String] = []
                var previous = rows[1].hash
                for var row in rows[2...] {
                    if row.sequence == 3 { row.recordedUnixNanos = rows[1].recordedUnixNanos - 1 }
                    row.prevHash = previous
                    row.hash = row.recomputedHash()
                    sql.append("""
                        UPDATE audit_records SET recorded_unix_nanos = \(row.recordedUnixNanos),
                        prev_hash = '\(row.prevHash)', hash = '\(row.hash)' WHERE sequence = \(row.sequence)
                        """)
                    previous = row.hash
                }
                return sql
            case .firstRecordPrevHash: return ["UPDATE audit_records SET prev_hash = '\(rows[1].hash)' WHERE sequence = 1"]
            case .oversizedAccountID: return ["UPDATE audit_records SET account_id = printf('%.5000c', 'x') WHERE sequence = 3"]
            }
        }

        var expected: (sequence: Int64, reason: String) {
            switch self {
            case .payload, .accountID, .recordedTime: (3, "stored hash does not match the record's contents")
            case .hash: (3, "stored hash does not match the record's contents")
            case .prevHash: (3, "prev_hash does not match the hash of record 2")
            case .deleteRow: (3, "record 3 is missing (the next record is 4)")
            case .deleteRows: (3, "records 3 to 4 are missing (the next record is 5)")
            case .rehashed: (4, "prev_hash does not match the hash of record 3")
            case .hashNotText: (3, "hash is not text")
            case .kind: (3, "stored hash does not match the record's contents")
            case .garbagePayloadRehashed: (3, "payload does not decode as keel.v1.DecisionRecord")
            case .timeGoesBackRehashed: (3, "recorded_unix_nanos goes backwards")
            case .firstRecordPrevHash: (1, "prev_hash is not the genesis hash (64 zeros)")
            case .oversizedAccountID: (3, "account_id is 5000 characters, more than the 4096 a reader loads")
            }
        }
    }

    static func makeLog(_ scratch: ScratchDirectory, records: Int = 6) throws -> String {
        let path = scratch.path("audit.db")
        let log = try AuditLog(path: path)
        // Record 3 is a decision (index 2), see Records.numbered.
        try fill(log, count: records)
        log.close()
        return path
    }

    static func storedRecords(_ path: String) throws -> [AuditStore.StoredRecord] {
        try RawSQL.fetchRows(path, "SELECT \(AuditStore.selectList) FROM audit_records ORDER BY sequence")
            .map { try AuditStore.StoredRecord.decode($0).get() }
    }

    @Test("tampering through raw SQL is detected and the first broken record named", arguments: Tamper.allCases)
    func tamperingDetected(tamper: Tamper) throws {
        let scratch = try ScratchDirectory()
        let path = try Self.makeLog(scratch)
        let rows = try Self.storedRecords(path)
        try RawSQL.dropTriggers(path)
        for sql in tamper.sql(rows) { try RawSQL.execute(path, sql) }

        let verification = try AuditReader.verify(path: path)
        let broken = try #require(verification.firstBroken)
        #expect(broken.sequence == tamper.expected.sequence)
        #expect(broken.reason.hasPrefix(tamper.expected.reason), "\(broken.reason)")
        #expect(!verification.isIntact)
        let remaining: Int64 = switch tamper {
        case .deleteRow: 5
        case .deleteRows: 4
        default: 6
        }
        #expect(verification.records == remaining)
    }

    @Test("an untouched log verifies; an empty log verifies with no head")
    func intactAndEmpty() throws {
        let scratch = try ScratchDirectory()
        let path = try Self.makeLog(scratch)
        let verification = try AuditReader.verify(path: path)
        #expect(verification == AuditVerification(records: 6, headHash: try Self.storedRecords(path).last?.hash,
                                                  firstBroken: nil))
        let emptyPath = scratch.path("empty.db")
        AuditLogCloser.openAndClose(emptyPath)
        #expect(try AuditReader.verify(path: emptyPath) == AuditVerification(records: 0, headHash: nil, firstBroken: nil))
    }

    /// A file that is not a usable audit log, and what verify, export and the
    /// writer must say about it.
    enum Hostile: String, CaseIterable, CustomTestStringConvertible {
        case missing, directory, emptyFile, textFile, randomBytes, garbledHeader, otherSQLite, schemaVersion2
        case noRecordsTable, recordsIsView, truncated

        var testDescription: String { rawValue }

        func make(_ scratch: ScratchDirectory) throws -> String {
            let path = scratch.path("hostile.db")
            switch self {
            case .missing:
                break
            case .directory:
                try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
            case .emptyFile:
                _ = FileManager.default.createFile(atPath: path, contents: Data())
            case .textFile:
                try Data("sequence,hash\n1,abc\n".utf8).write(to: URL(fileURLWithPath: path))
            case .randomBytes:
                var generator = SystemRandomNumberGenerator()
                try Data((0..<8192).map { _ in UInt8.random(in: 0...255, using: &generator) })
                    .write(to: URL(fileURLWithPath: path))
            case .garbledHeader:
                let good = try AuditVerifyTests.makeLog(scratch)
                var bytes = try Data(contentsOf: URL(fileURLWithPath: good))
                bytes.replaceSubrange(0..<16, with: Data(repeating: 0x41, count: 16))
                try bytes.write(to: URL(fileURLWithPath: path))
            case .otherSQLite:
                try RawSQL.execute(path, "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
            case .schemaVersion2:
                let good = try AuditVerifyTests.makeLog(scratch)
                try RawSQL.execute(good, "UPDATE meta SET value = '2' WHERE key = 'schema_version'")
                try FileManager.default.moveItem(atPath: good, toPath: path)
            case .noRecordsTable:
                let good = try AuditVerifyTests.makeLog(scratch)
                try RawSQL.execute(good, "DROP TABLE audit_records")
                try FileManager.default.moveItem(atPath: good, toPath: path)
            case .recordsIsView:
                try RawSQL.execute(path, """
                    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
                    INSERT INTO meta VALUES ('format', 'keel-audit'), ('schema_version', '1');
                    CREATE VIEW audit_records AS SELECT 1 AS sequence, 0 AS recorded_unix_nanos, 'decision' AS kind,
                        '' AS account_id, '' AS decision_id, X'' AS payload, '' AS prev_hash, '' AS hash;
                    """)
            case .truncated:
                // Large enough that the table spans many pages, then cut in half.
                let good = scratch.path("big.db")
                let log = try AuditLog(path: good)
                let big = AuditEntry(kind: .approval, accountID: "a", decisionID: "d",
                                     payload: Records.approval(account: String(repeating: "a", count: 2000),
                                                               decision: "d").payload)
                for _ in 0..<300 { _ = try log.appendAndWait(big) }
                log.close()
                var bytes = try Data(contentsOf: URL(fileURLWithPath: good))
                bytes = bytes.prefix(bytes.count / 2)
                try bytes.write(to: URL(fileURLWithPath: path))
            }
            return path
        }

        var code: AuditError.Code {
            switch self {
            case .missing, .directory: .io
            default: .corrupt
            }
        }

        var message: String {
            switch self {
            case .missing: "no such file"
            case .directory: "is a directory"
            case .emptyFile: "not a Keel audit log (the database is empty)"
            case .textFile, .randomBytes, .garbledHeader: "not an SQLite database"
            case .otherSQLite: "not a Keel audit log (no meta table)"
            case .schemaVersion2: "audit log schema version 2; this build reads version 1"
            case .noRecordsTable, .recordsIsView: "not a Keel audit log (no audit_records table)"
            case .truncated: "damaged or truncated"
            }
        }
    }

    @Test("hostile files give a clear error from verify and export, never a crash", arguments: Hostile.allCases)
    func hostileFiles(hostile: Hostile) throws {
        let scratch = try ScratchDirectory()
        let path = try hostile.make(scratch)
        let verifyError = auditError { _ = try AuditReader.verify(path: path) }
        #expect(verifyError?.code == hostile.code, "\(String(describing: verifyError))")
        #expect(verifyError?.message.contains(hostile.message) == true, "\(String(describing: verifyError))")
        #expect(verifyError?.message.hasPrefix(path) == true)

        var lines = 0
        let exportError = auditError {
            try AuditReader.export(path: path, sinceUnixNanos: 0, format: .jsonl) { _ in lines += 1 }
        }
        #expect(exportError?.code == hostile.code, "\(String(describing: exportError))")
    }

    @Test("the writer refuses files that are not its own", arguments: [
        Hostile.directory, .textFile, .randomBytes, .otherSQLite, .schemaVersion2, .noRecordsTable, .recordsIsView,
    ])
    func writerRefusesHostileFiles(hostile: Hostile) throws {
        let scratch = try ScratchDirectory()
        let path = try hostile.make(scratch)
        let error = auditError { _ = try AuditLog(path: path) }
        #expect(error?.code == hostile.code, "\(String(describing: error))")
        #expect(error?.message.contains(hostile.message) == true, "\(String(describing: error))")
    }

    @Test("a reader running beside the writer sees a consistent prefix of the chain")
    func verifyWhileWriting() async throws {
        let scratch = try ScratchDirectory()
        let path = scratch.path("audit.db")
        let log = try AuditLog(path: path)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for i in 0..<400 { _ = try await log.append(Records.numbered(i)) }
            }
            group.addTask {
                for _ in 0..<5 {
                    let verification = try AuditReader.verify(path: path)
                    #expect(verification.isIntact)
                    try await Task.sleep(for: .milliseconds(2))
                }
            }
            try await group.waitForAll()
        }
        log.close()
        #expect(try AuditReader.verify(path: path).records == 400)
    }
}

/// Creates an empty audit log file.
enum AuditLogCloser {
    static func openAndClose(_ path: String) {
        if let log = try? AuditLog(path: path) { log.close() }
    }
}
