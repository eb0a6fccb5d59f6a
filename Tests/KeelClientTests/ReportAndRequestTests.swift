import Foundation
import Histogram
import KeelAPI
import KeelClient
import KeelServing
import SwiftProtobuf
import Testing

@Suite("BenchReport and SLO")
struct BenchReportTests {
    /// A result with `ok` latencies spread evenly from 1 to `slowest` microseconds.
    static func result(ok: Int, slowestMicros: UInt64, errors: [RPCStatusCode: Int] = [:]) -> LoadResult {
        var h = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        for i in 1...max(1, ok) where ok > 0 {
            _ = h.record(UInt64(i) * slowestMicros * 1000 / UInt64(ok))
        }
        return LoadResult(
            latencies: h, sent: ok + errors.values.reduce(0, +), ok: ok, errorsByCode: errors,
            sampleErrors: errors.keys.map { "\($0): boom" }, elapsed: .seconds(2), lateSends: 3,
            maxSendLag: .microseconds(1500))
    }

    static let plan = LoadPlan(
        method: .rebalance, request: [1, 2, 3, 4], mode: .openLoop(rate: 1000), duration: .seconds(2))

    @Test func summarisesPercentiles() {
        let report = BenchReport(
            result: Self.result(ok: 1000, slowestMicros: 1000), plan: Self.plan, target: "tcp://127.0.0.1:1",
            connections: 1)
        #expect(abs(report.latencyMicros.p50 - 500) <= 1)
        #expect(abs(report.latencyMicros.p90 - 900) <= 1)
        #expect(abs(report.latencyMicros.p99 - 990) <= 1)
        #expect(abs(report.latencyMicros.max - 1000) <= 1)
        #expect(abs(report.latencyMicros.mean - 500.5) <= 1)
        #expect(report.throughput == 500)
        #expect(report.sent == 1000 && report.ok == 1000 && report.errors == 0)
        #expect(report.mode == "open-loop")
        #expect(report.requestedRate == 1000)
        #expect(report.method == "Rebalance")
        #expect(report.requestBytes == 4)
    }

    @Test("SLO passes when p99 and the error rate are within budget")
    func sloPass() {
        let report = BenchReport(
            result: Self.result(ok: 1000, slowestMicros: 1000), plan: Self.plan, target: "t", connections: 1)
        #expect(report.violations(of: .init(p99: .milliseconds(1), maxErrorRate: 0)).isEmpty)
        #expect(report.violations(of: .init(p99: .microseconds(991), maxErrorRate: 0)).isEmpty)
    }

    @Test("SLO fails when p99 is over budget")
    func sloLatency() {
        let report = BenchReport(
            result: Self.result(ok: 1000, slowestMicros: 1000), plan: Self.plan, target: "t", connections: 1)
        let problems = report.violations(of: .init(p99: .microseconds(500), maxErrorRate: 0))
        #expect(problems.count == 1)
        #expect(problems.first?.contains("p99") == true)
        #expect(problems.first?.contains("500us") == true)
    }

    @Test("SLO fails when the error rate is over the limit, and names the codes")
    func sloErrors() {
        let report = BenchReport(
            result: Self.result(ok: 990, slowestMicros: 100, errors: [.resourceExhausted: 10]), plan: Self.plan,
            target: "t", connections: 1)
        #expect(abs(report.errorRate - 0.01) < 1e-12)
        #expect(report.violations(of: .init(p99: .seconds(1), maxErrorRate: 0.01)).isEmpty)
        let problems = report.violations(of: .init(p99: .seconds(1), maxErrorRate: 0.001))
        #expect(problems.count == 1)
        #expect(problems.first?.contains("RESOURCE_EXHAUSTED 10") == true)
    }

    @Test("SLO fails when nothing succeeded")
    func sloNothing() {
        let report = BenchReport(
            result: Self.result(ok: 0, slowestMicros: 1, errors: [.unavailable: 5]), plan: Self.plan, target: "t",
            connections: 1)
        let problems = report.violations(of: .init(p99: .seconds(1), maxErrorRate: 1))
        #expect(problems.contains { $0.contains("no successful calls") })
        #expect(report.latencyMicros.p99 == 0)
    }

