import Foundation
import KeelAPI
import KeelInference
import KeelPortfolio
import KeelTestSupport
import Testing
@testable import KeelServing

@Suite("ForecastLiquidity and the cash floor it gives Rebalance")
struct LiquidityServiceTests {
    /// A liquidity model: p5 = −2, p50 = mean_30, p95 = +2 (scaled units).
    static func model(features: [String] = LiquidityFeatures.names) -> [UInt8] {
        let f = features.count
        var w = [Float](repeating: 0, count: 3 * f)
        if let k = features.firstIndex(of: "mean_30") { w[f + k] = 1 }
        var m = ONNXModel()
        m.inputs = [.init(name: "features", dims: [.param("days"), .value(f)])]
        m.outputs = [.init(name: "quantiles", dims: [.param("days"), .value(3)])]
        m.initializers = [.init(name: "w", dims: [3, Int64(f)], values: w, raw: true),
                          .init(name: "b", dims: [3], values: [-2, 0, 2], raw: true)]
        m.nodes = [.init(opType: "Gemm", inputs: ["features", "w", "b"], outputs: ["quantiles"], name: "head",
                         attributes: [.int("transB", 1)])]
        m.metadata = [("keel.kind", "liquidity"), ("keel.features", features.joined(separator: ","))]
        return m.encode()
    }

    static func fixture() throws -> KeelServiceTests.Fixture {
        let f = try KeelServiceTests.fixture()
        try f.scratch.write("liquidity", 1, model())
        f.repository.loadAll()
        return f
    }

    /// 200 days from 2025-01-01: −100 every business day, +2,000 on the first business day of each month.
    static func context(horizon: Int32 = 30) -> Keel_V1_LiquidityContext {
        var c = Keel_V1_LiquidityContext()
        let start = CivilDay.day(year: 2025, month: 1, day: 1)!
        for d in start..<(start + 200) where CivilDay.isBusinessDay(d) {
            var flow = Keel_V1_CashFlow()
            flow.date = CivilDay.iso(d)
            flow.amount = d == CivilDay.firstBusinessDay(ofMonthOf: d) ? 2_000 : -100
            c.history.append(flow)
        }
        c.horizonDays = horizon
        c.confidence = 0.95
        return c
    }

    static func request(_ c: Keel_V1_LiquidityContext) -> Keel_V1_ForecastLiquidityRequest {
        var r = Keel_V1_ForecastLiquidityRequest()
        r.requestID = "liq-1"
        r.liquidity = c
        return r
    }

    @Test func forecastPathAndBuffer() async throws {
        let f = try Self.fixture()
        var c = Self.context()
        var lump = Keel_V1_CashFlow()
        lump.date = "2025-07-25"
        lump.amount = -5_000
        c.scheduled = [lump]
        let r = try await KeelServiceTests.call(f.service, .forecastLiquidity, Self.request(c),
                                                as: Keel_V1_ForecastLiquidityResponse.self).get()
        #expect(r.requestID == "liq-1")
        #expect(r.path.count == 30)
        #expect(r.path.first?.date == "2025-07-19")  // the last flow is on Friday 2025-07-18
        #expect(r.path.allSatisfy { $0.p5 <= $0.p50 && $0.p50 <= $0.p95 })
        #expect(r.path.first { $0.date == "2025-07-25" }?.scheduled == -5_000)
        #expect(r.recommendedCashBuffer > 5_000)
        #expect(r.model.name == "liquidity" && r.model.version == 1)
        // A higher confidence asks for more cash.
        c.confidence = 0.99
        let r99 = try await KeelServiceTests.call(f.service, .forecastLiquidity, Self.request(c),
                                                  as: Keel_V1_ForecastLiquidityResponse.self).get()
        #expect(r99.recommendedCashBuffer > r.recommendedCashBuffer)
    }

    enum Bad: String, CaseIterable {
        case emptyHistory, horizonZero, horizonTooLong, badDate, outOfOrder, scheduledBeforeOrigin, badConfidence,
             infiniteAmount, hugeAmount

