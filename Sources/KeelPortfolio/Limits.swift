/// The hard constraints of one rebalance, in weight space, and the exact,
/// deterministic geometry the engine uses on them.
///
/// The feasible set of instrument weights w (cash = 1 − Σw) is
///
///     0 ≤ wᵢ ≤ hiᵢ,  Σ_{i∈sector g} wᵢ ≤ capₛ(g),  Σ_{i∈class k} wᵢ ≤ capₐ(k),  Σ wᵢ ≤ 1 − min cash
///
/// where hiᵢ folds in the instrument cap, exclusions (0), the ESG floor (0)
/// and "may not buy" (knowledge above the client's, or unrated under an ESG
/// floor: hiᵢ ≤ current weight). Every constraint is an upper bound, so the
/// set is closed under reduction: lowering any weight of a feasible point
/// keeps it feasible. Turnover and the suitability volatility limit are
/// convex in w, and are enforced along the segment from the forced point to
/// the target (see ``RebalanceEngine``).
struct Limits {
    enum Bound: Equatable {
        case none, instrumentCap, excluded, esg, knowledge, unratedESG, repurchaseBlock
    }

    let n: Int
    /// Upper bound per asset, and why.
    var hi: [Double]
    var hiReason: [Bound]
    /// Buying is not allowed (knowledge, unrated under an ESG floor, excluded,
    /// a repurchase block).
    var noBuy: [Bool]
    /// Group index per asset, or -1.
    let sectorOf: [Int]
    let sectorNames: [String]
    let sectorCaps: [Double]
    let classOf: [Int]
    let classNames: [String]
    let classCaps: [Double]
    let investedCap: Double

    init(instruments: [Instrument], current: [Double], mandate: Mandate, profile: RiskProfile) {
        n = instruments.count
        var hi = [Double](repeating: 1, count: n)
        var reason = [Bound](repeating: .none, count: n)
        var noBuy = [Bool](repeating: false, count: n)
        let excluded = mandate.excludedInstruments, blocked = mandate.blockedPurchases
        let esgFloor = mandate.esgFloor, knowledge = profile.knowledge
        // Indexed access: iterating the instruments would copy each one (and
        // retain its strings and arrays) on the engine's hot path.
        for i in 0..<n {
            if let cap = mandate.maxInstrumentWeight, cap < hi[i] { hi[i] = cap; reason[i] = .instrumentCap }
            let score = instruments[i].esgScore
            if !excluded.isEmpty && excluded.contains(instruments[i].id) {
                hi[i] = 0; reason[i] = .excluded; noBuy[i] = true
            } else if esgFloor > 0, let score, score < esgFloor {
                hi[i] = 0; reason[i] = .esg; noBuy[i] = true
            } else {
                if instruments[i].requiredKnowledge > knowledge {
                    noBuy[i] = true
                    if current[i] < hi[i] { hi[i] = current[i]; reason[i] = .knowledge }
                }
                if esgFloor > 0 && score == nil {
                    noBuy[i] = true
                    if current[i] < hi[i] { hi[i] = current[i]; reason[i] = .unratedESG }
                }
                if !blocked.isEmpty && blocked.contains(instruments[i].id) {
                    noBuy[i] = true
                    if current[i] < hi[i] { hi[i] = current[i]; reason[i] = .repurchaseBlock }
                }
            }
        }
        self.hi = hi
        self.hiReason = reason
        self.noBuy = noBuy
        // Sectors: names repeat, and there are usually few of them, so a
        // name is looked up among the groups found so far (``NameIndex``)
        // and in the caps only once.
        var sectorOf = [Int](repeating: -1, count: n)
        var sectorNames: [String] = [], sectorCaps: [Double] = []
        if !mandate.sectorCaps.isEmpty {
            var seen = NameIndex()  // every sector name met: its group, or -1 when uncapped
            for i in 0..<n {
                let name = instruments[i].sector
                if let g = seen[name] { sectorOf[i] = g; continue }
                guard let cap = mandate.sectorCaps[name] else { seen.insert(name, -1); continue }
                seen.insert(name, sectorNames.count)
                sectorOf[i] = sectorNames.count
                sectorNames.append(name)
                sectorCaps.append(cap)
            }
        }
        (self.sectorOf, self.sectorNames, self.sectorCaps) = (sectorOf, sectorNames, sectorCaps)
        // Asset classes: an enum, grouped by case without strings.
        var classOf = [Int](repeating: -1, count: n)
        var classNames: [String] = [], classCaps: [Double] = []
        if !mandate.assetClassCaps.isEmpty {
            var groupOfCase = [Int](repeating: -2, count: AssetClass.caseCount)
            for i in 0..<n {
                let assetClass = instruments[i].assetClass
                let c = assetClass.ordinal
                if groupOfCase[c] == -2 {
                    if let cap = mandate.assetClassCaps[assetClass] {
                        groupOfCase[c] = classNames.count
                        classNames.append(assetClass.rawValue)
                        classCaps.append(cap)
                    } else {
                        groupOfCase[c] = -1
                    }
                }
                classOf[i] = groupOfCase[c]
            }
        }
        (self.classOf, self.classNames, self.classCaps) = (classOf, classNames, classCaps)
        investedCap = max(0, 1 - mandate.minCashWeight)
    }

