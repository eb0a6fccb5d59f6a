import CKeelCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Description of a model input or output.
public struct TensorInfo: Sendable, Equatable, CustomStringConvertible {
    /// The tensor's name in the graph.
    public let name: String
    /// Element type, numbered as ONNX `TensorProto.DataType` (1 = float32).
    public let elementType: Int32
    /// One entry per dimension: the size, or `nil` where the dimension is dynamic.
    public let dims: [Int?]
    /// One entry per dimension: the symbolic name (`"assets"`, `"batch"`), or `nil`.
    public let dimNames: [String?]

    public init(name: String, elementType: Int32 = 1, dims: [Int?], dimNames: [String?]? = nil) {
        self.name = name
        self.elementType = elementType
        self.dims = dims
        self.dimNames = dimNames ?? Array(repeating: nil, count: dims.count)
    }

    /// The tensor's rank.
    public var rank: Int { dims.count }

    /// The dimensions for display: sizes, dynamic ones by name (`?` when unnamed).
    public var dimDescriptions: [String] {
        zip(dims, dimNames).map { dim, label in dim.map(String.init) ?? label ?? "?" }
    }

    /// The element type's name (`"float32"`, `"int64"`, ...).
    public var elementTypeName: String {
        switch elementType {
        case 1: "float32"
        case 7: "int64"
        default: "type \(elementType)"
        }
    }

    /// `name: float32[assets, 12]`.
    public var description: String {
        "\(name): \(elementTypeName)[\(dimDescriptions.joined(separator: ", "))]"
    }

    init(_ info: keel_tensor_info) {
        var info = info
        let rank = min(Int(info.rank), Int(KEEL_MAX_RANK))
        name = info.name.map { String(cString: $0) } ?? ""
        elementType = info.elem_type
        dims = withUnsafeBytes(of: &info.dims) { raw in
            let d = raw.bindMemory(to: Int64.self)
            return (0..<rank).map { d[$0] >= 0 ? Int(d[$0]) : nil }
        }
        dimNames = withUnsafeBytes(of: &info.dim_params) { raw in
            let p = raw.bindMemory(to: UnsafePointer<CChar>?.self)
            return (0..<rank).map { p[$0].map { String(cString: $0) } }
        }
    }
}

/// One operator of a model's graph.
public struct Node: Sendable, Equatable {
    public let name: String
    public let opType: String
    public init(name: String, opType: String) {
        self.name = name
        self.opType = opType
    }
}

/// One metadata entry, in file order.
public struct MetadataEntry: Sendable, Equatable {
    public let key: String
    public let value: String
    public init(key: String, value: String) {
        self.key = key
        self.value = value
    }
}

/// A loaded, validated, immutable model.
///
/// Thread safety: a model is immutable and may be shared between any number
/// of threads and tasks; give each of them its own ``Session`` to run it.
/// Everything a model describes is read once at load time into plain values.
public final class Model: @unchecked Sendable {
    // @unchecked: the handle is never mutated after init; the C core documents
    // every model query and keel_session_create as thread-safe.
    let handle: OpaquePointer

    /// The backend that loaded the model (kept alive by the model).
    public let backend: Backend
    /// The name given at load time (the path, or `sourceName`).
    public let sourceName: String
    /// SHA-256 of the model's bytes, 64 lowercase hexadecimal characters.
    public let sha256: String
    /// Graph inputs, in the order ``Session/run(_:)`` takes them.
    public let inputs: [TensorInfo]
    /// Graph outputs, in the order ``Session/run(_:)`` returns them.
    public let outputs: [TensorInfo]
    /// Metadata entries in file order (duplicates kept).
    public let metadataEntries: [MetadataEntry]
    /// Metadata as a dictionary (for a repeated key, the first entry wins).
    public let metadata: [String: String]
    /// The graph's operators, in execution order.
    public let nodes: [Node]
    /// Number of learned parameters (scalars).
    public let parameterCount: UInt64
    /// Backend-defined descriptive properties in backend order (the ONNX
    /// backend: producer, producer_version, ir_version, opset, graph).
    public let properties: [MetadataEntry]

    /// Loads a model file. The file may change or disappear afterwards.
    /// A missing or unreadable file throws ``KeelError/Code/io``.
    public convenience init(contentsOf path: String, backend: Backend = .builtin) throws(KeelError) {
        var out: OpaquePointer?
        try keelCall { keel_model_load_file(backend.handle, path, &out, $0) }
        guard let handle = out else {
            throw KeelError(code: .internal, message: "keel_model_load_file succeeded without a model")
        }
        self.init(handle: handle, backend: backend, sourceName: path)
    }

    /// Loads a model from memory. `sourceName` names it in error messages.
    public convenience init(bytes: [UInt8], sourceName: String = "<memory>", backend: Backend = .builtin)
        throws(KeelError)
    {
        var out: OpaquePointer?
        try keelCall { err in
            bytes.withUnsafeBytes { raw in
                keel_model_load_bytes(backend.handle, raw.baseAddress, raw.count, sourceName, &out, err)
            }
        }
        guard let handle = out else {
            throw KeelError(code: .internal, message: "keel_model_load_bytes succeeded without a model")
        }
        self.init(handle: handle, backend: backend, sourceName: sourceName)
    }