    @Test("JSON has every key, in a fixed order, and parses")
    func json() throws {
        let report = BenchReport(
            result: Self.result(ok: 100, slowestMicros: 2000, errors: [.deadlineExceeded: 2, .unavailable: 1]),
            plan: Self.plan, target: "grpc://[::1]:50051", connections: 2)
        let text = report.renderJSON()
        let keys = [
            "target", "method", "mode", "requested_rate", "connections", "concurrency", "duration_seconds",
            "request_bytes", "request_variants", "sent", "ok", "errors", "errors_by_code", "sample_errors", "throughput",
            "latency_us", "late_sends", "max_send_lag_us",
        ]
        var last = text.startIndex
        for key in keys {
            let range = try #require(text.range(of: "\"\(key)\":", range: last..<text.endIndex), "missing \(key)")
            last = range.upperBound
        }
        let object = try #require(
            try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        #expect(Set(object.keys) == Set(keys))
        #expect(object["ok"] as? Int == 100)
        #expect(object["errors"] as? Int == 3)
        #expect(object["target"] as? String == "grpc://[::1]:50051")
        let byCode = try #require(object["errors_by_code"] as? [String: Int])
        #expect(byCode == ["DEADLINE_EXCEEDED": 2, "UNAVAILABLE": 1])
        let latency = try #require(object["latency_us"] as? [String: Double])
        #expect(Set(latency.keys) == ["p50", "p90", "p99", "p99_9", "max", "mean", "min"])
        #expect((latency["p99"] ?? 0) > 1900)
        #expect(object["max_send_lag_us"] as? Double == 1500)
        // Stable: the same report renders the same bytes.
        #expect(report.renderJSON() == text)
    }

    @Test func textTable() {
        let report = BenchReport(
            result: Self.result(ok: 100, slowestMicros: 2000, errors: [.unavailable: 1]), plan: Self.plan,
            target: "tcp://127.0.0.1:50052", connections: 1)
        let text = report.renderText()
        for needle in ["Rebalance on tcp://127.0.0.1:50052", "open-loop at 1000 req/s", "p50", "p99.9", "max", "mean",
                       "UNAVAILABLE", "late sends", "throughput"] {
            #expect(text.contains(needle), "missing \(needle)")
        }
    }
}

