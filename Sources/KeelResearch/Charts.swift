// Charts: dependency-free SVG charts for backtest and training reports. Three
// kinds are drawn — line charts (wealth, drawdown, loss curves; optionally on a
// log10 axis), stacked area charts (portfolio weights over time) and grouped bar
// charts (one group per walk-forward window). Each call returns a complete,
// standalone SVG 1.1 document as a string: white background, title, axes, y grid
// lines at "nice" values, tick labels, a y axis label and a legend naming every
// series. Input is never trusted: NaN and infinite values are gaps, empty or
// constant data gets a padded default range, ragged series use their own length,
// and all text is XML-escaped, so any input yields a valid document. Long series
// are downsampled (each bucket keeps its min and max, so drawdown troughs survive)
// and coordinates are printed with at most one decimal, which keeps a 7,000-day,
// 40-series chart to a reasonable size. Output is deterministic: the same input
// always gives the same bytes.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One named series of a chart.
public struct ChartSeries: Sendable, Equatable {
    public var name: String
    /// One value per x position; NaN (or ±infinity) is a gap and is not drawn.
    public var values: [Double]

    public init(name: String, values: [Double]) {
        self.name = name
        self.values = values
    }
}

/// SVG chart renderers (see the file header).
public enum Charts {
    /// Line chart of several series over a shared x axis (positions 0..<count). `xLabels` (e.g. dates
    /// "1962-07-03"), when given, has one label per position and a few evenly spaced ones are shown as ticks;
    /// otherwise tick labels are the position numbers. `logScale` uses a log10 y axis (values <= 0 skipped).
    ///
    /// Series longer than ``maxLinePoints`` are downsampled: positions are cut into equal buckets and each
    /// bucket contributes its minimum and maximum, in order. Series past their own length are simply not
    /// drawn; `xLabels` whose count differs from the longest series are ignored. The legend sits under the
    /// plot; when it needs more than one row, each further row makes the document 18 pixels taller than
    /// `height` (as in all three charts).
    public static func lineChart(title: String, yLabel: String, series: [ChartSeries], xLabels: [String]? = nil,
                                 logScale: Bool = false, percent: Bool = false, width: Int = 960, height: Int = 480) -> String {
        let count = series.reduce(0) { max($0, $1.values.count) }
        // Values in axis space (log10 for a log axis); NaN marks a gap.
        let axisValues: [[Double]] = series.map { s in
            s.values.map { v in
                guard v.isFinite else { return .nan }
                if logScale { return v > 0 ? log10(v) : .nan }
                return v
            }
        }
        var lo = Double.infinity, hi = -Double.infinity
        for values in axisValues {
            for v in values where v.isFinite {
                lo = min(lo, v)
                hi = max(hi, v)
            }
        }
        let hasData = lo <= hi
        let axis: YAxis
        if logScale {
            axis = hasData ? YAxis.logarithmic(lo: lo, hi: hi, percent: percent)
                           : YAxis.logarithmic(lo: 0, hi: 1, percent: percent)
        } else {
            axis = hasData ? YAxis.linear(lo: lo, hi: hi, percent: percent)
                           : YAxis.linear(lo: 0, hi: 1, percent: percent)
        }
        // The x domain: positions 0...count-1, or -1...1 around a lone point.
        let xDomain: (lo: Double, hi: Double) = count > 1 ? (0, Double(count - 1)) : (-1, 1)
        let labels = (xLabels?.count == count && count > 0) ? xLabels : nil

        var doc = Document(title: title, yLabel: yLabel, width: width, height: height, axis: axis,
                           legend: series.enumerated().map { LegendEntry(name: $0.element.name, style: .line($0.offset)) },
                           rightLabelWidth: labels.map { textWidth(maxCharacters($0)) } ?? 0)
        let plot = doc.plot
        let xPixel: (Double) -> Double = { position in
            plot.left + (position - xDomain.lo) / (xDomain.hi - xDomain.lo) * plot.width
        }
        doc.drawFrame(xTicks: positionTicks(count: count, labels: labels, plotWidth: plot.width, xPixel: xPixel))

        // The series, one path each (a subpath per run between gaps).
        doc.open("<g class=\"series\" fill=\"none\" stroke-width=\"1.5\" stroke-linejoin=\"round\" stroke-linecap=\"round\">")
        for (index, values) in axisValues.enumerated() {
            let runs = downsample(values, maxPoints: maxLinePoints)
            guard !runs.isEmpty else { continue }
            var d = ""
            for run in runs {
                // Consecutive points on the same pixel are written once.
                var pairs: [String] = []
                for point in run {
                    let pair = coordinate(xPixel(Double(point.index))) + "," + coordinate(plot.y(point.value))
                    if pair != pairs.last { pairs.append(pair) }
                }
                guard let first = pairs.first else { continue }
                if !d.isEmpty { d += " " }
                // A lone point is a zero-length segment, which round caps draw as a dot.
                d += pairs.count == 1 ? "M" + first + " h0" : "M" + first + " L" + pairs.dropFirst().joined(separator: " ")
            }
            let style = Palette.lineStyle(index)
            var attributes = "class=\"line\" stroke=\"\(style.color)\""
            if let dash = style.dash { attributes += " stroke-dasharray=\"\(dash)\"" }
            doc.line("<path \(attributes) d=\"\(d)\"><title>\(escapeXML(series[index].name))</title></path>")
        }
        doc.close("</g>")
        if !hasData { doc.drawNoData() }
        return doc.finish()
    }

