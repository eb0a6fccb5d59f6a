import ArgumentParser
import Foundation
import KeelServer
import Logging

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the Keel server: gRPC, the framed TCP protocol and Prometheus metrics.",
        discussion: """
            Loads the latest version of every model under --models \
            (models/<name>/<version>/model.onnx), serves the keel.v1 API on both \
            transports, and watches the repository: a new version directory or a \
            replaced file is validated (decode, ops, features, a test inference) \
            and swapped in atomically; a bad file leaves the running model serving.

            Settings come from, lowest to highest precedence: defaults, a JSON \
            config file (--config), KEEL_* environment variables, flags. \
            Environment variables: \(ServerConfig.settings.map(\.env).joined(separator: ", ")).

            SIGTERM or SIGINT: stop accepting, finish requests in flight, exit 0.
            """
    )

    @Option(help: "JSON config file of settings (keys: \(ServerConfig.settings.map(\.key).joined(separator: ", "))).")
    var config: String?

    @Option(help: "Address to listen on (default 127.0.0.1).")
    var host: String?

    @Option(name: .customLong("grpc-port"), help: "gRPC port (default 50051; 0 = any free port).")
    var grpcPort: Int?

    @Option(name: .customLong("tcp-port"), help: "Framed TCP port (default 50052; 0 = any free port).")
    var tcpPort: Int?

    @Option(name: .customLong("metrics-port"), help: "Prometheus /metrics port (default 9090; 0 = any free port).")
    var metricsPort: Int?

    @Option(help: "Model repository directory (default ./models).")
    var models: String?

    @Option(name: .customLong("max-message-bytes"), help: "Largest request payload in bytes (default 4 MiB).")
    var maxMessageBytes: Int?

    @Option(name: .customLong("max-in-flight-bytes"),
            help: "Request bytes held by requests in flight, per transport (default 256 MiB).")
    var maxInFlightBytes: Int?

    @Option(name: .customLong("default-deadline-ms"), help: "Deadline of requests that carry none (default 1000).")
    var defaultDeadlineMs: Int?

    @Option(name: .customLong("max-concurrent-requests"), help: "Requests executing at once (default 4).")
    var maxConcurrentRequests: Int?

    @Option(name: .customLong("max-queued-requests"), help: "Requests waiting before RESOURCE_EXHAUSTED (default 1024).")
    var maxQueuedRequests: Int?

    @Option(name: .customLong("model-poll-interval-ms"), help: "How often to look for new model files (default 1000).")
    var modelPollIntervalMs: Int?

    @Option(name: .customLong("event-loop-threads"),
            help: "I/O threads of each transport, framed TCP and gRPC (default 1; requests run elsewhere).")
    var eventLoopThreads: Int?

    @Option(name: .customLong("audit-db"), help: "SQLite audit trail file (default ./keel-audit.sqlite).")
    var auditDb: String?

    @Option(name: .customLong("audit-sync"), help: "Audit durability: full (default; survives power loss) or normal.")
    var auditSync: String?

    @Option(name: .customLong("audit-wal-max-bytes"),
            help: "Audit WAL bytes in use past which it is restarted even under load, stalling commits (default 4 GiB).")
    var auditWalMaxBytes: Int?

    @Option(name: .customLong("approval-expiry-minutes"), help: "How long a pending decision waits (default 1440).")
    var approvalExpiryMinutes: Int?

    @Option(name: .customLong("approval-turnover-above"),
            help: "Approval when one-way turnover exceeds this fraction of the portfolio, or off (default 0.2).")
    var approvalTurnoverAbove: String?

    @Option(name: .customLong("approval-order-share-above"),
            help: "Approval when one order exceeds this fraction of the portfolio, or off (default 0.1).")
    var approvalOrderShareAbove: String?

    @Option(name: .customLong("approval-volatility-rise-above"),
            help: "Approval when portfolio volatility rises by more than this, or off (default 0.01 = 1 point).")
    var approvalVolatilityRiseAbove: String?

    @Option(name: .customLong("approval-max-pending"),
            help: "Most decisions waiting for approval at once; beyond it RESOURCE_EXHAUSTED (default 10000).")
    var approvalMaxPending: Int?

    @Option(name: .customLong("approval-first-rebalance"),
            help: "Approval of an account's first rebalance: true (default) or false.")
    var approvalFirstRebalance: String?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical (default info).")
    var logLevel: String = "info"

    @Flag(name: .customLong("json-logs"), help: "Log one JSON object per line instead of text.")
    var jsonLogs = false

    func resolvedConfig(environment: [String: String]) throws(ConfigError) -> ServerConfig {
        var c = ServerConfig()
        if let path = config {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw ConfigError("cannot read config file '\(path)'")
            }
            try c.apply(json: data, source: path)
        }
        try c.apply(environment: environment)
        let flags: [(String, String?)] = [
            ("host", host), ("grpcPort", grpcPort.map(String.init)), ("tcpPort", tcpPort.map(String.init)),
            ("metricsPort", metricsPort.map(String.init)), ("models", models),
            ("maxMessageBytes", maxMessageBytes.map(String.init)),
            ("maxInFlightBytes", maxInFlightBytes.map(String.init)),
            ("defaultDeadlineMs", defaultDeadlineMs.map(String.init)),
            ("maxConcurrentRequests", maxConcurrentRequests.map(String.init)),
            ("maxQueuedRequests", maxQueuedRequests.map(String.init)),
            ("modelPollIntervalMs", modelPollIntervalMs.map(String.init)),
            ("eventLoopThreads", eventLoopThreads.map(String.init)),
            ("auditDb", auditDb), ("auditSync", auditSync),
            ("auditWalMaxBytes", auditWalMaxBytes.map(String.init)),
            ("approvalExpiryMinutes", approvalExpiryMinutes.map(String.init)),
            ("approvalTurnoverAbove", approvalTurnoverAbove), ("approvalOrderShareAbove", approvalOrderShareAbove),
            ("approvalVolatilityRiseAbove", approvalVolatilityRiseAbove),
            ("approvalFirstRebalance", approvalFirstRebalance),
            ("approvalMaxPending", approvalMaxPending.map(String.init)),
        ]
        for (key, value) in flags {
            if let value { try c.set(key, value, source: "--\(Self.flagName(key))") }
        }
        try c.validate()
        return c
    }

    static func flagName(_ key: String) -> String {
        var out = ""
        for ch in key {
            if ch.isUppercase { out += "-" + ch.lowercased() } else { out.append(ch) }
        }
        return out
    }

    func run() async throws {
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
        }
        let cfg: ServerConfig
        do {
            cfg = try resolvedConfig(environment: ProcessInfo.processInfo.environment)
        } catch {
            throw fail(error.description)
        }
        KeelLogging.bootstrap(level: level, json: jsonLogs)
        let logger = Logger(label: "keel.server")
        do {
            try await KeelServerRunner(config: cfg, logger: logger).runUntilSignalled()
        } catch {
            throw fail("server stopped: \(error)")
        }
    }
}
