import Foundation
import Testing

@testable import KeelPortfolio

@Suite("Approvals: rules and the approval book")
struct ApprovalTests {
    static let second: Int64 = 1_000_000_000

    /// A decision with the given figures (only what the rules read).
    static func decision(status: DecisionStatus = .executable, turnover: Double = 0.05, orderNotionals: [Double] = [1_000],
                         volBefore: Double = 0.10, volAfter: Double = 0.10, value: Double = 100_000) -> RebalanceDecision
    {
        let orders = orderNotionals.enumerated().map { k, notional in
            Order(instrumentID: "I\(k)", side: .buy, quantity: notional / 10, price: 10, estimatedCost: 1,
                  expectedBenefit: 2, required: false, reasons: [.drift], topFeatures: [], explanation: "x")
        }
        let before = RiskFigures(volatility: volBefore, trackingError: 0, concentration: 0, maxVolatility: 0.2)
        var after = before
        after.volatility = volAfter
        return RebalanceDecision(status: status, targets: [], orders: orders,
                                 compliance: ComplianceReport(checks: [], conflicts: []), riskBefore: before,
                                 riskAfter: after, turnover: turnover, totalValue: value, cashWeightBefore: 0,
                                 cashWeightAfter: 0, totalEstimatedCost: 0, summary: "", notes: [])
    }

    // MARK: - Rules

    @Test("defaults: turnover > 20 %, an order > 10 %, volatility +1 pt, first rebalance")
    func defaults() {
        let rules = ApprovalRules()
        #expect(rules.turnoverAbove == 0.20 && rules.orderShareAbove == 0.10 && rules.volatilityRiseAbove == 0.01)
        #expect(rules.firstRebalance && rules.expiry == .seconds(86_400))
        #expect(rules.triggered(by: Self.decision(), firstRebalance: false).isEmpty)
    }

    @Test("each rule triggers on its own, with readable text")
    func eachRule() throws {
        let rules = ApprovalRules()
        let turnover = rules.triggered(by: Self.decision(turnover: 0.25), firstRebalance: false)
        #expect(turnover == ["approval.turnover: turnover 25.0% above 20.0%"])
        let order = rules.triggered(by: Self.decision(orderNotionals: [1_000, 12_000, 5_000]), firstRebalance: false)
        #expect(order.count == 1 && order[0].hasPrefix("approval.order_share: I1 order is 12.0%"))
        let risk = rules.triggered(by: Self.decision(volBefore: 0.10, volAfter: 0.115), firstRebalance: false)
        #expect(risk.count == 1 && risk[0].hasPrefix("approval.risk_increase: volatility rises from 10.0% to 11.5%"))
        let first = rules.triggered(by: Self.decision(), firstRebalance: true)
        #expect(first == ["approval.first_rebalance: first rebalance for this account"])
        let all = rules.triggered(by: Self.decision(turnover: 0.3, orderNotionals: [20_000], volAfter: 0.2),
                                  firstRebalance: true)
        #expect(all.count == 4)
    }

