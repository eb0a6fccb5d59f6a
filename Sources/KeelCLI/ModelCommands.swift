import ArgumentParser
import KeelAPI
import KeelInference
import KeelServing

struct ModelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "model",
        abstract: "Inspect or check model files.",
        discussion: """
            Both subcommands load the model exactly as a serving process would: the \
            file is decoded, every operator, attribute and shape is validated, and \
            its SHA-256 is computed. Nothing is run.
            """,
        subcommands: [Inspect.self, Check.self]
    )
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case text
    case json
}

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a summary of a model's graph.",
        discussion: """
            Shows the backend, the producer, the inputs and outputs with their \
            dimensions (dynamic dimensions by name, e.g. `assets`), a histogram of \
            operator types, the node and parameter counts, the metadata and the \
            SHA-256 of the file.

            --format json prints one JSON object with the keys file, backend, \
            producer, kind, sha256, inputs, outputs, features, nodeCount, \
            parameterCount, ops, nodes and metadata (objects keep file order).
            """
    )

    @Argument(help: ArgumentHelp("The model file.", valueName: "file"))
    var file: String

    @Option(help: "Output format.")
    var format: OutputFormat = .text

    @OptionGroup var backendOptions: BackendOptions

    func run() throws {
        let model = try backendOptions.loadModel(file)
        switch format {
        case .text: print(textSummary(model), terminator: "")
        case .json: print(jsonSummary(model))
        }
    }

    func textSummary(_ model: Model) -> String {
        var out = ""
        func line(_ label: String, _ value: String) {
            out += label.padded(to: 12) + value + "\n"
        }
        let backend = model.backend
        line("model:", file)
        line("backend:", "\(backend.name) \(backend.version) (ABI \(backend.abiVersion))")
        line("producer:", model.producer ?? "-")
        for (key, label) in [("opset", "opset:"), ("ir_version", "ir version:"), ("format", "format:"),
                             ("kernels", "kernels:")] {
            if let value = model.property(key) { line(label, value) }
        }
        if let kind = model.kind { line("kind:", kind) }
        line("sha256:", model.sha256)
        func tensors(_ label: String, _ infos: [TensorInfo]) {
            out += label + "\n"
            let width = max(infos.map(\.name.count).max() ?? 0, 8) + 2
            for info in infos {
                out += "  " + info.name.padded(to: width)
                    + "\(info.elementTypeName)[\(info.dimDescriptions.joined(separator: ", "))]\n"
            }
        }
        tensors("inputs:", model.inputs)
        tensors("outputs:", model.outputs)
        if let features = model.featureNames {
            line("features:", "\(features.count): " + features.joined(separator: ", "))
        }
        line("nodes:", String(model.nodes.count))
        line("parameters:", String(model.parameterCount))
        out += "ops:\n"
        let histogram = model.opHistogram
        let opWidth = max(histogram.map(\.opType.count).max() ?? 0, 8) + 2
        for (op, count) in histogram {
            out += "  " + op.padded(to: opWidth) + "\(count)\n"
        }
        out += "metadata:\n"
        if model.metadataEntries.isEmpty { out += "  (none)\n" }
        for entry in model.metadataEntries {
            out += "  \(entry.key) = \(entry.value)\n"
        }
        return out
    }

    func jsonSummary(_ model: Model) -> String {
        func tensor(_ info: TensorInfo) -> JSON {
            .object([
                ("name", .string(info.name)),
                ("type", .string(info.elementTypeName)),
                ("dims", .array(zip(info.dims, info.dimNames).map { dim, label in
                    dim.map { JSON.int(Int64($0)) } ?? label.map(JSON.string) ?? .null
                })),
            ])
        }
        let backend = model.backend
        let summary = JSON.object([
            ("file", .string(file)),
            ("backend", .object([
                ("name", .string(backend.name)),
                ("version", .string(backend.version)),
                ("abi", .string(backend.abiVersion.description)),
                ("builtin", .bool(backend.isBuiltin)),
            ])),
            ("producer", model.producer.map(JSON.string) ?? .null),
            ("properties", .object(model.properties.map { ($0.key, JSON.string($0.value)) })),
            ("kind", model.kind.map(JSON.string) ?? .null),
            ("sha256", .string(model.sha256)),
            ("inputs", .array(model.inputs.map(tensor))),
            ("outputs", .array(model.outputs.map(tensor))),
            ("features", model.featureNames.map { .array($0.map(JSON.string)) } ?? .null),
            ("nodeCount", .int(Int64(model.nodes.count))),
            ("parameterCount", .uint(model.parameterCount)),
            ("ops", .object(model.opHistogram.map { ($0.opType, JSON.int(Int64($0.count))) })),
            ("nodes", .array(model.nodes.map {
                .object([("name", .string($0.name)), ("opType", .string($0.opType))])
            })),
            ("metadata", .object(model.metadataEntries.map { ($0.key, JSON.string($0.value)) })),
        ])
        return summary.rendered()
    }
}

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate a model file.",
        discussion: """
            Loads and validates the model. On success prints \
            `ok: <file> sha256=<hex>` and exits with status 0; otherwise prints \
            `error: <file>: <error kind>: <details>` to standard error and exits \
            with status 1. Error kinds: I/O error, parse error, invalid model, \
            unsupported, shape error, limit exceeded, plugin error, ...
            """
    )

    @Argument(help: ArgumentHelp("The model file.", valueName: "file"))
    var file: String

    @OptionGroup var backendOptions: BackendOptions

    func run() throws {
        let model = try backendOptions.loadModel(file)
        print("ok: \(file) sha256=\(model.sha256)")
    }
}

// MARK: - JSON

/// A JSON value whose objects keep their members in the given order, rendered
/// deterministically (two-space indentation). A repeated object key keeps its
/// first value.
indirect enum JSON {
    case null
    case bool(Bool)
    case int(Int64)
    case uint(UInt64)
    case string(String)
    case array([JSON])
    case object([(String, JSON)])

    func rendered() -> String {
        var out = ""
        write(to: &out, indent: 0)
        return out
    }

    private func write(to out: inout String, indent: Int) {
        let pad = String(repeating: "  ", count: indent + 1)
        let closePad = String(repeating: "  ", count: indent)
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let n): out += String(n)
        case .uint(let n): out += String(n)
        case .string(let s): out += jsonQuoted(s)
        case .array(let items):
            if items.isEmpty { out += "[]"; return }
            out += "[\n"
            for (i, item) in items.enumerated() {
                out += pad
                item.write(to: &out, indent: indent + 1)
                out += i + 1 < items.count ? ",\n" : "\n"
            }
            out += closePad + "]"
        case .object(let members):
            var seen = Set<String>()
            let unique = members.filter { seen.insert($0.0).inserted }
            if unique.isEmpty { out += "{}"; return }
            out += "{\n"
            for (i, (key, value)) in unique.enumerated() {
                out += pad
                out += jsonQuoted(key)
                out += ": "
                value.write(to: &out, indent: indent + 1)
                out += i + 1 < unique.count ? ",\n" : "\n"
            }
            out += closePad + "}"
        }
    }
}

extension String {
    /// The string followed by spaces up to `width` characters (unchanged if longer).
    func padded(to width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}
