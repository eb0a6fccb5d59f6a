import Testing
@testable import KeelPortfolio

private func day(_ iso: String) -> Int { CivilDay.parse(iso)! }

/// The trade day of every test: 2026-11-21 (repurchase from 2026-12-22).
private let T = day("2026-11-21")

private func lot(_ id: String, _ instrument: String = "VTI", qty: Double = 10, cost: Double, on acquired: Int = T - 100)
    -> TaxLot
{
    TaxLot(id: id, instrumentID: instrument, quantity: qty, acquiredDay: acquired, costPerShare: cost)
}

private func rules(st: Double = 0.37, lt: Double = 0.2, groups: [[String]] = [], replacements: [String: [String]] = [:],
                   min: Double = 0, selection: LotSelection = .hifo, trades: [RecentTrade] = []) -> TaxRules
{
    TaxRules(shortTermRate: st, longTermRate: lt, identicalGroups: groups, replacements: replacements,
             minHarvest: min, lotSelection: selection, tradeDay: T, recentTrades: trades)
}

private func buy(_ instrument: String, _ d: Int, account: String = "A1") -> RecentTrade {
    RecentTrade(instrumentID: instrument, day: d, side: .buy, quantity: 5, accountID: account)
}

private func ids(_ p: HarvestProposal) -> [String] { p.lots.map(\.id) }

private func close(_ a: Double, _ b: Double) -> Bool { abs(a - b) < 1e-9 }

@Suite("Tax-loss harvesting (US rules)")
struct TaxLossTests {
    // MARK: - The proposal and its sentence

    @Test func exampleProposal() throws {
        let lots = [
            lot("L1", qty: 80, cost: 215, on: T - 200),            // short-term: 80 × 15 = 1,200.00
            lot("L2", qty: 50, cost: 150, on: T - 900),            // at a gain, not sold
            lot("L3", qty: 40, cost: 228.64, on: T - 400),         // long-term: 40 × 28.64 = 1,145.60
        ]
        let r = rules(replacements: ["VTI": ["ITOT"]], selection: .specific(["L1", "L3"]))
        let (proposals, skipped) = try TaxLossHarvester.propose(lots: lots, prices: ["VTI": 200, "ITOT": 252], rules: r)
        #expect(skipped.isEmpty)
        let p = try #require(proposals.first)
        #expect(proposals.count == 1)
        #expect(p.instrumentID == "VTI")
        #expect(ids(p) == ["L1", "L3"])
        #expect(p.lots.map(\.quantity) == [80, 40])
        #expect(p.quantity == 120)
        #expect(close(p.shortTermLoss, 1200))
        #expect(close(p.longTermLoss, 1145.6))
        #expect(close(p.realisedLoss, 2345.6))
        #expect(!p.longTerm)
        #expect(close(p.estimatedTaxSaving, 1200 * 0.37 + 1145.6 * 0.2))   // 673.12
        #expect(p.replacementID == "ITOT")
        #expect(p.replacementQuantity == 95)                                 // 24,000 / 252 = 95.24 → 95
        #expect(p.washSaleWindowEnd == T + 30)
        #expect(CivilDay.iso(p.washSaleWindowEnd) == "2026-12-21")
        #expect(p.score == nil)
        #expect(p.reason == "Sell 120 shares of VTI in lots L1, L3 to realise a 2,345.60 loss (1,200.00 short-term, 1,145.60 long-term), saving about 673.12 in tax; buy 95 shares of ITOT to stay invested; VTI may be bought again from 2026-12-22.")
    }

    @Test func proposalEquatableComparesLots() throws {
        let (a, _) = try TaxLossHarvester.propose(lots: [lot("L1", cost: 120)], prices: ["VTI": 100], rules: rules())
        var b = a[0]
        #expect(a[0] == b)
        b.lots = [("L1", 9)]
        #expect(a[0] != b)
        b.lots = [("L2", 10)]
        #expect(a[0] != b)
        b.lots = []
        #expect(a[0] != b)
    }

