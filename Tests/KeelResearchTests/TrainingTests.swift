import Foundation
import KeelInference
import KeelPortfolio
import Testing
@testable import KeelResearch

@Suite("Policy network files")
struct PolicyNetworkTests {
    /// The ONNX file the trainer writes runs on the C core and computes the
    /// MLP the parameters describe; reading it back gives the same network.
    @Test(arguments: [[8], [16, 8], [32, 32]])
    func onnxRoundTripAndForwardPass(hidden: [Int]) throws {
        let net = PolicyNetwork(hidden: hidden, seed: 99)
        #expect(net.parameters.count == PolicyNetwork.parameterCount(net.sizes))
        let bytes = net.onnx(metadata: [("keel.kind", "policy"), ("keel.features", FeatureSet.names.joined(separator: ","))])
        #expect(try PolicyNetwork(onnx: bytes, name: "t") == net)
        let model = try Model(bytes: bytes)
        let scorer = try ModelScorer(model: model)
        var rng = SplitMix64(seed: 5)
        let rows = 7
        let features = (0..<(rows * 12)).map { _ in Float(rng.normal()) }
        let scores = try scorer.scores(features, rows: rows)
        for r in 0..<rows {
            var a = Array(features[(r * 12)..<((r + 1) * 12)]).map(Double.init)
            var offset = 0
            for l in 0..<(net.sizes.count - 1) {
                let fanIn = net.sizes[l], fanOut = net.sizes[l + 1]
                var out = [Double](repeating: 0, count: fanOut)
                for o in 0..<fanOut {
                    var s = Double(net.parameters[offset + fanIn * fanOut + o])
                    for i in 0..<fanIn { s += Double(net.parameters[offset + o * fanIn + i]) * a[i] }
                    out[o] = l == net.sizes.count - 2 ? s : max(0, s)
                }
                offset += fanIn * fanOut + fanOut
                a = out
            }
            #expect(abs(Double(scores[r]) - a[0]) < 1e-4 * max(1, abs(a[0])))
        }
    }

    @Test func warmStartRefusesOtherFiles() throws {
        for bytes in [[UInt8](), Array("garbage".utf8), [0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f]] {
            do {
                _ = try PolicyNetwork(onnx: bytes, name: "x.onnx")
                Issue.record("accepted \(bytes)")
            } catch {
                #expect(error.message.hasPrefix("x.onnx: cannot warm-start"))
            }
        }
        // Hostile dimensions (negative, huge) are refused, not trapped on.
        for dims: [Int64] in [[-5, 12], [Int64.max, 12], [1 << 40, 12]] {
            var hostile = ONNXModel()
            hostile.initializers = [.init(name: "head.weight", dims: dims, values: [1], raw: true),
                                    .init(name: "head.bias", dims: [1], values: [0], raw: true)]
            #expect(throws: ResearchError.self) { try PolicyNetwork(onnx: hostile.encode(), name: "h.onnx") }
        }
        // A valid ONNX model of another layout.
        var other = ONNXModel()
        other.inputs = [.init(name: "features", dims: [.param("n"), .value(12)])]
        other.outputs = [.init(name: "y", dims: [.param("n"), .value(12)])]
        other.nodes = [.init(opType: "Relu", inputs: ["features"], outputs: ["y"])]
        do {
            _ = try PolicyNetwork(onnx: other.encode(), name: "relu.onnx")
            Issue.record("accepted a model without the MLP layers")
        } catch {
            #expect(error.message.contains("fc1.weight"))
        }
    }

    @Test func seedsFixTheInitialWeights() {
        #expect(PolicyNetwork(hidden: [8], seed: 1) == PolicyNetwork(hidden: [8], seed: 1))
        #expect(PolicyNetwork(hidden: [8], seed: 1) != PolicyNetwork(hidden: [8], seed: 2))
    }
}

