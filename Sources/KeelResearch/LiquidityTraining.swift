import Foundation
import KeelInference
import KeelPortfolio

/// Hyperparameters of `keel train liquidity` (docs/LIQUIDITY.md).
public struct LiquidityTrainingConfig: Sendable, Equatable, Codable {
    public var seed: UInt64 = 20_261_121
    /// Synthetic accounts to train on (half pension funds, half retail).
    public var accounts = 200
    /// Held-back accounts for the evaluation (other seeds).
    public var evaluationAccounts = 100
    /// Calendar days generated per account.
    public var days = 4 * 365
    /// Days of history before the first forecast origin.
    public var warmup = 365
    /// Days between forecast origins.
    public var originEvery = 14
    public var horizon = LiquidityFeatures.maxHorizon
    public var epochs = 300
    public var learningRate = 0.02
    /// Confidence of the recommended cash buffer in the evaluation.
    public var confidence = 0.95
    public init() {}

    public func validate() throws(ResearchError) {
        func need(_ ok: Bool, _ what: String) throws(ResearchError) {
            if !ok { throw ResearchError(.invalidArgument, what) }
        }
        try need(accounts >= 2 && accounts <= 10_000, "--accounts must be within 2...10000")
        try need(evaluationAccounts >= 2 && evaluationAccounts <= 10_000, "--evaluation-accounts must be within 2...10000")
        try need(warmup >= 180, "--warmup must be at least 180 days (the features look back 6 months)")
        try need(days >= warmup + 2 * LiquidityFeatures.maxHorizon && days <= 40 * 366,
                 "--days must exceed the warm-up by two horizons and be at most 40 years (14640)")
        try need(originEvery >= 1 && originEvery <= days, "--origin-every must be within 1...--days")
        try need((1...LiquidityFeatures.maxHorizon).contains(horizon), "--horizon must be within 1...90")
        try need(epochs >= 1 && epochs <= 100_000, "--epochs must be within 1...100000")
        try need(learningRate > 0 && learningRate.isFinite, "--learning-rate must be > 0")
        try need(confidence > 0.5 && confidence < 1, "--confidence must be within (0.5, 1)")
    }
}

/// A linear quantile model: one output per quantile from a row of
/// features, fitted by minimising the pinball loss with Adam, and written as
/// an ONNX Gemm that the server runs on the C core. The liquidity
/// forecaster (the defaults: p5, p50 and p95 of the scaled daily flow from
/// ``LiquidityFeatures``) and the tax-loss forecaster (the median 21-day
/// return from ``TaxLossFeatures``) are both this model.
public struct QuantileModel: Sendable, Equatable {
    public static let liquidityQuantiles = [0.05, 0.5, 0.95]
    public var quantiles: [Double]
    public var featureCount: Int
    /// `[quantiles × features]`, row-major (PyTorch layout, Gemm transB = 1).
    public var weights: [Float]
    public var bias: [Float]

    public init(weights: [Float], bias: [Float], quantiles: [Double] = liquidityQuantiles,
                featureCount: Int = LiquidityFeatures.count)
    {
        self.weights = weights
        self.bias = bias
        self.quantiles = quantiles
        self.featureCount = featureCount
    }

    /// The quantiles for feature rows (``quantiles``.count per row), as the
    /// ONNX file computes them.
    public func predict(_ x: [Float], rows: Int) -> [Float] {
        let f = featureCount, q = quantiles.count
        var out = [Float](repeating: 0, count: rows * q)
        for r in 0..<rows {
            for j in 0..<q {
                var s = bias[j]
                for i in 0..<f { s += weights[j * f + i] * x[r * f + i] }
                out[r * q + j] = s
            }
        }
        return out
    }

    /// The liquidity forecaster's file.
    public func onnx(metadata: [(String, String)]) -> [UInt8] {
        onnx(graph: "keel_liquidity", producer: "keel train liquidity", rows: "days", output: "quantiles",
             doc: "Linear quantile forecaster (p5, p50, p95) of the scaled daily net cash flow", metadata: metadata)
    }

