import CKeelCore

/// A dense, row-major float32 tensor: a value type that owns its elements.
public struct Tensor: Sendable, Equatable, CustomStringConvertible {
    /// Size of each dimension (row-major; `[]` is a scalar).
    public let shape: [Int]
    /// The elements, `shape.reduce(1, *)` of them.
    public let values: [Float]

    /// Creates a tensor, checking that `shape` has at most 8 non-negative
    /// dimensions whose product is `values.count`
    /// (``KeelError/Code/invalidArgument`` otherwise).
    public init(shape: [Int], values: [Float]) throws(KeelError) {
        guard shape.count <= Int(KEEL_MAX_RANK) else {
            throw KeelError(code: .invalidArgument,
                            message: "tensor rank \(shape.count) exceeds the maximum of \(KEEL_MAX_RANK)")
        }
        guard let count = Tensor.elementCount(of: shape) else {
            throw KeelError(code: .invalidArgument,
                            message: "tensor shape \(shape) has a negative dimension or too many elements")
        }
        guard count == values.count else {
            throw KeelError(code: .invalidArgument,
                            message: "tensor shape \(shape) needs \(count) values, got \(values.count)")
        }
        self.shape = shape
        self.values = values
    }

    /// A rank-2 tensor from rows of equal length.
    public init(rows: [[Float]]) throws(KeelError) {
        let width = rows.first?.count ?? 0
        if let bad = rows.firstIndex(where: { $0.count != width }) {
            throw KeelError(code: .invalidArgument,
                            message: "row \(bad) has \(rows[bad].count) values, row 0 has \(width)")
        }
        try self.init(shape: [rows.count, width], values: rows.flatMap { $0 })
    }

    /// Unchecked, for outputs whose shape the core guarantees.
    init(uncheckedShape shape: [Int], values: [Float]) {
        self.shape = shape
        self.values = values
    }

    /// Number of rows (the first dimension; 1 for a scalar).
    public var rowCount: Int { shape.first ?? 1 }

    /// Elements of row `index` along the first dimension (all of them for a scalar).
    public func row(_ index: Int) -> ArraySlice<Float> {
        guard let first = shape.first else { return values[...] }
        precondition(index >= 0 && index < first, "row index \(index) out of range 0..<\(first)")
        let width = first == 0 ? 0 : values.count / first
        return values[(index * width)..<((index + 1) * width)]
    }

    /// `float32[2, 3]`.
    public var description: String {
        "float32[\(shape.map(String.init).joined(separator: ", "))]"
    }

    /// The product of `shape`, or `nil` for a negative dimension or overflow.
    public static func elementCount(of shape: [Int]) -> Int? {
        var count = 1
        for d in shape {
            guard d >= 0 else { return nil }
            let (product, overflow) = count.multipliedReportingOverflow(by: d)
            if overflow { return nil }
            count = product
        }
        return count
    }
}

/// Working memory for running one model.
///
/// Thread safety: a session runs one call at a time and is deliberately not
/// `Sendable`; keep it on one thread or task. To run a model concurrently,
/// share the ``Model`` and give each thread or task its own session (sessions
/// are cheap). The session keeps its model alive.
///
/// After the first run at a given set of input shapes, runs with the same
/// shapes allocate no working memory in the core.
public final class Session {
    /// The model this session runs.
    public let model: Model
    let handle: OpaquePointer

    /// Creates a session; see also ``Model/makeSession()``.
    public init(model: Model) throws(KeelError) {
        var out: OpaquePointer?
        try keelCall { keel_session_create(model.handle, &out, $0) }
        guard let handle = out else {
            throw KeelError(code: .internal, message: "keel_session_create succeeded without a session")
        }
        self.model = model
        self.handle = handle
    }

    deinit {
        keel_session_free(handle)
    }

    /// Caps the session's working memory in bytes (0 restores the default).
    /// A run that would need more throws ``KeelError/Code/limit``. Built-in
    /// backend only (``KeelError/Code/unsupported`` for plugins).
    public func setMemoryLimit(bytes: UInt64) throws(KeelError) {
        try keelCall { keel_session_set_memory_limit(handle, bytes, $0) }
    }

    /// Runs the model: one tensor per model input, in ``Model/inputs`` order;
    /// returns one tensor per output, in ``Model/outputs`` order.
    ///
    /// Wrong counts or shapes throw (``KeelError/Code/invalidArgument`` or
    /// ``KeelError/Code/shape``) and leave the session usable.
    public func run(_ inputs: [Tensor]) throws(KeelError) -> [Tensor] {
        guard inputs.count == model.inputs.count else {
            throw KeelError(code: .invalidArgument,
                            message: "\(inputs.count) input tensors given, the model has \(model.inputs.count) "
                                + "(\(model.inputs.map(\.name).joined(separator: ", ")))")
        }
        var views = inputs.map { Session.view(shape: $0.shape) }
        return try withInputData(inputs, 0, &views)
    }

