import ArgumentParser
import Foundation
import KeelAPI
import KeelClient
import KeelServing
import SwiftProtobuf

struct CallCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "call",
        abstract: "Send one request to a Keel server and print the response as JSON.",
        discussion: """
            The request is written as protobuf JSON (the proto3 JSON mapping: field \
            names in lowerCamelCase or as in the .proto file). METHOD is the method's \
            name (Rebalance, ListModels, ...), its full name \
            (keel.v1.ModelAdmin/ListModels) or its framed-protocol id.

            Examples:
              keel call ListModels
              keel call Check --json '{"service": "keel.v1.Rebalancer"}'
              keel call Rebalance --json @request.json --target grpc://127.0.0.1:50051

            Exit status: 0 with the response on standard output; 1 with the server's \
            status code and message on standard error; 64 for usage errors.
            """
    )

    @Argument(help: "Method: \(RPCMethod.allCases.map(\.name).joined(separator: ", ")).")
    var method: String

    @Option(name: .long, help: "The request as protobuf JSON, or @FILE to read it from a file (default: {}).")
    var json: String = "{}"

    @Option(name: .long, help: "Server: grpc://HOST:PORT or tcp://HOST:PORT (framed protocol).")
    var target: String = "tcp://127.0.0.1:50052"

    @Option(name: .long, help: "Deadline in milliseconds (default: the server's, 1 s).")
    var timeoutMs: Int?

    func run() async throws {
        guard let rpc = RPCMethod(named: method) else {
            throw ValidationError("unknown method '\(method)'; one of: \(RPCMethod.allCases.map(\.name).joined(separator: ", "))")
        }
        let endpoint: Endpoint
        do { endpoint = try Endpoint(parsing: target) } catch { throw ValidationError(error.description) }
        if let t = timeoutMs, t <= 0 { throw ValidationError("--timeout-ms must be positive") }

        var text = json
        if text.hasPrefix("@") {
            let path = String(text.dropFirst())
            guard let data = FileManager.default.contents(atPath: path) else {
                throw fail("cannot read request file '\(path)'")
            }
            text = String(decoding: data, as: UTF8.self)
        }
        let types = rpc.messageTypes
        let request: any SwiftProtobuf.Message
        do {
            request = try types.request.init(jsonString: text)
        } catch {
            throw fail("the request is not valid JSON for \(types.request.protoMessageName): \(error)")
        }
        let bytes: [UInt8] = try request.serializedBytes()

        let client: any UnaryClient
        do {
            client = try await KeelClients.connect(endpoint)
        } catch {
            throw fail("cannot connect to \(endpoint): \(error)")
        }
        let result: Result<[UInt8], RPCStatus>
        do {
            result = .success(try await client.call(rpc, request: bytes, timeout: timeoutMs.map { .milliseconds($0) }))
        } catch {
            result = .failure(error)
        }
        await client.close()
        switch result {
        case .success(let responseBytes):
            let response = try types.response.init(serializedBytes: responseBytes)
            var options = JSONEncodingOptions()
            options.alwaysPrintInt64sAsNumbers = true
            print(try response.jsonString(options: options))
        case .failure(let status):
            throw fail("\(rpc.name) failed: \(status.code) (\(status.code.rawValue)): \(status.message)")
        }
    }
}

extension RPCMethod {
    /// The protobuf request and response message types of the method (the
    /// framed protocol's; gRPC's PublishMarketData streams PriceUpdates).
    var messageTypes: (request: any SwiftProtobuf.Message.Type, response: any SwiftProtobuf.Message.Type) {
        switch self {
        case .rebalance: (Keel_V1_RebalanceRequest.self, Keel_V1_RebalanceResponse.self)
        case .harvestTaxLosses: (Keel_V1_HarvestTaxLossesRequest.self, Keel_V1_HarvestTaxLossesResponse.self)
        case .forecastLiquidity: (Keel_V1_ForecastLiquidityRequest.self, Keel_V1_ForecastLiquidityResponse.self)
        case .publishMarketData: (Keel_V1_PriceUpdateBatch.self, Keel_V1_PublishMarketDataResponse.self)
        case .listModels: (Keel_V1_ListModelsRequest.self, Keel_V1_ListModelsResponse.self)
        case .loadModel: (Keel_V1_LoadModelRequest.self, Keel_V1_LoadModelResponse.self)
        case .unloadModel: (Keel_V1_UnloadModelRequest.self, Keel_V1_UnloadModelResponse.self)
        case .listPending: (Keel_V1_ListPendingRequest.self, Keel_V1_ListPendingResponse.self)
        case .decide: (Keel_V1_DecideRequest.self, Keel_V1_DecideResponse.self)
        case .healthCheck: (Grpc_Health_V1_HealthCheckRequest.self, Grpc_Health_V1_HealthCheckResponse.self)
        }
    }
}