    public func onnx(graph: String, producer: String, rows: String, output: String, doc: String,
                     metadata: [(String, String)]) -> [UInt8]
    {
        var m = ONNXModel()
        m.producerName = "keel"
        m.producerVersion = producer
        m.graphName = graph
        m.docString = doc
        let f = featureCount, q = quantiles.count
        m.inputs = [.init(name: "features", dims: [.param(rows), .value(f)])]
        m.outputs = [.init(name: output, dims: [.param(rows), .value(q)])]
        m.initializers = [.init(name: "head.weight", dims: [Int64(q), Int64(f)], values: weights, raw: true),
                          .init(name: "head.bias", dims: [Int64(q)], values: bias, raw: true)]
        m.nodes = [.init(opType: "Gemm", inputs: ["features", "head.weight", "head.bias"], outputs: [output],
                         name: "head", attributes: [.int("transB", 1)])]
        m.metadata = metadata
        return m.encode()
    }

    /// Fits the model to rows `x` (`featureCount` values each) and targets
    /// `y` by full-batch Adam on the mean pinball loss over `quantiles`.
    public static func fit(x: [Float], y: [Double], epochs: Int, learningRate: Double,
                           quantiles: [Double] = liquidityQuantiles, featureCount: Int = LiquidityFeatures.count,
                           progress: (Int, Double) -> Void = { _, _ in }) -> QuantileModel
    {
        let f = featureCount, nq = quantiles.count
        let rows = y.count
        let p = nq * (f + 1)
        var theta = [Double](repeating: 0, count: p)
        var m = theta, v = theta
        let xd = x.map(Double.init)
        for epoch in 1...max(1, epochs) {
            var grad = [Double](repeating: 0, count: p)
            var loss = 0.0
            xd.withUnsafeBufferPointer { xb in
                for r in 0..<rows {
                    let row = r * f
                    for j in 0..<nq {
                        let base = j * (f + 1)
                        var q = theta[base + f]
                        for i in 0..<f { q += theta[base + i] * xb[row + i] }
                        let tau = quantiles[j]
                        let e = y[r] - q
                        loss += e >= 0 ? tau * e : (tau - 1) * e
                        // d(loss)/dq = 1{y < q} − τ
                        let g = (e < 0 ? 1.0 : 0.0) - tau
                        for i in 0..<f { grad[base + i] += g * xb[row + i] }
                        grad[base + f] += g
                    }
                }
            }
            let n = Double(max(1, rows))
            for k in 0..<p {
                let g = grad[k] / n
                m[k] = 0.9 * m[k] + 0.1 * g
                v[k] = 0.999 * v[k] + 0.001 * g * g
                let mh = m[k] / (1 - pow(0.9, Double(epoch))), vh = v[k] / (1 - pow(0.999, Double(epoch)))
                theta[k] -= learningRate * mh / (vh.squareRoot() + 1e-8)
            }
            progress(epoch, loss / (Double(nq) * n))
        }
        var w = [Float](repeating: 0, count: nq * f), b = [Float](repeating: 0, count: nq)
        for j in 0..<nq {
            for i in 0..<f { w[j * f + i] = Float(theta[j * (f + 1) + i]) }
            b[j] = Float(theta[j * (f + 1) + f])
        }
        return QuantileModel(weights: w, bias: b, quantiles: quantiles, featureCount: f)
    }
}

/// Training data, evaluation and the report of `keel train liquidity`.
public enum LiquidityTraining {
    /// Feature rows and scaled targets for every origin (every `originEvery`
    /// days after the warm-up, while a whole horizon fits) of every account.
    public static func dataset(_ accounts: [SyntheticAccount], config: LiquidityTrainingConfig) -> (x: [Float], y: [Double]) {
        var x: [Float] = [], y: [Double] = []
        for a in accounts {
            var origin = config.warmup - 1
            while origin + config.horizon < a.days {
                let history = Array(a.flows[0...origin])
                let scale = LiquidityFeatures.scale(history)
                x += LiquidityFeatures.rows(history: history, firstDay: a.firstDay, horizon: config.horizon, scale: scale)
                for h in 1...config.horizon { y.append(a.flows[origin + h] / scale) }
                origin += config.originEvery
            }
        }
        return (x, y)
    }

