import Foundation
import KeelAPI
import KeelInference
import KeelPortfolio
import Synchronization

/// The model families Keel serves, from a model's `keel.kind` metadata entry.
public enum ModelKind: String, Sendable, CaseIterable, CustomStringConvertible {
    case policy
    case taxLoss = "tax_loss"
    case liquidity

    public var description: String { rawValue }
}

/// One validated version of a model, ready to serve.
///
/// Thread safety: immutable apart from its session pool, which is
/// lock-protected; share it freely. A request that looked the model up keeps
/// it alive (ARC) until it finishes, even when a hot swap has replaced it in
/// the ``ModelRepository`` meanwhile.
public final class LoadedModel: Sendable, CustomStringConvertible {
    /// The model's name: its directory under the repository root.
    public let name: String
    /// The version: the numeric directory name.
    public let version: Int64
    /// SHA-256 of the file's bytes (64 lowercase hex digits).
    public let sha256: String
    /// The file it was loaded from.
    public let path: String
    /// The family, from `keel.kind`.
    public let kind: ModelKind
    /// The input features in order, from `keel.features`.
    public let featureNames: [String]
    /// The model file's metadata (`keel.*` entries and provenance).
    public let metadata: [String: String]
    /// When this version was loaded.
    public let loadedAt: Date
    /// The validated model itself.
    public let model: Model
    /// `ModelRef(name, version, sha256)`, built once for responses.
    public let ref: Keel_V1_ModelRef

    private let pool: SessionPool

    init(name: String, version: Int64, path: String, model: Model, kind: ModelKind,
         featureNames: [String], warmSession: Session?, maxIdleSessions: Int)
    {
        self.name = name
        self.version = version
        self.path = path
        self.model = model
        self.sha256 = model.sha256
        self.kind = kind
        self.featureNames = featureNames
        self.metadata = model.metadata
        self.loadedAt = Date()
        var ref = Keel_V1_ModelRef()
        ref.name = name
        ref.version = version
        ref.sha256 = model.sha256
        self.ref = ref
        self.pool = SessionPool(model: model, maxIdle: maxIdleSessions, warm: warmSession)
    }

    /// Number of input features per row (instrument).
    public var featureCount: Int { featureNames.count }

    /// When this version was loaded, in Unix nanoseconds.
    public var loadedUnixNanos: Int64 {
        Int64((loadedAt.timeIntervalSince1970 * 1e9).rounded())
    }

    /// Runs `body` with a session of this model taken from the pool (one is
    /// created when none is idle) and puts it back afterwards, also when
    /// `body` throws (a session stays usable after a failed run).
    ///
    /// The session is lent to `body` only: do not let it escape. Thread-safe;
    /// the pool lock is held only to take and return the session, never
    /// while `body` runs.
    public func withSession<T>(_ body: (Session) throws -> T) throws -> T {
        let lease = try pool.checkOut()
        defer { pool.checkIn(lease) }
        return try body(lease.session)
    }

    /// Sessions currently idle in the pool (for tests and diagnostics).
    public var idleSessionCount: Int { pool.idleCount }

    public var description: String { "\(name) v\(version) (\(kind), sha256 \(sha256.prefix(12)))" }
}

/// A session on loan from the pool.
///
/// `Session` is deliberately not `Sendable` (it runs one call at a time), so a
/// pool shared by concurrent requests cannot hold `[Session]` in a `Mutex` and
/// hand elements out under strict checking. This box is `@unchecked Sendable`
/// and that is sound because of how the pool uses it:
/// - an idle lease lives only inside the pool's `Mutex`-protected array, so
///   nobody touches its session there;
/// - `checkOut()` removes the lease from the array under the lock, so exactly
///   one caller owns it afterwards; `withSession` uses it synchronously on the
///   caller's thread and does not let it escape (the closure is non-escaping);
/// - `checkIn(_:)` appends it back under the lock. The lock's acquire/release
///   orders every use by one caller before the next caller's use.
/// So a session is never used by two threads at once, which is the only rule
/// the C core imposes on sessions.
final class SessionLease: @unchecked Sendable {
    let session: Session
    init(_ session: Session) { self.session = session }
}

/// Idle sessions of one model. Thread-safe (one short lock per check-out and
/// check-in).
final class SessionPool: Sendable {
    private let model: Model
    private let maxIdle: Int
    private let idle: Mutex<[SessionLease]>

    init(model: Model, maxIdle: Int, warm: Session?) {
        self.model = model
        self.maxIdle = max(1, maxIdle)
        // `warm` is a session the loader used for the test inference; the
        // loader hands it over (it keeps no reference), see SessionLease.
        let initial = warm.map { [SessionLease($0)] } ?? []
        self.idle = Mutex(initial)
    }

    func checkOut() throws(KeelError) -> SessionLease {
        if let lease = idle.withLock({ $0.popLast() }) { return lease }
        return SessionLease(try model.makeSession())
    }

    func checkIn(_ lease: SessionLease) {
        let kept = idle.withLock { leases -> Bool in
            guard leases.count < maxIdle else { return false }
            leases.append(lease)
            return true
        }
        _ = kept  // a surplus session is freed here, outside the lock, when `lease` is released
    }

