import Foundation
import KeelPortfolio
@testable import KeelResearch

/// Small synthetic market data, generated in code from a seed.
enum Synthetic {
    /// `periods` rows of price relatives for `assets` assets: lognormal daily
    /// moves (drift 0.03 %, volatility 1.5 %) with a little mean reversion,
    /// so that strategies differ.
    static func relatives(assets: Int, periods: Int, seed: UInt64) -> [Double] {
        var rng = SplitMix64(seed: seed)
        var x = [Double](repeating: 1, count: assets * periods)
        var last = [Double](repeating: 0, count: assets)
        for t in 0..<periods {
            for i in 0..<assets {
                let r = 0.0003 + 0.015 * rng.normal() - 0.2 * last[i]
                last[i] = r
                x[t * assets + i] = exp(r)
            }
        }
        return x
    }

    static func csv(assets: Int, periods: Int, seed: UInt64) -> String {
        let x = relatives(assets: assets, periods: periods, seed: seed)
        var lines = [(0..<assets).map { "a\($0)" }.joined(separator: ",")]
        for t in 0..<periods {
            lines.append((0..<assets).map { String(x[t * assets + $0]) }.joined(separator: ","))
        }
        return lines.joined(separator: "\n") + "\n"
    }

    static func data(assets: Int = 5, periods: Int = 300, seed: UInt64 = 7) throws -> MarketData {
        try MarketData.parse(Array(csv(assets: assets, periods: periods, seed: seed).utf8), name: "synthetic.csv")
    }

    /// Priced data with dates; asset `late` lists at row `listing`.
    static func priced(assets: Int = 4, rows: Int = 200, late: Int = 3, listing: Int = 50, seed: UInt64 = 11) throws
        -> MarketData
    {
        let x = relatives(assets: assets, periods: rows, seed: seed)
        var lines = ["date," + (0..<assets).map { "s\($0)" }.joined(separator: ",")]
        var p = [Double](repeating: 50, count: assets)
        var day = Date(timeIntervalSince1970: 946_684_800)  // 2000-01-01
        let format = DateFormatter()
        format.dateFormat = "yyyy-MM-dd"
        format.timeZone = TimeZone(identifier: "UTC")
        for t in 0..<rows {
            var cells = [format.string(from: day)]
            for i in 0..<assets {
                p[i] *= x[t * assets + i]
                cells.append(i == late && t < listing ? "" : String(p[i]))
            }
            lines.append(cells.joined(separator: ","))
            day += 86_400
        }
        return try MarketData.parse(Array((lines.joined(separator: "\n") + "\n").utf8), name: "priced.csv")
    }
}

/// A scorer computed in Swift from the features: `weight · row`.
struct LinearScorer: PolicyScorer {
    let weights: [Float]
    var featureNames: [String] { FeatureSet.names }

    func scores(_ features: [Float], rows: Int) throws -> [Float] {
        (0..<rows).map { r in
            var s: Float = 0
            for j in 0..<FeatureSet.count { s += weights[j] * features[r * FeatureSet.count + j] }
            return s
        }
    }

    /// Buys what fell over the last five days (short-term reversal).
    static let reversal = LinearScorer(weights: [0, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
}

func relativeError(_ a: Double, _ b: Double) -> Double { abs(a - b) / max(abs(b), 1e-300) }
