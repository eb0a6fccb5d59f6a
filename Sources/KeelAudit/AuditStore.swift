import Foundation
import GRDB
import KeelAPI
import Crypto
import SwiftProtobuf

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The on-disk format (docs/AUDIT.md): schema, hashing, and strict decoding of
/// rows from files that may be hostile. Internal; pure functions and constants.
enum AuditStore {
    /// `meta.schema_version` of files this build writes and reads.
    static let schemaVersion = 1
    /// `meta.format` of every Keel audit log.
    static let formatName = "keel-audit"
    /// A WAL file larger than this is truncated by the checkpointer once
    /// the log is idle (`Checkpointer`); the writer never truncates it.
    static let walSizeLimit = 64 << 20
    /// How long a connection waits for a lock (SQLite's busy timeout).
    static let busyTimeoutMilliseconds = 5000
    /// `prev_hash` of record 1.
    static let genesisHash = String(repeating: "0", count: 64)

    static let createSchemaSQL = """
        CREATE TABLE meta (
            key TEXT PRIMARY KEY NOT NULL,
            value TEXT NOT NULL
        );
        INSERT INTO meta (key, value) VALUES ('format', '\(formatName)');
        INSERT INTO meta (key, value) VALUES ('schema_version', '\(schemaVersion)');
        CREATE TABLE audit_records (
            sequence INTEGER PRIMARY KEY,
            recorded_unix_nanos INTEGER NOT NULL,
            kind TEXT NOT NULL,
            account_id TEXT NOT NULL,
            decision_id TEXT NOT NULL,
            payload BLOB NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        );
        CREATE INDEX audit_records_account_id ON audit_records (account_id);
        CREATE INDEX audit_records_recorded_unix_nanos ON audit_records (recorded_unix_nanos);
        CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records
        BEGIN
            SELECT RAISE(ABORT, 'audit records are append-only');
        END;
        CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records
        BEGIN
            SELECT RAISE(ABORT, 'audit records are append-only');
        END;
        CREATE TRIGGER audit_records_append_at_end BEFORE INSERT ON audit_records
        WHEN NEW.sequence IS NOT (SELECT coalesce(max(sequence), 0) + 1 FROM audit_records)
          OR NEW.prev_hash IS NOT coalesce(
                 (SELECT hash FROM audit_records ORDER BY sequence DESC LIMIT 1), '\(genesisHash)')
        BEGIN
            SELECT RAISE(ABORT, 'audit records are appended at the end of the chain');
        END;
        """

    static let insertSQL = """
        INSERT INTO audit_records
            (sequence, recorded_unix_nanos, kind, account_id, decision_id, payload, prev_hash, hash)
        VALUES (?, ?, ?, ?, ?, coalesce(?, X''), ?, ?)
        """

    /// The select list of every query that reads records (``StoredRecord/decode(_:)``):
    /// the eight columns, except that a text over ``maxTextCharacters``
    /// characters or a payload over ``AuditEntry/maxPayloadBytes`` bytes reads
    /// as NULL, followed by the six lengths. A hostile file cannot make a
    /// reader load a gigabyte-sized field.
    static let selectList: String = {
        let guarded = [("kind", maxTextCharacters), ("account_id", maxTextCharacters), ("decision_id", maxTextCharacters),
                       ("payload", AuditEntry.maxPayloadBytes), ("prev_hash", maxTextCharacters),
                       ("hash", maxTextCharacters)]
        let values = guarded.map { "CASE WHEN length(\($0.0)) <= \($0.1) THEN \($0.0) END" }
        let lengths = guarded.map { "length(\($0.0))" }
        return (["sequence", "recorded_unix_nanos"] + values + lengths).joined(separator: ", ")
    }()

    /// Longest text column a reader loads, in characters (ids are at most
    /// ``AuditEntry/maxIDBytes`` bytes).
    static let maxTextCharacters = AuditEntry.maxIDBytes

    static let requiredColumns: Set<String> = [
        "sequence", "recorded_unix_nanos", "kind", "account_id", "decision_id", "payload", "prev_hash", "hash",
    ]

    // MARK: - Hashing

    /// The record hash: SHA-256 over each field as an 8-byte big-endian length
    /// followed by its bytes, in the order prev_hash, decimal sequence, decimal
    /// recorded_unix_nanos, kind, account_id, decision_id, payload. Lowercase hex.
    static func hash(prevHash: String, sequence: Int64, recordedUnixNanos: Int64, kind: String,
                     accountID: String, decisionID: String, payload: some Collection<UInt8>) -> String
    {
        var hasher = SHA256()
        func field(_ part: some Collection<UInt8>) {
            let length = UInt64(part.count)
            var prefix = [UInt8](repeating: 0, count: 8)
            for k in 0..<8 { prefix[k] = UInt8(truncatingIfNeeded: length >> UInt64(56 - 8 * k)) }
            hasher.update(data: prefix)
            AuditDigest.update(&hasher, part)
        }
        field(Array(prevHash.utf8))
        field(Array(String(sequence).utf8))
        field(Array(String(recordedUnixNanos).utf8))
        field(Array(kind.utf8))
        field(Array(accountID.utf8))
        field(Array(decisionID.utf8))
        field(payload)
        return AuditDigest.hex(hasher.finalize())
    }

