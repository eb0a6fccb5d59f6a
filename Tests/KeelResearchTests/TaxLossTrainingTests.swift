import Foundation
import KeelInference
import KeelPortfolio
import Testing
@testable import KeelResearch

@Suite("Tax-loss forecaster training")
struct TaxLossTrainingTests {
    /// Three assets of 400 daily prices (one lists at row 50), seeded.
    static func data() throws -> MarketData {
        var rng = SplitMix64(seed: 11)
        let rows = 400, n = 3
        var prices = [Double](repeating: .nan, count: rows * n)
        var level = [100.0, 50.0, 20.0]
        for r in 0..<rows {
            for i in 0..<n {
                level[i] *= exp(0.0003 + 0.01 * rng.normal())
                if i != 2 || r >= 50 { prices[r * n + i] = level[i] }
            }
        }
        return try MarketData(name: "synthetic", assets: ["A", "B", "C"], prices: prices)
    }

    @Test func samplesAreAlignedAndDoNotLeakIntoTheTestPeriod() throws {
        let data = try Self.data()
        var c = TaxLossTrainingConfig()
        c.every = 5
        let split = TaxLossTraining.splitRow(data, config: c)
        #expect(split == 280)
        let train = TaxLossTraining.samples(data, rows: 0..<split, targetEnd: split, every: c.every)
        let test = TaxLossTraining.samples(data, rows: split..<data.rows, targetEnd: data.rows, every: c.every)
        #expect(train.count > 0 && test.count > 0)
        #expect(train.x.count == train.count * TaxLossFeatures.count)
        for k in 0..<train.count {
            #expect(train.row[k] + TaxLossFeatures.horizonDays < split)
            #expect(train.row[k] % 5 == 0)
            let i = train.asset[k], r = train.row[k]
            #expect(r >= data.firstRow[i] + TaxLossFeatures.minimumHistory - 1)
            #expect(abs(train.y[k] - log(data.price(r + 21, i) / data.price(r, i))) < 1e-12)
        }
        #expect(test.row.allSatisfy { $0 >= split && $0 + 21 < data.rows })
    }

    /// A planted signal: the target is 0.5·ret_5 + noise; the median fit
    /// finds the slope, and the evaluation credits it over a zero forecast.
    @Test func fitFindsAPlantedSignalAndTheEvaluationSeesIt() throws {
        var rng = SplitMix64(seed: 3)
        let f = TaxLossFeatures.count
        var x: [Float] = [], y: [Double] = []
        for _ in 0..<3000 {
            let row = (0..<f).map { _ in Float(rng.normal() * 0.05) }
            x += row
            y.append(0.5 * Double(row[0]) + 0.01 * (rng.unit() - 0.5))
        }
        let model = QuantileModel.fit(x: x, y: y, epochs: 800, learningRate: 0.01, quantiles: [0.5], featureCount: f)
        #expect(abs(Double(model.weights[0]) - 0.5) < 0.05)
        var test = TaxLossTraining.Samples()
        for k in 0..<600 {
            let row = (0..<f).map { _ in Float(rng.normal() * 0.05) }
            test.x += row
            test.y.append(0.5 * Double(row[0]) + 0.01 * (rng.unit() - 0.5))
            test.row.append(k / 6)
            test.asset.append(k % 6)
        }
        let e = TaxLossTraining.evaluate(model, test: test, dataset: "planted")
        let m = e.methods[0], zero = e.methods[1]
        #expect(m.name == "model" && zero.name == "zero")
        #expect(m.pinball < zero.pinball / 2)
        #expect(m.rankIC > 0.8 && m.pairHitRate > 0.85)
        #expect(zero.rankIC == 0 && zero.pairHitRate == 0.5)
        // The ONNX file computes the same forecasts on the C core.
        let bytes = model.onnx(graph: "g", producer: "p", rows: "instruments", output: "median_return", doc: "",
                               metadata: [("keel.kind", "tax_loss"),
                                          ("keel.features", TaxLossFeatures.names.joined(separator: ","))])
        let out = try Model(bytes: bytes).makeSession().run(features: Array(test.x[0..<(4 * f)]), rows: 4)
        #expect(out[0].shape == [4, 1])
        for (a, b) in zip(out[0].values, model.predict(Array(test.x[0..<(4 * f)]), rows: 4)) {
            #expect(abs(a - b) < 1e-5)
        }
    }

    @Test func spearmanOfKnownOrders() {
        #expect(TaxLossTraining.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1)
        #expect(TaxLossTraining.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1)
        #expect(TaxLossTraining.spearman([1, 1, 1], [1, 2, 3]) == nil)
    }

    @Test(arguments: ["trainFraction", "every", "epochs", "learningRate"])
    func badConfigIsAnError(field: String) {
        var c = TaxLossTrainingConfig()
        let message: String
        switch field {
        case "trainFraction": c.trainFraction = 0.95; message = "--train-fraction must be within 0.1...0.9"
        case "every": c.every = 0; message = "--every must be within 1...250"
        case "epochs": c.epochs = 0; message = "--epochs must be within 1...100000"
        default: c.learningRate = .nan; message = "--learning-rate must be within (0, 1]"
        }
        #expect(throws: ResearchError(.invalidArgument, message)) { try c.validate() }
    }
}
