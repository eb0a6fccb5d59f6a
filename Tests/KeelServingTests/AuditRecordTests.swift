import Foundation
import KeelAPI
import KeelAudit
import SwiftProtobuf
import Testing

@testable import KeelServing

@Suite("The Rebalance audit record and the wire copy behind it")
struct AuditRecordTests {
    @Test("a request's bytes and the typed call record the same portfolio, risk profile and mandate")
    func recordedInputs() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("keel-audit-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("audit.sqlite").path
        let audit = try AuditLog(path: path, durability: .normal)
        let f = try KeelServiceTests.fixture(audit: audit, rules: KeelServiceTests.noApprovals)
        var request = KeelServiceTests.rebalanceRequest(instruments: ["AAA", "BBB", "CCC"], account: "ACC-9")
        request.portfolio.holdings[0].lots = [.with { $0.lotID = "L1"; $0.quantity = 300; $0.costPerShare = 90
                                                      $0.acquiredOn = "2024-03-01" }]
        request.mandate.excludedInstruments = ["ZZZ"]
        // Through the bytes (the transports' path: the record copies the request's fields)...
        let viaBytes = try await KeelServiceTests.call(f.service, .rebalance, request, as: Keel_V1_RebalanceResponse.self)
            .get()
        // ...and through the typed call (the record encodes them).
        let typed = try await f.service.rebalance(request, deadline: KeelServiceTests.deadline())
        audit.close()
        var records: [Keel_V1_DecisionRecord] = []
        try AuditReader.records(path: path, sinceUnixNanos: 0) { record in
            if let decision = record.message as? Keel_V1_DecisionRecord { records.append(decision) }
        }
        try #require(records.count == 2)
        for record in records {
            #expect(record.portfolio == request.portfolio)
            #expect(record.riskProfile == request.riskProfile)
            #expect(record.mandate == request.mandate)
            #expect(record.requestID == request.requestID)
            #expect(record.requestDigest == AuditDigest.sha256Hex(try request.serializedBytes() as [UInt8]))
        }
        #expect(records[0].response.decisionID == viaBytes.decisionID)
        #expect(records[1].response.decisionID == typed.decisionID)
        #expect(try AuditReader.verify(path: path).firstBroken == nil)
    }

    @Test("copying renumbers embedded messages and skips every other field")
    func copyRenumbers() throws {
        var request = Keel_V1_RebalanceRequest()
        request.requestID = "r-1"
        request.portfolio.accountID = "A"
        request.portfolio.cash = 12.5
        request.instruments = [.with { $0.id = "X"; $0.price = 3 }]
        request.mandate.minCashWeight = 0.02
        request.asOfUnixNanos = 99
        var out: [UInt8] = []
        #expect(ProtobufWire.copyFields(from: try request.serializedBytes(), renumber: [2: 3, 5: 5], into: &out))
        let record = try Keel_V1_DecisionRecord(serializedBytes: out)
        #expect(record.portfolio == request.portfolio)
        #expect(record.mandate == request.mandate)
        #expect(!record.hasRiskProfile && record.requestID.isEmpty)
    }

    @Test("malformed wire bytes are refused and leave the output as it was", arguments: [
        [0x12, 0x05, 0x01],  // length past the end
        [0x12],  // key without a length
        [0x0b, 0x00],  // a group (wire type 3)
        [0x00, 0x01],  // field number 0
        [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],  // varint of 11 bytes
        [0x11, 0x01, 0x02],  // fixed64 cut short
    ] as [[UInt8]])
    func malformed(_ bytes: [UInt8]) {
        var out: [UInt8] = [7, 7]
        #expect(!ProtobufWire.copyFields(from: bytes, renumber: [2: 3], into: &out))
        #expect(out == [7, 7])
    }
}