    /// True for exactly 64 lowercase hexadecimal characters.
    static func isHashText(_ text: String) -> Bool {
        let utf8 = text.utf8
        return utf8.count == 64 && utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }

    // MARK: - Payloads

    /// Decodes `payload` as the message `kind` names; the error names it.
    static func decodePayload(_ payload: [UInt8], kind: AuditKind) throws(PayloadError) -> any SwiftProtobuf.Message {
        do {
            switch kind {
            case .decision: return try Keel_V1_DecisionRecord(serializedBytes: payload)
            case .approval: return try Keel_V1_ApprovalRecord(serializedBytes: payload)
            }
        } catch {
            throw PayloadError(reason: "payload does not decode as \(kind.messageName): \(error)")
        }
    }

    struct PayloadError: Error {
        let reason: String
    }

    // MARK: - Rows

    /// One row, checked column by column: wrong storage classes (a hostile or
    /// damaged file) become a reason instead of a trap.
    struct StoredRecord {
        var sequence: Int64
        var recordedUnixNanos: Int64
        var kindText: String
        var accountID: String
        var decisionID: String
        var payload: [UInt8]
        var prevHash: String
        var hash: String

        /// The row of `SELECT \(selectList)`, or the reason it is malformed
        /// together with whatever sequence could be read.
        static func decode(_ row: Row) -> Result<StoredRecord, MalformedRow> {
            let values: [DatabaseValue] = (0..<14).map { row[$0] }
            guard case .int64(let sequence) = values[0].storage else {
                return .failure(MalformedRow(sequence: nil, reason: "sequence is not an integer"))
            }
            let limited = [("kind", maxTextCharacters, "characters"), ("account_id", maxTextCharacters, "characters"),
                           ("decision_id", maxTextCharacters, "characters"),
                           ("payload", AuditEntry.maxPayloadBytes, "bytes"),
                           ("prev_hash", maxTextCharacters, "characters"), ("hash", maxTextCharacters, "characters")]
            for (offset, (name, limit, unit)) in limited.enumerated() {
                if case .int64(let length) = values[8 + offset].storage, length > limit {
                    return .failure(MalformedRow(sequence: sequence,
                                                 reason: "\(name) is \(length) \(unit), more than the \(limit) a reader loads"))
                }
            }
            func text(_ index: Int, _ name: String) -> Result<String, MalformedRow> {
                if case .string(let s) = values[index].storage { return .success(s) }
                return .failure(MalformedRow(sequence: sequence, reason: "\(name) is not text"))
            }
            guard case .int64(let recorded) = values[1].storage else {
                return .failure(MalformedRow(sequence: sequence, reason: "recorded_unix_nanos is not an integer"))
            }
            let payload: [UInt8]
            switch values[5].storage {
            case .blob(let data): payload = [UInt8](data)
            default: return .failure(MalformedRow(sequence: sequence, reason: "payload is not a BLOB"))
            }
            do {
                return .success(StoredRecord(
                    sequence: sequence, recordedUnixNanos: recorded,
                    kindText: try text(2, "kind").get(),
                    accountID: try text(3, "account_id").get(),
                    decisionID: try text(4, "decision_id").get(),
                    payload: payload,
                    prevHash: try text(6, "prev_hash").get(),
                    hash: try text(7, "hash").get()))
            } catch {
                return .failure(error)
            }
        }

        var kind: AuditKind? { AuditKind(rawValue: kindText) }

        func recomputedHash() -> String {
            AuditStore.hash(prevHash: prevHash, sequence: sequence, recordedUnixNanos: recordedUnixNanos,
                            kind: kindText, accountID: accountID, decisionID: decisionID, payload: payload)
        }
    }

    struct MalformedRow: Error {
        let sequence: Int64?
        let reason: String
    }

    // MARK: - Opening

