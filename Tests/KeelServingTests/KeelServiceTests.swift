import Foundation
import KeelAPI
import KeelAudit
import KeelPortfolio
import SwiftProtobuf
import Testing

import KeelServing

@Suite("KeelService handlers")
struct KeelServiceTests {
    static let weights: [Float] = [1, -0.5, 0.25]
    static let bias: Float = 0.1

    struct Fixture {
        let scratch: ScratchRepository
        let repository: ModelRepository
        let service: KeelService
        let metrics: TestMetrics
    }

    @Test("pending decisions are bounded, and ListPending pages through them oldest first")
    func pendingBoundAndPages() async throws {
        var rules = Self.noApprovals
        rules.firstRebalance = true
        rules.maxPending = 5
        let f = try Self.fixture(rules: rules)
        let ids = ["AAA", "BBB", "CCC"]
        var waiting: [String] = []
        for k in 0..<7 {
            do {
                let r = try await f.service.rebalance(Self.rebalanceRequest(instruments: ids, account: "ACC-P\(k)"),
                                                      deadline: Self.deadline())
                #expect(r.status == .pendingApproval)
                waiting.append(r.approvalID)
            } catch {
                #expect(k >= 5, "decision \(k) was refused: \(error)")
                #expect(error.code == .resourceExhausted)
                #expect(error.message.contains("5 decisions already wait for an advisor (the most allowed)"),
                        "\(error.message)")
            }
        }
        #expect(waiting.count == 5)
        #expect(f.service.approvals.pendingCount == 5)

        var pages: [[String]] = []
        var token = ""
        repeat {
            let page = try await f.service.listPending(.with { $0.pageSize = 2; $0.pageToken = token },
                                                       deadline: Self.deadline())
            pages.append(page.pending.map(\.approvalID))
            token = page.nextPageToken
        } while !token.isEmpty && pages.count < 10
        #expect(pages.map(\.count) == [2, 2, 1])
        #expect(pages.flatMap { $0 } == waiting)  // oldest first, each once
        #expect(try await f.service.listPending(.init(), deadline: Self.deadline()).pending.count == 5)