    // MARK: - Feasibility

    /// The first violated constraint of `w`, or nil (relative tolerance 1e-9).
    func violation(_ w: [Double], tolerance: Double = 1e-9) -> String? {
        var total = 0.0
        for i in 0..<n {
            if w[i] < -tolerance { return "weight \(i) negative" }
            if w[i] > hi[i] + tolerance { return "weight \(i) above its bound" }
            total += w[i]
        }
        if total > investedCap + tolerance { return "invested weight above 1 - min cash" }
        for (g, s) in groupSums(w, sectorOf, sectorCaps.count).enumerated() where s > sectorCaps[g] + tolerance {
            return "sector \(sectorNames[g]) above its cap"
        }
        for (g, s) in groupSums(w, classOf, classCaps.count).enumerated() where s > classCaps[g] + tolerance {
            return "asset class \(classNames[g]) above its cap"
        }
        return nil
    }

    func groupSums(_ w: [Double], _ of: [Int], _ count: Int) -> [Double] {
        var sums = [Double](repeating: 0, count: count)
        for i in 0..<n where of[i] >= 0 { sums[of[i]] += w[i] }
        return sums
    }

    // MARK: - Forced point

    /// Which hard constraint forces a sale of an asset. `volatility` is set
    /// by the engine, not here: when the forced sales leave the portfolio
    /// above its allowed volatility, it scales the forced point toward cash.
    enum Force: Equatable { case none, instrumentCap, excluded, esg, sectorCap, classCap, minCash, volatility }

    /// Excess over a group cap or the invested cap that counts as a breach.
    /// Sums of weights that are exactly at a limit can exceed it by a few
    /// ulps; treating that noise as a breach scaled every member (or every
    /// holding) by (1 − 1e-12), and for large positions that rounds up to a
    /// forced sale of one lot each. The forced point stays within 1e-12 of
    /// every limit, well inside the 1e-9 compliance tolerance.
    static let breachTolerance = 1e-12

    /// The point closest to `current` reachable by sales alone that satisfies
    /// every static constraint: clip to the bounds, scale down over-cap
    /// sectors and asset classes, then scale everything down to the invested
    /// cap. Reductions only, so the result is feasible and each asset's sale
    /// is attributed to the first constraint that forced it.
    func forcedPoint(_ current: [Double]) -> (point: [Double], force: [Force]) {
        var f = current
        var force = [Force](repeating: .none, count: n)
        for i in 0..<n where f[i] > hi[i] {
            f[i] = hi[i]
            switch hiReason[i] {
            case .excluded: force[i] = .excluded
            case .esg: force[i] = .esg
            default: force[i] = .instrumentCap
            }
        }
        scaleGroups(&f, sectorOf, sectorCaps, &force, .sectorCap)
        scaleGroups(&f, classOf, classCaps, &force, .classCap)
        let total = f.reduce(0, +)
        if total > investedCap + Self.breachTolerance {
            let k = total > 0 ? investedCap / total * (1 - 1e-12) : 0
            for i in 0..<n where f[i] > 0 {
                f[i] *= k
                if force[i] == .none { force[i] = .minCash }
            }
        }
        return (f, force)
    }

