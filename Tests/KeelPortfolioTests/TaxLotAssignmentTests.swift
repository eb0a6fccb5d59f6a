import Foundation
import Testing
@testable import KeelPortfolio

@Suite("Tax-loss features and tax lots in a rebalance")
struct TaxLotAssignmentTests {
    // MARK: - Features

    /// A series growing by g per day has ret_k = k·log(1 + g), zero
    /// volatility and no drawdown.
    @Test(arguments: [0.0, 0.001, -0.002])
    func featuresOfAGeometricSeries(growth: Double) {
        let prices = (0..<150).map { 100 * pow(1 + growth, Double($0)) }
        var row: [Float] = []
        #expect(TaxLossFeatures.appendRow(prices: prices, end: 149, to: &row))
        #expect(row.count == TaxLossFeatures.count)
        let g = log(1 + growth)
        for (k, days) in [5, 21, 63, 126].enumerated() { #expect(abs(Double(row[k]) - Double(days) * g) < 1e-5) }
        #expect(abs(row[4]) < 1e-3 && abs(row[5]) < 1e-3)
        let drawdown = growth < 0 ? 126 * g : 0
        #expect(abs(Double(row[6]) - drawdown) < 1e-5)
    }

    /// Alternating ±1 % moves: daily log-return sd ≈ 1 %, annualised ≈ 15.9 %.
    @Test func volatilityIsAnnualised() {
        var prices = [100.0]
        for k in 1..<130 { prices.append(prices[k - 1] * (k % 2 == 0 ? 1.01 : 1 / 1.01)) }
        var row: [Float] = []
        #expect(TaxLossFeatures.appendRow(prices: prices, end: 129, to: &row))
        // 21 returns, 11 of one sign: the mean is not quite 0.
        #expect(abs(Double(row[4]) - log(1.01) * sqrt(252)) < 1e-3)
    }

    @Test func shortOrBadSeriesGiveNoRow() {
        var row: [Float] = []
        #expect(!TaxLossFeatures.appendRow(prices: [Double](repeating: 1, count: 126), end: 125, to: &row))
        var bad = [Double](repeating: 1, count: 200)
        bad[100] = 0
        #expect(!TaxLossFeatures.appendRow(prices: bad, end: 199, to: &row))
        bad[100] = .nan
        #expect(!TaxLossFeatures.appendRow(prices: bad, end: 199, to: &row))
        #expect(!TaxLossFeatures.appendRow(prices: bad, end: 500, to: &row))
        #expect(row.isEmpty)
        #expect(TaxLossFeatures.mismatch(TaxLossFeatures.names) == nil)
        #expect(TaxLossFeatures.mismatch(["ret_5"])?.contains("tax-loss features") == true)
    }

    // MARK: - Lots in a rebalance

    static let tradeDay = CivilDay.parse("2026-11-20")!

    static func decision(_ orders: [Order]) -> RebalanceDecision {
        let figures = RiskFigures(volatility: 0, trackingError: 0, concentration: 0, maxVolatility: 1)
        return RebalanceDecision(status: .executable, targets: [], orders: orders,
                                 compliance: ComplianceReport(checks: [], conflicts: []), riskBefore: figures,
                                 riskAfter: figures, turnover: 0, totalValue: 1, cashWeightBefore: 0,
                                 cashWeightAfter: 0, totalEstimatedCost: 0, summary: "", notes: [])
    }

    static func order(_ id: String, _ side: Side, _ quantity: Double, price: Double = 100) -> Order {
        Order(instrumentID: id, side: side, quantity: quantity, price: price, estimatedCost: 0, expectedBenefit: 0,
              required: false, reasons: [.drift], topFeatures: [], explanation: "Sell.")
    }

    static let lots = [
        TaxLot(id: "LT", instrumentID: "AAA", quantity: 10, acquiredDay: tradeDay - 800, costPerShare: 70),
        TaxLot(id: "ST", instrumentID: "AAA", quantity: 10, acquiredDay: tradeDay - 100, costPerShare: 90),
        TaxLot(id: "LOSS", instrumentID: "AAA", quantity: 10, acquiredDay: tradeDay - 50, costPerShare: 130),
    ]

    static let rules = TaxRules(shortTermRate: 0.4, longTermRate: 0.2, identicalGroups: [["AAA", "AAB"]],
                                tradeDay: tradeDay)

    @Test(arguments: [
        (5.0, ["LOSS"], -150.0, 0.0),
        (10.0, ["LOSS"], -300.0, 0.0),
        (15.0, ["LOSS", "LT"], -300.0, 150.0),    // the long-term gain before the smaller short-term gain
        (25.0, ["LOSS", "LT", "ST"], -300.0 + 50.0, 300.0),
    ])
    func salesRelieveLossLotsThenLongTermLots(quantity: Double, lots: [String], shortTerm: Double, longTerm: Double) {
        var d = Self.decision([Self.order("AAA", .sell, quantity), Self.order("BBB", .buy, 3)])
        let realised = TaxLotAssignment.apply(to: &d, lots: Self.lots, rules: Self.rules)
        #expect(d.orders[0].lotIDs == lots)
        #expect(d.orders[1].lotIDs.isEmpty)
        #expect(realised.count == 1)
        #expect(abs(realised[0].shortTerm - shortTerm) < 1e-9 && abs(realised[0].longTerm - longTerm) < 1e-9)
        #expect(d.orders[0].reasons.contains(.tax) == (realised[0].total < 0))
    }

    @Test func aLossSaleSaysWhatItSavesAndFlagsAWashSale() {
        var d = Self.decision([Self.order("AAA", .sell, 10)])
        TaxLotAssignment.apply(to: &d, lots: Self.lots, rules: Self.rules)
        #expect(d.orders[0].explanation
            == "Sell. Lots LOSS (loss lots first) realise a 300.00 loss (all short-term), worth about 120.00 in tax.")
        var rules = Self.rules
        rules.recentTrades = [RecentTrade(instrumentID: "AAB", day: Self.tradeDay - 3, side: .buy, quantity: 1, accountID: "IRA")]
        var flagged = Self.decision([Self.order("AAA", .sell, 10)])
        TaxLotAssignment.apply(to: &flagged, lots: Self.lots, rules: rules)
        #expect(flagged.orders[0].explanation.hasSuffix(
            "; AAB was bought on 2026-11-17, so the loss would be disallowed as a wash sale."))
    }

    @Test func withoutRatesTheTaxValueIsLeftOut() {
        var rules = Self.rules
        rules.shortTermRate = 0
        rules.longTermRate = 0
        var d = Self.decision([Self.order("AAA", .sell, 10)])
        TaxLotAssignment.apply(to: &d, lots: Self.lots, rules: rules)
        #expect(d.orders[0].explanation == "Sell. Lots LOSS (loss lots first) realise a 300.00 loss (all short-term).")
    }

    @Test func withoutLotsNothingChanges() {
        var d = Self.decision([Self.order("AAA", .sell, 10)])
        #expect(TaxLotAssignment.apply(to: &d, lots: [], rules: Self.rules).isEmpty)
        #expect(d.orders[0].lotIDs.isEmpty && d.orders[0].explanation == "Sell.")
    }
}