    /// Runs a model with one rank-2 input `[rows, columns]` straight from a
    /// flat row-major buffer of `rows * columns` features, without building a
    /// ``Tensor`` first.
    public func run(features: [Float], rows: Int) throws(KeelError) -> [Tensor] {
        guard model.inputs.count == 1, let input = model.inputs.first, input.rank == 2 else {
            throw KeelError(code: .invalidArgument,
                            message: "run(features:rows:) needs a model with one rank-2 input; this one has "
                                + "\(model.inputs.map(\.description).joined(separator: ", ")); use run(_:)")
        }
        guard rows >= 0 else {
            throw KeelError(code: .invalidArgument, message: "rows must not be negative, got \(rows)")
        }
        let columns: Int
        if rows == 0 {
            guard features.isEmpty else {
                throw KeelError(code: .invalidArgument, message: "0 rows but \(features.count) features given")
            }
            columns = input.dims[1] ?? 0
        } else {
            guard features.count % rows == 0 else {
                throw KeelError(code: .invalidArgument,
                                message: "\(features.count) features do not split into \(rows) equal rows")
            }
            columns = features.count / rows
        }
        var views = [Session.view(shape: [rows, columns])]
        return try features.withUnsafeBufferPointer { buffer throws(KeelError) -> [Tensor] in
            views[0].data = buffer.baseAddress
            return try runViews(&views)
        }
    }

    /// Runs a scoring model (one rank-2 input, first output `[rows]` or
    /// `[rows, k]`) and returns one score per row: the first output's first
    /// column. An output of another shape is ``KeelError/Code/shape``.
    public func scores(features: [Float], rows: Int) throws(KeelError) -> [Float] {
        let outputs = try run(features: features, rows: rows)
        guard let t = outputs.first, rows > 0, t.shape.first == rows, t.values.count >= rows,
              t.values.count % rows == 0
        else {
            throw KeelError(code: .shape, message: "model '\(model.sourceName)' returned output shape "
                + "\(outputs.first?.shape ?? []) for \(rows) rows; expected one score per row")
        }
        let stride = t.values.count / rows
        if stride == 1 { return t.values }
        return (0..<rows).map { t.values[$0 * stride] }
    }

    // MARK: - internals

    private func withInputData(_ inputs: [Tensor], _ index: Int, _ views: inout [keel_tensor]) throws(KeelError)
        -> [Tensor]
    {
        if index == inputs.count { return try runViews(&views) }
        return try inputs[index].values.withUnsafeBufferPointer { buffer throws(KeelError) -> [Tensor] in
            views[index].data = buffer.baseAddress
            return try withInputData(inputs, index + 1, &views)
        }
    }

    private func runViews(_ views: inout [keel_tensor]) throws(KeelError) -> [Tensor] {
        let outputCount = model.outputs.count
        var outputs = [keel_tensor](repeating: keel_tensor(), count: outputCount)
        let inputCount = views.count
        try keelCall { err in
            views.withUnsafeBufferPointer { ins in
                outputs.withUnsafeMutableBufferPointer { outs in
                    keel_session_run(handle, ins.baseAddress, inputCount, outs.baseAddress, outputCount, err)
                }
            }
        }
        var result: [Tensor] = []
        result.reserveCapacity(outputCount)
        for var out in outputs {
            let rank = min(Int(out.rank), Int(KEEL_MAX_RANK))
            let shape = withUnsafeBytes(of: &out.shape) { raw in
                let d = raw.bindMemory(to: Int64.self)
                return (0..<rank).map { Int(d[$0]) }
            }
            guard let count = Tensor.elementCount(of: shape) else {
                throw KeelError(code: .internal, message: "the core returned an output with shape \(shape)")
            }
            let values: [Float]
            if count == 0 {
                values = []
            } else if let data = out.data {
                values = Array(UnsafeBufferPointer(start: data, count: count))
            } else {
                throw KeelError(code: .internal, message: "the core returned an output without data")
            }
            result.append(Tensor(uncheckedShape: shape, values: values))
        }
        return result
    }

    private static func view(shape: [Int]) -> keel_tensor {
        var t = keel_tensor()
        t.rank = UInt32(min(shape.count, Int(KEEL_MAX_RANK)))
        withUnsafeMutableBytes(of: &t.shape) { raw in
            let d = raw.bindMemory(to: Int64.self)
            for (i, dim) in shape.prefix(Int(KEEL_MAX_RANK)).enumerated() { d[i] = Int64(dim) }
        }
        return t
    }
}

@available(*, unavailable, message: "a Session runs one call at a time: give each task its own session")
extension Session: Sendable {}
