// The rebalancing engine alone (no transport, no audit): features, policy
// inference through the C core, risk, constraints, orders and explanations,
// for 10, 100 and 1000 assets. Build and run in release:
//
//   swift run -c release --scratch-path .build-release keel-engine-bench [--model PATH] [--seconds S]
//       [--assets 10,100,1000] [--history inline|published] [--mandates N]
//
// Requests come from KeelClient.BenchRequests (the same generator as `keel
// bench`) with 64 days of price history, mapped to the domain once; each
// iteration runs `RebalanceEngine.rebalance` and is timed alone.
//
// --history inline: the history travels in the request (price_history), so
// every call computes each instrument's returns and statistics.
// --history published (the default; the server's path for `keel bench`):
// the history was published with PublishMarketData into the server's
// MarketState, which keeps each instrument's analysed series (returns and
// statistics, computed once per new price), and the request carries none.
//
// --mandates N: instead of one fixed request per size, N requests with
// tighter sector and asset-class caps (see "Varied mandates" below).
//
// KEEL_BENCH_STAGES=1 then times the served path's stages in process for
// 100 assets: decoding the request (swift-protobuf and KeelAPI's specialised
// codec), mapping it to the domain, the engine, the response and its
// encoding, and the whole `KeelService.handle` without and with an audit log
// (`normal`, as `keel serve` opens it), one call at a time. The service
// serves the model repository that the --model file sits in.
// KEEL_BENCH_STAGES=handler (or =audit) runs only the handler without (or
// with) the audit log, 30,000 calls, for a profiler; with --mandates N the
// handler's calls take N mandate variants in turn.
import Foundation
import Histogram
import KeelAPI
import KeelAudit
import KeelClient
import KeelInference
import KeelPortfolio
import KeelServing

struct SessionScorer: PolicyScorer {
    let session: Session
    let featureNames: [String]

    func scores(_ features: [Float], rows: Int) throws -> [Float] {
        try session.scores(features: features, rows: rows)
    }
}

var modelPath = "models/policy/2/model.onnx"
var published = true
var seconds = 3.0
var sizes = [10, 100, 1000]
var mandates = 0
var args = CommandLine.arguments.dropFirst()
while let flag = args.popFirst() {
    switch flag {
    case "--model": modelPath = args.popFirst() ?? modelPath
    case "--seconds": seconds = Double(args.popFirst() ?? "") ?? seconds
    case "--assets": sizes = (args.popFirst() ?? "").split(separator: ",").compactMap { Int($0) }
    case "--mandates": mandates = max(0, Int(args.popFirst() ?? "") ?? 0)
    case "--history" where ["inline", "published"].contains(args.first ?? ""): published = args.popFirst() == "published"
    default:
        FileHandle.standardError.write(Data(("usage: keel-engine-bench [--model PATH] [--seconds S] [--assets 10,100,1000] "
            + "[--history inline|published] [--mandates N]\n").utf8))
        exit(64)
    }
}

