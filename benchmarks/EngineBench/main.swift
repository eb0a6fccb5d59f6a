// The rebalancing engine alone (no transport, no audit): features, policy
// inference through the C core, risk, constraints, orders and explanations,
// for 10, 100 and 1000 assets. Build and run in release:
//
//   swift run -c release --scratch-path .build-release keel-engine-bench [--model PATH] [--seconds S] [--assets 10,100,1000]
//
// Requests come from KeelClient.BenchRequests (the same generator as `keel
// bench`) with 64 days of price history, mapped to the domain once; each
// iteration runs `RebalanceEngine.rebalance` and is timed alone.
import Foundation
import Histogram
import KeelClient
import KeelInference
import KeelPortfolio
import KeelServing

struct SessionScorer: PolicyScorer {
    let session: Session
    let featureNames: [String]

    func scores(_ features: [Float], rows: Int) throws -> [Float] {
        let out = try session.run(features: features, rows: rows)
        guard let t = out.first, rows > 0, t.values.count % rows == 0 else { return [] }
        let stride = t.values.count / rows
        return stride == 1 ? t.values : (0..<rows).map { t.values[$0 * stride] }
    }
}

var modelPath = "models/policy/1/model.onnx"
var seconds = 3.0
var sizes = [10, 100, 1000]
var args = CommandLine.arguments.dropFirst()
while let flag = args.popFirst() {
    switch flag {
    case "--model": modelPath = args.popFirst() ?? modelPath
    case "--seconds": seconds = Double(args.popFirst() ?? "") ?? seconds
    case "--assets": sizes = (args.popFirst() ?? "").split(separator: ",").compactMap { Int($0) }
    default:
        FileHandle.standardError.write(Data("usage: keel-engine-bench [--model PATH] [--seconds S] [--assets 10,100,1000]\n".utf8))
        exit(64)
    }
}

let model = try Model(contentsOf: modelPath)
let scorer = SessionScorer(session: try model.makeSession(), featureNames: model.featureNames ?? [])
var config = EngineConfig()
if let top = ProcessInfo.processInfo.environment["KEEL_BENCH_TOP_FEATURES"], let k = Int(top) { config.topFeatures = k }
let engine = RebalanceEngine(config: config)
print("engine alone, model \(modelPath) (sha256 \(model.sha256.prefix(12))), blas core \(Blas.coreName), "
    + "threads \(Blas.threads), \(seconds) s per size")
print("")
print("| assets | iterations | orders | status | p50 us | p90 us | p99 us | max us | mean us |")
print("|---:|---:|---:|:---|---:|---:|---:|---:|---:|")
for assets in sizes {
    let request = BenchRequests.rebalance(assets: assets, historyDays: 64, seed: 42)
    let (input, _) = try RebalanceMapping.input(request, market: MarketState())
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
