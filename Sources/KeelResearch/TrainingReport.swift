import Foundation
import KeelInference
import KeelPortfolio

/// The static rules every policy is compared with (docs/TRAINING.md).
public let benchmarkRules: [StrategySpec] = [.buyAndHold, .ucrp, .calendar(every: 21), .band(threshold: 0.03)]

/// Out-of-sample evaluation of a training run: every fold's selected policy
/// and the static rules on the fold's test windows, totals over the chained
/// test windows, and stress scenarios on the last test windows.
public struct TrainingEvaluation: Sendable {
    public struct Row: Sendable {
        public var fold: Int
        public var dataset: String
        public var window: String
        /// Policy first, then ``benchmarkRules``.
        public var results: [BacktestResult]
    }

    public struct Total: Sendable {
        public var dataset: String
        public var names: [String]
        /// Chained wealth over all test windows, per strategy.
        public var wealth: [[Double]]
        public var metrics: [Metrics]
    }

    public struct StressRow: Sendable {
        public var dataset: String
        public var scenario: String
        public var eventLabel: String
        public var outcomes: [StressOutcome]
        public var metrics: [Metrics]
    }

    public var rows: [Row]
    public var totals: [Total]
    public var stress: [StressRow]

    public static func run(folds: [PolicyTrainer.FoldResult], evaluator: PolicyEvaluator, threads: Int)
        throws(ResearchError) -> TrainingEvaluation
    {
        let jobs: [(fold: Int, set: Int)] = folds.indices.flatMap { f in folds[f].windows.indices.map { (f, $0) } }
        let rows = try parallelMap(jobs.count, threads: threads) { (j: Int) throws(ResearchError) -> Row in
            let (f, s) = jobs[j]
            let window = folds[f].windows[s].test
            let model = try PolicyEvaluator.model(folds[f].network)
            var results = [try evaluator.run(model, on: window, name: "policy")]
            for rule in benchmarkRules {
                results.append(try rule.run(window.data, rows: window.rows, options: evaluator.options))
            }
            return Row(fold: folds[f].fold, dataset: window.data.name, window: window.label, results: results)
        }
        var totals: [Total] = []
        let sets = folds.first?.windows.count ?? 0
        for s in 0..<sets {
            let mine = rows.filter { r in r.dataset == folds[0].windows[s].test.data.name }
            guard let first = mine.first else { continue }
            var paths: [[Double]] = Array(repeating: [1], count: first.results.count)
            var turnover = [Double](repeating: 0, count: first.results.count)
            var costs = turnover
            var trades = [Int](repeating: 0, count: first.results.count)
            for row in mine {
                for (k, r) in row.results.enumerated() {
                    let base = paths[k].last!
                    paths[k].append(contentsOf: r.wealth.dropFirst().map { $0 * base })
                    turnover[k] += r.turnover
                    costs[k] += r.costs * base
                    trades[k] += r.trades
                }
            }
            let ppy = evaluator.options.periodsPerYear
            totals.append(Total(dataset: first.dataset, names: first.results.map(\.strategy), wealth: paths,
                                metrics: paths.indices.map {
                                    Metrics(wealth: paths[$0], periodsPerYear: ppy, turnover: turnover[$0],
                                            costs: costs[$0], trades: trades[$0])
                                }))
        }
        // Stress: each scenario in the middle of each data set's last test window.
        var stress: [StressRow] = []
        if let last = folds.last {
            let scenarios: [StressScenario.Kind] = [.crash, .regimeFlip]
            let stressJobs: [(set: Int, kind: StressScenario.Kind)] = last.windows.indices.flatMap { s in
                scenarios.map { (s, $0) }
            }
            stress = try parallelMap(stressJobs.count, threads: threads) { (j: Int) throws(ResearchError) -> StressRow in
                let (s, kind) = stressJobs[j]
                let window = last.windows[s].test
                let mid = (window.rows.lowerBound + window.rows.upperBound) / 2
                let scenario = StressScenario(kind: kind, at: String(mid))
                let (data, row) = try scenario.apply(to: window.data, window: window.rows)
                let stressed = Window(data: data, rows: window.rows)
                var options = evaluator.options
                options.recordWeights = true
                var results = [try evaluator.run(try PolicyEvaluator.model(last.network), on: stressed, name: "policy",
                                                 record: true)]
                for rule in benchmarkRules {
                    results.append(try rule.run(data, rows: window.rows, options: options))
                }
                let span = min(StressScenario.recoveryPeriods, window.rows.upperBound - row)
                return StressRow(dataset: window.data.name, scenario: kind.rawValue, eventLabel: data.label(ofRow: row),
                                 outcomes: results.map { StressOutcome(result: $0, data: data, eventRow: row,
                                                                       windowPeriods: span) },
                                 metrics: results.map(\.metrics))
            }
        }
        return TrainingEvaluation(rows: rows, totals: totals, stress: stress)
    }

