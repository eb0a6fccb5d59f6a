import Foundation
import Testing

@testable import KeelPortfolio

@Suite("Limits: forced point and projections")
struct LimitsTests {
    /// Limits over `n` instruments with the given sectors/classes and caps;
    /// `hi` is set directly afterwards by the tests that need it.
    static func limits(n: Int, sectors: [String] = [], classes: [AssetClass] = [], sectorCaps: [String: Double] = [:],
                       classCaps: [AssetClass: Double] = [:], minCash: Double = 0) -> Limits
    {
        let instruments = (0..<n).map { i in
            Instrument(id: "I\(i)", price: 1, sector: sectors.isEmpty ? "" : sectors[i],
                       assetClass: classes.isEmpty ? .equity : classes[i])
        }
        let mandate = Mandate(strategicWeights: [], sectorCaps: sectorCaps, assetClassCaps: classCaps,
                              minCashWeight: minCash)
        return Limits(instruments: instruments, current: [Double](repeating: 0, count: n), mandate: mandate,
                      profile: RiskProfile(riskTolerance: 4, knowledge: .advanced))
    }

    /// The projection onto {0 ≤ w ≤ hi, Σw = s} by bisection on the shift λ
    /// (200 halvings), or hi when Σhi ≤ s.
    static func referenceWaterfill(_ t: [Double], hi: [Double], _ s: Double, halvings: Int = 200) -> [Double] {
        let n = t.count
        var capacity = 0.0
        for i in 0..<n { capacity += hi[i] }
        if capacity <= s { return hi }
        func g(_ l: Double) -> Double {
            var sum = 0.0
            for i in 0..<n { sum += min(max(t[i] - l, 0), hi[i]) }
            return sum
        }
        var lo = -2.0, up = 2.0
        for i in 0..<n { lo = min(lo, t[i] - hi[i] - 1); up = max(up, t[i] + 1) }
        for _ in 0..<halvings {
            let mid = (lo + up) / 2
            if g(mid) > s { lo = mid } else { up = mid }
        }
        let l = (lo + up) / 2
        return (0..<n).map { min(max(t[$0] - l, 0), hi[$0]) }
    }

    /// A slow reference for the projection with group caps: projected
    /// gradient ascent on the dual of the group constraints, each step an
    /// exact box-and-budget projection (bisection). Converges to the exact
    /// projection when the constraints are consistent.
    static func referenceProjection(_ t: [Double], hi: [Double], s: Double, sectorOf: [Int], sectorCaps: [Double],
                                    classOf: [Int], classCaps: [Double], iterations: Int = 5_000) -> [Double]
    {
        let n = t.count
        var mu = [Double](repeating: 0, count: sectorCaps.count), nu = [Double](repeating: 0, count: classCaps.count)
        var sizeS = [Int](repeating: 0, count: sectorCaps.count), sizeC = [Int](repeating: 0, count: classCaps.count)
        for i in 0..<n {
            if sectorOf[i] >= 0 { sizeS[sectorOf[i]] += 1 }
            if classOf[i] >= 0 { sizeC[classOf[i]] += 1 }
        }
        let eta = 1 / Double(max(1, (sizeS.max() ?? 0) + (sizeC.max() ?? 0)))
        var w = t
        var shifted = t
        for _ in 0..<iterations {
            for i in 0..<n {
                shifted[i] = t[i] - (sectorOf[i] >= 0 ? mu[sectorOf[i]] : 0) - (classOf[i] >= 0 ? nu[classOf[i]] : 0)
            }
            w = referenceWaterfill(shifted, hi: hi, s, halvings: 64)
            var sumS = [Double](repeating: 0, count: mu.count), sumC = [Double](repeating: 0, count: nu.count)
            for i in 0..<n {
                if sectorOf[i] >= 0 { sumS[sectorOf[i]] += w[i] }
                if classOf[i] >= 0 { sumC[classOf[i]] += w[i] }
            }
            for g in mu.indices { mu[g] = max(0, mu[g] + eta * (sumS[g] - sectorCaps[g])) }
            for g in nu.indices { nu[g] = max(0, nu[g] + eta * (sumC[g] - classCaps[g])) }
        }
        return w
    }

    static func maxDifference(_ a: [Double], _ b: [Double]) -> Double { zip(a, b).map { abs($0 - $1) }.max() ?? 0 }

    // MARK: - Water-filling

