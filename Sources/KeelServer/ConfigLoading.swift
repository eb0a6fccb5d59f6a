import Foundation

/// A configuration value that is missing, misspelt or out of range; the
/// message names the setting and where it came from.
public struct ConfigError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension ServerConfig {
    /// The settings, their JSON keys in a config file and their environment
    /// variables (docs/OPERATIONS.md lists them).
    public static let settings: [(key: String, env: String, help: String)] = [
        ("host", "KEEL_HOST", "address to listen on"),
        ("grpcPort", "KEEL_GRPC_PORT", "gRPC port (0: any free port)"),
        ("tcpPort", "KEEL_TCP_PORT", "framed TCP port (0: any free port)"),
        ("metricsPort", "KEEL_METRICS_PORT", "Prometheus metrics port (0: any free port)"),
        ("models", "KEEL_MODELS", "model repository directory"),
        ("maxMessageBytes", "KEEL_MAX_MESSAGE_BYTES", "largest request payload"),
        ("maxInFlightBytes", "KEEL_MAX_IN_FLIGHT_BYTES", "request bytes held by requests in flight, per transport"),
        ("defaultDeadlineMs", "KEEL_DEFAULT_DEADLINE_MS", "deadline of requests without their own"),
        ("maxConcurrentRequests", "KEEL_MAX_CONCURRENT_REQUESTS", "requests executing at once"),
        ("maxQueuedRequests", "KEEL_MAX_QUEUED_REQUESTS", "requests waiting before RESOURCE_EXHAUSTED"),
        ("modelPollIntervalMs", "KEEL_MODEL_POLL_INTERVAL_MS", "how often to look for new model files"),
        ("blasThreads", "KEEL_BLAS_THREADS", "OpenBLAS threads per product"),
        ("eventLoopThreads", "KEEL_EVENT_LOOP_THREADS", "I/O threads of each transport"),
        ("auditDb", "KEEL_AUDIT_DB", "SQLite audit trail file"),
        ("auditSync", "KEEL_AUDIT_SYNC", "audit durability: full or normal"),
        ("auditWalMaxBytes", "KEEL_AUDIT_WAL_MAX_BYTES",
         "audit WAL bytes in use past which it is restarted even under load (a stall of up to hundreds of ms)"),
        ("approvalExpiryMinutes", "KEEL_APPROVAL_EXPIRY_MINUTES", "how long a pending decision waits"),
        ("approvalTurnoverAbove", "KEEL_APPROVAL_TURNOVER_ABOVE",
         "approval when one-way turnover exceeds this fraction of the portfolio, or off"),
        ("approvalOrderShareAbove", "KEEL_APPROVAL_ORDER_SHARE_ABOVE",
         "approval when one order exceeds this fraction of the portfolio, or off"),
        ("approvalVolatilityRiseAbove", "KEEL_APPROVAL_VOLATILITY_RISE_ABOVE",
         "approval when portfolio volatility rises by more than this (0.01 = 1 point), or off"),
        ("approvalFirstRebalance", "KEEL_APPROVAL_FIRST_REBALANCE", "approval of an account's first rebalance: true or false"),
        ("approvalMaxPending", "KEEL_APPROVAL_MAX_PENDING", "most decisions waiting for approval at once"),
    ]

    /// Applies a JSON object of settings (a config file). Unknown keys and
    /// wrong types are errors naming the key and `source`.
    public mutating func apply(json data: Data, source: String) throws(ConfigError) {
        let dict: [String: JSONScalar]
        do {
            dict = try JSONDecoder().decode([String: JSONScalar].self, from: data)
        } catch {
            throw ConfigError("\(source): expected a JSON object whose values are strings, numbers or booleans (\(error))")
        }
        for key in dict.keys.sorted() {
            guard let value = dict[key] else { continue }
            try set(key, value.text, source: "\(source): '\(key)'")
        }
    }

    /// Applies the `KEEL_*` environment variables that are set.
    public mutating func apply(environment: [String: String]) throws(ConfigError) {
        for setting in Self.settings {
            if let value = environment[setting.env], !value.isEmpty {
                try set(setting.key, value, source: "environment variable \(setting.env)")
            }
        }
    }