    /// Stacked area chart (e.g. portfolio weights over time, each series >= 0, stacks usually sum to <= 1).
    ///
    /// Series are stacked in order, the first at the bottom. NaN, infinite and negative values count as 0;
    /// a series shorter than the longest one counts as 0 past its end. Beyond ``maxAreaColumns`` positions,
    /// each column is the mean of a bucket of positions (means of a stack add up like the stack itself).
    /// `percent` formats the y ticks as percentages (weights of 0...1).
    public static func stackedArea(title: String, yLabel: String, series: [ChartSeries], xLabels: [String]? = nil,
                                   percent: Bool = false, width: Int = 960, height: Int = 480) -> String {
        let count = series.reduce(0) { max($0, $1.values.count) }
        let labels = (xLabels?.count == count && count > 0) ? xLabels : nil

        // Columns: (position, one non-negative amount per series).
        var columns: [(position: Double, amounts: [Double])] = []
        if count > 0 {
            let bucket = count <= maxAreaColumns ? 1 : (count + maxAreaColumns - 1) / maxAreaColumns
            var start = 0
            while start < count {
                let end = min(count, start + bucket)
                let size = Double(end - start)
                let amounts: [Double] = series.map { s in
                    var mean = 0.0
                    let stop = min(end, s.values.count)   // a short series counts as 0 past its end
                    guard start < stop else { return 0 }
                    for i in start..<stop {
                        let v = s.values[i]
                        if v.isFinite, v > 0 { mean += v / size }   // divide first: no overflow
                    }
                    return mean
                }
                // A bucket is drawn at its centre; the first and last reach the ends of the axis.
                var position = Double(start + end - 1) / 2
                if start == 0 { position = 0 }
                if end == count { position = Double(count - 1) }
                columns.append((position, amounts))
                start = end
            }
            if columns.count == 1 {
                // A single position: widen it into a band so it shows.
                let only = columns[0]
                columns = [(only.position - 0.4, only.amounts), (only.position + 0.4, only.amounts)]
            }
        }
        // Cumulative tops per column, clamped so huge values stay finite.
        let tops: [[Double]] = columns.map { column in
            var sum = 0.0
            return column.amounts.map { amount in
                sum = min(sum + amount, Double.greatestFiniteMagnitude)
                return sum
            }
        }
        let maxTotal = tops.reduce(0.0) { max($0, $1.last ?? 0) }
        let hasData = maxTotal > 0
        let axis = YAxis.linear(lo: 0, hi: hasData ? maxTotal : 1, percent: percent)
        let xDomain: (lo: Double, hi: Double) = count > 1 ? (0, Double(count - 1)) : (-1, 1)

        var doc = Document(title: title, yLabel: yLabel, width: width, height: height, axis: axis,
                           legend: series.enumerated().map { LegendEntry(name: $0.element.name, style: .fill($0.offset)) },
                           rightLabelWidth: labels.map { textWidth(maxCharacters($0)) } ?? 0)
        let plot = doc.plot
        let xPixel: (Double) -> Double = { position in
            plot.left + (position - xDomain.lo) / (xDomain.hi - xDomain.lo) * plot.width
        }
        doc.drawFrame(xTicks: positionTicks(count: count, labels: labels, plotWidth: plot.width, xPixel: xPixel))

        doc.open("<g class=\"series\" stroke=\"none\">")
        for index in series.indices where columns.contains(where: { $0.amounts[index] > 0 }) {
            // Top edge left to right, then the bottom edge (the previous band's top) back.
            var pairs: [String] = []
            pairs.reserveCapacity(columns.count * 2)
            for (c, column) in columns.enumerated() {
                pairs.append(coordinate(xPixel(column.position)) + "," + coordinate(plot.y(tops[c][index])))
            }
            for (c, column) in columns.enumerated().reversed() {
                let bottom = index == 0 ? 0 : tops[c][index - 1]
                pairs.append(coordinate(xPixel(column.position)) + "," + coordinate(plot.y(bottom)))
            }
            let d = "M" + pairs[0] + " L" + pairs.dropFirst().joined(separator: " ") + " Z"
            let style = Palette.fillStyle(index)
            doc.line("<path class=\"area\" fill=\"\(style.color)\" fill-opacity=\"\(style.opacity)\" d=\"\(d)\">"
                     + "<title>\(escapeXML(series[index].name))</title></path>")
        }
        doc.close("</g>")
        if !hasData { doc.drawNoData() }
        return doc.finish()
    }

