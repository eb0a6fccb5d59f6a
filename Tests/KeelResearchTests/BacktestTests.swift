import Foundation
import KeelPortfolio
import Testing
@testable import KeelResearch

@Suite("Static rules and metrics")
struct StaticRuleTests {
    /// UCRP, uniform buy-and-hold and the best asset against their
    /// closed forms, computed here independently of the backtester.
    @Test(arguments: [(3, 50, UInt64(1)), (5, 300, 2), (12, 800, 3)])
    func closedForms(assets m: Int, periods: Int, seed: UInt64) throws {
        let data = try Synthetic.data(assets: m, periods: periods, seed: seed)
        let x = Synthetic.relatives(assets: m, periods: periods, seed: seed)
        var ucrp = 1.0
        var growth = [Double](repeating: 1, count: m)
        for t in 0..<periods {
            var mean = 0.0
            for i in 0..<m { mean += x[t * m + i]; growth[i] *= x[t * m + i] }
            ucrp *= mean / Double(m)
        }
        let ubah = growth.reduce(0, +) / Double(m)
        let options = BacktestOptions()
        #expect(relativeError(try StrategySpec.ucrp.run(data, options: options).metrics.finalWealth, ucrp) < 1e-12)
        #expect(relativeError(try StrategySpec.calendar(every: 1).run(data, options: options).metrics.finalWealth, ucrp) < 1e-12)
        #expect(relativeError(try StrategySpec.buyAndHold.run(data, options: options).metrics.finalWealth, ubah) < 1e-12)
        #expect(relativeError(try StrategySpec.bestAsset.run(data, options: options).metrics.finalWealth, growth.max()!) < 1e-12)
        #expect(relativeError(try StrategySpec.asset("a1").run(data, options: options).metrics.finalWealth, growth[1]) < 1e-12)
        // A band wider than any deviation never trades: buy-and-hold.
        let wide = try StrategySpec.band(threshold: 0.999).run(data, options: options)
        #expect(wide.trades == 0 && relativeError(wide.metrics.finalWealth, ubah) < 1e-12)
    }

    /// One rebalance of two assets by hand: start at 1/2 each; asset 0
    /// doubles, so the book is (1, 0.5), worth 1.5. Rebalancing to 1/2
    /// each at cost c: W' = 1.5 − c(|W'/2 − 1| + |W'/2 − 0.5|) = 1.5 − 0.5c.
    @Test(arguments: [0.0, 10.0, 50.0, 250.0])
    func costOfOneRebalance(bps: Double) throws {
        let data = try MarketData.parse(Array("a,b\n2,1\n1,1\n".utf8), name: "two.csv")
        let c = bps / 10_000
        let r = try StrategySpec.ucrp.run(data, options: BacktestOptions(costBps: bps))
        #expect(abs(r.metrics.finalWealth - (1.5 - 0.5 * c)) < 1e-14)
        #expect(abs(r.costs - 0.5 * c) < 1e-14)
        // Traded: (1 − W'/2) + (W'/2 − 0.5) = 0.5; one-way turnover 0.25 / 1.5.
        #expect(abs(r.turnover - 0.25 / 1.5) < 1e-14)
        #expect(r.trades == 2)
        #expect(r.rebalances == 1)
    }

    @Test func costsLowerWealthAndScaleWithTheRate() throws {
        let data = try Synthetic.data(assets: 6, periods: 400, seed: 9)
        let free = try StrategySpec.ucrp.run(data, options: BacktestOptions(costBps: 0))
        let ten = try StrategySpec.ucrp.run(data, options: BacktestOptions(costBps: 10))
        let fifty = try StrategySpec.ucrp.run(data, options: BacktestOptions(costBps: 50))
        #expect(free.costs == 0)
        #expect(ten.metrics.finalWealth < free.metrics.finalWealth)
        #expect(fifty.metrics.finalWealth < ten.metrics.finalWealth)
        #expect(fifty.costs > 4 * ten.costs && fifty.costs < 6 * ten.costs)
    }

    @Test func calendarAndBandTradeLessThanUCRP() throws {
        let data = try Synthetic.data(assets: 8, periods: 500, seed: 4)
        let options = BacktestOptions(costBps: 10)
        let ucrp = try StrategySpec.ucrp.run(data, options: options)
        let monthly = try StrategySpec.calendar(every: 21).run(data, options: options)
        let band = try StrategySpec.band(threshold: 0.03).run(data, options: options)
        #expect(monthly.rebalances == (500 + 20) / 21 - 1)  // the first row holds 1/N already
        #expect(band.rebalances < ucrp.rebalances && band.rebalances > 0)
        #expect(monthly.turnover < ucrp.turnover && band.turnover < ucrp.turnover)
    }

