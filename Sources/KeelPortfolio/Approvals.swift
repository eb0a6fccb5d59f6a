import Synchronization

/// Configurable high-impact rules: a decision that triggers any of them
/// waits for an advisor (PENDING_APPROVAL) instead of being executable.
/// A rule set to nil is off.
public struct ApprovalRules: Sendable, Equatable {
    /// One-way turnover above this share of the portfolio.
    public var turnoverAbove: Double? = 0.20
    /// A single order above this share of the portfolio.
    public var orderShareAbove: Double? = 0.10
    /// Portfolio volatility rising by more than this (absolute, annualised).
    public var volatilityRiseAbove: Double? = 0.01
    /// The account's first rebalance.
    public var firstRebalance = true
    /// How long a pending decision waits before it expires.
    public var expiry: Duration = .seconds(24 * 3600)
    /// Most decisions waiting at once; a decision that would wait beyond it
    /// is refused (each holds its whole proposal in memory).
    public var maxPending = 10_000

    public init() {}

    /// The rules `decision` triggers, as readable text; empty = executable.
    public func triggered(by decision: RebalanceDecision, firstRebalance isFirst: Bool) -> [String] {
        guard decision.status == .executable else { return [] }
        var rules: [String] = []
        if let limit = turnoverAbove, decision.turnover > limit {
            rules.append("approval.turnover: turnover \(pct(decision.turnover)) above \(pct(limit))")
        }
        if let limit = orderShareAbove,
           let largest = decision.orders.max(by: { $0.notional < $1.notional }),
           largest.notional / decision.totalValue > limit
        {
            rules.append("approval.order_share: \(largest.instrumentID) order is "
                + "\(pct(largest.notional / decision.totalValue)) of the portfolio, above \(pct(limit))")
        }
        if let limit = volatilityRiseAbove, decision.riskAfter.volatility - decision.riskBefore.volatility > limit {
            rules.append("approval.risk_increase: volatility rises from \(pct(decision.riskBefore.volatility)) to "
                + "\(pct(decision.riskAfter.volatility)), more than \(pct(limit))")
        }
        if firstRebalance && isFirst { rules.append("approval.first_rebalance: first rebalance for this account") }
        return rules
    }
}

/// Why an approval could not be decided.
public struct ApprovalError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable { case notFound, alreadyDecided, expired, invalidArgument }
    public let code: Code
    public let message: String
    public var description: String { message }
}

/// Pending decisions waiting for an advisor, in memory. Each is decided at
/// most once (approve or reject), or expires; a decided or expired one
/// stays known (up to `retainDecided` of them) so that a second decision is
/// refused with the reason instead of "not found".
///
/// Thread safety: every method takes one short lock; call from anywhere.
public final class ApprovalBook<Proposal: Sendable>: Sendable {
    public enum State: Sendable, Equatable {
        case pending, approved, rejected, expired
    }

    public struct Entry: Sendable {
        public let approvalID: String
        public let decisionID: String
        public let accountID: String
        public let triggeredRules: [String]
        public let proposal: Proposal
        public let createdUnixNanos: Int64
        public let expiresUnixNanos: Int64
        public var state: State
        public var advisorID: String
        public var comment: String
        public var decidedUnixNanos: Int64
    }

    private struct Store {
        var entries: [String: Entry] = [:]
        var decidedOrder: [String] = []
        /// Places promised by ``reserve(limit:nowUnixNanos:)`` and not yet filled.
        var reserved = 0
    }

    private let store = Mutex(Store())
    public let retainDecided: Int

    public init(retainDecided: Int = 100_000) {
        self.retainDecided = max(1, retainDecided)
    }

    /// Adds a pending decision.
    public func add(approvalID: String, decisionID: String, accountID: String, triggeredRules: [String],
                    proposal: Proposal, nowUnixNanos: Int64, expiry: Duration)
    {
        let (seconds, attos) = expiry.components
        let nanos = seconds &* 1_000_000_000 &+ attos / 1_000_000_000
        let entry = Entry(approvalID: approvalID, decisionID: decisionID, accountID: accountID,
                          triggeredRules: triggeredRules, proposal: proposal, createdUnixNanos: nowUnixNanos,
                          expiresUnixNanos: nowUnixNanos &+ nanos, state: .pending, advisorID: "", comment: "",
                          decidedUnixNanos: 0)
        store.withLock { $0.entries[approvalID] = entry }
    }

    /// Adds a pending entry with explicit creation and expiry times (a new
    /// decision, or one restored from the audit trail after a restart).
    /// `fillingReservation`: the place was taken by ``reserve(limit:nowUnixNanos:)``.
    public func add(approvalID: String, decisionID: String, accountID: String, triggeredRules: [String],
                    proposal: Proposal, createdUnixNanos: Int64, expiresUnixNanos: Int64,
                    fillingReservation: Bool = false)
    {
        let entry = Entry(approvalID: approvalID, decisionID: decisionID, accountID: accountID,
                          triggeredRules: triggeredRules, proposal: proposal, createdUnixNanos: createdUnixNanos,
                          expiresUnixNanos: expiresUnixNanos, state: .pending, advisorID: "", comment: "",
                          decidedUnixNanos: 0)
        store.withLock { s in
            s.entries[approvalID] = entry
            if fillingReservation { s.reserved = max(0, s.reserved - 1) }
        }
    }

