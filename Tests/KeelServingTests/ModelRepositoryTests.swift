import Foundation
import KeelInference
import KeelPortfolio
import Testing

import KeelServing

@Suite("Model repository")
struct ModelRepositoryTests {
    static let v1Weights: [Float] = [1, -0.5, 0.25]
    static let v2Weights: [Float] = [2, 0.5, -1]

    /// The score of one row; `x` gives the first features, the rest are 0.
    static func score(_ model: LoadedModel, _ x: [Float]) throws -> Float {
        let row = x + [Float](repeating: 0, count: max(0, model.featureCount - x.count))
        return try model.withSession { try $0.run(features: row, rows: 1)[0].values[0] }
    }

    @Test("at start the latest version of every model loads; other entries are ignored")
    func latestVersionLoads() throws {
        let scratch = try ScratchRepository()
        try scratch.write("policy", 1, Fixtures.policy(weights: Self.v1Weights))
        try scratch.write("policy", 2, Fixtures.policy(weights: Self.v2Weights))
        try scratch.write("other", 3, Fixtures.policy(weights: [1, 1]))
        // Things that are not versions.
        let policyDir = scratch.root.appendingPathComponent("policy")
        try Data("ticker,ret_1d\nAAA,0.1\n".utf8).write(to: policyDir.appendingPathComponent("sample.csv"))
        try FileManager.default.createDirectory(at: policyDir.appendingPathComponent("notes"),
                                                withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: policyDir.appendingPathComponent("0"),
                                                withIntermediateDirectories: true)
        try Data("x".utf8).write(to: scratch.root.appendingPathComponent("README"))

        let repo = ModelRepository(root: scratch.root, metricsFactory: TestMetrics())
        let serving = repo.loadAll()
        #expect(serving.map(\.name) == ["other", "policy"])
        let policy = try #require(repo.serving(name: "policy"))
        #expect(policy.version == 2)
        #expect(policy.kind == .policy)
        #expect(policy.featureNames == FeatureSet.names)
        #expect(policy.sha256.count == 64)
        #expect(policy.path == scratch.path("policy", 2))
        #expect(repo.serving(name: "other")?.version == 3)
        #expect(repo.list().map { "\($0.model.name)/\($0.model.version)/\($0.isServing)" }
            == ["other/3/true", "policy/2/true"])
        #expect(repo.failures().isEmpty)
        // The loaded model runs: score = 2*1 + 0.5*2 - 1*3 + 0.1
        #expect(abs(try Self.score(policy, [1, 2, 3]) - 0.1) < 1e-5)
    }

    @Test("at start a bad latest version falls back to the newest good one")
    func startupFallback() throws {
        let scratch = try ScratchRepository()
        try scratch.write("policy", 1, Fixtures.policy(weights: Self.v1Weights))
        try scratch.write("policy", 2, Fixtures.policy(weights: Self.v2Weights))
        try scratch.write("policy", 3, Array(Fixtures.policy(weights: [3, 3, 3]).prefix(50)))
        let repo = ModelRepository(root: scratch.root, metricsFactory: TestMetrics())
        repo.loadAll()
        #expect(repo.serving(name: "policy")?.version == 2)
        #expect(repo.failures().map(\.version) == [3])
        // Loading a loaded, unchanged version again is a no-op.
        let again = try repo.load(name: "policy", version: 2)
        #expect(again === repo.serving(name: "policy"))
    }

    @Test("the shipped 12-feature policy validates and serves")
    func shippedPolicy() throws {
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: Fixtures.shippedPolicy)))
        let scratch = try ScratchRepository()
        try scratch.write("policy", 1, bytes)
        let repo = ModelRepository(root: scratch.root, metricsFactory: TestMetrics())
        repo.loadAll()
        let policy = try #require(repo.serving(name: "policy"))
        #expect(policy.featureCount == 12)
        #expect(policy.metadata["keel.kind"] == "policy")
    }

    @Test("a new version directory is picked up by pollOnce and counted as a swap")
    func newVersionPickedUp() throws {
        let scratch = try ScratchRepository()
        try scratch.write("policy", 1, Fixtures.policy(weights: Self.v1Weights))
        let metrics = TestMetrics()
        let repo = ModelRepository(root: scratch.root, metricsFactory: metrics)
        repo.loadAll()
        #expect(repo.serving(name: "policy")?.version == 1)
        #expect(metrics.value("keel_model_version", [("model", "policy")]) == 1)

        repo.pollOnce()  // nothing changed
        #expect(metrics.value("keel_model_swaps_total", [("model", "policy")]) == 0)

        try scratch.write("policy", 2, Fixtures.policy(weights: Self.v2Weights))
        repo.pollOnce()
        #expect(repo.serving(name: "policy")?.version == 2)
        #expect(metrics.value("keel_model_swaps_total", [("model", "policy")]) == 1)
        #expect(metrics.value("keel_model_version", [("model", "policy")]) == 2)
        // Both versions stay loaded (retention 2); v2 serves.
        #expect(repo.list().map { "\($0.model.version)/\($0.isServing)" } == ["1/false", "2/true"])

        // A third version: retention keeps the two highest.
        try scratch.write("policy", 3, Fixtures.policy(weights: [3, 3, 3]))
        repo.pollOnce()
        #expect(repo.list().map(\.model.version) == [2, 3])
    }

    @Test("a replaced model file is picked up; identical bytes do not swap")
    func replacedFilePickedUp() throws {
        let scratch = try ScratchRepository()
        try scratch.write("policy", 1, Fixtures.policy(weights: Self.v1Weights))
        let metrics = TestMetrics()
        let repo = ModelRepository(root: scratch.root, metricsFactory: metrics)
        repo.loadAll()
        let before = try #require(repo.serving(name: "policy"))

        // Same bytes rewritten (new inode): no swap.
        try scratch.write("policy", 1, Fixtures.policy(weights: Self.v1Weights))
        repo.pollOnce()
        #expect(repo.serving(name: "policy") === before)
        #expect(metrics.value("keel_model_swaps_total", [("model", "policy")]) == 0)

        try scratch.write("policy", 1, Fixtures.policy(weights: Self.v2Weights))
        repo.pollOnce()
        let after = try #require(repo.serving(name: "policy"))
        #expect(after.version == 1)
        #expect(after.sha256 != before.sha256)
        #expect(abs(try Self.score(after, [1, 2, 3]) - 0.1) < 1e-5)
        #expect(metrics.value("keel_model_swaps_total", [("model", "policy")]) == 1)
    }

    @Test("a truncated file never serves, is reported, is not retried, and the running model stays")
    func corruptFile() throws {
        let scratch = try ScratchRepository()
        try scratch.write("policy", 1, Fixtures.policy(weights: Self.v1Weights))
        let metrics = TestMetrics()
        let repo = ModelRepository(root: scratch.root, metricsFactory: metrics)
        repo.loadAll()
        let good = try #require(repo.serving(name: "policy"))

        let full = Fixtures.policy(weights: Self.v2Weights)
        try scratch.write("policy", 2, Array(full.prefix(full.count / 2)))
        repo.pollOnce()
        #expect(repo.serving(name: "policy") === good)
        let failure = try #require(repo.lastError(name: "policy"))
        #expect(failure.version == 2)
        #expect(failure.reason.contains(scratch.path("policy", 2)))
        #expect(failure.reason.contains("parse error"))
        #expect(repo.failures().count == 1)
        #expect(repo.list().first?.lastError == failure)
        #expect(metrics.value("keel_model_load_failures_total", [("model", "policy")]) == 1)

        // The same bad file is not retried on the next polls.
        repo.pollOnce()
        repo.pollOnce()
        #expect(metrics.value("keel_model_load_failures_total", [("model", "policy")]) == 1)
        #expect(repo.serving(name: "policy") === good)

        // A corrupt replacement of the serving file also leaves it running.
        try scratch.write("policy", 1, Array(Fixtures.policy(weights: [9, 9, 9]).prefix(40)))
        repo.pollOnce()
        #expect(repo.serving(name: "policy") === good)
        #expect(metrics.value("keel_model_load_failures_total", [("model", "policy")]) == 2)

        // Fixed file: loads, the error is cleared.
        try scratch.write("policy", 2, full)
        repo.pollOnce()
        #expect(repo.serving(name: "policy")?.version == 2)
        #expect(repo.lastError(name: "policy") == nil)
    }

    @Test("a half-written file fails on one poll and passes on the next")
    func halfWrittenFile() throws {
        let scratch = try ScratchRepository()
        try scratch.write("policy", 1, Fixtures.policy(weights: Self.v1Weights))
        let repo = ModelRepository(root: scratch.root, metricsFactory: TestMetrics())
        repo.loadAll()

        let full = Fixtures.policy(weights: Self.v2Weights)
        let cut = full.count * 2 / 3
        try scratch.writeInPlace("policy", 2, Array(full[..<cut]))
        repo.pollOnce()
        #expect(repo.serving(name: "policy")?.version == 1)
        #expect(repo.lastError(name: "policy") != nil)

        try scratch.appendInPlace("policy", 2, Array(full[cut...]))
        repo.pollOnce()
        #expect(repo.serving(name: "policy")?.version == 2)
        #expect(repo.lastError(name: "policy") == nil)
    }

    @Test("models that break the serving contract are rejected with the file and the reason",
          arguments: [
              ("features", Fixtures.policy(featureNames: ["a", "b"]), "keel.features lists 2 features"),
              ("feature set",
               Fixtures.policy(weights: [Float](repeating: 1, count: 12),
                               featureNames: ["ret_1d"] + Array(FeatureSet.names.dropFirst())),
               "a policy must take Keel's feature set: keel.features[0] is 'ret_1d' but Keel's feature 0 is 'ret_1d_z'"),
              ("no kind", Fixtures.policy(kind: nil), "keel.kind is missing"),
              ("bad kind", Fixtures.policy(kind: "oracle"), "keel.kind is 'oracle'"),
              ("fixed rows", Fixtures.policy(fixedRows: 3), "must be dynamic"),
              ("non-finite", Fixtures.policy(op: "Log"), "non-finite"),
              ("garbage", [UInt8](repeating: 0xff, count: 64), "parse error"),
          ])
    func contractViolations(label: String, bytes: [UInt8], reason: String) throws {
        let scratch = try ScratchRepository()
        try scratch.write("policy", 1, bytes)
        let repo = ModelRepository(root: scratch.root, metricsFactory: TestMetrics())
        repo.loadAll()
        #expect(repo.serving(name: "policy") == nil, "\(label)")
        #expect(repo.lastError(name: "policy")?.reason.contains(reason) == true,
                "\(label): \(repo.lastError(name: "policy")?.reason ?? "no error")")

        #expect {
            try repo.load(name: "policy", version: 1)
        } throws: { error in
            guard let error = error as? ModelRepositoryError else { return false }
            return error.kind == .invalidModel && error.message.contains(scratch.path("policy", 1))
                && error.message.contains(reason)
        }
    }

    @Test("explicit load and unload; unloaded versions are not reloaded by the poller")
    func loadAndUnload() throws {
        let scratch = try ScratchRepository()
        try scratch.write("policy", 1, Fixtures.policy(weights: Self.v1Weights))
        try scratch.write("policy", 2, Fixtures.policy(weights: Self.v2Weights))
        let repo = ModelRepository(root: scratch.root, metricsFactory: TestMetrics())
        repo.loadAll()
        #expect(repo.list().map(\.model.version) == [2])

        let v1 = try repo.load(name: "policy", version: 1)
        #expect(v1.version == 1)
        #expect(repo.serving(name: "policy")?.version == 2)  // the highest serves

        #expect(try repo.unload(name: "policy", version: 2) == 1)
        #expect(repo.serving(name: "policy")?.version == 1)  // rolled back
        repo.pollOnce()
        #expect(repo.serving(name: "policy")?.version == 1)  // v2 stays unloaded

        #expect(throws: ModelRepositoryError.self) { try repo.unload(name: "policy", version: 7) }
        #expect(throws: ModelRepositoryError.self) { try repo.unload(name: "nope") }
        #expect(throws: ModelRepositoryError.self) { try repo.load(name: "policy", version: 9) }
        #expect(throws: ModelRepositoryError.self) { try repo.load(name: "../etc", version: 1) }

        #expect(try repo.unload(name: "policy", version: 0) == 1)
        #expect(repo.serving(name: "policy") == nil)
        #expect(repo.list().isEmpty)
        repo.pollOnce()
        #expect(repo.serving(name: "policy") == nil)

        // Explicit load brings it back.
        try repo.load(name: "policy", version: 2)
        #expect(repo.serving(name: "policy")?.version == 2)
    }

    @Test("load from a path copies the file in as the next version; a bad file is not copied")
    func loadFromPath() throws {
        let scratch = try ScratchRepository()
        try scratch.write("policy", 1, Fixtures.policy(weights: Self.v1Weights))
        try scratch.write("policy", 4, Fixtures.policy(weights: Self.v2Weights))
        let repo = ModelRepository(root: scratch.root, metricsFactory: TestMetrics())
        repo.loadAll()

        let source = try scratch.external("candidate.onnx", Fixtures.policy(weights: [5, 5, 5]))
        let loaded = try repo.load(name: "policy", fromPath: source)
        #expect(loaded.version == 5)
        #expect(loaded.path == scratch.path("policy", 5))
        #expect(FileManager.default.contentsEqual(atPath: source, andPath: scratch.path("policy", 5)))
        #expect(repo.serving(name: "policy") === loaded)

        // A new model name works too.
        let other = try repo.load(name: "fresh", fromPath: source)
        #expect(other.version == 1)

        let bad = try scratch.external("bad.onnx", Fixtures.policy(featureNames: ["a"]))
        #expect {
            try repo.load(name: "policy", fromPath: bad)
        } throws: { error in
            (error as? ModelRepositoryError)?.kind == .invalidModel
        }
        #expect(!FileManager.default.fileExists(atPath: scratch.root.appendingPathComponent("policy/6").path))
        #expect(repo.serving(name: "policy") === loaded)
        #expect(throws: ModelRepositoryError.self) { try repo.load(name: "policy", fromPath: "/no/such/file.onnx") }
    }

    @Test("a request holding the old model finishes on it across a swap")
    func inFlightKeepsOldModel() async throws {
        let scratch = try ScratchRepository()
        try scratch.write("policy", 1, Fixtures.policy(weights: Self.v1Weights, bias: 0))
        let repo = ModelRepository(root: scratch.root, metricsFactory: TestMetrics())
        repo.loadAll()

        let inFlight = Latch()
        let swapped = Latch()
        let task = Task { () throws -> (Int64, Float) in
            // The request looked the model up before the swap ...
            guard let model = repo.serving(name: "policy") else { throw TimedOut(what: "no model") }
            inFlight.open()
            await swapped.wait()
            // ... and runs on it after the swap.
            return (model.version, try Self.score(model, [1, 1, 1]))
        }
        try await withTimeout { await inFlight.wait() }
        try scratch.write("policy", 2, Fixtures.policy(weights: Self.v2Weights, bias: 0))
        repo.pollOnce()
        #expect(repo.serving(name: "policy")?.version == 2)
        swapped.open()
        let (version, score) = try await withTimeout { try await task.value }
        #expect(version == 1)
        #expect(abs(score - 0.75) < 1e-6)  // v1: 1 - 0.5 + 0.25
        let now = try #require(repo.serving(name: "policy"))
        #expect(abs(try Self.score(now, [1, 1, 1]) - 1.5) < 1e-6)  // v2: 2 + 0.5 - 1
    }

    @Test("the session pool reuses sessions and survives concurrent use")
    func sessionPool() async throws {
        let scratch = try ScratchRepository()
        try scratch.write("policy", 1, Fixtures.policy(weights: Self.v1Weights, bias: 0))
        let repo = ModelRepository(root: scratch.root, maxIdleSessions: 4, metricsFactory: TestMetrics())
        repo.loadAll()
        let model = try #require(repo.serving(name: "policy"))
        #expect(model.idleSessionCount == 1)  // the validation session, kept warm
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<32 {
                group.addTask {
                    let x: [Float] = [Float(i), 0, 0]
                    let y = try Self.score(model, x)
                    #expect(y == Float(i))
                }
            }
            try await group.waitForAll()
        }
        #expect(model.idleSessionCount >= 1 && model.idleSessionCount <= 4)
    }

    @Test("watch polls until cancelled")
    func watch() async throws {
        let scratch = try ScratchRepository()
        try scratch.write("policy", 1, Fixtures.policy(weights: Self.v1Weights))
        let repo = ModelRepository(root: scratch.root, metricsFactory: TestMetrics())
        repo.loadAll()
        let watcher = Task { await repo.watch(every: .milliseconds(10)) }
        try scratch.write("policy", 2, Fixtures.policy(weights: Self.v2Weights))
        try await eventually(.seconds(5), "v2 serving") { repo.serving(name: "policy")?.version == 2 }
        watcher.cancel()
        try await withTimeout(.seconds(5), "watch returns after cancellation") { await watcher.value }
    }
}
