import GRDB
import KeelAPI
import SwiftProtobuf

/// The first record at which a chain fails to verify.
public struct AuditBrokenRecord: Sendable, Equatable {
    /// The record's sequence; for a missing record, the sequence that is missing.
    public let sequence: Int64
    /// Why, for people, e.g. "stored hash does not match the record's contents".
    public let reason: String

    public init(sequence: Int64, reason: String) {
        self.sequence = sequence
        self.reason = reason
    }
}

/// The outcome of ``AuditReader/verify(path:)``.
public struct AuditVerification: Sendable, Equatable {
    /// Records in the file.
    public let records: Int64
    /// Stored hash of the last record; nil for an empty log.
    public let headHash: String?
    /// The first record that does not check out; nil when the whole chain verifies.
    public let firstBroken: AuditBrokenRecord?

    /// True when every record checks out.
    public var isIntact: Bool { firstBroken == nil }

    public init(records: Int64, headHash: String?, firstBroken: AuditBrokenRecord?) {
        self.records = records
        self.headHash = headHash
        self.firstBroken = firstBroken
    }
}

/// Output formats of ``AuditReader/export(path:sinceUnixNanos:format:write:)``.
public enum AuditExportFormat: String, Sendable, CaseIterable {
    /// One JSON object per line.
    case jsonl
    /// RFC 4180 CSV with a header line.
    case csv
}

/// Read-only access to audit log files for verification and export. The file
/// may be hostile: whatever it holds yields an ``AuditError`` or a broken
/// record, never a crash. A writer may append concurrently; a reader sees the
/// records committed when it started.
///
/// Thread safety: pure functions of the file; call from any thread. They
/// block the calling thread on file I/O.
/// One record of the log, its payload decoded (`Keel_V1_DecisionRecord` or
/// `Keel_V1_ApprovalRecord`, per `kind`).
public struct AuditRecord: @unchecked Sendable {
    public let sequence: Int64
    public let recordedUnixNanos: Int64
    public let kind: AuditKind
    public let accountID: String
    public let decisionID: String
    public let prevHash: String
    public let hash: String
    public let message: any SwiftProtobuf.Message
}

public enum AuditReader {
    /// Opens `path` read-only and checks every record in sequence order:
    /// sequences contiguous from 1, `prev_hash` equal to the previous record's
    /// `hash` (64 zeros for record 1), the stored hash equal to its
    /// recomputation, a known kind whose protobuf message the payload decodes
    /// as, and recorded times that never go backwards. Stops checking at the
    /// first broken record but counts them all.
    ///
    /// Throws when the file cannot be read as a Keel audit log at all
    /// (missing, not SQLite, another schema, damaged pages).
    public static func verify(path: String) throws(AuditError) -> AuditVerification {
        let database = try AuditStore.open(path: path, readonly: true, durability: .full)
        defer { try? database.close() }
        do {
            return try database.read { db in
                var expected: Int64 = 1
                var previousHash = AuditStore.genesisHash
                var previousTime = Int64.min
                var broken: AuditBrokenRecord?
                var records: Int64 = 0
                var head: String?
                let cursor = try Row.fetchCursor(
                    db, sql: "SELECT \(AuditStore.selectList) FROM audit_records ORDER BY sequence")
                while let row = try cursor.next() {
                    records += 1
                    let decoded = AuditStore.StoredRecord.decode(row)
                    switch decoded {
                    case .failure(let malformed):
                        head = nil
                        if broken == nil {
                            broken = AuditBrokenRecord(sequence: malformed.sequence ?? expected, reason: malformed.reason)
                        }
                    case .success(let record):
                        head = record.hash
                        if broken == nil {
                            broken = check(record, expected: expected, previousHash: previousHash,
                                           previousTime: previousTime)
                        }
                        expected = record.sequence &+ 1
                        previousHash = record.hash
                        previousTime = record.recordedUnixNanos
                    }
                }
                return AuditVerification(records: records, headHash: head, firstBroken: broken)
            }
        } catch {
            throw AuditStore.auditError(path, error, doing: "cannot read the records")
        }
    }