    @Test("waterfill is the exact projection onto the box and budget (against bisection)", arguments: 0..<4)
    func waterfillExact(batch: Int) {
        var rng = SplitMix64(seed: 100 + UInt64(batch))
        for _ in 0..<250 {
            let n = rng.int(1...30)
            var l = Self.limits(n: n)
            l.hi = (0..<n).map { _ in rng.chance(0.15) ? 0 : (rng.chance(0.3) ? 1 : rng.uniform(0, 0.5)) }
            let t = (0..<n).map { _ in rng.chance(0.1) ? -rng.uniform(0, 0.3) : rng.uniform(0, 0.6) }
            let s = rng.pick([0, 1, rng.uniform(0, 1.2)])
            let w = l.waterfill(t, s)
            let reference = Self.referenceWaterfill(t, hi: l.hi, s)
            #expect(Self.maxDifference(w, reference) < 1e-12, "n \(n) s \(s)")
            #expect(zip(w, l.hi).allSatisfy { $0 >= 0 && $0 <= $1 })
            let total = w.reduce(0, +)
            #expect(abs(total - min(s, l.hi.reduce(0, +))) < 1e-12)
        }
    }

    @Test("project without group caps: the exact projection, feasible, Σ = min(invested, 1 − min cash)", arguments: 0..<4)
    func projectWithoutGroups(batch: Int) {
        var rng = SplitMix64(seed: 200 + UInt64(batch))
        for _ in 0..<250 {
            let n = rng.int(1...40)
            let minCash = rng.chance(0.5) ? 0 : rng.uniform(0, 0.3)
            var l = Self.limits(n: n, minCash: minCash)
            l.hi = (0..<n).map { _ in rng.chance(0.1) ? 0 : rng.uniform(0.01, 1) }
            let t = (0..<n).map { _ in rng.uniform(-0.1, 0.5) }
            let invested = rng.uniform(0, 1)
            let w = l.project(t, invested: invested)
            #expect(l.violation(w) == nil)
            let reference = Self.referenceWaterfill(t, hi: l.hi, min(invested, 1 - minCash))
            #expect(Self.maxDifference(w, reference) < 1e-11)
        }
    }

    @Test("project with sector and asset-class caps: feasible and close to the slow reference", arguments: 0..<4)
    func projectWithGroups(batch: Int) {
        var rng = SplitMix64(seed: 300 + UInt64(batch))
        let sectorNames = ["A", "B", "C"]
        let classes: [AssetClass] = [.equity, .fixedIncome, .commodity]
        var worst = 0.0
        for _ in 0..<15 {
            let n = rng.int(2...8)
            let sectors = (0..<n).map { _ in rng.pick(sectorNames) }
            let assetClasses = (0..<n).map { _ in rng.pick(classes) }
            // A feasible point x0 fixes consistent caps and budget.
            let hi = (0..<n).map { _ in rng.uniform(0.05, 0.6) }
            var x0 = hi.map { $0 * rng.uniform(0, 1) }
            let total = x0.reduce(0, +)
            if total > 1 { x0 = x0.map { $0 / total * rng.uniform(0.5, 1) } }
            var sectorCaps: [String: Double] = [:]
            for name in sectorNames where rng.chance(0.7) {
                let sum = (0..<n).filter { sectors[$0] == name }.map { x0[$0] }.reduce(0, +)
                sectorCaps[name] = sum + (rng.chance(0.3) ? 0 : rng.uniform(0, 0.2))
            }
            var classCaps: [AssetClass: Double] = [:]
            for c in classes where rng.chance(0.5) {
                let sum = (0..<n).filter { assetClasses[$0] == c }.map { x0[$0] }.reduce(0, +)
                classCaps[c] = sum + (rng.chance(0.3) ? 0 : rng.uniform(0, 0.2))
            }
            var l = Self.limits(n: n, sectors: sectors, classes: assetClasses, sectorCaps: sectorCaps,
                                classCaps: classCaps)
            l.hi = hi
            let s = x0.reduce(0, +)
            let t = (0..<n).map { _ in rng.uniform(0, 0.5) }
            let w = l.project(t, invested: s)
            #expect(l.violation(w) == nil)
            let reference = Self.referenceProjection(t, hi: hi, s: s, sectorOf: l.sectorOf, sectorCaps: l.sectorCaps,
                                                     classOf: l.classOf, classCaps: l.classCaps)
            let difference = Self.maxDifference(w, reference)
            worst = max(worst, difference)
            #expect(difference < 1e-5, "n \(n): \(w) vs \(reference)")
            #expect(abs(w.reduce(0, +) - s) < 1e-5)
        }
        print("projection with groups: worst difference to the reference \(worst)")
    }

