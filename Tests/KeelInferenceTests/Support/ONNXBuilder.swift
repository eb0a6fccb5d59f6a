// A tiny test-only protobuf writer for the ONNX messages Keel reads, with the
// field numbers of onnx/onnx.proto (see proto/onnx/onnx-subset.proto), so the
// tests can build model bytes without Python.

/// Protobuf wire-format writer (proto2, little-endian).
struct ProtoWriter {
    private(set) var bytes: [UInt8] = []

    mutating func varint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(v & 0x7f) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    mutating func key(_ field: Int, wire: Int) { varint(UInt64(field << 3 | wire)) }

    /// int32/int64/enum field (negative values as 10-byte two's complement, as protobuf does).
    mutating func int(_ field: Int, _ value: Int64) {
        key(field, wire: 0)
        varint(UInt64(bitPattern: value))
    }

    mutating func float(_ field: Int, _ value: Float) {
        key(field, wire: 5)
        appendLittleEndian(value.bitPattern)
    }

    mutating func bytes(_ field: Int, _ data: [UInt8]) {
        key(field, wire: 2)
        varint(UInt64(data.count))
        bytes.append(contentsOf: data)
    }

    mutating func string(_ field: Int, _ text: String) { bytes(field, Array(text.utf8)) }

    mutating func message(_ field: Int, _ build: (inout ProtoWriter) -> Void) {
        var inner = ProtoWriter()
        build(&inner)
        bytes(field, inner.bytes)
    }

    mutating func packedFloats(_ field: Int, _ values: [Float]) {
        var inner = ProtoWriter()
        for v in values { inner.appendLittleEndian(v.bitPattern) }
        bytes(field, inner.bytes)
    }

    mutating func packedInts(_ field: Int, _ values: [Int64]) {
        var inner = ProtoWriter()
        for v in values { inner.varint(UInt64(bitPattern: v)) }
        bytes(field, inner.bytes)
    }

    mutating func appendLittleEndian(_ value: UInt32) {
        for shift in stride(from: 0, to: 32, by: 8) { bytes.append(UInt8((value >> UInt32(shift)) & 0xff)) }
    }
}

/// ONNX model description, encoded to ModelProto bytes by `encode()`.
struct ONNXModel {
    enum Dim {
        case value(Int)
        case param(String)
    }

    struct ValueInfo {
        var name: String
        var elemType: Int = 1
        var dims: [Dim]
    }

    enum Attribute {
        case int(String, Int64)
        case float(String, Float)
        case ints(String, [Int64])
        case floats(String, [Float])
    }

    struct Node {
        var opType: String
        var inputs: [String]
        var outputs: [String]
        var name: String = ""
        var attributes: [Attribute] = []
    }

    struct Initializer {
        var name: String
        var dims: [Int64]
        var values: [Float]
        /// Store as raw_data (little-endian bytes) instead of float_data.
        var raw = false
    }

    var irVersion: Int64 = 8
    var opset: Int64 = 17
    var producerName = "keel-tests"
    var producerVersion = "1.0"
    var graphName = "test-graph"
    var nodes: [Node] = []
    var initializers: [Initializer] = []
    var inputs: [ValueInfo] = []
    var outputs: [ValueInfo] = []
    var metadata: [(String, String)] = []

    func encode() -> [UInt8] {
        var m = ProtoWriter()
        m.int(1, irVersion)                              // ir_version
        m.string(2, producerName)                         // producer_name
        m.string(3, producerVersion)                      // producer_version
        m.message(7) { g in                               // graph
            for node in nodes {
                g.message(1) { n in                       // node
                    for i in node.inputs { n.string(1, i) }
                    for o in node.outputs { n.string(2, o) }
                    if !node.name.isEmpty { n.string(3, node.name) }
                    n.string(4, node.opType)
                    for attribute in node.attributes {
                        n.message(5) { a in Self.encode(attribute, into: &a) }
                    }
                }
            }
            g.string(2, graphName)
            for t in initializers {
                g.message(5) { tp in                      // initializer (TensorProto)
                    for d in t.dims { tp.int(1, d) }      // dims
                    tp.int(2, 1)                          // data_type FLOAT
                    tp.string(8, t.name)                  // name
                    if t.raw {
                        var raw = ProtoWriter()
                        for v in t.values { raw.appendLittleEndian(v.bitPattern) }
                        tp.bytes(9, raw.bytes)            // raw_data
                    } else {
                        tp.packedFloats(4, t.values)      // float_data
                    }
                }
            }
            for v in inputs { g.message(11) { Self.encode(v, into: &$0) } }
            for v in outputs { g.message(12) { Self.encode(v, into: &$0) } }
        }
        m.message(8) { o in                               // opset_import
            o.string(1, "")
            o.int(2, opset)
        }
        for (key, value) in metadata {
            m.message(14) { e in                          // metadata_props
                e.string(1, key)
                e.string(2, value)
            }
        }
        return m.bytes
    }

    private static func encode(_ v: ValueInfo, into w: inout ProtoWriter) {
        w.string(1, v.name)
        w.message(2) { type in                            // TypeProto
            type.message(1) { tensor in                   // tensor_type
                tensor.int(1, Int64(v.elemType))          // elem_type
                tensor.message(2) { shape in              // TensorShapeProto
                    for d in v.dims {
                        shape.message(1) { dim in
                            switch d {
                            case .value(let n): dim.int(1, Int64(n))
                            case .param(let p): dim.string(2, p)
                            }
                        }
                    }
                }
            }
        }
    }

    private static func encode(_ attribute: Attribute, into a: inout ProtoWriter) {
        switch attribute {
        case .float(let name, let f):
            a.string(1, name); a.float(2, f); a.int(20, 1)       // FLOAT
        case .int(let name, let i):
            a.string(1, name); a.int(3, i); a.int(20, 2)         // INT
        case .floats(let name, let fs):
            a.string(1, name); for f in fs { a.float(7, f) }; a.int(20, 6)   // FLOATS
        case .ints(let name, let values):
            a.string(1, name); for i in values { a.int(8, i) }; a.int(20, 7) // INTS
        }
    }
}

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
