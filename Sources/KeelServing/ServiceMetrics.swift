import Metrics
import Synchronization

/// Per-request metrics: `keel_requests_total{method,code}` and
/// `keel_request_duration_seconds{method,phase}` (phases decode, queue,
/// inference, encode, audit: the wait for the audit record's commit), as
/// swift-metrics `Timer`s recording nanoseconds.
///
/// Every timer and the OK counter are created up front, so the request path
/// does no factory lookups; counters for error codes are created on first use
/// under a lock (error path only).
///
/// Thread safety: immutable apart from the lock-protected error counters.
final class ServiceMetrics: Sendable {
    enum Phase: String, CaseIterable {
        case decode, queue, inference, encode, audit
    }

    final class PerMethod: Sendable {
        let decode: Metrics.Timer
        let queue: Metrics.Timer
        let inference: Metrics.Timer
        let encode: Metrics.Timer
        let audit: Metrics.Timer
        let ok: Counter
        private let errors: CountersByCode

        init(method: RPCMethod, factory: any MetricsFactory) {
            let name = method.name
            func timer(_ phase: Phase) -> Metrics.Timer {
                Metrics.Timer(label: "keel_request_duration_seconds",
                              dimensions: [("method", name), ("phase", phase.rawValue)], factory: factory)
            }
            decode = timer(.decode)
            queue = timer(.queue)
            inference = timer(.inference)
            encode = timer(.encode)
            audit = timer(.audit)
            ok = Counter(label: "keel_requests_total", dimensions: [("method", name), ("code", "OK")],
                         factory: factory)
            errors = CountersByCode(label: "keel_requests_total", dimensions: [("method", name)], factory: factory)
        }

        func count(_ code: RPCStatusCode) {
            if code == .ok {
                ok.increment()
                return
            }
            errors.increment(code)
        }
    }

    private let table: [RPCMethod: PerMethod]
    private let fallback: PerMethod

    init(factory: any MetricsFactory) {
        var table: [RPCMethod: PerMethod] = [:]
        for method in RPCMethod.allCases { table[method] = PerMethod(method: method, factory: factory) }
        self.table = table
        self.fallback = table[.healthCheck] ?? PerMethod(method: .healthCheck, factory: factory)
    }

    subscript(method: RPCMethod) -> PerMethod { table[method] ?? fallback }
}

extension Metrics.Timer {
    /// Records the time elapsed from `start` to `end`.
    @inline(__always)
    func record(from start: ContinuousClock.Instant, to end: ContinuousClock.Instant) {
        let elapsed = end - start
        let (seconds, attoseconds) = elapsed.components
        recordNanoseconds(seconds &* 1_000_000_000 &+ attoseconds / 1_000_000_000)
    }
}

/// `keel_transport_errors_total{transport,code}`: answers a transport gives
/// itself, which `keel_requests_total` (the handler's outcomes) does not
/// see: unknown methods, protocol violations, per-connection limits, a
/// request that never started, and an answer replaced by DEADLINE_EXCEEDED
/// because it came after the deadline.
///
/// Thread safety: counters are created on first use per code under a lock.
public final class TransportErrorMetrics: Sendable {
    public let transport: String
    private let counters: CountersByCode

    /// `factory`: nil uses the bootstrapped `MetricsSystem` (what the server does).
    public init(transport: String, factory: (any MetricsFactory)? = nil) {
        self.transport = transport
        counters = CountersByCode(label: "keel_transport_errors_total", dimensions: [("transport", transport)],
                                  factory: factory ?? MetricsSystem.factory)
    }

    public func count(_ code: RPCStatusCode) { counters.increment(code) }
}

/// One counter per status code under `label` and `dimensions` plus
/// `("code", NAME)`, each created on first use under a lock (error paths).
final class CountersByCode: Sendable {
    private let label: String
    private let dimensions: [(String, String)]
    private let factory: any MetricsFactory
    private let counters = Mutex<[Int32: Counter]>([:])

    init(label: String, dimensions: [(String, String)], factory: any MetricsFactory) {
        self.label = label
        self.dimensions = dimensions
        self.factory = factory
    }

    func increment(_ code: RPCStatusCode) {
        let counter = counters.withLock { all -> Counter in
            if let existing = all[code.rawValue] { return existing }
            let made = Counter(label: label, dimensions: dimensions + [("code", code.description)], factory: factory)
            all[code.rawValue] = made
            return made
        }
        counter.increment()
    }
}
