import Foundation
import GRDB
import KeelAPI
import SwiftProtobuf
import Testing

@testable import KeelAudit

/// A fresh directory under the system temporary directory, removed on deinit.
final class ScratchDirectory: @unchecked Sendable {
    let url: URL

    init() throws {
        url = FileManager.default.temporaryDirectory
            .appendingPathComponent("keel-audit-tests-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    /// Path of `name` inside the directory.
    func path(_ name: String) -> String { url.appendingPathComponent(name).path }

    deinit { try? FileManager.default.removeItem(at: url) }
}

enum Records {
    static func decisionRecord(account: String, decision: String, requestID: String = "req-1") -> Keel_V1_DecisionRecord {
        var record = Keel_V1_DecisionRecord()
        record.requestDigest = String(repeating: "ab", count: 32)
        record.requestID = requestID
        record.portfolio.accountID = account
        record.portfolio.cash = 1250.5
        record.marketStateUnixNanos = 1_795_219_200_000_000_000
        record.response.requestID = requestID
        record.response.decisionID = decision
        record.response.status = .executable
        record.response.summary = "Sell 3 AAA, buy 2 BBB."
        record.latencyNanos = 41_000
        return record
    }

    static func decision(account: String, decision: String, requestID: String = "req-1") -> AuditEntry {
        let bytes: [UInt8] = (try? decisionRecord(account: account, decision: decision, requestID: requestID)
            .serializedBytes()) ?? []
        return AuditEntry(kind: .decision, accountID: account, decisionID: decision, payload: bytes)
    }

    static func approval(account: String, decision: String, event: Keel_V1_ApprovalEvent = .approved) -> AuditEntry {
        var record = Keel_V1_ApprovalRecord()
        record.approvalID = "appr-\(decision)"
        record.decisionID = decision
        record.accountID = account
        record.event = event
        record.advisorID = "adv-7"
        record.comment = "ok"
        record.decidedUnixNanos = 1_795_219_300_000_000_000
        let bytes: [UInt8] = (try? record.serializedBytes()) ?? []
        return AuditEntry(kind: .approval, accountID: account, decisionID: decision, payload: bytes)
    }

    /// Decision `i` of an account cycling through `accounts` accounts.
    static func numbered(_ i: Int, accounts: Int = 5) -> AuditEntry {
        i % 4 == 3
            ? approval(account: "acct-\(i % accounts)", decision: "dec-\(i - 1)")
            : decision(account: "acct-\(i % accounts)", decision: "dec-\(i)", requestID: "req-\(i)")
    }
}

/// Raw SQL on an audit file through a plain GRDB connection: how tests play
/// the attacker (or the regulator's sqlite3).
enum RawSQL {
    static func execute(_ path: String, _ sql: String, _ arguments: StatementArguments = StatementArguments()) throws {
        let queue = try DatabaseQueue(path: path)
        try queue.writeWithoutTransaction { db in try db.execute(sql: sql, arguments: arguments) }
        try queue.close()
    }

    static func dropTriggers(_ path: String) throws {
        try execute(path, """
            DROP TRIGGER audit_records_no_update;
            DROP TRIGGER audit_records_no_delete;
            DROP TRIGGER audit_records_append_at_end;
            """)
    }

    static func fetchRows(_ path: String, _ sql: String) throws -> [Row] {
        let queue = try DatabaseQueue(path: path)
        defer { try? queue.close() }
        return try queue.read { db in try Row.fetchAll(db, sql: sql) }
    }
}

/// Appends `count` numbered entries one after another (one transaction each).
@discardableResult
func fill(_ log: AuditLog, count: Int, from start: Int = 0) throws -> [AuditReceipt] {
    try (start..<(start + count)).map { try log.appendAndWait(Records.numbered($0)) }
}

/// Polls (without any time limit of its own: the test runner's applies)
/// until `condition` holds.
func eventually(_ condition: () -> Bool) async throws {
    while !condition() {
        try await Task.sleep(for: .milliseconds(1))
    }
}

/// Runs `body` and returns the ``AuditError`` it throws, or nil (recording
/// an issue for any other error).
func auditError(_ body: () throws -> Void) -> AuditError? {
    do {
        try body()
        return nil
    } catch let error as AuditError {
        return error
    } catch {
        Issue.record("expected an AuditError, got \(error)")
        return nil
    }
}

/// Minimal RFC 4180 reader for checking exports: records split on CRLF
/// outside quotes, `""` inside quotes is a quote.
func parseCSV(_ text: String) -> [[String]] {
    var rows: [[String]] = []
    var row: [String] = []
    var field = ""
    var inQuotes = false
    var chars = Array(text.unicodeScalars)[...]
    while let c = chars.popFirst() {
        if inQuotes {
            if c == "\"" {
                if chars.first == "\"" { field.unicodeScalars.append("\""); chars.removeFirst() } else { inQuotes = false }
            } else {
                field.unicodeScalars.append(c)
            }
        } else if c == "\"" {
            inQuotes = true
        } else if c == "," {
            row.append(field); field = ""
        } else if c == "\r", chars.first == "\n" {
            chars.removeFirst()
            row.append(field); field = ""
            rows.append(row); row = []
        } else {
            field.unicodeScalars.append(c)
        }
    }
    if !field.isEmpty || !row.isEmpty { row.append(field); rows.append(row) }
    return rows
}
