#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import KeelPortfolio

/// Settings of `keel train tax-loss`.
public struct TaxLossTrainingConfig: Sendable, Equatable, Codable {
    /// Share of each data set's rows (oldest first) used for training; the
    /// rest is the held-back test period. Training targets end before it.
    public var trainFraction = 0.7
    /// Rows between samples of one asset (5: weekly).
    public var every = 5
    public var epochs = 400
    public var learningRate = 0.01
    public init() {}

    public func validate() throws(ResearchError) {
        func need(_ ok: Bool, _ what: String) throws(ResearchError) {
            if !ok { throw ResearchError(.invalidArgument, what) }
        }
        try need(trainFraction >= 0.1 && trainFraction <= 0.9, "--train-fraction must be within 0.1...0.9")
        try need(every >= 1 && every <= 250, "--every must be within 1...250")
        try need(epochs >= 1 && epochs <= 100_000, "--epochs must be within 1...100000")
        try need(learningRate > 0 && learningRate <= 1, "--learning-rate must be within (0, 1]")
    }
}

/// Training data, evaluation and the report of `keel train tax-loss`: a
/// linear median regression (``QuantileModel`` with τ = 0.5) of an
/// instrument's log return over the next ``TaxLossFeatures/horizonDays``
/// trading days on ``TaxLossFeatures``.
public enum TaxLossTraining {
    /// Samples of one data set: feature rows, targets, and the row (date)
    /// and asset of each.
    public struct Samples: Sendable {
        public var x: [Float] = []
        public var y: [Double] = []
        public var row: [Int] = []
        public var asset: [Int] = []
        public var count: Int { y.count }
    }

    /// The row where `data`'s test period starts.
    public static func splitRow(_ data: MarketData, config: TaxLossTrainingConfig) -> Int {
        Int((Double(data.rows) * config.trainFraction).rounded(.down))
    }

    /// Samples whose feature row ends in `rows` and whose target ends before
    /// `targetEnd`: every `every`-th row of each listed asset.
    public static func samples(_ data: MarketData, rows: Range<Int>, targetEnd: Int, every: Int) -> Samples {
        let h = TaxLossFeatures.horizonDays
        var out = Samples()
        let n = data.assetCount
        for i in 0..<n {
            let first = data.firstRow[i]
            guard first < data.rows else { continue }
            var closes: [Double] = []
            closes.reserveCapacity(data.rows - first)
            for r in first..<data.rows { closes.append(data.price(r, i)) }
            var t = max(rows.lowerBound, first + TaxLossFeatures.minimumHistory - 1)
            // Align sampling on a common grid so that assets share dates.
            t += (every - t % every) % every
            while t < rows.upperBound, t + h < min(targetEnd, data.rows) {
                let k = t - first
                let target = log(closes[k + h] / closes[k])
                if target.isFinite, TaxLossFeatures.appendRow(prices: closes, end: k, to: &out.x) {
                    out.y.append(target)
                    out.row.append(t)
                    out.asset.append(i)
                }
                t += every
            }
        }
        return out
    }

    /// One method's figures on the test samples.
    public struct Figures: Sendable, Equatable {
        public var name: String
        /// Mean pinball loss at τ = 0.5 (half the mean absolute error).
        public var pinball: Double
        /// Mean over dates of the rank correlation between forecast and outcome.
        public var rankIC: Double
        /// Share of same-date pairs whose better 21-day return the forecast picks.
        public var pairHitRate: Double
    }

    public struct Evaluation: Sendable {
        public var dataset: String
        public var samples: Int
        public var dates: Int
        public var methods: [Figures]
    }

    /// The model against two baselines on the test samples: a zero forecast
    /// and the trailing 126-day return scaled to 21 days (momentum).
    public static func evaluate(_ model: QuantileModel, test: Samples, dataset: String) -> Evaluation {
        let f = TaxLossFeatures.count
        let predicted = model.predict(test.x, rows: test.count).map(Double.init)
        let momentum = (0..<test.count).map { Double(test.x[$0 * f + 3]) / 6 }
        let zero = [Double](repeating: 0, count: test.count)
        var byRow: [Int: [Int]] = [:]
        for k in 0..<test.count { byRow[test.row[k], default: []].append(k) }
        let dates = byRow.keys.sorted().filter { byRow[$0]!.count >= 3 }
        func figures(_ name: String, _ forecast: [Double]) -> Figures {
            var pinball = 0.0
            for k in 0..<test.count { pinball += 0.5 * abs(test.y[k] - forecast[k]) }
            var icSum = 0.0, icCount = 0, hits = 0.0, pairs = 0
            for r in dates {
                let idx = byRow[r]!
                if let ic = spearman(idx.map { forecast[$0] }, idx.map { test.y[$0] }) { icSum += ic; icCount += 1 }
                for a in 0..<idx.count {
                    for b in (a + 1)..<idx.count {
                        let dy = test.y[idx[a]] - test.y[idx[b]], df = forecast[idx[a]] - forecast[idx[b]]
                        guard dy != 0 else { continue }
                        pairs += 1
                        hits += df == 0 ? 0.5 : (df > 0) == (dy > 0) ? 1 : 0
                    }
                }
            }
            return Figures(name: name, pinball: pinball / Double(max(1, test.count)),
                           rankIC: icCount > 0 ? icSum / Double(icCount) : 0,
                           pairHitRate: pairs > 0 ? hits / Double(pairs) : 0.5)
        }
        return Evaluation(dataset: dataset, samples: test.count, dates: dates.count,
                          methods: [figures("model", predicted), figures("zero", zero),
                                    figures("momentum (126-day return / 6)", momentum)])
    }