    private func scaleGroups(_ w: inout [Double], _ of: [Int], _ caps: [Double], _ force: inout [Force],
                             _ tag: Force)
    {
        let sums = groupSums(w, of, caps.count)
        for g in 0..<caps.count where sums[g] > caps[g] + Self.breachTolerance {
            let k = sums[g] > 0 ? caps[g] / sums[g] * (1 - 1e-12) : 0
            for i in 0..<n where of[i] == g && w[i] > 0 {
                w[i] *= k
                if force[i] == .none { force[i] = tag }
            }
        }
    }

    // MARK: - Projection

    /// The Euclidean projection of `target` onto the static constraints with
    /// Σw = `invested` (less where the bounds cannot hold that much):
    /// Dykstra's alternating projections between the box-and-budget set (an
    /// exact water-filling) and the sector and asset-class half-spaces
    /// (exact per group), until the iterate moves less than 1e-13, at most
    /// 500 sweeps. A last reduction step then makes every constraint hold
    /// exactly. Deterministic: no randomness, fixed iteration order.
    func project(_ target: [Double], invested: Double) -> [Double] {
        let budget = min(invested, investedCap)
        var shift = Double.nan
        var a = [Double](repeating: 0, count: n)
        if sectorCaps.isEmpty && classCaps.isEmpty {
            waterfill(into: &a, target, budget, shift: &shift)
            return reduceToFeasible(a)
        }
        // When the caps leave less room than the budget, the sets would not
        // intersect and Dykstra would never settle (its corrections grow
        // without bound): aim at the most the caps can hold instead, a little
        // inside it, and leave the rest in cash.
        let room = maxInvestable()
        let s = room < budget ? max(0, room * (1 - 1e-9)) : budget
        // Dykstra with three sets: A (box + budget), S (sectors), C (classes).
        // Every buffer is allocated once: a sweep allocates nothing.
        var pA = [Double](repeating: 0, count: n)
        var pS = pA, pC = pA, u = pA, before = pA
        var y = target
        var sums = [Double](repeating: 0, count: max(sectorCaps.count, classCaps.count))
        let sectorMembers = memberCounts(sectorOf, sectorCaps.count)
        let classMembers = memberCounts(classOf, classCaps.count)
        // Stopping: Dykstra's iterate can stand still for several sweeps
        // while its corrections (pA, pS, pC) still grow, and then move on
        // (e.g. a capped sector whose excess must go to another asset). So
        // convergence is judged on the corrections too (Birgin & Raydan's
        // criterion); stopping on the iterate alone returned points well short
        // of the budget. The sweep cap bounds the work; the reduction step
        // below makes the result feasible whatever the sweep count.
        for _ in 0..<Self.maxSweeps {
            var moved = 0.0
            for i in 0..<n { u[i] = y[i] + pA[i] }
            waterfill(into: &a, u, s, shift: &shift)
            for i in 0..<n { let q = u[i] - a[i]; moved = max(moved, abs(q - pA[i])); pA[i] = q }
            for i in 0..<n { u[i] = a[i] + pS[i]; before[i] = u[i] }
            halfspaces(&u, sectorOf, sectorCaps, sectorMembers, &sums)
            for i in 0..<n { let q = before[i] - u[i]; moved = max(moved, abs(q - pS[i])); pS[i] = q }
            for i in 0..<n { u[i] += pC[i]; before[i] = u[i] }
            halfspaces(&u, classOf, classCaps, classMembers, &sums)
            for i in 0..<n { let q = before[i] - u[i]; moved = max(moved, abs(q - pC[i])); pC[i] = q }
            var step = 0.0
            for i in 0..<n { step = max(step, abs(u[i] - y[i])); y[i] = u[i] }
            moved = max(moved, step)
            if moved < 1e-13 { break }
        }
        return reduceToFeasible(y)
    }