    /// Grouped bar chart: `groups` along x (e.g. walk-forward windows), one bar per series in each group
    /// (series.values has one value per group); negative values go below a zero line.
    ///
    /// There are as many groups as the longer of `groups` and the longest series; a group without a name is
    /// labelled with its number (from 1). NaN and infinite values draw no bar. `percent` formats the y ticks
    /// as percentages.
    public static func groupedBars(title: String, yLabel: String, groups: [String], series: [ChartSeries],
                                   percent: Bool = false, width: Int = 960, height: Int = 480) -> String {
        let groupCount = series.reduce(groups.count) { max($0, $1.values.count) }
        let groupNames = (0..<groupCount).map { $0 < groups.count ? groups[$0] : String($0 + 1) }
        // The y range always includes zero, the base of every bar.
        var lo = 0.0, hi = 0.0, hasData = false
        for s in series {
            for v in s.values where v.isFinite {
                lo = min(lo, v)
                hi = max(hi, v)
                hasData = true
            }
        }
        let axis = YAxis.linear(lo: lo, hi: hasData && hi > lo ? hi : max(hi, lo + 1), percent: percent)

        var doc = Document(title: title, yLabel: yLabel, width: width, height: height, axis: axis,
                           legend: series.enumerated().map { LegendEntry(name: $0.element.name, style: .fill($0.offset)) },
                           rightLabelWidth: 0)
        let plot = doc.plot
        let band = plot.width / Double(max(groupCount, 1))
        // Group labels: every k-th one, so that they do not overlap.
        var ticks: [(x: Double, label: String)] = []
        if groupCount > 0 {
            let shown = groupNames.map { truncated($0, to: maxTickCharacters) }
            let slot = textWidth(maxCharacters(shown)) + 12
            let every = max(1, Int(min((slot / max(band, 0.001)).rounded(.up), Double(groupCount))))
            for g in stride(from: 0, to: groupCount, by: every) {
                ticks.append((plot.left + (Double(g) + 0.5) * band, shown[g]))
            }
        }
        doc.drawFrame(xTicks: ticks)

        let zero = plot.y(0)
        let barWidth = band * 0.8 / Double(max(series.count, 1))
        let gap = barWidth > 4 ? 1.0 : 0.0
        doc.open("<g class=\"series\" stroke=\"none\">")
        for (index, s) in series.enumerated() {
            let style = Palette.fillStyle(index)
            doc.open("<g class=\"bars\" fill=\"\(style.color)\" fill-opacity=\"\(style.opacity)\">")
            doc.line("<title>\(escapeXML(s.name))</title>")
            for (g, v) in s.values.prefix(groupCount).enumerated() where v.isFinite {
                let y = plot.y(v)
                let x = plot.left + Double(g) * band + band * 0.1 + Double(index) * barWidth + gap / 2
                doc.line("<rect x=\"\(coordinate(x))\" y=\"\(coordinate(min(y, zero)))\" width=\"\(coordinate(max(barWidth - gap, 0.1)))\""
                         + " height=\"\(coordinate(abs(zero - y)))\"/>")
            }
            doc.close("</g>")
        }
        doc.close("</g>")
        if !hasData { doc.drawNoData() }
        return doc.finish()
    }

    // MARK: - Limits

    /// At most this many points per line (downsampling keeps each bucket's min and max).
    static let maxLinePoints = 1_500
    /// At most this many columns in a stacked area chart (each a bucket mean).
    static let maxAreaColumns = 500
    /// Legend names and tick labels longer than this are cut with an ellipsis.
    static let maxLegendCharacters = 48
    static let maxTickCharacters = 24
}

// MARK: - Axes and ticks

extension Charts {
    /// A y axis: its domain in axis space (log10 of the value on a log axis) and its labelled ticks.
    struct YAxis {
        var lo: Double
        var hi: Double
        var ticks: [(value: Double, label: String)]
        /// Draw a darker line at zero (linear axes that cross it).
        var zeroLine: Bool

