import Foundation
import KeelInference
import Testing

let linearModel = """
    keel-linear 1
    features: a,b,c
    outputs: y1,y2
    weights:
    1 2 3
    -1 0.5 0
    bias: 0.5 -1
    meta keel.kind linear-policy

    """

/// The example CSV as (header, rows of cells).
func exampleCSV() throws -> (header: [String], rows: [[String]]) {
    let text = try String(contentsOfFile: CLI.policyCSV, encoding: .utf8)
    let lines = text.split(separator: "\n").map { $0.split(separator: ",").map(String.init) }
    return (lines[0], Array(lines.dropFirst()))
}

func csv(_ rows: [[String]]) -> String {
    rows.map { $0.joined(separator: ",") }.joined(separator: "\n") + "\n"
}

@Suite("keel command line", .enabled(if: CLI.keel != nil, Comment(rawValue: CLI.keelMissing)))
struct CLITests {
    @Test("--help describes every command", arguments: [
        [], ["model"], ["model", "inspect"], ["model", "check"], ["infer"],
    ])
    func help(command: [String]) throws {
        let result = try CLI.run(command + ["--help"])
        #expect(result.status == 0)
        #expect(result.stdout.contains("OVERVIEW:"))
        #expect(result.stdout.contains("USAGE:"))
        #expect(result.stdout.split(separator: "\n").count > 8, "discussion text expected")
        if command.isEmpty {
            #expect(result.stdout.contains("infer"))
            #expect(result.stdout.contains("model"))
        }
    }

    @Test("usage errors exit with 64")
    func usageError() throws {
        let missing = try CLI.run(["infer", "--model", "x.onnx"])
        #expect(missing.status == 64)
        #expect(missing.stderr.contains("--input"))
        let format = try CLI.run(["model", "inspect", "x.onnx", "--format", "yaml"])
        #expect(format.status == 64)
    }

    @Test("model check accepts a valid model", .enabled(if: CLI.hasPolicyModel))
    func checkValid() throws {
        let result = try CLI.run(["model", "check", CLI.policyModel])
        #expect(result.status == 0)
        let model = try Model(contentsOf: CLI.policyModel)
        #expect(result.stdout == "ok: \(CLI.policyModel) sha256=\(model.sha256)\n")
        #expect(result.stderr.isEmpty)
    }

