import KeelAPI
import KeelInference
import Logging
import Metrics
import SwiftProtobuf

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Keel's request handlers, independent of the transport.
///
/// - The typed methods (`rebalance(_:deadline:)`, ...) are what the gRPC
///   transport calls; each counts `keel_requests_total{method,code}` and times
///   its queue and inference phases.
/// - ``handle(_:request:deadline:)`` is the byte-level entry of the framed
///   transport: it decodes (INVALID_ARGUMENT on bad bytes), runs the same
///   handler and encodes, timing the decode and encode phases too.
///
/// Compute methods (Rebalance and, later, HarvestTaxLosses and
/// ForecastLiquidity) run through the ``RequestGate`` (admission control and
/// deadlines); the others only check the deadline and whether the server is
/// draining. Health answers even while draining (NOT_SERVING).
///
/// Thread safety: immutable; every collaborator is thread-safe. Create it
/// after bootstrapping `MetricsSystem` (its metrics are created in `init`),
/// or pass a factory.
public final class KeelService: RequestHandler {
    public let repository: ModelRepository
    public let gate: RequestGate
    public let marketState: MarketState
    /// The model Rebalance uses when the request names none.
    public let defaultPolicyModel: String
    private let logger: Logger
    private let metrics: ServiceMetrics

    /// What Rebalance says about itself until the engine lands (issue 4).
    public static let engineNote =
        "engine not implemented yet (issue 4): target weights are a softmax of the policy's raw scores; "
        + "no constraints, orders, compliance or audit"

    public init(repository: ModelRepository, gate: RequestGate, marketState: MarketState = MarketState(),
                defaultPolicyModel: String = "policy", logger: Logger? = nil,
                metricsFactory: (any MetricsFactory)? = nil)
    {
        self.repository = repository
        self.gate = gate
        self.marketState = marketState
        self.defaultPolicyModel = defaultPolicyModel
        self.logger = logger ?? Logger(label: "keel.service")
        self.metrics = ServiceMetrics(factory: metricsFactory ?? MetricsSystem.factory)
    }

    // MARK: - Byte-level entry (RequestHandler)

    public func handle(_ method: RPCMethod, request: [UInt8], deadline: ContinuousClock.Instant) async
        -> Result<[UInt8], RPCStatus>
    {
        let m = metrics[method]
        let result: Result<[UInt8], RPCStatus>
        switch method {
        case .rebalance:
            result = await serve(m, request, Keel_V1_RebalanceRequest.self) { r throws(RPCStatus) in
                try await self.performRebalance(r, deadline: deadline)
            }
        case .harvestTaxLosses:
            result = await serve(m, request, Keel_V1_HarvestTaxLossesRequest.self) { r throws(RPCStatus) in
                try self.performHarvestTaxLosses(r)
            }
        case .forecastLiquidity:
            result = await serve(m, request, Keel_V1_ForecastLiquidityRequest.self) { r throws(RPCStatus) in
                try self.performForecastLiquidity(r)
            }
        case .publishMarketData:
            result = await serve(m, request, Keel_V1_PriceUpdateBatch.self) { r throws(RPCStatus) in
                try self.performPublishMarketData(r.updates, deadline: deadline)
            }
        case .listModels:
            result = await serve(m, request, Keel_V1_ListModelsRequest.self) { r throws(RPCStatus) in
                try self.performListModels(r, deadline: deadline)
            }
        case .loadModel:
            result = await serve(m, request, Keel_V1_LoadModelRequest.self) { r throws(RPCStatus) in
                try self.performLoadModel(r, deadline: deadline)
            }
        case .unloadModel:
            result = await serve(m, request, Keel_V1_UnloadModelRequest.self) { r throws(RPCStatus) in
                try self.performUnloadModel(r, deadline: deadline)
            }
        case .listPending:
            result = await serve(m, request, Keel_V1_ListPendingRequest.self) { r throws(RPCStatus) in
                try self.performListPending(r)
            }
        case .decide:
            result = await serve(m, request, Keel_V1_DecideRequest.self) { r throws(RPCStatus) in
                try self.performDecide(r)
            }
        case .healthCheck:
            result = await serve(m, request, Grpc_Health_V1_HealthCheckRequest.self) { r throws(RPCStatus) in
                try self.performHealthCheck(r)
            }
        }
        switch result {
        case .success: m.count(.ok)
        case .failure(let status): m.count(status.code)
        }
        return result
    }