    /// An asset listed later joins UCRP on its first price and is never
    /// bought by buy-and-hold.
    @Test func listingsJoinTheUniverse() throws {
        let data = try Synthetic.priced(assets: 4, rows: 120, late: 3, listing: 50)
        let options = BacktestOptions(recordWeights: true)
        let ucrp = try StrategySpec.ucrp.run(data, options: options)
        let hold = try StrategySpec.buyAndHold.run(data, options: options)
        let w = try #require(ucrp.weights)
        #expect(w[49 * 4 + 3] == 0)
        #expect(abs(w[50 * 4 + 3] - 0.25) < 1e-12)
        #expect(abs(w[10 * 4 + 0] - 1.0 / 3.0) < 1e-12)
        #expect(try #require(hold.weights).enumerated().allSatisfy { $0.offset % 4 != 3 || $0.element == 0 })
    }

    @Test func windowsStartFresh() throws {
        let data = try Synthetic.data(assets: 4, periods: 300, seed: 5)
        let r = try StrategySpec.ucrp.run(data, rows: 100...200, options: BacktestOptions())
        #expect(r.wealth.count == 101 && r.wealth[0] == 1)
        #expect(r.firstRow == 100 && r.lastRow == 200)
        #expect(throws: ResearchError.self) { try StrategySpec.ucrp.run(data, rows: 250...400, options: BacktestOptions()) }
        #expect(throws: ResearchError.self) { try StrategySpec.ucrp.run(data, rows: 7...7, options: BacktestOptions()) }
    }

    @Test func metricsOfAKnownPath() {
        let m = Metrics(wealth: [1, 1.1, 0.99, 1.089], periodsPerYear: 252)
        let r = [0.1, -0.1, 0.1]
        let mean = r.reduce(0, +) / 3
        let sd = (r.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / 2).squareRoot()
        #expect(abs(m.finalWealth - 1.089) < 1e-15)
        #expect(abs(m.cagr - (pow(1.089, 84) - 1)) < 1e-9)
        #expect(abs(m.volatility - sd * 252.0.squareRoot()) < 1e-12)
        #expect(abs(m.sharpe - mean / sd * 252.0.squareRoot()) < 1e-12)
        #expect(abs(m.sortino - mean / (0.01 / 3).squareRoot() * 252.0.squareRoot()) < 1e-9)
        #expect(abs(m.maxDrawdown - 0.1) < 1e-12)
        #expect(abs(m.calmar - m.cagr / 0.1) < 1e-9)
        #expect(Metrics.drawdowns([1, 2, 1, 3]) == [0, 0, -0.5, 0])
    }

    @Test(arguments: [
        ("buy-and-hold", StrategySpec.buyAndHold), ("ubah", .buyAndHold), ("ucrp", .ucrp),
        ("calendar:21", .calendar(every: 21)), ("band:0.03", .band(threshold: 0.03)), ("band:3%", .band(threshold: 0.03)),
        ("best-asset", .bestAsset), ("asset:ibm", .asset("ibm")), ("policy:m.onnx", .policy(path: "m.onnx")),
    ])
    func strategyNamesParse(text: String, spec: StrategySpec) throws {
        #expect(try StrategySpec.parse(text) == spec)
    }

    @Test(arguments: ["", "ucrp:2", "calendar", "calendar:0", "calendar:x", "band", "band:0", "band:1.5", "band:abc",
                      "policy:", "asset:", "momentum"])
    func badStrategyNamesAreErrors(text: String) {
        do {
            _ = try StrategySpec.parse(text)
            Issue.record("accepted '\(text)'")
        } catch {
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains("strategy '\(text)'"))
        }
    }

    @Test func unknownAssetColumnIsNamed() throws {
        let data = try Synthetic.data(assets: 3, periods: 20, seed: 1)
        do {
            _ = try StrategySpec.asset("zzz").run(data, options: BacktestOptions())
            Issue.record("accepted an unknown column")
        } catch {
            #expect(error.message.contains("unknown column 'zzz'"))
        }
    }

    @Test func badOptionsAreErrors() throws {
        let data = try Synthetic.data(assets: 3, periods: 20, seed: 1)
        for options in [BacktestOptions(costBps: -1), BacktestOptions(costBps: .nan), BacktestOptions(periodsPerYear: 0),
                        BacktestOptions(capital: 0)]
        {
            #expect(throws: ResearchError.self) { try StrategySpec.ucrp.run(data, options: options) }
        }
    }
}

