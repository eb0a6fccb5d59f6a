import Foundation
import KeelAPI
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

    static func fixture(policy: Bool = true, maxConcurrent: Int = 2) throws -> Fixture {
        let scratch = try ScratchRepository()
        if policy { try scratch.write("policy", 1, Fixtures.policy(weights: weights, bias: bias)) }
        let metrics = TestMetrics()
        let repository = ModelRepository(root: scratch.root, metricsFactory: metrics)
        repository.loadAll()
        let service = KeelService(repository: repository, gate: RequestGate(maxConcurrent: maxConcurrent, maxQueued: 8),
                                  metricsFactory: metrics)
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

    static func rebalanceRequest(instruments: [String], features: [Float], model: String = "")
        -> Keel_V1_RebalanceRequest
    {
        var request = Keel_V1_RebalanceRequest()
        request.requestID = "req-42"
        request.model = model
        request.instruments = instruments.map { id in
            var i = Keel_V1_Instrument()
            i.id = id
            i.price = 100
            return i
        }
        request.features = features
        return request
    }

    @Test("Rebalance round trip: softmax weights sum to 1, scores and model ref are right")
    func rebalanceRoundTrip() async throws {
        let f = try Self.fixture()
        let ids = ["AAA", "BBB", "CCC", "DDD"]
        let x: [Float] = [0.1, 0.2, 0.3,  -1, 0, 1,  2, 2, 2,  0, 0, 0]
        let result = try await Self.call(f.service, .rebalance, Self.rebalanceRequest(instruments: ids, features: x),
                                         as: Keel_V1_RebalanceResponse.self)
        let response = try result.get()
        #expect(response.requestID == "req-42")
        #expect(response.status == .noTrade)
        #expect(response.note == KeelService.engineNote)
        #expect(response.decisionID.count == 36)
        #expect(UUID(uuidString: response.decisionID) != nil)
        #expect(Array(response.decisionID)[14] == "4")
        let model = try #require(f.repository.serving(name: "policy"))
        #expect(response.model.name == "policy")
        #expect(response.model.version == 1)
        #expect(response.model.sha256 == model.sha256)

        #expect(response.targets.map(\.instrumentID) == ids)
        let expected = (0..<4).map { Fixtures.score(x[($0 * 3)..<($0 * 3 + 3)], weights: Self.weights, bias: Self.bias) }
        for (target, score) in zip(response.targets, expected) {
            #expect(abs(target.policyScore - score) < 1e-5)
        }
        let total = response.targets.reduce(0) { $0 + $1.targetWeight }
        #expect(abs(total - 1) < 1e-9)
        let denominator = expected.reduce(0) { $0 + exp($1) }
        for (target, score) in zip(response.targets, expected) {
            #expect(abs(target.targetWeight - exp(score) / denominator) < 1e-6)
        }
        // A second call gets a different decision id.
        let again = try await Self.call(f.service, .rebalance, Self.rebalanceRequest(instruments: ids, features: x),
                                        as: Keel_V1_RebalanceResponse.self).get()
        #expect(again.decisionID != response.decisionID)

        #expect(f.metrics.value("keel_requests_total", [("method", "Rebalance"), ("code", "OK")]) == 2)
        for phase in ["decode", "queue", "inference", "encode"] {
            #expect(f.metrics.samples("keel_request_duration_seconds", [("method", "Rebalance"), ("phase", phase)]) == 2,
                    "phase \(phase)")
        }
    }

    @Test("the typed method gives the same answer as the byte-level one")
    func typedRebalance() async throws {
        let f = try Self.fixture()
        let request = Self.rebalanceRequest(instruments: ["A", "B"], features: [1, 2, 3, 4, 5, 6])
        let response = try await f.service.rebalance(request, deadline: Self.deadline())
        #expect(response.targets.count == 2)
        #expect(abs(response.targets.reduce(0) { $0 + $1.targetWeight } - 1) < 1e-9)
        #expect(f.metrics.value("keel_requests_total", [("method", "Rebalance"), ("code", "OK")]) == 1)
    }

    @Test("requests keep succeeding while models are swapped underneath them")
    func swapUnderLoad() async throws {
        let f = try Self.fixture(maxConcurrent: 4)
        let versions: [[Float]] = (0..<8).map { v in [Float(v), 1, -1] }
        let shas = Locked(Set([try #require(f.repository.serving(name: "policy")).sha256]))
        let stop = Locked(false)
        let request = Self.rebalanceRequest(instruments: ["A", "B", "C"], features: [1, 2, 3, 4, 5, 6, 7, 8, 9])
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
                        if abs(response.targets.reduce(0) { $0 + $1.targetWeight } - 1) > 1e-9 {
                            failures.append(RPCStatus(.internal, "weights do not sum to 1"))
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

    @Test("Rebalance input errors", arguments: [
        (["A", "B"], [Float](repeating: 0, count: 5), "", RPCStatusCode.invalidArgument,
         "the request has 5 features for 2 instruments"),
        ([], [], "", .invalidArgument, "the request has no instruments"),
        (["A"], [0, .nan, 0], "", .invalidArgument, "feature 'f1' of instrument 0 ('A') is not finite"),
        (["A", ""], [Float](repeating: 0, count: 6), "", .invalidArgument, "instrument 1 has an empty id"),
        (["A"], [0, 0, 0], "nope", .failedPrecondition, "no model 'nope' is loaded"),
    ])
    func rebalanceErrors(ids: [String], features: [Float], model: String, code: RPCStatusCode, message: String)
        async throws
    {
        let f = try Self.fixture()
        let result = try await Self.call(f.service, .rebalance,
                                         Self.rebalanceRequest(instruments: ids, features: features, model: model),
                                         as: Keel_V1_RebalanceResponse.self)
        guard case .failure(let status) = result else {
            Issue.record("expected \(code)")
            return
        }
        #expect(status.code == code)
        #expect(status.message.contains(message), "\(status.message)")
    }

    @Test("wrong feature count names the numbers")
    func wrongFeatureCount() async throws {
        let f = try Self.fixture()
        let result = try await Self.call(f.service, .rebalance,
                                         Self.rebalanceRequest(instruments: ["A", "B"], features: [1, 2, 3, 4]),
                                         as: Keel_V1_RebalanceResponse.self)
        guard case .failure(let status) = result else {
            Issue.record("expected INVALID_ARGUMENT")
            return
        }
        #expect(status == RPCStatus(.invalidArgument,
                                    "the request has 4 features for 2 instruments; model 'policy' v1 takes 3 per "
                                        + "instrument (6 expected, row-major in keel.features order)"))
    }

    @Test("with no policy loaded Rebalance is FAILED_PRECONDITION")
    func noPolicy() async throws {
        let f = try Self.fixture(policy: false)
        let result = try await Self.call(f.service, .rebalance,
                                         Self.rebalanceRequest(instruments: ["A"], features: [1, 2, 3]),
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
        ]
        let response = try await Self.call(f.service, .publishMarketData, batch,
                                           as: Keel_V1_PublishMarketDataResponse.self).get()
        #expect(response.accepted == 4)
        #expect(response.rejected == 3)
        #expect(response.errors.count == 3)
        #expect(response.errors[0] == "update 1: instrument_id is empty")
        #expect(response.errors[1].contains("BBB") && response.errors[1].contains("nan"))
        #expect(response.errors[2].contains("CCC"))
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
                                          Self.rebalanceRequest(instruments: ["A"], features: [1, 2, 3]),
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
        #expect(info.features == ["f0", "f1", "f2"])
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

    @Test("methods of later issues are UNIMPLEMENTED and say which issue")
    func unimplemented() async throws {
        let f = try Self.fixture()
        let cases: [(RPCMethod, String)] = [
            (.harvestTaxLosses, "issue 6"), (.forecastLiquidity, "issue 6"), (.listPending, "issue 4"),
            (.decide, "issue 4"),
        ]
        for (method, issue) in cases {
            let result = await f.service.handle(method, request: [], deadline: Self.deadline())
            guard case .failure(let status) = result else {
                Issue.record("\(method) should fail")
                continue
            }
            #expect(status.code == .unimplemented)
            #expect(status.message.contains(issue), "\(status.message)")
        }
    }

    @Test("a rebalance on the shipped policy with 100 instruments; handler overhead is reported")
    func shippedPolicyHundredInstruments() async throws {
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: Fixtures.shippedPolicy)))
        let scratch = try ScratchRepository()
        try scratch.write("policy", 1, bytes)
        let repository = ModelRepository(root: scratch.root, metricsFactory: TestMetrics())
        repository.loadAll()
        let service = KeelService(repository: repository, gate: RequestGate(maxConcurrent: 2, maxQueued: 8),
                                  metricsFactory: TestMetrics())
        let n = 100
        let ids = (0..<n).map { "INST\($0)" }
        let x = (0..<(n * 12)).map { Float(($0 * 37) % 23) / 23 - 0.5 }
        let request = Self.rebalanceRequest(instruments: ids, features: x)
        let response = try await service.rebalance(request, deadline: Self.deadline())
        #expect(response.targets.count == n)
        #expect(abs(response.targets.reduce(0) { $0 + $1.targetWeight } - 1) < 1e-9)

        // Rough comparison (debug build, not a benchmark): typed handler vs bare inference.
        let model = try #require(repository.serving(name: "policy"))
        let rounds = 300
        var bare: [Duration] = []
        var handler: [Duration] = []
        for _ in 0..<rounds {
            let t0 = ContinuousClock.now
            _ = try model.withSession { try $0.run(features: x, rows: n) }
            let t1 = ContinuousClock.now
            _ = try await service.rebalance(request, deadline: Self.deadline())
            let t2 = ContinuousClock.now
            bare.append(t1 - t0)
            handler.append(t2 - t1)
        }
        let medianBare = bare.sorted()[rounds / 2]
        let medianHandler = handler.sorted()[rounds / 2]
        print("rebalance, 100 instruments: bare inference median \(medianBare), typed handler median \(medianHandler)")
        #expect(medianHandler < .milliseconds(5))
    }
}

extension Result {
    var failure: Failure? {
        if case .failure(let error) = self { return error }
        return nil
    }
}