        /// A linear axis over lo...hi, widened to nice tick values.
        static func linear(lo: Double, hi: Double, percent: Bool) -> YAxis {
            let (a, b) = paddedRange(lo, hi)
            let target = 6
            guard let nice = niceTicks(lo: a, hi: b, target: target) else {
                // Degenerate ranges (overflowing or sub-normal spans) get their ends as ticks.
                let magnitude = max(abs(a), abs(b))
                return YAxis(lo: a, hi: b, ticks: [a, b].map { ($0, formatTick($0, resolution: magnitude, magnitude: magnitude, percent: percent)) },
                             zeroLine: a < 0 && b > 0)
            }
            let magnitude = nice.ticks.reduce(0) { max($0, abs($1)) }
            let ticks = nice.ticks.map { ($0, formatTick($0, resolution: nice.step, magnitude: magnitude, percent: percent)) }
            return YAxis(lo: nice.ticks.first ?? a, hi: nice.ticks.last ?? b, ticks: ticks, zeroLine: a < 0 && b > 0)
        }

        /// A log10 axis over 10^lo...10^hi (lo and hi are already log10 values), padded slightly.
        static func logarithmic(lo: Double, hi: Double, percent: Bool) -> YAxis {
            var a = lo, b = hi
            if !(b - a > 1e-9) {
                a -= 0.5
                b += 0.5
            } else {
                let pad = (b - a) * 0.03
                a -= pad
                b += pad
            }
            let ticks = logTicks(lo: a, hi: b).map { tick in
                (log10(tick.value), formatTick(tick.value, resolution: tick.resolution, magnitude: tick.value, percent: percent))
            }
            return YAxis(lo: a, hi: b, ticks: ticks, zeroLine: false)
        }
    }

    /// lo...hi made usable: ordered, finite, and with a non-zero span (a constant is padded by 10 % of its
    /// magnitude, or by 1 around zero).
    static func paddedRange(_ lo: Double, _ hi: Double) -> (Double, Double) {
        let big = Double.greatestFiniteMagnitude
        var a = lo.isFinite ? lo : 0, b = hi.isFinite ? hi : 1
        if a > b { swap(&a, &b) }
        let magnitude = max(abs(a), abs(b))
        if b - a <= magnitude * 1e-9 {
            var pad = magnitude * 0.1
            if !(pad > 1e-300) { pad = 1 }
            a = max(a - pad, -big)
            b = min(b + pad, big)
        }
        return (a, b)
    }

    /// Nice linear ticks covering lo...hi: a step of 1, 2 or 5 × 10^k chosen for about `target` intervals,
    /// starting at or below lo and ending at or above hi. Nil when the range cannot be ticked (not finite,
    /// empty, or so extreme that the step over- or underflows).
    static func niceTicks(lo: Double, hi: Double, target: Int = 6) -> (step: Double, ticks: [Double])? {
        guard lo.isFinite, hi.isFinite, hi > lo else { return nil }
        let rough = (hi / 2 - lo / 2) * 2 / Double(max(target, 1))   // halves first: hi - lo may overflow
        guard rough.isFinite, rough > 0 else { return nil }
        let magnitude = pow(10, log10(rough).rounded(.down))
        guard magnitude.isFinite, magnitude > 0 else { return nil }
        let r = rough / magnitude
        let multiple: Double = r < 1.5 ? 1 : r < 3 ? 2 : r < 7 ? 5 : 10
        let step = multiple * magnitude
        guard step.isFinite, step > 0 else { return nil }
        // A little slack, so that rounding noise (a stack summing to 1.0000000000000002) adds no extra step.
        let first = (lo / step + 1e-9).rounded(.down), last = (hi / step - 1e-9).rounded(.up)
        guard first.isFinite, last.isFinite, last - first >= 1, last - first <= 100 else { return nil }
        var ticks: [Double] = []
        for k in 0...Int(last - first) {
            let tick = (first + Double(k)) * step
            guard tick.isFinite else { return nil }
            ticks.append(tick == 0 ? 0 : tick)   // no "-0"
        }
        return (step, ticks)
    }

