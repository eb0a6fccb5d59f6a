import Foundation
import KeelAPI
import Testing

@testable import KeelAudit

@Suite("Audit export and dates")
struct AuditExportTests {
    /// A log with ids that need quoting in CSV and escaping in JSON.
    static func makeLog(_ scratch: ScratchDirectory) throws -> (path: String, receipts: [AuditReceipt]) {
        let path = scratch.path("audit.db")
        let log = try AuditLog(path: path)
        let receipts = [
            try log.appendAndWait(Records.decision(account: "acct-1", decision: "dec-1", requestID: "req-1")),
            try log.appendAndWait(Records.approval(account: "acct-1", decision: "dec-1", event: .rejected)),
            try log.appendAndWait(Records.decision(account: "acct \"2\", east\nwing", decision: "dec-2",
                                                   requestID: "req-2")),
        ]
        log.close()
        return (path, receipts)
    }

    static func export(_ path: String, since: Int64 = 0, _ format: AuditExportFormat) throws -> [String] {
        var lines: [String] = []
        try AuditReader.export(path: path, sinceUnixNanos: since, format: format) { lines.append($0) }
        return lines
    }

    static func object(_ json: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
    }

    @Test("jsonl: one object per line with every field and the payload as a JSON object")
    func jsonl() throws {
        let scratch = try ScratchDirectory()
        let (path, receipts) = try Self.makeLog(scratch)
        let lines = try Self.export(path, .jsonl)
        #expect(lines.count == 3)
        #expect(lines.allSatisfy { $0.hasSuffix("\n") && $0.dropLast().firstIndex(of: "\n") == nil })
        let objects = try lines.map { try Self.object($0) }
        #expect(objects.map { $0["sequence"] as? Int } == [1, 2, 3])
        #expect(objects.map { $0["kind"] as? String } == ["decision", "approval", "decision"])
        #expect(objects.map { $0["account_id"] as? String } == ["acct-1", "acct-1", "acct \"2\", east\nwing"])
        #expect(objects.map { $0["decision_id"] as? String } == ["dec-1", "dec-1", "dec-2"])
        #expect(objects.map { $0["hash"] as? String } == receipts.map(\.hash))
        #expect(objects.map { $0["prev_hash"] as? String } == [AuditStore.genesisHash] + receipts.dropLast().map(\.hash))
        for object in objects {
            let recordedAt = try #require(object["recorded_at"] as? String)
            #expect(recordedAt.hasSuffix("Z") && recordedAt.count == 30, "\(recordedAt)")
            #expect(AuditReader.parseSince(recordedAt) != nil)
        }

        // The decision's payload carries the decision's fields.
        let decision = try #require(objects[0]["payload"] as? [String: Any])
        #expect(decision["requestId"] as? String == "req-1")
        #expect(decision["requestDigest"] as? String == String(repeating: "ab", count: 32))
        #expect((decision["portfolio"] as? [String: Any])?["accountId"] as? String == "acct-1")
        let response = try #require(decision["response"] as? [String: Any])
        #expect(response["decisionId"] as? String == "dec-1")
        #expect(response["status"] as? String == "DECISION_STATUS_EXECUTABLE")
        let approval = try #require(objects[1]["payload"] as? [String: Any])
        #expect(approval["event"] as? String == "APPROVAL_EVENT_REJECTED")
        #expect(approval["advisorId"] as? String == "adv-7")

        // The payload JSON decodes back into the same message.
        let payloadText = try #require(lines[0].range(of: "\"payload\":"))
        let json = String(lines[0][payloadText.upperBound...].dropLast(2))  // "}\n"
        let decoded = try Keel_V1_DecisionRecord(jsonString: json)
        #expect(decoded == Records.decisionRecord(account: "acct-1", decision: "dec-1", requestID: "req-1"))
    }

    @Test("csv: a header, RFC 4180 quoting, CRLF line ends, the payload as a quoted JSON string")
    func csv() throws {
        let scratch = try ScratchDirectory()
        let (path, receipts) = try Self.makeLog(scratch)
        let lines = try Self.export(path, .csv)
        #expect(lines.count == 4)
        #expect(lines.allSatisfy { $0.hasSuffix("\r\n") })
        #expect(lines[0] == "sequence,recorded_at,kind,account_id,decision_id,prev_hash,hash,payload\r\n")
        #expect(lines[3].contains("\"acct \"\"2\"\", east\nwing\""))

        let rows = parseCSV(lines.joined())
        #expect(rows.count == 4)
        #expect(rows.allSatisfy { $0.count == 8 })
        let data = rows.dropFirst()
        #expect(data.map { $0[0] } == ["1", "2", "3"])
        #expect(data.map { $0[2] } == ["decision", "approval", "decision"])
        #expect(data.map { $0[3] } == ["acct-1", "acct-1", "acct \"2\", east\nwing"])
        #expect(data.map { $0[6] } == receipts.map(\.hash))
        let payload = try Self.object(rows[3][7])
        #expect(payload["requestId"] as? String == "req-2")
        #expect((payload["response"] as? [String: Any])?["decisionId"] as? String == "dec-2")
    }