    /// The reason `record` breaks the chain, or nil.
    static func check(_ record: AuditStore.StoredRecord, expected: Int64, previousHash: String,
                      previousTime: Int64) -> AuditBrokenRecord?
    {
        if record.sequence != expected {
            if record.sequence > expected {
                let reason = expected == record.sequence - 1
                    ? "record \(expected) is missing (the next record is \(record.sequence))"
                    : "records \(expected) to \(record.sequence - 1) are missing (the next record is \(record.sequence))"
                return AuditBrokenRecord(sequence: expected, reason: reason)
            }
            return AuditBrokenRecord(sequence: record.sequence,
                                     reason: "sequence \(record.sequence) where \(expected) was expected")
        }
        func broken(_ reason: String) -> AuditBrokenRecord {
            AuditBrokenRecord(sequence: record.sequence, reason: reason)
        }
        if record.prevHash != previousHash {
            return broken(record.sequence == 1
                ? "prev_hash is not the genesis hash (64 zeros)"
                : "prev_hash does not match the hash of record \(record.sequence - 1)")
        }
        guard AuditStore.isHashText(record.hash) else {
            return broken("stored hash is not 64 lowercase hexadecimal characters")
        }
        if record.recomputedHash() != record.hash {
            return broken("stored hash does not match the record's contents")
        }
        guard let kind = record.kind else {
            return broken("unknown kind '\(record.kindText)'")
        }
        do {
            _ = try AuditStore.decodePayload(record.payload, kind: kind)
        } catch {
            return broken(error.reason)
        }
        if record.recordedUnixNanos < previousTime {
            return broken("recorded_unix_nanos goes backwards")
        }
        return nil
    }

    /// Writes the records recorded at or after `sinceUnixNanos`, in sequence
    /// order, through `write`: one call per line, each ending in its line
    /// terminator ("\n" for jsonl, "\r\n" for csv, after a header line).
    ///
    /// Fields: sequence, recorded_at (ISO-8601 UTC with nanoseconds),
    /// kind, account_id, decision_id, prev_hash, hash, and payload: the
    /// decoded message as SwiftProtobuf's `jsonString()` (an object in jsonl,
    /// a quoted string in csv). Export does not verify the chain (see
    /// ``verify(path:)``); a record whose columns or payload do not decode is
    /// an ``AuditError/Code/corrupt`` error naming its sequence, after the
    /// lines before it were written.
    public static func export(path: String, sinceUnixNanos: Int64, format: AuditExportFormat,
                              write: (String) -> Void) throws(AuditError)
    {
        try records(path: path, sinceUnixNanos: sinceUnixNanos, opened: {
            if format == .csv { write("sequence,recorded_at,kind,account_id,decision_id,prev_hash,hash,payload\r\n") }
        }) { (record: AuditRecord) throws(AuditError) in
            let payloadJSON: String
            do {
                payloadJSON = try record.message.jsonString()
            } catch {
                throw AuditError(.corrupt, "\(path): record \(record.sequence): payload has no JSON form: \(error)")
            }
            let recordedAt = AuditTime.iso8601(unixNanos: record.recordedUnixNanos)
            switch format {
            case .jsonl:
                var line = "{\"sequence\":\(record.sequence)"
                line += ",\"recorded_at\":" + jsonQuoted(recordedAt)
                line += ",\"kind\":" + jsonQuoted(record.kind.rawValue)
                line += ",\"account_id\":" + jsonQuoted(record.accountID)
                line += ",\"decision_id\":" + jsonQuoted(record.decisionID)
                line += ",\"prev_hash\":" + jsonQuoted(record.prevHash)
                line += ",\"hash\":" + jsonQuoted(record.hash)
                line += ",\"payload\":" + payloadJSON + "}\n"
                write(line)
            case .csv:
                let cells = [
                    String(record.sequence), recordedAt, record.kind.rawValue, record.accountID,
                    record.decisionID, record.prevHash, record.hash,
                ].map { csvField($0, alwaysQuote: false) } + [csvField(payloadJSON, alwaysQuote: true)]
                write(cells.joined(separator: ",") + "\r\n")
            }
        }
    }

