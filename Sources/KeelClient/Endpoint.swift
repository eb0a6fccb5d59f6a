import Foundation

/// Where a Keel server listens: `grpc://HOST:PORT` or `tcp://HOST:PORT` (the framed protocol).
public struct Endpoint: Sendable, Equatable, CustomStringConvertible {
    public enum Transport: String, Sendable { case grpc, tcp }

    public var transport: Transport
    public var host: String
    public var port: Int

    public init(transport: Transport, host: String, port: Int) {
        self.transport = transport
        self.host = host
        self.port = port
    }

    /// Parses `grpc://127.0.0.1:50051`, `tcp://localhost:50052` or `[::1]` forms.
    public init(parsing text: String) throws(EndpointError) {
        guard let schemeEnd = text.range(of: "://") else {
            throw EndpointError(text: text, reason: "expected grpc://HOST:PORT or tcp://HOST:PORT")
        }
        guard let transport = Transport(rawValue: String(text[..<schemeEnd.lowerBound]).lowercased()) else {
            throw EndpointError(text: text, reason: "the scheme must be grpc or tcp")
        }
        let rest = text[schemeEnd.upperBound...]
        let hostPart: Substring
        let portPart: Substring
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]"), rest[rest.index(after: close)...].hasPrefix(":") else {
                throw EndpointError(text: text, reason: "an IPv6 host needs the form [ADDRESS]:PORT")
            }
            hostPart = rest[rest.index(after: rest.startIndex)..<close]
            portPart = rest[rest.index(close, offsetBy: 2)...]
        } else {
            guard let colon = rest.lastIndex(of: ":") else {
                throw EndpointError(text: text, reason: "missing :PORT")
            }
            hostPart = rest[..<colon]
            portPart = rest[rest.index(after: colon)...]
        }
        guard !hostPart.isEmpty else { throw EndpointError(text: text, reason: "missing host") }
        guard let port = Int(portPart), (1...65535).contains(port) else {
            throw EndpointError(text: text, reason: "port must be a number from 1 to 65535")
        }
        self.init(transport: transport, host: String(hostPart), port: port)
    }

    public var description: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return "\(transport.rawValue)://\(h):\(port)"
    }
}

public struct EndpointError: Error, Sendable, CustomStringConvertible {
    public var text: String
    public var reason: String
    public var description: String { "invalid target '\(text)': \(reason)" }
}
