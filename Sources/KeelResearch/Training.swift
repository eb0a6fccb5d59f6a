import Foundation
import KeelInference
import KeelPortfolio

/// Hyperparameters of `keel train policy` (docs/TRAINING.md).
public struct TrainingConfig: Sendable, Equatable, Codable {
    public var seed: UInt64 = 20_261_121
    /// Hidden layer widths of a new network (ignored with a warm start).
    public var hidden = [32, 32]
    /// Walk-forward folds.
    public var folds = 4
    /// Blocks per training window (each data set is cut into
    /// `folds + trainBlocks + 1` equal blocks; fold k trains on blocks
    /// k ..< k + trainBlocks, validates on the next and tests on the one after).
    public var trainBlocks = 2
    /// Maximum ES generations per fold.
    public var generations = 60
    /// Candidates per generation (antithetic pairs: population / 2).
    public var population = 32
    /// Noise scale of the parameter perturbations.
    public var sigma = 0.04
    /// Adam step size.
    public var learningRate = 0.02
    /// L2 weight decay (pulls parameters toward 0 each step).
    public var weightDecay = 0.002
    /// Periods per training segment (a random sub-window of each data
    /// set's training window, new every generation, shared by all candidates).
    public var segmentPeriods = 252
    /// Validate every this many generations.
    public var evaluateEvery = 2
    /// Stop a fold after this many validations without improvement.
    public var patience = 6
    /// Proportional costs of every backtest in training and reports.
    public var costBps = 10.0
    /// Reward = Sharpe − drawdownPenalty × max drawdown (net of costs).
    public var drawdownPenalty = 2.0
    /// Reward −= turnoverPenalty × annual one-way turnover (a regulariser
    /// toward slower signals, on top of the costs already paid).
    public var turnoverPenalty = 0.0
    /// How rewards over several windows (one per data set) become one score.
    public var objective: TrainingObjective = .mean
    /// Worker threads for candidate evaluation.
    public var threads = 2

    public init() {}

    public func validate() throws(ResearchError) {
        func need(_ ok: Bool, _ what: String) throws(ResearchError) {
            if !ok { throw ResearchError(.invalidArgument, what) }
        }
        try need(folds >= 1 && folds <= 50, "--folds must be within 1...50")
        try need(trainBlocks >= 1 && trainBlocks <= 20, "--train-blocks must be within 1...20")
        try need(generations >= 0 && generations <= 100_000, "--generations must be within 0...100000")
        try need(population >= 2 && population % 2 == 0 && population <= 1024,
                 "--population must be an even number within 2...1024 (antithetic pairs)")
        try need(sigma > 0 && sigma.isFinite, "--sigma must be > 0")
        try need(learningRate > 0 && learningRate.isFinite, "--learning-rate must be > 0")
        try need(weightDecay >= 0 && weightDecay.isFinite, "--weight-decay must be >= 0")
        try need(segmentPeriods >= 21, "--segment must be at least 21 periods")
        try need(evaluateEvery >= 1, "--evaluate-every must be >= 1")
        try need(patience >= 1, "--patience must be >= 1")
        try need(costBps >= 0 && costBps < 10_000, "--cost-bps must be within 0..<10000")
        try need(drawdownPenalty >= 0 && drawdownPenalty.isFinite, "--drawdown-penalty must be >= 0")
        try need(turnoverPenalty >= 0 && turnoverPenalty.isFinite, "--turnover-penalty must be >= 0")
        try need(threads >= 1 && threads <= 256, "--threads must be within 1...256")
        try need(hidden.allSatisfy { $0 >= 1 && $0 <= 4096 } && hidden.count <= 8,
                 "--hidden needs 0 to 8 layer widths within 1...4096")
    }
}

/// How the rewards of the windows (one per data set) combine into a score.
public enum TrainingObjective: String, Sendable, Codable, CaseIterable {
    /// The mean reward.
    case mean
    /// The worst window's reward minus that window's best static rule's
    /// (buy-and-hold, UCRP, monthly calendar, 3 % band): the policy is as
    /// good as its margin over the static rules where that margin is smallest.
    case worstExcess = "worst-excess"
}

/// A backtest window: a data set and a range of its price rows.
public struct Window: Sendable {
    public let data: MarketData
    public let rows: ClosedRange<Int>