    /// Sets one setting from text. `source` names it in errors.
    public mutating func set(_ key: String, _ text: String, source: String) throws(ConfigError) {
        func int(_ range: ClosedRange<Int>) throws(ConfigError) -> Int {
            guard let v = Int(text.trimmingCharacters(in: .whitespaces)), range.contains(v) else {
                throw ConfigError("\(source) must be a whole number from \(range.lowerBound) to \(range.upperBound), got '\(text)'")
            }
            return v
        }
        /// A fraction from 0 to 1, or `off` (nil: the rule never triggers).
        func fractionOrOff() throws(ConfigError) -> Double? {
            let t = text.trimmingCharacters(in: .whitespaces)
            if t.lowercased() == "off" { return nil }
            guard let v = Double(t), v.isFinite, v >= 0, v <= 1 else {
                throw ConfigError("\(source) must be a fraction from 0 to 1 (0.2 = 20 %) or off, got '\(text)'")
            }
            return v
        }
        switch key {
        case "host":
            guard !text.isEmpty else { throw ConfigError("\(source) must not be empty") }
            host = text
        case "grpcPort": grpcPort = try int(0...65535)
        case "tcpPort": tcpPort = try int(0...65535)
        case "metricsPort": metricsPort = try int(0...65535)
        case "models":
            guard !text.isEmpty else { throw ConfigError("\(source) must not be empty") }
            modelsDirectory = text
        case "maxMessageBytes": maxMessageBytes = try int(1024...(1 << 30))
        case "maxInFlightBytes": maxInFlightBytes = try int(1024...(1 << 40))
        case "defaultDeadlineMs": defaultDeadline = .milliseconds(try int(1...3_600_000))
        case "maxConcurrentRequests": maxConcurrentRequests = try int(1...4096)
        case "maxQueuedRequests": maxQueuedRequests = try int(0...1_000_000)
        case "modelPollIntervalMs": modelPollInterval = .milliseconds(try int(10...3_600_000))
        case "blasThreads": blasThreads = try int(1...1024)
        case "eventLoopThreads": eventLoopThreads = try int(1...256)
        case "auditDb":
            guard !text.isEmpty else { throw ConfigError("\(source) must not be empty") }
            auditDatabase = text
        case "auditSync":
            guard text == "full" || text == "normal" else {
                throw ConfigError("\(source) must be full or normal, got '\(text)'")
            }
            auditSync = text
        case "auditWalMaxBytes": auditWALMaxBytes = try int((1 << 20)...(1 << 50))
        case "approvalExpiryMinutes": approvalExpiry = .seconds(60 * (try int(1...525_600)))
        case "approvalTurnoverAbove": approvalRules.turnoverAbove = try fractionOrOff()
        case "approvalOrderShareAbove": approvalRules.orderShareAbove = try fractionOrOff()
        case "approvalVolatilityRiseAbove": approvalRules.volatilityRiseAbove = try fractionOrOff()
        case "approvalMaxPending": approvalRules.maxPending = try int(1...10_000_000)
        case "approvalFirstRebalance":
            switch text.trimmingCharacters(in: .whitespaces).lowercased() {
            case "true": approvalRules.firstRebalance = true
            case "false": approvalRules.firstRebalance = false
            default: throw ConfigError("\(source) must be true or false, got '\(text)'")
            }
        default:
            let known = Self.settings.map(\.key).joined(separator: ", ")
            throw ConfigError("\(source): unknown setting (known: \(known))")
        }
    }

    /// Ports must differ unless 0 (any free port).
    public func validate() throws(ConfigError) {
        let ports = [("grpcPort", grpcPort), ("tcpPort", tcpPort), ("metricsPort", metricsPort)].filter { $0.1 != 0 }
        for i in ports.indices {
            for j in ports.indices where j > i && ports[i].1 == ports[j].1 {
                throw ConfigError("\(ports[i].0) and \(ports[j].0) are both \(ports[i].1)")
            }
        }
    }
}

/// A string, number or boolean in a config file, kept as the text a flag would carry.
private enum JSONScalar: Decodable {
    case text(String)

    var text: String {
        switch self { case .text(let t): t }
    }

    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let i = try? c.decode(Int.self) { self = .text(String(i)); return }
        if let d = try? c.decode(Double.self) { self = .text(String(d)); return }
        if let b = try? c.decode(Bool.self) { self = .text(b ? "true" : "false"); return }
        if let s = try? c.decode(String.self) { self = .text(s); return }
        throw DecodingError.typeMismatch(String.self, .init(codingPath: decoder.codingPath,
                                                            debugDescription: "must be a string, a number or a boolean"))
    }
}
