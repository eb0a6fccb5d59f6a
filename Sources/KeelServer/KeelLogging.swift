import Foundation
import KeelAPI
import KeelServing
import Logging

/// Structured logs on standard error: `2026-11-21T12:00:00.123Z info keel.server: message key=value`,
/// or with `json: true` one JSON object per line (`ts`, `level`, `logger`, `msg`, metadata keys).
public enum KeelLogging {

    /// Installs the handler for the process (swift-log allows one bootstrap).
    public static func bootstrap(level: Logger.Level, json: Bool) {
        LoggingSystem.bootstrap { label in
            var h = StructuredLogHandler(label: label, json: json)
            h.logLevel = level
            return h
        }
    }
}

public struct StructuredLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    public let label: String
    public let json: Bool

    public init(label: String, json: Bool) {
        self.label = label
        self.json = json
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { _, new in new } }
        let ts = Date().formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true))
        var line: String
        if json {
            var fields: [(String, String)] = [("ts", ts), ("level", "\(event.level)"), ("logger", label),
                                              ("msg", "\(event.message)")]
            for (key, value) in all.sorted(by: { $0.key < $1.key }) { fields.append((key, "\(value)")) }
            line = "{" + fields.map { "\(jsonQuoted($0.0)):\(jsonQuoted($0.1))" }.joined(separator: ",") + "}"
        } else {
            line = "\(ts) \(event.level) \(label): \(event.message)"
            for (key, value) in all.sorted(by: { $0.key < $1.key }) { line += " \(key)=\(value)" }
        }
        line += "\n"
        FileHandle.standardError.write(Data(line.utf8))
    }
}