    /// The largest Σw the bounds and the sector and asset-class caps allow: a
    /// maximum flow from sectors to asset classes through the assets (each
    /// asset an arc of capacity hiᵢ; uncapped groups unbounded), by
    /// augmenting paths on the small graph of groups (Edmonds-Karp).
    func maxInvestable() -> Double {
        // One partition alone has a closed form: per group, the smaller of
        // its cap and what its members' bounds hold.
        func closedForm(_ of: [Int], _ caps: [Double]) -> Double {
            var held = [Double](repeating: 0, count: caps.count)
            var total = 0.0
            for i in 0..<n where hi[i] > 0 {
                if of[i] >= 0 { held[of[i]] += hi[i] } else { total += hi[i] }
            }
            for g in 0..<caps.count { total += min(caps[g], held[g]) }
            return total
        }
        if classCaps.isEmpty { return closedForm(sectorOf, sectorCaps) }
        if sectorCaps.isEmpty { return closedForm(classOf, classCaps) }
        // Both: a flow on the graph of groups, dense and small. With very many
        // capped groups, the smaller single-partition bound (an upper bound of
        // the flow) keeps the cost linear; Dykstra's sweep limit bounds the rest.
        guard sectorCaps.count + classCaps.count <= 256 else {
            return min(closedForm(sectorOf, sectorCaps), closedForm(classOf, classCaps))
        }
        // Nodes: 0 source, 1...S sectors (+1 for "no capped sector"), then
        // classes (+1 for "no capped class"), then the sink.
        let sectors = sectorCaps.count + 1, classes = classCaps.count + 1
        let source = 0, sink = 1 + sectors + classes
        let size = sink + 1
        var capacity = [Double](repeating: 0, count: size * size)
        for g in 0..<sectors { capacity[source * size + 1 + g] = g < sectorCaps.count ? sectorCaps[g] : .infinity }
        for k in 0..<classes { capacity[(1 + sectors + k) * size + sink] = k < classCaps.count ? classCaps[k] : .infinity }
        for i in 0..<n where hi[i] > 0 {
            let g = sectorOf[i] >= 0 ? sectorOf[i] : sectors - 1
            let k = classOf[i] >= 0 ? classOf[i] : classes - 1
            capacity[(1 + g) * size + 1 + sectors + k] += hi[i]
        }
        var total = 0.0
        var parent = [Int](repeating: -1, count: size)
        var queue = [Int](repeating: 0, count: size)
        while true {
            for v in 0..<size { parent[v] = -1 }
            parent[source] = source
            var head = 0, tail = 0
            queue[tail] = source; tail += 1
            while head < tail && parent[sink] < 0 {
                let u = queue[head]; head += 1
                for v in 0..<size where parent[v] < 0 && capacity[u * size + v] > 1e-15 {
                    parent[v] = u
                    queue[tail] = v; tail += 1
                }
            }
            guard parent[sink] >= 0 else { break }
            var push = Double.infinity
            var v = sink
            while v != source { let u = parent[v]; push = min(push, capacity[u * size + v]); v = u }
            guard push.isFinite else { return .infinity }
            v = sink
            while v != source {
                let u = parent[v]
                capacity[u * size + v] -= push
                capacity[v * size + u] += push
                v = u
            }
            total += push
        }
        return total
    }

    /// Dykstra's sweep limit (each sweep is O(n)).
    static let maxSweeps = 500

    private func memberCounts(_ of: [Int], _ count: Int) -> [Int] {
        var members = [Int](repeating: 0, count: count)
        for i in 0..<n where of[i] >= 0 { members[of[i]] += 1 }
        return members
    }

    /// Lowers `w` until every static constraint holds exactly: clip to
    /// [0, hi], scale over-cap groups down, scale down to the invested cap.
    func reduceToFeasible(_ w: [Double]) -> [Double] {
        var x = w
        for i in 0..<n { x[i] = min(max(x[i], 0), hi[i]) }
        var ignored = [Force](repeating: .none, count: n)
        scaleGroups(&x, sectorOf, sectorCaps, &ignored, .sectorCap)
        scaleGroups(&x, classOf, classCaps, &ignored, .classCap)
        let total = x.reduce(0, +)
        if total > investedCap, total > 0 {
            let k = investedCap / total * (1 - 1e-12)
            for i in 0..<n { x[i] *= k }
        }
        return x
    }

    /// Projection onto {0 ≤ w ≤ hi, Σw = s}: wᵢ = clamp(tᵢ − λ, 0, hiᵢ).
    /// When Σhi ≤ s the bounds win: w = hi.
    func waterfill(_ t: [Double], _ s: Double) -> [Double] {
        var shift = Double.nan
        var w = [Double](repeating: 0, count: n)
        waterfill(into: &w, t, s, shift: &shift)
        return w
    }