    /// Per data set: the policy's total Sharpe against the best static
    /// rule's (by Sharpe), and whether the target holds (Sharpe ≥ 1.05 × the
    /// rule's and max drawdown no worse).
    public func targetRows() -> [(dataset: String, policy: Metrics, rule: String, best: Metrics, met: Bool)] {
        totals.map { t in
            var bestIndex = 1
            for k in 1..<t.metrics.count where t.metrics[k].sharpe > t.metrics[bestIndex].sharpe { bestIndex = k }
            let p = t.metrics[0], b = t.metrics[bestIndex]
            let met = p.sharpe >= b.sharpe + 0.05 * abs(b.sharpe) && p.maxDrawdown <= b.maxDrawdown + 1e-12
            return (t.dataset, p, t.names[bestIndex], b, met)
        }
    }

    /// All data sets together: each strategy's Sharpe and max drawdown
    /// averaged over the data sets, the best static rule by mean Sharpe, and
    /// the same test. Nil without totals.
    public func pooledTarget() -> (policySharpe: Double, policyDrawdown: Double, rule: String, ruleSharpe: Double,
                                   ruleDrawdown: Double, met: Bool)?
    {
        guard let first = totals.first, !first.names.isEmpty else { return nil }
        let count = Double(totals.count)
        let sharpe = first.names.indices.map { k in totals.reduce(0) { $0 + $1.metrics[k].sharpe } / count }
        let drawdown = first.names.indices.map { k in totals.reduce(0) { $0 + $1.metrics[k].maxDrawdown } / count }
        guard sharpe.count > 1 else { return nil }
        var best = 1
        for k in 1..<sharpe.count where sharpe[k] > sharpe[best] { best = k }
        let met = sharpe[0] >= sharpe[best] + 0.05 * abs(sharpe[best]) && drawdown[0] <= drawdown[best] + 1e-12
        return (sharpe[0], drawdown[0], first.names[best], sharpe[best], drawdown[best], met)
    }
}

/// Writes the trained model, its `REPORT.md` and pictures, and promotes it.
public enum TrainingArtifacts {
    /// The highest numeric version directory under `directory` (0 if none).
    public static func latestVersion(in directory: String) -> Int {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.compactMap { Int($0) }.filter { v in
            FileManager.default.fileExists(atPath: "\(directory)/\(v)/model.onnx")
        }.max() ?? 0
    }

