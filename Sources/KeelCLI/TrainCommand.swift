import ArgumentParser
import Foundation
import KeelPortfolio
import KeelResearch

extension TrainingObjective: ExpressibleByArgument {}

/// `keel train …`: training of Keel's models.
struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train Keel's models.",
        subcommands: [TrainPolicyCommand.self, TrainLiquidityCommand.self, TrainTaxLossCommand.self]
    )
}

/// `keel train policy`: walk-forward evolution-strategies training of the
/// rebalancing policy, with champion/challenger promotion.
struct TrainPolicyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy",
        abstract: "Train the rebalancing policy walk-forward and publish it if it beats the current one.",
        discussion: """
            Evolution strategies (antithetic sampling, rank shaping, Adam) on the policy network; each \
            candidate is scored by a backtest through the serving engine, net of costs. Model selection and \
            early stopping use validation windows only; test windows are only reported. The new model and its \
            REPORT.md go to --out; it is published as a new version under --models/policy only when it beats \
            the current version on the most recent validation windows (otherwise exit status 3). \
            Method: docs/TRAINING.md.

            Example:
              keel train policy --data ../shared/data/nyse_o.csv --data ../shared/data/nyse_n.csv \\
                  --data ../shared/data/djia.csv --data ../shared/data/pypfopt_stock_prices.csv
            """
    )

    @Option(name: .customLong("data"), help: ArgumentHelp("A data file to train on (repeatable).", valueName: "file"))
    var dataFiles: [String] = []

    @Option(name: .long, help: ArgumentHelp("The model repository; the policy lives in <models>/policy.", valueName: "dir"))
    var models = "models"

    @Option(name: .long, help: ArgumentHelp("Where the new model and its report are written.", valueName: "dir"))
    var out = "keel-train"

    @Option(name: .long, help: ArgumentHelp("Start from this policy's weights (retraining on recent data).",
                                            valueName: "model.onnx"))
    var warmStart: String?

    @Option(name: .long, help: "Random seed: the same seed, data and options give the same model.")
    var seed: UInt64 = 20_261_121

    @Option(name: .long, help: ArgumentHelp("Hidden layer widths of a new network.", valueName: "w1,w2"))
    var hidden = "32,32"

    @Option(name: .long, help: "Walk-forward folds.") var folds = 4
    @Option(name: .long, help: "Blocks per training window.") var trainBlocks = 2
    @Option(name: .long, help: "Maximum generations per fold.") var generations = 60
    @Option(name: .long, help: "Candidates per generation (even).") var population = 32
    @Option(name: .long, help: "Noise scale.") var sigma = 0.04
    @Option(name: .long, help: "Adam step size.") var learningRate = 0.02
    @Option(name: .long, help: "L2 weight decay.") var weightDecay = 0.002
    @Option(name: .long, help: "Periods per training segment.") var segment = 252
    @Option(name: .long, help: "Validate every N generations.") var evaluateEvery = 2
    @Option(name: .long, help: "Validations without improvement before a fold stops.") var patience = 6
    @Option(name: .long, help: "Proportional cost in bps per side.") var costBps = 10.0
    @Option(name: .long, help: "Reward = Sharpe − this × max drawdown.") var drawdownPenalty = 2.0
    @Option(name: .long, help: ArgumentHelp("How the data sets' rewards combine: mean, or worst-excess (the smallest "
        + "margin over the best static rule)."))
    var objective: TrainingObjective = .mean
    @Option(name: .long, help: "Reward −= this × annual one-way turnover.") var turnoverPenalty = 0.0
    @Option(name: .long, help: "Worker threads.") var threads = 2
    @Flag(name: .long, help: "Publish even when the new model does not beat the current one.")
    var force = false
    @Flag(name: .long, help: "Write the model and report to --out only; never publish.")
    var noPublish = false

    func run() throws {
        guard !dataFiles.isEmpty else { throw ValidationError("name at least one --data file") }
        let widths = hidden.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard widths.allSatisfy({ $0 != nil }) else { throw ValidationError("--hidden must be widths like 32,32") }
        var config = TrainingConfig()
        config.seed = seed
        config.hidden = widths.compactMap { $0 }
        config.folds = folds
        config.trainBlocks = trainBlocks
        config.generations = generations
        config.population = population
        config.sigma = sigma
        config.learningRate = learningRate
        config.weightDecay = weightDecay
        config.segmentPeriods = segment
        config.evaluateEvery = evaluateEvery
        config.patience = patience
        config.costBps = costBps
        config.drawdownPenalty = drawdownPenalty
        config.threads = threads
        config.objective = objective
        config.turnoverPenalty = turnoverPenalty
        do {
            try config.validate()
            try train(config)
        } catch let error as ResearchError {
            throw fail(error.message)
        }
    }

    private func train(_ config: TrainingConfig) throws {
        let started = ContinuousClock.now
        try checkDistinctNames(dataFiles)
        let data = try dataFiles.map { (path) throws(ResearchError) in try MarketData.load(path: path) }
        let start: PolicyNetwork
        if let warmStart {
            guard let bytes = FileManager.default.contents(atPath: warmStart) else {
                throw ResearchError(.invalidArgument, "\(warmStart): cannot read the warm-start model")
            }
            start = try PolicyNetwork(onnx: [UInt8](bytes), name: warmStart)
            _ = try ModelScorer(path: warmStart)  // its feature set must be Keel's
        } else {
            start = PolicyNetwork(hidden: config.hidden, seed: config.seed)
        }
        let trainer = PolicyTrainer(config: config)
        let bar = ProgressBar()
        let folds = try trainer.train(data: data, start: start) { bar.update($0) }
        bar.finish()
        printError("evaluating the test windows and stress scenarios...")
        let evaluation = try TrainingEvaluation.run(folds: folds, evaluator: trainer.evaluator, threads: config.threads)

        let repository = "\(models)/policy"
        let current = TrainingArtifacts.latestVersion(in: repository)
        let version = current + 1
        guard let last = folds.last else { throw ResearchError(.invalidArgument, "no fold was trained") }
        let recent = last.windows.map(\.validation)
        let recentBaselines = try trainer.evaluator.baselines(recent)
        let challenger = try trainer.evaluator.score(try PolicyEvaluator.model(last.network), on: recent,
                                                     baselines: recentBaselines)
        var champion: (version: Int, score: Double)? = nil
        // A current model that cannot be scored must not cost the new one:
        // its files are still written, and publishing then needs --force.
        var championError: String? = nil
        if current > 0 {
            do {
                let scorer = try ModelScorer(path: "\(repository)/\(current)/model.onnx")
                champion = (current, try trainer.evaluator.score(scorer.model, on: recent, baselines: recentBaselines))
            } catch {
                championError = error.message
            }
        }
        let seconds = Double((ContinuousClock.now - started).components.seconds)
        let date = ISO8601DateFormatter().string(from: Date())
        let command = "keel train policy " + CommandLine.arguments.dropFirst(3).joined(separator: " ")
        var files = TrainingArtifacts.report(version: version, command: command, date: date, config: config, data: data,
                                             folds: folds, evaluation: evaluation, challenger: challenger,
                                             champion: champion, seconds: seconds)
        let metadata = trainingMetadata(config: config, data: data, folds: folds, evaluation: evaluation,
                                        version: version, date: date, challenger: challenger)
        files.insert(("model.onnx", last.network.onnx(metadata: metadata,
                                                      doc: "Keel policy v\(version), trained by keel train policy")), at: 0)
        try TrainingArtifacts.write(files, to: out)
        print("trained policy written to \(out)/model.onnx with \(out)/REPORT.md")
        for t in evaluation.targetRows() {
            print("  \(t.dataset): test Sharpe \(String(format: "%.3f", t.policy.sharpe)) vs \(t.rule) "
                + "\(String(format: "%.3f", t.best.sharpe)); max drawdown \(String(format: "%.1f%%", t.policy.maxDrawdown * 100)) "
                + "vs \(String(format: "%.1f%%", t.best.maxDrawdown * 100)); target \(t.met ? "met" : "not met")")
        }
        if let p = evaluation.pooledTarget() {
            print("  all data sets (means): test Sharpe \(String(format: "%.3f", p.policySharpe)) vs \(p.rule) "
                + "\(String(format: "%.3f", p.ruleSharpe)); max drawdown \(String(format: "%.1f%%", p.policyDrawdown * 100)) "
                + "vs \(String(format: "%.1f%%", p.ruleDrawdown * 100)); target \(p.met ? "met" : "not met")")
        }
        let beats = champion.map { challenger > $0.score } ?? true
        if let champion {
            print("recent validation score: new \(String(format: "%.4f", challenger)), current v\(champion.version) "
                + "\(String(format: "%.4f", champion.score))")
        }
        if noPublish { return }
        if let championError, !force {
            printError("error: the current v\(current) could not be scored (\(championError)); not published without "
                + "--force (the new model's files are in \(out))")
            throw ExitCode(3)
        }
        guard beats || force else {
            printError("error: the new model does not beat the current v\(current) on the most recent validation windows; "
                + "not published (its files are in \(out))")
            throw ExitCode(3)
        }
        try TrainingArtifacts.promote(files, repository: repository, version: version)
        print("published as \(repository)/\(version)/model.onnx; a running server picks it up on its next poll")
    }

    private func trainingMetadata(config: TrainingConfig, data: [MarketData], folds: [PolicyTrainer.FoldResult],
                                  evaluation: TrainingEvaluation, version: Int, date: String, challenger: Double)
        -> [(String, String)]
    {
        var training: [String: Any] = [
            "method": "evolution strategies (antithetic, centred ranks, Adam), walk-forward",
            "date": date,
            "recent_validation_score": challenger,
            "data": data.map { ["file": $0.name, "sha256": $0.sha256] },
            "folds": folds.map { f in
                [
                    "fold": f.fold, "selected_generation": f.bestGeneration, "generations_run": f.generationsRun,
                    "validation_score": f.validationScore,
                    "windows": f.windows.map { w in
                        ["data": w.train.data.name, "train": w.train.label, "validation": w.validation.label,
                         "test": w.test.label]
                    },
                ] as [String: Any]
            },
            "test": evaluation.totals.map { t in
                ["data": t.dataset,
                 "strategies": zip(t.names, t.metrics).map { n, m in
                     ["name": n, "sharpe": m.sharpe, "max_drawdown": m.maxDrawdown, "final_wealth": m.finalWealth]
                 }] as [String: Any]
            },
        ]
        if let encoded = try? JSONEncoder().encode(config),
           let object = try? JSONSerialization.jsonObject(with: encoded)
        {
            training["hyperparameters"] = object
        }
        let json = (try? JSONSerialization.data(withJSONObject: training, options: [.sortedKeys]))
            .map { String(decoding: $0, as: UTF8.self) } ?? "{}"
        return [
            ("keel.kind", "policy"),
            ("keel.version", String(version)),
            ("keel.features", FeatureSet.names.joined(separator: ",")),
            ("keel.created_by", "keel train policy"),
            ("keel.trained_at", date),
            ("keel.data_sha256", data.map { "\($0.name):\($0.sha256)" }.joined(separator: ",")),
            ("keel.training", json),
        ]
    }
}