    /// Random limits with group caps over `n` assets: every sector or class
    /// name capped with probability `capped`, caps from a feasible point or
    /// tighter, bounds with some zeros. Returns the limits, a target and the
    /// budget `project` aims at (the caps' room when they cannot hold it all).
    static func randomGroupProblem(_ rng: inout SplitMix64, n: Int, capped: Double)
        -> (limits: Limits, target: [Double], sum: Double)
    {
        // Usually a few sectors; sometimes many (industry-level caps), which
        // the Newton system eliminates as a diagonal block.
        let sectorNames = (0..<(rng.chance(0.8) ? rng.int(1...6) : rng.int(20...80))).map { "S\($0)" }
        let classes = Array(AssetClass.allCases.prefix(rng.int(1...5)))
        let sectors = (0..<n).map { _ in rng.pick(sectorNames) }
        let assetClasses = (0..<n).map { _ in rng.pick(classes) }
        let hi = (0..<n).map { _ in rng.chance(0.1) ? 0 : rng.uniform(0.02, 0.6) }
        var x0 = hi.map { $0 * rng.uniform(0, 1) }
        let total = x0.reduce(0, +)
        if total > 1 { x0 = x0.map { $0 / total * rng.uniform(0.5, 1) } }
        var sectorCaps: [String: Double] = [:]
        for name in sectorNames where rng.chance(capped) {
            let sum = (0..<n).filter { sectors[$0] == name }.map { x0[$0] }.reduce(0, +)
            sectorCaps[name] = max(0, sum * rng.pick([1, 1, 0.5]) + (rng.chance(0.4) ? 0 : rng.uniform(0, 0.1)))
        }
        var classCaps: [AssetClass: Double] = [:]
        for c in classes where rng.chance(capped) {
            let sum = (0..<n).filter { assetClasses[$0] == c }.map { x0[$0] }.reduce(0, +)
            classCaps[c] = max(0, sum * rng.pick([1, 1, 0.5]) + (rng.chance(0.4) ? 0 : rng.uniform(0, 0.1)))
        }
        var l = Self.limits(n: n, sectors: sectors, classes: assetClasses, sectorCaps: sectorCaps,
                            classCaps: classCaps, minCash: rng.chance(0.5) ? 0 : rng.uniform(0, 0.1))
        l.hi = hi
        let budget = min(rng.chance(0.3) ? 1 : x0.reduce(0, +), l.investedCap)
        let room = l.maxInvestable()
        let sum = room < budget ? max(0, room * (1 - 1e-9)) : budget
        let target = (0..<n).map { _ in rng.chance(0.1) ? -rng.uniform(0, 0.2) : rng.uniform(0, 0.5) }
        return (l, target, sum)
    }