    /// The buffer calibration from the model's forecasts on the training
    /// accounts (``BufferCalibration``).
    public static func calibrate(_ model: QuantileModel, accounts: [SyntheticAccount], config: LiquidityTrainingConfig)
        -> BufferCalibration?
    {
        var ks: [Double] = []
        for a in accounts {
            var origin = config.warmup - 1
            while origin + config.horizon < a.days {
                let history = Array(a.flows[0...origin])
                let scale = LiquidityFeatures.scale(history)
                let rows = LiquidityFeatures.rows(history: history, firstDay: a.firstDay, horizon: config.horizon,
                                                  scale: scale)
                let scheduled = (1...config.horizon).map { a.scheduled[origin + $0] }
                let path = LiquidityPlanner.path(quantiles: model.predict(rows, rows: config.horizon),
                                                 firstForecastDay: a.firstDay + origin + 1, scale: scale,
                                                 scheduled: scheduled)
                let realised = (1...config.horizon).map { a.flows[origin + $0] + a.scheduled[origin + $0] }
                ks.append(BufferCalibration.requiredMultiplier(path, realised: realised))
                origin += config.originEvery
            }
        }
        return BufferCalibration(samples: ks)
    }

    public struct MethodFigures: Sendable, Equatable {
        public var name: String
        /// Mean pinball loss over the three quantiles, in units of each
        /// account's scale (so that every account weighs the same).
        public var pinball: Double
        /// Share of days inside the forecast's 5–95 % interval.
        public var coverage: Double
    }

    public struct BufferFigures: Sendable, Equatable {
        public var name: String
        /// Mean buffer as a share of the account's value (the cash drag).
        public var meanBuffer: Double
        /// Share of forecasts after which cumulative net outflows exceeded
        /// the buffer on some day of the horizon.
        public var shortfalls: Double
    }

    public struct Evaluation: Sendable {
        public var methods: [MethodFigures]
        public var buffers: [BufferFigures]
        public var forecasts: Int
        public var days: Int
    }

    /// The model against seasonal-naive and exponential-smoothing
    /// baselines on held-back accounts, and its cash buffer against a fixed
    /// 5 % buffer.
    public static func evaluate(_ model: QuantileModel, calibration: BufferCalibration?, accounts: [SyntheticAccount],
                                config: LiquidityTrainingConfig) -> Evaluation
    {
        var loss = [0.0, 0.0, 0.0], inside = [0.0, 0.0, 0.0]
        var days = 0, forecasts = 0
        var bufferShare = 0.0, shortfalls = 0, fixedShortfalls = 0
        for a in accounts {
            var origin = config.warmup - 1
            while origin + config.horizon < a.days {
                let history = Array(a.flows[0...origin])
                let scale = LiquidityFeatures.scale(history)
                let rows = LiquidityFeatures.rows(history: history, firstDay: a.firstDay, horizon: config.horizon,
                                                  scale: scale)
                let q = model.predict(rows, rows: config.horizon)
                let actual = (1...config.horizon).map { a.flows[origin + $0] }
                var mine: [(p5: Double, p50: Double, p95: Double)] = []
                mine.reserveCapacity(config.horizon)
                for h in 0..<config.horizon {
                    var s: [Double] = [Double(q[h * 3]), Double(q[h * 3 + 1]), Double(q[h * 3 + 2])]
                    s.sort()
                    mine.append((p5: s[0] * scale, p50: s[1] * scale, p95: s[2] * scale))
                }
                let naive = LiquidityBaselines.seasonalNaive(history: history, firstDay: a.firstDay, horizon: config.horizon)
                let smooth = LiquidityBaselines.exponentialSmoothing(history: history, firstDay: a.firstDay,
                                                                     horizon: config.horizon)
                for (k, f) in [mine, naive, smooth].enumerated() {
                    loss[k] += ForecastMetrics.pinball(f, actual: actual) / scale * Double(config.horizon)
                    inside[k] += ForecastMetrics.coverage(f, actual: actual) * Double(config.horizon)
                }
                days += config.horizon
                forecasts += 1
                // The buffer for the next horizon, scheduled flows known.
                let scheduled = (1...config.horizon).map { a.scheduled[origin + $0] }
                let path = LiquidityPlanner.path(quantiles: q, firstForecastDay: a.firstDay + origin + 1, scale: scale,
                                                 scheduled: scheduled)
                let buffer = LiquidityPlanner.buffer(path, confidence: config.confidence, calibration: calibration)
                bufferShare += buffer / a.value
                var cumulative = 0.0, worst = 0.0
                for h in 0..<config.horizon {
                    cumulative += actual[h] + scheduled[h]
                    worst = min(worst, cumulative)
                }
                if -worst > buffer + 1e-9 { shortfalls += 1 }
                if -worst > 0.05 * a.value + 1e-9 { fixedShortfalls += 1 }
                origin += config.originEvery
            }
        }
        let n = Double(max(1, days)), k = Double(max(1, forecasts))
        let names = ["keel liquidity model", "seasonal naive", "exponential smoothing"]
        return Evaluation(
            methods: (0..<3).map { MethodFigures(name: names[$0], pinball: loss[$0] / n, coverage: inside[$0] / n) },
            buffers: [BufferFigures(name: "model buffer at \(formatNumber(config.confidence * 100)) %",
                                    meanBuffer: bufferShare / k, shortfalls: Double(shortfalls) / k),
                      BufferFigures(name: "fixed 5 % of value", meanBuffer: 0.05, shortfalls: Double(fixedShortfalls) / k)],
            forecasts: forecasts, days: days)
    }

