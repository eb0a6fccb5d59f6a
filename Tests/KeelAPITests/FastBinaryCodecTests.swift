import Foundation
import SwiftProtobuf
import Testing

@testable import KeelAPI

/// The fast codec against swift-protobuf: the same messages from the same
/// bytes, the same bytes from the same messages, and swift-protobuf's result
/// (message or error) whenever the fast path gives up.
@Suite("Fast binary codec")
struct FastBinaryCodecTests {
    static let request: Keel_V1_RebalanceRequest = {
        var r = Keel_V1_RebalanceRequest()
        r.requestID = "req-é-📈"  // non-ASCII text
        r.model = "policy"
        r.asOfUnixNanos = -1_700_000_000_000_000_000  // a negative varint: ten bytes
        r.portfolio.accountID = "acct-1"
        r.portfolio.householdID = "hh"
        r.portfolio.cash = 12_345.5
        r.portfolio.firstRebalance = true
        for i in 0..<40 {
            var h = Keel_V1_Holding()
            h.instrumentID = "INST\(i)"
            h.quantity = Double(i) * 10
            for k in 0..<(i % 3) {
                var lot = Keel_V1_TaxLot()
                lot.lotID = "lot-\(i)-\(k)"
                lot.quantity = 5
                lot.acquiredOn = "2024-01-0\(k + 1)"
                lot.costPerShare = 99.25
                h.lots.append(lot)
            }
            r.portfolio.holdings.append(h)
            var instrument = Keel_V1_Instrument()
            instrument.id = "INST\(i)"
            instrument.price = 100 + Double(i)
            instrument.sector = String(repeating: "s", count: i * 5)  // lengths over 127 too
            instrument.assetClass = Keel_V1_AssetClass(rawValue: i % 8) ?? .unspecified
            if i % 2 == 0 { instrument.esgScore = Double(i % 4 == 0 ? 0 : i) }  // explicit presence, 0 included
            instrument.lotSize = 1
            instrument.requiredKnowledge = .advanced
            instrument.priceHistory = (0..<(i % 4)).map { d in
                var p = Keel_V1_PricePoint()
                p.timeUnixNanos = Int64(d) * 86_400_000_000_000
                p.price = 100 * (1 + Double(d) / 100)
                return p
            }
            instrument.replacementCandidates = i % 5 == 0 ? ["A", "B"] : []
            r.instruments.append(instrument)
        }
        r.riskProfile.riskTolerance = 4
        r.riskProfile.horizonYears = -3  // a negative int32: ten bytes on the wire
        r.riskProfile.capacityForLoss = .limited
        r.riskProfile.knowledge = .informed
        r.riskProfile.objectives = [.growth, .income, .UNRECOGNIZED(42), .UNRECOGNIZED(-7)]
        r.mandate.strategicWeights = (0..<40).map { i in
            var w = Keel_V1_Weight()
            w.id = "INST\(i)"
            w.weight = 1.0 / 41
            return w
        }
        r.mandate.excludedInstruments = ["X", "Ü"]
        r.mandate.maxTurnover = 0.25
        r.mandate.allowFractional = true
        return r
    }()

    static let response: Keel_V1_RebalanceResponse = {
        var r = Keel_V1_RebalanceResponse()
        r.requestID = "req"
        r.decisionID = "dec"
        r.status = .pendingApproval
        r.summary = String(repeating: "A long paragraph. ", count: 1000)  // a three-byte length
        for i in 0..<30 {
            var o = Keel_V1_Order()
            o.instrumentID = "INST\(i)"
            o.side = i % 2 == 0 ? .buy : .sell
            o.quantity = Double(i)
            o.notional = -0.0
            o.reasons = [.drift, .policySignal, .tax]
            o.topFeatures = (0..<3).map { k in
                var f = Keel_V1_FeatureContribution()
                f.feature = "feature_\(k)"
                f.value = Double(k) - 1.5
                f.contribution = 1e-300
                return f
            }
            o.explanation = "Buy because \(i)"
            o.lotIds = ["l1", "l2"]
            o.required = i % 3 == 0
            r.orders.append(o)
        }
        r.compliance.compliant = false
        r.compliance.conflicts = ["a", "b"]
        r.model.name = "policy"
        r.model.version = 2
        r.model.sha256 = String(repeating: "ab", count: 32)
        r.turnover = .infinity
        r.engineNanos = 72_000
        return r
    }()

