import Foundation
import KeelAPI
import SwiftProtobuf
import Testing

import KeelServing

/// Rebalance requests with random hostile values (NaN, infinities, huge and
/// negative numbers, empty, duplicate, unknown and 5,000-character ids and
/// dates, unknown enum values) in any field the engine, the tax and the
/// liquidity paths read: every answer is a decision or an INVALID_ARGUMENT
/// naming the problem; never a crash, never INTERNAL.
@Suite("Rebalance with hostile values")
struct HostileRequestTests {
    /// SplitMix64: the same cases on every run of a seed.
    struct Random {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(max(n, 1))) }
        /// A plausible number two times in three, otherwise an edge case.
        mutating func number() -> Double {
            if below(3) != 0 { return Double(below(1000)) / Double(1 + below(999)) }
            let edges: [Double] = [.nan, .infinity, -.infinity, 0, -0.0, -1, 1e308, -1e308, 1e-308, .leastNonzeroMagnitude,
                                   .greatestFiniteMagnitude, 0.999999999, 1.0000001, 1e12]
            return edges[below(edges.count)]
        }
        mutating func text() -> String {
            let options = ["", "I0", "I1", "S0", "\u{0}", String(repeating: "x", count: 5000), "ASSET_CLASS_EQUITY",
                           "2026-02-30", "2026-11-21", "0000-01-01", "9999-12-31", "not-a-date", "é", "💥", "lot-1"]
            return options[below(options.count)]
        }
    }

    @Test("every answer is a decision or INVALID_ARGUMENT naming the problem", arguments: [UInt64(1), 2])
    func hostileValues(seed: UInt64) async throws {
        let f = try KeelServiceTests.fixture()
        var random = Random(state: seed)
        var decided = 0
        for iteration in 0..<400 {
            let (request, n) = Self.request(&random)
            let bytes: [UInt8] = try request.serializedBytes()
            switch await f.service.handle(.rebalance, request: bytes, deadline: .now + .seconds(30)) {
            case .success(let out):
                decided += 1
                let r = try Keel_V1_RebalanceResponse(serializedBytes: out)
                #expect(r.targets.count == n, "case \(iteration)")
                #expect(r.targets.allSatisfy { $0.targetWeight.isFinite && $0.targetWeight >= -1e-12 },
                        "case \(iteration)")
                #expect(r.cashWeightAfter.isFinite && r.cashWeightAfter >= -1e-9, "case \(iteration)")
                #expect(r.orders.allSatisfy { $0.quantity.isFinite && $0.quantity > 0 }, "case \(iteration)")
                #expect(!r.summary.isEmpty, "case \(iteration)")
            case .failure(let status):
                #expect(status.code == .invalidArgument, "case \(iteration): \(status)")
                #expect(!status.message.isEmpty && status.message.utf8.count <= RPCStatus.maxMessageBytes)
            }
        }
        // Both sides are exercised (measured: about a quarter decided).
        #expect(decided >= 40 && decided <= 360, "\(decided) of 400 decided")
    }

    /// A small valid request (1 to 6 instruments) with up to three fields
    /// set to hostile values, half the time a tax context and a quarter of
    /// the time a liquidity context of random values.
    static func request(_ random: inout Random) -> (Keel_V1_RebalanceRequest, Int) {
        let n = 1 + random.below(6)
        let ids = (0..<n).map { "I\($0)" }
        var r = KeelServiceTests.rebalanceRequest(instruments: ids, account: "acct-\(random.below(3))")
        if random.below(2) == 0 {
            r.tax.shortTermRate = random.number()
            r.tax.longTermRate = random.number()
            r.tax.minHarvest = random.number()
            if random.below(2) == 0 { r.tax.tradeDate = random.text() }
            r.tax.lotSelection = Keel_V1_LotSelection(rawValue: random.below(6)) ?? .unspecified
            if random.below(3) == 0 { r.tax.specificLotIds = [random.text(), random.text()] }
            if random.below(2) == 0 {
                r.tax.recentTrades = [.with {
                    $0.accountID = random.text()
                    $0.instrumentID = ids[random.below(n)]
                    $0.side = Keel_V1_Side(rawValue: random.below(4)) ?? .buy
                    $0.quantity = random.number()
                    $0.tradeDate = random.text()
                }]
            }
            for h in r.portfolio.holdings.indices where random.below(2) == 0 {
                r.portfolio.holdings[h].lots = (0..<random.below(3)).map { _ in
                    .with {
                        $0.lotID = random.text()
                        $0.quantity = random.number()
                        $0.acquiredOn = random.text()
                        $0.costPerShare = random.number()
                    }
                }
            }
        }
        if random.below(4) == 0 {
            r.liquidity.horizonDays = Int32(random.below(200)) - 50
            r.liquidity.confidence = random.number()
            r.liquidity.history = (0..<random.below(100)).map { _ in
                .with { $0.date = random.text(); $0.amount = random.number(); $0.kind = random.text() }
            }
            r.liquidity.scheduled = (0..<random.below(3)).map { _ in
                .with { $0.date = random.text(); $0.amount = random.number() }
            }
        }
        for _ in 0..<random.below(4) {
            let i = random.below(n)
            switch random.below(30) {
            case 0: r.instruments[i].price = random.number()
            case 1: r.instruments[i].lotSize = random.number()
            case 2: r.instruments[i].esgScore = random.number()
            case 3: r.instruments[i].halfSpreadBps = random.number()
            case 4: r.instruments[i].averageDailyVolume = random.number()
            case 5: r.instruments[i].priceHistory = []
            case 6:
                let history = r.instruments[i].priceHistory  // empty after case 5 on the same instrument
                if !history.isEmpty { r.instruments[i].priceHistory[random.below(history.count)].price = random.number() }
            case 7: r.instruments[i].id = random.text()
            case 8: r.instruments[i].assetClass = Keel_V1_AssetClass(rawValue: random.below(12)) ?? .UNRECOGNIZED(77)
            case 9:
                r.instruments[i].requiredKnowledge = Keel_V1_KnowledgeLevel(rawValue: random.below(8)) ?? .UNRECOGNIZED(77)
            case 10: if !r.portfolio.holdings.isEmpty { r.portfolio.holdings[0].quantity = random.number() }
            case 11: r.portfolio.cash = random.number()
            case 12: r.mandate.maxInstrumentWeight = random.number()
            case 13: r.mandate.sectorCaps.append(.with { $0.id = random.text(); $0.weight = random.number() })
            case 14: r.mandate.assetClassCaps.append(.with { $0.id = random.text(); $0.weight = random.number() })
            case 15: r.mandate.excludedInstruments.append(random.below(2) == 0 ? ids[i] : random.text())
            case 16: r.mandate.esgFloor = random.number()
            case 17: r.mandate.minCashWeight = random.number()
            case 18: r.mandate.maxTurnover = random.number()
            case 19: r.mandate.minTradeNotional = random.number()
            case 20:
                r.mandate.commissionBps = random.number()
                r.mandate.commissionMin = random.number()
            case 21: r.mandate.strategicWeights[random.below(n)].weight = random.number()
            case 22:
                r.mandate.strategicWeights.append(.with {
                    $0.id = random.below(2) == 0 ? ids[i] : random.text()
                    $0.weight = random.number()
                })
            case 23: r.riskProfile.riskTolerance = Int32(random.below(12)) - 2
            case 24: r.riskProfile.horizonYears = Int32(truncatingIfNeeded: random.next())
            case 25: r.riskProfile.capacityForLoss = Keel_V1_CapacityForLoss(rawValue: random.below(7)) ?? .UNRECOGNIZED(9)
            case 26: r.mandate.allowFractional.toggle()
            case 27:
                r.portfolio.holdings.append(.with {
                    $0.instrumentID = random.below(2) == 0 ? ids[i] : random.text()
                    $0.quantity = random.number()
                })
            case 28:
                r.instruments[i].replacementForTax = random.below(2) == 0 ? ids[random.below(n)] : random.text()
                r.instruments[i].substantiallyIdenticalGroup = random.below(2) == 0 ? "G" : ""
                r.instruments[i].replacementCandidates = [ids[random.below(n)], random.text()]
            default: r.asOfUnixNanos = Int64(bitPattern: random.next())
            }
        }
        return (r, n)
    }
}
