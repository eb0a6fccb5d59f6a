import KeelServing

/// A connection to a Keel server over either transport, as `keel call` and
/// `keel bench` use it: one request's serialized protobuf in, the response's
/// serialized protobuf out, or the server's status (same codes on both transports).
///
/// Implementations are safe to call from many tasks at once; the framed one
/// pipelines concurrent calls over one connection.
public protocol UnaryClient: Sendable {
    /// Sends one request. `timeout` nil means the server's default deadline.
    /// Transport failures (refused, reset, closed) throw ``RPCStatus`` with
    /// ``RPCStatusCode/unavailable``; the server's own errors keep their code.
    func call(_ method: RPCMethod, request: [UInt8], timeout: Duration?) async throws(RPCStatus) -> [UInt8]

    /// Closes the connection; calls still in flight fail with UNAVAILABLE.
    func close() async
}
