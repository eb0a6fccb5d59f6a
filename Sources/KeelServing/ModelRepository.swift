import Foundation
import KeelInference
import Logging
import Metrics
import Synchronization

/// Why a repository operation failed. `message` names the file or model and
/// the reason.
public struct ModelRepositoryError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// No such model, version or file.
        case notFound
        /// A bad name, version or path argument.
        case invalidArgument
        /// The file exists but cannot serve (decode or serving-contract failure).
        case invalidModel
        /// Reading or copying a file failed.
        case io
    }

    public let kind: Kind
    public let message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    static func invalidModel(path: String, reason: String) -> ModelRepositoryError {
        ModelRepositoryError(.invalidModel, "\(path): \(reason)")
    }

    public var description: String { message }
}

/// A model file that failed to load, remembered so the poller does not retry
/// the same bytes on every pass and operators can see why.
public struct ModelLoadFailure: Sendable, Equatable {
    public let name: String
    public let version: Int64
    public let path: String
    public let reason: String
    public let at: Date
}

/// One loaded version as ``ModelRepository/list()`` reports it.
public struct ModelVersionStatus: Sendable {
    public let model: LoadedModel
    /// Whether new requests for this name get this version.
    public let isServing: Bool
    /// The name's most recent load failure since it last loaded successfully
    /// (e.g. a newer file that failed validation while this one kept serving).
    public let lastError: ModelLoadFailure?
}

/// A Triton-style model repository, `<root>/<name>/<version>/model.onnx`, with
/// validation before serving and hot swap.
///
/// - Layout: a version is a directory whose name is a positive integer; other
///   entries (files, non-numeric directories) are ignored.
/// - Serving: for each name, the highest loaded version serves. To roll back,
///   unload the newer version: an explicitly unloaded version is not loaded
///   again by the poller until it is loaded explicitly.
/// - Hot swap: ``pollOnce()`` (or ``watch(every:)``) loads new version
///   directories and reloads files whose identity (inode, size, mtime)
///   changed and whose SHA-256 differs. A swap replaces one dictionary entry
///   under the lock; requests that already hold the old ``LoadedModel`` finish
///   on it. A file that fails validation leaves the running model in place;
///   the failure is logged, counted, remembered (``lastError(name:)``,
///   ``failures()``) and not retried until the file changes again.
/// - Retention: when a new version starts serving, only the
///   `retainedVersions` highest loaded versions stay loaded.
///
/// Thread safety: all methods may be called from any thread or task.
/// ``serving(name:)`` takes one short lock and reads a dictionary. Loading,
/// unloading and polling are serialized among themselves by a second lock
/// held for the duration of the file I/O and validation (milliseconds for
/// Keel-sized models); they never block ``serving(name:)`` except for the
/// instant of the swap.
public final class ModelRepository: Sendable {
    /// The repository's root directory.
    public let root: URL
    /// How many versions stay loaded per model after a new one starts serving.
    public let retainedVersions: Int

    private struct State {
        /// Loaded versions per name.
        var versions: [String: [Int64: LoadedModel]] = [:]
        /// The version new requests get, per name (the highest loaded one).
        var serving: [String: LoadedModel] = [:]
        /// Failed files by path, with the stamp they had.
        var failedFiles: [String: (stamp: FileStamp?, failure: ModelLoadFailure)] = [:]
        /// The last failure per name (cleared when that name loads successfully).
        var lastError: [String: ModelLoadFailure] = [:]
        /// Versions unloaded on purpose; the poller leaves them alone.
        var suppressed: [String: Set<Int64>] = [:]
        /// The identity each loaded file had when it was read, by path.
        var stamps: [String: FileStamp] = [:]
    }

    private let state = Mutex(State())
    /// Serializes everything that changes the repository (see the type's doc).
    private let mutation = Mutex(())
    private let logger: Logger
    private let metrics: RepositoryMetrics
    private let maxIdleSessions: Int

    /// The file name of a model inside a version directory.
    public static let modelFileName = "model.onnx"