@Suite("Policy backtests through the serving engine")
struct PolicyBacktestTests {
    /// The backtest's decision at a row is exactly what the engine answers
    /// for the same request.
    @Test func decisionsAreTheEngines() throws {
        let data = try Synthetic.data(assets: 6, periods: 200, seed: 21)
        var strategy = PolicyStrategy(name: "p", scorer: LinearScorer.reversal, costBps: 10)
        let book = BookState(quantity: [0.2, 0.1, 0.15, 0.2, 0.2, 0.1].enumerated().map { $0.element / data.price(120, $0.offset) },
                             cash: 0.05)
        let decision = try strategy.decide(data, row: 120, first: 0, book: book)
        let request = strategy.request(data, row: 120, book: book)
        let engine = try RebalanceEngine(config: PolicySettings().engine).rebalance(request.input, policy: LinearScorer.reversal)
        guard case .orders(let orders) = decision else {
            Issue.record("no orders: \(decision)")
            return
        }
        #expect(orders.count == engine.orders.count)
        for (mine, theirs) in zip(orders, engine.orders) {
            #expect(data.assets[mine.asset] == theirs.instrumentID)
            #expect(mine.quantity == (theirs.side == .buy ? theirs.quantity : -theirs.quantity))
        }
        #expect(request.input.mandate.commissionBps == 10)
        #expect(request.input.instruments.allSatisfy { $0.priceHistory.count == min(121, PolicySettings().historyDays) })
    }

    /// Tilts stay within the tolerance's budget, cash never goes negative
    /// (the backtester refuses such orders) and wealth stays positive.
    @Test(arguments: [1, 4, 7])
    func tiltsStayWithinTheBudget(riskTolerance: Int) throws {
        let data = try Synthetic.data(assets: 5, periods: 300, seed: 8)
        var settings = PolicySettings()
        settings.riskTolerance = riskTolerance
        var strategy = PolicyStrategy(name: "p", scorer: LinearScorer.reversal, costBps: 5, settings: settings)
        let r = try Backtester.run(&strategy, data: data, options: BacktestOptions(costBps: 5, recordWeights: true))
        let budget = 0.015 * Double(riskTolerance)
        let w = try #require(r.weights)
        #expect(w.allSatisfy { $0 >= 0 && $0 <= 0.2 + budget + 0.02 })
        #expect(r.metrics.finalWealth > 0 && r.trades > 0)
    }

    @Test func wholeSharesWhereThereArePrices() throws {
        let data = try Synthetic.priced(assets: 4, rows: 150, late: 3, listing: 40)
        var strategy = PolicyStrategy(name: "p", scorer: LinearScorer.reversal, costBps: 10)
        var quantities: [Double] = []
        for row in [60, 90, 120] {
            let book = BookState(quantity: (0..<4).map { (250_000 / data.price(row, $0)).rounded(.down) }, cash: 1_000)
            if case .orders(let orders) = try strategy.decide(data, row: row, first: 0, book: book) {
                quantities += orders.map(\.quantity)
            }
        }
        #expect(!quantities.isEmpty)
        #expect(quantities.allSatisfy { $0 == $0.rounded() })
    }

    /// A policy whose scores never vary only trades back toward 1/N when the
    /// drift is worth its cost: fewer trades than daily rebalancing.
    @Test func aFlatPolicyRespectsTheNoTradeBand() throws {
        let data = try Synthetic.data(assets: 6, periods: 300, seed: 12)
        var flat = PolicyStrategy(name: "flat", scorer: LinearScorer(weights: [Float](repeating: 0, count: 12)), costBps: 10)
        let policy = try Backtester.run(&flat, data: data, options: BacktestOptions(costBps: 10))
        let ucrp = try StrategySpec.ucrp.run(data, options: BacktestOptions(costBps: 10))
        #expect(policy.trades < ucrp.trades / 5)
        #expect(policy.costs < ucrp.costs)
    }

    @Test func aPolicyFileWithOtherFeaturesIsRefused() throws {
        var m = PolicyNetwork(hidden: [4], seed: 1).onnx(metadata: [("keel.kind", "policy"), ("keel.features", "a,b")])
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("keel-bad-\(UUID().uuidString).onnx").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try Data(m).write(to: URL(fileURLWithPath: path))
        do {
            _ = try ModelScorer(path: path)
            Issue.record("accepted a model with other features")
        } catch {
            #expect(error.code == .policyFailed && error.message.contains("keel.features"))
        }
        m = Array("not a model".utf8)
        try Data(m).write(to: URL(fileURLWithPath: path))
        #expect(throws: ResearchError.self) { try ModelScorer(path: path) }
    }
}