    public init(data: MarketData, rows: ClosedRange<Int>) {
        self.data = data
        self.rows = rows
    }

    public var label: String { "\(data.label(ofRow: rows.lowerBound)) .. \(data.label(ofRow: rows.upperBound))" }
}

/// One walk-forward fold over one data set.
public struct FoldWindows: Sendable {
    public let train: Window
    public let validation: Window
    public let test: Window
}

public enum WalkForward {
    /// The folds of `data`: `folds + trainBlocks + 1` equal blocks of rows;
    /// fold k trains on blocks k ..< k + trainBlocks, validates on block
    /// k + trainBlocks and tests on block k + trainBlocks + 1. Adjacent
    /// windows share their boundary row (one ends where the next starts).
    public static func folds(_ data: MarketData, folds: Int, trainBlocks: Int) throws(ResearchError) -> [FoldWindows] {
        let blocks = folds + trainBlocks + 1
        let size = data.periods / blocks
        guard size >= 10 else {
            throw ResearchError(.invalidData, "\(data.name): \(data.periods) periods make blocks of \(size) periods for "
                + "\(folds) folds; at least 10 per block are needed")
        }
        func rows(_ first: Int, _ count: Int) -> ClosedRange<Int> {
            let end = first + count == blocks ? data.rows - 1 : (first + count) * size
            return (first * size)...end
        }
        return (0..<folds).map { k in
            FoldWindows(train: Window(data: data, rows: rows(k, trainBlocks)),
                        validation: Window(data: data, rows: rows(k + trainBlocks, 1)),
                        test: Window(data: data, rows: rows(k + trainBlocks + 1, 1)))
        }
    }
}

/// Scores policies on windows through the serving engine.
public struct PolicyEvaluator: Sendable {
    public let costBps: Double
    public let drawdownPenalty: Double
    public let turnoverPenalty: Double
    public let objective: TrainingObjective
    public let settings: PolicySettings

    public init(costBps: Double, drawdownPenalty: Double, turnoverPenalty: Double = 0,
                objective: TrainingObjective = .mean, settings: PolicySettings = PolicySettings())
    {
        self.costBps = costBps
        self.drawdownPenalty = drawdownPenalty
        self.turnoverPenalty = turnoverPenalty
        self.objective = objective
        self.settings = settings
    }

    public var options: BacktestOptions { BacktestOptions(costBps: costBps) }

    /// The reward of one backtest: Sharpe − drawdown penalty × max drawdown
    /// − turnover penalty × annual turnover.
    public func reward(_ m: Metrics) -> Double {
        m.sharpe - drawdownPenalty * m.maxDrawdown - turnoverPenalty * m.turnover
    }

    /// One policy backtest.
    public func run(_ model: Model, on window: Window, name: String = "policy", record: Bool = false)
        throws(ResearchError) -> BacktestResult
    {
        var strategy = PolicyStrategy(name: name, scorer: try ModelScorer(model: model), costBps: costBps,
                                      settings: settings)
        var options = self.options
        options.recordWeights = record
        return try Backtester.run(&strategy, data: window.data, rows: window.rows, options: options)
    }

    /// Per window, the best static rule's reward: what the worst-excess
    /// objective measures the policy against (nil for the mean objective).
    public func baselines(_ windows: [Window]) throws(ResearchError) -> [Double]? {
        guard objective == .worstExcess else { return nil }
        var out: [Double] = []
        for w in windows {
            var best = -Double.infinity
            for rule in benchmarkRules { best = max(best, reward(try rule.run(w.data, rows: w.rows, options: options).metrics)) }
            out.append(best)
        }
        return out
    }

    /// The objective over windows: the mean reward, or the worst excess over
    /// `baselines` (from ``baselines(_:)`` on the same windows).
    public func score(_ model: Model, on windows: [Window], baselines: [Double]?) throws(ResearchError) -> Double {
        var total = 0.0
        var worst = Double.infinity
        for (k, w) in windows.enumerated() {
            let r = reward(try run(model, on: w).metrics)
            total += r
            if let baselines { worst = min(worst, r - baselines[k]) }
        }
        return baselines == nil ? total / Double(max(1, windows.count)) : worst
    }