    public static func write(_ files: [(name: String, bytes: [UInt8])], to directory: String) throws(ResearchError) {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            for f in files {
                try Data(f.bytes).write(to: URL(fileURLWithPath: directory).appendingPathComponent(f.name), options: .atomic)
            }
        } catch {
            throw ResearchError(.io, "\(directory): cannot write the training output: \(error.localizedDescription)")
        }
    }

    /// Copies the files into `<repository>/<version>/` through a hidden
    /// temporary directory renamed into place, so that the server's model
    /// poller never sees a half-written version.
    public static func promote(_ files: [(name: String, bytes: [UInt8])], repository: String, version: Int)
        throws(ResearchError)
    {
        let temporary = "\(repository)/.incoming-\(version)-\(getpid())"
        let final = "\(repository)/\(version)"
        guard !FileManager.default.fileExists(atPath: final) else {
            throw ResearchError(.io, "\(final) exists already; not overwriting a published version")
        }
        try write(files, to: temporary)
        do {
            try FileManager.default.moveItem(atPath: temporary, toPath: final)
        } catch {
            try? FileManager.default.removeItem(atPath: temporary)
            throw ResearchError(.io, "\(final): cannot publish the new version: \(error.localizedDescription)")
        }
    }

    /// `REPORT.md` and its pictures.
    public static func report(version: Int, command: String, date: String, config: TrainingConfig, data: [MarketData],
                              folds: [PolicyTrainer.FoldResult], evaluation: TrainingEvaluation,
                              challenger: Double, champion: (version: Int, score: Double)?, seconds: Double)
        -> [(name: String, bytes: [UInt8])]
    {
        var md = "# Policy v\(version): walk-forward training report\n\n"
        md += "Trained \(date) by `\(command)` in \(String(format: "%.0f", seconds)) s. Method and conventions: "
            + "docs/TRAINING.md. Every figure below is net of \(formatNumber(config.costBps)) bps per side, "
            + "measured by the backtester running each policy through the serving engine.\n\n"
        md += "Data (read from `../shared/data`, SHA-256 of each file):\n\n"
        for d in data { md += "- `\(d.name)`: \(d.assetCount) assets, \(d.periods) periods, `\(d.sha256)`\n" }
        md += "\nNetwork \(folds.last?.network.sizes.map(String.init).joined(separator: "-") ?? "?"), "
            + "\(folds.last?.network.parameters.count ?? 0) parameters. Hyperparameters: population \(config.population), "
            + "sigma \(config.sigma), learning rate \(config.learningRate), weight decay \(config.weightDecay), "
            + "segment \(config.segmentPeriods) periods, at most \(config.generations) generations per fold, "
            + "validation every \(config.evaluateEvery), patience \(config.patience), reward = Sharpe − "
            + "\(config.drawdownPenalty) × max drawdown, seed \(config.seed).\n\n"

        md += "## Out-of-sample result against the target\n\n"
        md += "Target: the policy's Sharpe over the chained test windows at least 5 % above the best static rule's, "
            + "with a maximum drawdown no worse than that rule's.\n\n"
        md += "| data set | policy Sharpe | best static rule | its Sharpe | Sharpe ratio | policy max DD | rule max DD | target met |\n"
        md += "|---|---:|---|---:|---:|---:|---:|:---:|\n"
        for t in evaluation.targetRows() {
            let ratio = t.best.sharpe != 0 ? t.policy.sharpe / t.best.sharpe : .nan
            md += "| \(t.dataset) | \(fixed(t.policy.sharpe, 3)) | \(t.rule) | \(fixed(t.best.sharpe, 3)) | "
                + "\(fixed(ratio, 3)) | \(percent(t.policy.maxDrawdown)) | \(percent(t.best.maxDrawdown)) | "
                + "\(t.met ? "yes" : "**no**") |\n"
        }
        if let p = evaluation.pooledTarget() {
            md += "| all data sets (mean of each figure) | \(fixed(p.policySharpe, 3)) | \(p.rule) | \(fixed(p.ruleSharpe, 3)) | "
                + "\(fixed(p.ruleSharpe != 0 ? p.policySharpe / p.ruleSharpe : .nan, 3)) | \(percent(p.policyDrawdown)) | "
                + "\(percent(p.ruleDrawdown)) | \(p.met ? "yes" : "**no**") |\n"
        }
        md += "\n## Totals over the chained test windows\n\n"
        for t in evaluation.totals {
            md += "**\(t.dataset)**\n\n"
            md += metricsTable(names: t.names, metrics: t.metrics)
        }
        md += "## Walk-forward windows\n\n"
        md += "Each data set is cut into \(config.folds + config.trainBlocks + 1) equal blocks; fold k trains on "
            + "\(config.trainBlocks) blocks, selects the model and stops early on the next block (validation) and is "
            + "tested on the block after (test windows are only reported). Each fold starts from the previous "
            + "fold's selected network.\n\n"
        md += "| fold | data set | train | validation | test | generations run | selected at | validation score |\n"
        md += "|---:|---|---|---|---|---:|---:|---:|\n"
        for f in folds {
            for w in f.windows {
                md += "| \(f.fold) | \(w.train.data.name) | \(w.train.label) | \(w.validation.label) | \(w.test.label) | "
                    + "\(f.generationsRun) | \(f.bestGeneration) | \(fixed(f.validationScore, 4)) |\n"
            }
        }
        md += "\n## Test windows, one by one\n\n"
        md += "| fold | data set | test window | strategy | final wealth | Sharpe | max DD | turnover/yr | costs |\n"
        md += "|---:|---|---|---|---:|---:|---:|---:|---:|\n"
        var losses: [String] = []
        for row in evaluation.rows {
            for r in row.results {
                md += "| \(row.fold) | \(row.dataset) | \(row.window) | \(r.strategy) | \(fixed(r.metrics.finalWealth, 4)) | "
                    + "\(fixed(r.metrics.sharpe, 3)) | \(percent(r.metrics.maxDrawdown)) | \(fixed(r.metrics.turnover, 2)) | "
                    + "\(fixed(r.costs, 5)) |\n"
            }
            let bestRule = row.results.dropFirst().max { $0.metrics.sharpe < $1.metrics.sharpe }
            if let bestRule, row.results[0].metrics.sharpe < bestRule.metrics.sharpe {
                losses.append("fold \(row.fold), \(row.dataset) (\(row.window)): policy Sharpe "
                    + "\(fixed(row.results[0].metrics.sharpe, 3)) < \(bestRule.strategy) \(fixed(bestRule.metrics.sharpe, 3))")
            }
        }
        md += "\nWhere the policy loses to the best static rule of the window (\(losses.count) of "
            + "\(evaluation.rows.count) test windows):\n\n"
        md += losses.isEmpty ? "- none\n" : losses.map { "- \($0)\n" }.joined()
        md += "\n## Stress\n\n"
        md += "A crash (one period of −20 % across assets, then a year of slow recovery) and a regime flip (every "
            + "return's sign reversed from the event on), each placed in the middle of the last test window. "
            + "Trading effect: the window's return minus that of holding the event row's portfolio unchanged "
            + "(negative = the strategy's own trading made it worse).\n\n"
        md += "| data set | scenario | event | strategy | event return | window return | deepest fall below the event | trading effect | window turnover |\n"
        md += "|---|---|---|---|---:|---:|---:|---:|---:|\n"
        for s in evaluation.stress {
            for o in s.outcomes {
                md += "| \(s.dataset) | \(s.scenario) | \(s.eventLabel) | \(o.strategy) | \(percent(o.eventReturn)) | "
                    + "\(percent(o.windowReturn)) | \(percent(o.fallBelowEvent)) | \(percent(o.tradingEffect)) | "
                    + "\(fixed(o.windowTurnover, 3)) |\n"
            }
        }
        md += "\n## Champion and challenger\n\n"
        if let champion {
            md += "On the most recent validation windows (fold \(config.folds)), the new model scores "
                + "\(fixed(challenger, 4)) against \(fixed(champion.score, 4)) for the current v\(champion.version).\n\n"
        } else {
            md += "No current model: the new model scores \(fixed(challenger, 4)) on the most recent validation windows.\n\n"
        }

        var files: [(name: String, bytes: [UInt8])] = []
        md += "## Pictures\n\n"
        for t in evaluation.totals {
            let name = "equity-\(slug(t.dataset)).svg"
            let svg = Charts.lineChart(title: "Test windows chained: \(t.dataset), \(formatNumber(config.costBps)) bps",
                                       yLabel: "wealth", series: zip(t.names, t.wealth).map { ChartSeries(name: $0, values: $1) },
                                       logScale: true)
            files.append((name, Array(svg.utf8)))
            let dd = "drawdown-\(slug(t.dataset)).svg"
            files.append((dd, Array(Charts.lineChart(title: "Drawdowns, test windows chained: \(t.dataset)",
                                                      yLabel: "drawdown",
                                                      series: zip(t.names, t.wealth).map { ChartSeries(name: $0, values: Metrics.drawdowns($1)) },
                                                      percent: true).utf8)))
            md += "![\(t.dataset) equity](\(name))\n\n![\(t.dataset) drawdowns](\(dd))\n\n"
        }
        let groups = evaluation.rows.map { "f\($0.fold) \($0.dataset)" }
        let names = evaluation.rows.first?.results.map(\.strategy) ?? []
        let bars = Charts.groupedBars(title: "Sharpe per test window", yLabel: "Sharpe", groups: groups,
                                      series: names.indices.map { k in
                                          ChartSeries(name: names[k], values: evaluation.rows.map { $0.results[k].metrics.sharpe })
                                      })
        files.append(("sharpe-by-window.svg", Array(bars.utf8)))
        let longest = folds.map(\.curve.count).max() ?? 0
        let curves = Charts.lineChart(title: "Validation score by generation", yLabel: "score",
                                      series: folds.map { f in
                                          ChartSeries(name: "fold \(f.fold)",
                                                      values: f.curve + [Double](repeating: .nan, count: longest - f.curve.count))
                                      })
        files.append(("validation-curve.svg", Array(curves.utf8)))
        md += "![Sharpe per test window](sharpe-by-window.svg)\n\n![Validation curve](validation-curve.svg)\n"
        files.append(("REPORT.md", Array(md.utf8)))
        return files
    }

    static func metricsTable(names: [String], metrics: [Metrics]) -> String {
        var md = "| strategy | final wealth | CAGR | volatility | Sharpe | Sortino | max DD | Calmar | turnover/yr |\n"
        md += "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        for (n, m) in zip(names, metrics) {
            md += "| \(n) | \(fixed(m.finalWealth, 4)) | \(percent(m.cagr)) | \(percent(m.volatility)) | "
                + "\(fixed(m.sharpe, 3)) | \(fixed(m.sortino, 3)) | \(percent(m.maxDrawdown)) | \(fixed(m.calmar, 3)) | "
                + "\(fixed(m.turnover, 2)) |\n"
        }
        return md + "\n"
    }

    static func slug(_ s: String) -> String {
        String(s.lowercased().map { $0.isLetter || $0.isNumber ? $0 : "-" })
    }
}