    /// Promises a place for a pending entry about to be recorded: true when
    /// fewer than `limit` entries are pending or promised. Entries whose time
    /// has passed but that no call has expired yet do not count. Fill the
    /// place with `add(..., fillingReservation: true)` or give it back with
    /// ``cancelReservation()``.
    public func reserve(limit: Int, nowUnixNanos: Int64) -> Bool {
        store.withLock { s in
            var waiting = s.entries.count - s.decidedOrder.count + s.reserved
            if waiting >= limit {
                // The rare full case: leave out what has already expired.
                waiting -= s.entries.values.reduce(0) { n, e in
                    n + (e.state == .pending && e.expiresUnixNanos <= nowUnixNanos ? 1 : 0)
                }
            }
            guard waiting < limit else { return false }
            s.reserved += 1
            return true
        }
    }

    /// Gives back a place ``reserve(limit:nowUnixNanos:)`` promised.
    public func cancelReservation() {
        store.withLock { $0.reserved = max(0, $0.reserved - 1) }
    }

    /// Applies a recorded decision or expiry to a restored entry (no checks:
    /// the record says it happened). Unknown ids are ignored.
    public func settle(approvalID: String, state: State, advisorID: String, comment: String, atUnixNanos: Int64) {
        store.withLock { s in
            guard var entry = s.entries[approvalID], entry.state == .pending, state != .pending else { return }
            entry.state = state
            entry.advisorID = advisorID
            entry.comment = comment
            entry.decidedUnixNanos = atUnixNanos
            s.entries[approvalID] = entry
            s.decidedOrder.append(approvalID)
            Self.trim(&s, keep: retainDecided)
        }
    }

    /// Marks every pending entry whose time has come as expired and returns
    /// them (for the audit trail).
    public func expire(nowUnixNanos: Int64) -> [Entry] {
        store.withLock { s in
            var expired: [Entry] = []
            for (id, entry) in s.entries where entry.state == .pending && entry.expiresUnixNanos <= nowUnixNanos {
                var e = entry
                e.state = .expired
                e.decidedUnixNanos = nowUnixNanos
                s.entries[id] = e
                s.decidedOrder.append(id)
                expired.append(e)
            }
            // No trimming here: an entry just expired must stay until its
            // expiry is recorded (a failed record reverts it to pending).
            // Oldest first; ties broken by id (dictionary order is not stable across runs).
            return expired.sorted { ($0.createdUnixNanos, $0.approvalID) < ($1.createdUnixNanos, $1.approvalID) }
        }
    }

    /// How many entries are pending, including any whose time has passed
    /// but that no call has expired yet (decided and expired ones are listed
    /// in `decidedOrder`; every other entry is pending).
    public var pendingCount: Int {
        store.withLock { $0.entries.count - $0.decidedOrder.count }
    }

    /// Pending entries, oldest first; only `accountID`'s when it is not empty.
    public func pending(accountID: String = "") -> [Entry] {
        store.withLock { s in
            s.entries.values.filter { $0.state == .pending && (accountID.isEmpty || $0.accountID == accountID) }
                .sorted { ($0.createdUnixNanos, $0.approvalID) < ($1.createdUnixNanos, $1.approvalID) }
        }
    }

    /// Approves or rejects a pending entry. Expired entries (including one
    /// whose time passed just now) and decided ones are refused.
    public func decide(approvalID: String, approve: Bool, advisorID: String, comment: String, nowUnixNanos: Int64)
        throws(ApprovalError) -> Entry
    {
        guard !approvalID.isEmpty else { throw ApprovalError(code: .invalidArgument, message: "approval_id is empty") }
        guard !advisorID.isEmpty else {
            throw ApprovalError(code: .invalidArgument, message: "advisor_id is empty: a decision names its advisor")
        }
        let result: Result<Entry, ApprovalError> = store.withLock { s in
            guard var entry = s.entries[approvalID] else {
                return .failure(ApprovalError(code: .notFound, message: "no approval '\(approvalID)'"))
            }
            switch entry.state {
            case .approved, .rejected:
                return .failure(ApprovalError(code: .alreadyDecided, message:
                    "approval '\(approvalID)' was already \(entry.state == .approved ? "approved" : "rejected") by "
                        + "'\(entry.advisorID)'; a decision cannot be changed"))
            case .expired:
                return .failure(ApprovalError(code: .expired, message: "approval '\(approvalID)' has expired"))
            case .pending:
                if entry.expiresUnixNanos <= nowUnixNanos {
                    return .failure(ApprovalError(code: .expired, message: "approval '\(approvalID)' has expired"))
                }
            }
            entry.state = approve ? .approved : .rejected
            entry.advisorID = advisorID
            entry.comment = comment
            entry.decidedUnixNanos = nowUnixNanos
            s.entries[approvalID] = entry
            s.decidedOrder.append(approvalID)
            Self.trim(&s, keep: retainDecided)
            return .success(entry)
        }
        return try result.get()
    }

    /// Puts a decided or expired entry back to pending (its decision could
    /// not be recorded). Nothing happens to an entry that is pending or gone.
    public func revert(approvalID: String) {
        store.withLock { s in
            guard var entry = s.entries[approvalID], entry.state != .pending else { return }
            entry.state = .pending
            entry.advisorID = ""
            entry.comment = ""
            entry.decidedUnixNanos = 0
            s.entries[approvalID] = entry
            s.decidedOrder.removeAll { $0 == approvalID }
        }
    }

    private static func trim(_ s: inout Store, keep: Int) {
        guard s.decidedOrder.count > keep else { return }
        let drop = s.decidedOrder.count - keep
        for id in s.decidedOrder.prefix(drop) { s.entries[id] = nil }
        s.decidedOrder.removeFirst(drop)
    }
}