    @Test("model check rejects a malformed file with its reason")
    func checkInvalid() throws {
        let dir = try CLI.scratchDirectory()
        defer { CLI.remove(dir) }
        let path = dir.appendingPathComponent("broken.onnx").path
        try Data([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).write(
            to: URL(fileURLWithPath: path))
        let result = try CLI.run(["model", "check", path])
        #expect(result.status == 1)
        #expect(result.stdout.isEmpty)
        #expect(result.stderr.hasPrefix("error: \(path): parse error: "))
        #expect(result.stderr.split(separator: "\n").count == 1)
    }

    @Test("model check on a missing file is an I/O error")
    func checkMissing() throws {
        let result = try CLI.run(["model", "check", "/nonexistent/model.onnx"])
        #expect(result.status == 1)
        #expect(result.stderr.hasPrefix("error: /nonexistent/model.onnx: I/O error: "))
    }

    @Test("model inspect --format json", .enabled(if: CLI.hasPolicyModel))
    func inspectJSON() throws {
        let result = try CLI.run(["model", "inspect", CLI.policyModel, "--format", "json"])
        #expect(result.status == 0)
        // Keys come in a fixed order, so the output is stable from run to run.
        #expect(result.stdout.hasPrefix("{\n  \"file\": "))
        #expect(try CLI.run(["model", "inspect", CLI.policyModel, "--format", "json"]).stdout == result.stdout)
        let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8))
        let json = try #require(object as? [String: Any])
        for key in ["file", "backend", "producer", "properties", "kind", "sha256", "inputs", "outputs", "features", "nodeCount",
                    "parameterCount", "ops", "nodes", "metadata"] {
            #expect(json[key] != nil, "missing key \(key)")
        }
        let model = try Model(contentsOf: CLI.policyModel)
        #expect(json["sha256"] as? String == model.sha256)
        #expect(json["kind"] as? String == "policy")
        #expect(json["nodeCount"] as? Int == model.nodes.count)
        #expect((json["parameterCount"] as? NSNumber)?.uint64Value == model.parameterCount)
        let ops = try #require(json["ops"] as? [String: Int])
        #expect(ops == ["Gemm": 3, "Relu": 2])
        let inputs = try #require(json["inputs"] as? [[String: Any]])
        #expect(inputs.first?["name"] as? String == "features")
        let dims = try #require(inputs.first?["dims"] as? [Any])
        #expect(dims.first as? String == "assets")
        #expect(dims.last as? Int == 12)
        let metadata = try #require(json["metadata"] as? [String: String])
        #expect(metadata["keel.kind"] == "policy")
        let backend = try #require(json["backend"] as? [String: Any])
        #expect(backend["name"] as? String == Backend.builtin.name)
    }

    @Test("model inspect prints a text summary", .enabled(if: CLI.hasPolicyModel))
    func inspectText() throws {
        let result = try CLI.run(["model", "inspect", CLI.policyModel])
        #expect(result.status == 0)
        let model = try Model(contentsOf: CLI.policyModel)
        for fragment in ["features  float32[assets, 12]", "score", "Gemm", "Relu", model.sha256, "keel.kind = policy",
                         "parameters: \(model.parameterCount)"] {
            #expect(result.stdout.contains(fragment), "missing \(fragment)")
        }
    }

    @Test("infer matches columns by name, in any order, ignoring extra columns", .enabled(if: CLI.hasPolicyModel))
    func inferByName() throws {
        let dir = try CLI.scratchDirectory()
        defer { CLI.remove(dir) }
        let (header, rows) = try exampleCSV()

        let original = try CLI.run(["infer", "--model", CLI.policyModel, "--input", CLI.policyCSV])
        #expect(original.status == 0)
        #expect(original.stderr.isEmpty)

        // Reversed columns plus a ticker column in front.
        let reordered = [["ticker"] + header.reversed()]
            + rows.enumerated().map { ["T\($0.offset)"] + $0.element.reversed() }
        let path = try CLI.write(csv(reordered), in: dir, name: "reordered.csv")
        let result = try CLI.run(["infer", "--model", CLI.policyModel, "--input", path])
        #expect(result.status == 0)
        #expect(result.stdout == original.stdout)

        // The same numbers as the library computes, one line per row.
        let model = try Model(contentsOf: CLI.policyModel)
        let values = rows.flatMap { $0.compactMap { Float($0) } }
        let out = try model.makeSession().run(features: values, rows: rows.count)[0]
        let expected = (0..<rows.count).map { r in out.row(r).map { String(describing: $0) }.joined(separator: ",") }
        #expect(result.stdout == expected.joined(separator: "\n") + "\n")
    }

    @Test("infer without a header takes columns in order", .enabled(if: CLI.hasPolicyModel))
    func inferWithoutHeader() throws {
        let dir = try CLI.scratchDirectory()
        defer { CLI.remove(dir) }
        let (_, rows) = try exampleCSV()
        let path = try CLI.write(csv(rows), in: dir, name: "plain.csv")
        let original = try CLI.run(["infer", "--model", CLI.policyModel, "--input", CLI.policyCSV])
        let result = try CLI.run(["infer", "--model", CLI.policyModel, "--input", path])
        #expect(result.status == 0)
        #expect(result.stdout == original.stdout)
        #expect(result.stdout.split(separator: "\n").count == rows.count)
    }

    @Test("infer names the missing feature", .enabled(if: CLI.hasPolicyModel))
    func inferMissingFeature() throws {
        let dir = try CLI.scratchDirectory()
        defer { CLI.remove(dir) }
        let (header, rows) = try exampleCSV()
        let path = try CLI.write(csv([Array(header.dropLast())] + rows.map { Array($0.dropLast()) }), in: dir,
                                 name: "short.csv")
        let result = try CLI.run(["infer", "--model", CLI.policyModel, "--input", path])
        #expect(result.status == 1)
        #expect(result.stdout.isEmpty)
        #expect(result.stderr.contains("'\(header.last ?? "")'"))
    }

    @Test("a bad cell is reported with its line and column", arguments: [
        ("a,b,c\n1,2,3\n4,x,6\n", "line 3, column 2 ('b'): 'x' is not a finite number"),
        ("1,2,3\n4,5,nan\n", "line 2, column 3: 'nan' is not a finite number"),
        ("c,a,b\n1,2,3\n\n4,,6\n", "line 4, column 2 ('a'): empty cell"),
        ("1,2,3\n4,5\n", "line 2: 2 columns, expected 3"),
        ("1,2\n", "line 1 has 2 columns, the model expects 3 features"),
        ("a,b,d\n1,2,3\n", "no column for model feature 'c'"),
    ])
    func inferBadInput(text: String, message: String) throws {
        let plugin = try #require(CLI.linearBackend, Comment(rawValue: CLI.linearBackendMissing))
        let dir = try CLI.scratchDirectory()
        defer { CLI.remove(dir) }
        let model = try CLI.write(linearModel, in: dir, name: "scorer.lin")
        let input = try CLI.write(text, in: dir, name: "input.csv")
        let result = try CLI.run(["infer", "--model", model, "--input", input, "--backend", plugin])
        #expect(result.status == 1)
        #expect(result.stdout.isEmpty)
        #expect(result.stderr.hasPrefix("error: \(input): "))
        #expect(result.stderr.contains(message), "\(result.stderr)")
    }

    @Test("infer through a plugin backend prints exact scores")
    func inferPlugin() throws {
        let plugin = try #require(CLI.linearBackend, Comment(rawValue: CLI.linearBackendMissing))
        let dir = try CLI.scratchDirectory()
        defer { CLI.remove(dir) }
        let model = try CLI.write(linearModel, in: dir, name: "scorer.lin")
        // By name (reordered, quoted header cell, CRLF) and positionally.
        let named = try CLI.write("ticker,\"c\",b,a\r\nAAA,1,1,1\r\nBBB,1,0,2\r\n", in: dir, name: "named.csv")
        let plain = try CLI.write("1,1,1\n2,0,1\n", in: dir, name: "plain.csv")
        for input in [named, plain] {
            let result = try CLI.run(["infer", "--model", model, "--input", input, "--backend", plugin])
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stdout == "6.5,-1.5\n5.5,-3.0\n")
        }
        let check = try CLI.run(["model", "check", model, "--backend", plugin])
        #expect(check.status == 0)
        #expect(check.stdout.hasPrefix("ok: \(model) sha256="))

        let inspect = try CLI.run(["model", "inspect", model, "--backend", plugin, "--format", "json"])
        let json = try #require(try JSONSerialization.jsonObject(with: Data(inspect.stdout.utf8)) as? [String: Any])
        #expect((json["backend"] as? [String: Any])?["name"] as? String == "keel-linear")
        #expect(json["features"] as? [String] == ["a", "b", "c"])
    }

    @Test("a linear file through the ONNX backend, and a missing plugin, are clear errors")
    func wrongBackend() throws {
        let dir = try CLI.scratchDirectory()
        defer { CLI.remove(dir) }
        let model = try CLI.write(linearModel, in: dir, name: "scorer.lin")
        let onnx = try CLI.run(["model", "check", model])
        #expect(onnx.status == 1)
        #expect(onnx.stderr.hasPrefix("error: \(model): parse error: "))
        let plugin = try CLI.run(["model", "check", model, "--backend", "/nonexistent/plugin.so"])
        #expect(plugin.status == 1)
        #expect(plugin.stderr.hasPrefix("error: /nonexistent/plugin.so: plugin error: "))
    }
}
