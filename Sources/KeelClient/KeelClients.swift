import KeelAPI
import KeelFramedTransport
import KeelServing
import SwiftProtobuf

/// The framed TCP client already has ``UnaryClient``'s exact shape.
extension FramedClient: UnaryClient {}

/// Opening clients by endpoint, and small helpers the bench needs from a server.
public enum KeelClients {
    /// Connects to `endpoint` over its transport: `grpc://` gives a
    /// ``GRPCUnaryClient`` (which connects lazily, on the first call);
    /// `tcp://` gives a connected framed-protocol ``FramedClient`` or throws
    /// UNAVAILABLE.
    public static func connect(_ endpoint: Endpoint) async throws(RPCStatus) -> any UnaryClient {
        switch endpoint.transport {
        case .grpc:
            return try GRPCUnaryClient(host: endpoint.host, port: endpoint.port)
        case .tcp:
            return try await FramedClient.connect(host: endpoint.host, port: endpoint.port)
        }
    }

    /// Publishes `batch` (PublishMarketData) and returns how many updates
    /// the server accepted, or throws its status.
    public static func publish(_ batch: Keel_V1_PriceUpdateBatch, using client: any UnaryClient,
                               timeout: Duration? = .seconds(30)) async throws(RPCStatus) -> Int64
    {
        let request: [UInt8]
        do { request = try batch.serializedBytes() } catch {
            throw RPCStatus(.internal, "cannot serialize the price updates: \(error)")
        }
        let bytes = try await client.call(.publishMarketData, request: request, timeout: timeout)
        guard let response = try? Keel_V1_PublishMarketDataResponse(serializedBytes: bytes) else {
            throw RPCStatus(.internal, "cannot decode the PublishMarketData response")
        }
        if response.rejected > 0 {
            throw RPCStatus(.invalidArgument, "the server rejected \(response.rejected) price updates: "
                + response.errors.joined(separator: "; "))
        }
        return response.accepted
    }
}
