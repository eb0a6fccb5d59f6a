import KeelAPI

/// Every method Keel serves, with the numeric id the framed TCP protocol uses
/// (docs/PROTOCOL.md) and the gRPC full name. Ids are stable: never reuse one.
public enum RPCMethod: UInt16, CaseIterable, Sendable, CustomStringConvertible {
    case rebalance = 1
    case harvestTaxLosses = 2
    case forecastLiquidity = 3
    case publishMarketData = 4
    case listModels = 16
    case loadModel = 17
    case unloadModel = 18
    case listPending = 32
    case decide = 33
    case healthCheck = 48

    /// gRPC service and method, e.g. `keel.v1.Rebalancer/Rebalance`.
    public var fullName: String {
        switch self {
        case .rebalance: "keel.v1.Rebalancer/Rebalance"
        case .harvestTaxLosses: "keel.v1.Rebalancer/HarvestTaxLosses"
        case .forecastLiquidity: "keel.v1.Rebalancer/ForecastLiquidity"
        case .publishMarketData: "keel.v1.Rebalancer/PublishMarketData"
        case .listModels: "keel.v1.ModelAdmin/ListModels"
        case .loadModel: "keel.v1.ModelAdmin/LoadModel"
        case .unloadModel: "keel.v1.ModelAdmin/UnloadModel"
        case .listPending: "keel.v1.Approvals/ListPending"
        case .decide: "keel.v1.Approvals/Decide"
        case .healthCheck: "grpc.health.v1.Health/Check"
        }
    }

    /// The method name alone (`Rebalance`), as metrics label it.
    public var name: String { String(fullName.split(separator: "/").last ?? "") }

    public var description: String { fullName }

    /// Looks a method up by its full name, its bare name or its framed id.
    public init?(named text: String) {
        if let id = UInt16(text), let m = RPCMethod(rawValue: id) { self = m; return }
        guard let m = RPCMethod.allCases.first(where: { $0.fullName == text || $0.name == text }) else { return nil }
        self = m
    }
}

/// Status codes, numbered as gRPC's (so both transports report the same code).
public enum RPCStatusCode: Int32, Sendable, CaseIterable, CustomStringConvertible {
    case ok = 0
    case cancelled = 1
    case unknown = 2
    case invalidArgument = 3
    case deadlineExceeded = 4
    case notFound = 5
    case alreadyExists = 6
    case permissionDenied = 7
    case resourceExhausted = 8
    case failedPrecondition = 9
    case aborted = 10
    case outOfRange = 11
    case unimplemented = 12
    case `internal` = 13
    case unavailable = 14
    case dataLoss = 15
    case unauthenticated = 16

    /// `INVALID_ARGUMENT`, as gRPC spells it.
    public var description: String {
        switch self {
        case .ok: "OK"
        case .cancelled: "CANCELLED"
        case .unknown: "UNKNOWN"
        case .invalidArgument: "INVALID_ARGUMENT"
        case .deadlineExceeded: "DEADLINE_EXCEEDED"
        case .notFound: "NOT_FOUND"
        case .alreadyExists: "ALREADY_EXISTS"
        case .permissionDenied: "PERMISSION_DENIED"
        case .resourceExhausted: "RESOURCE_EXHAUSTED"
        case .failedPrecondition: "FAILED_PRECONDITION"
        case .aborted: "ABORTED"
        case .outOfRange: "OUT_OF_RANGE"
        case .unimplemented: "UNIMPLEMENTED"
        case .internal: "INTERNAL"
        case .unavailable: "UNAVAILABLE"
        case .dataLoss: "DATA_LOSS"
        case .unauthenticated: "UNAUTHENTICATED"
        }
    }
}

/// A failed request: a code and a message naming what is wrong.
///
/// The message is at most ``maxMessageBytes`` UTF-8 bytes: a longer one
/// keeps its beginning and its end, and says how much of the middle was cut.
/// Messages quote the request's offending values, and gRPC carries the
/// message in a header (`grpc-message`) that clients refuse past a few KB: a
/// 100 KB bad date reached grpcio as RESOURCE_EXHAUSTED "received metadata
/// size exceeds hard limit" instead of the INVALID_ARGUMENT naming the field.
/// The beginning names the field; the end says what is wrong with its value.
public struct RPCStatus: Error, Sendable, Equatable, CustomStringConvertible {
    /// Longest message, in UTF-8 bytes (percent-encoded in gRPC's header,
    /// at most three times as many: under grpcio's 8 KB default).
    public static let maxMessageBytes = 2048

    public var code: RPCStatusCode
    public private(set) var message: String

    public init(_ code: RPCStatusCode, _ message: String) {
        self.code = code
        self.message = Self.bounded(message)
    }

    /// `message` unchanged when it fits in ``maxMessageBytes``; otherwise
    /// its first two thirds and last third of the room, cut between Unicode
    /// scalars, around a note of how many bytes were left out.
    static func bounded(_ message: String) -> String {
        let utf8 = message.utf8
        let count = utf8.count
        guard count > maxMessageBytes else { return message }
        // The note's length depends on the number in it; at most 20 digits.
        let room = maxMessageBytes - " [... 00000000000000000000 bytes cut ...] ".utf8.count
        var headEnd = utf8.index(utf8.startIndex, offsetBy: room * 2 / 3)
        while headEnd.samePosition(in: message.unicodeScalars) == nil { headEnd = utf8.index(before: headEnd) }
        var tailStart = utf8.index(utf8.endIndex, offsetBy: -(room - room * 2 / 3))
        while tailStart.samePosition(in: message.unicodeScalars) == nil { tailStart = utf8.index(after: tailStart) }
        let cut = utf8.distance(from: headEnd, to: tailStart)
        return String(message.unicodeScalars[..<headEnd]) + " [... \(cut) bytes cut ...] "
            + String(message.unicodeScalars[tailStart...])
    }

    public var description: String { "\(code): \(message)" }

    /// The framed protocol's error-frame body.
    public var errorStatus: Keel_V1_ErrorStatus {
        var s = Keel_V1_ErrorStatus()
        s.code = code.rawValue
        s.message = message
        return s
    }
}

/// What a transport hands a request to. Implemented by ``KeelService``;
/// transports depend only on this, so they can be tested with any handler.
///
/// `request` is the serialized protobuf request message of `method`; the
/// result is the serialized response message, or a status. `deadline` is when
/// the caller stops waiting: a handler must not start work after it and
/// answers ``RPCStatusCode/deadlineExceeded`` when it cannot finish in time.
public protocol RequestHandler: Sendable {
    func handle(_ method: RPCMethod, request: [UInt8], deadline: ContinuousClock.Instant) async
        -> Result<[UInt8], RPCStatus>
}