        for (request, needle) in [(Keel_V1_ListPendingRequest.with { $0.pageSize = 1001 }, "page_size 1001"),
                                  (.with { $0.pageSize = -1 }, "page_size -1"),
                                  (.with { $0.pageToken = "garbage" }, "page_token 'garbage'")] {
            do {
                _ = try await f.service.listPending(request, deadline: Self.deadline())
                Issue.record("\(request) was accepted")
            } catch {
                #expect(error.code == .invalidArgument && error.message.contains(needle), "\(error.message)")
            }
        }
    }

    @Test("the pending bound: expired entries free their places at once, and an unrecorded decision gives its place back")
    func pendingBoundPlaces() async throws {
        var rules = Self.noApprovals
        rules.firstRebalance = true
        rules.maxPending = 2
        rules.expiry = .milliseconds(300)
        let f = try Self.fixture(rules: rules)
        let ids = ["AAA", "BBB", "CCC"]
        func first(_ account: String) async -> RPCStatusCode {
            do {
                return try await f.service.rebalance(Self.rebalanceRequest(instruments: ids, account: account),
                                                     deadline: Self.deadline()).status == .pendingApproval ? .ok : .unknown
            } catch {
                return error.code
            }
        }
        #expect(await first("E1") == .ok)
        #expect(await first("E2") == .ok)
        #expect(await first("E3") == .resourceExhausted)
        // Both expire; nothing has swept them yet, but they no longer hold places.
        try await Task.sleep(for: .milliseconds(400))
        #expect(await first("E4") == .ok)
        #expect(try await f.service.listPending(.init(), deadline: Self.deadline()).pending.count == 1)

        // With the audit trail failing, decisions are not recorded and their places come back.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("keel-pending-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let audit = try AuditLog(path: dir.appendingPathComponent("audit.sqlite").path, durability: .normal)
        let g = try Self.fixture(audit: audit, rules: rules)
        audit.close()
        for k in 0..<4 {
            do {
                _ = try await g.service.rebalance(Self.rebalanceRequest(instruments: ids, account: "U\(k)"),
                                                  deadline: Self.deadline())
                Issue.record("an unrecorded decision was answered")
            } catch {
                #expect(error.code == .unavailable, "\(error)")
            }
        }
        #expect(g.service.approvals.reserve(limit: 2, nowUnixNanos: 0))
        #expect(g.service.approvals.reserve(limit: 2, nowUnixNanos: 0))
        #expect(!g.service.approvals.reserve(limit: 2, nowUnixNanos: 0))
    }

    /// Approval rules that never trigger (tests of other behaviour).
    static let noApprovals: ApprovalRules = {
        var rules = ApprovalRules()
        rules.turnoverAbove = nil
        rules.orderShareAbove = nil
        rules.volatilityRiseAbove = nil
        rules.firstRebalance = false
        return rules
    }()

    static func fixture(policy: Bool = true, maxConcurrent: Int = 2, audit: AuditLog? = nil,
                        rules: ApprovalRules = noApprovals) throws -> Fixture {
        let scratch = try ScratchRepository()
        if policy { try scratch.write("policy", 1, Fixtures.policy(weights: weights, bias: bias)) }
        let metrics = TestMetrics()
        let repository = ModelRepository(root: scratch.root, metricsFactory: metrics)
        repository.loadAll()
        let service = try KeelService(repository: repository,
                                      gate: RequestGate(maxConcurrent: maxConcurrent, maxQueued: 8),
                                      audit: audit, approvalRules: rules, metricsFactory: metrics)
        return Fixture(scratch: scratch, repository: repository, service: service, metrics: metrics)
    }

    static func deadline() -> ContinuousClock.Instant { .now + .seconds(10) }

    static func call<Response: SwiftProtobuf.Message>(
        _ service: KeelService, _ method: RPCMethod, _ request: some SwiftProtobuf.Message, as: Response.Type
    ) async throws -> Result<Response, RPCStatus> {
        let bytes: [UInt8] = try request.serializedBytes()
        switch await service.handle(method, request: bytes, deadline: deadline()) {
        case .success(let out): return .success(try Response(serializedBytes: out))
        case .failure(let status): return .failure(status)
        }
    }

    /// An engine request: `ids` as equities in three sectors with 40 days of
    /// prices, the first one held (300 units) plus 50,000 cash, equal
    /// strategic weights, risk tolerance 4.
    static func rebalanceRequest(instruments ids: [String], model: String = "", account: String = "")
        -> Keel_V1_RebalanceRequest
    {
        var request = Keel_V1_RebalanceRequest()
        request.requestID = "req-42"
        request.model = model
        request.instruments = ids.enumerated().map { i, id in
            var m = Keel_V1_Instrument()
            m.id = id
            m.price = 100 + 10 * Double(i)
            m.sector = "S\(i % 3)"
            m.assetClass = .equity
            m.esgScore = 50
            m.lotSize = 1
            m.priceHistory = (0..<40).map { k in
                var p = Keel_V1_PricePoint()
                p.price = m.price * (1 + 0.02 * sin(Double(k) * 0.7 + Double(i)))
                p.timeUnixNanos = 1_795_000_000_000_000_000 + Int64(k) * 86_400_000_000_000
                return p
            }
            return m
        }
        var portfolio = Keel_V1_Portfolio()
        portfolio.accountID = account
        if let first = ids.first, !first.isEmpty {
            portfolio.holdings = [.with { $0.instrumentID = first; $0.quantity = 300 }]
        }
        portfolio.cash = 50_000
        request.portfolio = portfolio
        request.riskProfile = .with { $0.riskTolerance = 4; $0.knowledge = .informed; $0.horizonYears = 10 }
        request.mandate = .with { m in
            m.strategicWeights = ids.map { id in .with { $0.id = id; $0.weight = 0.95 / Double(ids.count) } }
            m.maxInstrumentWeight = 0.5
            m.minCashWeight = 0.02
            m.commissionBps = 1
        }
        return request
    }

    /// Checks what every engine response must satisfy.
    static func expectSound(_ r: Keel_V1_RebalanceResponse, instruments: Int) {
        #expect(r.targets.count == instruments)
        #expect(r.status == .executable || r.status == .noTrade || r.status == .pendingApproval)
        #expect(r.compliance.compliant, "\(r.compliance)")
        let invested = r.targets.reduce(0) { $0 + $1.targetWeight }
        #expect(abs(invested + r.cashWeightAfter + r.totalEstimatedCost / r.totalValue - 1) < 1e-9)
        #expect(r.cashWeightAfter >= 0.02 - 1e-9)
        for target in r.targets { #expect(target.targetWeight <= 0.5 + 1e-9) }
        for order in r.orders {
            #expect(!order.reasons.isEmpty && !order.explanation.isEmpty)
            #expect(order.topFeatures.count == 3)
            #expect(order.quantity == order.quantity.rounded() && order.quantity > 0)
        }
        #expect(!r.summary.isEmpty)
    }

    @Test("Rebalance round trip: a sound, deterministic decision naming its model")
    func rebalanceRoundTrip() async throws {
        let f = try Self.fixture()
        let ids = ["AAA", "BBB", "CCC", "DDD"]
        let result = try await Self.call(f.service, .rebalance, Self.rebalanceRequest(instruments: ids),
                                         as: Keel_V1_RebalanceResponse.self)
        let response = try result.get()
        #expect(response.requestID == "req-42")
        #expect(response.status == .executable)
        #expect(!response.orders.isEmpty)
        Self.expectSound(response, instruments: 4)
        #expect(response.decisionID.count == 36)
        #expect(UUID(uuidString: response.decisionID) != nil)
        #expect(Array(response.decisionID)[14] == "4")
        #expect(response.auditRecordHash.isEmpty)  // no audit trail in this fixture
        #expect(response.engineNanos > 0)
        #expect(response.marketStateUnixNanos == 1_795_000_000_000_000_000 + 39 * 86_400_000_000_000)
        let model = try #require(f.repository.serving(name: "policy"))
        #expect(response.model.name == "policy")
        #expect(response.model.version == 1)
        #expect(response.model.sha256 == model.sha256)
        #expect(response.targets.map(\.instrumentID) == ids)
        // The scores are the linear policy's on the engine's features.
        #expect(Set(response.targets.map(\.policyScore)).count > 1)

        // A second call gets a different decision id and the same decision.
        let again = try await Self.call(f.service, .rebalance, Self.rebalanceRequest(instruments: ids),
                                        as: Keel_V1_RebalanceResponse.self).get()
        #expect(again.decisionID != response.decisionID)
        #expect(again.orders == response.orders)
        #expect(again.targets == response.targets)

        #expect(f.metrics.value("keel_requests_total", [("method", "Rebalance"), ("code", "OK")]) == 2)
        for phase in ["decode", "queue", "inference", "encode"] {
            #expect(f.metrics.samples("keel_request_duration_seconds", [("method", "Rebalance"), ("phase", phase)]) == 2,
                    "phase \(phase)")
        }
    }

    @Test("the typed method gives the same answer as the byte-level one")
    func typedRebalance() async throws {
        let f = try Self.fixture()
        let request = Self.rebalanceRequest(instruments: ["A", "B"])
        let typed = try await f.service.rebalance(request, deadline: Self.deadline())
        let bytes = try await Self.call(f.service, .rebalance, request, as: Keel_V1_RebalanceResponse.self).get()
        Self.expectSound(typed, instruments: 2)
        #expect(typed.orders == bytes.orders)
        #expect(f.metrics.value("keel_requests_total", [("method", "Rebalance"), ("code", "OK")]) == 2)
    }

    @Test("requests keep succeeding while models are swapped underneath them")
    func swapUnderLoad() async throws {
        let f = try Self.fixture(maxConcurrent: 4)
        let versions: [[Float]] = (0..<8).map { v in [Float(v), 1, -1] }
        let shas = Locked(Set([try #require(f.repository.serving(name: "policy")).sha256]))
        let stop = Locked(false)
        let request = Self.rebalanceRequest(instruments: ["A", "B", "C"])
        let service = f.service
        let clients = (0..<3).map { _ in
            Task { () -> (ok: Int, seen: Set<String>, failures: [RPCStatus]) in
                var ok = 0
                var seen: Set<String> = []
                var failures: [RPCStatus] = []
                while !stop.value || ok == 0 {
                    do throws(RPCStatus) {
                        let response = try await service.rebalance(request, deadline: .now + .seconds(5))
                        ok += 1
                        seen.insert(response.model.sha256)
                        if !response.compliance.compliant || response.targets.count != 3 {
                            failures.append(RPCStatus(.internal, "unsound response: \(response.compliance)"))
                        }
                    } catch {
                        failures.append(error)
                    }
                    await Task.yield()
                }
                return (ok, seen, failures)
            }
        }
        for (index, weights) in versions.enumerated() {
            try f.scratch.write("policy", index + 2, Fixtures.policy(weights: weights))
            f.repository.pollOnce()
            let serving = try #require(f.repository.serving(name: "policy"))
            #expect(serving.version == Int64(index + 2))
            shas.withLock { $0.insert(serving.sha256) }
            try await Task.sleep(for: .milliseconds(5))
        }
        stop.withLock { $0 = true }
        for client in clients {
            let (ok, seen, failures) = try await withTimeout(.seconds(10), "client") { await client.value }
            #expect(ok > 0)
            #expect(failures.isEmpty, "\(failures)")
            #expect(seen.isSubset(of: shas.value))
        }
    }

    @Test("bad bytes are INVALID_ARGUMENT naming the message type")
    func badBytes() async throws {
        let f = try Self.fixture()
        let garbage: [UInt8] = [0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]
        let result = await f.service.handle(.rebalance, request: garbage, deadline: Self.deadline())
        guard case .failure(let status) = result else {
            Issue.record("expected a failure")
            return
        }
        #expect(status.code == .invalidArgument)
        #expect(status.message.hasPrefix("cannot decode keel.v1.RebalanceRequest: "))
        #expect(f.metrics.value("keel_requests_total", [("method", "Rebalance"), ("code", "INVALID_ARGUMENT")]) == 1)
    }

    @Test("a message quoting a long bad value is cut to its limit and still names the field")
    func longBadValue() async throws {
        let f = try Self.fixture()
        var request = Self.rebalanceRequest(instruments: ["AAA", "BBB"])
        request.tax.tradeDate = String(repeating: "x", count: 100_000)
        let result = try await Self.call(f.service, .rebalance, request, as: Keel_V1_RebalanceResponse.self)
        guard case .failure(let status) = result else {
            Issue.record("a 100 KB trade date was accepted")
            return
        }
        #expect(status.code == .invalidArgument)
        // The field at the start, what is wrong at the end, the value's middle cut.
        #expect(status.message.hasPrefix("tax.trade_date 'xxx"), "\(status.message.prefix(80))")
        #expect(status.message.hasSuffix("xxx' is not a date of the form YYYY-MM-DD"), "\(status.message.suffix(80))")
        #expect(status.message.contains(" bytes cut ...] "))
        #expect(status.message.utf8.count <= RPCStatus.maxMessageBytes)
    }

    @Test("status messages over the limit keep their start and end, cut between scalars", arguments: [
        (String(repeating: "a", count: 100), false),
        (String(repeating: "a", count: RPCStatus.maxMessageBytes), false),
        (String(repeating: "a", count: RPCStatus.maxMessageBytes + 1), true),
        (String(repeating: "é", count: 3_000), true),        // 2 bytes each
        ("a" + String(repeating: "€", count: 1_000), true),  // 3 bytes each, cuts land inside one
        (String(repeating: "💥", count: 1_000) + "a", true), // 4 bytes each
    ])
    func messageBound(message: String, cut: Bool) throws {
        let bounded = RPCStatus(.invalidArgument, message).message
        #expect(bounded.utf8.count <= RPCStatus.maxMessageBytes)
        guard cut else {
            #expect(bounded == message)
            return
        }
        let parts = bounded.components(separatedBy: " [... ")
        try #require(parts.count == 2, "\(bounded)")
        let head = parts[0]
        let (number, tail) = try #require(parts[1].firstRange(of: " bytes cut ...] ").map {
            (Int(parts[1][..<$0.lowerBound]), String(parts[1][$0.upperBound...]))
        })
        #expect(message.hasPrefix(head) && message.hasSuffix(tail))
        #expect(head.utf8.count + (number ?? -1) + tail.utf8.count == message.utf8.count)
        #expect(head.utf8.count > 1_300 && tail.utf8.count > 600, "\(head.utf8.count) and \(tail.utf8.count) kept")
        // Idempotent: a framed client rebuilding the status leaves it as it is.
        #expect(RPCStatus(.invalidArgument, bounded).message == bounded)
    }

    /// Requests the engine must refuse, each with the message that names the problem.
    enum BadRebalance: CaseIterable, Sendable {
        case noInstruments, emptyID, negativePrice, tinyPrice, hugeHistoryPrice, unknownHolding, riskTolerance,
             strategicSum, unknownModel, unknownAssetClassCap

        func apply(_ r: inout Keel_V1_RebalanceRequest) {
            switch self {
            case .noInstruments: r.instruments = []
            case .emptyID: r.instruments[1].id = ""
            case .negativePrice: r.instruments[0].price = -3
            case .tinyPrice: r.instruments[0].price = 5e-324
            case .hugeHistoryPrice:
                r.instruments[1].priceHistory = [100, 1e13, 100, r.instruments[1].price].enumerated().map { k, p in
                    .with { $0.price = p; $0.timeUnixNanos = Int64(k + 1) * 86_400_000_000_000 }
                }
            case .unknownHolding: r.portfolio.holdings.append(.with { $0.instrumentID = "ZZZ"; $0.quantity = 1 })
            case .riskTolerance: r.riskProfile.riskTolerance = 0
            case .strategicSum: r.mandate.strategicWeights[0].weight = 0.9
            case .unknownModel: r.model = "nope"
            case .unknownAssetClassCap: r.mandate.assetClassCaps = [.with { $0.id = "EQUITY"; $0.weight = 0.5 }]
            }
        }

        var expected: (RPCStatusCode, String) {
            switch self {
            case .noInstruments: (.invalidArgument, "the request has no instruments")
            case .emptyID: (.invalidArgument, "instrument 1 has an empty id")
            case .negativePrice: (.invalidArgument, "instrument 'A': price -3.0 is not a finite number from 1e-8 to 1e12")
            case .tinyPrice: (.invalidArgument, "instrument 'A': price 5e-324 is not a finite number from 1e-8 to 1e12")
            case .hugeHistoryPrice:
                (.invalidArgument, "instrument 'B': price_history[1] = 10000000000000.0 is not a finite number from 1e-8")
            case .unknownHolding: (.invalidArgument, "instrument 'ZZZ' is not among the request's instruments")
            case .riskTolerance: (.invalidArgument, "risk_tolerance 0 is not on the SRI scale 1...7")
            case .strategicSum: (.invalidArgument, "strategic weights sum to")
            case .unknownModel: (.failedPrecondition, "no model 'nope' is loaded")
            case .unknownAssetClassCap: (.invalidArgument, "unknown asset class 'EQUITY'")
            }
        }
    }

    @Test("Rebalance input errors name the problem", arguments: BadRebalance.allCases)
    func rebalanceErrors(_ bad: BadRebalance) async throws {
        let f = try Self.fixture()
        var request = Self.rebalanceRequest(instruments: ["A", "B", "C"])
        bad.apply(&request)
        let result = try await Self.call(f.service, .rebalance, request, as: Keel_V1_RebalanceResponse.self)
        guard case .failure(let status) = result else {
            Issue.record("expected \(bad.expected.0)")
            return
        }
        #expect(status.code == bad.expected.0)
        #expect(status.message.contains(bad.expected.1), "\(status.message)")
    }

    @Test("with no policy loaded Rebalance is FAILED_PRECONDITION")
    func noPolicy() async throws {
        let f = try Self.fixture(policy: false)
        let result = try await Self.call(f.service, .rebalance,
                                         Self.rebalanceRequest(instruments: ["A"]),
                                         as: Keel_V1_RebalanceResponse.self)
        #expect(result.failure == RPCStatus(.failedPrecondition, "no model 'policy' is loaded"))
    }

    @Test("PublishMarketData validates each update and keeps the latest price")
    func publishMarketData() async throws {
        let f = try Self.fixture()
        func update(_ id: String, _ price: Double, _ time: Int64) -> Keel_V1_PriceUpdate {
            var u = Keel_V1_PriceUpdate()
            u.instrumentID = id
            u.price = price
            u.timeUnixNanos = time
            return u
        }
        var batch = Keel_V1_PriceUpdateBatch()
        batch.updates = [
            update("AAA", 10, 1_000), update("", 5, 1), update("BBB", .nan, 1), update("CCC", -1, 1),
            update("AAA", 12, 2_000), update("AAA", 11, 1_500), update("DDD", 7, 0),
            // Denormal and absurd prices would make the history's log returns overflow.
            update("AAA", 5e-324, 2_500), update("AAA", 2e12, 2_600),
        ]
        let response = try await Self.call(f.service, .publishMarketData, batch,
                                           as: Keel_V1_PublishMarketDataResponse.self).get()
        #expect(response.accepted == 4)
        #expect(response.rejected == 5)
        #expect(response.errors.count == 5)
        #expect(response.errors[0] == "update 1: instrument_id is empty")
        #expect(response.errors[1].contains("BBB") && response.errors[1].contains("nan"))
        #expect(response.errors[2].contains("CCC"))
        #expect(response.errors[3] == "update 7 (AAA): price 5e-324 is not a finite number from 1e-8 to 1e12")
        #expect(response.errors[4] == "update 8 (AAA): price 2000000000000.0 is not a finite number from 1e-8 to 1e12")
        #expect(f.service.marketState.quote(for: "AAA") == MarketState.Quote(price: 12, timeUnixNanos: 2_000))
        #expect(f.service.marketState.quote(for: "BBB") == nil)
        let ddd = try #require(f.service.marketState.quote(for: "DDD"))
        #expect(ddd.price == 7 && ddd.timeUnixNanos > 1_700_000_000_000_000_000)
        #expect(f.service.marketState.count == 2)

        // The typed entry takes the updates directly.
        let typed = try await f.service.publishMarketData([update("EEE", 1, 1)], deadline: Self.deadline())
        #expect(typed.accepted == 1 && typed.rejected == 0)
    }

    @Test("health: overall, per service, unknown service, draining")
    func health() async throws {
        let f = try Self.fixture()
        func check(_ service: String, _ f: Fixture) async throws -> Result<Grpc_Health_V1_HealthCheckResponse, RPCStatus> {
            var request = Grpc_Health_V1_HealthCheckRequest()
            request.service = service
            return try await Self.call(f.service, .healthCheck, request, as: Grpc_Health_V1_HealthCheckResponse.self)
        }
        #expect(try await check("", f).get().status == .serving)
        #expect(try await check("keel.v1.Rebalancer", f).get().status == .serving)
        #expect(try await check("keel.v1.ModelAdmin", f).get().status == .serving)
        #expect(try await check("keel.v1.Approvals", f).get().status == .serving)
        #expect(try await check("keel.v1.Nope", f).failure?.code == .notFound)

        let empty = try Self.fixture(policy: false)
        #expect(try await check("keel.v1.Rebalancer", empty).get().status == .notServing)
        #expect(try await check("", empty).get().status == .serving)

        await f.service.gate.drain()
        #expect(try await check("", f).get().status == .notServing)
        let refused = try await Self.call(f.service, .rebalance,
                                          Self.rebalanceRequest(instruments: ["A"]),
                                          as: Keel_V1_RebalanceResponse.self)
        #expect(refused.failure?.code == .unavailable)
    }

    @Test("model administration: list, load by version or path, unload, and their errors")
    func modelAdmin() async throws {
        let f = try Self.fixture()
        try f.scratch.write("policy", 2, Fixtures.policy(weights: [2, 2, 2]))

        let listed = try await Self.call(f.service, .listModels, Keel_V1_ListModelsRequest(),
                                         as: Keel_V1_ListModelsResponse.self).get()
        #expect(listed.models.count == 1)
        let info = try #require(listed.models.first)
        #expect(info.ref.name == "policy" && info.ref.version == 1 && info.serving)
        #expect(info.kind == "policy")
        #expect(info.features == FeatureSet.names)
        #expect(info.metadata["keel.kind"] == "policy")
        #expect(info.loadedUnixNanos > 0)

        var load = Keel_V1_LoadModelRequest()
        load.name = "policy"
        load.version = 2
        let loaded = try await Self.call(f.service, .loadModel, load, as: Keel_V1_LoadModelResponse.self).get()
        #expect(loaded.model.ref.version == 2 && loaded.model.serving)

        var byPath = Keel_V1_LoadModelRequest()
        byPath.name = "policy"
        byPath.path = try f.scratch.external("new.onnx", Fixtures.policy(weights: [3, 3, 3]))
        let copied = try await Self.call(f.service, .loadModel, byPath, as: Keel_V1_LoadModelResponse.self).get()
        #expect(copied.model.ref.version == 3)
        #expect(copied.model.path == f.scratch.path("policy", 3))

        var neither = Keel_V1_LoadModelRequest()
        neither.name = "policy"
        #expect(try await Self.call(f.service, .loadModel, neither, as: Keel_V1_LoadModelResponse.self)
            .failure?.code == .invalidArgument)

        var unknown = Keel_V1_LoadModelRequest()
        unknown.name = "ghost"
        unknown.version = 1
        #expect(try await Self.call(f.service, .loadModel, unknown, as: Keel_V1_LoadModelResponse.self)
            .failure?.code == .notFound)

        var invalid = Keel_V1_LoadModelRequest()
        invalid.name = "policy"
        invalid.path = try f.scratch.external("bad.onnx", Fixtures.policy(kind: "oracle"))
        let refused = try await Self.call(f.service, .loadModel, invalid, as: Keel_V1_LoadModelResponse.self)
        #expect(refused.failure?.code == .failedPrecondition)
        #expect(refused.failure?.message.contains("keel.kind is 'oracle'") == true)

        var unload = Keel_V1_UnloadModelRequest()
        unload.name = "policy"
        unload.version = 3
        #expect(try await Self.call(f.service, .unloadModel, unload, as: Keel_V1_UnloadModelResponse.self)
            .get().unloaded == 1)
        #expect(f.repository.serving(name: "policy")?.version == 2)
        unload.version = 0  // v1 was unloaded by retention when v3 arrived: only v2 is left
        #expect(try await Self.call(f.service, .unloadModel, unload, as: Keel_V1_UnloadModelResponse.self)
            .get().unloaded == 1)
        #expect(try await Self.call(f.service, .unloadModel, unload, as: Keel_V1_UnloadModelResponse.self)
            .failure?.code == .notFound)
    }

    @Test("an empty HarvestTaxLosses request is INVALID_ARGUMENT naming what is missing")
    func emptyHarvestRequest() async throws {
        let f = try Self.fixture()
        let result = await f.service.handle(.harvestTaxLosses, request: [], deadline: Self.deadline())
        guard case .failure(let status) = result else {
            Issue.record("an empty request should fail")
            return
        }
        #expect(status.code == .invalidArgument)
        #expect(status.message.contains("tax is missing"), "\(status.message)")
    }

    @Test("the shipped policy rebalances 100 instruments soundly")
    func shippedPolicyHundredInstruments() async throws {
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: Fixtures.shippedPolicy)))
        let scratch = try ScratchRepository()
        try scratch.write("policy", 1, bytes)
        let repository = ModelRepository(root: scratch.root, metricsFactory: TestMetrics())
        repository.loadAll()
        let service = try KeelService(repository: repository, gate: RequestGate(maxConcurrent: 2, maxQueued: 8),
                                      metricsFactory: TestMetrics())
        let ids = (0..<100).map { "INST\($0)" }
        let response = try await service.rebalance(Self.rebalanceRequest(instruments: ids), deadline: Self.deadline())
        Self.expectSound(response, instruments: 100)
        #expect(response.model.sha256 == repository.serving(name: "policy")?.sha256)
    }

    @Test("Rebalance takes prices and history from PublishMarketData when the request has none")
    func marketStateFeedsTheEngine() async throws {
        let f = try Self.fixture()
        var request = Self.rebalanceRequest(instruments: ["A", "B"])
        var batch = Keel_V1_PriceUpdateBatch()
        let day: Int64 = 86_400_000_000_000
        for m in request.instruments {
            for point in m.priceHistory {
                batch.updates.append(.with { $0.instrumentID = m.id; $0.price = point.price; $0.timeUnixNanos = point.timeUnixNanos })
            }
            // Today: a first quote, then a newer one the same day that replaces it.
            let today = m.priceHistory.last!.timeUnixNanos + day
            batch.updates.append(.with { $0.instrumentID = m.id; $0.price = m.price * 1.5; $0.timeUnixNanos = today })
            batch.updates.append(.with { $0.instrumentID = m.id; $0.price = m.price; $0.timeUnixNanos = today + 1_000_000_000 })
        }
        _ = try await f.service.publishMarketData(batch.updates, deadline: Self.deadline())
        let inline = try await f.service.rebalance(request, deadline: Self.deadline())
        for i in request.instruments.indices {
            request.instruments[i].priceHistory = []
            request.instruments[i].price = 0
        }
        let streamed = try await f.service.rebalance(request, deadline: Self.deadline())
        Self.expectSound(streamed, instruments: 2)
        #expect(streamed.marketStateUnixNanos == 1_795_000_000_000_000_000 + 40 * day + 1_000_000_000)
        // Inline, the price is appended to the 40-day history: both paths see the same 41 prices.
        #expect(streamed.targets.map(\.policyScore) == inline.targets.map(\.policyScore))
        #expect(streamed.orders == inline.orders)
        // With its own price equal to the market's latest, and no history, the same.
        var priced = request
        for i in priced.instruments.indices { priced.instruments[i].price = Self.rebalanceRequest(instruments: ["A", "B"]).instruments[i].price }
        let withPrices = try await f.service.rebalance(priced, deadline: Self.deadline())
        #expect(withPrices.orders == inline.orders)
        // A price that differs from the market's latest is appended to the market's series instead.
        var moved = priced
        moved.instruments[0].price *= 1.01
        let differs = try await f.service.rebalance(moved, deadline: Self.deadline())
        #expect(differs.targets[0].policyScore != inline.targets[0].policyScore)

        request.instruments.append(.with { $0.id = "NEW" })
        let missing = try await Self.call(f.service, .rebalance, request, as: Keel_V1_RebalanceResponse.self)
        #expect(missing.failure?.code == .invalidArgument)
        #expect(missing.failure?.message.contains("'NEW') has no price") == true)
    }

    @Test("approvals: a first rebalance waits; decide once; the audit trail records both and verifies")
    func approvalsAndAudit() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("keel-audit-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("audit.sqlite").path
        let audit = try AuditLog(path: path, durability: .normal)
        var rules = Self.noApprovals
        rules.firstRebalance = true
        let f = try Self.fixture(audit: audit, rules: rules)
        let ids = ["AAA", "BBB", "CCC"]
        let first = try await f.service.rebalance(Self.rebalanceRequest(instruments: ids, account: "ACC-1"),
                                                  deadline: Self.deadline())
        #expect(first.status == .pendingApproval)
        #expect(first.approvalID.count == 36)
        #expect(first.summary.contains("approval.first_rebalance"))
        #expect(first.auditRecordHash.count == 64)

        // The same account is not new any more.
        let second = try await f.service.rebalance(Self.rebalanceRequest(instruments: ids, account: "ACC-1"),
                                                   deadline: Self.deadline())
        #expect(second.status == .executable)
        #expect(second.approvalID.isEmpty)

        let listed = try await f.service.listPending(.with { $0.accountID = "ACC-1" }, deadline: Self.deadline())
        #expect(listed.pending.map(\.approvalID) == [first.approvalID])
        #expect(listed.pending.first?.proposal.orders == first.orders)
        #expect(listed.pending.first?.triggeredRules.count == 1)
        let other = try await f.service.listPending(.with { $0.accountID = "ACC-2" }, deadline: Self.deadline())
        #expect(other.pending.isEmpty)

        let decided = try await f.service.decide(.with {
            $0.approvalID = first.approvalID; $0.approve = true; $0.advisorID = "adv-7"; $0.comment = "ok"
        }, deadline: Self.deadline())
        #expect(decided.status == .approved)
        #expect(decided.auditRecordHash.count == 64)
        do {
            _ = try await f.service.decide(.with {
                $0.approvalID = first.approvalID; $0.approve = false; $0.advisorID = "adv-8"
            }, deadline: Self.deadline())
            Issue.record("a second decision must be refused")
        } catch {
            #expect(error.code == .failedPrecondition)
            #expect(error.message.contains("already approved by 'adv-7'"))
        }
        do {
            _ = try await f.service.decide(.with { $0.approvalID = "nope"; $0.advisorID = "adv-7" },
                                           deadline: Self.deadline())
            Issue.record("an unknown approval must be NOT_FOUND")
        } catch {
            #expect(error.code == .notFound)
        }
        #expect(try await f.service.listPending(.init(), deadline: Self.deadline()).pending.isEmpty)

        audit.close()
        let verification = try AuditReader.verify(path: path)
        #expect(verification.records == 3)  // two decisions and one approval event
        #expect(verification.firstBroken == nil)
        #expect(verification.headHash == decided.auditRecordHash)
    }

    @Test("pending approvals survive a restart: rebuilt from the audit trail, decided ones stay decided")
    func approvalsRestoredFromTheAuditTrail() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("keel-audit-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("audit.sqlite").path
        var rules = Self.noApprovals
        rules.firstRebalance = true
        let first = try AuditLog(path: path, durability: .normal, checksPayloads: false)
        let before = try Self.fixture(audit: first, rules: rules)
        let waiting = try await before.service.rebalance(Self.rebalanceRequest(instruments: ["AAA", "BBB"], account: "ACC-R"),
                                                         deadline: Self.deadline())
        let rejected = try await before.service.rebalance(Self.rebalanceRequest(instruments: ["AAA", "BBB"], account: "ACC-S"),
                                                          deadline: Self.deadline())
        #expect(waiting.status == .pendingApproval && rejected.status == .pendingApproval)
        _ = try await before.service.decide(.with {
            $0.approvalID = rejected.approvalID; $0.approve = false; $0.advisorID = "adv-1"
        }, deadline: Self.deadline())
        first.close()

        // A new process: a new service on the same file.
        let second = try AuditLog(path: path, durability: .normal, checksPayloads: false)
        let after = try Self.fixture(audit: second, rules: rules)
        #expect(try after.service.restorePendingApprovals() == 1)
        let listed = try await after.service.listPending(.init(), deadline: Self.deadline()).pending
        #expect(listed.map(\.approvalID) == [waiting.approvalID])
        #expect(listed.first?.accountID == "ACC-R")
        #expect(listed.first?.triggeredRules.first?.hasPrefix("approval.first_rebalance") == true)
        #expect(listed.first?.proposal.orders == waiting.orders)
        #expect(listed.first?.proposal.auditRecordHash == waiting.auditRecordHash)
        do {
            _ = try await after.service.decide(.with {
                $0.approvalID = rejected.approvalID; $0.approve = true; $0.advisorID = "adv-2"
            }, deadline: Self.deadline())
            Issue.record("a decision rejected before the restart must stay rejected")
        } catch {
            #expect(error.code == .failedPrecondition)
        }
        let approved = try await after.service.decide(.with {
            $0.approvalID = waiting.approvalID; $0.approve = true; $0.advisorID = "adv-2"
        }, deadline: Self.deadline())
        #expect(approved.status == .approved)
        // Known accounts come back too: neither is "first" any more.
        let again = try await after.service.rebalance(Self.rebalanceRequest(instruments: ["AAA", "BBB"], account: "ACC-R"),
                                                      deadline: Self.deadline())
        #expect(again.status == .executable)
        second.close()
        #expect(try AuditReader.verify(path: path).isIntact)
    }

    @Test("pending decisions expire and cannot be decided afterwards")
    func approvalsExpire() async throws {
        var rules = Self.noApprovals
        rules.firstRebalance = true
        rules.expiry = .milliseconds(1)
        let f = try Self.fixture(rules: rules)
        var request = Self.rebalanceRequest(instruments: ["AAA", "BBB"], account: "ACC-9")
        request.portfolio.firstRebalance = true
        let pending = try await f.service.rebalance(request, deadline: Self.deadline())
        #expect(pending.status == .pendingApproval)
        try await Task.sleep(for: .milliseconds(20))
        #expect(try await f.service.listPending(.init(), deadline: Self.deadline()).pending.isEmpty)
        do {
            _ = try await f.service.decide(.with { $0.approvalID = pending.approvalID; $0.approve = true; $0.advisorID = "a" },
                                           deadline: Self.deadline())
            Issue.record("an expired approval must be refused")
        } catch {
            #expect(error.code == .failedPrecondition)
            #expect(error.message.contains("expired"))
        }
    }
}

extension Result {
    var failure: Failure? {
        if case .failure(let error) = self { return error }
        return nil
    }
}