let model: Model
let scorer: SessionScorer
do {
    model = try Model(contentsOf: modelPath)
    scorer = SessionScorer(session: try model.makeSession(), featureNames: model.featureNames ?? [])
} catch {
    FileHandle.standardError.write(Data(("keel-engine-bench: \(error) (the default model path is relative: run "
        + "from the repository's root, or pass --model)\n").utf8))
    exit(66)
}
var config = EngineConfig()
if let top = ProcessInfo.processInfo.environment["KEEL_BENCH_TOP_FEATURES"], let k = Int(top) { config.topFeatures = k }
let engine = RebalanceEngine(config: config)
// MARK: - Varied mandates
// `--mandates N`: the engine alone on N different requests per size (seeds
// 1...N, each with mandate variant `seed` of `BenchRequests.varyMandate`:
// sector and asset-class caps that bind, risk tolerance 1 to 7, turnover
// caps 2 % to 100 %, minimum cash 0 to 20 %, exclusions, basic knowledge);
// each timed as the best of 20 runs. The default mode's fixed request (seed 42)
// leaves most caps slack.
let stagesOnly = ProcessInfo.processInfo.environment["KEEL_BENCH_STAGES"]
if let stagesOnly, !["1", "handler", "audit"].contains(stagesOnly) {
    FileHandle.standardError.write(Data("KEEL_BENCH_STAGES must be 1, handler or audit, not '\(stagesOnly)'\n".utf8))
    exit(64)
}
if mandates > 0 && stagesOnly == nil {
    print("engine alone over varied mandates, model \(modelPath) (sha256 \(model.sha256.prefix(12))), blas core "
        + "\(Blas.coreName), best of 20 runs per mandate, history published (market state)")
    print("")
    print("| assets | mandates | p50 us | p90 us | p99 us | max us | infeasible |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for assets in sizes {
        var times: [Double] = []
        var infeasible = 0
        for seed in 1...mandates {
            let market = MarketState()
            var request = BenchRequests.rebalance(assets: assets, historyDays: 0, seed: UInt64(seed))
            _ = market.apply(BenchRequests.priceHistory(for: request, days: 64, seed: UInt64(seed)).updates)
            BenchRequests.varyMandate(&request, variant: seed)
            let (input, _) = try RebalanceMapping.input(request, market: market)
            var decision = try engine.rebalance(input, policy: scorer)
            for _ in 0..<5 { decision = try engine.rebalance(input, policy: scorer) }
            if decision.status == .infeasible { infeasible += 1 }
            let clock = ContinuousClock()
            var best = Duration.seconds(1)
            for _ in 0..<20 {
                let t0 = clock.now
                _ = try engine.rebalance(input, policy: scorer)
                best = min(best, clock.now - t0)
            }
            times.append(Double(best.components.seconds) * 1e6 + Double(best.components.attoseconds) / 1e12)
        }
        times.sort()
        func at(_ q: Double) -> String { String(format: "%.1f", times[min(times.count - 1, Int(q * Double(times.count)))]) }
        print("| \(assets) | \(mandates) | \(at(0.5)) | \(at(0.9)) | \(at(0.99)) | \(String(format: "%.1f", times.last ?? 0)) | \(infeasible) |")
    }
    exit(0)
}

print("engine alone, model \(modelPath) (sha256 \(model.sha256.prefix(12))), blas core \(Blas.coreName), "
    + "threads \(Blas.threads), \(seconds) s per size, history \(published ? "published (market state)" : "inline")")
print("")
print("| assets | iterations | orders | status | p50 us | p90 us | p99 us | max us | mean us |")
print("|---:|---:|---:|:---|---:|---:|---:|---:|---:|")
for assets in sizes {
    let market = MarketState()
    let request: Keel_V1_RebalanceRequest
    if published {
        request = BenchRequests.rebalance(assets: assets, historyDays: 0, seed: 42)
        _ = market.apply(BenchRequests.priceHistory(for: request, days: 64, seed: 42).updates)
    } else {
        request = BenchRequests.rebalance(assets: assets, historyDays: 64, seed: 42)
    }
    let (input, _) = try RebalanceMapping.input(request, market: market)
    // Warm up: plans, caches, branch predictors.
    var last = try engine.rebalance(input, policy: scorer)
    for _ in 0..<50 { last = try engine.rebalance(input, policy: scorer) }
    var histogram = Histogram<UInt64>(highestTrackableValue: 10_000_000_000, numberOfSignificantValueDigits: .three)
    let clock = ContinuousClock()
    let stop = clock.now + .milliseconds(Int(seconds * 1000))
    var total: Duration = .zero
    while clock.now < stop {
        let t0 = clock.now
        last = try engine.rebalance(input, policy: scorer)
        let d = clock.now - t0
        total += d
        let (s, a) = d.components
        histogram.record(UInt64(s) * 1_000_000_000 + UInt64(a / 1_000_000_000))
    }
    func us(_ p: Double) -> String { String(format: "%.1f", Double(histogram.valueAtPercentile(p)) / 1000) }
    let n = histogram.totalCount
    let mean = Double(total.components.seconds) * 1e6 + Double(total.components.attoseconds) / 1e12
    print("| \(assets) | \(n) | \(last.orders.count) | \(last.status) | \(us(50)) | \(us(90)) | \(us(99)) | "
        + "\(String(format: "%.1f", Double(histogram.max) / 1000)) | \(String(format: "%.1f", mean / Double(n))) |")
}