    /// Decode, call, encode, timing decode and encode.
    private func serve<Request: SwiftProtobuf.Message, Response: SwiftProtobuf.Message>(
        _ m: ServiceMetrics.PerMethod, _ bytes: [UInt8], _ type: Request.Type,
        _ call: (Request) async throws(RPCStatus) -> Response
    ) async -> Result<[UInt8], RPCStatus> {
        let decodeStart = ContinuousClock.now
        let request: Request
        do {
            request = try Request(serializedBytes: bytes)
        } catch {
            return .failure(RPCStatus(.invalidArgument, "cannot decode \(Request.protoMessageName): \(error)"))
        }
        m.decode.record(from: decodeStart, to: .now)
        let response: Response
        do throws(RPCStatus) {
            response = try await call(request)
        } catch {
            return .failure(error)
        }
        let encodeStart = ContinuousClock.now
        do {
            let out: [UInt8] = try response.serializedBytes()
            m.encode.record(from: encodeStart, to: .now)
            return .success(out)
        } catch {
            logger.error("cannot encode a response", metadata: ["type": "\(Response.protoMessageName)",
                                                                 "error": "\(error)"])
            return .failure(RPCStatus(.internal, "cannot encode \(Response.protoMessageName): \(error)"))
        }
    }

    // MARK: - Typed entries (what the gRPC transport calls)

    /// keel.v1.Rebalancer/Rebalance.
    public func rebalance(_ request: Keel_V1_RebalanceRequest, deadline: ContinuousClock.Instant)
        async throws(RPCStatus) -> Keel_V1_RebalanceResponse
    {
        try await counted(.rebalance) { () async throws(RPCStatus) in
            try await performRebalance(request, deadline: deadline)
        }
    }

    /// keel.v1.Rebalancer/HarvestTaxLosses (issue 6).
    public func harvestTaxLosses(_ request: Keel_V1_HarvestTaxLossesRequest, deadline: ContinuousClock.Instant)
        async throws(RPCStatus) -> Keel_V1_HarvestTaxLossesResponse
    {
        try await counted(.harvestTaxLosses) { () async throws(RPCStatus) in try performHarvestTaxLosses(request) }
    }

    /// keel.v1.Rebalancer/ForecastLiquidity (issue 6).
    public func forecastLiquidity(_ request: Keel_V1_ForecastLiquidityRequest, deadline: ContinuousClock.Instant)
        async throws(RPCStatus) -> Keel_V1_ForecastLiquidityResponse
    {
        try await counted(.forecastLiquidity) { () async throws(RPCStatus) in try performForecastLiquidity(request) }
    }

    /// keel.v1.Rebalancer/PublishMarketData: the updates of one gRPC stream
    /// (or one framed `PriceUpdateBatch`).
    public func publishMarketData(_ updates: [Keel_V1_PriceUpdate], deadline: ContinuousClock.Instant)
        async throws(RPCStatus) -> Keel_V1_PublishMarketDataResponse
    {
        try await counted(.publishMarketData) { () async throws(RPCStatus) in
            try performPublishMarketData(updates, deadline: deadline)
        }
    }

    /// keel.v1.ModelAdmin/ListModels.
    public func listModels(_ request: Keel_V1_ListModelsRequest, deadline: ContinuousClock.Instant)
        async throws(RPCStatus) -> Keel_V1_ListModelsResponse
    {
        try await counted(.listModels) { () async throws(RPCStatus) in try performListModels(request, deadline: deadline) }
    }

    /// keel.v1.ModelAdmin/LoadModel.
    public func loadModel(_ request: Keel_V1_LoadModelRequest, deadline: ContinuousClock.Instant)
        async throws(RPCStatus) -> Keel_V1_LoadModelResponse
    {
        try await counted(.loadModel) { () async throws(RPCStatus) in try performLoadModel(request, deadline: deadline) }
    }