    /// Opens `path` read-write (creating the schema in a new or empty file) or
    /// read-only (never creating anything), with the pragmas of docs/AUDIT.md.
    static func open(path: String, readonly: Bool, durability: AuditDurability) throws(AuditError) -> DatabaseQueue {
        var config = Configuration()
        config.readonly = readonly
        config.label = "KeelAudit"
        config.busyMode = .timeout(.init(busyTimeoutMilliseconds) / 1000)
        let synchronous = durability == .full ? "FULL" : "NORMAL"
        config.prepareDatabase { db in
            // Nothing stored in the file (views, triggers) may call functions
            // with side effects: the file may come from anyone.
            try db.execute(sql: "PRAGMA trusted_schema = OFF")
            if !db.configuration.readonly {
                let mode = try DatabaseValue.fetchOne(db, sql: "PRAGMA journal_mode = WAL")
                guard case .string(let name)? = mode?.storage, name.lowercased() == "wal" else {
                    throw DatabaseError(resultCode: .SQLITE_ERROR, message: "cannot switch the journal to WAL mode")
                }
                try db.execute(sql: "PRAGMA synchronous = \(synchronous)")
                // No journal_size_limit: with one, the writer truncates a grown
                // WAL inside the transaction that restarts it, and that
                // ftruncate stalled the commit (25 ms seen under strace at
                // 1,000 decisions/s). The checkpointer truncates it when idle.
            }
        }
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) {
            if isDirectory.boolValue { throw AuditError(.io, "\(path): is a directory") }
        } else if readonly {
            throw AuditError(.io, "\(path): no such file")
        }
        let queue: DatabaseQueue
        do {
            queue = try DatabaseQueue(path: path, configuration: config)
        } catch {
            throw auditError(path, error, doing: "cannot open")
        }
        do {
            try queue.writeWithoutTransaction { db in
                try checkSchema(db, path: path, create: !readonly)
            }
        } catch let error as AuditError {
            throw error
        } catch {
            throw auditError(path, error, doing: "cannot read the schema")
        }
        return queue
    }

    /// Checks that `db` is a Keel audit log of ``schemaVersion``; creates the
    /// schema when `create` and the database has no tables at all.
    static func checkSchema(_ db: Database, path: String, create: Bool) throws {
        let objects = try Row.fetchAll(db, sql: "SELECT type, name FROM sqlite_master")
        var tables: [String: String] = [:]
        for row in objects {
            let type: DatabaseValue = row[0]
            let name: DatabaseValue = row[1]
            if case .string(let t) = type.storage, case .string(let n) = name.storage { tables[n] = t }
        }
        if objects.isEmpty {
            guard create else { throw AuditError(.corrupt, "\(path): not a Keel audit log (the database is empty)") }
            try db.inTransaction(.immediate) {
                try db.execute(sql: createSchemaSQL)
                return .commit
            }
            return
        }
        guard tables["meta"] == "table" else {
            throw AuditError(.corrupt, "\(path): not a Keel audit log (no meta table)")
        }
        func meta(_ key: String) throws -> String? {
            guard let value = try DatabaseValue.fetchOne(db, sql: "SELECT value FROM meta WHERE key = ?",
                                                         arguments: [key]) else { return nil }
            switch value.storage {
            case .string(let s): return s
            case .int64(let n): return String(n)
            default: return nil
            }
        }
        guard try meta("format") == formatName else {
            throw AuditError(.corrupt, "\(path): not a Keel audit log (meta.format is not '\(formatName)')")
        }
        let version = try meta("schema_version")
        guard version == String(schemaVersion) else {
            throw AuditError(.corrupt, "\(path): audit log schema version \(version ?? "missing"); "
                             + "this build reads version \(schemaVersion)")
        }
        guard tables["audit_records"] == "table" else {
            throw AuditError(.corrupt, "\(path): not a Keel audit log (no audit_records table)")
        }
        var present = Set<String>()
        for row in try Row.fetchAll(db, sql: "PRAGMA table_info(audit_records)") {
            let name: DatabaseValue = row["name"]
            if case .string(let n) = name.storage { present.insert(n) }
        }
        let missing = requiredColumns.subtracting(present)
        guard missing.isEmpty else {
            throw AuditError(.corrupt, "\(path): audit_records lacks the column(s) "
                             + missing.sorted().joined(separator: ", "))
        }
    }

    /// An ``AuditError`` for an SQLite or GRDB error while working on `path`.
    static func auditError(_ path: String, _ error: any Error, doing what: String) -> AuditError {
        if let audit = error as? AuditError { return audit }
        guard let db = error as? DatabaseError else {
            return AuditError(.io, "\(path): \(what): \(error)")
        }
        let detail = db.message ?? "SQLite error \(db.extendedResultCode.rawValue)"
        switch db.resultCode {
        case .SQLITE_NOTADB:
            return AuditError(.corrupt, "\(path): not an SQLite database")
        case .SQLITE_CORRUPT:
            return AuditError(.corrupt, "\(path): the SQLite file is damaged or truncated (\(detail))")
        case .SQLITE_CANTOPEN:
            return AuditError(.io, "\(path): cannot open (\(detail))")
        default:
            return AuditError(.io, "\(path): \(what): \(detail)")
        }
    }

    // MARK: - Time

    /// Wall-clock time now, in Unix nanoseconds.
    static func nowUnixNanos() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
    }
}
