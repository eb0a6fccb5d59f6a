import ArgumentParser
import Foundation
import KeelPortfolio
import KeelResearch

/// `keel tax-alpha`: the direct-indexing tax-loss-harvesting backtest.
struct TaxAlphaCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tax-alpha",
        abstract: "Backtest direct indexing with and without tax-loss harvesting; report the tax alpha.",
        discussion: """
            Two otherwise identical accounts hold the data file's stocks at equal weight, with an initial \\
            investment and monthly contributions that top up the most underweight stocks. One of them harvests \\
            every day: lots at least --loss-threshold below cost are sold through Keel's harvester (no wash \\
            sales), the stock is not bought for 31 days, and the proceeds go to the rest of the index. Taxes are \\
            settled every year under US netting; net losses offset up to --ordinary-offset of ordinary income \\
            and carry forward (or, with --unlimited-outside-gains, offset outside long-term gains). Both are \\
            liquidated at the end. Method: docs/TAX.md.

            Example:
              keel tax-alpha --data ../shared/data/pypfopt_stock_prices.csv
            """
    )

    enum OutputFormat: String, ExpressibleByArgument { case table, json }

    @Option(name: .long, help: ArgumentHelp("Dated prices (a date column).", valueName: "file")) var data: String
    @Option(name: .long, help: "Initial investment.") var initial = 100_000.0
    @Option(name: .long, help: "Monthly contribution.") var monthly = 1_000.0
    @Option(name: .long, help: "Short-term capital gains rate.") var shortTermRate = 0.37
    @Option(name: .long, help: "Long-term capital gains rate.") var longTermRate = 0.20
    @Option(name: .long, help: "Ordinary income rate.") var ordinaryRate = 0.37
    @Option(name: .long, help: "Ordinary income net losses may offset per year.") var ordinaryOffset = 3_000.0
    @Option(name: .long, help: "Loss below cost (fraction) that makes a lot a candidate.") var lossThreshold = 0.05
    @Option(name: .long, help: "Trading cost in basis points of notional.") var costBps = 0.0
    @Flag(name: .long, help: "Net losses offset unlimited outside long-term gains in their year.")
    var unlimitedOutsideGains = false
    @Option(name: .long, help: ArgumentHelp("First date (YYYY-MM-DD) or row.", valueName: "date|row")) var from: String?
    @Option(name: .long, help: ArgumentHelp("Last date (YYYY-MM-DD) or row.", valueName: "date|row")) var to: String?
    @Option(name: .long, help: "Output format.") var format: OutputFormat = .table

    func run() throws {
        var config = DirectIndexingConfig()
        config.initialInvestment = initial
        config.monthlyContribution = monthly
        config.shortTermRate = shortTermRate
        config.longTermRate = longTermRate
        config.ordinaryRate = ordinaryRate
        config.ordinaryOffsetCap = ordinaryOffset
        config.lossThreshold = lossThreshold
        config.costBps = costBps
        config.unlimitedOutsideGains = unlimitedOutsideGains
        do {
            let market = try MarketData.load(path: data)
            func row(_ text: String, _ option: String) throws(ResearchError) -> Int {
                if let r = Int(text), r >= 0, r < market.rows { return r }
                if let r = market.row(onOrAfter: text) { return r }
                throw ResearchError(.invalidArgument, "\(option) '\(text)' is neither a row of \(market.name) "
                    + "(0...\(market.rows - 1)) nor a date within it")
            }
            if let from { config.fromRow = try row(from, "--from") }
            if let to { config.toRow = try row(to, "--to") }
            let started = ContinuousClock.now
            let result = try DirectIndexing.run(market, config: config)
            let elapsed = ContinuousClock.now - started
            print(format == .json ? json(result, config: config) : table(result, seconds: elapsed))
        } catch {
            throw fail(error.message)
        }
    }

    func pct(_ v: Double, _ d: Int = 2) -> String { Format.fixed(v * 100, d) + " %" }
    func money(_ v: Double) -> String { Format.fixed(v, 0, grouping: true) }

    func table(_ r: DirectIndexingResult, seconds: Duration) -> String {
        var lines = [
            "direct indexing on \(r.dataset), \(r.firstDate) to \(r.lastDate) (\(Format.fixed(r.years, 1)) years), "
                + "contributions \(money(r.contributed))",
            "                      without harvesting   with harvesting",
            "  final value (pre-tax)   \(pad(money(r.finalValue.baseline)))   \(pad(money(r.finalValue.harvesting)))",
            "  after-tax liquidation   \(pad(money(r.afterTaxValue.baseline)))   \(pad(money(r.afterTaxValue.harvesting)))",
            "  trades                  \(pad(String(r.trades.baseline)))   \(pad(String(r.trades.harvesting)))",
            "tax alpha: \(pct(r.taxAlpha)) per year (after-tax wealth), of which \(pct(r.preTaxDifference)) is the "
                + "pre-tax drift of the holdings; annual tax savings / value: \(pct(r.annualSavingsRate))",
            "harvests: \(r.harvests); losses harvested: \(money(r.lossesHarvested.shortTerm)) short-term, "
                + "\(money(r.lossesHarvested.longTerm)) long-term; unused losses at the end: \(money(r.carryForwardAtEnd))",
            "tracking error to the unharvested account: \(pct(r.trackingError)); turnover: \(pct(r.turnover, 1)) per year",
            "wash-sale violations (independent audit of the trade log): \(r.washSaleViolations)",
            "computed in \(seconds)",
        ]
        lines.insert("", at: 5)
        return lines.joined(separator: "\n")
    }

    func pad(_ s: String) -> String { String(repeating: " ", count: max(0, 18 - s.count)) + s }

    func json(_ r: DirectIndexingResult, config: DirectIndexingConfig) -> String {
        var object: [String: Any] = [:]
        object["dataset"] = r.dataset
        object["first_date"] = r.firstDate
        object["last_date"] = r.lastDate
        object["years"] = r.years
        object["contributed"] = r.contributed
        object["final_value"] = ["baseline": r.finalValue.baseline, "harvesting": r.finalValue.harvesting]
        object["after_tax_value"] = ["baseline": r.afterTaxValue.baseline, "harvesting": r.afterTaxValue.harvesting]
        object["tax_alpha"] = r.taxAlpha
        object["pre_tax_difference"] = r.preTaxDifference
        object["annual_savings_rate"] = r.annualSavingsRate
        object["harvests"] = r.harvests
        object["losses_harvested"] = ["short_term": r.lossesHarvested.shortTerm, "long_term": r.lossesHarvested.longTerm]
        object["savings_by_year"] = r.savingsByYear.map { ["year": $0.year, "saving": $0.saving] as [String: Any] }
        object["carry_forward_at_end"] = r.carryForwardAtEnd
        object["tracking_error"] = r.trackingError
        object["turnover"] = r.turnover
        object["trades"] = ["baseline": r.trades.baseline, "harvesting": r.trades.harvesting]
        object["wash_sale_violations"] = r.washSaleViolations
        var settings: [String: Any] = [:]
        settings["initial"] = config.initialInvestment
        settings["monthly"] = config.monthlyContribution
        settings["short_term_rate"] = config.shortTermRate
        settings["long_term_rate"] = config.longTermRate
        settings["ordinary_rate"] = config.ordinaryRate
        settings["ordinary_offset"] = config.ordinaryOffsetCap
        settings["loss_threshold"] = config.lossThreshold
        settings["cost_bps"] = config.costBps
        settings["unlimited_outside_gains"] = config.unlimitedOutsideGains
        object["config"] = settings
        let bytes = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
        return String(decoding: bytes, as: UTF8.self)
    }
}