    /// Calls `visit` with every record recorded at or after `sinceUnixNanos`,
    /// in sequence order, its payload decoded. Does not verify the chain (see
    /// ``verify(path:)``); a record whose columns or payload do not decode is
    /// an ``AuditError/Code/corrupt`` error naming its sequence, after the
    /// records before it were visited. An error `visit` throws ends the walk.
    /// `opened` runs once the file opened as an audit log, before any record.
    public static func records(path: String, sinceUnixNanos: Int64, opened: () -> Void = {},
                               visit: (AuditRecord) throws(AuditError) -> Void) throws(AuditError)
    {
        let database = try AuditStore.open(path: path, readonly: true, durability: .full)
        defer { try? database.close() }
        opened()
        var visitError: AuditError? = nil
        do {
            try database.read { db in
                let cursor = try Row.fetchCursor(
                    db, sql: """
                        SELECT \(AuditStore.selectList) FROM audit_records
                        WHERE recorded_unix_nanos >= ? ORDER BY sequence
                        """,
                    arguments: [sinceUnixNanos])
                while let row = try cursor.next() {
                    let record: AuditStore.StoredRecord
                    switch AuditStore.StoredRecord.decode(row) {
                    case .success(let r): record = r
                    case .failure(let malformed):
                        let which = malformed.sequence.map { "record \($0)" } ?? "a record"
                        throw AuditError(.corrupt, "\(path): \(which): \(malformed.reason)")
                    }
                    guard let kind = record.kind else {
                        throw AuditError(.corrupt, "\(path): record \(record.sequence): unknown kind '\(record.kindText)'")
                    }
                    let message: any SwiftProtobuf.Message
                    switch Result(catching: { () throws(AuditStore.PayloadError) in
                        try AuditStore.decodePayload(record.payload, kind: kind)
                    }) {
                    case .success(let decoded): message = decoded
                    case .failure(let error):
                        throw AuditError(.corrupt, "\(path): record \(record.sequence): \(error.reason)")
                    }
                    do throws(AuditError) {
                        try visit(AuditRecord(sequence: record.sequence, recordedUnixNanos: record.recordedUnixNanos,
                                              kind: kind, accountID: record.accountID, decisionID: record.decisionID,
                                              prevHash: record.prevHash, hash: record.hash, message: message))
                    } catch {
                        visitError = error
                        return
                    }
                }
            }
        } catch {
            throw AuditStore.auditError(path, error, doing: "cannot read the records")
        }
        if let visitError { throw visitError }
    }

    /// Parses `2026-11-21` (midnight UTC), `2026-11-21T10:00:00Z`, with a
    /// fraction of up to nine digits (`...:00.25Z`) and/or a `+hh:mm` /
    /// `-hh:mm` offset instead of `Z`, into Unix nanoseconds. nil when
    /// malformed, out of range (month, day, hour...) or outside what Int64
    /// nanoseconds hold (years 1678 to 2261).
    public static func parseSince(_ text: String) -> Int64? {
        AuditTime.parse(text)
    }

    // MARK: - Quoting

    /// An RFC 4180 field: quoted (with `""` for `"`) when it holds a comma,
    /// quote, CR or LF, or always with `alwaysQuote`.
    static func csvField(_ text: String, alwaysQuote: Bool) -> String {
        let special: Set<UInt8> = [0x2C, 0x22, 0x0A, 0x0D]  // , " LF CR
        guard alwaysQuote || text.utf8.contains(where: special.contains) else { return text }
        let escaped = text.split(separator: "\"", omittingEmptySubsequences: false).joined(separator: "\"\"")
        return "\"" + escaped + "\""
    }
}

// MARK: - Time

/// UTC calendar arithmetic for record times (proleptic Gregorian, no leap
/// seconds), without Foundation date formatters.
enum AuditTime {
    static let nanosPerSecond: Int64 = 1_000_000_000
    static let secondsPerDay: Int64 = 86_400

