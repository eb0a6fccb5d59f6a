import KeelInference
import KeelPortfolio
import KeelTestSupport
import CoreMetrics
import Foundation
import Synchronization
import Testing

/// Model files for the serving tests.
enum Fixtures {
    /// A linear policy: features [assets, n] -> Gemm(1, transB) -> score [assets, 1];
    /// score = sum_j weights[j] * x[j] + bias. Different weights give different bytes.
    static func policy(weights: [Float] = [1, -0.5, 0.25], bias: Float = 0.1, kind: String? = "policy",
                       featureNames: [String]? = nil, fixedRows: Int? = nil, op: String? = nil) -> [UInt8]
    {
        // A policy without explicit feature names takes Keel's feature set:
        // the given weights apply to its first features, the rest weigh 0.
        let weights = kind == "policy" && featureNames == nil && weights.count < FeatureSet.count
            ? weights + [Float](repeating: 0, count: FeatureSet.count - weights.count) : weights
        let n = weights.count
        var m = ONNXModel()
        let rows: ONNXModel.Dim = fixedRows.map { .value($0) } ?? .param("assets")
        m.inputs = [.init(name: "features", dims: [rows, .value(n)])]
        m.outputs = [.init(name: "score", dims: [rows, .value(1)])]
        m.initializers = [
            .init(name: "w", dims: [1, Int64(n)], values: weights, raw: true),
            .init(name: "b", dims: [1], values: [bias]),
        ]
        if let op {
            // features -> op (e.g. Log, non-finite on negative inputs) -> Gemm
            m.nodes = [
                .init(opType: op, inputs: ["features"], outputs: ["pre"], name: "pre"),
                .init(opType: "Gemm", inputs: ["pre", "w", "b"], outputs: ["score"], name: "head",
                      attributes: [.int("transB", 1)]),
            ]
        } else {
            m.nodes = [
                .init(opType: "Gemm", inputs: ["features", "w", "b"], outputs: ["score"], name: "head",
                      attributes: [.int("transB", 1)]),
            ]
        }
        var metadata: [(String, String)] = []
        if let kind { metadata.append(("keel.kind", kind)) }
        let names = featureNames
            ?? (kind == "policy" && n == FeatureSet.count ? FeatureSet.names : (0..<n).map { "f\($0)" })
        metadata.append(("keel.features", names.joined(separator: ",")))
        m.metadata = metadata
        return m.encode()
    }

    /// The reference score of the linear policy.
    static func score(_ x: ArraySlice<Float>, weights: [Float], bias: Float) -> Double {
        zip(x, weights).reduce(Double(bias)) { $0 + Double($1.0) * Double($1.1) }
    }

    /// The shipped 12-feature policy, if present.
    static let shippedPolicy: String = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("models/policy/1/model.onnx").path
}

/// A scratch model repository in a temporary directory, removed on deinit.
final class ScratchRepository {
    let root: URL

    init() throws {
        root = FileManager.default.temporaryDirectory
            .appendingPathComponent("keel-serving-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
    }

    deinit {
        try? FileManager.default.removeItem(at: root)
        for dir in externals { try? FileManager.default.removeItem(at: dir) }
    }

    func path(_ name: String, _ version: Int) -> String {
        root.appendingPathComponent(name).appendingPathComponent(String(version))
            .appendingPathComponent("model.onnx").path
    }

    /// Writes a model file atomically (temporary file + rename), as a deployment would.
    @discardableResult
    func write(_ name: String, _ version: Int, _ bytes: [UInt8]) throws -> String {
        let file = URL(fileURLWithPath: path(name, version))
        try FileManager.default.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(bytes).write(to: file, options: .atomic)
        return file.path
    }

    /// Writes bytes in place (same inode), like a slow copy in progress.
    func writeInPlace(_ name: String, _ version: Int, _ bytes: [UInt8]) throws {
        let file = URL(fileURLWithPath: path(name, version))
        try FileManager.default.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
        if !FileManager.default.fileExists(atPath: file.path) {
            _ = FileManager.default.createFile(atPath: file.path, contents: nil)
        }
        let handle = try FileHandle(forWritingTo: file)
        try handle.truncate(atOffset: 0)
        try handle.write(contentsOf: Data(bytes))
        try handle.close()
    }

    func appendInPlace(_ name: String, _ version: Int, _ bytes: [UInt8]) throws {
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path(name, version)))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(bytes))
        try handle.close()
    }

    /// A file outside the repository.
    func external(_ fileName: String, _ bytes: [UInt8]) throws -> String {
        let dir = root.appendingPathComponent("..").appendingPathComponent("keel-serving-src-\(UUID().uuidString)")
            .standardizedFileURL
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let file = dir.appendingPathComponent(fileName)
        try Data(bytes).write(to: file)
        externals.append(dir)
        return file.path
    }

    private var externals: [URL] = []
}

