import KeelTestSupport
import Foundation
import KeelInference
import Testing

@Suite("Loading and describing models")
struct ModelTests {
    @Test("the test SHA-256 matches the FIPS 180-2 vectors")
    func sha256TestVectors() {
        #expect(SHA256.hex(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SHA256.hex([]) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8))
            == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    @Test("a model loaded from bytes describes its graph")
    func loadFromBytes() throws {
        let bytes = TestMLP.bytes
        let model = try Model(bytes: bytes, sourceName: "mlp.onnx")

        #expect(model.sourceName == "mlp.onnx")
        #expect(model.backend === Backend.builtin)
        #expect(model.sha256 == SHA256.hex(bytes))

        #expect(model.inputs == [TensorInfo(name: "features", dims: [nil, 3], dimNames: ["assets", nil])])
        #expect(model.outputs == [TensorInfo(name: "scores", dims: [nil, 2], dimNames: ["assets", nil])])
        #expect(model.inputs[0].description == "features: float32[assets, 3]")

        #expect(model.metadataEntries.map(\.key) == ["keel.kind", "keel.features", "keel.version", "note"])
        #expect(model.metadata["note"] == "hand-encoded in Swift")
        #expect(model.metadata["keel.version"] == "7")
        #expect(model.kind == "test-mlp")
        #expect(model.featureNames == TestMLP.features)

        #expect(model.nodes == [
            Node(name: "l1", opType: "Gemm"), Node(name: "l1_relu", opType: "Relu"), Node(name: "l2", opType: "Gemm"),
        ])
        #expect(model.opHistogram.map(\.opType) == ["Gemm", "Relu"])
        #expect(model.opHistogram.map(\.count) == [2, 1])
        #expect(model.parameterCount == TestMLP.parameterCount)
        #expect(model.producer == "keel-tests 1.0")
        #expect(model.properties.map(\.key) == ["producer", "producer_version", "ir_version", "opset", "graph", "kernels"])
        // Two Gemm layers with constant weights: both packed where the CPU allows it.
        let kernels = try #require(model.property("kernels"))
        #expect(kernels.contains("2 of 2 matrix products") || kernels.hasPrefix("cblas_sgemm for all 2"))
        #expect(model.property("producer") == "keel-tests")
        #expect(model.property("absent") == nil)
    }

    @Test("a model loaded from a path equals the one loaded from its bytes")
    func loadFromPath() throws {
        let dir = try TestPaths.scratchDirectory()
        defer { TestPaths.remove(dir) }
        let bytes = TestMLP.bytes
        let path = dir.appendingPathComponent("mlp.onnx").path
        try Data(bytes).write(to: URL(fileURLWithPath: path))

        let model = try Model(contentsOf: path)
        #expect(model.sourceName == path)
        #expect(model.sha256 == SHA256.hex(bytes))
        #expect(model.inputs == (try Model(bytes: bytes)).inputs)
        #expect(model.metadataEntries.count == 4)
        #expect(model.producer == "keel-tests 1.0")

        // The model keeps no reference to the file.
        try FileManager.default.removeItem(atPath: path)
        let out = try model.makeSession().run(features: [1, 2, 3], rows: 1)
        #expect(out[0].values == [9.75, 2])
    }

    @Test("a model without keel.* metadata has no kind or feature names")
    func noKeelMetadata() throws {
        var m = TestMLP.model
        m.metadata = []
        let model = try Model(bytes: m.encode())
        #expect(model.kind == nil)
        #expect(model.featureNames == nil)
        #expect(model.metadata.isEmpty)
    }

    @Test("keel.features may also be a JSON array")
    func featuresAsJSON() throws {
        var m = TestMLP.model
        m.metadata = [("keel.features", #"["a", "b", "c"]"#)]
        #expect(try Model(bytes: m.encode()).featureNames == ["a", "b", "c"])
    }

    @Test("a missing file is an I/O error naming it")
    func missingFile() {
        let path = "/nonexistent/keel/model.onnx"
        let error = #expect(throws: KeelError.self) { try Model(contentsOf: path) }
        #expect(error?.code == .io)
        #expect(error?.message.contains(path) == true)
    }

    @Test("bytes that are not protobuf are a parse error", arguments: [
        [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        Array("this is not an ONNX model\n".utf8),
    ] as [[UInt8]])
    func garbage(bytes: [UInt8]) {
        let error = #expect(throws: KeelError.self) { try Model(bytes: bytes, sourceName: "junk.onnx") }
        #expect(error?.code == .parse)
        #expect(error?.message.isEmpty == false)
    }

    @Test("a truncated model is a parse error")
    func truncated() {
        let bytes = TestMLP.bytes
        let error = #expect(throws: KeelError.self) { try Model(bytes: Array(bytes.prefix(bytes.count / 2))) }
        #expect(error?.code == .parse)
    }

    @Test("an operator Keel does not implement is unsupported, named in the message")
    func unsupportedOperator() {
        var m = ONNXModel()
        m.inputs = [.init(name: "x", dims: [.value(3), .value(3)])]
        m.outputs = [.init(name: "d", dims: [])]
        m.nodes = [.init(opType: "Det", inputs: ["x"], outputs: ["d"], name: "determinant")]
        let error = #expect(throws: KeelError.self) { try Model(bytes: m.encode()) }
        #expect(error?.code == .unsupported)
        #expect(error?.message.contains("Det") == true)
    }

    @Test("a node reading an undefined tensor is an invalid model")
    func danglingInput() {
        var m = TestMLP.model
        m.nodes[1].inputs = ["no_such_tensor"]
        let error = #expect(throws: KeelError.self) { try Model(bytes: m.encode()) }
        #expect(error?.code == .invalidModel)
        #expect(error?.message.contains("no_such_tensor") == true)
    }

    @Test("error codes carry the core's names and stable numbers")
    func errorCodes() {
        #expect(KeelError.Code.allCases.map(\.rawValue) == Array(1...11))
        #expect(KeelError.Code.parse.name == "parse error")
        #expect(KeelError.Code.io.name == "I/O error")
        #expect(KeelError.Code.plugin.name == "plugin error")
        #expect(Set(KeelError.Code.allCases.map(\.name)).count == KeelError.Code.allCases.count)
        #expect(!KeelError.Code.allCases.contains { $0.name == "unknown status" })
        let error = KeelError(code: .shape, message: "input 'x' has shape [2, 4]")
        #expect(error.description == "shape error: input 'x' has shape [2, 4]")
    }

    @Test("the built-in backend reports its identity")
    func builtinBackend() {
        let backend = Backend.builtin
        #expect(backend.isBuiltin)
        #expect(!backend.name.isEmpty)
        #expect(!backend.version.isEmpty)
        #expect(backend.abiVersion == Backend.hostABIVersion)
        #expect(Backend.hostABIVersion == Backend.ABIVersion(major: 1, minor: 0))
        #expect(!KeelCore.version.isEmpty)
    }

    // Only invalid values: changing the thread count while other tests run
    // models would break the core's "call at start-up" rule.
    @Test("BLAS thread count: invalid values are refused")
    func blasThreads() throws {
        #expect(Blas.threads >= 1)
        let error = #expect(throws: KeelError.self) { try Blas.setThreads(0) }
        #expect(error?.code == .invalidArgument)
        #expect(throws: KeelError.self) { try Blas.setThreads(-3) }
        #expect(throws: KeelError.self) { try Blas.setThreads(Int.max) }
    }

    @Test("the OpenBLAS kernel set is reported, and a pin to older kernels on AVX-512 warns")
    func blasKernels() {
        #expect(!Blas.coreName.isEmpty)
        let pinned = ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"]
        if let pinned, !pinned.isEmpty {
            // OpenBLAS reports the kernel set the variable named.
            #expect(Blas.coreName.lowercased() == pinned.lowercased())
            if Blas.cpuHasAVX512, pinned.lowercased() == "haswell" {
                #expect(Blas.kernelWarning?.contains("Haswell") == true)
            }
        }
        if !Blas.cpuHasAVX512 { #expect(Blas.kernelWarning == nil) }
    }
}