    /// The same, with `shift` a starting guess for λ (NaN: none) that is
    /// replaced by the λ found. g(λ) = Σ clamp(tᵢ − λ, 0, hiᵢ) is continuous,
    /// non-increasing and piecewise linear; within the piece that holds the
    /// answer a Newton step is exact. So: Newton steps, kept inside a bracket
    /// [lo, up] with g(lo) > s ≥ g(up), bisecting when a step leaves it.
    /// O(n) per step and no sort; Dykstra's sweeps pass the previous λ, which
    /// usually lies in the right piece already, so one or two steps suffice.
    /// (Sorting the 2n breakpoints on every call made the projection with
    /// group caps the most expensive part of a decision.)
    func waterfill(into w: inout [Double], _ t: [Double], _ s: Double, shift: inout Double) {
        var capacity = 0.0
        var lo = Double.infinity, up = -Double.infinity
        for i in 0..<n where hi[i] > 0 {
            capacity += hi[i]
            lo = min(lo, t[i] - hi[i])
            up = max(up, t[i])
        }
        if capacity <= s { for i in 0..<n { w[i] = hi[i] }; return }
        // g(lo) = Σhi > s and g(up) = 0.
        if s <= 0 { shift = up; clampShift(into: &w, t, up); return }
        var lambda = shift.isFinite && shift > lo && shift < up ? shift : (lo + up) / 2
        for _ in 0..<200 {
            var g = 0.0
            var slope = 0
            for i in 0..<n {
                let v = t[i] - lambda
                if v <= 0 { continue }
                if v >= hi[i] { g += hi[i] } else { g += v; slope += 1 }
            }
            if g == s { break }
            if g > s { lo = lambda } else { up = lambda }
            var next = lo + (up - lo) / 2
            if slope > 0 {
                let newton = lambda + (g - s) / Double(slope)
                if newton > lo && newton < up { next = newton }
            }
            if next == lambda || next <= lo || next >= up { break }
            lambda = next
        }
        shift = lambda
        clampShift(into: &w, t, lambda)
    }

    private func clampShift(into w: inout [Double], _ t: [Double], _ lambda: Double) {
        for i in 0..<n { w[i] = min(max(t[i] - lambda, 0), hi[i]) }
    }

    /// Projection onto the half-spaces Σ_{i∈g} wᵢ ≤ cap(g) of disjoint groups:
    /// an over-cap group's members all drop by the same amount.
    private func halfspaces(_ w: inout [Double], _ of: [Int], _ caps: [Double], _ members: [Int],
                            _ sums: inout [Double])
    {
        if caps.isEmpty { return }
        for g in 0..<caps.count { sums[g] = 0 }
        for i in 0..<n where of[i] >= 0 { sums[of[i]] += w[i] }
        for i in 0..<n where of[i] >= 0 {
            let g = of[i]
            if sums[g] > caps[g] { w[i] -= (sums[g] - caps[g]) / Double(members[g]) }
        }
    }
}

extension AssetClass {
    static let caseCount = 8

    /// 0 ..< ``caseCount``, in declaration order.
    var ordinal: Int {
        switch self {
        case .unspecified: 0
        case .equity: 1
        case .fixedIncome: 2
        case .cashEquivalent: 3
        case .commodity: 4
        case .realEstate: 5
        case .alternative: 6
        case .multiAsset: 7
        }
    }
}

/// Strings to small integers, for names that repeat across instruments
/// (sectors): while there are few names it compares them one by one, which
/// for short strings is a comparison of two machine words and much cheaper
/// than hashing; past ``linearLimit`` names it switches to a dictionary, so
/// that many distinct names stay linear in time.
struct NameIndex {
    static let linearLimit = 16
    private var names: [String] = []
    private var values: [Int] = []
    private var table: [String: Int]? = nil

    subscript(name: String) -> Int? {
        if let table { return table[name] }
        guard let k = names.firstIndex(of: name) else { return nil }
        return values[k]
    }

    /// Adds a name that is not in the index yet.
    mutating func insert(_ name: String, _ value: Int) {
        if table != nil { table![name] = value; return }
        names.append(name)
        values.append(value)
        if names.count > Self.linearLimit {
            table = Dictionary(uniqueKeysWithValues: zip(names, values))
            names = []
            values = []
        }
    }
}