    // MARK: - Lot selection

    /// A (oldest, loss), B (gain), C (newest, biggest loss), D (loss, after B).
    static let mixedLots = [
        lot("A", cost: 120, on: T - 300), lot("B", cost: 90, on: T - 200),
        lot("C", cost: 150, on: T - 50), lot("D", cost: 110, on: T - 100),
    ]

    @Test(arguments: [
        (LotSelection.hifo, ["C", "A", "D"]),          // every loss lot, highest cost first
        (LotSelection.fifo, ["A"]),                    // oldest first, up to the gain lot B
        (LotSelection.specific(["D", "B", "A"]), ["D", "A"]),  // listed order, gain lot B left out
        (LotSelection.specific(["C"]), ["C"]),
    ])
    func selectionPicks(selection: LotSelection, expected: [String]) throws {
        let (proposals, skipped) = try TaxLossHarvester.propose(lots: Self.mixedLots, prices: ["VTI": 100],
                                                                rules: rules(selection: selection))
        #expect(skipped.isEmpty)
        #expect(proposals.map(ids) == [expected])
        let losses: [String: Double] = ["A": 200, "C": 500, "D": 100]
        #expect(close(proposals[0].realisedLoss, expected.reduce(0) { $0 + losses[$1]! }))
        #expect(proposals[0].quantity == Double(10 * expected.count))
    }

    @Test func fifoSkipsWhenTheOldestLotIsAtAGain() throws {
        let lots = [lot("OLD", cost: 80, on: T - 500), lot("NEW", cost: 130, on: T - 10)]
        let (proposals, skipped) = try TaxLossHarvester.propose(lots: lots, prices: ["VTI": 100],
                                                                rules: rules(selection: .fifo))
        #expect(proposals.isEmpty)
        #expect(skipped == ["Not harvesting VTI: under FIFO its oldest lot OLD would be sold first, and it stands at a gain of 20.00 per share."])
        // HIFO takes the loss lot regardless of age.
        let hifo = try TaxLossHarvester.propose(lots: lots, prices: ["VTI": 100], rules: rules())
        #expect(hifo.proposals.map(ids) == [["NEW"]])
    }

