import ArgumentParser
import KeelResearch

/// `keel backtest`: static rules and policies over a data file.
struct BacktestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backtest",
        abstract: "Backtest rebalancing strategies on daily market data.",
        discussion: """
            The data file holds price relatives (a header of asset names, one row per period) \
            or prices with a leading date column (an asset joins the universe on its first price). \
            A policy runs through the same engine that serves Rebalance. Costs are proportional: \
            --cost-bps on the notional of every buy and every sell. Conventions: docs/BACKTEST.md.

            Strategies: \(StrategySpec.usage).

            Examples:
              keel backtest --data ../shared/data/nyse_o.csv --strategy ucrp --strategy buy-and-hold --cost-bps 0
              keel backtest --data ../shared/data/nyse_o.csv --strategy calendar:21 --strategy band:3% \\
                  --strategy policy:models/policy/2/model.onnx --cost-bps 10 --report /tmp/report
              keel backtest --data ../shared/data/djia.csv --strategy ucrp --stress crash --format json
            """
    )

    @Option(name: .long, help: ArgumentHelp("The data file (CSV).", valueName: "file"))
    var data: String

    @Option(name: .customLong("strategy"), help: ArgumentHelp("A strategy to run (repeatable).", valueName: "name"))
    var strategies: [String] = []

    @Option(name: .long, help: "Proportional cost in basis points of traded notional, per side.")
    var costBps: Double = 0

    @Option(name: .long, help: "text or json.")
    var format: OutputFormat = .text

    @Option(name: .long, help: ArgumentHelp("Write report.json, README.md and SVG charts to this directory.",
                                            valueName: "dir"))
    var report: String?

    @Option(name: .long, help: ArgumentHelp("First row of the window: a row number or a date (default: the first).",
                                            valueName: "row|date"))
    var from: String?

    @Option(name: .long, help: ArgumentHelp("Last row of the window: a row number or a date (default: the last).",
                                            valueName: "row|date"))
    var to: String?

    @Option(name: .long, help: ArgumentHelp(
        "Inject a stress scenario: crash or regime-flip, optionally @ROW or @YYYY-MM-DD (default: mid-data).",
        valueName: "scenario"))
    var stress: String?

    @Option(name: .long, help: "Periods per year, for annualised figures.")
    var periodsPerYear: Double = 252

    @Option(name: .long, help: "Starting capital (matters for whole-share orders on priced data).")
    var capital: Double = 1_000_000

    @Option(name: .long, help: "Policy: daily prices each decision sees per asset.")
    var historyDays: Int = 64

    @Option(name: .long, help: "Policy: the client's SRI risk tolerance (1-7); sets the tilt budget.")
    var riskTolerance: Int = 7

    @Option(name: .long, help: ArgumentHelp("Run every strategy N times and report the timing.", valueName: "N"))
    var `repeat`: Int = 1

    enum OutputFormat: String, ExpressibleByArgument { case text, json }

    func run() throws {
        guard !strategies.isEmpty else {
            throw ValidationError("name at least one --strategy (\(StrategySpec.usage))")
        }
        guard (1...10_000).contains(`repeat`) else { throw ValidationError("--repeat must be within 1...10000") }
        guard (1...7).contains(riskTolerance) else { throw ValidationError("--risk-tolerance must be within 1...7") }
        guard historyDays >= 2 else { throw ValidationError("--history-days must be >= 2") }
        do {
            try execute()
        } catch {
            throw fail(error.message)
        }
    }

    private func execute() throws(ResearchError) {
        let specs = try strategies.map { (s) throws(ResearchError) in try StrategySpec.parse(s) }
        let options = BacktestOptions(costBps: costBps, periodsPerYear: periodsPerYear, capital: capital,
                                      recordWeights: report != nil || stress != nil)
        try options.validate()
        let clock = ContinuousClock()
        let loadStart = clock.now
        var market = try MarketData.load(path: data)
        let loadTime = clock.now - loadStart
        let first = try row(from, in: market, default: 0)
        let last = try row(to, in: market, default: market.rows - 1)
        guard first < last else {
            throw ResearchError(.invalidArgument, "the window \(from ?? "start")..\(to ?? "end") (rows \(first)...\(last)) "
                + "needs at least two rows")
        }
        var event: (row: Int, scenario: StressScenario)? = nil
        if let stress {
            let scenario = try StressScenario.parse(stress)
            let stressed = try scenario.apply(to: market, window: first...last)
            market = stressed.data
            event = (stressed.row, scenario)
        }
        var settings = PolicySettings()
        settings.historyDays = historyDays
        settings.riskTolerance = riskTolerance

        var results: [BacktestResult] = []
        var times: [[Double]] = Array(repeating: [], count: specs.count)
        for _ in 0..<`repeat` {
            results.removeAll()
            for (k, spec) in specs.enumerated() {
                let t0 = clock.now
                results.append(try spec.run(market, rows: first...last, options: options, policy: settings))
                times[k].append(milliseconds(clock.now - t0))
            }
        }
        var document = BacktestDocument(data: market, options: options, results: results)
        if let event {
            let window = StressScenario.recoveryPeriods
            document.stress = BacktestDocument.Stress(
                scenario: event.scenario.description, eventRow: event.row, eventLabel: market.label(ofRow: event.row),
                windowPeriods: window,
                outcomes: results.compactMap { r in
                    guard event.row >= r.firstRow, event.row < r.lastRow else { return nil }
                    return .init(StressOutcome(result: r, data: market, eventRow: event.row, windowPeriods: window))
                })
        }
        if `repeat` > 1 {
            let totals = (0..<`repeat`).map { r in times.reduce(0) { $0 + $1[r] } }
            document.timing = .init(
                repeatCount: `repeat`, loadMs: milliseconds(loadTime), runMsMedian: median(totals),
                runMsMin: totals.min() ?? 0,
                strategies: specs.indices.map { .init(name: results[$0].strategy, runMsMedian: median(times[$0]),
                                                      runMsMin: times[$0].min() ?? 0) })
        }
        if let report { try ReportWriter.write(document, results: results, data: market, to: report) }
        switch format {
        case .json: print(document.json())
        case .text: print(document.table())
        }
    }

    /// A row number or a date (the first row on or after it).
    private func row(_ text: String?, in data: MarketData, default fallback: Int) throws(ResearchError) -> Int {
        guard let text else { return fallback }
        if let r = Int(text) {
            guard r >= 0, r < data.rows else {
                throw ResearchError(.invalidArgument, "row \(r) is outside 0...\(data.rows - 1)")
            }
            return r
        }
        guard let r = data.row(onOrAfter: text) else {
            throw ResearchError(.invalidArgument, "\(data.name) has no row on or after '\(text)'"
                + (data.dates == nil ? " (it has no dates; give a row number)" : ""))
        }
        return r
    }
}

func milliseconds(_ d: Duration) -> Double {
    Double(d.components.seconds) * 1e3 + Double(d.components.attoseconds) * 1e-15
}

func median(_ values: [Double]) -> Double {
    guard !values.isEmpty else { return 0 }
    let s = values.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}
