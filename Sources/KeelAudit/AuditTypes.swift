/// What an audit record describes; stored as the record's `kind` column.
public enum AuditKind: String, Sendable, CaseIterable {
    /// A Rebalance decision; the payload is a serialized `Keel_V1_DecisionRecord`.
    case decision
    /// An event in a pending decision's approval; the payload is a serialized
    /// `Keel_V1_ApprovalRecord`.
    case approval

    /// The fully qualified name of the protobuf message the payload holds.
    public var messageName: String {
        switch self {
        case .decision: "keel.v1.DecisionRecord"
        case .approval: "keel.v1.ApprovalRecord"
        }
    }
}

/// One record to append. A value: the caller keeps nothing the log refers to.
///
/// Limits, checked by ``AuditLog/append(_:)`` (``AuditError/Code/invalidArgument``):
/// `accountID` and `decisionID` at most ``maxIDBytes`` UTF-8 bytes without
/// NUL characters; `payload` at most ``maxPayloadBytes`` bytes and decoding
/// as the message `kind` names.
public struct AuditEntry: Sendable {
    /// Longest `accountID` or `decisionID`, in UTF-8 bytes.
    public static let maxIDBytes = 4096
    /// Largest payload, in bytes.
    public static let maxPayloadBytes = 64 << 20

    public var kind: AuditKind
    public var accountID: String
    public var decisionID: String
    /// Serialized `Keel_V1_DecisionRecord` or `Keel_V1_ApprovalRecord`, per `kind`.
    public var payload: [UInt8]

    public init(kind: AuditKind, accountID: String, decisionID: String, payload: [UInt8]) {
        self.kind = kind
        self.accountID = accountID
        self.decisionID = decisionID
        self.payload = payload
    }
}

/// Proof that a record is committed: its place in the chain and its hash.
public struct AuditReceipt: Sendable, Equatable, Hashable {
    /// 1, 2, 3, ... with no gaps.
    public let sequence: Int64
    /// The record's hash: 64 lowercase hexadecimal characters (docs/AUDIT.md).
    public let hash: String

    public init(sequence: Int64, hash: String) {
        self.sequence = sequence
        self.hash = hash
    }
}

/// Why an audit operation failed.
public struct AuditError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable, CaseIterable, CustomStringConvertible {
        /// A file could not be opened, read or written, or a transaction failed.
        case io
        /// The file is not an SQLite database, not a Keel audit log, has another
        /// schema version, or holds a record that does not check out.
        case corrupt
        /// The log was closed.
        case closed
        /// The entry breaks a documented limit or its payload does not decode.
        case invalidArgument
        /// The writer's queue holds ``AuditLog/maxQueued`` entries already;
        /// the caller should shed load (a server answers RESOURCE_EXHAUSTED).
        case queueFull

        /// Human-readable name of the code, e.g. `"I/O error"`.
        public var name: String {
            switch self {
            case .io: "I/O error"
            case .corrupt: "corrupt audit log"
            case .closed: "audit log closed"
            case .invalidArgument: "invalid argument"
            case .queueFull: "audit queue full"
            }
        }

        public var description: String { name }
    }

    /// What went wrong, as a stable code.
    public let code: Code
    /// The details, for people; names the file and, where one is at fault, the record.
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code.name): \(message)" }
}

/// How hard a commit pushes data to the disk (SQLite's `PRAGMA synchronous`
/// in WAL mode).
public enum AuditDurability: String, Sendable, CaseIterable {
    /// `synchronous=FULL`: every commit syncs the WAL file. A record whose
    /// `append` returned survives a process kill and a power loss.
    case full
    /// `synchronous=NORMAL`: the WAL is synced at checkpoints only. A record
    /// whose `append` returned survives a process kill (SIGKILL) but the last
    /// commits may be lost on a power loss or OS crash.
    case normal
}