    @Test func specificSkipsUnlistedAndGainOnlyInstruments() throws {
        let lots = [lot("V1", cost: 120), lot("V2", cost: 90), lot("B1", "BND", cost: 120), lot("X1", "XLE", cost: 50)]
        let (proposals, skipped) = try TaxLossHarvester.propose(
            lots: lots, prices: ["VTI": 100, "BND": 100, "XLE": 60], rules: rules(selection: .specific(["V2", "X1"])))
        #expect(proposals.isEmpty)
        #expect(skipped == [
            "Not harvesting BND: none of its lots is among the specific lots to sell.",
            "Not harvesting VTI: none of the specific lots V2 stands at a loss.",
        ])
    }

    @Test func instrumentsWithoutLossesAreNotMentioned() throws {
        let (proposals, skipped) = try TaxLossHarvester.propose(
            lots: [lot("L1", cost: 100), lot("L2", cost: 90)], prices: ["VTI": 100], rules: rules())
        #expect(proposals.isEmpty && skipped.isEmpty)
    }

    // MARK: - Long-term holding period

    @Test(arguments: [
        ("2024-03-15", "2025-03-15", false),   // on the anniversary: exactly one year, short-term
        ("2024-03-15", "2025-03-16", true),    // the day after: long-term
        ("2024-02-29", "2025-02-28", false),   // leap day: anniversary is Feb 28
        ("2024-02-29", "2025-03-01", true),
        ("2023-03-01", "2024-02-29", false),   // 365 days later, but not a year
        ("2023-03-01", "2024-03-01", false),
        ("2023-03-01", "2024-03-02", true),
        ("2023-02-28", "2024-02-28", false),
        ("2023-02-28", "2024-02-29", true),
        ("2025-12-31", "2026-12-31", false),
        ("2025-12-31", "2027-01-01", true),
        ("2026-11-21", "2026-11-21", false),
    ])
    func longTermBoundary(acquired: String, sold: String, longTerm: Bool) {
        #expect(TaxLossHarvester.isLongTerm(acquiredDay: day(acquired), soldDay: day(sold)) == longTerm)
    }

    @Test func leapDayLotThroughPropose() throws {
        let acquired = day("2024-02-29")
        for (sold, expectLong) in [("2025-02-28", false), ("2025-03-01", true)] {
            var r = rules()
            r.tradeDay = day(sold)
            let (proposals, _) = try TaxLossHarvester.propose(
                lots: [TaxLot(id: "L", instrumentID: "VTI", quantity: 10, acquiredDay: acquired, costPerShare: 110)],
                prices: ["VTI": 100], rules: r)
            let p = try #require(proposals.first)
            #expect(p.longTerm == expectLong)
            #expect(close(p.longTermLoss, expectLong ? 100 : 0))
            #expect(close(p.shortTermLoss, expectLong ? 0 : 100))
            #expect(close(p.estimatedTaxSaving, expectLong ? 20 : 37))
            #expect(p.reason.contains(expectLong ? "(all long-term)" : "(all short-term)"))
        }
    }

    // MARK: - Wash sales

    @Test(arguments: [
        (T - 30, true), (T - 29, true), (T - 1, true), (T, true),
    ])
    func purchaseWithinThirtyDaysBlocks(boughtOn: Int, blocked: Bool) throws {
        let (proposals, skipped) = try TaxLossHarvester.propose(
            lots: [lot("L1", cost: 120)], prices: ["VTI": 100], rules: rules(trades: [buy("VTI", boughtOn, account: "IRA")]))
        #expect(proposals.isEmpty == blocked)
        #expect(skipped == ["Not harvesting VTI: VTI was bought on \(CivilDay.iso(boughtOn)) in account IRA, so a sale at a loss before \(CivilDay.iso(boughtOn + 31)) would be a wash sale."])
    }

    /// One group of 30,000 identical instruments and a purchase of each:
    /// every harvest is refused, naming the group's latest purchase (the
    /// checks are linear; a scan per instrument would take minutes).
    @Test func aHugeIdenticalGroupIsHandledInLinearTime() throws {
        let n = 30_000
        let ids = (0..<n).map { "I\($0)" }
        var prices: [String: Double] = [:]
        for id in ids { prices[id] = 100 }
        let lots = ids.map { TaxLot(id: "L\($0)", instrumentID: $0, quantity: 1, acquiredDay: T - 100, costPerShare: 120) }
        let trades = ids.enumerated().map { k, id in buy(id, T - 1 - k % 20) }
        var r = rules(groups: [ids], trades: trades)
        r.replacements = [:]
        let (proposals, skipped) = try TaxLossHarvester.propose(lots: lots, prices: prices, rules: r)
        #expect(proposals.isEmpty && skipped.count == n)
        // The latest purchase (day T − 1) of the largest id among those bought that day.
        #expect(skipped[0].contains("I9980, substantially identical to it, was bought on \(CivilDay.iso(T - 1))"),
                "\(skipped[0])")
        let blocked = TaxLossHarvester.blockedPurchases(harvested: ids.map { ($0, T) }, rules: r, day: T + 3)
        #expect(blocked.count == n)
    }

    @Test func purchaseThirtyOneDaysBeforeIsOutsideTheWindow() throws {
        // 31 days before is outside the wash-sale window: such a trade is
        // ignored, not an error…
        let (early, _) = try TaxLossHarvester.propose(lots: [lot("L1", cost: 120)], prices: ["VTI": 100],
                                                      rules: rules(trades: [buy("VTI", T - 31)]))
        #expect(early.map(\.instrumentID) == ["VTI"])
        // …and without it (and with only sells or unrelated buys) the harvest goes ahead.
        let trades = [
            RecentTrade(instrumentID: "VTI", day: T - 5, side: .sell, quantity: 3, accountID: "A2"),
            buy("BND", T - 2),
        ]
        let (proposals, skipped) = try TaxLossHarvester.propose(lots: [lot("L1", cost: 120)], prices: ["VTI": 100],
                                                                rules: rules(trades: trades))
        #expect(proposals.map(\.instrumentID) == ["VTI"])
        #expect(skipped.isEmpty)
    }

    @Test func identicalGroupPurchaseBlocks() throws {
        let r = rules(groups: [["VOO", "IVV", "SPLG"]], trades: [buy("IVV", T - 10, account: "SPOUSE"), buy("IVV", T - 20)])
        let (proposals, skipped) = try TaxLossHarvester.propose(
            lots: [lot("L1", "VOO", cost: 500), lot("L2", "VTI", cost: 120)],
            prices: ["VOO": 400, "VTI": 100, "IVV": 440], rules: r)
        #expect(proposals.map(\.instrumentID) == ["VTI"])
        #expect(skipped == ["Not harvesting VOO: IVV, substantially identical to it, was bought on 2026-11-11 in account SPOUSE, so a sale at a loss before 2026-12-12 would be a wash sale."])
    }

    // MARK: - Replacements

    @Test func replacementSkipsIdenticalUnpricedAndBlockedCandidates() throws {
        let r = rules(groups: [["VTI", "VTSAX"], ["SCHB", "SCHX"]],
                      replacements: ["VTI": ["VTI", "VTSAX", "UNPRICED", "SCHX", "ITOT", "SPTM"], "SCHB": ["VTI"]])
        let prices = ["VTI": 100.0, "VTSAX": 100, "SCHB": 50, "SCHX": 60, "ITOT": 120, "SPTM": 55]
        let (proposals, _) = try TaxLossHarvester.propose(
            lots: [lot("V", cost: 150, on: T - 10), lot("S", "SCHB", qty: 100, cost: 51)], prices: prices, rules: r)
        #expect(proposals.map(\.instrumentID) == ["VTI", "SCHB"])        // saving 185 vs 37
        let vti = proposals[0]
        #expect(vti.replacementID == "ITOT")
        #expect(vti.replacementQuantity == 8)                            // 1,000 / 120 = 8.33 → 8
        // SCHB's only candidate, VTI, is itself being sold at a loss.
        let schb = proposals[1]
        #expect(schb.replacementID == nil)
        #expect(schb.replacementQuantity == 0)
        #expect(schb.reason == "Sell 100 shares of SCHB in lot S to realise a 100.00 loss (all short-term), saving about 37.00 in tax; no replacement is usable (VTI is itself being sold at a loss), so the proceeds stay in cash; SCHB may be bought again from 2026-12-22.")
    }

    @Test func noUsableReplacementIsExplained() throws {
        let r = rules(groups: [["VTI", "VTSAX"], ["VOO", "IVV"]],
                      replacements: ["VTI": ["VTSAX", "UNPRICED", "IVV", "BRK"]])
        let (proposals, _) = try TaxLossHarvester.propose(
            lots: [lot("V", cost: 150), lot("O", "VOO", qty: 1, cost: 500)],
            prices: ["VTI": 100, "VTSAX": 100, "VOO": 400, "IVV": 440, "BRK": 700_000], rules: r)
        let vti = try #require(proposals.first { $0.instrumentID == "VTI" })
        #expect(vti.replacementID == nil && vti.replacementQuantity == 0)
        #expect(vti.reason.contains("no replacement is usable (VTSAX is substantially identical to VTI; UNPRICED has no price; IVV is substantially identical to VOO, which is being sold at a loss; one share of BRK costs more than the proceeds), so the proceeds stay in cash"))

        let none = try TaxLossHarvester.propose(lots: [lot("V", cost: 150)], prices: ["VTI": 100], rules: rules())
        #expect(none.proposals[0].reason == "Sell 10 shares of VTI in lot V to realise a 500.00 loss (all short-term), saving about 185.00 in tax; no replacement is listed for VTI, so the proceeds stay in cash; VTI may be bought again from 2026-12-22.")
    }

    @Test func replacementQuantityRoundsDownExactly() throws {
        // 3 × 0.7 = 2.0999999999999996 of proceeds per 0.7: still 3 shares, not 2.
        let r = rules(replacements: ["VTI": ["ALT"]])
        let (proposals, _) = try TaxLossHarvester.propose(
            lots: [lot("V", qty: 3, cost: 1)], prices: ["VTI": 0.7, "ALT": 0.7], rules: r)
        #expect(proposals[0].replacementQuantity == 3)
    }

    // MARK: - Minimum harvest, savings, order, score

    @Test(arguments: [(99.99, true), (100.0, true), (100.01, false)])
    func minimumHarvest(minimum: Double, harvested: Bool) throws {
        let (proposals, skipped) = try TaxLossHarvester.propose(
            lots: [lot("L1", cost: 110)], prices: ["VTI": 100], rules: rules(min: minimum))   // loss 100.00
        #expect(proposals.count == (harvested ? 1 : 0))
        #expect(skipped == (harvested ? [] : ["Not harvesting VTI: the loss of 100.00 is below the minimum harvest of 100.01."]))
    }

    @Test func taxSavingArithmeticAndOrder() throws {
        let lots = [
            lot("A1", "AAA", qty: 10, cost: 20, on: T - 30),        // ST 100
            lot("A2", "AAA", qty: 10, cost: 30, on: T - 800),       // LT 200
            lot("B1", "BBB", qty: 4, cost: 75, on: T - 30),         // ST 100
            lot("B2", "BBB", qty: 2, cost: 150, on: T - 800),       // LT 200
            lot("C1", "CCC", qty: 100, cost: 12.5, on: T - 800),    // LT 250
        ]
        let (proposals, _) = try TaxLossHarvester.propose(
            lots: lots, prices: ["AAA": 10, "BBB": 50, "CCC": 10], rules: rules(st: 0.35, lt: 0.15))
        // AAA and BBB save 35 + 30 = 65 each (tie → by id); CCC 37.50.
        #expect(proposals.map(\.instrumentID) == ["AAA", "BBB", "CCC"])
        #expect(close(proposals[0].estimatedTaxSaving, 65))
        #expect(close(proposals[1].estimatedTaxSaving, 65))
        #expect(close(proposals[2].estimatedTaxSaving, 37.5))
        #expect(close(proposals[0].shortTermLoss, 100) && close(proposals[0].longTermLoss, 200))
        #expect(proposals[2].longTerm && !proposals[0].longTerm)
        #expect(proposals[0].reason.contains("realise a 300.00 loss (100.00 short-term, 200.00 long-term), saving about 65.00 in tax"))
        // Input order does not matter.
        let again = try TaxLossHarvester.propose(lots: lots.reversed(), prices: ["AAA": 10, "BBB": 50, "CCC": 10],
                                                 rules: rules(st: 0.35, lt: 0.15))
        #expect(again.proposals.map(\.instrumentID) == ["AAA", "BBB", "CCC"])
        #expect(again.proposals.map { $0.lots.map(\.id) } == [["A2", "A1"], ["B2", "B1"], ["C1"]])
    }

    @Test func forecasterScore() throws {
        let lots = [lot("A", "AAA", cost: 20), lot("B", "BBB", cost: 20), lot("C", "CCC", cost: 20)]
        let scores: [String: Double] = ["AAA": 0.8, "BBB": -0.25]
        let (proposals, skipped) = try TaxLossHarvester.propose(
            lots: lots, prices: ["AAA": 10, "BBB": 10, "CCC": 10], rules: rules(), score: { scores[$0] })
        #expect(proposals.map(\.instrumentID) == ["AAA", "CCC"])
        #expect(proposals.map(\.score) == [0.8, nil])
        #expect(skipped == ["Not harvesting BBB: the forecaster's score -0.25 says waiting is better than harvesting now."])
    }

    // MARK: - blockedPurchases

    @Test(arguments: Array(0...31))
    func blockedPurchasesAfterHarvest(daysAfter: Int) {
        let r = rules(groups: [["VOO", "IVV"]])
        let blocked = TaxLossHarvester.blockedPurchases(harvested: [("VOO", T), ("BND", T - 40)], rules: r,
                                                        day: T + daysAfter)
        #expect(blocked == (daysAfter <= 30 ? ["VOO", "IVV"] : []))
    }

    @Test func blockedPurchasesBeforeTheHarvestAndSeveral() {
        let r = rules(groups: [["VOO", "IVV"], ["VTI", "ITOT"]])
        #expect(TaxLossHarvester.blockedPurchases(harvested: [("VOO", T)], rules: r, day: T - 1).isEmpty)
        let both = TaxLossHarvester.blockedPurchases(harvested: [("VOO", T - 30), ("ITOT", T - 2), ("XLE", T - 31)],
                                                     rules: r, day: T)
        #expect(both == ["VOO", "IVV", "VTI", "ITOT"])
    }

    // MARK: - lotsToSell

    @Test func lotsToSellPrefersLossesThenLongTermGains() {
        let lots = [
            lot("STG_SMALL", cost: 95, on: T - 10),     // short-term gain 5
            lot("LTG_BIG", cost: 50, on: T - 800),      // long-term gain 50
            lot("LOSS_SMALL", cost: 105, on: T - 20),   // loss 5
            lot("LTG_SMALL", cost: 80, on: T - 700),    // long-term gain 20
            lot("LOSS_BIG", cost: 130, on: T - 900),    // loss 30
            lot("EVEN", cost: 100, on: T - 5),          // at cost
            lot("OTHER", "BND", cost: 200),
        ]
        func sell(_ q: Double) -> [String] {
            TaxLossHarvester.lotsToSell(lots, instrumentID: "VTI", quantity: q, price: 100, tradeDay: T).map(\.id)
        }
        #expect(sell(60) == ["LOSS_BIG", "LOSS_SMALL", "EVEN", "LTG_SMALL", "LTG_BIG", "STG_SMALL"])
        #expect(sell(35) == ["LOSS_BIG", "LOSS_SMALL", "EVEN", "LTG_SMALL"])
        // Beyond the holdings: everything of the instrument, nothing else.
        #expect(sell(1000).count == 6)
        #expect(sell(0).isEmpty && sell(-5).isEmpty)
        let partial = TaxLossHarvester.lotsToSell(lots, instrumentID: "VTI", quantity: 24.5, price: 100, tradeDay: T)
        #expect(partial.map(\.id) == ["LOSS_BIG", "LOSS_SMALL", "EVEN"])
        #expect(partial.map(\.quantity) == [10, 10, 4.5])
    }

    @Test func lotsToSellTakesALongTermGainBeforeASmallerShortTermGain() {
        // A long-term lot with a larger gain still goes before a short-term lot.
        let lots = [lot("ST", cost: 99, on: T - 364), lot("LT", cost: 60, on: T - 366)]
        let picked = TaxLossHarvester.lotsToSell(lots, instrumentID: "VTI", quantity: 5, price: 100, tradeDay: T)
        #expect(picked.map(\.id) == ["LT"])
        #expect(picked.map(\.quantity) == [5])
    }

    // MARK: - Validation

    struct Invalid: Sendable, CustomTestStringConvertible {
        var lots: [TaxLot] = [lot("L0", cost: 120), lot("L1", cost: 90)]
        var prices: [String: Double] = ["VTI": 100]
        var rules: TaxRules = TaxLossTests.baseRules
        var message: String
        var testDescription: String { message }
    }

    static let baseRules = rules()

    static let invalidCases: [Invalid] = {
        var cases: [Invalid] = []
        func add(_ message: String, _ change: (inout Invalid) -> Void) {
            var c = Invalid(message: message)
            change(&c)
            cases.append(c)
        }
        add("tax_lots[1].quantity -2 is not > 0") { $0.lots[1].quantity = -2 }
        add("tax_lots[0].quantity 0 is not > 0") { $0.lots[0].quantity = 0 }
        add("tax_lots[1].quantity inf is not a finite number") { $0.lots[1].quantity = .infinity }
        add("tax_lots[1].cost_per_share -0.5 is not >= 0") { $0.lots[1].costPerShare = -0.5 }
        add("tax_lots[0].cost_per_share nan is not a finite number") { $0.lots[0].costPerShare = .nan }
        add("tax_lots[1].acquired_day 2026-11-22 is after the trade day 2026-11-21") { $0.lots[1].acquiredDay = T + 1 }
        add("tax_lots[2].id \"L0\" duplicates tax_lots[0].id") { $0.lots.append(lot("L0", cost: 1)) }
        add("tax_lots[2].id is empty") { $0.lots.append(lot("", cost: 1)) }
        add("tax_lots[2].instrument_id \"XYZ\" is unknown: it has no price") { $0.lots.append(lot("L2", "XYZ", cost: 1)) }
        add("prices[\"VTI\"] 0 is not > 0") { $0.prices["VTI"] = 0 }
        add("prices[\"ALT\"] -3 is not > 0") { $0.prices["ALT"] = -3 }
        add("prices[\"ALT\"] nan is not a finite number") { $0.prices["ALT"] = .nan }
        add("short_term_rate 1.2 is not in 0...1") { $0.rules.shortTermRate = 1.2 }
        add("long_term_rate -0.1 is not in 0...1") { $0.rules.longTermRate = -0.1 }
        add("long_term_rate nan is not in 0...1") { $0.rules.longTermRate = .nan }
        add("min_harvest -5 is not >= 0") { $0.rules.minHarvest = -5 }
        add("min_harvest inf is not a finite number") { $0.rules.minHarvest = .infinity }
        add("specific_lot_ids[1] \"L9\" is not one of the tax lots") { $0.rules.lotSelection = .specific(["L0", "L9"]) }
        add("recent_trades[1].quantity 0 is not > 0") {
            $0.rules.recentTrades = [buy("BND", T), RecentTrade(instrumentID: "VTI", day: T, side: .sell, quantity: 0, accountID: "A")]
        }
        add("recent_trades[0].day 2026-11-22 is after the trade day 2026-11-21") { $0.rules.recentTrades = [buy("VTI", T + 1)] }
        add("recent_trades[0].day -800000 is outside the years 0001...9999") {
            $0.rules.recentTrades = [buy("VTI", -800_000)]
        }
        add("trade_day 9000000 is outside the years 0001...9999") { $0.rules.tradeDay = 9_000_000 }
        add("tax_lots[0].acquired_day -9000000 is outside the years 0001...9999") {
            $0.lots[0].acquiredDay = -9_000_000
        }
        return cases
    }()

    @Test(arguments: invalidCases)
    func validationError(_ c: Invalid) {
        #expect(throws: TaxLossError(.invalidInput, c.message)) {
            try TaxLossHarvester.propose(lots: c.lots, prices: c.prices, rules: c.rules)
        }
    }

    @Test func validInputsPassValidation() throws {
        // Boundaries that are allowed: rates 0 and 1, min 0, cost 0, acquired on the trade day, trade 30 days back.
        let r = TaxRules(shortTermRate: 1, longTermRate: 0, minHarvest: 0, tradeDay: T, recentTrades: [buy("BND", T - 30)])
        let (proposals, _) = try TaxLossHarvester.propose(
            lots: [lot("L0", cost: 0, on: T), lot("L1", cost: 120, on: T)], prices: ["VTI": 100, "BND": 70], rules: r)
        #expect(proposals.map(ids) == [["L1"]])
        #expect(close(proposals[0].estimatedTaxSaving, 200))
    }
}