    /// keel.v1.ModelAdmin/UnloadModel.
    public func unloadModel(_ request: Keel_V1_UnloadModelRequest, deadline: ContinuousClock.Instant)
        async throws(RPCStatus) -> Keel_V1_UnloadModelResponse
    {
        try await counted(.unloadModel) { () async throws(RPCStatus) in
            try performUnloadModel(request, deadline: deadline)
        }
    }

    /// keel.v1.Approvals/ListPending (issue 4).
    public func listPending(_ request: Keel_V1_ListPendingRequest, deadline: ContinuousClock.Instant)
        async throws(RPCStatus) -> Keel_V1_ListPendingResponse
    {
        try await counted(.listPending) { () async throws(RPCStatus) in try performListPending(request) }
    }

    /// keel.v1.Approvals/Decide (issue 4).
    public func decide(_ request: Keel_V1_DecideRequest, deadline: ContinuousClock.Instant)
        async throws(RPCStatus) -> Keel_V1_DecideResponse
    {
        try await counted(.decide) { () async throws(RPCStatus) in try performDecide(request) }
    }

    /// grpc.health.v1.Health/Check.
    public func healthCheck(_ request: Grpc_Health_V1_HealthCheckRequest, deadline: ContinuousClock.Instant)
        async throws(RPCStatus) -> Grpc_Health_V1_HealthCheckResponse
    {
        try await counted(.healthCheck) { () async throws(RPCStatus) in try performHealthCheck(request) }
    }

    private func counted<T>(_ method: RPCMethod, _ body: () async throws(RPCStatus) -> T) async throws(RPCStatus)
        -> T
    {
        let m = metrics[method]
        do throws(RPCStatus) {
            let result = try await body()
            m.count(.ok)
            return result
        } catch {
            m.count(error.code)
            throw error
        }
    }

    // MARK: - Rebalance

    private func performRebalance(_ request: Keel_V1_RebalanceRequest, deadline: ContinuousClock.Instant)
        async throws(RPCStatus) -> Keel_V1_RebalanceResponse
    {
        let m = metrics[.rebalance]
        let arrived = ContinuousClock.now
        return try await gate.run(deadline: deadline) { () throws(RPCStatus) -> Keel_V1_RebalanceResponse in
            let start = ContinuousClock.now
            m.queue.record(from: arrived, to: start)
            let response = try self.rebalanceNow(request)
            m.inference.record(from: start, to: .now)
            return response
        }
    }

