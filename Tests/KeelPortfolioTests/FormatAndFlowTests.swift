import Testing

@testable import KeelPortfolio

@Suite("Number formatting and the caps' capacity")
struct FormatAndFlowTests {
    @Test("fixed-point text", arguments: [
        (1234567.891, 2, true, "1,234,567.89"),
        (-0.004, 2, false, "0.00"),
        (9.9996, 2, false, "10.00"),
        (-12.5, 1, false, "-12.5"),
        (0.5, 0, false, "1"),
        (3, 9, false, "3.0000"),  // decimals beyond 4 are clamped to 4
    ])
    func fixed(_ value: Double, _ decimals: Int, _ grouping: Bool, _ expected: String) {
        #expect(Format.fixed(value, decimals, grouping: grouping) == expected)
    }

    @Test("values an Int cannot hold once scaled print as Double does, without trapping")
    func huge() {
        #expect(Format.fixed(950_000_000_000_000.5, 4) == String(950_000_000_000_000.5))
        #expect(Format.fixed(1e300, 2) == String(1e300))
        #expect(Format.fixed(.infinity, 2) == "inf")
        #expect(pct(.infinity) == "unlimited")
    }

    @Test("capacity with one partition is the closed form")
    func closedForm() {
        var l = LimitsTests.limits(n: 4, sectors: ["A", "A", "B", "C"], sectorCaps: ["A": 0.3, "B": 0.9])
        l.hi = [0.2, 0.2, 0.1, 0.25]
        // A: min(0.3, 0.4) = 0.3; B: min(0.9, 0.1) = 0.1; C uncapped: 0.25.
        #expect(abs(l.maxInvestable() - 0.65) < 1e-12)
    }

    @Test("capacity with sectors and classes is a maximum flow")
    func flow() {
        // Two sectors and two classes; the cross structure binds below both closed forms.
        var l = LimitsTests.limits(n: 4, sectors: ["A", "A", "B", "B"],
                                   classes: [.equity, .fixedIncome, .equity, .fixedIncome],
                                   sectorCaps: ["A": 0.5, "B": 0.5], classCaps: [.equity: 0.3, .fixedIncome: 0.9])
        l.hi = [0.4, 0.1, 0.4, 0.1]
        // Equity carries at most 0.3; fixed income only 0.2 (its assets' bounds): 0.5 in all.
        #expect(abs(l.maxInvestable() - 0.5) < 1e-12)
    }

    @Test("many capped sectors stay fast: 20,000 instruments in their own capped sectors")
    func manySectors() {
        let n = 20_000
        let sectors = (0..<n).map { "S\($0)" }
        var caps: [String: Double] = [:]
        for s in sectors { caps[s] = 0.5 }
        let l = LimitsTests.limits(n: n, sectors: sectors, classes: [AssetClass](repeating: .equity, count: n),
                                   sectorCaps: caps, classCaps: [.equity: 0.9])
        #expect(abs(l.maxInvestable() - 0.9) < 1e-9)
        let target = [Double](repeating: 1.0 / Double(n), count: n)
        let w = l.project(target, invested: 0.95)
        #expect(l.violation(w) == nil)
    }
}