    /// `2026-11-21T10:00:00.000000000Z`.
    static func iso8601(unixNanos: Int64) -> String {
        var seconds = unixNanos / nanosPerSecond
        var nanos = unixNanos % nanosPerSecond
        if nanos < 0 { nanos += nanosPerSecond; seconds -= 1 }
        var days = seconds / secondsPerDay
        var secondOfDay = seconds % secondsPerDay
        if secondOfDay < 0 { secondOfDay += secondsPerDay; days -= 1 }
        let (year, month, day) = civil(fromDays: days)
        func pad(_ value: Int64, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return pad(year, 4) + "-" + pad(month, 2) + "-" + pad(day, 2) + "T"
            + pad(secondOfDay / 3600, 2) + ":" + pad(secondOfDay / 60 % 60, 2) + ":" + pad(secondOfDay % 60, 2)
            + "." + pad(nanos, 9) + "Z"
    }

    static func parse(_ text: String) -> Int64? {
        let bytes = Array(text.utf8)
        var index = 0
        func digits(_ count: Int) -> Int64? {
            guard index + count <= bytes.count else { return nil }
            var value: Int64 = 0
            for byte in bytes[index..<(index + count)] {
                guard byte >= 0x30, byte <= 0x39 else { return nil }
                value = value * 10 + Int64(byte - 0x30)
            }
            index += count
            return value
        }
        func expect(_ character: UInt8) -> Bool {
            guard index < bytes.count, bytes[index] == character else { return false }
            index += 1
            return true
        }
        guard let year = digits(4), expect(0x2D), let month = digits(2), expect(0x2D), let day = digits(2),
              (1...12).contains(month), day >= 1, day <= daysIn(month: month, year: year)
        else { return nil }
        var secondOfDay: Int64 = 0
        var fraction: Int64 = 0
        var offsetSeconds: Int64 = 0
        if index < bytes.count {
            guard expect(0x54) || expect(0x74),  // T or t
                  let hour = digits(2), expect(0x3A), let minute = digits(2), expect(0x3A), let second = digits(2),
                  hour < 24, minute < 60, second < 60
            else { return nil }
            secondOfDay = hour * 3600 + minute * 60 + second
            if expect(0x2E) {  // .
                var count = 0
                while index < bytes.count, bytes[index] >= 0x30, bytes[index] <= 0x39 {
                    guard count < 9 else { return nil }
                    fraction = fraction * 10 + Int64(bytes[index] - 0x30)
                    count += 1
                    index += 1
                }
                guard count > 0 else { return nil }
                for _ in count..<9 { fraction *= 10 }
            }
            if expect(0x5A) || expect(0x7A) {  // Z or z
                // UTC
            } else if index < bytes.count, bytes[index] == 0x2B || bytes[index] == 0x2D {
                let sign: Int64 = bytes[index] == 0x2B ? 1 : -1
                index += 1
                guard let hours = digits(2), expect(0x3A), let minutes = digits(2), hours < 24, minutes < 60
                else { return nil }
                offsetSeconds = sign * (hours * 3600 + minutes * 60)
            } else {
                return nil
            }
            guard index == bytes.count else { return nil }
        }
        let days = days(fromCivil: year, month, day)
        let seconds = days * secondsPerDay + secondOfDay - offsetSeconds
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: nanosPerSecond)
        guard !overflow else { return nil }
        let (total, overflow2) = scaled.addingReportingOverflow(fraction)
        return overflow2 ? nil : total
    }

    static func isLeap(_ year: Int64) -> Bool {
        (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
    }

    static func daysIn(month: Int64, year: Int64) -> Int64 {
        switch month {
        case 2: isLeap(year) ? 29 : 28
        case 4, 6, 9, 11: 30
        default: 31
        }
    }

    /// Days since 1970-01-01 of a civil date (H. Hinnant's algorithm).
    static func days(fromCivil year: Int64, _ month: Int64, _ day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    /// The civil date of a day count since 1970-01-01.
    static func civil(fromDays count: Int64) -> (year: Int64, month: Int64, day: Int64) {
        let z = count + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }
}