// MARK: - Stages of the served path (in process, no transport)
if let stagesOnly {
    let assets = 100
    let market = MarketState()
    let request = BenchRequests.rebalance(assets: assets, historyDays: 0, seed: 42)
    _ = market.apply(BenchRequests.priceHistory(for: request, days: 64, seed: 42).updates)
    let bytes: [UInt8] = try request.serializedBytes()
    let clock = ContinuousClock()
    func time(_ label: String, _ body: () throws -> Void) rethrows {
        if stagesOnly != "1" { return }
        for _ in 0..<200 { try body() }
        let n = 3000
        let t0 = clock.now
        for _ in 0..<n { try body() }
        let d = clock.now - t0
        let us = (Double(d.components.seconds) * 1e6 + Double(d.components.attoseconds) / 1e12) / Double(n)
        print("\(label): \(String(format: "%.1f", us)) us")
    }
    print("request bytes \(bytes.count)")
    try time("decode (swift-protobuf)") { _ = try Keel_V1_RebalanceRequest(serializedBytes: bytes) }
    try time("decode (fast)") { _ = try Keel_V1_RebalanceRequest(fastSerializedBytes: bytes) }
    try time("mapping.input") { _ = try RebalanceMapping.input(request, market: market) }
    let (input, _) = try RebalanceMapping.input(request, market: market)
    try time("engine") { _ = try engine.rebalance(input, policy: scorer) }
    let decision = try engine.rebalance(input, policy: scorer)
    time("mapping.response") { _ = RebalanceMapping.response(decision) }
    let response = RebalanceMapping.response(decision)
    let out: [UInt8] = try response.serializedBytes()
    print("response bytes \(out.count)")
    try time("encode (swift-protobuf)") { let _: [UInt8] = try response.serializedBytes() }
    try time("encode (fast)") { _ = try response.fastSerializedBytes() }

    // The whole handler in process: decode, mapping, tax plan, engine,
    // response and its encoding, without and with the audit trail.
    let repository = ModelRepository(root: URL(fileURLWithPath: (modelPath as NSString).deletingLastPathComponent)
        .deletingLastPathComponent().deletingLastPathComponent())
    _ = repository.loadAll()
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("keel-stages-\(getpid())")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    for withAudit in [false, true] where stagesOnly == "1" || stagesOnly == (withAudit ? "audit" : "handler") {
        let audit = withAudit ? try AuditLog(path: directory.appendingPathComponent("audit.sqlite").path,
                                             durability: .normal, checksPayloads: false) : nil  // as `keel serve`
        let service = try KeelService(repository: repository, gate: RequestGate(maxConcurrent: 2, maxQueued: 64),
                                      marketState: market, audit: audit)
        let n = stagesOnly == "1" ? 3000 : 30000
        let variants: [[UInt8]] = mandates > 0 ? try (1...mandates).map { v in
            var r = request
            BenchRequests.varyMandate(&r, variant: v)
            return try r.serializedBytes()
        } : [bytes]
        for _ in 0..<200 { _ = await service.handle(.rebalance, request: bytes, deadline: .now + .seconds(10)) }
        var cpu0 = timespec()
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu0)
        let t0 = clock.now
        for k in 0..<n {
            if case .failure(let status) = await service.handle(.rebalance, request: variants[k % variants.count],
                                                                 deadline: .now + .seconds(10)) {
                FileHandle.standardError.write(Data("Rebalance failed: \(status)\n".utf8))
                exit(1)
            }
        }
        let d = clock.now - t0
        let us = (Double(d.components.seconds) * 1e6 + Double(d.components.attoseconds) / 1e12) / Double(n)
        var cpu1 = timespec()
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu1)
        let cpu = (Double(cpu1.tv_sec - cpu0.tv_sec) * 1e6 + Double(cpu1.tv_nsec - cpu0.tv_nsec) / 1e3) / Double(n)
        print("handler\(withAudit ? " with audit (normal)" : ""): \(String(format: "%.1f", us)) us a call, "
            + "\(String(format: "%.1f", cpu)) us of CPU (all threads)")
    }
}