    /// Spearman rank correlation (average ranks for ties), nil when either
    /// side is constant.
    static func spearman(_ a: [Double], _ b: [Double]) -> Double? {
        func ranks(_ v: [Double]) -> [Double] {
            let order = v.indices.sorted { v[$0] < v[$1] }
            var r = [Double](repeating: 0, count: v.count)
            var k = 0
            while k < order.count {
                var j = k
                while j + 1 < order.count, v[order[j + 1]] == v[order[k]] { j += 1 }
                for m in k...j { r[order[m]] = Double(k + j) / 2 }
                k = j + 1
            }
            return r
        }
        let ra = ranks(a), rb = ranks(b)
        let n = Double(a.count)
        let ma = ra.reduce(0, +) / n, mb = rb.reduce(0, +) / n
        var sab = 0.0, saa = 0.0, sbb = 0.0
        for k in a.indices {
            sab += (ra[k] - ma) * (rb[k] - mb)
            saa += (ra[k] - ma) * (ra[k] - ma)
            sbb += (rb[k] - mb) * (rb[k] - mb)
        }
        guard saa > 0, sbb > 0 else { return nil }
        return sab / (saa * sbb).squareRoot()
    }

    /// REPORT.md of a trained tax-loss forecaster.
    public static func report(version: Int, command: String, date: String, config: TaxLossTrainingConfig,
                              model: QuantileModel, trainingSamples: Int, evaluations: [Evaluation],
                              seconds: Double) -> String
    {
        func f(_ v: Double, _ d: Int) -> String { Format.fixed(v, d) }
        var s = """
            # Tax-loss forecaster, version \(version)

            Trained \(date) by `\(command)` in \(f(seconds, 1)) s.

            **What it predicts.** The median log return of an instrument over the next \
            \(TaxLossFeatures.horizonDays) trading days (about the 31 calendar days an instrument sold at a loss \
            may not be bought back), from its own daily closes: \(TaxLossFeatures.names.map { "`\($0)`" }.joined(separator: ", ")) \
            (definitions in docs/TAX.md). The server scores a harvest as the tax saving over the proceeds plus the \
            forecast return of the replacement (or 0 for cash) minus that of the instrument sold; a negative score \
            means waiting is expected to be better, and the proposal is not made.

            **Method.** A linear model fitted by minimising the pinball loss at τ = 0.5 (median regression, robust to \
            the fat tails of monthly returns) with full-batch Adam: \(config.epochs) epochs, step \
            \(config.learningRate), one sample every \(config.every) rows per asset, \(trainingSamples) training samples. \
            Each data set is split in time: the first \(f(config.trainFraction * 100, 0)) % of its rows train (targets \
            end before the split), the rest is held back and only reported below.

            **Weights** (per feature; intercept \(f(Double(model.bias[0]), 5))): \
            \(zip(TaxLossFeatures.names, model.weights).map { "`\($0)` \(f(Double($1), 5))" }.joined(separator: ", ")).

            ## Held-back test periods

            Pinball loss (lower is better), the mean rank correlation of forecast and outcome across the instruments \
            of each date (rank IC), and how often the forecast picks the better of two instruments over the next \
            \(TaxLossFeatures.horizonDays) days (pair hit rate; 50 % is a coin).

            | data set | method | samples | dates | pinball | rank IC | pair hit rate |
            |---|---|---:|---:|---:|---:|---:|

            """
        for e in evaluations {
            for m in e.methods {
                s += "| \(e.dataset) | \(m.name) | \(e.samples) | \(e.dates) | \(f(m.pinball, 5)) | \(f(m.rankIC, 3)) | "
                    + "\(f(m.pairHitRate * 100, 1)) % |\n"
            }
        }
        s += """

            **Read this honestly.** Forecasting one month of a stock's return from its own price history is \
            close to impossible; a rank IC of a few hundredths is typical of real signals, and this model makes no \
            larger claim. Its role in harvesting is small by design: the tax saving is usually several percent of \
            the proceeds while the forecast spread between two instruments is a fraction of a percent, so the \
            forecaster only stops harvests whose tax saving is tiny and whose replacement is expected to lag.

            """
        return s
    }
}