    private init(handle: OpaquePointer, backend: Backend, sourceName: String) {
        self.handle = handle
        self.backend = backend
        self.sourceName = sourceName
        sha256 = keel_model_sha256(handle).map { String(cString: $0) } ?? ""

        // The core validated the model: these queries cannot fail for in-range
        // indices; anything odd is skipped rather than trusted.
        var ins: [TensorInfo] = []
        for i in 0..<keel_model_input_count(handle) {
            var info = keel_tensor_info()
            if keel_model_input_info(handle, i, &info, nil) == KEEL_OK { ins.append(TensorInfo(info)) }
        }
        inputs = ins
        var outs: [TensorInfo] = []
        for i in 0..<keel_model_output_count(handle) {
            var info = keel_tensor_info()
            if keel_model_output_info(handle, i, &info, nil) == KEEL_OK { outs.append(TensorInfo(info)) }
        }
        outputs = outs

        var entries: [MetadataEntry] = []
        for i in 0..<keel_model_metadata_count(handle) {
            var key: UnsafePointer<CChar>?
            var value: UnsafePointer<CChar>?
            if keel_model_metadata_entry(handle, i, &key, &value, nil) == KEEL_OK, let key {
                entries.append(MetadataEntry(key: String(cString: key), value: value.map { String(cString: $0) } ?? ""))
            }
        }
        metadataEntries = entries
        metadata = Dictionary(entries.map { ($0.key, $0.value) }, uniquingKeysWith: { first, _ in first })

        var props: [MetadataEntry] = []
        for i in 0..<keel_model_property_count(handle) {
            var key: UnsafePointer<CChar>?
            var value: UnsafePointer<CChar>?
            if keel_model_property_entry(handle, i, &key, &value, nil) == KEEL_OK, let key {
                props.append(MetadataEntry(key: String(cString: key), value: value.map { String(cString: $0) } ?? ""))
            }
        }
        properties = props

        var graph: [Node] = []
        for i in 0..<keel_model_node_count(handle) {
            var name: UnsafePointer<CChar>?
            var op: UnsafePointer<CChar>?
            if keel_model_node_info(handle, i, &name, &op, nil) == KEEL_OK {
                graph.append(Node(name: name.map { String(cString: $0) } ?? "",
                                  opType: op.map { String(cString: $0) } ?? ""))
            }
        }
        nodes = graph
        parameterCount = keel_model_parameter_count(handle)
    }

    deinit {
        keel_model_free(handle)
    }

    /// The value of a backend property, or `nil` when the backend has none.
    public func property(_ key: String) -> String? {
        properties.first { $0.key == key }?.value
    }

    /// The producer recorded in an ONNX file (`producer_name producer_version`),
    /// or `nil` when absent or the backend does not record one.
    public var producer: String? {
        let parts = [property("producer"), property("producer_version")].compactMap { $0 }.filter { !$0.isEmpty }
        return parts.isEmpty ? nil : parts.joined(separator: " ")
    }

    /// The model family, from the `keel.kind` metadata entry.
    public var kind: String? { metadata["keel.kind"] }

    /// The input feature names, from the `keel.features` metadata entry: a
    /// comma-separated list (`"ret_1m,vol_60d"`) or a JSON array of strings.
    public var featureNames: [String]? {
        guard let raw = metadata["keel.features"] else { return nil }
        return Model.parseNameList(raw)
    }

    /// How often each operator type occurs, most frequent first (ties by name).
    public var opHistogram: [(opType: String, count: Int)] {
        var counts: [String: Int] = [:]
        for node in nodes { counts[node.opType, default: 0] += 1 }
        return counts.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
            .map { (opType: $0.key, count: $0.value) }
    }

    /// Creates a session (working memory for runs) for this model.
    public func makeSession() throws(KeelError) -> Session {
        try Session(model: self)
    }

    static func parseNameList(_ raw: String) -> [String] {
        let text = raw.trimmingBlanks()
        if text.hasPrefix("["), text.hasSuffix("]") {
            // A JSON array of plain strings: ["a", "b"]. Escapes are not expected
            // in feature names; \" and \\ are honoured, others kept verbatim.
            var names: [String] = []
            var current = ""
            var inString = false
            var escaped = false
            for ch in text.dropFirst().dropLast() {
                if inString {
                    if escaped { current.append(ch); escaped = false }
                    else if ch == "\\" { escaped = true }
                    else if ch == "\"" { inString = false; names.append(current); current = "" }
                    else { current.append(ch) }
                } else if ch == "\"" {
                    inString = true
                }
            }
            return names
        }
        if text.isEmpty { return [] }
        return text.split(separator: ",", omittingEmptySubsequences: false).map { String($0).trimmingBlanks() }
    }
}

extension String {
    func trimmingBlanks() -> String {
        var s = Substring(self)
        while let c = s.first, c == " " || c == "\t" || c == "\r" || c == "\n" { s.removeFirst() }
        while let c = s.last, c == " " || c == "\t" || c == "\r" || c == "\n" { s.removeLast() }
        return String(s)
    }
}
