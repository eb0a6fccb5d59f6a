import Foundation
import KeelInference
import KeelPortfolio
import Testing
@testable import KeelResearch

@Suite("Liquidity forecaster training")
struct LiquidityTrainingTests {
    static func small() -> LiquidityTrainingConfig {
        var c = LiquidityTrainingConfig()
        c.accounts = 6
        c.evaluationAccounts = 4
        c.days = 2 * 365
        c.originEvery = 30
        c.epochs = 60
        return c
    }

    /// On data whose quantiles are known (y = 2·x₀ + uniform noise in
    /// [−1, 1]), the fit finds the 5 %, 50 % and 95 % quantile lines.
    @Test func quantileRegressionFindsKnownQuantiles() {
        var rng = SplitMix64(seed: 9)
        let f = LiquidityFeatures.count
        var x: [Float] = [], y: [Double] = []
        for _ in 0..<4000 {
            var row = [Float](repeating: 0, count: f)
            row[0] = Float(rng.unit() * 2 - 1)
            x += row
            y.append(2 * Double(row[0]) + (rng.unit() * 2 - 1))
        }
        let model = QuantileModel.fit(x: x, y: y, epochs: 1500, learningRate: 0.02)
        for (j, q) in [-0.9, 0.0, 0.9].enumerated() {
            #expect(abs(Double(model.weights[j * f]) - 2) < 0.15, "slope of quantile \(j)")
            #expect(abs(Double(model.bias[j]) - q) < 0.1, "intercept of quantile \(j)")
        }
    }

    /// The ONNX file computes what the model computes, on the C core.
    @Test func onnxMatchesPredict() throws {
        var rng = SplitMix64(seed: 4)
        let f = LiquidityFeatures.count
        let model = QuantileModel(weights: (0..<(3 * f)).map { _ in Float(rng.normal()) }, bias: [-1, 0, 1])
        let onnx = try Model(bytes: model.onnx(metadata: [("keel.kind", "liquidity"),
                                                          ("keel.features", LiquidityFeatures.names.joined(separator: ","))]))
        let x = (0..<(5 * f)).map { _ in Float(rng.normal()) }
        let out = try onnx.makeSession().run(features: x, rows: 5)
        #expect(out.first?.shape == [5, 3])
        for (a, b) in zip(out[0].values, model.predict(x, rows: 5)) { #expect(abs(a - b) < 1e-4 * max(1, abs(b))) }
    }

    /// Training, calibration and evaluation end to end on a few synthetic
    /// accounts: deterministic, and the calibrated buffer covers the
    /// training forecasts at the rate it claims.
    @Test func trainCalibrateEvaluate() throws {
        let c = Self.small()
        try c.validate()
        let accounts = CashFlowGenerator.population(count: c.accounts, seed: c.seed, days: c.days)
        let (x, y) = LiquidityTraining.dataset(accounts, config: c)
        #expect(x.count == y.count * LiquidityFeatures.count && !y.isEmpty)
        let model = QuantileModel.fit(x: x, y: y, epochs: c.epochs, learningRate: c.learningRate)
        #expect(model == QuantileModel.fit(x: x, y: y, epochs: c.epochs, learningRate: c.learningRate))
        let calibration = try #require(LiquidityTraining.calibrate(model, accounts: accounts, config: c))
        #expect(calibration.multiplier(0.99) >= calibration.multiplier(0.95))
        #expect(calibration.multiplier(0.95) >= calibration.multiplier(0.8))
        #expect(BufferCalibration(metadata: calibration.metadata)?.levels.count == calibration.levels.count)
        let onTraining = LiquidityTraining.evaluate(model, calibration: calibration, accounts: accounts, config: c)
        #expect(onTraining.buffers[0].shortfalls <= 0.05 + 1e-9)
        let held = CashFlowGenerator.population(count: c.evaluationAccounts, seed: 77, days: c.days)
        let e = LiquidityTraining.evaluate(model, calibration: calibration, accounts: held, config: c)
        #expect(e.methods.map(\.name) == ["keel liquidity model", "seasonal naive", "exponential smoothing"])
        #expect(e.methods.allSatisfy { $0.pinball.isFinite && $0.pinball > 0 && $0.coverage >= 0 && $0.coverage <= 1 })
        #expect(e.forecasts > 0 && e.days == e.forecasts * c.horizon)
        let report = LiquidityTraining.report(version: 1, command: "keel train liquidity", date: "2026-11-21", config: c,
                                              evaluation: e, trainingRows: y.count, seconds: 1)
        #expect(report.contains("**The data is synthetic.**"))
        #expect(report.contains("| seasonal naive |"))
    }

    @Test func calibrationParsing() {
        #expect(BufferCalibration(metadata: nil) == nil)
        #expect(BufferCalibration(metadata: "") == nil)
        #expect(BufferCalibration(metadata: "0.9=x") == nil)
        let c = BufferCalibration(metadata: "0.9=1,0.95=2")!
        #expect(abs(c.multiplier(0.925) - 1.5) < 1e-12)
        #expect(c.multiplier(0.6) == 1)
        #expect(c.multiplier(0.99) > 2)
    }

    @Test(arguments: [
        { (c: inout LiquidityTrainingConfig) in c.accounts = 1 }, { $0.warmup = 30 }, { $0.days = 400 },
        { $0.horizon = 91 }, { $0.epochs = 0 }, { $0.confidence = 1 }, { $0.learningRate = 0 },
    ] as [@Sendable (inout LiquidityTrainingConfig) -> Void])
    func badConfigIsAnError(change: @Sendable (inout LiquidityTrainingConfig) -> Void) {
        var c = LiquidityTrainingConfig()
        change(&c)
        #expect(throws: ResearchError.self) { try c.validate() }
    }
}
