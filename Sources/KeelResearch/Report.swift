import Foundation

/// The JSON form of a backtest run (`keel backtest --format json`, and
/// `report.json` in a report directory). Keys are snake_case; see
/// docs/BACKTEST.md.
public struct BacktestDocument: Codable, Sendable {
    public struct DataInfo: Codable, Sendable {
        public var file: String
        public var assets: Int
        public var periods: Int
        public var first: String
        public var last: String
        public var prices: Bool
        public var sha256: String
    }

    public struct StrategyFigures: Codable, Sendable {
        public var name: String
        public var finalWealth: Double
        public var cagr: Double
        public var volatility: Double
        public var sharpe: Double
        public var sortino: Double
        public var maxDrawdown: Double
        public var calmar: Double
        public var turnover: Double
        public var costs: Double
        public var trades: Int
        public var rebalances: Int

        public init(_ r: BacktestResult) {
            name = r.strategy
            finalWealth = r.metrics.finalWealth
            cagr = r.metrics.cagr
            volatility = r.metrics.volatility
            sharpe = r.metrics.sharpe
            sortino = r.metrics.sortino
            maxDrawdown = r.metrics.maxDrawdown
            calmar = r.metrics.calmar
            turnover = r.metrics.turnover
            costs = r.costs
            trades = r.trades
            rebalances = r.rebalances
        }
    }

    public struct Stress: Codable, Sendable {
        public struct Outcome: Codable, Sendable {
            public var name: String
            public var eventReturn: Double
            public var windowReturn: Double
            public var fallBelowEvent: Double
            public var tradingEffect: Double
            public var windowTurnover: Double

            public init(_ o: StressOutcome) {
                name = o.strategy
                eventReturn = o.eventReturn
                windowReturn = o.windowReturn
                fallBelowEvent = o.fallBelowEvent
                tradingEffect = o.tradingEffect
                windowTurnover = o.windowTurnover
            }
        }

        public var scenario: String
        public var eventRow: Int
        public var eventLabel: String
        public var windowPeriods: Int
        public var outcomes: [Outcome]

        public init(scenario: String, eventRow: Int, eventLabel: String, windowPeriods: Int, outcomes: [Outcome]) {
            self.scenario = scenario
            self.eventRow = eventRow
            self.eventLabel = eventLabel
            self.windowPeriods = windowPeriods
            self.outcomes = outcomes
        }
    }

    public struct Timing: Codable, Sendable {
        public struct Run: Codable, Sendable {
            public var name: String
            public var runMsMedian: Double
            public var runMsMin: Double

            public init(name: String, runMsMedian: Double, runMsMin: Double) {
                self.name = name
                self.runMsMedian = runMsMedian
                self.runMsMin = runMsMin
            }
        }

        public var repeatCount: Int
        public var loadMs: Double
        /// All strategies together, per repetition.
        public var runMsMedian: Double
        public var runMsMin: Double
        public var strategies: [Run]

        public init(repeatCount: Int, loadMs: Double, runMsMedian: Double, runMsMin: Double, strategies: [Run]) {
            self.repeatCount = repeatCount
            self.loadMs = loadMs
            self.runMsMedian = runMsMedian
            self.runMsMin = runMsMin
            self.strategies = strategies
        }

        enum CodingKeys: String, CodingKey {
            case repeatCount = "repeat", loadMs, runMsMedian, runMsMin, strategies
        }
    }

    public var data: DataInfo
    public var costBps: Double
    public var periodsPerYear: Double
    public var window: [String]
    public var strategies: [StrategyFigures]
    public var stress: Stress?
    public var timing: Timing?

    public init(data: MarketData, options: BacktestOptions, results: [BacktestResult]) {
        let first = results.first?.firstRow ?? 0
        let last = results.first?.lastRow ?? data.rows - 1
        self.data = DataInfo(file: data.name, assets: data.assetCount, periods: data.periods,
                             first: data.label(ofRow: 0), last: data.label(ofRow: data.rows - 1), prices: data.hasPrices,
                             sha256: data.sha256)
        costBps = options.costBps
        periodsPerYear = options.periodsPerYear
        window = [data.label(ofRow: first), data.label(ofRow: last)]
        strategies = results.map(StrategyFigures.init)
    }

