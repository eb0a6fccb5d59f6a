import Histogram
import KeelAPI
import KeelServing

/// The result of `keel bench`, ready to print as a small table or as JSON.
///
/// Latencies are in microseconds (from HdrHistogram, 3 significant digits) and
/// cover successful calls; under an open loop they are measured from each
/// request's intended send time.
public struct BenchReport: Sendable, Equatable {
    public struct Latency: Sendable, Equatable {
        public var p50: Double
        public var p90: Double
        public var p99: Double
        public var p999: Double
        public var max: Double
        public var mean: Double
        public var min: Double

        public init(p50: Double, p90: Double, p99: Double, p999: Double, max: Double, mean: Double, min: Double) {
            self.p50 = p50
            self.p90 = p90
            self.p99 = p99
            self.p999 = p999
            self.max = max
            self.mean = mean
            self.min = min
        }
    }

    public var target: String
    public var method: String
    /// `open-loop` or `closed-loop`.
    public var mode: String
    /// Open loop: the requested rate per second.
    public var requestedRate: Double?
    /// Connections to the server.
    public var connections: Int
    /// Closed loop: callers; open loop: the in-flight bound.
    public var concurrency: Int
    public var durationSeconds: Double
    /// The request's size; with several requests in turn, their mean size.
    public var requestBytes: Int
    /// How many different requests were sent in turn (1: the same every time).
    public var requestVariants: Int
    public var sent: Int
    public var ok: Int
    public var errors: Int
    /// Error counts by status code name (`DEADLINE_EXCEEDED`), in code order.
    public var errorsByCode: [(code: String, count: Int)]
    public var sampleErrors: [String]
    /// Successful calls per second of wall time.
    public var throughput: Double
    public var latencyMicros: Latency
    public var lateSends: Int
    public var maxSendLagMicros: Double

    public static func == (a: BenchReport, b: BenchReport) -> Bool {
        a.target == b.target && a.method == b.method && a.mode == b.mode && a.requestedRate == b.requestedRate
            && a.connections == b.connections && a.concurrency == b.concurrency
            && a.durationSeconds == b.durationSeconds && a.requestBytes == b.requestBytes
            && a.requestVariants == b.requestVariants && a.sent == b.sent
            && a.ok == b.ok && a.errors == b.errors
            && a.errorsByCode.map(\.code) == b.errorsByCode.map(\.code)
            && a.errorsByCode.map(\.count) == b.errorsByCode.map(\.count)
            && a.sampleErrors == b.sampleErrors && a.throughput == b.throughput
            && a.latencyMicros == b.latencyMicros && a.lateSends == b.lateSends
            && a.maxSendLagMicros == b.maxSendLagMicros
    }

    /// Summarises a run of `plan` against `target` over `connections` connections.
    public init(result: LoadResult, plan: LoadPlan, target: String, connections: Int) {
        self.target = target
        self.method = plan.method.name
        switch plan.mode {
        case .openLoop(let rate):
            mode = "open-loop"
            requestedRate = rate
            concurrency = plan.maxInFlight
        case .closedLoop(let c):
            mode = "closed-loop"
            requestedRate = nil
            concurrency = c
        }
        self.connections = connections
        durationSeconds = Double(plan.duration.nanoseconds) / 1e9
        requestVariants = plan.requests.count
        requestBytes = Int((Double(plan.requests.reduce(0) { $0 + $1.count }) / Double(requestVariants)).rounded())
        sent = result.sent
        ok = result.ok
        errors = result.errors
        errorsByCode = result.errorsByCode
            .sorted { $0.key.rawValue < $1.key.rawValue }
            .map { (code: $0.key.description, count: $0.value) }
        sampleErrors = result.sampleErrors
        let seconds = Double(result.elapsed.nanoseconds) / 1e9
        throughput = seconds > 0 ? Double(result.ok) / seconds : 0
        let h = result.latencies
        func us(_ nanos: UInt64) -> Double { Double(nanos) / 1e3 }
        if h.totalCount == 0 {
            latencyMicros = Latency(p50: 0, p90: 0, p99: 0, p999: 0, max: 0, mean: 0, min: 0)
        } else {
            latencyMicros = Latency(
                p50: us(h.valueAtPercentile(50)), p90: us(h.valueAtPercentile(90)),
                p99: us(h.valueAtPercentile(99)), p999: us(h.valueAtPercentile(99.9)),
                max: us(h.maxRecorded), mean: h.mean / 1e3, min: us(h.min))
        }
        lateSends = result.lateSends
        maxSendLagMicros = Double(result.maxSendLag.nanoseconds) / 1e3
    }

    /// Fraction of calls that failed (0 when nothing completed).
    public var errorRate: Double {
        let completed = ok + errors
        return completed > 0 ? Double(errors) / Double(completed) : 0
    }

    // MARK: SLO

    /// A latency and error budget.
    public struct SLO: Sendable, Equatable {
        /// The p99 latency may not exceed this.
        public var p99: Duration
        /// The fraction of failed calls may not exceed this (0.001 = 0.1 %).
        public var maxErrorRate: Double

        public init(p99: Duration, maxErrorRate: Double) {
            self.p99 = p99
            self.maxErrorRate = maxErrorRate
        }
    }

