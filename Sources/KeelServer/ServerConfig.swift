import KeelAudit
import KeelPortfolio

/// Everything `keel serve` can be told, with the defaults of docs/OPERATIONS.md.
/// Filled from (lowest to highest precedence) defaults, a config file,
/// environment variables and command-line flags.
public struct ServerConfig: Sendable, Equatable {
    public var host = "127.0.0.1"
    public var grpcPort = 50051
    public var tcpPort = 50052
    public var metricsPort = 9090
    public var modelsDirectory = "./models"
    /// Largest request or response payload accepted, in bytes.
    public var maxMessageBytes = 4 << 20
    /// Request bytes held by the requests in flight, per transport; a request
    /// beyond it gets RESOURCE_EXHAUSTED.
    public var maxInFlightBytes = 256 << 20
    /// Deadline for requests that do not carry their own.
    public var defaultDeadline: Duration = .seconds(1)
    /// Requests executing at once; more wait in the queue.
    public var maxConcurrentRequests = 4
    /// Requests allowed to wait; beyond it new requests get RESOURCE_EXHAUSTED.
    public var maxQueuedRequests = 1024
    /// How often the model repository looks for new or replaced files.
    public var modelPollInterval: Duration = .seconds(1)
    /// Threads OpenBLAS may use per product (1: parallelism comes from requests).
    public var blasThreads = 1
    /// I/O threads of each transport (framed TCP and gRPC). Requests never
    /// run on them (the handlers run on the global pool), so one per
    /// transport suits a small machine; raise it where a transport's one
    /// thread becomes the limit (docs/OPERATIONS.md, "Threads").
    public var eventLoopThreads = 1
    /// The SQLite audit trail (created when missing).
    public var auditDatabase = "./keel-audit.sqlite"
    /// SQLite `synchronous` for the audit trail: full (survives power loss)
    /// or normal (survives a process crash; faster).
    public var auditSync = "full"
    /// Bytes of audit WAL in use past which the writer restarts the WAL even
    /// under load, at the price of a stall (KeelAudit's `AuditLog.defaultWALLimit`).
    public var auditWALMaxBytes = AuditLog.defaultWALLimit
    /// How long a decision waits for an advisor before it expires.
    public var approvalExpiry: Duration = .seconds(24 * 3600)
    /// The high-impact rules that put a decision in PENDING_APPROVAL (their
    /// `expiry` is ``approvalExpiry``); a threshold of nil is off.
    public var approvalRules = ApprovalRules()

    public init() {}
}