@Suite("Walk-forward training")
struct TrainingTests {
    @Test(arguments: [(4, 2), (1, 1), (3, 3)])
    func foldsRollForwardWithoutOverlap(folds: Int, trainBlocks: Int) throws {
        let data = try Synthetic.data(assets: 3, periods: 700, seed: 1)
        let windows = try WalkForward.folds(data, folds: folds, trainBlocks: trainBlocks)
        let size = 700 / (folds + trainBlocks + 1)
        #expect(windows.count == folds)
        for (k, w) in windows.enumerated() {
            #expect(w.train.rows.lowerBound == k * size)
            #expect(w.train.rows.count == trainBlocks * size + 1)
            #expect(w.validation.rows.lowerBound == w.train.rows.upperBound)
            #expect(w.test.rows.lowerBound == w.validation.rows.upperBound)
            if k > 0 { #expect(w.test.rows.lowerBound == windows[k - 1].test.rows.upperBound) }
        }
        #expect(windows.last!.test.rows.upperBound == 700)
        #expect(throws: ResearchError.self) { try WalkForward.folds(data, folds: 60, trainBlocks: 10) }
    }

    static func tiny(seed: UInt64 = 3, threads: Int = 2) -> TrainingConfig {
        var c = TrainingConfig()
        c.seed = seed
        c.hidden = [6]
        c.folds = 2
        c.trainBlocks = 1
        c.generations = 3
        c.population = 4
        c.segmentPeriods = 40
        c.evaluateEvery = 1
        c.threads = threads
        return c
    }

    /// The same seed gives the same model, however many threads run; another
    /// seed gives another.
    @Test func trainingIsDeterministicUnderASeed() throws {
        let data = [try Synthetic.data(assets: 4, periods: 400, seed: 31), try Synthetic.data(assets: 3, periods: 300, seed: 32)]
        func run(_ c: TrainingConfig) throws -> [Float] {
            let trainer = PolicyTrainer(config: c)
            var seen = 0
            let folds = try trainer.train(data: data, start: PolicyNetwork(hidden: c.hidden, seed: c.seed)) { p in
                seen += 1
                #expect(p.done >= 0 && p.done <= 1)
            }
            #expect(seen >= 2)
            #expect(folds.count == 2)
            #expect(folds.allSatisfy { $0.curve.first?.isFinite == true && $0.bestGeneration <= $0.generationsRun })
            return folds.last!.network.parameters
        }
        let a = try run(Self.tiny())
        #expect(try run(Self.tiny()) == a)
        #expect(try run(Self.tiny(threads: 1)) == a)
        #expect(try run(Self.tiny(seed: 4)) != a)
    }

    /// Selection never takes a network that validates worse than the start.
    @Test func selectionUsesValidationOnly() throws {
        let data = [try Synthetic.data(assets: 4, periods: 400, seed: 41)]
        let c = Self.tiny()
        let trainer = PolicyTrainer(config: c)
        let start = PolicyNetwork(hidden: c.hidden, seed: c.seed)
        let fold = try trainer.train(data: data, start: start) { _ in }.first!
        let validation = fold.windows.map(\.validation)
        let startScore = try trainer.evaluator.score(try PolicyEvaluator.model(start), on: validation, baselines: nil)
        let chosen = try trainer.evaluator.score(try PolicyEvaluator.model(fold.network), on: validation, baselines: nil)
        #expect(chosen >= startScore)
        #expect(abs(chosen - fold.validationScore) < 1e-12)
    }

    /// The worst-excess objective is the smallest margin of the policy's
    /// reward over the best static rule's, window by window.
    @Test func worstExcessObjective() throws {
        let windows = [Window(data: try Synthetic.data(assets: 4, periods: 300, seed: 61), rows: 0...150),
                       Window(data: try Synthetic.data(assets: 5, periods: 300, seed: 62), rows: 100...299)]
        let evaluator = PolicyEvaluator(costBps: 10, drawdownPenalty: 1, objective: .worstExcess)
        let baselines = try #require(try evaluator.baselines(windows))
        #expect(baselines.count == 2)
        for (k, w) in windows.enumerated() {
            let rules = try benchmarkRules.map { try evaluator.reward($0.run(w.data, rows: w.rows, options: evaluator.options).metrics) }
            #expect(baselines[k] == rules.max())
        }
        let model = try PolicyEvaluator.model(PolicyNetwork(hidden: [4], seed: 2))
        let rewards = try windows.map { try evaluator.reward(evaluator.run(model, on: $0).metrics) }
        let score = try evaluator.score(model, on: windows, baselines: baselines)
        #expect(score == min(rewards[0] - baselines[0], rewards[1] - baselines[1]))
        #expect(try PolicyEvaluator(costBps: 10, drawdownPenalty: 1).baselines(windows) == nil)
        let mean = try PolicyEvaluator(costBps: 10, drawdownPenalty: 1).score(model, on: windows, baselines: nil)
        #expect(abs(mean - (rewards[0] + rewards[1]) / 2) < 1e-12)
    }

    @Test(arguments: [
        { (c: inout TrainingConfig) in c.population = 5 }, { $0.population = 0 }, { $0.sigma = 0 },
        { $0.folds = 0 }, { $0.segmentPeriods = 3 }, { $0.costBps = -1 }, { $0.threads = 0 }, { $0.hidden = [0] },
    ] as [@Sendable (inout TrainingConfig) -> Void])
    func badHyperparametersAreErrors(change: @Sendable (inout TrainingConfig) -> Void) {
        var c = TrainingConfig()
        change(&c)
        #expect(throws: ResearchError.self) { try c.validate() }
    }

    @Test func publishingANewVersion() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("keel-repo-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(TrainingArtifacts.latestVersion(in: dir) == 0)
        let files: [(name: String, bytes: [UInt8])] = [("model.onnx", [1, 2, 3]), ("REPORT.md", Array("# r\n".utf8))]
        try TrainingArtifacts.promote(files, repository: dir, version: 1)
        try TrainingArtifacts.promote(files, repository: dir, version: 3)
        #expect(TrainingArtifacts.latestVersion(in: dir) == 3)
        #expect(FileManager.default.contents(atPath: "\(dir)/3/REPORT.md") == Data("# r\n".utf8))
        #expect(throws: ResearchError.self) { try TrainingArtifacts.promote(files, repository: dir, version: 3) }
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix(".") }
        #expect(leftovers.isEmpty)
    }