    static let record: Keel_V1_DecisionRecord = {
        var r = Keel_V1_DecisionRecord()
        r.requestDigest = String(repeating: "0f", count: 32)
        r.portfolio = request.portfolio
        r.riskProfile = request.riskProfile
        r.mandate = request.mandate
        r.response = response
        r.triggeredRules = ["turnover above 20 %"]
        r.latencyNanos = 1
        return r
    }()

    /// Every seed's bytes decode on the fast path alone, to the same message,
    /// and encode to swift-protobuf's bytes.
    @Test func roundTripsWithoutFallingBack() throws {
        let requestBytes: [UInt8] = try Self.request.serializedBytes()
        #expect(FastBinaryCodec.fastDecode(Keel_V1_RebalanceRequest.self, requestBytes) == Self.request)
        #expect(Self.firstDifference(FastBinaryCodec.fastEncode(Self.request), requestBytes) == nil)
        #expect(try Keel_V1_RebalanceRequest(fastSerializedBytes: requestBytes) == Self.request)

        let responseBytes: [UInt8] = try Self.response.serializedBytes()
        #expect(FastBinaryCodec.fastDecode(Keel_V1_RebalanceResponse.self, responseBytes) == Self.response)
        #expect(Self.firstDifference(try Self.response.fastSerializedBytes(), responseBytes) == nil)

        let recordBytes: [UInt8] = try Self.record.serializedBytes()
        #expect(FastBinaryCodec.fastDecode(Keel_V1_DecisionRecord.self, recordBytes) == Self.record)
        #expect(Self.firstDifference(try Self.record.fastSerializedBytes(), recordBytes) == nil)
    }

    @Test func emptyMessages() throws {
        #expect(FastBinaryCodec.fastDecode(Keel_V1_RebalanceRequest.self, []) == Keel_V1_RebalanceRequest())
        #expect(try Keel_V1_RebalanceResponse().fastSerializedBytes() == [])
    }

    /// Repeated enums may arrive unpacked; a singular message sent twice merges.
    @Test func acceptsUnpackedRepeatsAndMergesMessages() throws {
        // risk_profile (field 4) { objectives (field 5) unpacked: 4, 2 }
        let unpacked: [UInt8] = [0x22, 0x04, 0x28, 0x04, 0x28, 0x02]
        let fast = try #require(FastBinaryCodec.fastDecode(Keel_V1_RebalanceRequest.self, unpacked))
        #expect(fast == (try Keel_V1_RebalanceRequest(serializedBytes: unpacked)))
        #expect(fast.riskProfile.objectives == [.growth, .income])

        var first = Keel_V1_RebalanceRequest()
        first.portfolio.accountID = "a"
        first.portfolio.cash = 1
        var second = Keel_V1_RebalanceRequest()
        second.portfolio.householdID = "h"
        second.portfolio.cash = 2
        let merged: [UInt8] = try first.serializedBytes() + second.serializedBytes()
        let decoded = try #require(FastBinaryCodec.fastDecode(Keel_V1_RebalanceRequest.self, merged))
        #expect(decoded == (try Keel_V1_RebalanceRequest(serializedBytes: merged)))
        #expect(decoded.portfolio.accountID == "a" && decoded.portfolio.householdID == "h" && decoded.portfolio.cash == 2)

        // An enum value keeps its low 32 bits, as swift-protobuf reads it.
        let wide: [UInt8] = [0x22, 0x06, 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]
        let enumValue = try #require(FastBinaryCodec.fastDecode(Keel_V1_RebalanceRequest.self, wide))
        #expect(enumValue == (try Keel_V1_RebalanceRequest(serializedBytes: wide)))
        #expect(enumValue.riskProfile.capacityForLoss == .UNRECOGNIZED(-1))
    }

    /// Unknown fields are kept (swift-protobuf decodes them) and written back.
    @Test func unknownFieldsFallBackAndSurvive() throws {
        var bytes: [UInt8] = try Self.request.serializedBytes()
        bytes += [0xA0, 0x06, 0x07]  // field 100, varint 7: unknown to RebalanceRequest
        #expect(FastBinaryCodec.fastDecode(Keel_V1_RebalanceRequest.self, bytes) == nil)
        let decoded = try Keel_V1_RebalanceRequest(fastSerializedBytes: bytes)
        #expect(decoded == (try Keel_V1_RebalanceRequest(serializedBytes: bytes)))
        #expect(!decoded.unknownFields.data.isEmpty)
        #expect(Self.firstDifference(FastBinaryCodec.fastEncode(decoded), try decoded.serializedBytes()) == nil)
    }