    /// The model of a network (metadata: kind and features only).
    public static func model(_ network: PolicyNetwork) throws(ResearchError) -> Model {
        let bytes = network.onnx(metadata: [("keel.kind", "policy"),
                                            ("keel.features", FeatureSet.names.joined(separator: ","))])
        do {
            return try Model(bytes: bytes, sourceName: "candidate")
        } catch {
            throw ResearchError(.policyFailed, "a candidate network did not load: \(error)")
        }
    }
}

/// Results of ``parallelMap(_:threads:_:)`` under a lock.
private final class ParallelResults<T>: @unchecked Sendable {
    let lock = NSLock()
    var values: [Int: Result<T, ResearchError>] = [:]
}

/// Runs `count` jobs on `threads` threads; results in job order. The first
/// failing job's error (by job order) is thrown.
func parallelMap<T: Sendable>(_ count: Int, threads: Int, _ body: @escaping @Sendable (Int) throws(ResearchError) -> T)
    throws(ResearchError) -> [T]
{
    let results = ParallelResults<T>()
    let workers = max(1, min(threads, count))
    DispatchQueue.concurrentPerform(iterations: workers) { w in
        var k = w
        while k < count {
            let r: Result<T, ResearchError>
            do throws(ResearchError) { r = .success(try body(k)) } catch { r = .failure(error) }
            results.lock.lock()
            results.values[k] = r
            results.lock.unlock()
            k += workers
        }
    }
    var out: [T] = []
    out.reserveCapacity(count)
    for k in 0..<count {
        switch results.values[k]! {
        case .success(let v): out.append(v)
        case .failure(let e): throw e
        }
    }
    return out
}

/// Evolution strategies (OpenAI-ES: antithetic Gaussian perturbations,
/// centred-rank fitness shaping, Adam) on the policy network, with the
/// reward of a net-of-cost backtest through the serving engine. Walk-forward:
/// model selection and early stopping on validation windows only.
public struct PolicyTrainer: Sendable {
    public struct Progress: Sendable {
        public var fold: Int
        public var folds: Int
        public var generation: Int
        public var generations: Int
        public var validation: Double?
        public var bestValidation: Double
        /// Fraction of the whole run done (0...1), for the ETA.
        public var done: Double
    }

    public struct FoldResult: Sendable {
        public var fold: Int
        /// Per data set: the fold's windows.
        public var windows: [FoldWindows]
        public var bestGeneration: Int
        public var generationsRun: Int
        public var validationScore: Double
        /// Validation score by generation (NaN where not validated).
        public var curve: [Double]
        public var network: PolicyNetwork
    }

    public let config: TrainingConfig
    public let evaluator: PolicyEvaluator

    public init(config: TrainingConfig, settings: PolicySettings = PolicySettings()) {
        self.config = config
        evaluator = PolicyEvaluator(costBps: config.costBps, drawdownPenalty: config.drawdownPenalty,
                                    turnoverPenalty: config.turnoverPenalty, objective: config.objective,
                                    settings: settings)
    }

    /// Trains fold after fold, each starting from the previous fold's
    /// selected network (the first from `start`).
    public func train(data: [MarketData], start: PolicyNetwork, progress: (Progress) -> Void) throws(ResearchError)
        -> [FoldResult]
    {
        try config.validate()
        guard !data.isEmpty else { throw ResearchError(.invalidArgument, "training needs at least one --data file") }
        let folds = try data.map { (d) throws(ResearchError) in
            try WalkForward.folds(d, folds: config.folds, trainBlocks: config.trainBlocks)
        }
        var network = start
        var results: [FoldResult] = []
        for k in 0..<config.folds {
            let windows = folds.map { $0[k] }
            let result = try trainFold(k, windows: windows, start: network) { p in progress(p) }
            network = result.network
            results.append(result)
        }
        return results
    }

