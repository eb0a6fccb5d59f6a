import Foundation
import Testing

@testable import KeelPortfolio

@Suite("FeatureSet: statistics, rows, names")
struct FeatureSetTests {
    static func close(_ a: Double, _ b: Double, _ tol: Double = 1e-12) -> Bool { abs(a - b) <= tol * max(1, abs(b)) }

    @Test("constant growth: known log returns, EWMA volatility = the daily return, no drawdown",
          arguments: [0.001, 0.004, -0.002])
    func constantGrowthStats(r: Double) {
        let prices = geometricSeries(count: 100, dailyLogReturn: r, last: 50)
        let s = FeatureSet.stats(prices)
        #expect(s.returns == 99)
        #expect(Self.close(s.dailyVolatility!, abs(r), 1e-9))
        #expect(Self.close(s.logReturn1, r, 1e-9))
        #expect(Self.close(s.logReturn5, 5 * r, 1e-9))
        #expect(Self.close(s.logReturn21, 21 * r, 1e-9))
        #expect(Self.close(s.logReturn63, 63 * r, 1e-9))
        // From 63 to 5 days ago: 58 returns.
        #expect(Self.close(s.momentum, 58 * r, 1e-9))
        #expect(s.windows == (1, 5, 21, 63, 58))
        // Drawdown over the last 64 prices (63 returns): 0 when rising, exp(63 r) − 1 when falling.
        #expect(Self.close(s.drawdown63, r >= 0 ? 0 : exp(63 * r) - 1, 1e-9))
    }

    @Test("the EWMA volatility matches the definition on a random series")
    func ewmaMatchesReference() {
        var rng = SplitMix64(seed: 3)
        for count in [2, 3, 11, 12, 30, 130] {
            let p = randomWalk(&rng, count: count, dailyVol: 0.02, last: 10)
            #expect(Self.close(FeatureSet.stats(p).dailyVolatility!, referenceDailyVolatility(p)!, 1e-12))
        }
    }

    @Test("short series: windows shrink to the history; no return gives zeros and no volatility")
    func shortSeries() {
        let one = FeatureSet.stats([42])
        #expect(one.returns == 0 && one.dailyVolatility == nil)
        #expect(one.logReturn1 == 0 && one.logReturn63 == 0 && one.momentum == 0 && one.drawdown63 == 0)
        let empty = FeatureSet.stats([Double]())
        #expect(empty.returns == 0 && empty.dailyVolatility == nil && empty.drawdown63 == 0)
        let three = FeatureSet.stats([100, 110, 99])
        #expect(three.returns == 2)
        #expect(three.windows.0 == 1 && three.windows.1 == 2 && three.windows.2 == 2 && three.windows.4 == 0)
        #expect(Self.close(three.logReturn5, log(99.0 / 100)))
        #expect(Self.close(three.drawdown63, 99.0 / 110 - 1))
        // Momentum needs more than 5 returns: 7 prices give the return from the first to the second.
        let seven = FeatureSet.stats([1, 2, 4, 8, 16, 32, 64])
        #expect(seven.windows.4 == 1 && Self.close(seven.momentum, log(2)))
    }

    @Test("series(of:) appends the current price only when it differs from the last point")
    func seriesOfInstrument() {
        let same = Instrument.test("A", price: 10, history: [9, 10])
        #expect(FeatureSet.series(of: same) == [9, 10])
        let new = Instrument.test("A", price: 11, history: [9, 10])
        #expect(FeatureSet.series(of: new) == [9, 10, 11])
        #expect(FeatureSet.series(of: Instrument.test("A", price: 11)) == [11])
    }