/// A one-line progress bar with ETA and the validation score on standard
/// error (redrawn in place on a terminal, one line per validation otherwise).
final class ProgressBar {
    let started = ContinuousClock.now
    let terminal = isatty(2) != 0
    var lastLine = ""

    func update(_ p: PolicyTrainer.Progress) {
        let elapsed = ContinuousClock.now - started
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
        let eta = p.done > 0.001 ? seconds * (1 - p.done) / p.done : .nan
        let width = 24
        let filled = min(width, Int(p.done * Double(width)))
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        let val = p.validation.map { String(format: "%.4f", $0) } ?? "-"
        let line = "fold \(p.fold)/\(p.folds) gen \(p.generation)/\(p.generations) [\(bar)] "
            + "\(String(format: "%3.0f", p.done * 100))% ETA \(clock(eta))  validation \(val) (best "
            + "\(String(format: "%.4f", p.bestValidation)))"
        if terminal {
            printErrorInline("\r" + line + "   ")
        } else if p.validation != nil {
            printError(line)
        }
        lastLine = line
    }

    func finish() { if terminal { printError("") } }

    private func clock(_ s: Double) -> String {
        guard s.isFinite else { return "--:--" }
        let t = Int(s.rounded())
        return t >= 3600 ? String(format: "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60) : String(format: "%d:%02d", t / 60, t % 60)
    }
}

func printErrorInline(_ text: String) {
    FileHandle.standardError.write(Data(text.utf8))
}

/// `keel train liquidity`: the quantile cash-flow forecaster, trained and
/// evaluated on synthetic accounts.
struct TrainLiquidityCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "liquidity",
        abstract: "Train the liquidity (cash-flow) forecaster on synthetic accounts and publish it.",
        discussion: """
            Generates seeded synthetic pension-fund and retail accounts, fits a linear quantile model \
            (p5, p50, p95 of the daily net flow) by minimising the pinball loss, evaluates it against \
            seasonal-naive and exponential-smoothing baselines on held-back accounts, and writes model.onnx \
            and REPORT.md to --out and, unless --no-publish, as the next version under <models>/liquidity. \
            Method: docs/LIQUIDITY.md.
            """
    )

    @Option(name: .long, help: ArgumentHelp("The model repository.", valueName: "dir")) var models = "models"
    @Option(name: .long, help: ArgumentHelp("Where the model and report are written.", valueName: "dir"))
    var out = "keel-train-liquidity"
    @Option(name: .long, help: "Random seed.") var seed: UInt64 = 20_261_121
    @Option(name: .long, help: "Training accounts.") var accounts = 200
    @Option(name: .long, help: "Held-back evaluation accounts.") var evaluationAccounts = 100
    @Option(name: .long, help: "Days generated per account.") var days = 4 * 365
    @Option(name: .long, help: "Days between forecast origins.") var originEvery = 14
    @Option(name: .long, help: "Training epochs.") var epochs = 300
    @Option(name: .long, help: "Adam step size.") var learningRate = 0.02
    @Option(name: .long, help: "Confidence of the evaluated cash buffer.") var confidence = 0.95
    @Flag(name: .long, help: "Write to --out only.") var noPublish = false

    func run() throws {
        var config = LiquidityTrainingConfig()
        config.seed = seed
        config.accounts = accounts
        config.evaluationAccounts = evaluationAccounts
        config.days = days
        config.originEvery = originEvery
        config.epochs = epochs
        config.learningRate = learningRate
        config.confidence = confidence
        do {
            try config.validate()
            try train(config)
        } catch let error as ResearchError {
            throw fail(error.message)
        }
    }

    private func train(_ config: LiquidityTrainingConfig) throws {
        let started = ContinuousClock.now
        let training = CashFlowGenerator.population(count: config.accounts, seed: config.seed, days: config.days)
        let held = CashFlowGenerator.population(count: config.evaluationAccounts, seed: config.seed ^ 0xE7A1, days: config.days)
        let (x, y) = LiquidityTraining.dataset(training, config: config)
        printError("fitting on \(y.count) rows from \(config.accounts) synthetic accounts...")
        let model = QuantileModel.fit(x: x, y: y, epochs: config.epochs, learningRate: config.learningRate) { epoch, loss in
            if epoch % 50 == 0 || epoch == config.epochs {
                printError("epoch \(epoch)/\(config.epochs): training pinball loss \(String(format: "%.5f", loss))")
            }
        }
        let calibration = LiquidityTraining.calibrate(model, accounts: training, config: config)
        let evaluation = LiquidityTraining.evaluate(model, calibration: calibration, accounts: held, config: config)
        let repository = "\(models)/liquidity"
        let version = TrainingArtifacts.latestVersion(in: repository) + 1
        let date = ISO8601DateFormatter().string(from: Date())
        let seconds = Double((ContinuousClock.now - started).components.seconds)
        let command = "keel train liquidity " + CommandLine.arguments.dropFirst(3).joined(separator: " ")
        let report = LiquidityTraining.report(version: version, command: command, date: date, config: config,
                                              evaluation: evaluation, trainingRows: y.count, seconds: seconds)
        let configJSON = (try? JSONEncoder().encode(config)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
        let figures = evaluation.methods.map { "\($0.name): pinball \(String(format: "%.4f", $0.pinball)), coverage "
            + "\(String(format: "%.3f", $0.coverage))" }.joined(separator: "; ")
        let metadata: [(String, String)] = [
            ("keel.kind", "liquidity"),
            ("keel.version", String(version)),
            ("keel.features", LiquidityFeatures.names.joined(separator: ",")),
            ("keel.outputs", "p5,p50,p95 of the daily net flow divided by the account's scale"),
            ("keel.buffer_calibration", calibration?.metadata ?? ""),
            ("keel.created_by", "keel train liquidity"),
            ("keel.trained_at", date),
            ("keel.training", "linear quantile regression (pinball loss, Adam) on SYNTHETIC accounts; "
                + "hyperparameters \(configJSON); evaluation on held-back synthetic accounts: \(figures)"),
        ]
        let files: [(name: String, bytes: [UInt8])] = [("model.onnx", model.onnx(metadata: metadata)),
                                                       ("REPORT.md", Array(report.utf8))]
        try publishForecaster(files, out: out, repository: repository, version: version, publish: !noPublish) {
            for m in evaluation.methods {
                print("  \(m.name): pinball \(String(format: "%.4f", m.pinball)), 5-95 % coverage \(String(format: "%.1f%%", m.coverage * 100))")
            }
            for b in evaluation.buffers {
                print("  \(b.name): mean \(String(format: "%.2f%%", b.meanBuffer * 100)) of value, shortfalls "
                    + "\(String(format: "%.1f%%", b.shortfalls * 100))")
            }
        }
    }
}