    @Test("since selects the records recorded at or after it", arguments: AuditExportFormat.allCases)
    func since(format: AuditExportFormat) throws {
        let scratch = try ScratchDirectory()
        let (path, _) = try Self.makeLog(scratch)
        let all = try Self.export(path, .jsonl).map { try Self.object($0) }
        let texts = try all.map { try #require($0["recorded_at"] as? String) }
        let times = try texts.map { try #require(AuditReader.parseSince($0)) }
        let header = format == .csv ? 1 : 0
        #expect(try Self.export(path, since: 0, format).count == 3 + header)
        #expect(try Self.export(path, since: Int64.max, format).count == header)
        let cut = times[1]
        let expected = times.filter { $0 >= cut }.count
        #expect(expected >= 2)
        #expect(try Self.export(path, since: cut, format).count == expected + header)
        #expect(try Self.export(path, since: cut + 1, format).count == times.filter { $0 > cut }.count + header)
    }

    @Test("export names a record whose payload does not decode")
    func exportCorruptPayload() throws {
        let scratch = try ScratchDirectory()
        let (path, _) = try Self.makeLog(scratch)
        try RawSQL.dropTriggers(path)
        try RawSQL.execute(path, "UPDATE audit_records SET payload = X'FFFFFF' WHERE sequence = 2")
        var lines: [String] = []
        let error = auditError {
            try AuditReader.export(path: path, sinceUnixNanos: 0, format: .jsonl) { lines.append($0) }
        }
        #expect(error?.code == .corrupt)
        #expect(error?.message.contains("record 2: payload does not decode as keel.v1.ApprovalRecord") == true)
        #expect(lines.count == 1)
    }

    static let base: Int64 = (1_795_219_200 + 36_000) * 1_000_000_000  // 2026-11-21T10:00:00Z

    static let validSince: [(String, Int64)] = [
        ("1970-01-01", Int64(0)),
        ("2026-11-21", 1_795_219_200 * 1_000_000_000),
        ("2026-11-21T10:00:00Z", base),
        ("2026-11-21t10:00:00z", base),
        ("2026-11-21T10:00:00.5Z", base + 500_000_000),
        ("2026-11-21T10:00:00.123456789Z", base + 123_456_789),
        ("2026-11-21T12:30:00+02:30", base),
        ("2026-11-21T05:00:00.25-05:00", base + 250_000_000),
        ("2024-02-29", 1_709_164_800 * 1_000_000_000),
        ("2000-03-01T00:00:00Z", 951_868_800 * 1_000_000_000),
        ("1969-12-31T23:59:59.999999999Z", -1),
        ("2262-04-11T23:47:16.854775807Z", Int64.max),
    ]

    @Test("parseSince accepts dates and RFC 3339 times", arguments: validSince)
    func parseSinceValid(text: String, nanos: Int64) {
        #expect(AuditReader.parseSince(text) == nanos)
    }

    @Test("parseSince rejects malformed and out-of-range text", arguments: [
        "", "yesterday", "2026-11", "26-11-21", "2026-1-21", "2026-11-21Z", "2026-11-31", "2025-02-29", "1900-02-29",
        "2026-13-01", "2026-00-10", "2026-11-00", "2026-11-21T10:00:00", "2026-11-21T10:00Z", "2026-11-21T24:00:00Z",
        "2026-11-21T10:60:00Z", "2026-11-21T10:00:60Z", "2026-11-21T10:00:00.Z", "2026-11-21T10:00:00.1234567890Z",
        "2026-11-21 10:00:00Z", "2026-11-21T10:00:00+0200", "2026-11-21T10:00:00+24:00", "2026-11-21T10:00:00Z ",
        " 2026-11-21", "9999-12-31", "1600-01-01", "2262-04-11T23:47:16.854775808Z", "２０２６-11-21",
    ])
    func parseSinceMalformed(text: String) {
        #expect(AuditReader.parseSince(text) == nil)
    }

    static let isoCases: [(Int64, String)] = [
        (Int64(0), "1970-01-01T00:00:00.000000000Z"),
        (-1, "1969-12-31T23:59:59.999999999Z"),
        (base + 5, "2026-11-21T10:00:00.000000005Z"),
        (1_709_251_199_999_999_999, "2024-02-29T23:59:59.999999999Z"),
        (Int64.max, "2262-04-11T23:47:16.854775807Z"),
    ]

    @Test("recorded_at is ISO-8601 UTC with nanoseconds and round-trips", arguments: isoCases)
    func iso8601(nanos: Int64, text: String) {
        #expect(AuditTime.iso8601(unixNanos: nanos) == text)
        #expect(AuditReader.parseSince(text) == nanos)
    }

    @Test("civil dates round-trip over four centuries")
    func civilRoundTrip() {
        var mismatches: [Int64] = []
        for days in Int64(-146_097)...(146_097 * 2) {
            let (y, m, d) = AuditTime.civil(fromDays: days)
            if AuditTime.days(fromCivil: y, m, d) != days || d < 1 || d > AuditTime.daysIn(month: m, year: y) {
                mismatches.append(days)
            }
        }
        #expect(mismatches.isEmpty)
    }
}