// MARK: - Waiting with bounds

struct TimedOut: Error, CustomStringConvertible {
    let what: String
    var description: String { "timed out: \(what)" }
}

/// Runs `body`, failing with `TimedOut` if it takes longer than `limit`.
func withTimeout<T: Sendable>(_ limit: Duration = .seconds(5), _ what: String = "operation",
                              _ body: @escaping @Sendable () async throws -> T) async throws -> T
{
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try? await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else { throw TimedOut(what: what) }
        return value
    }
}

/// Polls `condition` every millisecond for up to `limit`.
func eventually(_ limit: Duration = .seconds(5), _ what: String = "condition",
                _ condition: @Sendable () -> Bool) async throws
{
    let end = ContinuousClock.now + limit
    while !condition() {
        if ContinuousClock.now > end { throw TimedOut(what: what) }
        try await Task.sleep(for: .milliseconds(1))
    }
}

/// A one-shot signal tasks can wait for.
final class Latch: Sendable {
    private let state = Mutex<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func open() {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.open = true
            defer { s.waiters = [] }
            return s.waiters
        }
        for w in waiters { w.resume() }
    }

    func wait() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let ready = state.withLock { s -> Bool in
                if s.open { return true }
                s.waiters.append(c)
                return false
            }
            if ready { c.resume() }
        }
    }
}

// MARK: - Metrics

/// A metrics factory that records values in memory, injected per test (no global bootstrap).
final class TestMetrics: MetricsFactory, Sendable {
    final class Handler: CounterHandler, FloatingPointCounterHandler, RecorderHandler, MeterHandler, TimerHandler,
        Sendable
    {
        let value = Mutex<Double>(0)
        let count = Mutex<Int>(0)
        func increment(by amount: Int64) { value.withLock { $0 += Double(amount) }; count.withLock { $0 += 1 } }
        func increment(by amount: Double) { value.withLock { $0 += amount }; count.withLock { $0 += 1 } }
        func decrement(by amount: Double) { value.withLock { $0 -= amount } }
        func reset() { value.withLock { $0 = 0 } }
        func record(_ v: Int64) { value.withLock { $0 = Double(v) }; count.withLock { $0 += 1 } }
        func record(_ v: Double) { value.withLock { $0 = v }; count.withLock { $0 += 1 } }
        func set(_ v: Int64) { record(v) }
        func set(_ v: Double) { record(v) }
        func recordNanoseconds(_ duration: Int64) { record(duration) }
        func preferDisplayUnit(_ unit: TimeUnit) {}
    }

    private let handlers = Mutex<[String: Handler]>([:])

    static func key(_ label: String, _ dimensions: [(String, String)]) -> String {
        label + "{" + dimensions.sorted { $0.0 < $1.0 }.map { "\($0.0)=\($0.1)" }.joined(separator: ",") + "}"
    }

    private func handler(_ label: String, _ dimensions: [(String, String)]) -> Handler {
        handlers.withLock { all in
            let key = Self.key(label, dimensions)
            if let h = all[key] { return h }
            let h = Handler()
            all[key] = h
            return h
        }
    }

    /// The value of a counter (sum) or gauge (last value), 0 when never created.
    func value(_ label: String, _ dimensions: [(String, String)]) -> Double {
        handlers.withLock { $0[Self.key(label, dimensions)] }?.value.withLock { $0 } ?? 0
    }

    /// How many values a timer or recorder received.
    func samples(_ label: String, _ dimensions: [(String, String)]) -> Int {
        handlers.withLock { $0[Self.key(label, dimensions)] }?.count.withLock { $0 } ?? 0
    }

    func makeCounter(label: String, dimensions: [(String, String)]) -> CounterHandler { handler(label, dimensions) }
    func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> FloatingPointCounterHandler {
        handler(label, dimensions)
    }
    func makeMeter(label: String, dimensions: [(String, String)]) -> MeterHandler { handler(label, dimensions) }
    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> RecorderHandler {
        handler(label, dimensions)
    }
    func makeTimer(label: String, dimensions: [(String, String)]) -> TimerHandler { handler(label, dimensions) }
    func destroyCounter(_ handler: CounterHandler) {}
    func destroyMeter(_ handler: MeterHandler) {}
    func destroyFloatingPointCounter(_ handler: FloatingPointCounterHandler) {}
    func destroyRecorder(_ handler: RecorderHandler) {}
    func destroyTimer(_ handler: TimerHandler) {}
}

/// A lock-protected value that closures and tasks can share (a `Mutex` is not copyable, so it cannot be captured).
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    @discardableResult
    func withLock<R: Sendable>(_ body: (inout Value) -> R) -> R { mutex.withLock { body(&$0) } }
    var value: Value { mutex.withLock { $0 } }
}