@Suite("Stress scenarios")
struct StressTests {
    @Test func crashAndRecovery() throws {
        let data = try Synthetic.data(assets: 4, periods: 600, seed: 3)
        let (stressed, row) = try StressScenario(kind: .crash, at: "100").apply(to: data)
        #expect(row == 100)
        for i in 0..<4 {
            #expect(stressed.relative(100, i) == 0.8)
            #expect(stressed.relative(99, i) == data.relative(99, i))
            #expect(abs(stressed.relative(101, i) / data.relative(101, i) - pow(1.25, 1.0 / 252)) < 1e-12)
            #expect(stressed.relative(100 + 253, i) == data.relative(100 + 253, i))
        }
        let ucrp = try StrategySpec.ucrp.run(stressed, options: BacktestOptions(recordWeights: true))
        let outcome = StressOutcome(result: ucrp, data: stressed, eventRow: row, windowPeriods: 252)
        #expect(abs(outcome.eventReturn + 0.2) < 1e-12)
        #expect(outcome.fallBelowEvent >= 0.2 - 1e-12)
        let hold = try StrategySpec.buyAndHold.run(stressed, options: BacktestOptions(recordWeights: true))
        #expect(abs(StressOutcome(result: hold, data: stressed, eventRow: row, windowPeriods: 252).tradingEffect) < 1e-12)
    }

    @Test func regimeFlipReversesReturns() throws {
        let data = try Synthetic.data(assets: 3, periods: 200, seed: 4)
        let (flipped, row) = try StressScenario.parse("regime-flip").apply(to: data)
        #expect(row == 100)
        #expect(flipped.relative(99, 0) == data.relative(99, 0))
        for t in 100..<200 { for i in 0..<3 { #expect(abs(flipped.relative(t, i) * data.relative(t, i) - 1) < 1e-15) } }
        #expect(flipped.sha256 != data.sha256)
    }

    @Test func scenariosParseAndPlace() throws {
        #expect(try StressScenario.parse("crash@12") == StressScenario(kind: .crash, at: "12"))
        #expect(throws: ResearchError.self) { try StressScenario.parse("meteor") }
        let data = try Synthetic.data(assets: 2, periods: 50, seed: 1)
        #expect(throws: ResearchError.self) { try StressScenario.parse("crash@500").apply(to: data) }
        #expect(throws: ResearchError.self) { try StressScenario.parse("crash@2001-01-01").apply(to: data) }
        #expect(try StressScenario.parse("crash").row(in: data, window: 10...30) == 20)
    }

    /// A strategy whose initial weights do not fit the data.
    struct BadStart: Strategy {
        let weights: [Double]
        var name: String { "bad" }
        func initialWeights(_ data: MarketData, start: Int, end: Int) -> [Double] { weights }
        func decide(_ data: MarketData, row: Int, first: Int, book: BookState) -> Decision { .hold }
    }

    @Test(arguments: [
        ([0.5, 0.5], "bad: 2 initial weights for 5 assets"),
        ([0.2, 0.2, .nan, 0.2, 0.2], "bad: initial weight nan of"),
        ([0.2, 0.2, -0.1, 0.2, 0.2], "is not a finite number >= 0"),
        ([0.5, 0.5, 0.5, 0, 0], "bad: initial weights sum to 1.5 > 1"),
    ])
    func badInitialWeightsAreAnError(weights: [Double], expected: String) throws {
        let data = try Synthetic.data()
        var strategy = BadStart(weights: weights)
        do {
            _ = try Backtester.run(&strategy, data: data)
            Issue.record("accepted \(weights)")
        } catch {
            #expect(error.message.contains(expected), "\(error.message)")
        }
    }

    @Test func aPolicyWithoutHistoryDaysIsAnError() throws {
        var settings = PolicySettings()
        settings.historyDays = 0
        var strategy = PolicyStrategy(name: "p", scorer: LinearScorer.reversal, costBps: 10, settings: settings)
        #expect(throws: ResearchError(.invalidArgument, "p: historyDays 0 is outside 2...100000")) {
            try Backtester.run(&strategy, data: try Synthetic.data())
        }
    }
}
