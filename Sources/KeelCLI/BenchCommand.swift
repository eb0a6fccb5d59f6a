import ArgumentParser
import Foundation
import KeelAPI
import KeelClient
import KeelServing

/// `keel bench`: drives a running server with an open- or closed-loop load
/// and checks the measured p99 latency and error rate against a budget.
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure a running Keel server's latency under load.",
        discussion: """
            Open loop (--rate R): requests are sent on a fixed timetable, R per second, \
            whatever the server does; each latency is measured from the request's \
            intended send time, so queueing is never hidden (no coordinated omission). \
            Closed loop (--connections C): C callers, each on its own connection, send \
            back to back. Latencies are recorded in an HdrHistogram (3 significant \
            digits); the report gives p50, p90, p99, p99.9, max, mean, throughput and \
            errors by status code.

            The Rebalance request is built for --assets instruments (holdings in tax \
            lots, risk profile, mandate with caps and costs). Before measuring, \
            --history-days daily prices per instrument are published once with \
            PublishMarketData, so the server computes features from its market \
            state, as in production; --inline-history sends them inside every \
            request instead.

            Durations: 500us, 2ms, 1s, 1.5s, 30s, 2m.

            Exit status: 0 when the run meets the budget, 2 when p99 is over --slo-p99 \
            or the error rate is over --max-error-rate, 1 when the server cannot be \
            reached, 64 for usage errors.

            Examples:
              keel bench --target tcp://127.0.0.1:50052 --assets 50 --rate 20000 --duration 30s
              keel bench --target grpc://127.0.0.1:50051 --assets 500 --connections 8 --duration 10s --format json
            """)

    @Option(help: ArgumentHelp("The server: tcp://HOST:PORT (framed protocol) or grpc://HOST:PORT.", valueName: "url"))
    var target: String

    @Option(help: "Instruments per request.")
    var assets: Int = 50

    @Option(help: ArgumentHelp("Open loop: requests per second.", valueName: "per-second"))
    var rate: Double?

    @Option(help: ArgumentHelp("Closed loop: connections, each with one request at a time.", valueName: "count"))
    var connections: Int?

    @Option(help: ArgumentHelp("How long to measure.", valueName: "duration"))
    var duration: String = "10s"

    @Option(help: ArgumentHelp("Load sent before measuring, not recorded.", valueName: "duration"))
    var warmup: String = "1s"

    @Option(name: .customLong("slo-p99"), help: ArgumentHelp("Budget for the p99 latency.", valueName: "duration"))
    var sloP99: String = "1s"

    @Option(
        name: .customLong("max-error-rate"),
        help: ArgumentHelp("Largest tolerated fraction of failed requests (0.001 = 0.1 %).", valueName: "fraction"))
    var maxErrorRate: Double = 0.001

    @Option(help: ArgumentHelp("Output format: text or json.", valueName: "format"))
    var format: OutputFormat = .text

    @Option(help: ArgumentHelp("The method to call (name, full name or framed id).", valueName: "name"))
    var method: String = "Rebalance"

    @Option(help: ArgumentHelp("The policy model the Rebalance request names.", valueName: "name"))
    var model: String = "policy"

    @Option(name: .customLong("history-days"), help: "Daily prices per instrument for the Rebalance features.")
    var historyDays: Int = 64

    @Flag(name: .customLong("inline-history"), help: "Send the price history inside every Rebalance request.")
    var inlineHistory = false

    @Option(help: ArgumentHelp("Per-request deadline sent to the server (default: the server's, 1 s).", valueName: "duration"))
    var timeout: String?

    @Option(name: .customLong("max-in-flight"), help: "Open loop: most requests outstanding at once.")
    var maxInFlight: Int = 10_000

    @Option(name: .customLong("open-loop-connections"), help: "Open loop: connections to spread requests over.")
    var openLoopConnections: Int = 1

    @Option(help: "Seed of the generated request.")
    var seed: UInt64 = 42

    @Option(
        help: ArgumentHelp(
            "Rebalance: send N requests in turn that differ in mandate and risk profile (caps that bind, "
                + "risk tolerance 1 to 7, turnover caps 2 % to 100 %, minimum cash, exclusions; the same "
                + "instruments, holdings and prices). 0: one fixed request.",
            valueName: "N"))
    var mandates: Int = 0

    @Option(
        name: .customLong("write-requests"),
        help: ArgumentHelp(
            "Write the request bytes the run would send to DIR and exit without connecting: request.bin (the "
                + "serialized request message; with --mandates N also request-1.bin ... request-N.bin, request.bin "
                + "being the first) and, for Rebalance with published history, market.bin (the "
                + "keel.v1.PriceUpdateBatch published first). For other clients (benchmarks/bench_grpcio_client.py).",
            valueName: "dir"))
    var writeRequests: String?

    enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
        case text, json
    }

    /// The validated settings.
    struct Settings {
        var endpoint: Endpoint
        var method: RPCMethod
        var mode: LoadPlan.Mode
        var duration: Duration
        var warmup: Duration
        var slo: BenchReport.SLO
        var timeout: Duration?
        var connections: Int
    }

    func settings() throws -> Settings {
        let endpoint: Endpoint
        do {
            endpoint = try Endpoint(parsing: target)
        } catch {
            throw ValidationError(error.description)
        }
        guard let rpc = RPCMethod(named: method) else {
            let names = RPCMethod.allCases.map(\.name).joined(separator: ", ")
            throw ValidationError("unknown method '\(method)' (one of \(names))")
        }
        let mode: LoadPlan.Mode
        let connectionCount: Int
        switch (rate, connections) {
        case (let r?, nil):
            guard r.isFinite, r > 0, r <= 10_000_000 else {
                throw ValidationError("--rate must be a positive number of requests per second")
            }
            guard openLoopConnections >= 1, openLoopConnections <= 1024 else {
                throw ValidationError("--open-loop-connections must be from 1 to 1024")
            }
            mode = .openLoop(rate: r)
            connectionCount = openLoopConnections
        case (nil, let c?):
            guard c >= 1, c <= 10_000 else { throw ValidationError("--connections must be from 1 to 10000") }
            mode = .closedLoop(concurrency: c)
            connectionCount = c
        case (nil, nil):
            throw ValidationError("give exactly one of --rate (open loop) or --connections (closed loop)")
        case (.some, .some):
            throw ValidationError("--rate and --connections exclude each other: give exactly one")
        }
        guard assets >= 1, assets <= 100_000 else { throw ValidationError("--assets must be from 1 to 100000") }
        guard mandates >= 0, mandates <= 10_000 else { throw ValidationError("--mandates must be from 0 to 10000") }
        if mandates > 0, rpc != .rebalance {
            throw ValidationError("--mandates applies to Rebalance only, not \(rpc.name)")
        }
        guard maxInFlight >= 1 else { throw ValidationError("--max-in-flight must be at least 1") }
        guard maxErrorRate.isFinite, maxErrorRate >= 0, maxErrorRate <= 1 else {
            throw ValidationError("--max-error-rate must be a fraction from 0 to 1")
        }
        func parsed(_ text: String, _ flag: String) throws -> Duration {
            do {
                return try DurationText.parse(text)
            } catch {
                throw ValidationError("\(flag): \(error.description)")
            }
        }
        let measured = try parsed(duration, "--duration")
        guard measured > .zero else { throw ValidationError("--duration must be longer than 0") }
        let budget = try parsed(sloP99, "--slo-p99")
        let perCall = try timeout.map { try parsed($0, "--timeout") }
        if let perCall, perCall <= .zero { throw ValidationError("--timeout must be longer than 0") }
        return Settings(
            endpoint: endpoint, method: rpc, mode: mode, duration: measured,
            warmup: try parsed(warmup, "--warmup"),
            slo: BenchReport.SLO(p99: budget, maxErrorRate: maxErrorRate),
            timeout: perCall, connections: connectionCount)
    }

    func validate() throws {
        _ = try settings()
    }

    /// The requests the run sends in turn (one, or --mandates of them), and
    /// the price history it publishes first (Rebalance without
    /// --inline-history), as `keel bench` builds them.
    func prepared(_ s: Settings) throws -> (requests: [[UInt8]], market: Keel_V1_PriceUpdateBatch?) {
        do {
            guard s.method == .rebalance else {
                return ([try BenchRequests.serialized(s.method, assets: assets, seed: seed)], nil)
            }
            let days = max(0, historyDays)
            var rebalance = BenchRequests.rebalance(assets: assets, historyDays: inlineHistory ? days : 0, seed: seed)
            rebalance.model = model
            let market = !inlineHistory && days > 0
                ? BenchRequests.priceHistory(for: rebalance, days: days, seed: seed) : nil
            guard mandates > 0 else { return ([try rebalance.serializedBytes()], market) }
            let requests = try (1...mandates).map { variant -> [UInt8] in
                var varied = rebalance
                BenchRequests.varyMandate(&varied, variant: variant)
                return try varied.serializedBytes()
            }
            return (requests, market)
        } catch {
            throw fail("cannot prepare the request: \(error)")
        }
    }

    func run() async throws {
        let s = try settings()
        let endpoint = s.endpoint
        let (requests, market) = try prepared(s)
        if let directory = writeRequests {
            let url = URL(fileURLWithPath: directory, isDirectory: true)
            let request = requests[0]
            do {
                try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
                try Data(request).write(to: url.appendingPathComponent("request.bin"))
                if mandates > 0 {
                    for (k, bytes) in requests.enumerated() {
                        try Data(bytes).write(to: url.appendingPathComponent("request-\(k + 1).bin"))
                    }
                }
                if let market {
                    try Data(try market.serializedBytes() as [UInt8]).write(to: url.appendingPathComponent("market.bin"))
                }
            } catch {
                throw fail("cannot write the requests to \(directory): \(error)")
            }
            print("wrote \(url.appendingPathComponent("request.bin").path) (\(s.method.fullName), \(request.count) bytes)"
                + (mandates > 0 ? ", request-1.bin to request-\(mandates).bin" : "")
                + (market.map { ", market.bin (\($0.updates.count) price updates)" } ?? ""))
            return
        }
        let clients: [any UnaryClient]
        do {
            clients = try await LoadGenerator.connect(count: s.connections) { () async throws(RPCStatus) in
                try await KeelClients.connect(endpoint)
            }
        } catch {
            throw fail("cannot connect to \(endpoint): \(error)")
        }

        // gRPC connects lazily: probe once so an unreachable server is a
        // clear failure (exit 1) rather than a run of UNAVAILABLE errors.
        do throws(RPCStatus) {
            _ = try await clients[0].call(.healthCheck, request: [], timeout: .seconds(5))
        } catch where error.code == .unavailable || error.code == .deadlineExceeded {
            for c in clients { await c.close() }
            throw fail("cannot reach \(endpoint): \(error)")
        } catch {
            // Any other answer means the server is there.
        }

        if let market {
            do throws(RPCStatus) {
                _ = try await KeelClients.publish(market, using: clients[0])
            } catch {
                for c in clients { await c.close() }
                throw fail("cannot publish the price history: \(error)")
            }
        }

        let generator = LoadGenerator()
        if s.warmup > .zero {
            let warm = LoadPlan(
                method: s.method, requests: requests, mode: s.mode, duration: s.warmup,
                timeout: s.timeout, maxInFlight: maxInFlight, drainTimeout: .seconds(5))
            _ = await generator.run(warm, using: clients)
        }
        let plan = LoadPlan(
            method: s.method, requests: requests, mode: s.mode, duration: s.duration,
            timeout: s.timeout, maxInFlight: maxInFlight)
        let result = await generator.run(plan, using: clients)
        for c in clients { await c.close() }

        let report = BenchReport(result: result, plan: plan, target: endpoint.description, connections: clients.count)
        switch format {
        case .text: print(report.renderText(), terminator: "")
        case .json: print(report.renderJSON())
        }
        let problems = report.violations(of: s.slo)
        if !problems.isEmpty {
            for problem in problems { printError("error: SLO not met: \(problem)") }
            throw ExitCode(2)
        }
    }
}
