import KeelAPI
import KeelAudit
import KeelInference
import KeelPortfolio
import Logging
import Metrics
import SwiftProtobuf
import Synchronization

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
/// Compute methods (Rebalance, HarvestTaxLosses and ForecastLiquidity)
/// run through the ``RequestGate`` (admission control and
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
    /// The rebalancing engine (pure domain).
    public let engine: RebalanceEngine
    /// The audit trail; nil runs without one (tests and tools only: `keel
    /// serve` always has one). Every decision and approval event is
    /// committed to it before its response is sent.
    public let audit: AuditLog?
    public let approvalRules: ApprovalRules
    /// Decisions waiting for an advisor.
    public let approvals = ApprovalBook<Keel_V1_RebalanceResponse>()
    /// Accounts with at least one decision (the "first rebalance" rule).
    private let accountsSeen: Mutex<Set<String>>
    /// Instruments harvested per household: blocked from purchase for 31 days.
    public let harvestMemory = HarvestMemory()
    private let logger: Logger
    private let metrics: ServiceMetrics

    public init(repository: ModelRepository, gate: RequestGate, marketState: MarketState = MarketState(),
                defaultPolicyModel: String = "policy", engine: RebalanceEngine = RebalanceEngine(),
                audit: AuditLog? = nil, approvalRules: ApprovalRules = ApprovalRules(), logger: Logger? = nil,
                metricsFactory: (any MetricsFactory)? = nil) throws(AuditError)
    {
        self.repository = repository
        self.gate = gate
        self.marketState = marketState
        self.defaultPolicyModel = defaultPolicyModel
        self.engine = engine
        self.audit = audit
        self.approvalRules = approvalRules
        self.accountsSeen = Mutex(try audit?.accountsWithDecisions() ?? [])
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
            // Not through `serve`: the response is encoded once, inside, for the
            // audit record and the wire alike.
            let decodeStart = ContinuousClock.now
            if let r = try? Keel_V1_RebalanceRequest(fastSerializedBytes: request) {
                m.decode.record(from: decodeStart, to: .now)
                do throws(RPCStatus) {
                    result = .success(try await performRebalance(r, bytes: request, deadline: deadline))
                } catch {
                    result = .failure(error)
                }
            } else {
                result = .failure(Self.undecodable(Keel_V1_RebalanceRequest.self, request))
            }
        case .harvestTaxLosses:
            result = await serve(m, request, Keel_V1_HarvestTaxLossesRequest.self) { r throws(RPCStatus) in
                try await self.answerHarvestTaxLosses(r, deadline: deadline)
            }
        case .forecastLiquidity:
            result = await serve(m, request, Keel_V1_ForecastLiquidityRequest.self) { r throws(RPCStatus) in
                try await self.gated(.forecastLiquidity, deadline: deadline) { () throws(RPCStatus) in
                    try self.performForecastLiquidity(r)
                }
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
                try await self.performListPending(r, deadline: deadline)
            }
        case .decide:
            result = await serve(m, request, Keel_V1_DecideRequest.self) { r throws(RPCStatus) in
                try await self.performDecide(r, deadline: deadline)
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

    /// INVALID_ARGUMENT for bytes that do not decode as `type`, with the decoder's reason.
    static func undecodable<Request: SwiftProtobuf.Message>(_ type: Request.Type, _ bytes: [UInt8]) -> RPCStatus {
        do {
            _ = try Request(serializedBytes: bytes)
            return RPCStatus(.invalidArgument, "cannot decode \(Request.protoMessageName)")
        } catch {
            return RPCStatus(.invalidArgument, "cannot decode \(Request.protoMessageName): \(error)")
        }
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
            return .failure(Self.undecodable(Request.self, bytes))
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
            let bytes = try await performRebalance(request, bytes: nil, deadline: deadline)
            do {
                return try Keel_V1_RebalanceResponse(serializedBytes: bytes)
            } catch {
                throw RPCStatus(.internal, "cannot decode the encoded response: \(error)")
            }
        }
    }

    /// keel.v1.Rebalancer/HarvestTaxLosses (issue 6).
    public func harvestTaxLosses(_ request: Keel_V1_HarvestTaxLossesRequest, deadline: ContinuousClock.Instant)
        async throws(RPCStatus) -> Keel_V1_HarvestTaxLossesResponse
    {
        try await counted(.harvestTaxLosses) { () async throws(RPCStatus) in
            try await answerHarvestTaxLosses(request, deadline: deadline)
        }
    }

    /// keel.v1.Rebalancer/ForecastLiquidity (issue 6).
    public func forecastLiquidity(_ request: Keel_V1_ForecastLiquidityRequest, deadline: ContinuousClock.Instant)
        async throws(RPCStatus) -> Keel_V1_ForecastLiquidityResponse
    {
        try await counted(.forecastLiquidity) { () async throws(RPCStatus) in
            try await gated(.forecastLiquidity, deadline: deadline) { () throws(RPCStatus) in
                try performForecastLiquidity(request)
            }
        }
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
        try await counted(.listPending) { () async throws(RPCStatus) in
            try await performListPending(request, deadline: deadline)
        }
    }

    /// keel.v1.Approvals/Decide (issue 4).
    public func decide(_ request: Keel_V1_DecideRequest, deadline: ContinuousClock.Instant)
        async throws(RPCStatus) -> Keel_V1_DecideResponse
    {
        try await counted(.decide) { () async throws(RPCStatus) in try await performDecide(request, deadline: deadline) }
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

    /// Runs the engine through the gate, commits the audit record, settles
    /// approval; only then are the response's bytes returned. The response is
    /// encoded once: the audit record carries those bytes as its `response`
    /// field, and the wire gets them with `audit_record_hash` appended (a
    /// protobuf message may be extended by appending fields).
    private func performRebalance(_ request: Keel_V1_RebalanceRequest, bytes: [UInt8]?,
                                  deadline: ContinuousClock.Instant)
        async throws(RPCStatus) -> [UInt8]
    {
        let m = metrics[.rebalance]
        let arrived = ContinuousClock.now
        let (decided, record, pending, harvest) = try await gated(.rebalance, deadline: deadline, arrived: arrived) {
            () throws(RPCStatus) -> (Keel_V1_RebalanceResponse, Keel_V1_DecisionRecord?, PendingPlan?, Harvest?) in
            try self.rebalanceNow(request, bytes: bytes, arrived: arrived)
        }
        var response = decided
        let account = request.portfolio.accountID
        // A decision that must wait takes its place among the pending ones
        // before it is recorded (refused, unrecorded, when they are full),
        // and gives it back if it is not recorded after all.
        var reservation = false
        defer { if reservation { approvals.cancelReservation() } }
        if let pending {
            guard approvals.reserve(limit: approvalRules.maxPending, nowUnixNanos: MarketState.nowUnixNanos()) else {
                throw RPCStatus(.resourceExhausted, "\(approvalRules.maxPending) decisions already wait for an "
                    + "advisor (the most allowed); this one needs approval too (\(pending.rules.joined(separator: "; "))): "
                    + "decide or let some expire first")
            }
            reservation = true
        }
        let encodeStart = ContinuousClock.now
        var out: [UInt8]
        do { out = try response.fastSerializedBytes() } catch {
            throw RPCStatus(.internal, "cannot encode the RebalanceResponse: \(error)")
        }
        m.encode.record(from: encodeStart, to: .now)
        if let audit, let record {
            var payload: [UInt8]
            do { payload = try record.fastSerializedBytes() } catch {
                throw RPCStatus(.internal, "cannot encode the audit record: \(error)")
            }
            ProtobufWire.appendLengthDelimited(&payload, field: 8, out)  // DecisionRecord.response
            if let bytes {
                // The request's portfolio, risk profile and mandate, as the
                // client encoded them (rebalanceNow left them out of the record).
                guard ProtobufWire.copyFields(from: bytes, renumber: Self.requestToRecordFields, into: &payload) else {
                    throw RPCStatus(.internal, "cannot copy the request's portfolio into the audit record")
                }
            }
            do throws(AuditError) {
                let auditStart = ContinuousClock.now
                let receipt = try await audit.append(AuditEntry(kind: .decision, accountID: account,
                                                                decisionID: response.decisionID, payload: payload))
                m.audit.record(from: auditStart, to: .now)
                response.auditRecordHash = receipt.hash
                ProtobufWire.appendLengthDelimited(&out, field: 13, Array(receipt.hash.utf8))  // audit_record_hash
            } catch {
                logger.error("audit append failed; the decision is not answered",
                             metadata: ["decision_id": "\(response.decisionID)", "error": "\(error)"])
                throw RPCStatus(error.code == .queueFull ? .resourceExhausted : .unavailable,
                                "the audit trail could not record the decision: \(error)")
            }
        }
        // Only a recorded decision exists: it may now wait for approval and
        // count as the account's first.
        if let pending {
            approvals.add(approvalID: response.approvalID, decisionID: response.decisionID, accountID: account,
                          triggeredRules: pending.rules, proposal: response,
                          createdUnixNanos: pending.createdUnixNanos, expiresUnixNanos: pending.expiresUnixNanos,
                          fillingReservation: true)
            reservation = false
        }
        if !account.isEmpty { _ = accountsSeen.withLock { $0.insert(account) } }
        if audit != nil, ContinuousClock.now > deadline {
            throw RPCStatus(.deadlineExceeded,
                            "deadline exceeded: the decision was recorded (\(response.decisionID)) after the deadline")
        }
        // Losses count as harvested (blocking repurchases for 31 days) only
        // once the client has the orders that realise them: not for a
        // decision that failed, went unrecorded or answered too late.
        if let harvest, ContinuousClock.now <= deadline {
            harvestMemory.record(household: harvest.household, instruments: harvest.instruments, day: harvest.day)
        }
        return out
    }

    /// Adapts a served policy model to the engine's scorer.
    struct ModelScorer: PolicyScorer {
        let model: LoadedModel
        var featureNames: [String] { model.featureNames }

        func scores(_ features: [Float], rows: Int) throws -> [Float] {
            do {
                return try model.withSession { session in try session.scores(features: features, rows: rows) }
            } catch let error as KeelError where error.code == .shape {
                throw RPCStatus(.internal, "model '\(model.name)' v\(model.version): \(error.message)")
            }
        }
    }

    /// Losses a decision's sales realise: remembered once it is answered.
    struct Harvest {
        let household: String
        let instruments: [String]
        let day: Int
    }

    /// A decision that waits for an advisor: the rules it triggered and its times.
    struct PendingPlan {
        let rules: [String]
        let createdUnixNanos: Int64
        let expiresUnixNanos: Int64
    }

    /// The decision and its audit record. No lock is held while the model
    /// runs (sessions are checked out of the model's pool). Also returns the
    /// approval the decision needs (nil: executable as it is) and the losses
    /// its sales realise (nil: none).
    private func rebalanceNow(_ request: Keel_V1_RebalanceRequest, bytes: [UInt8]?, arrived: ContinuousClock.Instant)
        throws(RPCStatus) -> (Keel_V1_RebalanceResponse, Keel_V1_DecisionRecord?, PendingPlan?, Harvest?)
    {
        let name = request.model.isEmpty ? defaultPolicyModel : request.model
        guard let model = repository.serving(name: name) else {
            throw RPCStatus(.failedPrecondition, "no model '\(name)' is loaded")
        }
        guard model.kind == .policy else {
            throw RPCStatus(.failedPrecondition,
                            "model '\(name)' is a \(model.kind) model; Rebalance needs a policy model")
        }
        let engineStart = ContinuousClock.now
        var (input, marketTime) = try RebalanceMapping.input(request, market: marketState)
        var tax = try taxPlan(request, input: &input)
        var liquidityNote: String? = nil
        var forecaster: LoadedModel? = nil
        if request.hasLiquidity {
            // Keep at least the forecast cash buffer; invest the excess.
            let context = try LiquidityMapping.context(request.liquidity, field: "liquidity")
            let liquidity = try liquidityModel("")
            forecaster = liquidity
            let (_, buffer) = try LiquidityMapping.forecast(context, model: liquidity)
            let value = RebalanceMapping.totalValue(input)
            if value > 0 {
                let floor = min(1, buffer / value)
                if floor > input.mandate.minCashWeight { input.mandate.minCashWeight = floor }
                liquidityNote = "liquidity forecast: cash kept at least \(Format.fixed(buffer, 2, grouping: true)) "
                    + "(\(Format.fixed(floor * 100, 2)) % of value) to meet outflows over "
                    + "\(context.scheduled.count) days at \(Int((context.confidence * 100).rounded())) % confidence"
            }
        }
        let decided: RebalanceDecision
        do throws(EngineError) {
            decided = try engine.rebalance(input, policy: ModelScorer(model: model))
        } catch {
            switch error.code {
            case .invalidInput: throw RPCStatus(.invalidArgument, error.message)
            case .policyFailed:
                logger.error("policy failed", metadata: ["model": "\(name)", "version": "\(model.version)",
                                                         "error": "\(error)"])
                throw RPCStatus(.internal, "model '\(name)' v\(model.version): \(error.message)")
            }
        }
        var decision = decided
        let harvest = applyTax(&tax, to: &decision)
        let engineTime = ContinuousClock.now - engineStart
        var response = RebalanceMapping.response(decision)
        if let liquidityNote { response.note = response.note.isEmpty ? liquidityNote : liquidityNote + "; " + response.note }
        if !tax.notes.isEmpty {
            response.note = (tax.notes + (response.note.isEmpty ? [] : [response.note])).joined(separator: "; ")
        }
        response.requestID = request.requestID
        response.decisionID = DecisionID.make()
        response.model = model.ref
        // The second model that shaped the decision, named as the policy is.
        if let forecaster { response.liquidityModel = forecaster.ref }
        response.marketStateUnixNanos = marketTime
        response.engineNanos = Self.nanos(engineTime)

        // Human in the loop.
        let account = request.portfolio.accountID
        let first = request.portfolio.firstRebalance
            || (!account.isEmpty && !accountsSeen.withLock { $0.contains(account) })
        let triggered = approvalRules.triggered(by: decision, firstRebalance: first)
        var pending: PendingPlan? = nil
        if !triggered.isEmpty {
            let created = MarketState.nowUnixNanos()
            pending = PendingPlan(rules: triggered, createdUnixNanos: created,
                                  expiresUnixNanos: created &+ Self.nanos(approvalRules.expiry))
            response.status = .pendingApproval
            response.approvalID = DecisionID.make()
            response.summary += " These trades wait for an advisor's approval (approval id \(response.approvalID)) "
                + "because: " + triggered.joined(separator: "; ") + "."
        }

        guard audit != nil else { return (response, nil, pending, harvest) }
        var record = Keel_V1_DecisionRecord()
        if let bytes {
            record.requestDigest = AuditDigest.sha256Hex(bytes)
        } else if let encoded: [UInt8] = try? request.serializedBytes() {
            record.requestDigest = AuditDigest.sha256Hex(encoded)
        }
        record.requestID = request.requestID
        if bytes == nil {
            record.portfolio = request.portfolio
            record.riskProfile = request.riskProfile
            record.mandate = request.mandate
        }  // else performRebalance copies them from the request's bytes, without encoding them again
        record.prices = input.instruments.map { instrument in
            var w = Keel_V1_Weight()
            w.id = instrument.id
            w.weight = instrument.price
            return w
        }
        record.marketStateUnixNanos = marketTime
        // record.response: the response's encoded bytes are appended by the caller.
        if let pending {
            record.triggeredRules = pending.rules
            record.approvalExpiresUnixNanos = pending.expiresUnixNanos
        }
        record.latencyNanos = Self.nanos(ContinuousClock.now - arrived)
        return (response, record, pending, harvest)
    }

    /// RebalanceRequest's portfolio (2), risk_profile (4) and mandate (5)
    /// are DecisionRecord's fields 3, 4 and 5.
    static let requestToRecordFields = [2: 3, 4: 4, 5: 5]

    static func nanos(_ d: Duration) -> Int64 {
        let (seconds, attos) = d.components
        return seconds &* 1_000_000_000 &+ attos / 1_000_000_000
    }

    // MARK: - Approvals

    /// Rebuilds the pending approvals from the audit trail at start: every
    /// PENDING_APPROVAL decision recorded within the approval expiry, less the
    /// ones a later record approved, rejected or expired. Returns how many
    /// are pending. Without an audit trail there is nothing to restore.
    @discardableResult
    public func restorePendingApprovals(nowUnixNanos: Int64 = MarketState.nowUnixNanos()) throws(AuditError) -> Int {
        guard let audit else { return 0 }
        let since = nowUnixNanos &- Self.nanos(approvalRules.expiry) &- 60 * 1_000_000_000
        try AuditReader.records(path: audit.path, sinceUnixNanos: since) { (record: AuditRecord) throws(AuditError) in
            if let decision = record.message as? Keel_V1_DecisionRecord {
                let response = decision.response
                guard response.status == .pendingApproval, !response.approvalID.isEmpty else { return }
                var proposal = response
                proposal.auditRecordHash = record.hash
                approvals.add(approvalID: response.approvalID, decisionID: record.decisionID,
                              accountID: record.accountID, triggeredRules: decision.triggeredRules,
                              proposal: proposal, createdUnixNanos: record.recordedUnixNanos,
                              expiresUnixNanos: decision.approvalExpiresUnixNanos > 0
                                  ? decision.approvalExpiresUnixNanos
                                  : record.recordedUnixNanos &+ Self.nanos(approvalRules.expiry))
            } else if let event = record.message as? Keel_V1_ApprovalRecord {
                let state: ApprovalBook<Keel_V1_RebalanceResponse>.State
                switch event.event {
                case .approved: state = .approved
                case .rejected: state = .rejected
                case .expired: state = .expired
                case .unspecified, .UNRECOGNIZED: return
                }
                approvals.settle(approvalID: event.approvalID, state: state, advisorID: event.advisorID,
                                 comment: event.comment, atUnixNanos: event.decidedUnixNanos)
            }
        }
        return approvals.pending().count
    }

    /// Expires what is due, recording each expiry in the audit trail.
    private func expireApprovals() async throws(RPCStatus) {
        let expired = approvals.expire(nowUnixNanos: MarketState.nowUnixNanos())
        for (k, entry) in expired.enumerated() {
            do throws(RPCStatus) {
                try await auditApproval(entry, event: .expired)
            } catch {
                // Not recorded: not expired either (the next call tries again).
                for unrecorded in expired[k...] { approvals.revert(approvalID: unrecorded.approvalID) }
                throw error
            }
        }
    }

    @discardableResult
    private func auditApproval(_ entry: ApprovalBook<Keel_V1_RebalanceResponse>.Entry, event: Keel_V1_ApprovalEvent)
        async throws(RPCStatus) -> String
    {
        guard let audit else { return "" }
        var record = Keel_V1_ApprovalRecord()
        record.approvalID = entry.approvalID
        record.decisionID = entry.decisionID
        record.accountID = entry.accountID
        record.event = event
        record.advisorID = entry.advisorID
        record.comment = entry.comment
        record.decidedUnixNanos = entry.decidedUnixNanos
        let payload: [UInt8]
        do { payload = try record.serializedBytes() } catch {
            throw RPCStatus(.internal, "cannot encode the approval record: \(error)")
        }
        do throws(AuditError) {
            return try await audit.append(AuditEntry(kind: .approval, accountID: entry.accountID,
                                                     decisionID: entry.decisionID, payload: payload)).hash
        } catch {
            throw RPCStatus(error.code == .queueFull ? .resourceExhausted : .unavailable,
                            "the audit trail could not record the approval event: \(error)")
        }
    }

    /// ListPending's page size: by default, and at most.
    static let defaultPendingPage: Int32 = 100
    static let maxPendingPage: Int32 = 1000

    private func performListPending(_ request: Keel_V1_ListPendingRequest, deadline: ContinuousClock.Instant)
        async throws(RPCStatus) -> Keel_V1_ListPendingResponse
    {
        try admitLight(deadline)
        guard (0...Self.maxPendingPage).contains(request.pageSize) else {
            throw RPCStatus(.invalidArgument, "page_size \(request.pageSize) is outside 0...\(Self.maxPendingPage) "
                + "(0 = \(Self.defaultPendingPage))")
        }
        // The token is the last entry's ordering key: "created_unix_nanos:approval_id".
        var after: (Int64, String)? = nil
        if !request.pageToken.isEmpty {
            let parts = request.pageToken.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, let created = Int64(parts[0]) else {
                throw RPCStatus(.invalidArgument, "page_token '\(request.pageToken)' is not a next_page_token of "
                    + "ListPending")
            }
            after = (created, String(parts[1]))
        }
        try await expireApprovals()
        let size = Int(request.pageSize == 0 ? Self.defaultPendingPage : request.pageSize)
        var entries = approvals.pending(accountID: request.accountID)[...]
        if let after {
            entries = entries.drop { ($0.createdUnixNanos, $0.approvalID) <= after }
        }
        var response = Keel_V1_ListPendingResponse()
        if entries.count > size, let last = entries.prefix(size).last {
            response.nextPageToken = "\(last.createdUnixNanos):\(last.approvalID)"
        }
        response.pending = entries.prefix(size).map { entry in
            var p = Keel_V1_PendingDecision()
            p.approvalID = entry.approvalID
            p.decisionID = entry.decisionID
            p.accountID = entry.accountID
            p.triggeredRules = entry.triggeredRules
            p.proposal = entry.proposal
            p.createdUnixNanos = entry.createdUnixNanos
            p.expiresUnixNanos = entry.expiresUnixNanos
            return p
        }
        return response
    }

    private func performDecide(_ request: Keel_V1_DecideRequest, deadline: ContinuousClock.Instant)
        async throws(RPCStatus) -> Keel_V1_DecideResponse
    {
        try admitLight(deadline)
        try await expireApprovals()
        let entry: ApprovalBook<Keel_V1_RebalanceResponse>.Entry
        do throws(ApprovalError) {
            entry = try approvals.decide(approvalID: request.approvalID, approve: request.approve,
                                         advisorID: request.advisorID, comment: request.comment,
                                         nowUnixNanos: MarketState.nowUnixNanos())
        } catch {
            switch error.code {
            case .notFound: throw RPCStatus(.notFound, error.message)
            case .alreadyDecided, .expired: throw RPCStatus(.failedPrecondition, error.message)
            case .invalidArgument: throw RPCStatus(.invalidArgument, error.message)
            }
        }
        var response = Keel_V1_DecideResponse()
        response.approvalID = entry.approvalID
        response.status = request.approve ? .approved : .rejected
        do throws(RPCStatus) {
            response.auditRecordHash = try await auditApproval(entry, event: request.approve ? .approved : .rejected)
        } catch {
            // An unrecorded decision is no decision: the approval waits again.
            approvals.revert(approvalID: entry.approvalID)
            throw error
        }
        return response
    }

    // MARK: - Tax

    /// The tax side of a rebalance: its lots and rules, and the purchases
    /// blocked by earlier harvests (with the replacement's notes).
    struct TaxPlan {
        var household = ""
        var lots: [TaxLot] = []
        var rules: TaxRules?
        /// Blocked instrument → (harvest day, replacement or nil).
        var blocked: [String: (day: Int, replacement: String?)] = [:]
        var notes: [String] = []
    }

    /// What moving a blocked instrument's unheld strategic weight to its
    /// replacement needs: the instruments' positions, the quantities held,
    /// the portfolio's value and the strategic weights' positions.
    private struct WeightMove {
        var index: [String: Int] = [:]
        var held: [Double]
        var value: Double
        var strategicIndex: [String: Int] = [:]

        init(_ input: RebalanceInput) {
            let instruments = input.instruments
            index.reserveCapacity(instruments.count)
            for i in instruments.indices { index[instruments[i].id] = i }
            held = [Double](repeating: 0, count: instruments.count)
            value = input.portfolio.cash
            for h in input.portfolio.holdings {
                guard let i = index[h.instrumentID] else { continue }
                held[i] += h.quantity
                value += h.quantity * instruments[i].price
            }
            strategicIndex.reserveCapacity(input.mandate.strategicWeights.count)
            for (k, w) in input.mandate.strategicWeights.enumerated() where strategicIndex[w.id] == nil {
                strategicIndex[w.id] = k
            }
        }

        /// Moves the part of `id`'s strategic weight it does not hold (`i`:
        /// its position) to `replacement`; whether there was any to move.
        mutating func move(from id: String, at i: Int, to replacement: String, in input: inout RebalanceInput) -> Bool {
            guard value > 0, let k = strategicIndex[id] else { return false }
            let current = held[i] * input.instruments[i].price / value
            let excess = max(0, input.mandate.strategicWeights[k].weight - current)
            guard excess > 0 else { return false }
            input.mandate.strategicWeights[k].weight -= excess
            if let j = strategicIndex[replacement] {
                input.mandate.strategicWeights[j].weight += excess
            } else {
                strategicIndex[replacement] = input.mandate.strategicWeights.count
                input.mandate.strategicWeights.append((id: replacement, weight: excess))
            }
            return true
        }
    }

    /// Validates the request's lots and tax context and blocks purchases of
    /// instruments the household harvested in the last 31 days, moving
    /// their unheld strategic weight to the replacement.
    private func taxPlan(_ request: Keel_V1_RebalanceRequest, input: inout RebalanceInput) throws(RPCStatus) -> TaxPlan {
        var plan = TaxPlan()
        let p = request.portfolio
        plan.household = p.householdID.isEmpty ? p.accountID : p.householdID
        let hasLots = p.holdings.contains { !$0.lots.isEmpty }
        let today = TaxMapping.today()
        var day = today
        if hasLots || request.hasTax {
            let ids = Set(request.instruments.map(\.id))
            try TaxMapping.checkReplacements(request.instruments, ids: ids)
            day = try TaxMapping.tradeDay(request.tax, field: "tax", today: today)
            plan.lots = try TaxMapping.lots(p, tradeDay: day, known: ids)
            plan.rules = try TaxMapping.rules(request.tax, field: "tax", tradeDay: day,
                                              instruments: request.instruments, lots: plan.lots)
        }
        let harvested = harvestMemory.harvested(household: plan.household, day: day)
        guard !harvested.isEmpty else { return plan }
        // This runs on every Rebalance of a household with a recent harvest,
        // so it reuses the groups and replacements the rules already hold and
        // builds the index, holdings and strategic positions that moving a
        // weight to a replacement needs only once some blocked instrument has
        // replacement candidates.
        // Each harvested instrument blocks itself and its substantially identical group.
        let blockedSince = TaxLossHarvester.blockedPurchaseDays(
            harvested: harvested,
            rules: TaxRules(shortTermRate: 0, longTermRate: 0,
                            identicalGroups: plan.rules?.identicalGroups ?? TaxMapping.identicalGroups(request.instruments),
                            tradeDay: day),
            day: day)
        let replacements = plan.rules?.replacements ?? TaxMapping.replacements(request.instruments)
        let instruments = input.instruments
        var moving: WeightMove? = nil
        var dates: [(day: Int, iso: String)] = []
        func iso(_ day: Int) -> String {
            if let known = dates.first(where: { $0.day == day }) { return known.iso }
            let text = CivilDay.iso(day)
            dates.append((day, text))
            return text
        }
        plan.blocked.reserveCapacity(blockedSince.count)
        for i in instruments.indices {
            let id = instruments[i].id
            guard let harvestDay = blockedSince[id] else { continue }
            var replacement: String? = nil
            if let candidates = replacements[id] {
                let move = moving ?? WeightMove(input)
                moving = move
                // The first candidate that is not blocked itself.
                replacement = candidates.first { blockedSince[$0] == nil && move.index[$0] != nil }
            }
            plan.blocked[id] = (harvestDay, replacement)
            input.mandate.blockedPurchases.insert(id)
            var note = "\(id) is not bought until \(iso(harvestDay + 31)) (wash-sale window after the "
                + "harvest on \(iso(harvestDay)))"
            // A replacement implies `moving` was built above.
            if let r = replacement, moving?.move(from: id, at: i, to: r, in: &input) == true {
                note += "; its unheld strategic weight goes to the replacement \(r)"
            }
            plan.notes.append(note)
        }
        return plan
    }

    /// Lots for every sale (loss lots first, no short-term gain where a
    /// long-term lot will do) and the TAX and WASH_SALE_BLOCK reasons.
    /// Returns the losses the sales realise, for the caller to remember once
    /// the decision is answered (nil: none).
    private func applyTax(_ plan: inout TaxPlan, to decision: inout RebalanceDecision) -> Harvest? {
        var harvest: Harvest? = nil
        if let rules = plan.rules, !plan.lots.isEmpty {
            let realised = TaxLotAssignment.apply(to: &decision, lots: plan.lots, rules: rules)
            let losses = realised.filter { $0.total < 0 }.map(\.instrumentID)
            if decision.status != .infeasible, !losses.isEmpty {
                harvest = Harvest(household: plan.household, instruments: losses, day: rules.tradeDay)
            }
        }
        guard !plan.blocked.isEmpty else { return harvest }
        var standsIn: [String: [String]] = [:]
        for (id, block) in plan.blocked { if let r = block.replacement { standsIn[r, default: []].append(id) } }
        for k in decision.orders.indices where decision.orders[k].side == .buy {
            guard let ids = standsIn[decision.orders[k].instrumentID]?.sorted() else { continue }
            decision.orders[k].reasons.append(.washSaleBlock)
            let until = ids.compactMap { plan.blocked[$0].map { CivilDay.iso($0.day + 31) } }.max() ?? ""
            decision.orders[k].explanation += " It stands in for \(ids.joined(separator: ", ")), which may not be "
                + "bought again before \(until) (wash-sale window)."
        }
        return harvest
    }

    /// HarvestTaxLosses through the gate; its proposals are remembered as
    /// harvests (blocking repurchases for 31 days) once they are answered,
    /// not when the answer came too late.
    private func answerHarvestTaxLosses(_ request: Keel_V1_HarvestTaxLossesRequest,
                                        deadline: ContinuousClock.Instant)
        async throws(RPCStatus) -> Keel_V1_HarvestTaxLossesResponse
    {
        let (response, harvest) = try await gated(.harvestTaxLosses, deadline: deadline) { () throws(RPCStatus) in
            try performHarvestTaxLosses(request)
        }
        // A late answer is replaced by DEADLINE_EXCEEDED on both transports:
        // the client never sees those proposals, so they block nothing.
        if let harvest, ContinuousClock.now <= deadline {
            harvestMemory.record(household: harvest.household, instruments: harvest.instruments, day: harvest.day)
        }
        return response
    }

    private func performHarvestTaxLosses(_ request: Keel_V1_HarvestTaxLossesRequest) throws(RPCStatus)
        -> (Keel_V1_HarvestTaxLossesResponse, Harvest?)
    {
        func bad(_ message: String) -> RPCStatus { RPCStatus(.invalidArgument, message) }
        guard request.hasTax else {
            throw bad("tax is missing: the tax rates, household trades and harvesting policy")
        }
        // Prices and daily closes per instrument (the request's, else the market state's).
        var prices: [String: Double] = [:]
        var histories: [String: [Double]] = [:]
        for (k, m) in request.instruments.enumerated() {
            guard !m.id.isEmpty else { throw bad("instruments[\(k)].id is empty") }
            guard prices[m.id] == nil else { throw bad("instruments[\(k)].id '\(m.id)' appears twice") }
            var price = m.price
            var closes = m.priceHistory.map(\.price)
            if let bad = closes.firstIndex(where: { !Instrument.isValidPrice($0) }) {
                throw RPCStatus(.invalidArgument, "instruments[\(k)].price_history[\(bad)].price \(closes[bad]) "
                    + "is not \(Instrument.validPricesText)")
            }
            if closes.isEmpty, let window = marketState.window(for: m.id) {
                closes = window.prices
                if price == 0, let latest = window.latestPrice { price = latest }
            }
            if price == 0, let last = closes.last { price = last }
            guard Instrument.isValidPrice(price) else {
                throw bad("instruments[\(k)].price \(m.price) is not \(Instrument.validPricesText)"
                    + (m.price == 0 ? " and the market state holds none for '\(m.id)'" : ""))
            }
            if closes.last != price { closes.append(price) }
            prices[m.id] = price
            histories[m.id] = closes
        }
        let ids = Set(prices.keys)
        try TaxMapping.checkReplacements(request.instruments, ids: ids)
        let tradeDay = try TaxMapping.tradeDay(request.tax, field: "tax", today: TaxMapping.today())
        let lots = try TaxMapping.lots(request.portfolio, tradeDay: tradeDay, known: ids)
        guard !lots.isEmpty else {
            throw bad("portfolio.holdings carry no tax lots: harvesting needs each holding's lots "
                + "(lot_id, quantity, acquired_on, cost_per_share)")
        }
        let rules = try TaxMapping.rules(request.tax, field: "tax", tradeDay: tradeDay,
                                         instruments: request.instruments, lots: lots)
        // The forecaster: the named model must be served; the default may be absent.
        let name = request.model.isEmpty ? "tax_loss" : request.model
        var notes: [String] = []
        let model = repository.serving(name: name)
        if let model, model.kind != .taxLoss {
            throw RPCStatus(.failedPrecondition, "model '\(name)' is a \(model.kind) model; a tax_loss model is needed")
        }
        if model == nil, !request.model.isEmpty { throw RPCStatus(.failedPrecondition, "no model '\(name)' is loaded") }

        func propose(_ score: @escaping (String) -> Double?) throws(RPCStatus)
            -> (proposals: [HarvestProposal], skipped: [String])
        {
            do throws(TaxLossError) {
                return try TaxLossHarvester.propose(lots: lots, prices: prices, rules: rules, score: score)
            } catch {
                throw bad(error.message)
            }
        }
        var result = try propose { _ in nil }
        if let model, !result.proposals.isEmpty {
            // Score each proposal with the replacement it got, then propose
            // again: a negative score drops it (and frees its group for others).
            var wanted: [String: [Double]] = [:]
            for p in result.proposals {
                for id in [p.instrumentID] + (p.replacementID.map { [$0] } ?? []) { wanted[id] = histories[id] }
            }
            let forecasts = try TaxMapping.forecasts(wanted, model: model)
            var scores: [String: Double] = [:]
            for p in result.proposals {
                if let s = TaxMapping.score(p, price: prices[p.instrumentID] ?? 0, forecasts: forecasts) {
                    scores[p.instrumentID] = s
                } else {
                    notes.append("no forecaster score for \(p.instrumentID): the forecaster needs "
                        + "\(TaxLossFeatures.minimumHistory) daily closes of it"
                        + (p.replacementID.map { " and of \($0)" } ?? ""))
                }
            }
            let final = scores
            result = try propose { final[$0] }
        }
        if model == nil { notes.append("no tax_loss model is loaded: proposals carry no forecaster score") }
        let household = request.portfolio.householdID.isEmpty ? request.portfolio.accountID : request.portfolio.householdID
        let harvest = result.proposals.isEmpty ? nil
            : Harvest(household: household, instruments: result.proposals.map(\.instrumentID), day: tradeDay)

        var response = Keel_V1_HarvestTaxLossesResponse()
        response.requestID = request.requestID
        response.proposals = result.proposals.map(TaxMapping.response)
        if let model { response.model = model.ref }
        response.note = (notes + result.skipped).joined(separator: "; ")
        return (response, harvest)
    }

    // MARK: - Liquidity

    private func performForecastLiquidity(_ request: Keel_V1_ForecastLiquidityRequest) throws(RPCStatus)
        -> Keel_V1_ForecastLiquidityResponse
    {
        guard request.hasLiquidity else {
            throw RPCStatus(.invalidArgument, "liquidity is missing: the account's cash-flow history and horizon")
        }
        let context = try LiquidityMapping.context(request.liquidity, field: "liquidity")
        let model = try liquidityModel(request.model)
        let (path, buffer) = try LiquidityMapping.forecast(context, model: model)
        var response = Keel_V1_ForecastLiquidityResponse()
        response.requestID = request.requestID
        response.path = LiquidityMapping.response(path)
        response.recommendedCashBuffer = buffer
        response.model = model.ref
        response.note = (["cash buffer at \(Int((context.confidence * 100).rounded())) % confidence over "
            + "\(path.count) days"] + context.notes).joined(separator: "; ")
        return response
    }

    /// The serving liquidity model (`name`, default "liquidity").
    private func liquidityModel(_ name: String) throws(RPCStatus) -> LoadedModel {
        let name = name.isEmpty ? "liquidity" : name
        guard let model = repository.serving(name: name) else {
            throw RPCStatus(.failedPrecondition, "no model '\(name)' is loaded")
        }
        guard model.kind == .liquidity else {
            throw RPCStatus(.failedPrecondition, "model '\(name)' is a \(model.kind) model; a liquidity model is needed")
        }
        return model
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

    /// Runs a compute method's body (Rebalance, HarvestTaxLosses,
    /// ForecastLiquidity) in a slot of the gate: the queue bound, the
    /// deadline and draining apply, and its queue wait (from `arrived`) and
    /// its work are timed.
    private func gated<T>(_ method: RPCMethod, deadline: ContinuousClock.Instant,
                          arrived: ContinuousClock.Instant = .now,
                          _ body: () throws(RPCStatus) -> T) async throws(RPCStatus) -> T
    {
        let m = metrics[method]
        return try await gate.run(deadline: deadline) { () throws(RPCStatus) -> T in
            let start = ContinuousClock.now
            m.queue.record(from: arrived, to: start)
            defer { m.inference.record(from: start, to: .now) }
            return try body()
        }
    }

    /// Admission for the light methods that bypass the gate.
    private func admitLight(_ deadline: ContinuousClock.Instant) throws(RPCStatus) {
        if gate.isDraining { throw RPCStatus(.unavailable, "server is shutting down") }
        if ContinuousClock.now >= deadline {
            throw RPCStatus(.deadlineExceeded, "deadline exceeded before the request could start")
        }
    }
}
