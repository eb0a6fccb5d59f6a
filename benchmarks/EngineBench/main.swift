// The rebalancing engine alone (no transport, no audit): features, policy
// inference through the C core, risk, constraints, orders and explanations,
// for 10, 100 and 1000 assets. Build and run in release:
//
//   swift run -c release --scratch-path .build-release keel-engine-bench [--model PATH] [--seconds S]
//       [--assets 10,100,1000] [--history inline|published]
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
import Foundation
import Histogram
import KeelAPI
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
var args = CommandLine.arguments.dropFirst()
while let flag = args.popFirst() {
    switch flag {
    case "--model": modelPath = args.popFirst() ?? modelPath
    case "--seconds": seconds = Double(args.popFirst() ?? "") ?? seconds
    case "--assets": sizes = (args.popFirst() ?? "").split(separator: ",").compactMap { Int($0) }
    case "--history" where ["inline", "published"].contains(args.first ?? ""): published = args.popFirst() == "published"
    default:
        FileHandle.standardError.write(Data(("usage: keel-engine-bench [--model PATH] [--seconds S] [--assets 10,100,1000] "
            + "[--history inline|published]\n").utf8))
        exit(64)
    }
}

let model = try Model(contentsOf: modelPath)
let scorer = SessionScorer(session: try model.makeSession(), featureNames: model.featureNames ?? [])
var config = EngineConfig()
if let top = ProcessInfo.processInfo.environment["KEEL_BENCH_TOP_FEATURES"], let k = Int(top) { config.topFeatures = k }
let engine = RebalanceEngine(config: config)
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
