import KeelInference
import KeelPortfolio

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The policy network training optimises: a per-asset MLP over
/// ``FeatureSet`` (12 → hidden → … → 1, Gemm + Relu, weights in PyTorch's
/// `[out, in]` layout with `transB = 1`), held as one flat parameter vector
/// and written as an ONNX file that Keel's C core runs, in serving and in
/// training alike.
public struct PolicyNetwork: Sendable, Equatable {
    /// Layer widths, input first: `[12, h1, ..., 1]`.
    public let sizes: [Int]
    /// All weights and biases, layer by layer (W then b).
    public var parameters: [Float]

    public static func parameterCount(_ sizes: [Int]) -> Int {
        (0..<(sizes.count - 1)).reduce(0) { $0 + sizes[$1 + 1] * (sizes[$1] + 1) }
    }

    /// Initial weights: Glorot-uniform, the last layer scaled by 0.1 so that
    /// first scores stay near 0; biases 0. Deterministic under `seed`.
    public init(hidden: [Int], seed: UInt64) {
        sizes = [FeatureSet.count] + hidden + [1]
        var rng = SplitMix64(seed: seed)
        var p: [Float] = []
        p.reserveCapacity(Self.parameterCount(sizes))
        for l in 0..<(sizes.count - 1) {
            let fanIn = sizes[l], fanOut = sizes[l + 1]
            let limit = (6.0 / Double(fanIn + fanOut)).squareRoot() * (l == sizes.count - 2 ? 0.1 : 1)
            for _ in 0..<(fanIn * fanOut) { p.append(Float((rng.unit() * 2 - 1) * limit)) }
            p.append(contentsOf: [Float](repeating: 0, count: fanOut))
        }
        parameters = p
    }

    public init(sizes: [Int], parameters: [Float]) throws(ResearchError) {
        guard sizes.count >= 2, sizes.first == FeatureSet.count, sizes.last == 1, sizes.allSatisfy({ $0 > 0 }) else {
            throw ResearchError(.invalidArgument, "a policy network maps \(FeatureSet.count) features to 1 score; "
                + "layer sizes \(sizes) do not")
        }
        guard parameters.count == Self.parameterCount(sizes) else {
            throw ResearchError(.invalidArgument, "\(parameters.count) parameters for layer sizes \(sizes); "
                + "\(Self.parameterCount(sizes)) expected")
        }
        self.sizes = sizes
        self.parameters = parameters
    }

    static func layerName(_ l: Int, layers: Int) -> String { l == layers - 1 ? "head" : "fc\(l + 1)" }

    /// The ONNX model (opset 17) with `metadata` as its `metadata_props`.
    public func onnx(metadata: [(String, String)], doc: String = "") -> [UInt8] {
        var m = ONNXModel()
        m.producerName = "keel"
        m.producerVersion = "keel train policy"
        m.graphName = "keel_policy"
        m.docString = doc
        let layers = sizes.count - 1
        m.inputs = [.init(name: "features", dims: [.param("assets"), .value(sizes[0])])]
        m.outputs = [.init(name: "score", dims: [.param("assets"), .value(1)])]
        var offset = 0
        var current = "features"
        for l in 0..<layers {
            let name = Self.layerName(l, layers: layers)
            let fanIn = sizes[l], fanOut = sizes[l + 1]
            let w = Array(parameters[offset..<(offset + fanIn * fanOut)])
            offset += fanIn * fanOut
            let b = Array(parameters[offset..<(offset + fanOut)])
            offset += fanOut
            m.initializers.append(.init(name: "\(name).weight", dims: [Int64(fanOut), Int64(fanIn)], values: w, raw: true))
            m.initializers.append(.init(name: "\(name).bias", dims: [Int64(fanOut)], values: b, raw: true))
            let out = l == layers - 1 ? "score" : "\(name).out"
            m.nodes.append(.init(opType: "Gemm", inputs: [current, "\(name).weight", "\(name).bias"], outputs: [out],
                                 name: name, attributes: [.int("transB", 1)]))
            current = out
            if l < layers - 1 {
                m.nodes.append(.init(opType: "Relu", inputs: [out], outputs: ["\(name).relu"], name: "\(name)_relu"))
                current = "\(name).relu"
            }
        }
        m.metadata = metadata
        return m.encode()
    }