    @Test("the dual Newton projection meets the KKT conditions: the exact projection, in few iterations",
          arguments: 0..<4)
    func dualProjectionIsExact(batch: Int) throws {
        var rng = SplitMix64(seed: 700 + UInt64(batch))
        var mostIterations = 0
        for case_ in 0..<300 {
            let n = rng.int(1...100)
            let (l, t, s) = Self.randomGroupProblem(&rng, n: n, capped: rng.pick([0.5, 1]))
            guard !l.sectorCaps.isEmpty || !l.classCaps.isEmpty else { continue }
            let solved = try #require(l.projectDual(t, sum: s), "case \(case_): no convergence")
            mostIterations = max(mostIterations, solved.iterations)
            let (w, y) = (solved.w, solved.duals)
            let sectors = l.sectorCaps.count
            // Dual feasibility, and w minimises the Lagrangian over the box.
            #expect(y.dropFirst().allSatisfy { $0 >= 0 }, "case \(case_)")
            for i in 0..<n {
                var shift = y[0]
                if l.sectorOf[i] >= 0 { shift += y[1 + l.sectorOf[i]] }
                if l.classOf[i] >= 0 { shift += y[1 + sectors + l.classOf[i]] }
                #expect(w[i] == min(max(t[i] - shift, 0), l.hi[i]))
            }
            // Primal feasibility and complementary slackness: then w is the
            // projection (the KKT conditions suffice for a convex problem).
            #expect(abs(w.reduce(0, +) - s) < 1e-9, "case \(case_): sum \(w.reduce(0, +)) for \(s)")
            let sectorSums = l.groupSums(w, l.sectorOf, sectors)
            let classSums = l.groupSums(w, l.classOf, l.classCaps.count)
            for g in 0..<sectors {
                #expect(sectorSums[g] <= l.sectorCaps[g] + 1e-9, "case \(case_): sector \(g)")
                if y[1 + g] > 1e-7 { #expect(abs(sectorSums[g] - l.sectorCaps[g]) < 1e-9, "case \(case_): sector \(g)") }
            }
            for k in 0..<l.classCaps.count {
                #expect(classSums[k] <= l.classCaps[k] + 1e-9, "case \(case_): class \(k)")
                if y[1 + sectors + k] > 1e-7 {
                    #expect(abs(classSums[k] - l.classCaps[k]) < 1e-9, "case \(case_): class \(k)")
                }
            }
            // project() is that point made exactly feasible.
            let projected = l.project(t, invested: s)
            #expect(l.violation(projected) == nil)
            #expect(Self.maxDifference(projected, w) < 1e-8, "case \(case_)")
        }
        // Dykstra's alternating projections took up to its 500-sweep cap on
        // such problems; the Newton method stays far below its own (over
        // 18,000 problems of up to 250 assets, a fifth with 20 to 80 capped
        // sectors: at most 25 iterations but once 49, where a multiplier
        // flipped on and off its bound for a while).
        #expect(mostIterations <= 30, "\(mostIterations) iterations")
    }

    @Test("70 capped sectors: the dual Newton projection, and Dykstra (its fallback) close to it and feasible")
    func manyCappedSectors() throws {
        let n = 80
        let sectors = (0..<n).map { "S\($0 % 70)" }
        var caps: [String: Double] = [:]
        for g in 0..<70 { caps["S\(g)"] = g % 2 == 0 ? 0.01 : 0.02 }
        var l = Self.limits(n: n, sectors: sectors, classes: (0..<n).map { $0 % 3 == 0 ? .equity : .fixedIncome },
                            sectorCaps: caps, classCaps: [.equity: 0.3])
        l.hi = [Double](repeating: 0.05, count: n)
        let t = (0..<n).map { Double($0 % 7) / 100 }
        let s = min(0.9, l.maxInvestable() * (1 - 1e-9))
        let solved = try #require(l.projectDual(t, sum: s))
        #expect(solved.iterations <= 30)
        #expect(abs(solved.w.reduce(0, +) - s) < 1e-9)
        #expect(l.violation(l.project(t, invested: 0.9)) == nil)
        let dykstra = l.reduceToFeasible(l.projectDykstra(t, sum: s))
        #expect(l.violation(dykstra) == nil)
        #expect(Self.maxDifference(dykstra, solved.w) < 1e-5)
        let reference = Self.referenceProjection(t, hi: l.hi, s: s, sectorOf: l.sectorOf, sectorCaps: l.sectorCaps,
                                                 classOf: l.classOf, classCaps: l.classCaps)
        #expect(Self.maxDifference(solved.w, reference) < 1e-5)
    }

    @Test("project when the caps cannot hold the whole budget: invests what the caps allow, nearest to the target")
    func projectInconsistentBudget() {
        // Both instruments in sector A, capped at 50 %, and a budget of 100 %.
        var l = Self.limits(n: 2, sectors: ["A", "A"], sectorCaps: ["A": 0.5])
        l.hi = [1, 1]
        let symmetric = l.project([0.5, 0.5], invested: 1)
        #expect(Self.maxDifference(symmetric, [0.25, 0.25]) < 1e-9)
        let skewed = l.project([0.8, 0.2], invested: 1)
        #expect(l.violation(skewed) == nil)
        #expect(abs(skewed.reduce(0, +) - 0.5) < 1e-9, "\(skewed)")
        #expect(Self.maxDifference(skewed, [0.5, 0]) < 1e-6, "\(skewed)")
        // Part of the budget can go elsewhere: sector B takes the rest.
        var m = Self.limits(n: 3, sectors: ["A", "A", "B"], sectorCaps: ["A": 0.5])
        m.hi = [1, 1, 1]
        let w = m.project([0.5, 0.5, 0], invested: 1)
        #expect(Self.maxDifference(w, [0.25, 0.25, 0.5]) < 1e-9, "\(w)")
    }

    @Test("project is deterministic")
    func projectDeterministic() {
        var l = Self.limits(n: 4, sectors: ["A", "A", "B", "B"], classes: [.equity, .fixedIncome, .equity, .fixedIncome],
                            sectorCaps: ["A": 0.3], classCaps: [.equity: 0.4])
        l.hi = [0.5, 0.5, 0.5, 0.5]
        let t = [0.4, 0.3, 0.2, 0.1]
        #expect(l.project(t, invested: 0.9) == l.project(t, invested: 0.9))
    }

    // MARK: - Forced point

    @Test("the forced point is feasible, reached by sales alone, and the current weights when they are feasible",
          arguments: 0..<4)
    func forcedPointFeasible(batch: Int) {
        var rng = SplitMix64(seed: 400 + UInt64(batch))
        for _ in 0..<250 {
            let n = rng.int(1...30)
            let sectors = (0..<n).map { _ in rng.pick(["A", "B", "C", ""]) }
            let classes = (0..<n).map { _ in rng.pick(AssetClass.allCases) }
            let raw = (0..<n).map { _ in rng.uniform(0, 1) }
            let invested = rng.uniform(0, 1)
            let total = raw.reduce(0, +)
            let current = raw.map { $0 / total * invested }
            var sectorCaps: [String: Double] = [:]
            for s in ["A", "B", "C"] where rng.chance(0.5) { sectorCaps[s] = rng.uniform(0, 0.6) }
            var classCaps: [AssetClass: Double] = [:]
            for c in AssetClass.allCases where rng.chance(0.3) { classCaps[c] = rng.uniform(0, 0.6) }
            var l = Self.limits(n: n, sectors: sectors, classes: classes, sectorCaps: sectorCaps,
                                classCaps: classCaps, minCash: rng.chance(0.5) ? 0 : rng.uniform(0, 0.5))
            l.hi = (0..<n).map { _ in rng.chance(0.1) ? 0 : rng.uniform(0, 1) }
            let (f, force) = l.forcedPoint(current)
            #expect(l.violation(f) == nil)
            #expect(zip(f, current).allSatisfy { $0 >= 0 && $0 <= $1 })
            for i in 0..<n { #expect((force[i] == .none) == (f[i] == current[i])) }
            if l.violation(current, tolerance: 0) == nil { #expect(f == current) }
        }
    }

    @Test("the forced point attributes each sale to the constraint that forced it")
    func forcedPointAttribution() {
        let instruments = [
            Instrument(id: "X", price: 1, sector: "T", assetClass: .equity),  // excluded
            Instrument(id: "E", price: 1, sector: "T", assetClass: .equity, esgScore: 10),  // below the ESG floor
            Instrument(id: "C", price: 1, sector: "H", assetClass: .equity, esgScore: 50),  // above the instrument cap
            Instrument(id: "T", price: 1, sector: "T", assetClass: .equity, esgScore: 50),  // in an over-cap sector
            Instrument(id: "F", price: 1, sector: "U", assetClass: .fixedIncome, esgScore: 50),  // only min cash
        ]
        let mandate = Mandate(strategicWeights: [], maxInstrumentWeight: 0.3, sectorCaps: ["T": 0.1],
                              excludedInstruments: ["X"], esgFloor: 20, minCashWeight: 0.5)
        let current = [0.1, 0.1, 0.4, 0.2, 0.2]
        let l = Limits(instruments: instruments, current: current, mandate: mandate,
                       profile: RiskProfile(riskTolerance: 4, knowledge: .advanced))
        let (f, force) = l.forcedPoint(current)
        #expect(force == [.excluded, .esg, .instrumentCap, .sectorCap, .minCash])
        #expect(f[0] == 0 && f[1] == 0)
        #expect(l.violation(f) == nil)
        #expect(abs(f.reduce(0, +) - 0.5) <= 1e-9)
    }

    @Test("noBuy and bounds: knowledge above the client's, unrated under an ESG floor, excluded")
    func boundsAndNoBuy() {
        let instruments = [
            Instrument(id: "K", price: 1, esgScore: 50, requiredKnowledge: .advanced),
            Instrument(id: "U", price: 1, esgScore: nil),
            Instrument(id: "X", price: 1, esgScore: 90),
            Instrument(id: "OK", price: 1, esgScore: 20),  // exactly at the floor: allowed
        ]
        let mandate = Mandate(strategicWeights: [], maxInstrumentWeight: 0.5, excludedInstruments: ["X"], esgFloor: 20)
        let l = Limits(instruments: instruments, current: [0.2, 0.7, 0.1, 0], mandate: mandate,
                       profile: RiskProfile(riskTolerance: 4, knowledge: .informed))
        #expect(l.noBuy == [true, true, true, false])
        #expect(l.hi == [0.2, 0.5, 0, 0.5])
        #expect(l.hiReason == [.knowledge, .instrumentCap, .excluded, .instrumentCap])
    }
}
