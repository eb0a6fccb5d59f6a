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

    /// Asks the server for its models (ListModels) and returns the feature
    /// count of the serving version of `model` (by name, else the first model
    /// of kind `policy` when `model` is "policy"); nil when the server does
    /// not say (the caller falls back to its default).
    public static func featureCount(
        of model: String, using client: any UnaryClient, timeout: Duration? = .seconds(5)
    ) async -> Int? {
        let request: [UInt8]
        do {
            request = try Keel_V1_ListModelsRequest().serializedBytes()
        } catch {
            return nil
        }
        guard let bytes = try? await client.call(.listModels, request: request, timeout: timeout),
              let response = try? Keel_V1_ListModelsResponse(serializedBytes: bytes)
        else { return nil }
        return featureCount(of: model, in: response)
    }

    /// The pure part of ``featureCount(of:using:timeout:)``.
    public static func featureCount(of model: String, in response: Keel_V1_ListModelsResponse) -> Int? {
        let named = response.models.filter { $0.ref.name == model }
        let candidates = named.isEmpty && model == "policy"
            ? response.models.filter { $0.kind == "policy" } : named
        let chosen = candidates.first(where: \.serving) ?? candidates.max(by: { $0.ref.version < $1.ref.version })
        guard let info = chosen, !info.features.isEmpty else { return nil }
        return info.features.count
    }
}