    /// Engine-less Rebalance: the policy's raw score per instrument and a
    /// softmax of the scores as target weights. No lock is held while the
    /// model runs (the session is checked out of the model's pool).
    private func rebalanceNow(_ request: Keel_V1_RebalanceRequest) throws(RPCStatus) -> Keel_V1_RebalanceResponse {
        let name = request.model.isEmpty ? defaultPolicyModel : request.model
        guard let model = repository.serving(name: name) else {
            throw RPCStatus(.failedPrecondition, "no model '\(name)' is loaded")
        }
        guard model.kind == .policy else {
            throw RPCStatus(.failedPrecondition,
                            "model '\(name)' is a \(model.kind) model; Rebalance needs a policy model")
        }
        let instruments = request.instruments
        let rows = instruments.count
        guard rows > 0 else { throw RPCStatus(.invalidArgument, "the request has no instruments") }
        let width = model.featureCount
        let features = request.features
        let (expected, overflow) = rows.multipliedReportingOverflow(by: width)
        guard !overflow, features.count == expected else {
            throw RPCStatus(.invalidArgument,
                            "the request has \(features.count) features for \(rows) instruments; model '\(name)' "
                                + "v\(model.version) takes \(width) per instrument (\(expected) expected, "
                                + "row-major in keel.features order)")
        }
        if let bad = features.firstIndex(where: { !$0.isFinite }) {
            let column = bad % width
            throw RPCStatus(.invalidArgument,
                            "feature '\(model.featureNames[column])' of instrument \(bad / width) "
                                + "('\(instruments[bad / width].id)') is not finite (\(features[bad]))")
        }
        if let blank = instruments.firstIndex(where: { $0.id.isEmpty }) {
            throw RPCStatus(.invalidArgument, "instrument \(blank) has an empty id")
        }

        let outputs: [Tensor]
        do {
            outputs = try model.withSession { session in try session.run(features: features, rows: rows) }
        } catch {
            logger.error("inference failed", metadata: ["model": "\(name)", "version": "\(model.version)",
                                                        "error": "\(error)"])
            throw RPCStatus(.internal, "inference with model '\(name)' v\(model.version) failed: \(error)")
        }
        guard let scoreTensor = outputs.first, scoreTensor.shape.first == rows, scoreTensor.values.count >= rows,
              scoreTensor.values.count % rows == 0
        else {
            throw RPCStatus(.internal, "model '\(name)' v\(model.version) returned output shape "
                + "\(outputs.first?.shape ?? []) for \(rows) instruments; expected one score per instrument")
        }
        let scores = scoreTensor.values
        let stride = scores.count / rows

        var response = Keel_V1_RebalanceResponse()
        try withUnsafeTemporaryAllocation(of: Double.self, capacity: rows) { weights throws(RPCStatus) in
            // Softmax over instruments, shifted by the maximum for stability.
            var highest = -Double.infinity
            for i in 0..<rows {
                let score = Double(scores[i &* stride])
                guard score.isFinite else {
                    throw RPCStatus(.invalidArgument,
                                    "model '\(name)' v\(model.version) gave a non-finite score for instrument "
                                        + "'\(instruments[i].id)'; check the features' scale")
                }
                highest = Swift.max(highest, score)
            }
            var total = 0.0
            for i in 0..<rows {
                let e = exp(Double(scores[i &* stride]) - highest)
                weights[i] = e
                total += e
            }
            var targets: [Keel_V1_TargetWeight] = []
            targets.reserveCapacity(rows)
            for i in 0..<rows {
                var target = Keel_V1_TargetWeight()
                target.instrumentID = instruments[i].id
                target.policyScore = Double(scores[i &* stride])
                target.targetWeight = weights[i] / total
                targets.append(target)
            }
            response.targets = targets
        }
        response.requestID = request.requestID
        response.decisionID = DecisionID.make()
        response.status = .noTrade
        response.model = model.ref
        response.note = Self.engineNote
        return response
    }

    // MARK: - Not yet implemented (issues 4 and 6)

    private func performHarvestTaxLosses(_ request: Keel_V1_HarvestTaxLossesRequest) throws(RPCStatus)
        -> Keel_V1_HarvestTaxLossesResponse
    {
        throw RPCStatus(.unimplemented, "HarvestTaxLosses arrives with issue 6 (tax-loss harvesting)")
    }

    private func performForecastLiquidity(_ request: Keel_V1_ForecastLiquidityRequest) throws(RPCStatus)
        -> Keel_V1_ForecastLiquidityResponse
    {
        throw RPCStatus(.unimplemented, "ForecastLiquidity arrives with issue 6 (liquidity forecasting)")
    }

    private func performListPending(_ request: Keel_V1_ListPendingRequest) throws(RPCStatus)
        -> Keel_V1_ListPendingResponse
    {
        throw RPCStatus(.unimplemented, "ListPending arrives with issue 4 (approvals)")
    }

    private func performDecide(_ request: Keel_V1_DecideRequest) throws(RPCStatus) -> Keel_V1_DecideResponse {
        throw RPCStatus(.unimplemented, "Decide arrives with issue 4 (approvals)")
    }

    // MARK: - Market data

    private func performPublishMarketData(_ updates: [Keel_V1_PriceUpdate], deadline: ContinuousClock.Instant)
        throws(RPCStatus) -> Keel_V1_PublishMarketDataResponse
    {
        try admitLight(deadline)
        return marketState.apply(updates)
    }

    // MARK: - Model administration