    /// Ticks of a log axis over 10^lo...10^hi (lo, hi in log10): the powers of ten inside (every k-th one
    /// when there are many decades), plus 2 and 5 multiples when fewer than three powers fit, or nice linear
    /// ticks when the range is narrower still. Each tick carries the resolution its label needs.
    static func logTicks(lo: Double, hi: Double) -> [(value: Double, resolution: Double)] {
        // Only powers of ten a Double can hold get ticks.
        let lo = max(lo, -323), hi = min(hi, 308)
        guard lo.isFinite, hi.isFinite, hi > lo else { return [] }
        let eps = 1e-9
        let firstPower = Int((lo - eps).rounded(.up)), lastPower = Int((hi + eps).rounded(.down))
        var ticks: [(value: Double, resolution: Double)] = []
        if lastPower - firstPower + 1 >= 3 {
            let every = max(1, (lastPower - firstPower + 1 + 9) / 10)   // at most about ten labels
            // Thinned powers are multiples of the stride (10^0, 10^5, 10^10 ...), not offsets from the end.
            let start = firstPower >= 0 ? (firstPower + every - 1) / every * every : -(-firstPower / every * every)
            for e in stride(from: start, through: lastPower, by: every) {
                let v = pow(10, Double(e))
                ticks.append((v, v))
            }
            return ticks
        }
        for e in Int(lo.rounded(.down))...Int(hi.rounded(.down)) {
            let power = pow(10, Double(e))
            for m in [1.0, 2, 5] {
                let v = m * power
                let l = log10(v)
                if v > 0, v.isFinite, l >= lo - eps, l <= hi + eps { ticks.append((v, power)) }
            }
        }
        if ticks.count >= 2 { return ticks }
        // Under about a factor 2.5: ordinary nice ticks on the values themselves.
        guard let nice = niceTicks(lo: pow(10, lo), hi: pow(10, hi), target: 5) else { return ticks }
        return nice.ticks.filter { $0 > 0 && log10($0) >= lo - eps && log10($0) <= hi + eps }.map { ($0, nice.step) }
    }

    /// Integer x positions for ticks over 0...count-1: all of them when few, else nice steps.
    static func integerTicks(count: Int, target: Int) -> [Int] {
        guard count > 0 else { return [] }
        if count - 1 <= target { return Array(0..<count) }
        guard let nice = niceTicks(lo: 0, hi: Double(count - 1), target: target) else { return [0, count - 1] }
        return nice.ticks.filter { $0 >= 0 && $0 <= Double(count - 1) }.map { Int($0) }
    }

    /// X ticks for a position axis: evenly spaced labels when given, else nice integer positions.
    static func positionTicks(count: Int, labels: [String]?, plotWidth: Double,
                              xPixel: (Double) -> Double) -> [(x: Double, label: String)] {
        guard count > 0 else { return [] }
        if let labels {
            let slot = textWidth(maxCharacters(labels)) + 24
            let m = min(count, max(2, min(12, Int(plotWidth / max(slot, 1)))))
            if m <= 1 || count == 1 { return [(xPixel(0), truncated(labels[0], to: maxTickCharacters))] }
            var ticks: [(x: Double, label: String)] = []
            var last = -1
            for k in 0..<m {
                let position = k * (count - 1) / (m - 1)
                if position != last { ticks.append((xPixel(Double(position)), truncated(labels[position], to: maxTickCharacters))) }
                last = position
            }
            return ticks
        }
        let target = max(2, min(10, Int(plotWidth / 80)))
        return integerTicks(count: count, target: target).map { (xPixel(Double($0)), String($0)) }
    }
}

// MARK: - Downsampling

extension Charts {
    /// The drawable runs of a series (split at gaps, NaN), with at most about `maxPoints` points: the
    /// positions are cut into buckets of equal size and each bucket keeps its minimum and maximum, in
    /// position order. A bucket with no finite value ends the run; a gap inside a bucket that has values
    /// is not shown (it is narrower than the drawing's resolution).
    static func downsample(_ values: [Double], maxPoints: Int) -> [[(index: Int, value: Double)]] {
        let n = values.count
        let half = max(1, maxPoints / 2)
        let bucket = n <= maxPoints ? 1 : (n + half - 1) / half
        var runs: [[(index: Int, value: Double)]] = []
        var current: [(index: Int, value: Double)] = []
        var start = 0
        while start < n {
            let end = min(n, start + bucket)
            var lowest = -1, highest = -1
            for i in start..<end where values[i].isFinite {
                if lowest < 0 || values[i] < values[lowest] { lowest = i }
                if highest < 0 || values[i] > values[highest] { highest = i }
            }
            if lowest < 0 {
                if !current.isEmpty { runs.append(current) }
                current = []
            } else if lowest == highest {
                current.append((lowest, values[lowest]))
            } else {
                let (a, b) = lowest < highest ? (lowest, highest) : (highest, lowest)
                current.append((a, values[a]))
                current.append((b, values[b]))
            }
            start = end
        }
        if !current.isEmpty { runs.append(current) }
        return runs
    }
}

// MARK: - Number formatting

extension Charts {
    /// A pixel coordinate with at most one decimal ("12", "12.5", "-3.2"); clamped far outside any
    /// drawing so that the conversion to an integer cannot trap.
    static func coordinate(_ v: Double) -> String {
        guard v.isFinite else { return "0" }
        let tenths = Int((min(max(v, -1e7), 1e7) * 10).rounded())
        let sign = tenths < 0 ? "-" : ""
        let whole = abs(tenths) / 10, fraction = abs(tenths) % 10
        return fraction == 0 ? sign + String(whole) : sign + String(whole) + "." + String(fraction)
    }