    /// The evaluation compares the policy with the four static rules on every
    /// test window, chains the windows, and measures two stress scenarios.
    @Test func evaluationCoversEveryTestWindow() throws {
        let data = [try Synthetic.data(assets: 4, periods: 600, seed: 51)]
        var c = Self.tiny()
        c.generations = 1
        let trainer = PolicyTrainer(config: c)
        let folds = try trainer.train(data: data, start: PolicyNetwork(hidden: c.hidden, seed: 1)) { _ in }
        let e = try TrainingEvaluation.run(folds: folds, evaluator: trainer.evaluator, threads: 2)
        #expect(e.rows.count == 2)
        #expect(e.rows.allSatisfy { $0.results.map(\.strategy) == ["policy", "buy-and-hold", "ucrp", "calendar:21", "band:0.03"] })
        let total = try #require(e.totals.first)
        let chainedUCRP = e.rows.map { $0.results[2].metrics.finalWealth }.reduce(1, *)
        #expect(relativeError(total.metrics[2].finalWealth, chainedUCRP) < 1e-12)
        #expect(e.stress.map(\.scenario) == ["crash", "regime-flip"])
        let pooled = try #require(e.pooledTarget())
        #expect(pooled.policySharpe == total.metrics[0].sharpe)  // one data set: the pool is that set
        #expect(pooled.rule == e.targetRows()[0].rule && pooled.met == e.targetRows()[0].met)
        let crash = e.stress[0]
        #expect(crash.outcomes.count == 5)
        #expect(abs(crash.outcomes[1].eventReturn + 0.2) < 1e-9)  // buy-and-hold falls exactly 20 %
        let files = TrainingArtifacts.report(version: 2, command: "keel train policy", date: "2026-11-21", config: c,
                                             data: data, folds: folds, evaluation: e, challenger: 0.5,
                                             champion: (1, 0.4), seconds: 1)
        let report = String(decoding: try #require(files.first { $0.name == "REPORT.md" }).bytes, as: UTF8.self)
        #expect(report.contains("## Out-of-sample result against the target"))
        #expect(report.contains("| 2 | synthetic.csv |"))
        #expect(report.contains("current v1"))
        #expect(files.contains { $0.name == "sharpe-by-window.svg" })
    }
}