    /// The report (`REPORT.md`) of a training run.
    public static func report(version: Int, command: String, date: String, config: LiquidityTrainingConfig,
                              evaluation e: Evaluation, trainingRows: Int, seconds: Double) -> String
    {
        var md = "# Liquidity forecaster v\(version): training report\n\n"
        md += "Trained \(date) by `\(command)` in \(String(format: "%.0f", seconds)) s. Method: docs/LIQUIDITY.md.\n\n"
        md += "**The data is synthetic.** Training and evaluation use cash flows made by Keel's seeded generator "
            + "(`Sources/KeelResearch/CashFlowGenerator.swift`: pension funds with monthly contributions, benefit "
            + "payments at month start, quarterly dividends and occasional lump sums; retail accounts with payday "
            + "deposits and irregular withdrawals), not by real accounts.\n\n"
        md += "- training: \(config.accounts) accounts (seed \(config.seed)), \(config.days) days each, a forecast "
            + "origin every \(config.originEvery) days after a \(config.warmup)-day warm-up, horizons 1–\(config.horizon): "
            + "\(trainingRows) rows; \(config.epochs) epochs of full-batch Adam (step \(config.learningRate)) on the "
            + "pinball loss of the 5 %, 50 % and 95 % quantiles.\n"
        md += "- evaluation: \(config.evaluationAccounts) held-back accounts (other seeds), \(e.forecasts) forecasts, "
            + "\(e.days) forecast days.\n\n"
        md += "## Forecast accuracy (held-back accounts)\n\n"
        md += "Pinball loss: mean over the three quantiles and all forecast days, in units of each account's scale "
            + "(its mean absolute daily flow). Coverage: share of days inside the 5–95 % interval (90 % expected).\n\n"
        md += "| method | pinball loss | vs best baseline | 5–95 % coverage |\n|---|---:|---:|---:|\n"
        let best = e.methods.dropFirst().map(\.pinball).min() ?? .nan
        for m in e.methods {
            md += "| \(m.name) | \(fixed(m.pinball, 4)) | \(m.name.hasPrefix("keel") ? percent(m.pinball / best - 1) : "") | "
                + "\(percent(m.coverage)) |\n"
        }
        md += "\nTarget: at least 20 % lower pinball loss than the best baseline: "
            + "\((e.methods.first?.pinball ?? .infinity) <= 0.8 * best ? "**met**" : "**not met**").\n\n"
        md += "## Cash buffer\n\n"
        md += "The recommended buffer covers cumulative net outflows (forecast and scheduled) over the next "
            + "\(config.horizon) days at \(formatNumber(config.confidence * 100)) % confidence. A shortfall: the "
            + "realised cumulative outflow exceeded the buffer on some day of the horizon.\n\n"
        md += "| buffer | mean size (share of value: the cash drag) | shortfall frequency |\n|---|---:|---:|\n"
        for b in e.buffers {
            md += "| \(b.name) | \(percent(b.meanBuffer)) | \(percent(b.shortfalls)) |\n"
        }
        md += "\nShortfalls allowed by the confidence level: \(percent(1 - config.confidence)). The buffer's multipliers "
            + "are calibrated on the training accounts (`keel.buffer_calibration` in the model; docs/LIQUIDITY.md).\n"
        return md
    }
}