    /// Creates a repository on `root` without loading anything (see
    /// ``loadAll()``). `metricsFactory` defaults to the bootstrapped
    /// `MetricsSystem` (bootstrap it before creating the repository).
    public init(root: URL, retainedVersions: Int = 2, maxIdleSessions: Int = 8, logger: Logger? = nil,
                metricsFactory: (any MetricsFactory)? = nil)
    {
        self.root = root.standardizedFileURL
        self.retainedVersions = max(1, retainedVersions)
        self.maxIdleSessions = maxIdleSessions
        self.logger = logger ?? Logger(label: "keel.models")
        self.metrics = RepositoryMetrics(factory: metricsFactory ?? MetricsSystem.factory)
    }

    // MARK: - Request path

    /// The version new requests for `name` should use, or `nil`.
    public func serving(name: String) -> LoadedModel? {
        state.withLock { $0.serving[name] }
    }

    /// Whether any version of a model of `kind` is serving.
    public func isServing(kind: ModelKind) -> Bool {
        state.withLock { $0.serving.values.contains { $0.kind == kind } }
    }

    // MARK: - Queries

    /// Every loaded version, sorted by name and version, marking the serving one.
    public func list() -> [ModelVersionStatus] {
        state.withLock { s in
            s.versions.keys.sorted().flatMap { name in
                (s.versions[name] ?? [:]).keys.sorted().compactMap { version in
                    s.versions[name]?[version].map {
                        ModelVersionStatus(model: $0, isServing: s.serving[name] === $0, lastError: s.lastError[name])
                    }
                }
            }
        }
    }

    /// The most recent load failure of `name` since it last loaded successfully.
    public func lastError(name: String) -> ModelLoadFailure? {
        state.withLock { $0.lastError[name] }
    }

    /// Every remembered failed file, by path.
    public func failures() -> [ModelLoadFailure] {
        state.withLock { $0.failedFiles.values.map(\.failure).sorted { $0.path < $1.path } }
    }

    // MARK: - Loading

    /// Loads the latest valid version of every model under the root (falling
    /// back to older versions when the latest fails validation). Returns the
    /// models now serving. Failures are logged and remembered.
    @discardableResult
    public func loadAll() -> [LoadedModel] {
        scan(initial: true)
        return state.withLock { s in s.serving.keys.sorted().compactMap { s.serving[$0] } }
    }

    /// Loads `<root>/<name>/<version>/model.onnx`, validates it and registers
    /// it (it serves when it is the highest loaded version).
    @discardableResult
    public func load(name: String, version: Int64) throws(ModelRepositoryError) -> LoadedModel {
        try Self.checkName(name)
        guard version > 0 else {
            throw ModelRepositoryError(.invalidArgument, "model version must be positive, got \(version)")
        }
        return try mutation.withLock { _ throws(ModelRepositoryError) -> LoadedModel in
            let path = modelPath(name: name, version: version)
            guard FileStamp.of(path) != nil else {
                throw ModelRepositoryError(.notFound, "no model file \(path) (model '\(name)' version \(version))")
            }
            // Loading a version that is loaded from the same, unchanged file is a no-op.
            let existing = state.withLock { s -> LoadedModel? in
                _ = s.suppressed[name]?.remove(version)
                guard let current = s.versions[name]?[version], s.stamps[path] == FileStamp.of(path) else { return nil }
                return current
            }
            if let existing { return existing }
            return try loadAndInstall(name: name, version: version, path: path)
        }
    }

