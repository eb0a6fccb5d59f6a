import KeelTestSupport
import Foundation
import KeelInference
import Testing

/// A keel-linear model (docs/PLUGINS.md): 3 features, 2 outputs.
///   y1 = 1*a + 2*b + 3*c + 0.5
///   y2 = -1*a + 0.5*b + 0*c - 1
let linearModelText = """
    keel-linear 1
    # an example linear scorer
    features: a, b,c
    outputs: y1,y2
    weights:
    1 2 3
    -1 0.5 0

    bias: 0.5 -1
    meta keel.kind linear-policy
    meta note two  words

    """

@Suite("Plugin backends")
struct PluginTests {
    let backend: Backend

    init() throws {
        let path = try #require(TestPaths.linearBackend, Comment(rawValue: TestPaths.linearBackendMissing))
        backend = try Backend(pluginAt: path)
    }

    @Test("the linear backend identifies itself")
    func identity() {
        #expect(backend.name == "keel-linear")
        #expect(backend.version == "1.0.0")
        #expect(backend.abiVersion == Backend.ABIVersion(major: 1, minor: 0))
        #expect(!backend.isBuiltin)
    }

    @Test("a linear model file loads, describes itself and runs")
    func loadAndRun() throws {
        let dir = try TestPaths.scratchDirectory()
        defer { TestPaths.remove(dir) }
        let path = dir.appendingPathComponent("scorer.lin").path
        try Data(linearModelText.utf8).write(to: URL(fileURLWithPath: path))
        let model = try Model(contentsOf: path, backend: backend)

        #expect(model.backend === backend)
        #expect(model.sha256 == SHA256.hex(Array(linearModelText.utf8)))
        #expect(model.inputs == [TensorInfo(name: "features", dims: [nil, 3], dimNames: ["assets", nil])])
        #expect(model.outputs == [TensorInfo(name: "scores", dims: [nil, 2], dimNames: ["assets", nil])])
        #expect(model.featureNames == ["a", "b", "c"])
        #expect(model.metadata["keel.outputs"] == "y1,y2")
        #expect(model.kind == "linear-policy")
        #expect(model.metadata["note"] == "two  words")
        #expect(model.metadataEntries.map(\.key) == ["keel.features", "keel.outputs", "keel.kind", "note"])
        #expect(model.nodes == [Node(name: "linear", opType: "Linear")])
        #expect(model.parameterCount == 8)
        #expect(model.producer == nil)
        #expect(model.property("format") == "keel-linear 1")

        let session = try model.makeSession()
        let out = try session.run(features: [1, 1, 1, 2, 0, 1], rows: 2)
        #expect(out[0].shape == [2, 2])
        #expect(out[0].values == [6.5, -1.5, 5.5, -3])

        for rows in [5, 1, 9, 0, 3] {
            let x = testFeatures(rows: rows, columns: 3, seed: UInt64(rows) + 3)
            let y = try session.run(features: x, rows: rows)[0]
            #expect(y.shape == [rows, 2])
            var expected: [Float] = []
            for r in 0..<rows {
                let (a, b, c) = (Double(x[r * 3]), Double(x[r * 3 + 1]), Double(x[r * 3 + 2]))
                expected += [Float(a + 2 * b + 3 * c + 0.5), Float(-a + 0.5 * b - 1)]
            }
            expectClose(y.values, expected)
        }

        let bad = #expect(throws: KeelError.self) { try session.run(features: [1, 2, 3, 4], rows: 1) }
        #expect(bad?.code == .shape)
        #expect(try session.run(features: [1, 1, 1], rows: 1)[0].values == [6.5, -1.5])

        let limit = #expect(throws: KeelError.self) { try session.setMemoryLimit(bytes: 1024) }
        #expect(limit?.code == .unsupported)
    }