    /// Reads the weights of a policy file written in this form (initializers
    /// `fc1.weight`, `fc1.bias`, …, `head.weight`, `head.bias`), e.g. for
    /// `--warm-start`. Other architectures are a clear error.
    public init(onnx bytes: [UInt8], name: String) throws(ResearchError) {
        func bad(_ why: String) -> ResearchError {
            ResearchError(.invalidArgument, "\(name): cannot warm-start from this model: \(why)")
        }
        var tensors: [String: (dims: [Int], values: [Float])] = [:]
        do throws(WireReader.Malformed) {
            var model = WireReader(bytes[...])
            while let (field, value) = try model.next() {
                guard field == 7, case .bytes(let graphBytes) = value else { continue }
                var graph = WireReader(graphBytes)
                while let (gf, gv) = try graph.next() {
                    guard gf == 5, case .bytes(let tensorBytes) = gv else { continue }
                    var tensor = WireReader(tensorBytes)
                    var dims: [Int] = [], tname = "", raw: [UInt8] = [], floats: [Float] = [], type = 0
                    while let (tf, tv) = try tensor.next() {
                        switch (tf, tv) {
                        case (1, .varint(let d)): dims.append(Int(truncatingIfNeeded: d))
                        case (1, .bytes(let packed)):
                            var r = WireReader(packed)
                            while let d = try r.varint() { dims.append(Int(truncatingIfNeeded: d)) }
                        case (2, .varint(let t)): type = Int(truncatingIfNeeded: t)
                        case (8, .bytes(let s)): tname = String(decoding: s, as: UTF8.self)
                        case (9, .bytes(let s)): raw = Array(s)
                        case (4, .bytes(let packed)):
                            floats = stride(from: packed.startIndex, to: packed.endIndex - 3, by: 4).map {
                                Float(bitPattern: UInt32(packed[$0]) | UInt32(packed[$0 + 1]) << 8
                                    | UInt32(packed[$0 + 2]) << 16 | UInt32(packed[$0 + 3]) << 24)
                            }
                        case (4, .fixed32(let bits)): floats.append(Float(bitPattern: bits))
                        default: break
                        }
                    }
                    guard type == 1 else { throw WireReader.Malformed(message: "initializer '\(tname)' is not float32") }
                    if !raw.isEmpty {
                        floats = stride(from: 0, to: raw.count - 3, by: 4).map {
                            Float(bitPattern: UInt32(raw[$0]) | UInt32(raw[$0 + 1]) << 8 | UInt32(raw[$0 + 2]) << 16
                                | UInt32(raw[$0 + 3]) << 24)
                        }
                    }
                    tensors[tname] = (dims, floats)
                }
            }
        } catch {
            throw bad(error.message)
        }
        var sizes = [FeatureSet.count]
        var parameters: [Float] = []
        var l = 0
        while true {
            let names = ["fc\(l + 1)", "head"]
            guard let layer = names.first(where: { tensors["\($0).weight"] != nil }) else {
                throw bad("no initializer 'fc\(l + 1).weight' or 'head.weight' (Keel's policy MLP layout)")
            }
            guard let w = tensors["\(layer).weight"], let b = tensors["\(layer).bias"], w.dims.count == 2,
                  w.dims[0] > 0, w.dims[0] <= 1 << 20, w.dims[1] == sizes.last, b.dims == [w.dims[0]],
                  w.values.count == w.dims[0] * w.dims[1],
                  b.values.count == w.dims[0]
            else {
                throw bad("layer '\(layer)' does not have a [out, \(sizes.last ?? 0)] weight and an [out] bias")
            }
            parameters += w.values + b.values
            sizes.append(w.dims[0])
            if layer == "head" { break }
            l += 1
            guard l < 64 else { throw bad("too many layers") }
        }
        try self.init(sizes: sizes, parameters: parameters)
    }
}

/// A minimal protobuf wire reader (for ``PolicyNetwork/init(onnx:name:)``).
struct WireReader {
    enum Value { case varint(UInt64), fixed64(UInt64), bytes(ArraySlice<UInt8>), fixed32(UInt32) }
    struct Malformed: Error { let message: String }

    var data: ArraySlice<UInt8>
    init(_ data: ArraySlice<UInt8>) { self.data = data }

    mutating func varint() throws(Malformed) -> UInt64? {
        guard !data.isEmpty else { return nil }
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while let byte = data.popFirst() {
            value |= UInt64(byte & 0x7f) << shift
            if byte & 0x80 == 0 { return value }
            shift += 7
            if shift >= 64 { throw Malformed(message: "a varint longer than 10 bytes") }
        }
        throw Malformed(message: "a truncated varint")
    }

    mutating func next() throws(Malformed) -> (Int, Value)? {
        guard let key = try varint() else { return nil }
        let field = Int(key >> 3)
        switch key & 7 {
        case 0:
            guard let v = try varint() else { throw Malformed(message: "a truncated field \(field)") }
            return (field, .varint(v))
        case 1:
            guard data.count >= 8 else { throw Malformed(message: "a truncated field \(field)") }
            var v: UInt64 = 0
            for k in 0..<8 { v |= UInt64(data[data.startIndex + k]) << (8 * UInt64(k)) }
            data = data.dropFirst(8)
            return (field, .fixed64(v))
        case 2:
            guard let n = try varint(), n <= UInt64(data.count) else {
                throw Malformed(message: "field \(field) is longer than the bytes left")
            }
            let slice = data.prefix(Int(n))
            data = data.dropFirst(Int(n))
            return (field, .bytes(slice))
        case 5:
            guard data.count >= 4 else { throw Malformed(message: "a truncated field \(field)") }
            var v: UInt32 = 0
            for k in 0..<4 { v |= UInt32(data[data.startIndex + k]) << (8 * UInt32(k)) }
            data = data.dropFirst(4)
            return (field, .fixed32(v))
        default:
            throw Malformed(message: "field \(field) has an unsupported wire type \(key & 7)")
        }
    }
}
