import Foundation
import KeelAudit
import KeelAPI
import KeelInference
import KeelPortfolio
import KeelTestSupport
import Testing
@testable import KeelServing

@Suite("HarvestTaxLosses, and tax lots and repurchase blocks in Rebalance")
struct TaxServiceTests {
    /// A tax-loss model: forecast = bias + Σ weight · feature.
    static func model(weights: [Float] = [0, 0, 0, 0, 0, 0, 0], bias: Float = 0.01,
                      features: [String] = TaxLossFeatures.names) -> [UInt8]
    {
        var m = ONNXModel()
        m.inputs = [.init(name: "features", dims: [.param("instruments"), .value(features.count)])]
        m.outputs = [.init(name: "median_return", dims: [.param("instruments"), .value(1)])]
        m.initializers = [.init(name: "w", dims: [1, Int64(features.count)], values: weights, raw: true),
                          .init(name: "b", dims: [1], values: [bias], raw: true)]
        m.nodes = [.init(opType: "Gemm", inputs: ["features", "w", "b"], outputs: ["median_return"], name: "head",
                         attributes: [.int("transB", 1)])]
        m.metadata = [("keel.kind", "tax_loss"), ("keel.features", features.joined(separator: ","))]
        return m.encode()
    }

    static func fixture(model bytes: [UInt8]? = model()) throws -> KeelServiceTests.Fixture {
        let f = try KeelServiceTests.fixture()
        if let bytes { try f.scratch.write("tax_loss", 1, bytes) }
        f.repository.loadAll()
        return f
    }

    /// 200 daily closes ending at `last`, growing by `growth` per day.
    static func history(last: Double, growth: Double = 0) -> [Keel_V1_PricePoint] {
        (0..<200).map { k in
            var p = Keel_V1_PricePoint()
            p.price = last * pow(1 + growth, Double(k - 199))
            p.timeUnixNanos = 1_780_000_000_000_000_000 + Int64(k) * 86_400_000_000_000
            return p
        }
    }

    static func lot(_ id: String, _ quantity: Double, _ cost: Double, _ date: String) -> Keel_V1_TaxLot {
        .with { $0.lotID = id; $0.quantity = quantity; $0.costPerShare = cost; $0.acquiredOn = date }
    }

    /// VTI at 100 (lots: L1 10 @ 120 short-term loss, L2 5 @ 90 gain), its
    /// replacement SCHB at 50, and BND.
    static func request(vtiGrowth: Double = 0) -> Keel_V1_HarvestTaxLossesRequest {
        var r = Keel_V1_HarvestTaxLossesRequest()
        r.requestID = "tlh-1"
        r.portfolio = .with { p in
            p.accountID = "A1"
            p.householdID = "H1"
            p.holdings = [.with { h in
                h.instrumentID = "VTI"
                h.quantity = 15
                h.lots = [lot("L1", 10, 120, "2026-01-05"), lot("L2", 5, 90, "2024-03-01")]
            }]
        }
        r.instruments = [
            .with { $0.id = "VTI"; $0.price = 100; $0.replacementForTax = "SCHB"; $0.substantiallyIdenticalGroup = "US"
                $0.priceHistory = history(last: 100, growth: vtiGrowth) },
            .with { $0.id = "SCHB"; $0.price = 50; $0.priceHistory = history(last: 50) },
            .with { $0.id = "ITOT"; $0.price = 80; $0.substantiallyIdenticalGroup = "US" },
        ]
        r.tax = .with { t in
            t.shortTermRate = 0.37
            t.longTermRate = 0.2
            t.tradeDate = "2026-11-20"
        }
        return r
    }

    static func harvest(_ f: KeelServiceTests.Fixture, _ r: Keel_V1_HarvestTaxLossesRequest) async throws
        -> Result<Keel_V1_HarvestTaxLossesResponse, RPCStatus>
    {
        try await KeelServiceTests.call(f.service, .harvestTaxLosses, r, as: Keel_V1_HarvestTaxLossesResponse.self)
    }