@Suite("Bench requests")
struct BenchRequestTests {
    @Test(arguments: [1, 10, 500])
    func rebalanceShape(_ assets: Int) throws {
        let request = BenchRequests.rebalance(assets: assets, seed: 7)
        #expect(request.instruments.count == assets)
        #expect(Set(request.instruments.map(\.id)).count == assets)
        #expect(request.instruments.allSatisfy { $0.priceHistory.isEmpty })
        #expect(request.instruments.allSatisfy { $0.price > 0 && !$0.sector.isEmpty && $0.assetClass != .unspecified })
        #expect(request.instruments.allSatisfy { !$0.hasEsgScore || (0...100).contains($0.esgScore) })
        #expect(request.hasRiskProfile && request.hasMandate && request.hasPortfolio)
        #expect(request.riskProfile.riskTolerance == 4)
        let weights = request.mandate.strategicWeights
        #expect(weights.count == assets)
        #expect(abs(weights.map(\.weight).reduce(0, +) - 0.98) < 1e-3)
        #expect(weights.map(\.id) == request.instruments.map(\.id))
        let ids = Set(request.instruments.map(\.id))
        #expect(request.portfolio.holdings.allSatisfy { ids.contains($0.instrumentID) })
        for holding in request.portfolio.holdings {
            #expect(abs(holding.lots.map(\.quantity).reduce(0, +) - holding.quantity) < 1e-9)
        }
        if assets >= 10 { #expect(!request.portfolio.holdings.isEmpty) }
    }

    @Test func deterministic() throws {
        let a = try BenchRequests.serialized(.rebalance, assets: 50, seed: 1)
        let b = try BenchRequests.serialized(.rebalance, assets: 50, seed: 1)
        let c = try BenchRequests.serialized(.rebalance, assets: 50, seed: 2)
        let da = try Keel_V1_RebalanceRequest(serializedBytes: a)
        let db = try Keel_V1_RebalanceRequest(serializedBytes: b)
        let dc = try Keel_V1_RebalanceRequest(serializedBytes: c)
        #expect(da == db)
        #expect(da != dc)
    }

    @Test("price history: daily closes ending at each instrument's price, inline or as a batch")
    func priceHistory() throws {
        let plain = BenchRequests.rebalance(assets: 5, seed: 3)
        let batch = BenchRequests.priceHistory(for: plain, days: 30, seed: 3)
        #expect(batch.updates.count == 5 * 30)
        let day: Int64 = 86_400_000_000_000
        for (k, instrument) in plain.instruments.enumerated() {
            let points = Array(batch.updates[(k * 30)..<(k * 30 + 30)])
            #expect(points.allSatisfy { $0.instrumentID == instrument.id && $0.price > 0 })
            #expect(points.last?.price == instrument.price)
            #expect(points.last?.timeUnixNanos == plain.asOfUnixNanos)
            for j in 1..<30 { #expect(points[j].timeUnixNanos - points[j - 1].timeUnixNanos == day) }
            #expect(Set(points.map(\.price)).count > 10)
        }
        let inline = BenchRequests.rebalance(assets: 5, historyDays: 30, seed: 3)
        for (k, instrument) in inline.instruments.enumerated() {
            #expect(instrument.priceHistory.map(\.price) == batch.updates[(k * 30)..<(k * 30 + 30)].map(\.price))
        }
    }

    @Test("mandate variants bind caps and vary the profile, on the same instruments and holdings")
    func mandateVariants() throws {
        let base = BenchRequests.rebalance(assets: 50, seed: 42)
        var tolerances = Set<Int32>(), turnovers = Set<Double>(), sectorCaps = Set<Double>()
        var excluded = 0, basic = 0
        for variant in 1...60 {
            var request = base
            BenchRequests.varyMandate(&request, variant: variant)
            #expect(request.instruments == base.instruments)
            #expect(request.portfolio == base.portfolio)
            #expect(request.mandate.strategicWeights == base.mandate.strategicWeights)
            let caps = Set(request.mandate.sectorCaps.map(\.weight))
            #expect(caps.count == 1)
            sectorCaps.formUnion(caps)
            for (varied, original) in zip(request.mandate.assetClassCaps, base.mandate.assetClassCaps) {
                #expect(varied.id == original.id)
                #expect(varied.weight <= original.weight && varied.weight >= original.weight * 0.5)
            }
            tolerances.insert(request.riskProfile.riskTolerance)
            turnovers.insert(request.mandate.maxTurnover)
            if !request.mandate.excludedInstruments.isEmpty {
                excluded += 1
                #expect(request.mandate.excludedInstruments == base.instruments.prefix(10).map(\.id))
            }
            if request.riskProfile.knowledge == .basic { basic += 1 }
        }
        #expect(tolerances == Set(1...7))
        #expect(turnovers == [0.02, 0.05, 0.1, 0.3, 1.0])
        #expect(sectorCaps == [0.35, 0.25, 0.2, 0.15, 0.12])
        #expect(excluded == 20)
        #expect(basic == 15)
    }

    @Test func otherMethods() throws {
        let batch = try Keel_V1_PriceUpdateBatch(
            serializedBytes: try BenchRequests.serialized(.publishMarketData, assets: 25))
        #expect(batch.updates.count == 25)
        #expect(try BenchRequests.serialized(.healthCheck, assets: 1).isEmpty)
        #expect(try BenchRequests.serialized(.listModels, assets: 1).isEmpty)
    }
}