        func apply(_ c: inout Keel_V1_LiquidityContext) -> String {
            switch self {
            case .emptyHistory: c.history = []; return "liquidity.history is empty"
            case .horizonZero: c.horizonDays = 0; return "liquidity.horizon_days 0 is outside 1...90"
            case .horizonTooLong: c.horizonDays = 91; return "liquidity.horizon_days 91"
            case .badDate: c.history[3].date = "2025-13-01"; return "liquidity.history[3].date '2025-13-01'"
            case .outOfOrder: c.history[5].date = "2024-12-01"; return "liquidity.history[5].date 2024-12-01 comes before"
            case .scheduledBeforeOrigin:
                var flow = Keel_V1_CashFlow()
                flow.date = "2025-02-01"
                flow.amount = -1
                c.scheduled = [flow]
                return "liquidity.scheduled[0].date 2025-02-01 is not after"
            case .badConfidence: c.confidence = 1.5; return "liquidity.confidence 1.5"
            case .infiniteAmount: c.history[2].amount = .infinity; return "liquidity.history[2].amount"
            case .hugeAmount:
                c.history[4].amount = 1e16
                return "liquidity.history[4].amount 1e+16 is not a finite amount within ±1e15"
            }
        }
    }

    @Test(arguments: Bad.allCases)
    func badInputIsInvalidArgument(_ bad: Bad) async throws {
        let f = try Self.fixture()
        var c = Self.context()
        let expected = bad.apply(&c)
        let result = try await KeelServiceTests.call(f.service, .forecastLiquidity, Self.request(c),
                                                     as: Keel_V1_ForecastLiquidityResponse.self)
        guard case .failure(let status) = result else {
            Issue.record("accepted \(bad)")
            return
        }
        #expect(status.code == .invalidArgument)
        #expect(status.message.contains(expected), "\(status.message)")
    }

    @Test func withoutAModelItIsFailedPrecondition() async throws {
        let f = try KeelServiceTests.fixture()
        let result = try await KeelServiceTests.call(f.service, .forecastLiquidity, Self.request(Self.context()),
                                                     as: Keel_V1_ForecastLiquidityResponse.self)
        guard case .failure(let status) = result else {
            Issue.record("answered without a liquidity model")
            return
        }
        #expect(status.code == .failedPrecondition && status.message.contains("liquidity"))
    }

    @Test func aModelWithOtherFeaturesIsRefusedAtLoad() throws {
        let f = try KeelServiceTests.fixture()
        try f.scratch.write("liquidity", 1, Self.model(features: (0..<21).map { "x\($0)" }))
        f.repository.loadAll()
        #expect(f.repository.serving(name: "liquidity") == nil)
        #expect(f.repository.lastError(name: "liquidity")?.reason.contains("liquidity features") == true)
    }

    /// Rebalance keeps at least the forecast buffer in cash.
    @Test func rebalanceKeepsTheBufferInCash() async throws {
        let f = try Self.fixture()
        let ids = ["AAA", "BBB", "CCC", "DDD"]
        let plain = KeelServiceTests.rebalanceRequest(instruments: ids)
        var withLiquidity = plain
        var c = Self.context(horizon: 90)
        var lump = Keel_V1_CashFlow()
        lump.date = "2025-08-01"
        lump.amount = -40_000
        c.scheduled = [lump]
        withLiquidity.liquidity = c
        let a = try await KeelServiceTests.call(f.service, .rebalance, plain, as: Keel_V1_RebalanceResponse.self).get()
        let b = try await KeelServiceTests.call(f.service, .rebalance, withLiquidity,
                                                as: Keel_V1_RebalanceResponse.self).get()
        let forecast = try await KeelServiceTests.call(f.service, .forecastLiquidity, Self.request(c),
                                                       as: Keel_V1_ForecastLiquidityResponse.self).get()
        #expect(b.cashWeightAfter * b.totalValue >= forecast.recommendedCashBuffer - 1e-6)
        #expect(b.cashWeightAfter > a.cashWeightAfter)
        #expect(b.note.contains("liquidity forecast"))
        // Both models that shaped the decision are named, as the forecast names its own.
        #expect(!a.hasLiquidityModel)
        #expect(b.liquidityModel == forecast.model && b.liquidityModel.name == "liquidity")
        #expect(b.liquidityModel.sha256.count == 64 && b.model.name == "policy")
    }
}