    private func performListModels(_ request: Keel_V1_ListModelsRequest, deadline: ContinuousClock.Instant)
        throws(RPCStatus) -> Keel_V1_ListModelsResponse
    {
        try admitLight(deadline)
        var response = Keel_V1_ListModelsResponse()
        response.models = repository.list().map { status in
            var info = Self.info(status.model, serving: status.isServing)
            if status.isServing, let failure = repository.lastError(name: status.model.name) {
                info.lastError = "version \(failure.version): \(failure.reason)"
            }
            return info
        }
        return response
    }

    private func performLoadModel(_ request: Keel_V1_LoadModelRequest, deadline: ContinuousClock.Instant)
        throws(RPCStatus) -> Keel_V1_LoadModelResponse
    {
        try admitLight(deadline)
        guard !request.name.isEmpty else { throw RPCStatus(.invalidArgument, "LoadModel needs a model name") }
        guard request.version >= 0 else {
            throw RPCStatus(.invalidArgument, "model version must be positive, got \(request.version)")
        }
        if request.version > 0 && !request.path.isEmpty {
            throw RPCStatus(.invalidArgument, "LoadModel takes a version or a path, not both")
        }
        let loaded: LoadedModel
        do throws(ModelRepositoryError) {
            if request.version > 0 {
                loaded = try repository.load(name: request.name, version: request.version)
            } else if !request.path.isEmpty {
                loaded = try repository.load(name: request.name, fromPath: request.path)
            } else {
                throw ModelRepositoryError(.invalidArgument, "LoadModel needs a version or a path")
            }
        } catch {
            throw Self.status(error)
        }
        var response = Keel_V1_LoadModelResponse()
        response.model = Self.info(loaded, serving: repository.serving(name: loaded.name) === loaded)
        return response
    }

    private func performUnloadModel(_ request: Keel_V1_UnloadModelRequest, deadline: ContinuousClock.Instant)
        throws(RPCStatus) -> Keel_V1_UnloadModelResponse
    {
        try admitLight(deadline)
        guard !request.name.isEmpty else { throw RPCStatus(.invalidArgument, "UnloadModel needs a model name") }
        var response = Keel_V1_UnloadModelResponse()
        do throws(ModelRepositoryError) {
            response.unloaded = Int32(clamping: try repository.unload(name: request.name, version: request.version))
        } catch {
            throw Self.status(error)
        }
        return response
    }

    static func status(_ error: ModelRepositoryError) -> RPCStatus {
        switch error.kind {
        case .notFound: RPCStatus(.notFound, error.message)
        case .invalidArgument: RPCStatus(.invalidArgument, error.message)
        case .invalidModel: RPCStatus(.failedPrecondition, error.message)
        case .io: RPCStatus(.failedPrecondition, error.message)
        }
    }

    /// The API's description of a loaded version.
    public static func info(_ model: LoadedModel, serving: Bool) -> Keel_V1_ModelInfo {
        var info = Keel_V1_ModelInfo()
        info.ref = model.ref
        info.kind = model.kind.rawValue
        info.features = model.featureNames
        info.path = model.path
        info.loadedUnixNanos = model.loadedUnixNanos
        info.serving = serving
        info.metadata = model.metadata
        return info
    }

    // MARK: - Health

    private func performHealthCheck(_ request: Grpc_Health_V1_HealthCheckRequest) throws(RPCStatus)
        -> Grpc_Health_V1_HealthCheckResponse
    {
        let up = !gate.isDraining
        var response = Grpc_Health_V1_HealthCheckResponse()
        switch request.service {
        case "", "keel.v1.ModelAdmin", "keel.v1.Approvals":
            response.status = up ? .serving : .notServing
        case "keel.v1.Rebalancer":
            response.status = up && repository.serving(name: defaultPolicyModel)?.kind == .policy
                ? .serving : .notServing
        default:
            throw RPCStatus(.notFound, "unknown service '\(request.service)'")
        }
        return response
    }

    // MARK: - Helpers

    /// Admission for the light methods that bypass the gate.
    private func admitLight(_ deadline: ContinuousClock.Instant) throws(RPCStatus) {
        if gate.isDraining { throw RPCStatus(.unavailable, "server is shutting down") }
        if ContinuousClock.now >= deadline {
            throw RPCStatus(.deadlineExceeded, "deadline exceeded before the request could start")
        }
    }
}