    /// Copies the file at `sourcePath` into the repository as a new version of
    /// `name` (one above the highest version on disk or loaded) and loads it.
    /// The file is validated before it is copied; a bad file is not copied.
    @discardableResult
    public func load(name: String, fromPath sourcePath: String) throws(ModelRepositoryError) -> LoadedModel {
        try Self.checkName(name)
        guard !sourcePath.isEmpty else { throw ModelRepositoryError(.invalidArgument, "the model path is empty") }
        return try mutation.withLock { _ throws(ModelRepositoryError) -> LoadedModel in
            guard FileStamp.of(sourcePath) != nil else {
                throw ModelRepositoryError(.notFound, "no model file \(sourcePath)")
            }
            // Validate the source first: a bad file never enters the repository.
            // Failures are counted only for models that exist, so a client naming
            // new models cannot create metric series without end.
            let known = state.withLock { $0.versions[name] != nil }
            do {
                let model = try Model(contentsOf: sourcePath)
                _ = try ModelValidator.check(model, path: sourcePath)
            } catch let error as ModelRepositoryError {
                if known { metrics.loadFailure(name) }
                throw error
            } catch let error as KeelError {
                if known { metrics.loadFailure(name) }
                throw ModelRepositoryError.invalidModel(path: sourcePath, reason: Self.reason(error, path: sourcePath))
            } catch {
                if known { metrics.loadFailure(name) }
                throw ModelRepositoryError.invalidModel(path: sourcePath, reason: "\(error)")
            }
            let onDisk = versionsOnDisk(name: name).keys.max() ?? 0
            let loaded = state.withLock { $0.versions[name]?.keys.max() } ?? 0
            let (version, overflow) = max(onDisk, loaded).addingReportingOverflow(1)
            guard !overflow else {
                throw ModelRepositoryError(.invalidArgument, "model '\(name)' already has the largest possible version")
            }
            let directory = root.appendingPathComponent(name).appendingPathComponent(String(version))
            let destination = directory.appendingPathComponent(Self.modelFileName)
            let temporary = directory.appendingPathComponent(".\(Self.modelFileName).incoming")
            do {
                let fm = FileManager.default
                try fm.createDirectory(at: directory, withIntermediateDirectories: true)
                if fm.fileExists(atPath: temporary.path) { try fm.removeItem(at: temporary) }
                try fm.copyItem(at: URL(fileURLWithPath: sourcePath), to: temporary)
                // rename(2) is atomic: the poller never sees a partial model.onnx.
                guard rename(temporary.path, destination.path) == 0 else {
                    throw ModelRepositoryError(.io, "cannot move \(temporary.path) to \(destination.path): "
                        + String(cString: strerror(errno)))
                }
            } catch let error as ModelRepositoryError {
                throw error
            } catch {
                throw ModelRepositoryError(.io, "cannot copy \(sourcePath) to \(destination.path): \(error)")
            }
            logger.info("copied model file into the repository",
                        metadata: ["model": "\(name)", "version": "\(version)", "from": "\(sourcePath)"])
            return try loadAndInstall(name: name, version: version, path: destination.path)
        }
    }

    /// Unloads one version (`version` > 0) or every version (`version` 0) of
    /// `name`; returns how many were unloaded. The files stay on disk and the
    /// poller does not load the unloaded versions again. Requests already
    /// running on an unloaded version finish on it.
    @discardableResult
    public func unload(name: String, version: Int64 = 0) throws(ModelRepositoryError) -> Int {
        guard version >= 0 else {
            throw ModelRepositoryError(.invalidArgument, "model version must not be negative, got \(version)")
        }
        return try mutation.withLock { _ throws(ModelRepositoryError) -> Int in
            let (count, newServing) = try state.withLock { s throws(ModelRepositoryError) -> (Int, LoadedModel?) in
                guard let loaded = s.versions[name], !loaded.isEmpty else {
                    throw ModelRepositoryError(.notFound, "no model '\(name)' is loaded")
                }
                let targets: [Int64]
                if version == 0 {
                    targets = Array(loaded.keys)
                } else {
                    guard loaded[version] != nil else {
                        throw ModelRepositoryError(.notFound, "model '\(name)' has no loaded version \(version) "
                            + "(loaded: \(loaded.keys.sorted().map(String.init).joined(separator: ", ")))")
                    }
                    targets = [version]
                }
                for v in targets {
                    s.versions[name]?[v] = nil
                    s.suppressed[name, default: []].insert(v)
                }
                if s.versions[name]?.isEmpty ?? true { s.versions[name] = nil }
                let next = s.versions[name].flatMap { $0.max { $0.key < $1.key }?.value }
                s.serving[name] = next
                return (targets.count, next)
            }
            metrics.setVersion(name, newServing?.version ?? 0)
            logger.info("unloaded model",
                        metadata: ["model": "\(name)", "versions": "\(version == 0 ? "all" : String(version))",
                                   "serving": "\(newServing.map { String($0.version) } ?? "none")"])
            return count
        }
    }

    // MARK: - Hot swap

    /// Looks once for new versions and replaced files and loads them (see the
    /// type's documentation).
    public func pollOnce() {
        scan(initial: false)
    }

    /// Polls every `interval` until the calling task is cancelled.
    public func watch(every interval: Duration) async {
        while !Task.isCancelled {
            do {
                try await Task.sleep(for: interval)
            } catch {
                return
            }
            pollOnce()
        }
    }