    var idleCount: Int { idle.withLock { $0.count } }
}

/// A file's identity for change detection: device, inode, size and
/// modification time (nanoseconds). Replacing a file by rename changes the
/// inode; rewriting it in place changes the size or the time.
struct FileStamp: Sendable, Hashable, CustomStringConvertible {
    var device: UInt64
    var inode: UInt64
    var size: Int64
    var modifiedNanos: Int64

    /// The stamp of the regular file at `path`, or `nil` when there is none.
    static func of(_ path: String) -> FileStamp? {
        var info = stat()
        guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return nil }
        #if canImport(Darwin)
        let seconds = Int64(info.st_mtimespec.tv_sec)
        let nanos = Int64(info.st_mtimespec.tv_nsec)
        #else
        let seconds = Int64(info.st_mtim.tv_sec)
        let nanos = Int64(info.st_mtim.tv_nsec)
        #endif
        return FileStamp(device: UInt64(truncatingIfNeeded: info.st_dev), inode: UInt64(truncatingIfNeeded: info.st_ino),
                         size: Int64(info.st_size), modifiedNanos: seconds &* 1_000_000_000 &+ nanos)
    }

    var description: String { "size \(size), mtime \(modifiedNanos) ns, inode \(inode)" }
}

// MARK: - Validation

/// Checks that a decoded model can serve. The core already validated the
/// graph; this adds the serving contract: a known `keel.kind`, one rank-2
/// float input `[dynamic rows, fixed features]` whose width matches
/// `keel.features`, and a test inference on 3 synthetic rows with finite
/// outputs (a policy must give one score per row).
enum ModelValidator {
    static let testRows = 3

    struct Checked {
        var kind: ModelKind
        var features: [String]
        var session: Session
    }

    static func check(_ model: Model, path: String) throws(ModelRepositoryError) -> Checked {
        func fail(_ reason: String) -> ModelRepositoryError { .invalidModel(path: path, reason: reason) }

        guard let rawKind = model.kind else {
            throw fail("metadata keel.kind is missing (expected policy, tax_loss or liquidity)")
        }
        guard let kind = ModelKind(rawValue: rawKind) else {
            throw fail("metadata keel.kind is '\(rawKind)' (expected policy, tax_loss or liquidity)")
        }
        guard model.inputs.count == 1, let input = model.inputs.first else {
            throw fail("the model has \(model.inputs.count) inputs "
                + "(\(model.inputs.map(\.description).joined(separator: ", "))); a served model takes exactly one")
        }
        guard input.elementType == 1 else {
            throw fail("input \(input) is not float32")
        }
        guard input.rank == 2 else {
            throw fail("input \(input) has rank \(input.rank); a served model takes [instruments, features]")
        }
        guard input.dims[0] == nil else {
            throw fail("input \(input) has a fixed first dimension; it must be dynamic (one row per instrument)")
        }
        guard let width = input.dims[1], width > 0 else {
            throw fail("input \(input) has no fixed, positive feature dimension")
        }
        guard let features = model.featureNames else {
            throw fail("metadata keel.features is missing (the input's \(width) feature names, comma-separated)")
        }
        guard features.count == width else {
            throw fail("metadata keel.features names \(features.count) features but input \(input) takes \(width)")
        }
        if let blank = features.firstIndex(where: \.isEmpty) {
            throw fail("metadata keel.features has an empty name at position \(blank + 1)")
        }
        if kind == .policy, let why = FeatureSet.mismatch(features) {
            throw fail("a policy must take Keel's feature set: \(why)")
        }
        if kind == .liquidity, let why = LiquidityFeatures.mismatch(features) {
            throw fail(why)
        }
        if kind == .taxLoss, let why = TaxLossFeatures.mismatch(features) {
            throw fail(why)
        }
        guard !model.outputs.isEmpty else { throw fail("the model has no outputs") }

        // A test inference: small, varied, deterministic inputs.
        let rows = testRows
        var x = [Float](repeating: 0, count: rows * width)
        for i in x.indices { x[i] = Float((i * 7919) % 17) / 17 - 0.5 }
        let session: Session
        let outputs: [Tensor]
        do {
            session = try model.makeSession()
            outputs = try session.run(features: x, rows: rows)
        } catch {
            throw fail("test inference on \(rows) synthetic rows failed: \(error)")
        }
        for (index, output) in outputs.enumerated() {
            let name = index < model.outputs.count ? model.outputs[index].name : "#\(index)"
            if let bad = output.values.firstIndex(where: { !$0.isFinite }) {
                throw fail("test inference on \(rows) synthetic rows gave a non-finite value "
                    + "(\(output.values[bad])) in output '\(name)' at element \(bad)")
            }
        }
        if kind == .policy || kind == .taxLoss {
            guard let scores = outputs.first, scores.shape.first == rows, scores.values.count >= rows,
                  scores.values.count % rows == 0
            else {
                throw fail("a \(kind) model must output one score per row: output '\(model.outputs[0].name)' has shape "
                    + "\(outputs.first?.shape ?? []) for \(rows) rows")
            }
        }
        return Checked(kind: kind, features: features, session: session)
    }
}