    /// A tick label. `resolution` (the tick step, or the tick's own power of ten on a log axis) decides the
    /// number of decimals; `magnitude` (the largest tick, or the tick itself) picks a unit suffix for large
    /// values: k (from 10,000), M, B, T; beyond 10^15 and for tiny steps, scientific notation. `percent`
    /// multiplies by 100 and appends "%".
    static func formatTick(_ value: Double, resolution: Double, magnitude: Double, percent: Bool) -> String {
        var v = value, res = abs(resolution), mag = abs(magnitude)
        let percentSign = percent ? "%" : ""
        if percent {
            v *= 100
            res *= 100
            mag *= 100
        }
        guard v.isFinite else { return "" }
        if v == 0 { return "0" + percentSign }
        var divisor = 1.0, unit = ""
        if mag >= 1e15 || !mag.isFinite {
            return scientific(v) + percentSign
        } else if !percent {
            for (limit, d, u) in [(1e12, 1e12, "T"), (1e9, 1e9, "B"), (1e6, 1e6, "M"), (1e4, 1e3, "k")] where mag >= limit {
                divisor = d
                unit = u
                break
            }
        }
        v /= divisor
        res /= divisor
        var decimals = 2
        if res.isFinite, res > 0 {
            let needed = (-log10(res) - 1e-9).rounded(.up)
            guard needed <= 6 else { return scientific(value * (percent ? 100 : 1)) + percentSign }
            decimals = max(0, Int(needed))
        }
        return fixed(v, decimals: decimals) + unit + percentSign
    }

    /// `v` with exactly `decimals` decimals (0...6), without "-0".
    static func fixed(_ v: Double, decimals: Int) -> String {
        let d = min(max(decimals, 0), 6)
        var scale = 1.0
        for _ in 0..<d { scale *= 10 }
        let scaled = (v * scale).rounded()
        guard scaled.isFinite, abs(scaled) < 9e15 else { return scientific(v) }
        let n = Int64(scaled)
        if n == 0 { return d == 0 ? "0" : "0." + String(repeating: "0", count: d) }
        let digits = String(n.magnitude)
        let sign = n < 0 ? "-" : ""
        if d == 0 { return sign + digits }
        let padded = digits.count <= d ? String(repeating: "0", count: d - digits.count + 1) + digits : digits
        let split = padded.index(padded.endIndex, offsetBy: -d)
        return sign + padded[..<split] + "." + padded[split...]
    }

    /// Scientific notation with up to two decimals in the mantissa: "1.5e-7", "2e20".
    static func scientific(_ v: Double) -> String {
        guard v.isFinite else { return "" }
        guard v != 0 else { return "0" }
        var exponent = log10(abs(v)).rounded(.down)
        var mantissa = v / pow(10, exponent)
        if !mantissa.isFinite { mantissa = v.sign == .minus ? -1 : 1 }
        if abs((mantissa * 100).rounded()) >= 1000 {   // rounds up to 10.00
            mantissa /= 10
            exponent += 1
        }
        var text = fixed(mantissa, decimals: 2)
        while text.hasSuffix("0") { text.removeLast() }
        if text.hasSuffix(".") { text.removeLast() }
        return text + "e" + String(Int(exponent))
    }
}

// MARK: - Text

extension Charts {
    /// `text` made safe for XML character data and attribute values: the five special characters become
    /// entities and characters XML 1.0 forbids (control characters other than tab, newline and carriage
    /// return, and U+FFFE/U+FFFF) become U+FFFD.
    static func escapeXML(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            case "\t", "\n", "\r": out.unicodeScalars.append(scalar)
            default:
                if scalar.value < 0x20 || scalar.value == 0xFFFE || scalar.value == 0xFFFF {
                    out += "\u{FFFD}"
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out
    }

    /// `text` cut to `limit` characters, the last one an ellipsis, when longer.
    static func truncated(_ text: String, to limit: Int) -> String {
        guard text.count > limit, limit > 1 else { return text }
        return String(text.prefix(limit - 1)) + "…"
    }

    /// Estimated width in pixels of `characters` characters of 11-pixel sans-serif text.
    static func textWidth(_ characters: Int) -> Double { Double(characters) * 6.6 }

    /// The longest label, in characters, capped at the tick label limit.
    static func maxCharacters(_ labels: [String]) -> Int {
        labels.reduce(0) { max($0, min($1.count, maxTickCharacters)) }
    }
}

// MARK: - Palette

extension Charts {
    /// Tableau 10, a colour-blind-friendly palette; past ten series the colours repeat with a different
    /// dash pattern (lines) or opacity (areas and bars).
    enum Palette {
        static let colors = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                             "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]
        static let dashes: [String?] = [nil, "7 4", "1 4", "9 4 1 4"]
        static let opacities = ["0.85", "0.55", "0.35", "0.2"]

