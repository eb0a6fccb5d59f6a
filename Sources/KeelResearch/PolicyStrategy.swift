import KeelInference
import KeelPortfolio

/// How the policy backtest sets up the engine's client. The engine itself
/// is ``RebalanceEngine``: the code that serves `Rebalance`.
public struct PolicySettings: Sendable, Equatable {
    /// Daily prices each decision sees per asset (the current one included).
    public var historyDays = 64
    /// The client's SRI risk tolerance: sets the tilt budget (1.5 % per
    /// level) and the volatility limit.
    public var riskTolerance = 7
    /// The engine's economics. Explanations are off (they do not change
    /// orders) and the spread is 0: the backtest's `costBps` is the one cost,
    /// given to the engine as the mandate's commission.
    public var engine: EngineConfig = {
        var config = EngineConfig()
        config.topFeatures = 0
        config.defaultHalfSpreadBps = 0
        return config
    }()

    public init() {}
}

/// Runs a policy through the serving engine at every row: the request a
/// wealth platform would send (the portfolio, each listed asset's price and
/// history, a strategic allocation of 1/N, the cost as commission), and the
/// engine's orders executed as they are. Whole shares when the data has
/// prices; fractional quantities for price relatives.
public struct PolicyStrategy<Scorer: PolicyScorer>: Strategy {
    public let name: String
    public let scorer: Scorer
    public let settings: PolicySettings
    public let costBps: Double
    let engine: RebalanceEngine
    /// Decisions the engine found infeasible (no orders).
    public private(set) var infeasible = 0

    public init(name: String, scorer: Scorer, costBps: Double, settings: PolicySettings = PolicySettings()) {
        self.name = name
        self.scorer = scorer
        self.costBps = costBps
        self.settings = settings
        engine = RebalanceEngine(config: settings.engine)
    }

    public func initialWeights(_ data: MarketData, start: Int, end: Int) -> [Double] {
        equalWeights(data, row: start)
    }

    public mutating func decide(_ data: MarketData, row: Int, first: Int, book: BookState) throws(ResearchError)
        -> Decision
    {
        guard (2...100_000).contains(settings.historyDays) else {
            throw ResearchError(.invalidArgument, "\(name): historyDays \(settings.historyDays) is outside 2...100000")
        }
        let input = request(data, row: row, book: book)
        let decision: RebalanceDecision
        do {
            decision = try engine.rebalance(input.input, policy: scorer)
        } catch {
            throw ResearchError(.policyFailed, "\(name) at row \(row) (\(data.label(ofRow: row))): \(error.message)")
        }
        if decision.status == .infeasible { infeasible += 1 }
        guard !decision.orders.isEmpty else { return .hold }
        return .orders(decision.orders.map { order in
            let i = input.index[order.instrumentID]!
            return (i, order.side == .buy ? order.quantity : -order.quantity)
        })
    }

    /// The engine's input at `row`, and each instrument's asset index.
    func request(_ data: MarketData, row: Int, book: BookState) -> (input: RebalanceInput, index: [String: Int]) {
        let m = data.assetCount
        var instruments: [Instrument] = []
        instruments.reserveCapacity(m)
        var holdings: [Holding] = []
        var index: [String: Int] = [:]
        index.reserveCapacity(m)
        var listed = 0
        for i in 0..<m where data.firstRow[i] <= row { listed += 1 }
        let weight = 1 / Double(max(1, listed))
        var strategic: [(id: String, weight: Double)] = []
        strategic.reserveCapacity(listed)
        let lot: Double = data.hasPrices ? 1 : 0
        for i in 0..<m where data.firstRow[i] <= row {
            let from = max(data.firstRow[i], row - settings.historyDays + 1)
            var history = [Double](repeating: 0, count: row - from + 1)
            for r in from...row { history[r - from] = data.prices[r * m + i] }
            let id = data.assets[i]
            instruments.append(Instrument(id: id, price: history[history.count - 1], assetClass: .equity, lotSize: lot,
                                          priceHistory: history))
            index[id] = i
            strategic.append((id, weight))
            if book.quantity[i] > 0 { holdings.append(Holding(instrumentID: id, quantity: book.quantity[i])) }
        }
        let mandate = Mandate(strategicWeights: strategic, commissionBps: costBps, allowFractional: !data.hasPrices)
        let profile = RiskProfile(riskTolerance: settings.riskTolerance, capacityForLoss: .full,
                                  knowledge: .advanced)
        let input = RebalanceInput(portfolio: Portfolio(accountID: "backtest", holdings: holdings,
                                                        cash: max(0, book.cash)),
                                   instruments: instruments, profile: profile, mandate: mandate)
        return (input, index)
    }
}

/// A policy model file run on Keel's C core: the scorer the backtest and
/// training use. Not thread-safe: one per thread.
public final class ModelScorer: PolicyScorer {
    public let model: Model
    let session: Session
    public let featureNames: [String]