    @Test("fill: z-scores with known volatility, cross-sectional features and weights")
    func fillKnownAnswers() {
        let up = FeatureSet.stats(geometricSeries(count: 100, dailyLogReturn: 0.001, last: 10))
        let down = FeatureSet.stats(geometricSeries(count: 100, dailyLogReturn: -0.003, last: 10))
        let none = FeatureSet.stats([5])
        var out = [Float](repeating: .nan, count: 3 * FeatureSet.count)
        FeatureSet.fill(&out, stats: [up, down, none], defaultVolatility: [0.2, 0.2, 0.06],
                        current: [0.5, 0.3, 0], strategic: [0.4, 0.4, 0.2])
        func f(_ row: Int, _ name: String) -> Double {
            Double(out[row * FeatureSet.count + FeatureSet.names.firstIndex(of: name)!])
        }
        let tol = 1e-5
        // Constant growth: each z = ±√window.
        for (row, sign) in [(0, 1.0), (1, -1.0)] {
            #expect(abs(f(row, "ret_1d_z") - sign) < tol)
            #expect(abs(f(row, "ret_5d_z") - sign * sqrt(5.0)) < tol)
            #expect(abs(f(row, "ret_21d_z") - sign * sqrt(21.0)) < tol)
            #expect(abs(f(row, "ret_63d_z") - sign * sqrt(63.0)) < tol)
            #expect(abs(f(row, "momentum_z") - sign * sqrt(58.0)) < tol)
        }
        let vols = [0.001 * sqrt(252.0), 0.003 * sqrt(252.0), 0.06]
        for row in 0..<3 { #expect(abs(f(row, "vol_ann") - vols[row]) < tol) }
        let meanVol = vols.reduce(0, +) / 3
        for row in 0..<3 { #expect(abs(f(row, "vol_rel") - vols[row] / meanVol) < tol) }
        #expect(f(0, "drawdown_63d") == 0)
        #expect(abs(f(1, "drawdown_63d") - (exp(-0.189) - 1)) < tol)
        // No returns: return features 0.
        for name in ["ret_1d_z", "ret_5d_z", "ret_21d_z", "ret_63d_z", "momentum_z", "drawdown_63d"] {
            #expect(f(2, name) == 0)
        }
        let z21 = [sqrt(21.0), -sqrt(21.0), 0]
        let meanZ = z21.reduce(0, +) / 3
        for row in 0..<3 { #expect(abs(f(row, "rel_ret_21d_z") - (z21[row] - meanZ)) < tol) }
        #expect(f(0, "weight_current") == 0.5 && abs(f(1, "weight_strategic") - 0.4) < 1e-7)
        #expect(abs(f(0, "drift") - 0.1) < 1e-7 && abs(f(2, "drift") + 0.2) < 1e-7)
        #expect(out.allSatisfy { $0.isFinite })
    }

    @Test("risk-adjusted features are clipped to ±10")
    func clipping() {
        // 30 rising days, then 33 flat ones: the EWMA volatility decays while the
        // 63-day return stays, so the raw 63-day z-score is above 10.
        var p = [100.0]
        for _ in 0..<40 { p.append(p.last! * exp(0.01)) }
        for _ in 0..<33 { p.append(p.last!) }
        let s = FeatureSet.stats(p)
        let raw = s.logReturn63 / (s.dailyVolatility! * sqrt(63.0))
        #expect(raw > 10)
        var out = [Float](repeating: 0, count: FeatureSet.count)
        FeatureSet.fill(&out, stats: [s], defaultVolatility: [0.2], current: [0], strategic: [0])
        #expect(out[3] == 10)
        #expect(out[8] == 0, "rel_ret_21d_z of a single asset is 0")
        #expect(out[6] == 1, "vol_rel of a single asset is 1")
    }

    @Test("the feature names are fixed: 12, in the documented order")
    func names() {
        #expect(FeatureSet.count == 12)
        #expect(FeatureSet.names.first == "ret_1d_z" && FeatureSet.names.last == "drift")
        #expect(Set(FeatureSet.names).count == FeatureSet.count)
    }

    @Test("mismatch: nil when equal, the count when it differs, the first differing name otherwise")
    func mismatchMessages() throws {
        #expect(FeatureSet.mismatch(FeatureSet.names) == nil)
        let short = try #require(FeatureSet.mismatch(Array(FeatureSet.names.dropLast())))
        #expect(short.contains("names 11 features") && short.contains("has 12"))
        #expect(short.contains(FeatureSet.names.joined(separator: ",")))
        let empty = try #require(FeatureSet.mismatch([]))
        #expect(empty.contains("names 0 features"))
        var renamed = FeatureSet.names
        renamed[3] = "ret_3m_z"
        let wrong = try #require(FeatureSet.mismatch(renamed))
        #expect(wrong.hasPrefix("keel.features[3] is 'ret_3m_z' but Keel's feature 3 is 'ret_63d_z'"))
        var swapped = FeatureSet.names
        swapped.swapAt(10, 11)
        #expect(FeatureSet.mismatch(swapped)?.hasPrefix("keel.features[10] is 'drift'") == true)
    }
}