/// `keel train tax-loss`: the tax-loss forecaster (median 21-day return).
struct TrainTaxLossCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tax-loss",
        abstract: "Train the tax-loss forecaster on price history and publish it.",
        discussion: """
            Fits a linear median regression of each instrument's log return over the next 21 trading days on its \
            own price features (docs/TAX.md), on the first part of every data file; evaluates it on the held-back \
            rest against a zero forecast and momentum; writes model.onnx and REPORT.md to --out and, unless \
            --no-publish, as the next version under <models>/tax_loss.

            Example:
              keel train tax-loss --data ../shared/data/nyse_o.csv --data ../shared/data/nyse_n.csv \\
                  --data ../shared/data/djia.csv --data ../shared/data/pypfopt_stock_prices.csv
            """
    )

    @Option(name: .customLong("data"), help: ArgumentHelp("A data file to train on (repeatable).", valueName: "file"))
    var dataFiles: [String] = []
    @Option(name: .long, help: ArgumentHelp("The model repository.", valueName: "dir")) var models = "models"
    @Option(name: .long, help: ArgumentHelp("Where the model and report are written.", valueName: "dir"))
    var out = "keel-train-tax-loss"
    @Option(name: .long, help: "Share of each file's rows used for training (the rest is the test period).")
    var trainFraction = 0.7
    @Option(name: .long, help: "Rows between samples of one asset.") var every = 5
    @Option(name: .long, help: "Training epochs.") var epochs = 400
    @Option(name: .long, help: "Adam step size.") var learningRate = 0.01
    @Flag(name: .long, help: "Write to --out only.") var noPublish = false

    func run() throws {
        var config = TaxLossTrainingConfig()
        config.trainFraction = trainFraction
        config.every = every
        config.epochs = epochs
        config.learningRate = learningRate
        do {
            try config.validate()
            guard !dataFiles.isEmpty else { throw ResearchError(.invalidArgument, "--data is required (repeatable)") }
            try checkDistinctNames(dataFiles)
            try train(config)
        } catch let error as ResearchError {
            throw fail(error.message)
        }
    }

    private func train(_ config: TaxLossTrainingConfig) throws {
        let started = ContinuousClock.now
        var x: [Float] = [], y: [Double] = []
        var tests: [(name: String, samples: TaxLossTraining.Samples)] = []
        for path in dataFiles {
            let data = try MarketData.load(path: path)
            let split = TaxLossTraining.splitRow(data, config: config)
            let train = TaxLossTraining.samples(data, rows: 0..<split, targetEnd: split, every: config.every)
            let test = TaxLossTraining.samples(data, rows: split..<data.rows, targetEnd: data.rows, every: config.every)
            x += train.x
            y += train.y
            tests.append((data.name, test))
            printError("\(data.name): \(train.count) training and \(test.count) test samples")
        }
        guard !y.isEmpty else {
            throw ResearchError(.invalidData, "no training samples: each asset needs "
                + "\(TaxLossFeatures.minimumHistory + TaxLossFeatures.horizonDays) rows of prices before the split")
        }
        let model = QuantileModel.fit(x: x, y: y, epochs: config.epochs, learningRate: config.learningRate,
                                      quantiles: [0.5], featureCount: TaxLossFeatures.count) { epoch, loss in
            if epoch % 100 == 0 || epoch == config.epochs {
                printError("epoch \(epoch)/\(config.epochs): training pinball loss \(String(format: "%.5f", loss))")
            }
        }
        let evaluations = tests.filter { $0.samples.count > 0 }
            .map { TaxLossTraining.evaluate(model, test: $0.samples, dataset: $0.name) }
        let repository = "\(models)/tax_loss"
        let version = TrainingArtifacts.latestVersion(in: repository) + 1
        let date = ISO8601DateFormatter().string(from: Date())
        let seconds = Double((ContinuousClock.now - started).components.seconds)
        let command = "keel train tax-loss " + CommandLine.arguments.dropFirst(3).joined(separator: " ")
        let report = TaxLossTraining.report(version: version, command: command, date: date, config: config,
                                            model: model, trainingSamples: y.count, evaluations: evaluations,
                                            seconds: seconds)
        let configJSON = (try? JSONEncoder().encode(config)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
        let metadata: [(String, String)] = [
            ("keel.kind", "tax_loss"),
            ("keel.version", String(version)),
            ("keel.features", TaxLossFeatures.names.joined(separator: ",")),
            ("keel.outputs", "median log return over the next \(TaxLossFeatures.horizonDays) trading days"),
            ("keel.created_by", "keel train tax-loss"),
            ("keel.trained_at", date),
            ("keel.training", "linear median regression (pinball loss, Adam) on "
                + tests.map(\.name).joined(separator: ", ") + "; hyperparameters \(configJSON)"),
        ]
        let bytes = model.onnx(graph: "keel_tax_loss", producer: "keel train tax-loss", rows: "instruments",
                               output: "median_return",
                               doc: "Linear median forecaster of the 21-trading-day log return", metadata: metadata)
        let files: [(name: String, bytes: [UInt8])] = [("model.onnx", bytes), ("REPORT.md", Array(report.utf8))]
        try publishForecaster(files, out: out, repository: repository, version: version, publish: !noPublish) {
            for e in evaluations {
                for m in e.methods {
                    print("  \(e.dataset) \(m.name): pinball \(String(format: "%.5f", m.pinball)), rank IC "
                        + "\(String(format: "%.3f", m.rankIC)), pair hit rate \(String(format: "%.1f%%", m.pairHitRate * 100))")
                }
            }
        }
    }
}

/// Training reports figures per data file by its name: two files with the
/// same name would be merged.
func checkDistinctNames(_ paths: [String]) throws(ResearchError) {
    var seen: [String: String] = [:]
    for path in paths {
        let name = URL(fileURLWithPath: path).lastPathComponent
        if let other = seen[name] {
            throw ResearchError(.invalidArgument, "--data \(path) and --data \(other) have the same file name '\(name)'; "
                + "the training reports figures per file name, so give each data file its own")
        }
        seen[name] = path
    }
}

/// A forecaster's files: written to `out`, its figures printed, then
/// (unless `publish` is false) promoted as `version` under `repository`.
func publishForecaster(_ files: [(name: String, bytes: [UInt8])], out: String, repository: String, version: Int,
                       publish: Bool, figures: () -> Void) throws
{
    try TrainingArtifacts.write(files, to: out)
    figures()
    print("model and report written to \(out)")
    guard publish else { return }
    try TrainingArtifacts.promote(files, repository: repository, version: version)
    print("published as \(repository)/\(version)/model.onnx")
}
