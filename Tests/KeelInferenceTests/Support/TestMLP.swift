import KeelInference
import KeelTestSupport

/// The test MLP: features [assets, 3] -> Gemm(4, transB) -> Relu -> Gemm(2, transB) -> scores [assets, 2].
enum TestMLP {
    static let w1: [Float] = [1, 0, 0,
                              0, 1, 0,
                              0, 0, 1,
                              1, 1, 1]       // [4, 3]
    static let b1: [Float] = [0, -1, 0.5, -2]
    static let w2: [Float] = [1, 1, 1, 1,
                              1, -1, 0, 0.5] // [2, 4]
    static let b2: [Float] = [0.25, 0]
    static let features = ["ret_1m", "vol_60d", "drift"]
    static let parameterCount: UInt64 = 12 + 4 + 8 + 2

    static var model: ONNXModel {
        var m = ONNXModel()
        m.producerName = "keel-tests"
        m.inputs = [.init(name: "features", dims: [.param("assets"), .value(3)])]
        m.outputs = [.init(name: "scores", dims: [.param("assets"), .value(2)])]
        m.initializers = [
            .init(name: "l1.weight", dims: [4, 3], values: w1, raw: true),
            .init(name: "l1.bias", dims: [4], values: b1),
            .init(name: "l2.weight", dims: [2, 4], values: w2),
            .init(name: "l2.bias", dims: [2], values: b2, raw: true),
        ]
        m.nodes = [
            .init(opType: "Gemm", inputs: ["features", "l1.weight", "l1.bias"], outputs: ["h1"], name: "l1",
                  attributes: [.int("transB", 1)]),
            .init(opType: "Relu", inputs: ["h1"], outputs: ["a1"], name: "l1_relu"),
            .init(opType: "Gemm", inputs: ["a1", "l2.weight", "l2.bias"], outputs: ["scores"], name: "l2",
                  attributes: [.int("transB", 1), .float("alpha", 1), .float("beta", 1)]),
        ]
        m.metadata = [
            ("keel.kind", "test-mlp"),
            ("keel.features", features.joined(separator: ",")),
            ("keel.version", "7"),
            ("note", "hand-encoded in Swift"),
        ]
        return m
    }

    static var bytes: [UInt8] { model.encode() }

    /// Reference forward pass in plain Swift (Double accumulation).
    static func reference(_ x: [Float], rows: Int) -> [Float] {
        var out: [Float] = []
        for r in 0..<rows {
            let row = x[(r * 3)..<(r * 3 + 3)].map(Double.init)
            var h = [Double](repeating: 0, count: 4)
            for j in 0..<4 {
                var acc = Double(b1[j])
                for k in 0..<3 { acc += Double(w1[j * 3 + k]) * row[k] }
                h[j] = max(acc, 0)
            }
            for j in 0..<2 {
                var acc = Double(b2[j])
                for k in 0..<4 { acc += Double(w2[j * 4 + k]) * h[k] }
                out.append(Float(acc))
            }
        }
        return out
    }
}