    @Test("malformed linear files are parse errors naming the line", arguments: [
        ("keel-linear 1\nfeatures: a\noutputs: y\nweights:\n1\nbias: x\n", 6),
        ("keel-linear 1\nfeatures: a,b\noutputs: y\nweights:\n1 2 3\nbias: 0\n", 5),
        ("keel-linear 1\nfeatures: a,b\noutputs: y,z\nweights:\n1 2\nbias: 0 0\n", 6),
        ("keel-linear 1\nfeatures: a\noutputs: y\nweights:\nnan\nbias: 0\n", 5),
        ("keel-linear 1\nfeatures: a\noutputs: y\nweights:\n1\nbias: 0\ntrailing garbage\n", 7),
        ("keel-linear 1\nfeatures: a\noutputs: y\nweights:\n1\n", 6),
        ("keel-linear 1\nfeatures: a,a\n", 2),
        ("keel-linear 1\noutputs: y\n", 2),
        ("onnx?\n", 1),
        ("", 1),
    ])
    func malformed(text: String, line: Int) throws {
        let error = #expect(throws: KeelError.self) {
            try Model(bytes: Array(text.utf8), sourceName: "bad.lin", backend: backend)
        }
        #expect(error?.code == .parse)
        #expect(error?.message.contains("line \(line):") == true, "\(error?.message ?? "")")
    }

    @Test("hostile bytes never crash the plugin")
    func hostileBytes() throws {
        let base = Array(linearModelText.utf8)
        var state: UInt64 = 0x9e37_79b9_7f4a_7c15
        func next() -> Int {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return Int(state % 1_000_003)
        }
        var loaded = 0
        for _ in 0..<2000 {
            var bytes = base
            for _ in 0..<(1 + next() % 4) where !bytes.isEmpty {
                let i = next() % bytes.count
                switch next() % 3 {
                case 0: bytes[i] = UInt8(truncatingIfNeeded: next())
                case 1: bytes.remove(at: i)
                default: bytes.removeSubrange(i...)
                }
            }
            do {
                let model = try Model(bytes: bytes, backend: backend)
                let session = try model.makeSession()
                let k = model.inputs[0].dims[1] ?? 0
                _ = try session.run(features: [Float](repeating: 1, count: 2 * k), rows: 2)
                loaded += 1
            } catch {
                #expect(error.code == .parse || error.code == .unsupported, "\(error)")
            }
        }
        #expect(loaded > 0)
    }

    @Test("a future format version is unsupported")
    func futureVersion() {
        let error = #expect(throws: KeelError.self) {
            try Model(bytes: Array("keel-linear 2\n".utf8), backend: backend)
        }
        #expect(error?.code == .unsupported)
    }

    @Test("an ONNX file is not a linear model, and a linear file is not ONNX")
    func wrongBackend() throws {
        let onnx = #expect(throws: KeelError.self) { try Model(bytes: TestMLP.bytes, backend: backend) }
        #expect(onnx?.code == .parse)
        let text = #expect(throws: KeelError.self) { try Model(bytes: Array(linearModelText.utf8)) }
        #expect(text?.code == .parse)
    }

    @Test("models keep their plugin loaded")
    func modelRetainsBackend() throws {
        let pluginPath = try #require(TestPaths.linearBackend)
        var model: Model?
        do {
            let local = try Backend(pluginAt: pluginPath)
            model = try Model(bytes: Array(linearModelText.utf8), backend: local)
        }
        let out = try #require(model).makeSession().run(features: [1, 1, 1], rows: 1)
        #expect(out[0].values == [6.5, -1.5])
        #expect(model?.backend.name == "keel-linear")
    }
}

@Suite("Plugin loading errors")
struct PluginLoadErrorTests {
    @Test("a plugin path that does not exist is a plugin error naming it")
    func missingPlugin() {
        let path = "/nonexistent/libKeelNothing.so"
        let error = #expect(throws: KeelError.self) { try Backend(pluginAt: path) }
        #expect(error?.code == .plugin)
        #expect(error?.message.contains(path) == true)
    }

    @Test("a file that is not a shared library is a plugin error")
    func notALibrary() throws {
        let dir = try TestPaths.scratchDirectory()
        defer { TestPaths.remove(dir) }
        let path = dir.appendingPathComponent("libfake.so").path
        try Data("not an ELF file".utf8).write(to: URL(fileURLWithPath: path))
        let error = #expect(throws: KeelError.self) { try Backend(pluginAt: path) }
        #expect(error?.code == .plugin)
    }
}