    public func json() -> String {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf",
                                                                      nan: "nan")
        guard let bytes = try? encoder.encode(self) else { return "{}" }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// A fixed-width table for people.
    public func table() -> String {
        var lines: [String] = []
        lines.append("\(data.file): \(data.assets) assets, \(data.periods) periods (\(window[0]) .. \(window[1])), "
            + "costs \(formatNumber(costBps)) bps per side")
        let header = ["strategy", "final wealth", "CAGR", "vol", "Sharpe", "Sortino", "max DD", "Calmar", "turnover/yr",
                      "costs", "trades"]
        var rows = [header]
        for s in strategies {
            rows.append([s.name, fixed(s.finalWealth, 4), percent(s.cagr), percent(s.volatility), fixed(s.sharpe, 3),
                         fixed(s.sortino, 3), percent(s.maxDrawdown), fixed(s.calmar, 3), fixed(s.turnover, 2),
                         fixed(s.costs, 4), String(s.trades)])
        }
        lines.append(contentsOf: alignedTable(rows))
        if let stress {
            lines.append("")
            lines.append("stress \(stress.scenario) at row \(stress.eventRow) (\(stress.eventLabel)), window "
                + "\(stress.windowPeriods) periods:")
            var srows = [["strategy", "event", "window", "fall below event", "trading effect", "window turnover"]]
            for o in stress.outcomes {
                srows.append([o.name, percent(o.eventReturn), percent(o.windowReturn), percent(o.fallBelowEvent),
                              percent(o.tradingEffect), fixed(o.windowTurnover, 3)])
            }
            lines.append(contentsOf: alignedTable(srows))
        }
        if let timing {
            lines.append("")
            lines.append("timing: load \(fixed(timing.loadMs, 2)) ms; run (all strategies) median "
                + "\(fixed(timing.runMsMedian, 3)) ms, min \(fixed(timing.runMsMin, 3)) ms over \(timing.repeatCount) runs")
        }
        return lines.joined(separator: "\n")
    }
}

/// Rows of cells as aligned text (first column left, the rest right).
func alignedTable(_ rows: [[String]]) -> [String] {
    guard let width = rows.map(\.count).max() else { return [] }
    var sizes = [Int](repeating: 0, count: width)
    for row in rows { for (k, cell) in row.enumerated() { sizes[k] = max(sizes[k], cell.count) } }
    return rows.map { row in
        row.enumerated().map { k, cell in
            let pad = String(repeating: " ", count: sizes[k] - cell.count)
            return k == 0 ? cell + pad : pad + cell
        }.joined(separator: "  ")
    }
}

func fixed(_ v: Double, _ digits: Int) -> String {
    guard v.isFinite else { return String(v) }
    return String(format: "%.\(digits)f", v)
}

func percent(_ v: Double) -> String {
    guard v.isFinite else { return String(v) }
    return String(format: "%.2f%%", v * 100)
}

/// Writes a report directory: `report.json`, `README.md` and SVG charts
/// (equity curves, drawdowns, and the weights of each strategy that
/// recorded them).
public enum ReportWriter {
    public static func write(_ document: BacktestDocument, results: [BacktestResult], data: MarketData,
                             to directory: String) throws(ResearchError)
    {
        let files = FileManager.default
        do {
            try files.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw ResearchError(.io, "\(directory): cannot create the report directory: \(error.localizedDescription)")
        }
        guard let first = results.first else { return }
        let labels = (first.firstRow...first.lastRow).map { data.label(ofRow: $0) }
        var charts: [(file: String, title: String, svg: String)] = []
        charts.append(("equity.svg", "Wealth (log scale)",
                       Charts.lineChart(title: "Wealth of 1 invested (\(data.name), \(formatNumber(document.costBps)) bps)",
                                        yLabel: "wealth", series: results.map { ChartSeries(name: $0.strategy, values: $0.wealth) },
                                        xLabels: labels, logScale: true)))
        charts.append(("drawdown.svg", "Drawdowns",
                       Charts.lineChart(title: "Drawdown from the running peak (\(data.name))", yLabel: "drawdown",
                                        series: results.map { ChartSeries(name: $0.strategy, values: Metrics.drawdowns($0.wealth)) },
                                        xLabels: labels, percent: true)))
        for (k, r) in results.enumerated() {
            guard let weights = r.weights, r.strategy.hasPrefix("policy") else { continue }
            let m = data.assetCount
            let decisions = weights.count / max(1, m)
            let series = (0..<m).map { i in ChartSeries(name: data.assets[i], values: (0..<decisions).map { weights[$0 * m + i] }) }
            charts.append(("weights-\(k + 1).svg", "Weights of \(r.strategy)",
                           Charts.stackedArea(title: "Weights over time: \(r.strategy)", yLabel: "weight", series: series,
                                              xLabels: Array(labels.prefix(decisions)))))
        }
        var readme = "# Backtest report\n\n```\n\(document.table())\n```\n\n"
        for chart in charts { readme += "## \(chart.title)\n\n![\(chart.title)](\(chart.file))\n\n" }
        readme += "Figures: `report.json`. Conventions: docs/BACKTEST.md.\n"
        var outputs = charts.map { ($0.file, $0.svg) }
        outputs.append(("report.json", document.json() + "\n"))
        outputs.append(("README.md", readme))
        for (file, text) in outputs {
            let path = (directory as NSString).appendingPathComponent(file)
            do {
                try text.write(toFile: path, atomically: true, encoding: .utf8)
            } catch {
                throw ResearchError(.io, "\(path): cannot write: \(error.localizedDescription)")
            }
        }
    }
}
