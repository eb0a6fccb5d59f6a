import KeelTestSupport
import Foundation
import KeelInference
import Testing

/// The shipped initial policy (scripts/make_initial_policy.py):
/// features [assets, 12] -> Gemm 12->64 -> Relu -> Gemm 64->64 -> Relu -> Gemm 64->1 -> score [assets, 1].
@Suite("The shipped policy model",
       .enabled(if: FileManager.default.fileExists(atPath: TestPaths.policyModel),
                "models/policy/1/model.onnx is not there yet: run `make models`"))
struct PolicyModelTests {
    @Test("it loads and describes itself as the policy")
    func describe() throws {
        let model = try Model(contentsOf: TestPaths.policyModel)
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: TestPaths.policyModel)))
        #expect(model.sha256 == SHA256.hex(bytes))
        #expect(model.kind == "policy")
        #expect(model.inputs.count == 1)
        #expect(model.inputs.first?.name == "features")
        #expect(model.inputs.first?.dims == [nil, 12])
        #expect(model.inputs.first?.dimNames.first == "assets")
        #expect(model.outputs.first?.name == "score")
        #expect(model.outputs.first?.dims == [nil, 1])
        #expect(model.featureNames?.count == 12)
        #expect(model.opHistogram.map(\.opType) == ["Gemm", "Relu"])
        #expect(model.opHistogram.map(\.count) == [3, 2])
        let layers: [(inputs: Int, outputs: Int)] = [(12, 64), (64, 64), (64, 1)]
        let expectedParameters = layers.reduce(0) { $0 + $1.inputs * $1.outputs + $1.outputs }
        #expect(model.parameterCount == UInt64(expectedParameters))
        #expect(model.producer?.hasPrefix("keel") == true)
    }

    @Test("the example CSV's header matches the model's features")
    func exampleHeader() throws {
        let model = try Model(contentsOf: TestPaths.policyModel)
        let text = try String(contentsOfFile: TestPaths.policyCSV, encoding: .utf8)
        let header = try #require(text.split(separator: "\n").first)
        #expect(header.split(separator: ",").map(String.init) == model.featureNames)
    }

    @Test("scores are finite and rows are independent of their batch", arguments: [1, 5, 32])
    func rowsIndependent(rows: Int) throws {
        let model = try Model(contentsOf: TestPaths.policyModel)
        let session = try model.makeSession()
        let x = testFeatures(rows: rows, columns: 12, seed: UInt64(rows) * 977).map { $0 / 4 }
        let batch = try session.run(features: x, rows: rows)[0]
        #expect(batch.shape == [rows, 1])
        #expect(batch.values.allSatisfy { $0.isFinite })
        let single = try model.makeSession()
        for r in 0..<rows {
            let one = try single.run(features: Array(x[(r * 12)..<(r * 12 + 12)]), rows: 1)[0]
            expectClose(one.values, [batch.values[r]], tolerance: 1e-5)
        }
    }
}