    /// Bytes the fast path does not take: swift-protobuf's error, or its message.
    @Test(arguments: [
        ("invalid UTF-8 in request_id", [0x0A, 0x02, 0xC3, 0x28] as [UInt8]),
        ("truncated string", [0x0A, 0x05, 0x61]),
        ("length past the end of a nested message", [0x12, 0x03, 0x0A, 0x05, 0x61]),
        ("field number 0", [0x00, 0x01]),
        ("wire type 3 (group)", [0x0B]),
        ("wire type 7", [0x0F]),
        ("varint of eleven bytes", [0x38] + [UInt8](repeating: 0xFF, count: 10) + [0x01]),
        ("string field sent as a varint", [0x08, 0x01]),
    ])
    func rejectsOrDefers(_ name: String, _ bytes: [UInt8]) {
        #expect(FastBinaryCodec.fastDecode(Keel_V1_RebalanceRequest.self, bytes) == nil, "\(name)")
        Self.expectSameOutcome(Keel_V1_RebalanceRequest.self, bytes)
    }

    /// Thousands of corruptions of each seed: whenever the fast path answers,
    /// swift-protobuf gives the same message; the public entry always agrees
    /// with swift-protobuf; and any message either decodes encodes to
    /// swift-protobuf's bytes.
    @Test(arguments: [0, 1, 2])
    func corruptedBytesAgreeWithSwiftProtobuf(seed: Int) throws {
        switch seed {
        case 0: try Self.fuzz(Keel_V1_RebalanceRequest.self, try Self.request.serializedBytes(), seed: 1)
        case 1: try Self.fuzz(Keel_V1_RebalanceResponse.self, try Self.response.serializedBytes(), seed: 2)
        default: try Self.fuzz(Keel_V1_DecisionRecord.self, try Self.record.serializedBytes(), seed: 3)
        }
    }

    static func expectSameOutcome<M: Message>(_ type: M.Type, _ bytes: [UInt8]) {
        let reference = try? M(serializedBytes: bytes)
        let ours = try? FastBinaryCodec.decode(M.self, bytes)
        #expect((reference == nil) == (ours == nil))
        if let reference, let ours { #expect(same(reference, ours)) }
    }

    /// Where two encodings first differ (nil: identical), so that a failure
    /// names an offset rather than printing kilobytes.
    static func firstDifference(_ a: [UInt8]?, _ b: [UInt8]) -> String? {
        guard let a else { return "the fast path gave up" }
        if let i = (0..<min(a.count, b.count)).first(where: { a[$0] != b[$0] }) { return "byte \(i) of \(b.count)" }
        return a.count == b.count ? nil : "lengths \(a.count) and \(b.count)"
    }

    /// Equal as protobuf bytes (`==` says NaN != NaN).
    static func same<M: Message>(_ a: M, _ b: M) -> Bool {
        guard let x: [UInt8] = try? a.serializedBytes(), let y: [UInt8] = try? b.serializedBytes() else { return false }
        return x == y
    }

    static func fuzz<M: Message>(_ type: M.Type, _ seedBytes: [UInt8], seed: UInt64) throws {
        var state = seed &* 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        var fastAnswered = 0, fellBack = 0
        for _ in 0..<1000 {
            var bytes = seedBytes
            for _ in 0...(next() % 3) {
                let at = Int(next() % UInt64(bytes.count))
                switch next() % 5 {
                case 0: bytes[at] ^= UInt8(truncatingIfNeeded: 1 << (next() % 8))
                case 1: bytes[at] = UInt8(truncatingIfNeeded: next())
                case 2: bytes.insert(UInt8(truncatingIfNeeded: next()), at: at)
                case 3: bytes.removeSubrange(at..<min(bytes.count, at + Int(next() % 8) + 1))
                default: bytes = Array(bytes[..<at])
                }
                if bytes.isEmpty { bytes = [0] }
            }
            let reference = try? M(serializedBytes: bytes)
            if let fast = FastBinaryCodec.fastDecode(M.self, bytes) {
                fastAnswered += 1
                let ref = try #require(reference, "the fast path decoded bytes swift-protobuf rejects")
                #expect(same(fast, ref))
            } else {
                fellBack += 1
            }
            expectSameOutcome(M.self, bytes)
            if let reference, let encoded = FastBinaryCodec.fastEncode(reference) {
                #expect(firstDifference(encoded, try reference.serializedBytes()) == nil)
            }
        }
        // Both paths were exercised.
        #expect(fastAnswered > 50 && fellBack > 50, "fast \(fastAnswered), fallback \(fellBack)")
    }
}
