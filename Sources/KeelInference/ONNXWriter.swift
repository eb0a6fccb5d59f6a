// Writes ONNX model files: a minimal protobuf writer for the ONNX messages
// Keel reads, with the field numbers of onnx/onnx.proto (see
// proto/onnx/onnx-subset.proto). Training writes the policies it produces
// with it, and the tests build their model bytes with it, without Python.

/// Protobuf wire-format writer (proto2, little-endian).
public struct ProtoWriter {
    public private(set) var bytes: [UInt8] = []
    public init() {}

    public mutating func varint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(v & 0x7f) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    public mutating func key(_ field: Int, wire: Int) { varint(UInt64(field << 3 | wire)) }

    /// int32/int64/enum field (negative values as 10-byte two's complement, as protobuf does).
    public mutating func int(_ field: Int, _ value: Int64) {
        key(field, wire: 0)
        varint(UInt64(bitPattern: value))
    }

    public mutating func float(_ field: Int, _ value: Float) {
        key(field, wire: 5)
        appendLittleEndian(value.bitPattern)
    }

    public mutating func bytes(_ field: Int, _ data: [UInt8]) {
        key(field, wire: 2)
        varint(UInt64(data.count))
        bytes.append(contentsOf: data)
    }

    public mutating func string(_ field: Int, _ text: String) { bytes(field, Array(text.utf8)) }

    public mutating func message(_ field: Int, _ build: (inout ProtoWriter) -> Void) {
        var inner = ProtoWriter()
        build(&inner)
        bytes(field, inner.bytes)
    }

    public mutating func packedFloats(_ field: Int, _ values: [Float]) {
        var inner = ProtoWriter()
        for v in values { inner.appendLittleEndian(v.bitPattern) }
        bytes(field, inner.bytes)
    }

    public mutating func packedInts(_ field: Int, _ values: [Int64]) {
        var inner = ProtoWriter()
        for v in values { inner.varint(UInt64(bitPattern: v)) }
        bytes(field, inner.bytes)
    }

    public mutating func appendLittleEndian(_ value: UInt32) {
        for shift in stride(from: 0, to: 32, by: 8) { bytes.append(UInt8((value >> UInt32(shift)) & 0xff)) }
    }
}

/// ONNX model description, encoded to ModelProto bytes by `encode()`.
public struct ONNXModel {
    public init() {}

    public enum Dim {
        case value(Int)
        case param(String)
    }

    public struct ValueInfo {
        public var name: String
        public var elemType: Int = 1
        public var dims: [Dim]
        public init(name: String, elemType: Int = 1, dims: [Dim]) {
            self.name = name
            self.elemType = elemType
            self.dims = dims
        }
    }

    public enum Attribute {
        case int(String, Int64)
        case float(String, Float)
        case ints(String, [Int64])
        case floats(String, [Float])
    }

    public struct Node {
        public var opType: String
        public var inputs: [String]
        public var outputs: [String]
        public var name: String = ""
        public var attributes: [Attribute] = []
        public init(opType: String, inputs: [String], outputs: [String], name: String = "",
                    attributes: [Attribute] = []) {
            self.opType = opType
            self.inputs = inputs
            self.outputs = outputs
            self.name = name
            self.attributes = attributes
        }
    }

    public struct Initializer {
        public var name: String
        public var dims: [Int64]
        public var values: [Float]
        /// Store as raw_data (little-endian bytes) instead of float_data.
        public var raw = false
        public init(name: String, dims: [Int64], values: [Float], raw: Bool = false) {
            self.name = name
            self.dims = dims
            self.values = values
            self.raw = raw
        }
    }

    public var irVersion: Int64 = 8
    public var opset: Int64 = 17
    public var producerName = "keel"
    public var producerVersion = "1.0"
    public var docString = ""
    public var graphName = "graph"
    public var nodes: [Node] = []
    public var initializers: [Initializer] = []
    public var inputs: [ValueInfo] = []
    public var outputs: [ValueInfo] = []
    public var metadata: [(String, String)] = []

    public func encode() -> [UInt8] {
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
            if !docString.isEmpty { g.string(10, docString) }
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