    func trainFold(_ fold: Int, windows: [FoldWindows], start: PolicyNetwork, progress: (Progress) -> Void)
        throws(ResearchError) -> FoldResult
    {
        let c = config
        let d = start.parameters.count
        let pairs = c.population / 2
        let validation = windows.map(\.validation)
        var theta = start.parameters.map(Double.init)
        var m = [Double](repeating: 0, count: d), v = m
        let beta1 = 0.9, beta2 = 0.999
        let validationBaselines = try evaluator.baselines(validation)
        var best = (score: try evaluator.score(try PolicyEvaluator.model(start), on: validation,
                                               baselines: validationBaselines),
                    generation: 0, network: start)
        var curve = [Double](repeating: .nan, count: c.generations + 1)
        curve[0] = best.score
        var stale = 0
        var ran = 0
        func report(_ g: Int, _ val: Double?) {
            let done = (Double(fold) + Double(g) / Double(max(1, c.generations))) / Double(c.folds)
            progress(Progress(fold: fold + 1, folds: c.folds, generation: g, generations: c.generations, validation: val,
                              bestValidation: best.score, done: min(1, done)))
        }
        report(0, best.score)
        let sizes = start.sizes
        let evaluator = self.evaluator
        for g in 1...max(1, c.generations) where c.generations > 0 {
            ran = g
            // This generation's training segments, shared by all candidates.
            var rng = SplitMix64.derived(c.seed, UInt64(fold) << 32 | UInt64(g), 1)
            let segments: [Window] = windows.map { w in
                let rows = w.train.rows
                let length = min(c.segmentPeriods, rows.count - 1)
                let slack = rows.count - 1 - length
                let first = rows.lowerBound + (slack > 0 ? Int(rng.next() % UInt64(slack + 1)) : 0)
                return Window(data: w.train.data, rows: first...(first + length))
            }
            let segmentBaselines = try evaluator.baselines(segments)
            // Antithetic noise.
            var noise = [[Float]](repeating: [], count: pairs)
            for k in 0..<pairs {
                var r = SplitMix64.derived(c.seed, UInt64(fold) << 32 | UInt64(g), UInt64(k) + 2)
                noise[k] = (0..<d).map { _ in Float(r.normal()) }
            }
            let base = theta
            let sigma = c.sigma
            let noiseCopy = noise
            let rewards = try parallelMap(2 * pairs, threads: c.threads) { (j: Int) throws(ResearchError) -> Double in
                let sign: Double = j % 2 == 0 ? 1 : -1
                let eps = noiseCopy[j / 2]
                var p = [Float](repeating: 0, count: d)
                for i in 0..<d { p[i] = Float(base[i] + sign * sigma * Double(eps[i])) }
                let net = try PolicyNetwork(sizes: sizes, parameters: p)
                let model = try PolicyEvaluator.model(net)
                return try evaluator.score(model, on: segments, baselines: segmentBaselines)
            }
            // Centred ranks in [−0.5, 0.5].
            let order = rewards.indices.sorted { rewards[$0] != rewards[$1] ? rewards[$0] < rewards[$1] : $0 < $1 }
            var utility = [Double](repeating: 0, count: rewards.count)
            for (rank, j) in order.enumerated() {
                utility[j] = rewards.count > 1 ? Double(rank) / Double(rewards.count - 1) - 0.5 : 0
            }
            var grad = [Double](repeating: 0, count: d)
            for k in 0..<pairs {
                let w = (utility[2 * k] - utility[2 * k + 1]) / (Double(2 * pairs) * sigma)
                if w == 0 { continue }
                let eps = noise[k]
                for i in 0..<d { grad[i] += w * Double(eps[i]) }
            }
            let t = Double(g)
            for i in 0..<d {
                let gi = grad[i] - c.weightDecay * theta[i]
                m[i] = beta1 * m[i] + (1 - beta1) * gi
                v[i] = beta2 * v[i] + (1 - beta2) * gi * gi
                let mh = m[i] / (1 - pow(beta1, t)), vh = v[i] / (1 - pow(beta2, t))
                theta[i] += c.learningRate * mh / (vh.squareRoot() + 1e-8)
            }
            var validated: Double? = nil
            if g % c.evaluateEvery == 0 || g == c.generations {
                let net = try PolicyNetwork(sizes: sizes, parameters: theta.map(Float.init))
                let score = try evaluator.score(try PolicyEvaluator.model(net), on: validation,
                                                baselines: validationBaselines)
                curve[g] = score
                validated = score
                if score > best.score {
                    best = (score, g, net)
                    stale = 0
                } else {
                    stale += 1
                }
            }
            report(g, validated)
            if stale >= c.patience { break }
        }
        return FoldResult(fold: fold + 1, windows: windows, bestGeneration: best.generation, generationsRun: ran,
                          validationScore: best.score, curve: Array(curve.prefix(ran + 1)), network: best.network)
    }
}