        static func lineStyle(_ index: Int) -> (color: String, dash: String?) {
            let i = max(index, 0)
            return (colors[i % colors.count], dashes[(i / colors.count) % dashes.count])
        }

        static func fillStyle(_ index: Int) -> (color: String, opacity: String) {
            let i = max(index, 0)
            return (colors[i % colors.count], opacities[(i / colors.count) % opacities.count])
        }
    }
}

// MARK: - Document

extension Charts {
    /// A legend entry: a name and how its swatch is drawn.
    struct LegendEntry {
        enum Style {
            case line(Int)   // palette index, drawn as a short line
            case fill(Int)   // palette index, drawn as a square
        }

        var name: String
        var style: Style
    }

    /// The plot rectangle and the y mapping from axis space to pixels.
    struct PlotArea {
        var left: Double
        var top: Double
        var width: Double
        var height: Double
        var axisLo: Double
        var axisHi: Double

        var right: Double { left + width }
        var bottom: Double { top + height }

        /// The pixel row of an axis value (halves first, so that extreme domains cannot overflow).
        func y(_ value: Double) -> Double {
            let span = axisHi / 2 - axisLo / 2
            guard span > 0 else { return bottom - height / 2 }
            let t = (value / 2 - axisLo / 2) / span
            return bottom - min(max(t, -0.05), 1.05) * height
        }
    }

    /// An SVG document being written: the layout (title, plot area, legend rows under it) and the text.
    struct Document {
        let title: String
        let yLabel: String
        let axis: YAxis
        let legend: [LegendEntry]
        let width: Double
        /// The chart's height without the legend rows.
        let chartHeight: Double
        let totalHeight: Double
        let plot: PlotArea
        /// Legend rows: the entries' indices and x offsets.
        let legendRows: [[(entry: Int, x: Double)]]
        private(set) var text = ""
        private var depth = 0

        static let legendRowHeight = 18.0

        init(title: String, yLabel: String, width: Int, height: Int, axis: YAxis, legend: [LegendEntry],
             rightLabelWidth: Double) {
            self.title = title
            self.yLabel = yLabel
            self.axis = axis
            self.legend = legend
            let w = Double(min(max(width, 240), 20_000))
            let h = Double(min(max(height, 160), 20_000))
            self.width = w
            self.chartHeight = h
            // Left margin: the y label plus the widest tick label.
            let tickChars = axis.ticks.reduce(0) { max($0, $1.label.count) }
            let left = max(48, 30 + Charts.textWidth(tickChars) + 8)
            let right = max(20, rightLabelWidth / 2 + 6)
            let top = 40.0, bottom = 36.0
            plot = PlotArea(left: left, top: top, width: max(w - left - right, 10), height: max(h - top - bottom, 10),
                            axisLo: axis.lo, axisHi: axis.hi)
            // Legend: entries flow left to right, wrapping to new rows.
            var rows: [[(entry: Int, x: Double)]] = []
            var row: [(entry: Int, x: Double)] = []
            var x = 0.0
            let available = w - 2 * 16
            for (i, entry) in legend.enumerated() {
                let itemWidth = 24 + Charts.textWidth(Charts.truncated(entry.name, to: Charts.maxLegendCharacters).count) + 16
                if !row.isEmpty, x + itemWidth > available {
                    rows.append(row)
                    row = []
                    x = 0
                }
                row.append((i, x))
                x += itemWidth
            }
            if !row.isEmpty { rows.append(row) }
            legendRows = rows
            // The first row fits under the x tick labels; each further row adds to the height.
            totalHeight = h + Double(max(rows.count - 1, 0)) * Document.legendRowHeight + (rows.isEmpty ? 0 : 6)
        }

        // Writing, one element per line, indented by nesting.
        mutating func line(_ s: String) {
            text += String(repeating: "  ", count: depth) + s + "\n"
        }
        mutating func open(_ s: String) {
            line(s)
            depth += 1
        }
        mutating func close(_ s: String) {
            depth = max(depth - 1, 0)
            line(s)
        }