    @Test func proposesTheLossLotWithItsReplacementAndScore() async throws {
        let f = try Self.fixture()
        let r = try await Self.harvest(f, Self.request()).get()
        #expect(r.requestID == "tlh-1")
        #expect(r.model.name == "tax_loss" && r.model.version == 1)
        #expect(r.proposals.count == 1)
        let p = try #require(r.proposals.first)
        #expect(p.instrumentID == "VTI" && p.lotIds == ["L1"] && p.quantity == 10)
        #expect(abs(p.realisedLoss - 200) < 1e-9 && !p.longTerm)
        #expect(abs(p.estimatedTaxSaving - 74) < 1e-9)
        #expect(p.replacementInstrumentID == "SCHB" && p.replacementQuantity == 20)
        #expect(p.washSaleWindowEnd == "2026-12-20")
        // Same forecast for both: the score is the saving over the proceeds.
        #expect(abs(p.forecasterScore - 0.074) < 1e-6)
        #expect(p.reason.contains("may be bought again from 2026-12-21"))
        // Keel remembers the harvest for the household.
        #expect(f.service.harvestMemory.harvested(household: "H1", day: CivilDay.parse("2026-12-20")!).map(\.instrumentID)
            == ["VTI"])
        #expect(f.service.harvestMemory.harvested(household: "H1", day: CivilDay.parse("2026-12-21")!).isEmpty)
    }

    @Test("HarvestTaxLosses and ForecastLiquidity run through the gate: deadline, draining and its metrics")
    func computeMethodsAreGated() async throws {
        let f = try Self.fixture()
        try f.scratch.write("liquidity", 1, LiquidityServiceTests.model())
        f.repository.loadAll()
        let harvest: [UInt8] = try Self.request().serializedBytes()
        let forecast: [UInt8] = try LiquidityServiceTests.request(LiquidityServiceTests.context()).serializedBytes()
        for (method, bytes) in [(RPCMethod.harvestTaxLosses, harvest), (.forecastLiquidity, forecast)] {
            guard case .success = await f.service.handle(method, request: bytes, deadline: KeelServiceTests.deadline())
            else {
                Issue.record("\(method) failed")
                continue
            }
            // Timed like Rebalance: a queue wait and an inference phase.
            for phase in ["queue", "inference"] {
                #expect(f.metrics.samples("keel_request_duration_seconds", [("method", method.name), ("phase", phase)])
                    == 1, "\(method) \(phase)")
            }
            let late = await f.service.handle(method, request: bytes, deadline: .now - .milliseconds(1))
            guard case .failure(let status) = late else {
                Issue.record("\(method) answered after its deadline")
                continue
            }
            #expect(status.code == .deadlineExceeded)
        }
        f.service.gate.beginDrain()
        for (method, bytes) in [(RPCMethod.harvestTaxLosses, harvest), (.forecastLiquidity, forecast)] {
            guard case .failure(let status) = await f.service.handle(method, request: bytes,
                                                                      deadline: KeelServiceTests.deadline())
            else {
                Issue.record("\(method) ran while draining")
                continue
            }
            #expect(status.code == .unavailable)
        }
    }

    @Test func theForecasterCanSayWait() async throws {
        // The model forecasts 21-day return = ret_126: VTI rose strongly over
        // the last 126 days, SCHB is flat, so SCHB is expected to lag by more
        // than the 7.4 % tax saving.
        let f = try Self.fixture(model: Self.model(weights: [0, 0, 0, 1, 0, 0, 0], bias: 0))
        let r = try await Self.harvest(f, Self.request(vtiGrowth: 0.005)).get()
        #expect(r.proposals.isEmpty)
        #expect(r.note.contains("says waiting is better than harvesting now"), "\(r.note)")
        #expect(f.service.harvestMemory.harvested(household: "H1", day: CivilDay.parse("2026-11-20")!).isEmpty)
    }

    @Test func withoutAModelProposalsCarryNoScore() async throws {
        let f = try Self.fixture(model: nil)
        let r = try await Self.harvest(f, Self.request()).get()
        #expect(r.proposals.map(\.instrumentID) == ["VTI"])
        #expect(r.proposals[0].forecasterScore == 0)
        #expect(r.note.contains("no tax_loss model is loaded"))
        var named = Self.request()
        named.model = "tax_loss_v9"
        #expect(try await Self.harvest(f, named).failure?.code == .failedPrecondition)
    }

    @Test func aRecentHouseholdPurchaseBlocksTheHarvest() async throws {
        let f = try Self.fixture()
        var request = Self.request()
        request.tax.recentTrades = [.with { t in
            t.accountID = "IRA"; t.instrumentID = "ITOT"; t.side = .buy; t.quantity = 1; t.tradeDate = "2026-11-01"
        }]
        let r = try await Self.harvest(f, request).get()
        #expect(r.proposals.isEmpty)
        #expect(r.note.contains("ITOT, substantially identical to it, was bought on 2026-11-01 in account IRA"), "\(r.note)")
        // 31 days before the trade date, the purchase no longer matters.
        request.tax.recentTrades[0].tradeDate = "2026-10-20"
        #expect(try await Self.harvest(f, request).get().proposals.count == 1)
    }

    @Test func theFirstUsableCandidateIsTheReplacement() async throws {
        let f = try Self.fixture()
        var request = Self.request()
        // ITOT is substantially identical to VTI, so it cannot replace it: SCHB can.
        request.instruments[0].replacementForTax = "ITOT"
        request.instruments[0].replacementCandidates = ["SCHB"]
        let p = try #require(try await Self.harvest(f, request).get().proposals.first)
        #expect(p.replacementInstrumentID == "SCHB" && p.replacementQuantity == 20)
    }

    enum Bad: String, CaseIterable {
        case noTax, noLots, negativeQuantity, lotsDoNotAddUp, duplicateLotID, badAcquiredOn, acquiredAfterTrade,
             unknownHolding, badRate, badMinHarvest, unknownSpecificLot, unsetSide, tradesOutOfOrder, tradeAfter,
             unknownReplacement, unknownCandidate, badTradeDate, badPrice, badHistory

        func apply(_ r: inout Keel_V1_HarvestTaxLossesRequest) -> String {
            switch self {
            case .noTax: r.clearTax(); return "tax is missing"
            case .noLots: r.portfolio.holdings[0].lots = []; return "portfolio.holdings carry no tax lots"
            case .negativeQuantity:
                r.portfolio.holdings[0].lots[1].quantity = -5
                return "portfolio.holdings[0].lots[1].quantity -5.0 is not a finite number > 0"
            case .lotsDoNotAddUp:
                r.portfolio.holdings[0].quantity = 16
                return "portfolio.holdings[0].lots add up to 15.0 shares but portfolio.holdings[0].quantity is 16.0"
            case .duplicateLotID:
                r.portfolio.holdings[0].lots[1].lotID = "L1"
                return "portfolio.holdings[0].lots[1].lot_id 'L1' is also the id of portfolio.holdings[0].lots[0]"
            case .badAcquiredOn:
                r.portfolio.holdings[0].lots[0].acquiredOn = "2026-02-30"
                return "portfolio.holdings[0].lots[0].acquired_on '2026-02-30' is not a date"
            case .acquiredAfterTrade:
                r.portfolio.holdings[0].lots[0].acquiredOn = "2026-11-21"
                return "portfolio.holdings[0].lots[0].acquired_on 2026-11-21 is after the trade date 2026-11-20"
            case .unknownHolding:
                r.portfolio.holdings[0].instrumentID = "ZZZ"
                return "portfolio.holdings[0].instrument_id 'ZZZ' is not among the request's instruments"
            case .badRate: r.tax.shortTermRate = 1.5; return "tax.short_term_rate 1.5 is not in 0...1"
            case .badMinHarvest: r.tax.minHarvest = -1; return "tax.min_harvest -1.0 is not a finite number >= 0"
            case .unknownSpecificLot:
                r.tax.lotSelection = .specific
                r.tax.specificLotIds = ["L1", "L7"]
                return "tax.specific_lot_ids[1] 'L7' is not one of the portfolio's tax lots"
            case .unsetSide:
                r.tax.recentTrades = [.with { $0.instrumentID = "VTI"; $0.quantity = 1; $0.tradeDate = "2026-11-10" }]
                return "tax.recent_trades[0].side is unset"
            case .tradesOutOfOrder:
                r.tax.recentTrades = [
                    .with { $0.instrumentID = "BND"; $0.side = .buy; $0.quantity = 1; $0.tradeDate = "2026-11-10" },
                    .with { $0.instrumentID = "BND"; $0.side = .buy; $0.quantity = 1; $0.tradeDate = "2026-11-02" },
                ]
                return "tax.recent_trades[1].trade_date 2026-11-02 comes before the previous trade's 2026-11-10"
            case .tradeAfter:
                r.tax.recentTrades = [.with { $0.instrumentID = "VTI"; $0.side = .buy; $0.quantity = 1; $0.tradeDate = "2026-11-21" }]
                return "tax.recent_trades[0].trade_date 2026-11-21 is after the trade date 2026-11-20"
            case .unknownReplacement:
                r.instruments[0].replacementForTax = "NOPE"
                return "instruments[0].replacement_for_tax 'NOPE' is not among the request's instruments"
            case .unknownCandidate:
                r.instruments[0].replacementCandidates = ["SCHB", "NOPE"]
                return "instruments[0].replacement_candidates[1] 'NOPE' is not among the request's instruments"
            case .badTradeDate: r.tax.tradeDate = "20261120"; return "tax.trade_date '20261120' is not a date"
            case .badPrice: r.instruments[1].price = -3; return "instruments[1].price -3.0 is not a finite number from 1e-8 to 1e12"
            case .badHistory:
                r.instruments[1].priceHistory[7].price = .nan
                return "instruments[1].price_history[7].price nan is not a finite number from 1e-8 to 1e12"
            }
        }
    }

    @Test(arguments: Bad.allCases)
    func badInputIsInvalidArgumentAndNothingIsRemembered(_ bad: Bad) async throws {
        let f = try Self.fixture()
        var request = Self.request()
        let expected = bad.apply(&request)
        guard case .failure(let status) = try await Self.harvest(f, request) else {
            Issue.record("accepted \(bad)")
            return
        }
        #expect(status.code == .invalidArgument)
        #expect(status.message.contains(expected), "\(status.message)")
        #expect(f.service.harvestMemory.harvested(household: "H1", day: CivilDay.parse("2026-11-20")!).isEmpty)
    }

    @Test func aTaxLossModelWithOtherFeaturesIsRefusedAtLoad() throws {
        let f = try Self.fixture(model: Self.model(features: (0..<7).map { "x\($0)" }))
        #expect(f.repository.serving(name: "tax_loss") == nil)
        #expect(f.repository.lastError(name: "tax_loss")?.reason.contains("tax-loss features") == true)
    }

    // MARK: - Rebalance

    /// AAA (price 100) held in three lots: a loss lot, a long-term gain and
    /// a short-term gain; the instrument cap forces a sale.
    static func rebalanceWithLots(cap: Double) -> Keel_V1_RebalanceRequest {
        var r = KeelServiceTests.rebalanceRequest(instruments: ["AAA", "BBB", "CCC"], account: "A9")
        r.instruments[0].price = 100
        r.portfolio.householdID = "H9"
        r.portfolio.holdings[0].lots = [lot("LT", 100, 50, "2020-05-01"), lot("ST", 100, 60, "2026-09-01"),
                                        lot("LOSS", 100, 150, "2026-06-01")]
        r.mandate.maxInstrumentWeight = cap
        r.tax = .with { $0.shortTermRate = 0.4; $0.longTermRate = 0.2; $0.tradeDate = "2026-11-20" }
        return r
    }

    @Test func salesTakeLossLotsFirstThenLongTermLots() async throws {
        let f = try Self.fixture()
        // Value 30,000 + 50,000 cash; a 10 % cap sells about 220 shares.
        let big = try await KeelServiceTests.call(f.service, .rebalance, Self.rebalanceWithLots(cap: 0.1),
                                                  as: Keel_V1_RebalanceResponse.self).get()
        let sale = try #require(big.orders.first { $0.instrumentID == "AAA" && $0.side == .sell })
        #expect(sale.lotIds == ["LOSS", "LT", "ST"], "\(sale.lotIds)")
        #expect(sale.explanation.contains("Lots LOSS, LT, ST"))
        // A 30 % cap sells fewer than 100 shares: the loss lot alone, a harvest.
        let small = try await KeelServiceTests.call(f.service, .rebalance, Self.rebalanceWithLots(cap: 0.3),
                                                    as: Keel_V1_RebalanceResponse.self).get()
        let loss = try #require(small.orders.first { $0.instrumentID == "AAA" && $0.side == .sell })
        #expect(loss.lotIds == ["LOSS"])
        #expect(loss.reasons.contains(.tax))
        #expect(loss.explanation.contains("(loss lots first) realise a"), "\(loss.explanation)")
        #expect(f.service.harvestMemory.harvested(household: "H9", day: CivilDay.parse("2026-11-20")!)
            .map(\.instrumentID) == ["AAA"])
    }

    @Test("losses count as harvested only once the decision is answered: not when its audit record fails")
    func anUnansweredDecisionHarvestsNothing() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("keel-tax-audit-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let audit = try AuditLog(path: directory.appendingPathComponent("audit.sqlite").path, durability: .normal)
        let f = try KeelServiceTests.fixture(audit: audit)
        try f.scratch.write("tax_loss", 1, Self.model())
        f.repository.loadAll()
        audit.close()  // every append now fails
        let result = try await KeelServiceTests.call(f.service, .rebalance, Self.rebalanceWithLots(cap: 0.3),
                                                     as: Keel_V1_RebalanceResponse.self)
        guard case .failure(let status) = result else {
            Issue.record("a decision was answered without its audit record")
            return
        }
        #expect(status.code == .unavailable)
        #expect(f.service.harvestMemory.harvested(household: "H9", day: CivilDay.parse("2026-11-20")!).isEmpty)
    }

    @Test func lotsThatDoNotAddUpAreInvalidInRebalanceToo() async throws {
        let f = try Self.fixture()
        var r = Self.rebalanceWithLots(cap: 0.3)
        r.portfolio.holdings[0].lots.removeLast()
        let status = try await KeelServiceTests.call(f.service, .rebalance, r, as: Keel_V1_RebalanceResponse.self).failure
        #expect(status?.code == .invalidArgument)
        #expect(status?.message.contains("portfolio.holdings[0].lots add up to 200.0 shares") == true, "\(status?.message ?? "")")
    }

    /// Household H1 with no holdings, VTI and ITOT substantially identical,
    /// SCHB VTI's replacement, and strategic weights on all four.
    static func blockedHouseholdRequest(account: String) -> Keel_V1_RebalanceRequest {
        var r = KeelServiceTests.rebalanceRequest(instruments: ["VTI", "SCHB", "ITOT", "BND"], account: account)
        r.portfolio.householdID = "H1"
        r.portfolio.holdings = []
        r.instruments[0].replacementForTax = "SCHB"
        r.instruments[0].substantiallyIdenticalGroup = "US"
        r.instruments[2].substantiallyIdenticalGroup = "US"
        r.mandate.strategicWeights = [.with { $0.id = "VTI"; $0.weight = 0.4 }, .with { $0.id = "ITOT"; $0.weight = 0.1 },
                                      .with { $0.id = "SCHB"; $0.weight = 0.1 }, .with { $0.id = "BND"; $0.weight = 0.3 }]
        return r
    }

    /// VTI (harvested) and ITOT (identical) are not bought; SCHB stands in
    /// for VTI with its unheld strategic weight. `until`: the date in the notes.
    static func expectBlocked(_ blocked: Keel_V1_RebalanceResponse, until: String) throws {
        #expect(!blocked.orders.contains { $0.side == .buy && ($0.instrumentID == "VTI" || $0.instrumentID == "ITOT") })
        #expect(blocked.note.contains("VTI is not bought until\(until)"), "\(blocked.note)")
        #expect(blocked.note.contains("its unheld strategic weight goes to the replacement SCHB"))
        #expect(blocked.note.contains("ITOT is not bought until\(until)"))
        let schb = try #require(blocked.orders.first { $0.instrumentID == "SCHB" })
        #expect(schb.reasons.contains(.washSaleBlock))
        #expect(schb.explanation.contains("It stands in for VTI"))
    }

    @Test("a recent harvest blocks repurchases without lots or a tax context too (the rules are then not built)")
    func aHarvestBlocksWithoutLotsOrTaxContext() async throws {
        let f = try Self.fixture()
        f.service.harvestMemory.record(household: "H1", instruments: ["VTI"], day: TaxMapping.today())
        let r = Self.blockedHouseholdRequest(account: "A3")
        #expect(!r.hasTax && r.portfolio.holdings.allSatisfy { $0.lots.isEmpty })
        let blocked = try await KeelServiceTests.call(f.service, .rebalance, r, as: Keel_V1_RebalanceResponse.self).get()
        try Self.expectBlocked(blocked, until: "")
    }

    @Test func aHarvestedInstrumentIsNotBoughtBackAndItsReplacementStandsIn() async throws {
        let f = try Self.fixture()
        _ = try await Self.harvest(f, Self.request()).get()
        var r = Self.blockedHouseholdRequest(account: "A2")
        r.tax = .with { $0.tradeDate = "2026-12-01" }
        let blocked = try await KeelServiceTests.call(f.service, .rebalance, r, as: Keel_V1_RebalanceResponse.self).get()
        try Self.expectBlocked(blocked, until: " 2026-12-21")
        #expect(blocked.compliance.checks.contains { $0.rule == "tax.repurchase_block" && $0.passed })
        // From day 31 on, VTI is bought again.
        r.tax.tradeDate = "2026-12-21"
        let free = try await KeelServiceTests.call(f.service, .rebalance, r, as: Keel_V1_RebalanceResponse.self).get()
        #expect(free.orders.contains { $0.side == .buy && $0.instrumentID == "VTI" })
        #expect(!free.note.contains("is not bought until"))
        // Another household is not blocked.
        r.tax.tradeDate = "2026-12-01"
        r.portfolio.householdID = "H2"
        let other = try await KeelServiceTests.call(f.service, .rebalance, r, as: Keel_V1_RebalanceResponse.self).get()
        #expect(other.orders.contains { $0.side == .buy && $0.instrumentID == "VTI" })
    }
}
