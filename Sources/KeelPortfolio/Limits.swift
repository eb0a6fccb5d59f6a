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
    /// Σw = `invested` (less where the bounds cannot hold that much). With
    /// group caps: Newton's method on the problem's dual (``projectDual``),
    /// exact to rounding; should it fail, Dykstra's alternating projections
    /// (``projectDykstra``). A last reduction step then makes every
    /// constraint hold exactly. Deterministic: no randomness, fixed
    /// iteration order.
    func project(_ target: [Double], invested: Double) -> [Double] {
        let budget = min(invested, investedCap)
        if sectorCaps.isEmpty && classCaps.isEmpty {
            var shift = Double.nan
            var a = [Double](repeating: 0, count: n)
            waterfill(into: &a, target, budget, shift: &shift)
            return reduceToFeasible(a)
        }
        // When the caps leave less room than the budget, the sets would not
        // intersect (the dual would be unbounded, and Dykstra's corrections
        // would grow without bound): aim at the most the caps can hold
        // instead, a little inside it, and leave the rest in cash.
        let room = maxInvestable()
        let s = room < budget ? max(0, room * (1 - 1e-9)) : budget
        if let solved = projectDual(target, sum: s) { return reduceToFeasible(solved.w) }
        return reduceToFeasible(projectDykstra(target, sum: s))
    }

    /// Dykstra's alternating projections between the box-and-budget set (an
    /// exact water-filling) and the sector and asset-class half-spaces (exact
    /// per group), until the iterate and the corrections move less than
    /// 1e-13, at most ``maxSweeps`` sweeps. Linear convergence: when caps of
    /// both kinds bind it can use all 500 sweeps (about 1.2 ms with 100 assets),
    /// kept as the fallback of ``projectDual``.
    func projectDykstra(_ target: [Double], sum s: Double) -> [Double] {
        var shift = Double.nan
        var a = [Double](repeating: 0, count: n)
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
        // of the budget. The sweep cap bounds the work; the caller's reduction
        // step makes the result feasible whatever the sweep count.
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
        return y
    }

    // MARK: - Exact projection (dual Newton)

    /// The Newton system's ridge while full steps succeed, relative to its
    /// largest diagonal entry.
    static let minimumRidge = 1e-10
    static let maxNewtonIterations = 200

    /// The projection onto {0 ≤ w ≤ hi, Σw = s, sector sums ≤ caps, class
    /// sums ≤ caps} from its dual. With a multiplier λ for the budget and
    /// μ_g, ν_k ≥ 0 for the caps, the minimiser over the box is
    ///
    ///     wᵢ(y) = clamp(tᵢ − λ − μ_{sector(i)} − ν_{class(i)}, 0, hiᵢ)
    ///
    /// and the dual D(y) = Σᵢ ½(wᵢ − tᵢ)² + shiftᵢ·wᵢ − y·b is concave and
    /// piecewise quadratic, with gradient the constraint residuals
    /// (Σwᵢ − s, group sums − caps). It is maximised by a projected Newton
    /// method (Bertsekas 1982): the multipliers at zero whose gradient pushes
    /// them below it are held there; the others take a Newton step whose
    /// Hessian counts the assets strictly inside their bounds, with an Armijo
    /// search along the projected arc. Once the step reaches the piece that
    /// holds the optimum it lands on it exactly, so a few iterations reach
    /// the KKT conditions to rounding: w(y) is then the exact projection.
    ///
    /// Returns the weights, the multipliers [λ, μ…, ν…] and the Newton
    /// iterations taken, or nil when both partitions have at least
    /// ``maxDenseVariables`` capped groups (or more than 2^20 sector-class
    /// pairs), or the method does not converge within ``maxNewtonIterations``
    /// (the caller then uses Dykstra). Over 300 varied 10-, 100- and
    /// 1000-asset mandates it took 1 to 12 iterations (benchmarks/RESULTS.md).
    func projectDual(_ t: [Double], sum s: Double) -> (w: [Double], duals: [Double], iterations: Int)? {
        let sectors = sectorCaps.count, classes = classCaps.count
        let m = 1 + sectors + classes
        guard min(sectors, classes) < Self.maxDenseVariables, sectors * classes <= 1 << 20, n > 0 else { return nil }
        var b = [Double](repeating: 0, count: m)
        b[0] = s
        for g in 0..<sectors { b[1 + g] = sectorCaps[g] }
        for k in 0..<classes { b[1 + sectors + k] = classCaps[k] }
        // The dual variables of each asset: the budget's, then its capped
        // sector's and class's (-1: none).
        var sectorIndex = [Int](repeating: -1, count: n), classIndex = [Int](repeating: -1, count: n)
        for i in 0..<n {
            if sectorOf[i] >= 0 { sectorIndex[i] = 1 + sectorOf[i] }
            if classOf[i] >= 0 { classIndex[i] = 1 + sectors + classOf[i] }
        }

        var y = [Double](repeating: 0, count: m)
        var w = [Double](repeating: 0, count: n)
        var free = [Bool](repeating: false, count: n)
        var gradient = [Double](repeating: 0, count: m)
        // Start from the budget's own multiplier: the water-filling's shift.
        var shift = Double.nan
        waterfill(into: &w, t, s, shift: &shift)
        y[0] = shift.isFinite ? shift : 0

        /// D(y), and w, the free set and the gradient at y.
        func evaluate(_ y: [Double], _ w: inout [Double], _ free: inout [Bool], _ gradient: inout [Double]) -> Double {
            for j in 0..<m { gradient[j] = -b[j] }
            var value = 0.0
            for j in 0..<m { value -= y[j] * b[j] }
            for i in 0..<n {
                let si = sectorIndex[i], ci = classIndex[i]
                var total = y[0]
                if si >= 0 { total += y[si] }
                if ci >= 0 { total += y[ci] }
                let v = t[i] - total
                let wi = min(max(v, 0), hi[i])
                w[i] = wi
                free[i] = v > 0 && v < hi[i]
                let d = wi - t[i]
                value += 0.5 * d * d + total * wi
                gradient[0] += wi
                if si >= 0 { gradient[si] += wi }
                if ci >= 0 { gradient[ci] += wi }
            }
            return value
        }

        /// The projected-gradient residual: zero exactly at the optimum.
        func residual(_ y: [Double], _ gradient: [Double]) -> Double {
            var r = abs(gradient[0])
            for j in 1..<m { r = max(r, abs(y[j] - max(0, y[j] + gradient[j]))) }
            return r
        }

        var value = evaluate(y, &w, &free, &gradient)
        // The residual's floor is the rounding of sums over up to n weights
        // (about 1.5e-13 with 100 assets). Below 1e-9, an iteration that does
        // not halve it has stalled: at that floor, or drifting along a flat
        // ray of the dual (every asset in a capped group: the budget's
        // multiplier up and the groups' down moves no shift) toward the
        // multiplier that reaches zero first. Sums are then right to 1e-9.
        let tolerance = 1e-12 * max(1, Double(n) / 100)
        var previous = Double.infinity
        var newton = NewtonSystem(sectors: sectors, classes: classes)
        var held = [Bool](repeating: false, count: m)
        var direction = [Double](repeating: 0, count: m)
        var trialY = y, trialW = w, trialFree = free, trialGradient = gradient
        var ridge = Self.minimumRidge
        for iteration in 1...Self.maxNewtonIterations {
            let r = residual(y, gradient)
            if r <= tolerance || (r <= 1e-9 && r > previous / 2) { return (w, y, iteration - 1) }
            previous = r
            // Multipliers held at zero: at (or within r of) zero with the
            // gradient pushing them below it.
            let epsilon = min(1e-9, r)
            for j in 0..<m { held[j] = j > 0 && y[j] <= epsilon && gradient[j] < 0 }
            // Newton system on the others: Σ over free assets of aᵢaᵢᵀ.
            newton.count(free: free, sectorOf: sectorOf, classOf: classOf)
            let largest = max(1, newton.total)
            // Levenberg-Marquardt: a ridge on the Newton system, tiny while
            // full steps succeed. A multiplier none of whose assets is free,
            // or a combination of multipliers that moves no shift (the budget
            // up and every sector down), has no curvature: the dual is linear
            // along it until an asset changes piece, and a bare Newton step
            // there is enormous. When the search cannot make such a step
            // pay, the ridge grows (x100) toward a short gradient step.
            var accepted = false
            var step = 1.0
            while !accepted {
                guard newton.solve(gradient: gradient, held: held, ridge: ridge * largest, into: &direction) else {
                    return nil
                }
                // Armijo search along the projected arc: 1, 1/2, ... 1/32.
                step = 1.0
                for _ in 0..<6 {
                    var gain = 0.0
                    for j in 0..<m {
                        let moved = y[j] + step * direction[j]
                        trialY[j] = j == 0 ? moved : max(0, moved)
                        gain += gradient[j] * (trialY[j] - y[j])
                    }
                    let trial = evaluate(trialY, &trialW, &trialFree, &trialGradient)
                    // Near the optimum the dual's gains (about r²) fall below
                    // the rounding of D itself; a step that halves the
                    // residual is then taken on that evidence instead.
                    if (gain > 0 && trial >= value + 1e-4 * gain)
                        || (r <= 1e-6 && residual(trialY, trialGradient) <= r / 2)
                    {
                        accepted = true
                        value = trial
                        break
                    }
                    step /= 2
                }
                if accepted {
                    if step == 1 { ridge = max(Self.minimumRidge, ridge / 100) }
                } else {
                    ridge *= 100
                    // Even a short gradient step does not ascend: the
                    // iterate is at the optimum up to rounding, or stuck.
                    if ridge > 1e3 { return r <= 1e-9 ? (w, y, iteration - 1) : nil }
                }
            }
            swap(&y, &trialY)
            swap(&w, &trialW)
            swap(&free, &trialFree)
            swap(&gradient, &trialGradient)
        }
        return residual(y, gradient) <= 1e-9 ? (w, y, Self.maxNewtonIterations) : nil
    }

    /// Most multipliers of the smaller partition (with the budget's) for
    /// which ``projectDual`` solves a dense system: the larger partition is
    /// eliminated first (its block of the Newton system is diagonal, as each
    /// asset is in one sector and one class), so many capped sectors cost
    /// only a diagonal. Asset classes number at most eight.
    static let maxDenseVariables = 64

    /// The Newton system of ``projectDual``,
    ///
    ///     (Σ over free assets of aᵢaᵢᵀ + ridge·I) d = gradient
    ///
    /// on the multipliers that are not held at zero, where aᵢ has a 1 for
    /// the budget, the asset's capped sector and its capped class. Counted
    /// per group instead of formed: the sector-sector and class-class blocks
    /// are diagonal. The larger partition is eliminated (a Schur complement),
    /// which leaves a dense system on the budget and the smaller partition.
    struct NewtonSystem {
        let sectors: Int
        let classes: Int
        /// Free assets: in all, per capped sector, per capped class, and per
        /// (sector, class) pair (row-major by sector).
        private(set) var total = 0.0
        private(set) var perSector: [Double]
        private(set) var perClass: [Double]
        private(set) var pairs: [Double]
        private var dense: [Double]
        private var rhs: [Double]
        private var kept: [Int]
        private var row: [Double]
        private var rowIndex: [Int]

        init(sectors: Int, classes: Int) {
            self.sectors = sectors
            self.classes = classes
            perSector = [Double](repeating: 0, count: sectors)
            perClass = [Double](repeating: 0, count: classes)
            pairs = [Double](repeating: 0, count: sectors * classes)
            let size = 1 + min(sectors, classes)
            dense = [Double](repeating: 0, count: size * size)
            rhs = [Double](repeating: 0, count: size)
            kept = []
            kept.reserveCapacity(size)
            row = [Double](repeating: 0, count: size)
            rowIndex = []
            rowIndex.reserveCapacity(size)
        }

        mutating func count(free: [Bool], sectorOf: [Int], classOf: [Int]) {
            total = 0
            for g in 0..<sectors { perSector[g] = 0 }
            for k in 0..<classes { perClass[k] = 0 }
            for p in 0..<pairs.count { pairs[p] = 0 }
            for i in 0..<free.count where free[i] {
                total += 1
                let g = sectorOf[i], k = classOf[i]
                if g >= 0 { perSector[g] += 1 }
                if k >= 0 { perClass[k] += 1 }
                if g >= 0 && k >= 0 { pairs[g * classes + k] += 1 }
            }
        }

        /// Fills `direction` (budget, sectors, classes; zero where `held`);
        /// false when the reduced system is not positive definite.
        mutating func solve(gradient: [Double], held: [Bool], ridge: Double, into direction: inout [Double]) -> Bool {
            // Partition A (eliminated) has the more groups; B is kept dense.
            let eliminateSectors = sectors >= classes
            let countA = eliminateSectors ? sectors : classes, countB = eliminateSectors ? classes : sectors
            let offsetA = eliminateSectors ? 1 : 1 + sectors, offsetB = eliminateSectors ? 1 + sectors : 1
            func freeInA(_ a: Int) -> Double { eliminateSectors ? perSector[a] : perClass[a] }
            func freeInB(_ b: Int) -> Double { eliminateSectors ? perClass[b] : perSector[b] }
            func freeInBoth(_ a: Int, _ b: Int) -> Double {
                eliminateSectors ? pairs[a * classes + b] : pairs[b * classes + a]
            }
            kept.removeAll(keepingCapacity: true)
            for b in 0..<countB where !held[offsetB + b] { kept.append(b) }
            let size = 1 + kept.count
            for p in 0..<(size * size) { dense[p] = 0 }
            dense[0] = total + ridge
            rhs[0] = gradient[0]
            for (u, b) in kept.enumerated() {
                dense[1 + u] = freeInB(b)
                dense[(1 + u) * size] = freeInB(b)
                dense[(1 + u) * size + 1 + u] = freeInB(b) + ridge
                rhs[1 + u] = gradient[offsetB + b]
            }
            // The Schur complement of the diagonal A block.
            for a in 0..<countA where !held[offsetA + a] {
                let pivot = freeInA(a) + ridge
                rowIndex.removeAll(keepingCapacity: true)
                row[0] = freeInA(a)
                if row[0] != 0 { rowIndex.append(0) }
                for (u, b) in kept.enumerated() {
                    row[1 + u] = freeInBoth(a, b)
                    if row[1 + u] != 0 { rowIndex.append(1 + u) }
                }
                let ga = gradient[offsetA + a]
                for p in rowIndex {
                    rhs[p] -= row[p] * ga / pivot
                    for q in rowIndex { dense[p * size + q] -= row[p] * row[q] / pivot }
                }
            }
            guard Limits.solveSymmetric(&dense, &rhs, size) else { return false }
            for j in 0..<direction.count { direction[j] = 0 }
            direction[0] = rhs[0]
            for (u, b) in kept.enumerated() { direction[offsetB + b] = rhs[1 + u] }
            for a in 0..<countA where !held[offsetA + a] {
                var v = gradient[offsetA + a] - freeInA(a) * rhs[0]
                for (u, b) in kept.enumerated() { v -= freeInBoth(a, b) * rhs[1 + u] }
                direction[offsetA + a] = v / (freeInA(a) + ridge)
            }
            return true
        }
    }

    /// Solves the symmetric positive definite `size`×`size` system in place
    /// (`rhs` becomes the solution) by Cholesky; false when it is not
    /// positive definite to working precision.
    static func solveSymmetric(_ a: inout [Double], _ rhs: inout [Double], _ size: Int) -> Bool {
        for j in 0..<size {
            var d = a[j * size + j]
            for k in 0..<j { d -= a[j * size + k] * a[j * size + k] }
            guard d > 0, d.isFinite else { return false }
            let l = d.squareRoot()
            a[j * size + j] = l
            for i in (j + 1)..<size {
                var v = a[i * size + j]
                for k in 0..<j { v -= a[i * size + k] * a[j * size + k] }
                a[i * size + j] = v / l
            }
        }
        for i in 0..<size {
            var v = rhs[i]
            for k in 0..<i { v -= a[i * size + k] * rhs[k] }
            rhs[i] = v / a[i * size + i]
        }
        for i in stride(from: size - 1, through: 0, by: -1) {
            var v = rhs[i]
            for k in (i + 1)..<size { v -= a[k * size + i] * rhs[k] }
            rhs[i] = v / a[i * size + i]
        }
        return true
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