        /// The header, background, title, grid, ticks, axis lines and y label.
        mutating func drawFrame(xTicks: [(x: Double, label: String)]) {
            let c = Charts.coordinate
            line("<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>")
            open("<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"\(c(width))\" height=\"\(c(totalHeight))\""
                 + " viewBox=\"0 0 \(c(width)) \(c(totalHeight))\" font-family=\"Helvetica, Arial, sans-serif\">")
            line("<title>\(Charts.escapeXML(title))</title>")
            line("<rect class=\"background\" x=\"0\" y=\"0\" width=\"\(c(width))\" height=\"\(c(totalHeight))\" fill=\"#ffffff\"/>")
            line("<text class=\"title\" x=\"\(c(width / 2))\" y=\"24\" text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\""
                 + " fill=\"#222222\">\(Charts.escapeXML(title))</text>")
            // Horizontal grid lines and y tick labels.
            open("<g class=\"grid\" stroke=\"#e3e3e3\" stroke-width=\"1\">")
            for tick in axis.ticks {
                let y = c(plot.y(tick.value))
                line("<line x1=\"\(c(plot.left))\" y1=\"\(y)\" x2=\"\(c(plot.right))\" y2=\"\(y)\"/>")
            }
            close("</g>")
            if axis.zeroLine {
                let y = c(plot.y(0))
                line("<line class=\"zero\" x1=\"\(c(plot.left))\" y1=\"\(y)\" x2=\"\(c(plot.right))\" y2=\"\(y)\" stroke=\"#888888\" stroke-width=\"1\"/>")
            }
            open("<g class=\"y-ticks\" font-size=\"11\" fill=\"#333333\" text-anchor=\"end\">")
            for tick in axis.ticks {
                line("<text x=\"\(c(plot.left - 6))\" y=\"\(c(plot.y(tick.value) + 4))\">\(Charts.escapeXML(tick.label))</text>")
            }
            close("</g>")
            // X tick marks and labels.
            open("<g class=\"x-ticks\" font-size=\"11\" fill=\"#333333\" text-anchor=\"middle\">")
            for tick in xTicks {
                let x = c(tick.x)
                line("<line x1=\"\(x)\" y1=\"\(c(plot.bottom))\" x2=\"\(x)\" y2=\"\(c(plot.bottom + 4))\" stroke=\"#333333\"/>")
                line("<text x=\"\(x)\" y=\"\(c(plot.bottom + 17))\">\(Charts.escapeXML(tick.label))</text>")
            }
            close("</g>")
            // Axis lines.
            line("<path class=\"axes\" d=\"M\(c(plot.left)),\(c(plot.top)) L\(c(plot.left)),\(c(plot.bottom)) \(c(plot.right)),\(c(plot.bottom))\""
                 + " fill=\"none\" stroke=\"#333333\" stroke-width=\"1\"/>")
            // The y axis label, rotated along the axis.
            let labelX = 16.0, labelY = plot.top + plot.height / 2
            line("<text class=\"y-label\" x=\"\(c(labelX))\" y=\"\(c(labelY))\" transform=\"rotate(-90 \(c(labelX)) \(c(labelY)))\""
                 + " text-anchor=\"middle\" font-size=\"12\" fill=\"#333333\">\(Charts.escapeXML(yLabel))</text>")
        }

        /// A "No data" note in the middle of the plot.
        mutating func drawNoData() {
            let c = Charts.coordinate
            line("<text class=\"no-data\" x=\"\(c(plot.left + plot.width / 2))\" y=\"\(c(plot.top + plot.height / 2))\""
                 + " text-anchor=\"middle\" font-size=\"13\" fill=\"#888888\">No data</text>")
        }

        /// The legend, then the closing tag; returns the whole document.
        mutating func finish() -> String {
            let c = Charts.coordinate
            if !legendRows.isEmpty {
                open("<g class=\"legend\" font-size=\"11\" fill=\"#333333\">")
                for (r, row) in legendRows.enumerated() {
                    let y = chartHeight - 6 + Double(r) * Document.legendRowHeight
                    for item in row {
                        let entry = legend[item.entry]
                        let x = 16 + item.x
                        switch entry.style {
                        case .line(let index):
                            let style = Palette.lineStyle(index)
                            let dash = style.dash.map { " stroke-dasharray=\"\($0)\"" } ?? ""
                            line("<line x1=\"\(c(x))\" y1=\"\(c(y))\" x2=\"\(c(x + 18))\" y2=\"\(c(y))\" stroke=\"\(style.color)\""
                                 + " stroke-width=\"2\" stroke-linecap=\"round\"\(dash)/>")
                        case .fill(let index):
                            let style = Palette.fillStyle(index)
                            line("<rect x=\"\(c(x + 3))\" y=\"\(c(y - 6))\" width=\"12\" height=\"12\" fill=\"\(style.color)\""
                                 + " fill-opacity=\"\(style.opacity)\"/>")
                        }
                        let name = Charts.truncated(entry.name, to: Charts.maxLegendCharacters)
                        line("<text x=\"\(c(x + 24))\" y=\"\(c(y + 4))\">\(Charts.escapeXML(name))</text>")
                    }
                }
                close("</g>")
            }
            close("</svg>")
            return text
        }
    }
}