    public init(model: Model) throws(ResearchError) {
        self.model = model
        do {
            session = try model.makeSession()
        } catch {
            throw ResearchError(.policyFailed, "\(model.sourceName): \(error)")
        }
        featureNames = model.featureNames ?? []
        if let why = FeatureSet.mismatch(featureNames) {
            throw ResearchError(.policyFailed, "\(model.sourceName): \(why)")
        }
        if let kind = model.kind, kind != "policy" {
            throw ResearchError(.policyFailed, "\(model.sourceName): keel.kind is '\(kind)'; a policy is needed")
        }
    }

    public convenience init(path: String) throws(ResearchError) {
        let model: Model
        do {
            model = try Model(contentsOf: path)
        } catch {
            throw ResearchError(.policyFailed, "\(path): \(error)")
        }
        try self.init(model: model)
    }

    public func scores(_ features: [Float], rows: Int) throws -> [Float] {
        try session.scores(features: features, rows: rows)
    }
}

/// A strategy by its command-line name (docs/BACKTEST.md).
public enum StrategySpec: Sendable, Equatable, CustomStringConvertible {
    case buyAndHold
    case ucrp
    case calendar(every: Int)
    case band(threshold: Double)
    case bestAsset
    case asset(String)
    case policy(path: String)

    public static let usage = "buy-and-hold, ucrp, calendar:K (every K periods), band:B (drift band, e.g. band:0.03 "
        + "or band:3%), best-asset, asset:NAME, policy:PATH"

    public static func parse(_ text: String) throws(ResearchError) -> StrategySpec {
        func bad(_ why: String) -> ResearchError {
            ResearchError(.invalidArgument, "strategy '\(text)': \(why) (strategies: \(usage))")
        }
        let parts = text.split(separator: ":", maxSplits: 1).map(String.init)
        let head = parts.first ?? ""
        let arg = parts.count > 1 ? parts[1] : nil
        switch head {
        case "buy-and-hold", "ubah":
            guard arg == nil else { throw bad("takes no argument") }
            return .buyAndHold
        case "ucrp":
            guard arg == nil else { throw bad("takes no argument") }
            return .ucrp
        case "calendar":
            guard let arg, let k = Int(arg), k >= 1 else { throw bad("needs a period count K >= 1, e.g. calendar:21") }
            return .calendar(every: k)
        case "band":
            guard let arg else { throw bad("needs a threshold, e.g. band:0.03 or band:3%") }
            let percent = arg.hasSuffix("%")
            guard let v = Double(percent ? String(arg.dropLast()) : arg), v.isFinite else {
                throw bad("'\(arg)' is not a number")
            }
            let b = percent ? v / 100 : v
            guard b > 0, b < 1 else { throw bad("the threshold must be within (0, 1), e.g. 0.03") }
            return .band(threshold: b)
        case "best-asset":
            guard arg == nil else { throw bad("takes no argument") }
            return .bestAsset
        case "asset":
            guard let arg, !arg.isEmpty else { throw bad("needs a column name, e.g. asset:ibm") }
            return .asset(arg)
        case "policy":
            guard let arg, !arg.isEmpty else { throw bad("needs a model path, e.g. policy:models/policy/2/model.onnx") }
            return .policy(path: arg)
        default:
            throw bad("unknown strategy")
        }
    }

    public var description: String {
        switch self {
        case .buyAndHold: "buy-and-hold"
        case .ucrp: "ucrp"
        case .calendar(let k): "calendar:\(k)"
        case .band(let b): "band:\(formatNumber(b))"
        case .bestAsset: "best-asset"
        case .asset(let name): "asset:\(name)"
        case .policy(let path): "policy:\(path)"
        }
    }

    /// Runs this strategy on `data`.
    public func run(_ data: MarketData, rows: ClosedRange<Int>? = nil, options: BacktestOptions,
                    policy settings: PolicySettings = PolicySettings()) throws(ResearchError) -> BacktestResult
    {
        switch self {
        case .buyAndHold:
            var s = BuyAndHold()
            return try Backtester.run(&s, data: data, rows: rows, options: options)
        case .ucrp:
            var s = CalendarRebalance(every: 1)
            return try Backtester.run(&s, data: data, rows: rows, options: options)
        case .calendar(let k):
            var s = CalendarRebalance(every: k)
            return try Backtester.run(&s, data: data, rows: rows, options: options)
        case .band(let b):
            var s = DriftBand(threshold: b)
            return try Backtester.run(&s, data: data, rows: rows, options: options)
        case .bestAsset:
            var s = SingleAsset(asset: nil)
            return try Backtester.run(&s, data: data, rows: rows, options: options)
        case .asset(let name):
            var s = SingleAsset(asset: name)
            return try Backtester.run(&s, data: data, rows: rows, options: options)
        case .policy(let path):
            var s = PolicyStrategy(name: description, scorer: try ModelScorer(path: path), costBps: options.costBps,
                                   settings: settings)
            return try Backtester.run(&s, data: data, rows: rows, options: options)
        }
    }
}
