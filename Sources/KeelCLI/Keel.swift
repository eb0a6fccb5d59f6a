import ArgumentParser
import KeelInference

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

@main
struct Keel: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keel",
        abstract: "Serve, inspect, check and run Keel portfolio-rebalancing models.",
        discussion: """
            Keel runs ONNX models on its own C11 inference core (OpenBLAS), or \
            models of other families through plugin backends loaded with --backend.

            Exit status: 0 on success, 1 when a model or input file is rejected \
            (the reason goes to standard error), 64 for command-line usage errors.

            Examples:
              keel serve --models ./models
              keel call ListModels --target tcp://127.0.0.1:50052
              keel bench --target tcp://127.0.0.1:50052 --assets 100 --rate 5000 --duration 10s
              keel model inspect model.onnx --format json
              keel model check model.onnx
              keel infer --model model.onnx --input assets.csv
              keel infer --model scorer.lin --input assets.csv --backend plugin.so
              keel audit verify --db keel-audit.sqlite
              keel audit export --db keel-audit.sqlite --since 2026-11-01 --format jsonl
            """,
        version: "keel \(KeelCore.version)",
        subcommands: [ModelCommand.self, Infer.self, ServeCommand.self, CallCommand.self, BenchCommand.self, AuditCommand.self,
                      BacktestCommand.self, TaxAlphaCommand.self, TrainCommand.self]
    )
}

/// `--backend PLUGIN.so`, shared by every command that loads a model.
struct BackendOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp(
            "Load the model through the plugin backend in this shared library instead of the built-in ONNX backend.",
            valueName: "plugin.so"))
    var backend: String?

    /// The selected backend, or a printed error and exit status 1.
    func load() throws -> Backend {
        guard let path = backend else { return .builtin }
        do {
            return try Backend(pluginAt: path)
        } catch {
            throw fail(path, error)
        }
    }

    /// Loads the model file through the selected backend.
    func loadModel(_ path: String) throws -> Model {
        let backend = try load()
        do {
            return try Model(contentsOf: path, backend: backend)
        } catch {
            throw fail(path, error)
        }
    }
}

/// Prints `error: <subject>: <code name>: <message>` to standard error and
/// returns the exit code to throw. A message that already starts with the
/// subject does not repeat it.
func fail(_ subject: String, _ error: KeelError) -> ExitCode {
    var message = error.message
    if message.hasPrefix(subject + ": ") { message.removeFirst(subject.count + 2) }
    printError("error: \(subject): \(error.code.name): \(message)")
    return ExitCode(1)
}

/// Prints `error: <text>` to standard error and returns exit code 1.
func fail(_ text: String) -> ExitCode {
    printError("error: \(text)")
    return ExitCode(1)
}

func printError(_ line: String) {
    let bytes = Array((line + "\n").utf8)
    bytes.withUnsafeBytes { raw in
        guard let base = raw.baseAddress else { return }
        var offset = 0
        while offset < raw.count {
            let n = write(2, base + offset, raw.count - offset)
            if n <= 0 { break }
            offset += n
        }
    }
}