    @Test("limits are strict (at the limit does not trigger); nil rules are off; only executable decisions")
    func boundariesAndOff() {
        let rules = ApprovalRules()
        #expect(rules.triggered(by: Self.decision(turnover: 0.20, orderNotionals: [10_000], volAfter: 0.105),
                                firstRebalance: false).isEmpty)
        var off = ApprovalRules()
        off.turnoverAbove = nil; off.orderShareAbove = nil; off.volatilityRiseAbove = nil; off.firstRebalance = false
        #expect(off.triggered(by: Self.decision(turnover: 0.9, orderNotionals: [90_000], volAfter: 0.5),
                              firstRebalance: true).isEmpty)
        for status in [DecisionStatus.noTrade, .infeasible] {
            #expect(rules.triggered(by: Self.decision(status: status, turnover: 0.9), firstRebalance: true).isEmpty)
        }
        // A volatility fall never triggers.
        #expect(rules.triggered(by: Self.decision(volBefore: 0.3, volAfter: 0.1), firstRebalance: false).isEmpty)
    }

    @Test("an engine decision with a large first rebalance triggers the rules")
    func withEngineDecision() throws {
        let instruments = [EngineUnitTests.equity("A", seed: 1), EngineUnitTests.equity("B", seed: 2)]
        let input = EngineUnitTests.input(instruments, holdings: [:], cash: 100_000,
                                          mandate: Mandate(strategicWeights: [("A", 0.5), ("B", 0.5)]))
        let d = try RebalanceEngine().rebalance(input, policy: LinearPolicy.flat)
        let triggered = ApprovalRules().triggered(by: d, firstRebalance: true)
        #expect(triggered.contains { $0.hasPrefix("approval.turnover") })
        #expect(triggered.contains { $0.hasPrefix("approval.order_share") })
        #expect(triggered.contains { $0.hasPrefix("approval.risk_increase") })
        #expect(triggered.contains { $0.hasPrefix("approval.first_rebalance") })
    }

    // MARK: - Book

    static func book(_ entries: [(id: String, account: String, created: Int64)], expiry: Duration = .seconds(60))
        -> ApprovalBook<String>
    {
        let book = ApprovalBook<String>()
        for e in entries {
            book.add(approvalID: e.id, decisionID: "dec-\(e.id)", accountID: e.account, triggeredRules: ["r"],
                     proposal: "proposal \(e.id)", nowUnixNanos: e.created, expiry: expiry)
        }
        return book
    }

    @Test("add, then pending: oldest first, filtered by account")
    func addAndPending() {
        let book = Self.book([("a2", "acct-1", 20), ("a1", "acct-1", 10), ("b1", "acct-2", 15), ("a3", "acct-1", 20)])
        #expect(book.pending().map(\.approvalID) == ["a1", "b1", "a2", "a3"])
        #expect(book.pending(accountID: "acct-1").map(\.approvalID) == ["a1", "a2", "a3"])
        #expect(book.pending(accountID: "acct-2").map(\.approvalID) == ["b1"])
        #expect(book.pending(accountID: "nobody").isEmpty)
        let entry = book.pending(accountID: "acct-2")[0]
        #expect(entry.decisionID == "dec-b1" && entry.proposal == "proposal b1" && entry.triggeredRules == ["r"])
        #expect(entry.state == .pending && entry.createdUnixNanos == 15 && entry.expiresUnixNanos == 15 + 60 * Self.second)
    }

    @Test("decide approves once; a second decision is refused as already decided")
    func decideOnce() throws {
        let book = Self.book([("a1", "acct-1", 0)])
        let approved = try book.decide(approvalID: "a1", approve: true, advisorID: "adv-7", comment: "ok",
                                       nowUnixNanos: 5 * Self.second)
        #expect(approved.state == .approved && approved.advisorID == "adv-7" && approved.comment == "ok")
        #expect(approved.decidedUnixNanos == 5 * Self.second)
        #expect(book.pending().isEmpty)
        let again = #expect(throws: ApprovalError.self) {
            try book.decide(approvalID: "a1", approve: false, advisorID: "adv-8", comment: "", nowUnixNanos: 6 * Self.second)
        }
        #expect(again?.code == .alreadyDecided)
        #expect(again?.message.contains("already approved by 'adv-7'") == true)
    }

    @Test("reject is a decision too")
    func reject() throws {
        let book = Self.book([("a1", "acct-1", 0)])
        let rejected = try book.decide(approvalID: "a1", approve: false, advisorID: "adv", comment: "too risky",
                                       nowUnixNanos: 1)
        #expect(rejected.state == .rejected)
        let again = #expect(throws: ApprovalError.self) {
            try book.decide(approvalID: "a1", approve: true, advisorID: "adv", comment: "", nowUnixNanos: 2)
        }
        #expect(again?.code == .alreadyDecided && again?.message.contains("rejected") == true)
    }

    @Test("expiry: expire() returns the entries whose time has come; deciding one later is refused")
    func expiry() throws {
        let book = Self.book([("old", "acct-1", 0), ("new", "acct-1", 30 * Self.second)])
        #expect(book.expire(nowUnixNanos: 59 * Self.second).isEmpty)
        let expired = book.expire(nowUnixNanos: 60 * Self.second)
        #expect(expired.map(\.approvalID) == ["old"])
        #expect(expired[0].state == .expired && expired[0].decidedUnixNanos == 60 * Self.second)
        #expect(book.pending().map(\.approvalID) == ["new"])
        #expect(book.expire(nowUnixNanos: 61 * Self.second).isEmpty, "an entry expires once")
        let error = #expect(throws: ApprovalError.self) {
            try book.decide(approvalID: "old", approve: true, advisorID: "adv", comment: "", nowUnixNanos: 61 * Self.second)
        }
        #expect(error?.code == .expired)
    }

    @Test("deciding after the expiry time is refused even before expire() has run")
    func expiredBeforeSweep() throws {
        let book = Self.book([("a1", "acct-1", 0)], expiry: .milliseconds(1_500))
        #expect(book.pending()[0].expiresUnixNanos == 1_500_000_000)
        let error = #expect(throws: ApprovalError.self) {
            try book.decide(approvalID: "a1", approve: true, advisorID: "adv", comment: "", nowUnixNanos: 1_500_000_000)
        }
        #expect(error?.code == .expired)
        // Still reported by the next sweep, for the audit trail.
        #expect(book.expire(nowUnixNanos: 1_600_000_000).map(\.approvalID) == ["a1"])
    }

    @Test("expire() returns entries oldest first, ties by id")
    func expireOrder() {
        let book = Self.book([("c", "x", 5), ("b", "x", 5), ("a", "x", 9), ("d", "x", 1)])
        #expect(book.expire(nowUnixNanos: 1_000 * Self.second).map(\.approvalID) == ["d", "b", "c", "a"])
    }

    @Test("an empty advisor or approval id, or an unknown id, is refused")
    func invalidArguments() throws {
        let book = Self.book([("a1", "acct-1", 0)])
        let noAdvisor = #expect(throws: ApprovalError.self) {
            try book.decide(approvalID: "a1", approve: true, advisorID: "", comment: "", nowUnixNanos: 1)
        }
        #expect(noAdvisor?.code == .invalidArgument && noAdvisor?.message.contains("advisor_id") == true)
        let noID = #expect(throws: ApprovalError.self) {
            try book.decide(approvalID: "", approve: true, advisorID: "adv", comment: "", nowUnixNanos: 1)
        }
        #expect(noID?.code == .invalidArgument)
        let unknown = #expect(throws: ApprovalError.self) {
            try book.decide(approvalID: "zz", approve: true, advisorID: "adv", comment: "", nowUnixNanos: 1)
        }
        #expect(unknown?.code == .notFound)
        #expect(book.pending().count == 1, "refusals change nothing")
    }

    @Test("decided entries are retained up to the limit, then forgotten oldest first")
    func retention() throws {
        let book = ApprovalBook<Int>(retainDecided: 2)
        for k in 0..<3 {
            book.add(approvalID: "a\(k)", decisionID: "d", accountID: "x", triggeredRules: [], proposal: k,
                     nowUnixNanos: 0, expiry: .seconds(10))
        }
        for k in 0..<3 { _ = try book.decide(approvalID: "a\(k)", approve: true, advisorID: "adv", comment: "", nowUnixNanos: 1) }
        let forgotten = #expect(throws: ApprovalError.self) {
            try book.decide(approvalID: "a0", approve: true, advisorID: "adv", comment: "", nowUnixNanos: 2)
        }
        #expect(forgotten?.code == .notFound)
        let kept = #expect(throws: ApprovalError.self) {
            try book.decide(approvalID: "a2", approve: true, advisorID: "adv", comment: "", nowUnixNanos: 2)
        }
        #expect(kept?.code == .alreadyDecided)
    }

    @Test("concurrent decisions on one entry: exactly one succeeds")
    func concurrentDecide() async {
        let book = Self.book([("a1", "acct-1", 0)])
        let successes = await withTaskGroup(of: Bool.self) { group in
            for k in 0..<16 {
                group.addTask {
                    (try? book.decide(approvalID: "a1", approve: k % 2 == 0, advisorID: "adv-\(k)", comment: "",
                                      nowUnixNanos: 1)) != nil
                }
            }
            var count = 0
            for await ok in group where ok { count += 1 }
            return count
        }
        #expect(successes == 1)
    }
}
