import KeelInference
import Testing

/// Deterministic pseudo-random features in [-2, 2) (xorshift; no global state).
func testFeatures(rows: Int, columns: Int, seed: UInt64) -> [Float] {
    var state = seed | 1
    return (0..<(rows * columns)).map { _ in
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return Float(state % 4096) / 1024 - 2
    }
}

func expectClose(_ a: [Float], _ b: [Float], tolerance: Float = 1e-5,
                 sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(a.count == b.count, sourceLocation: sourceLocation)
    for (i, (x, y)) in zip(a, b).enumerated() where abs(x - y) > tolerance * max(1, abs(y)) {
        Issue.record("element \(i): \(x) != \(y)", sourceLocation: sourceLocation)
        return
    }
}

@Suite("Running models")
struct SessionTests {
    let model: Model

    init() throws {
        model = try Model(bytes: TestMLP.bytes, sourceName: "mlp.onnx")
    }

    @Test("outputs match values computed by hand")
    func handComputed() throws {
        // Row 1: h = [1, 1, 3.5, 4] -> [9.75, 2.0]. Row 2: h all negative -> relu 0 -> the bias [0.25, 0].
        // Row 3: h = [2, -1, 0.25, -0.25] -> relu [2, 0, 0.25, 0] -> [2.5, 2].
        let input = try Tensor(rows: [[1, 2, 3], [-1, 0.5, -3], [2, 0, -0.25]])
        let session = try model.makeSession()
        let out = try session.run([input])
        #expect(out.count == 1)
        #expect(out[0].shape == [3, 2])
        #expect(out[0].values == [9.75, 2, 0.25, 0, 2.5, 2])
        #expect(out[0].row(2) == [2.5, 2])
        #expect(out[0].rowCount == 3)
    }

    @Test("any batch size works with one session", arguments: [1, 2, 3, 7, 64, 5, 1, 0])
    func dynamicBatch(rows: Int) throws {
        let session = try model.makeSession()
        for seed in [UInt64(1), 2, 3] {
            let x = testFeatures(rows: rows, columns: 3, seed: seed &* UInt64(rows))
            let out = try session.run(features: x, rows: rows)
            #expect(out[0].shape == [rows, 2])
            expectClose(out[0].values, TestMLP.reference(x, rows: rows))
            // The Tensor path gives the same answer as the flat-buffer path.
            let viaTensor = try session.run([Tensor(shape: [rows, 3], values: x)])
            #expect(viaTensor == out)
        }
    }

    @Test("one session serves growing and shrinking batches in turn")
    func batchSequence() throws {
        let session = try model.makeSession()
        for rows in [4, 1, 16, 2, 16, 3] {
            let x = testFeatures(rows: rows, columns: 3, seed: UInt64(rows) + 11)
            let out = try session.run(features: x, rows: rows)
            expectClose(out[0].values, TestMLP.reference(x, rows: rows))
        }
    }

    @Test("a wrong input shape is a shape error and the session stays usable", arguments: [
        [2, 4], [3], [1, 3, 1],
    ])
    func wrongShape(shape: [Int]) throws {
        let session = try model.makeSession()
        let good = try Tensor(rows: [[1, 2, 3]])
        #expect(try session.run([good])[0].values == [9.75, 2])

        let count = shape.reduce(1, *)
        let bad = try Tensor(shape: shape, values: [Float](repeating: 1, count: count))
        let error = #expect(throws: KeelError.self) { try session.run([bad]) }
        #expect(error?.code == .shape)
        #expect(error?.message.contains("features") == true)

        #expect(try session.run([good])[0].values == [9.75, 2])
        #expect(try session.run(features: [2, 0, -0.25, 1, 2, 3], rows: 2)[0].values == [2.5, 2, 9.75, 2])
    }

    @Test("wrong input counts and flat buffers are invalid arguments")
    func wrongCounts() throws {
        let session = try model.makeSession()
        let x = try Tensor(rows: [[1, 2, 3]])
        #expect(throws: KeelError(code: .invalidArgument,
                                  message: "2 input tensors given, the model has 1 (features)")) {
            try session.run([x, x])
        }
        let error = #expect(throws: KeelError.self) { try session.run([]) }
        #expect(error?.code == .invalidArgument)
        let split = #expect(throws: KeelError.self) { try session.run(features: [1, 2, 3, 4], rows: 3) }
        #expect(split?.code == .invalidArgument)
        let negative = #expect(throws: KeelError.self) { try session.run(features: [], rows: -1) }
        #expect(negative?.code == .invalidArgument)
        #expect(try session.run([x])[0].values == [9.75, 2])
    }

    @Test("tensors validate their shape")
    func tensorValidation() throws {
        #expect(throws: KeelError.self) { try Tensor(shape: [2, 3], values: [1, 2, 3, 4, 5]) }
        #expect(throws: KeelError.self) { try Tensor(shape: [-1, 3], values: []) }
        #expect(throws: KeelError.self) { try Tensor(shape: [Int.max, 3], values: []) }
        #expect(throws: KeelError.self) { try Tensor(shape: Array(repeating: 1, count: 9), values: [1]) }
        #expect(throws: KeelError.self) { try Tensor(rows: [[1, 2], [3]]) }
        let t = try Tensor(shape: [2, 2], values: [1, 2, 3, 4])
        #expect(t.row(1) == [3, 4])
        #expect(t.description == "float32[2, 2]")
        #expect(try Tensor(shape: [], values: [5]).values == [5])
        #expect(try Tensor(shape: [0, 3], values: []).rowCount == 0)
    }

    @Test("a session keeps its model alive")
    func sessionRetainsModel() throws {
        var session: Session?
        do {
            let local = try Model(bytes: TestMLP.bytes)
            session = try local.makeSession()
        }
        let out = try #require(session).run(features: [1, 2, 3], rows: 1)
        #expect(out[0].values == [9.75, 2])
        #expect(session?.model.kind == "test-mlp")
    }

    @Test("a memory limit below the working set is a limit error")
    func memoryLimit() throws {
        let session = try model.makeSession()
        try session.setMemoryLimit(bytes: 64)
        let x = testFeatures(rows: 1000, columns: 3, seed: 5)
        let error = #expect(throws: KeelError.self) { try session.run(features: x, rows: 1000) }
        #expect(error?.code == .limit)
        try session.setMemoryLimit(bytes: 0)
        let out = try session.run(features: x, rows: 1000)
        expectClose(out[0].values, TestMLP.reference(x, rows: 1000))
    }

    @Test("one model, many tasks, one session each")
    func concurrentSessions() async throws {
        let model = self.model
        let failures = await withTaskGroup(of: Int.self) { group in
            for task in 0..<8 {
                group.addTask {
                    var failures = 0
                    guard let session = try? model.makeSession() else { return 1 }
                    for i in 0..<40 {
                        let rows = 1 + (task * 7 + i) % 23
                        let x = testFeatures(rows: rows, columns: 3, seed: UInt64(task * 1000 + i + 1))
                        guard let out = try? session.run(features: x, rows: rows) else {
                            failures += 1
                            continue
                        }
                        let expected = TestMLP.reference(x, rows: rows)
                        if out[0].shape != [rows, 2]
                            || zip(out[0].values, expected).contains(where: { abs($0 - $1) > 1e-5 * max(1, abs($1)) })
                        {
                            failures += 1
                        }
                    }
                    return failures
                }
            }
            return await group.reduce(0, +)
        }
        #expect(failures == 0)
    }
}