    /// What breaks `slo`, one sentence each; empty when the run meets it.
    public func violations(of slo: SLO) -> [String] {
        var problems: [String] = []
        if ok == 0 {
            problems.append("no successful calls (\(errors) errors)")
        } else {
            let budget = Double(slo.p99.nanoseconds) / 1e3
            if latencyMicros.p99 > budget {
                problems.append(
                    "p99 latency \(DurationText.format(nanoseconds: latencyMicros.p99 * 1e3)) is over the budget of \(DurationText.format(slo.p99))"
                )
            }
        }
        if errors > 0, errorRate > slo.maxErrorRate {
            let codes = errorsByCode.map { "\($0.code) \($0.count)" }.joined(separator: ", ")
            problems.append(
                "error rate \(fixed(errorRate * 100, digits: 3)) % (\(codes)) is over the limit of \(fixed(slo.maxErrorRate * 100, digits: 3)) %"
            )
        }
        return problems
    }

    // MARK: rendering

    /// A small table for people.
    public func renderText() -> String {
        var lines: [String] = []
        var head = "\(method) on \(target), \(mode)"
        if let rate = requestedRate {
            head += " at \(fixed(rate, digits: rate.rounded() == rate ? 0 : 1)) req/s"
        } else {
            head += " with \(concurrency) caller\(concurrency == 1 ? "" : "s")"
        }
        head += ", \(connections) connection\(connections == 1 ? "" : "s"), \(fixed(durationSeconds, digits: durationSeconds.rounded() == durationSeconds ? 0 : 3)) s, "
            + (requestVariants == 1 ? "request \(requestBytes) bytes"
                : "\(requestVariants) requests in turn, \(requestBytes) bytes on average")
        lines.append(head)
        lines.append("")
        lines.append("  requests   sent \(sent)   ok \(ok)   errors \(errors)")
        lines.append("  throughput \(fixed(throughput, digits: 1)) ok/s")
        lines.append("")
        lines.append("  latency        us")
        let rows: [(String, Double)] = [
            ("p50", latencyMicros.p50), ("p90", latencyMicros.p90), ("p99", latencyMicros.p99),
            ("p99.9", latencyMicros.p999), ("max", latencyMicros.max), ("mean", latencyMicros.mean),
        ]
        for (name, value) in rows {
            let number = fixed(value, digits: 1)
            lines.append("  " + pad(name, 8) + String(repeating: " ", count: Swift.max(1, 12 - number.count)) + number)
        }
        if mode == "open-loop" {
            lines.append("")
            lines.append("  late sends (> 1 ms behind schedule) \(lateSends), max send lag \(fixed(maxSendLagMicros, digits: 1)) us")
        }
        if !errorsByCode.isEmpty {
            lines.append("")
            lines.append("  errors by code")
            for (code, count) in errorsByCode {
                lines.append("    " + pad(code, 22) + String(count))
            }
            for message in sampleErrors {
                lines.append("    e.g. \(message)")
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    private func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count)
    }

    /// JSON with a fixed key order (the order below), one object, no trailing newline.
    public func renderJSON() -> String {
        var fields: [(String, String)] = [
            ("target", jsonQuoted(target)),
            ("method", jsonQuoted(method)),
            ("mode", jsonQuoted(mode)),
            ("requested_rate", requestedRate.map { jsonNumber($0) } ?? "null"),
            ("connections", String(connections)),
            ("concurrency", String(concurrency)),
            ("duration_seconds", jsonNumber(durationSeconds)),
            ("request_bytes", String(requestBytes)),
            ("request_variants", String(requestVariants)),
            ("sent", String(sent)),
            ("ok", String(ok)),
            ("errors", String(errors)),
        ]
        let codes = errorsByCode.map { "\(jsonQuoted($0.code)):\($0.count)" }.joined(separator: ",")
        fields.append(("errors_by_code", "{\(codes)}"))
        fields.append(("sample_errors", "[" + sampleErrors.map(jsonQuoted).joined(separator: ",") + "]"))
        fields.append(("throughput", jsonNumber(throughput)))
        let l = latencyMicros
        let latency: [(String, Double)] = [
            ("p50", l.p50), ("p90", l.p90), ("p99", l.p99), ("p99_9", l.p999), ("max", l.max), ("mean", l.mean),
            ("min", l.min),
        ]
        fields.append(("latency_us", "{" + latency.map { "\(jsonQuoted($0.0)):\(jsonNumber($0.1))" }.joined(separator: ",") + "}"))
        fields.append(("late_sends", String(lateSends)))
        fields.append(("max_send_lag_us", jsonNumber(maxSendLagMicros)))
        return "{" + fields.map { "\(jsonQuoted($0.0)):\($0.1)" }.joined(separator: ",") + "}"
    }
}

/// A JSON number with up to three decimals (latencies are in microseconds).
func jsonNumber(_ v: Double) -> String {
    guard v.isFinite else { return "null" }
    var s = fixed(v, digits: 3)
    if s.contains(".") {
        while s.hasSuffix("0") { s.removeLast() }
        if s.hasSuffix(".") { s.removeLast() }
    }
    return s
}