    // MARK: - Internals

    private func modelPath(name: String, version: Int64) -> String {
        root.appendingPathComponent(name).appendingPathComponent(String(version))
            .appendingPathComponent(Self.modelFileName).path
    }

    /// The core's error as a reason: `parse error: ...`, without the path the
    /// core puts in front (the repository's message starts with it).
    static func reason(_ error: KeelError, path: String) -> String {
        let prefix = path + ": "
        let detail = error.message.hasPrefix(prefix) ? String(error.message.dropFirst(prefix.count)) : error.message
        return "\(error.code.name): \(detail)"
    }

    /// Names are single path components of letters, digits, `_`, `-` and `.`
    /// (not `.` or `..`): they come from the network.
    static func checkName(_ name: String) throws(ModelRepositoryError) {
        guard !name.isEmpty else { throw ModelRepositoryError(.invalidArgument, "the model name is empty") }
        let allowed = name.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a)
                || c == 0x5f || c == 0x2d || c == 0x2e
        }
        guard allowed, name != ".", name != "..", name.utf8.count <= 128 else {
            throw ModelRepositoryError(.invalidArgument,
                                       "invalid model name '\(name)': use letters, digits, '_', '-' and '.'")
        }
    }

    /// Model names: subdirectories of the root with a valid name.
    private func modelNamesOnDisk() -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []
        return entries.filter { entry in
            guard (try? Self.checkName(entry)) != nil, !entry.hasPrefix(".") else { return false }
            var isDirectory: ObjCBool = false
            return FileManager.default.fileExists(atPath: root.appendingPathComponent(entry).path,
                                                  isDirectory: &isDirectory) && isDirectory.boolValue
        }.sorted()
    }

    /// Version directories of `name` that hold a model file, by version.
    private func versionsOnDisk(name: String) -> [Int64: String] {
        let directory = root.appendingPathComponent(name)
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        var result: [Int64: String] = [:]
        for entry in entries {
            guard !entry.isEmpty, entry.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                  let version = Int64(entry), version > 0
            else { continue }
            let path = directory.appendingPathComponent(entry).appendingPathComponent(Self.modelFileName).path
            if FileStamp.of(path) != nil { result[version] = path }
        }
        return result
    }

    private func scan(initial: Bool) {
        mutation.withLock { _ in
            for name in modelNamesOnDisk() {
                let onDisk = versionsOnDisk(name: name)
                let (suppressed, loaded, servingVersion, stamps) = state.withLock { s in
                    (s.suppressed[name] ?? [], s.versions[name] ?? [:], s.serving[name]?.version, s.stamps)
                }
                // 1. Replaced files of loaded versions.
                for (version, current) in loaded.sorted(by: { $0.key < $1.key }) {
                    guard let path = onDisk[version], let stamp = FileStamp.of(path), stamp != stamps[current.path],
                          !alreadyFailed(path: path, stamp: stamp)
                    else { continue }
                    _ = try? loadAndInstall(name: name, version: version, path: path,
                                            replacing: current)
                }
                // 2. New versions above the serving one, highest first, until one loads.
                let floor = servingVersion ?? 0
                let candidates = onDisk.keys.filter { $0 > floor && !suppressed.contains($0) && loaded[$0] == nil }
                for version in candidates.sorted(by: >) {
                    guard let path = onDisk[version] else { continue }
                    if let stamp = FileStamp.of(path), alreadyFailed(path: path, stamp: stamp) { continue }
                    if (try? loadAndInstall(name: name, version: version, path: path)) != nil {
                        break
                    }
                }
            }
            if initial {
                let serving = state.withLock { $0.serving.count }
                logger.info("model repository loaded", metadata: ["root": "\(root.path)", "serving": "\(serving)"])
            }
        }
    }

    private func alreadyFailed(path: String, stamp: FileStamp) -> Bool {
        state.withLock { $0.failedFiles[path]?.stamp == stamp }
    }

    /// Loads, validates and installs one file. Call with `mutation` held.
    /// When `replacing` is given and the new bytes hash the same, only the
    /// remembered stamp changes (no swap).
    @discardableResult
    private func loadAndInstall(name: String, version: Int64, path: String,
                                replacing current: LoadedModel? = nil) throws(ModelRepositoryError) -> LoadedModel
    {
        // Stamp first: if the file changes while we read it, the next poll
        // sees a stamp different from the one recorded and looks again.
        let stamp = FileStamp.of(path)
        let loaded: LoadedModel
        do throws(ModelRepositoryError) {
            let model: Model
            do throws(KeelError) {
                model = try Model(contentsOf: path)
            } catch {
                throw ModelRepositoryError.invalidModel(path: path, reason: Self.reason(error, path: path))
            }
            if let current, model.sha256 == current.sha256 {
                // Same bytes (touched or copied over identically): keep the
                // running instance, remember the new identity.
                state.withLock { s in
                    s.stamps[path] = stamp
                    s.failedFiles[path] = nil
                }
                return current
            }
            let checked = try ModelValidator.check(model, path: path)
            loaded = LoadedModel(name: name, version: version, path: path,
                                 model: model, kind: checked.kind, featureNames: checked.features,
                                 warmSession: checked.session, maxIdleSessions: maxIdleSessions)
        } catch {
            let failure = ModelLoadFailure(name: name, version: version, path: path, reason: error.message, at: Date())
            state.withLock { s in
                s.failedFiles[path] = (stamp, failure)
                s.lastError[name] = failure
            }
            metrics.loadFailure(name)
            logger.error("model failed validation; the running version stays in place",
                         metadata: ["model": "\(name)", "version": "\(version)", "reason": "\(error.message)"])
            throw error
        }

        let (previous, pruned) = state.withLock { s -> (LoadedModel?, [LoadedModel]) in
            let previous = s.serving[name]
            s.versions[name, default: [:]][version] = loaded
            s.stamps[path] = stamp
            s.failedFiles[path] = nil
            s.lastError[name] = nil
            s.suppressed[name]?.remove(version)
            var pruned: [LoadedModel] = []
            if version >= previous?.version ?? 0 {
                s.serving[name] = loaded
                // Retention: keep the highest `retainedVersions` versions.
                if let previous, version > previous.version, var all = s.versions[name] {
                    let keep = Set(all.keys.sorted(by: >).prefix(retainedVersions))
                    for v in all.keys where !keep.contains(v) {
                        if let gone = all.removeValue(forKey: v) { pruned.append(gone) }
                    }
                    s.versions[name] = all
                }
            }
            return (previous, pruned)
        }
        let nowServing = serving(name: name) === loaded
        if nowServing {
            metrics.setVersion(name, version)
            if previous != nil { metrics.swapped(name) }
        }
        logger.info(previous == nil ? "model loaded" : "model swapped",
                    metadata: ["model": "\(name)", "version": "\(version)", "sha256": "\(loaded.sha256)",
                               "serving": "\(nowServing)", "kernels": "\(loaded.model.property("kernels") ?? "-")",
                               "previous": "\(previous.map { "v\($0.version) \($0.sha256.prefix(12))" } ?? "none")",
                               "unloaded": "\(pruned.map { "v\($0.version)" }.joined(separator: ","))"])
        return loaded
    }

}

/// The repository's metrics: `keel_model_swaps_total{model}`,
/// `keel_model_load_failures_total{model}`, `keel_model_version{model}`.
/// Created per model name on first use (admin path only).
final class RepositoryMetrics: Sendable {
    private let factory: any MetricsFactory
    private struct PerModel {
        let swaps: Counter
        let failures: Counter
        let version: Gauge
    }
    private let perModel = Mutex<[String: PerModel]>([:])

    init(factory: any MetricsFactory) { self.factory = factory }

    private func metrics(_ name: String) -> PerModel {
        perModel.withLock { all in
            if let m = all[name] { return m }
            let dims = [("model", name)]
            let m = PerModel(
                swaps: Counter(label: "keel_model_swaps_total", dimensions: dims, factory: factory),
                failures: Counter(label: "keel_model_load_failures_total", dimensions: dims, factory: factory),
                version: Gauge(label: "keel_model_version", dimensions: dims, factory: factory))
            all[name] = m
            return m
        }
    }

    func swapped(_ name: String) { metrics(name).swaps.increment() }
    func loadFailure(_ name: String) { metrics(name).failures.increment() }
    func setVersion(_ name: String, _ version: Int64) { metrics(name).version.record(version) }
}
