import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing
@testable import KeelResearch

// Tests of the SVG chart renderers: every document (edge cases × chart kinds) must parse as XML, text must
// be escaped, long series must be downsampled, and the tick algorithms must give nice values.

// MARK: - Parsing helpers

/// What a test looks at in a parsed SVG document.
private struct ParsedSVG {
    struct Element {
        var name: String
        var attributes: [String: String]
        /// The `class` attributes of the element and its ancestors, innermost last.
        var classes: [String]
    }

    struct Text {
        var content: String
        var classes: [String]
    }

    var error: String?
    var root = ""
    var elements: [Element] = []
    /// The content of every `<text>` element.
    var texts: [Text] = []

    func texts(in group: String) -> [String] {
        texts.filter { $0.classes.contains(group) }.map(\.content)
    }

    func elements(_ name: String, withClass group: String) -> [Element] {
        elements.filter { $0.name == name && $0.classes.contains(group) }
    }
}

/// A SAX delegate that records elements and text content.
private final class SVGCollector: NSObject, XMLParserDelegate {
    var parsed = ParsedSVG()
    private var classStack: [String] = []
    private var textBuffer: String?

    func parser(_ parser: XMLParser, didStartElement elementName: String, namespaceURI: String?,
                qualifiedName qName: String?, attributes attributeDict: [String: String] = [:]) {
        if parsed.root.isEmpty { parsed.root = elementName }
        classStack.append(attributeDict["class"] ?? "")
        parsed.elements.append(.init(name: elementName, attributes: attributeDict, classes: classStack.filter { !$0.isEmpty }))
        if elementName == "text" { textBuffer = "" }
    }

    func parser(_ parser: XMLParser, foundCharacters string: String) {
        textBuffer?.append(string)
    }

    func parser(_ parser: XMLParser, didEndElement elementName: String, namespaceURI: String?, qualifiedName qName: String?) {
        if elementName == "text", let text = textBuffer {
            parsed.texts.append(.init(content: text, classes: classStack.filter { !$0.isEmpty }))
            textBuffer = nil
        }
        if !classStack.isEmpty { classStack.removeLast() }
    }
}

/// Parses `svg` with FoundationXML's XMLParser; `error` is set when it does not parse.
private func parseSVG(_ svg: String) -> ParsedSVG {
    let parser = XMLParser(data: Data(svg.utf8))
    let collector = SVGCollector()
    parser.delegate = collector
    if !parser.parse() {
        collector.parsed.error = parser.parserError.map { String(describing: $0) } ?? "parse failed"
    }
    return collector.parsed
}

/// The number of coordinate pairs ("x,y") in a path's `d` attribute.
private func pointCount(_ d: String) -> Int { d.reduce(0) { $0 + ($1 == "," ? 1 : 0) } }

/// A deterministic random walk of `count` steps (a linear congruential generator, no global state).
private func randomWalk(count: Int, seed: UInt64, start: Double = 100) -> [Double] {
    var state = seed
    var value = start
    return (0..<count).map { _ in
        state = state &* 6364136223846793005 &+ 1442695040888963407
        let u = Double(state >> 11) / Double(1 << 53) - 0.5
        value *= 1 + 0.02 * u
        return value
    }
}

// MARK: - Inputs

/// Awkward inputs; every chart kind must still produce a valid document.
enum ChartEdgeCase: String, CaseIterable, Sendable {
    case noSeries, emptyValues, allNaN, constant, constantZero, singlePoint, infinities, mismatchedLengths,
         wrongLabelCount, negativeValues, hugeValues, tinyValues, extremeSpan, controlCharacters, longNames,
         manyLongSeries

    var series: [ChartSeries] {
        switch self {
        case .noSeries: []
        case .emptyValues: [ChartSeries(name: "empty", values: []), ChartSeries(name: "also empty", values: [])]
        case .allNaN: [ChartSeries(name: "nan", values: [.nan, .nan, .nan])]
        case .constant: [ChartSeries(name: "flat", values: Array(repeating: 3.5, count: 20))]
        case .constantZero: [ChartSeries(name: "zero", values: Array(repeating: 0, count: 20))]
        case .singlePoint: [ChartSeries(name: "one", values: [1.25])]
        case .infinities:
            [ChartSeries(name: "inf", values: [1, .infinity, 2, -.infinity, .nan, 3, 4]),
             ChartSeries(name: "only inf", values: [.infinity, -.infinity])]
        case .mismatchedLengths:
            [ChartSeries(name: "long", values: (0..<50).map { Double($0) }),
             ChartSeries(name: "short", values: [0.5, 0.25, 0.125]),
             ChartSeries(name: "none", values: [])]
        case .wrongLabelCount: [ChartSeries(name: "a", values: [1, 2, 3, 4]), ChartSeries(name: "b", values: [2, 1, 0, 1])]
        case .negativeValues: [ChartSeries(name: "drawdown", values: [0, -0.05, -0.2, -0.35, -0.1, 0])]
        case .hugeValues:
            [ChartSeries(name: "huge", values: [-Double.greatestFiniteMagnitude, 1, Double.greatestFiniteMagnitude]),
             ChartSeries(name: "big", values: [1e300, 1e301])]
        case .tinyValues: // Sub-normal numbers, down to the smallest positive Double.
            [ChartSeries(name: "tiny", values: [.leastNonzeroMagnitude, .leastNonzeroMagnitude * 2_000, .leastNormalMagnitude / 100])]
        case .extremeSpan: [ChartSeries(name: "span", values: [1e-300, 1, 1e300])]
        case .controlCharacters:
            [ChartSeries(name: "bell\u{07}nul\u{00}esc\u{1B}", values: [1, 2, 3]),
             ChartSeries(name: "\u{FFFF}\u{FFFE}", values: [3, 2, 1])]
        case .longNames: [ChartSeries(name: String(repeating: "very long name ", count: 20), values: [1, 2, 3])]
        case .manyLongSeries:
            (0..<40).map { ChartSeries(name: "S\($0)", values: randomWalk(count: 2_000, seed: UInt64($0) + 1)) }
        }
    }

    var xLabels: [String]? {
        switch self {
        case .wrongLabelCount: ["only", "two"]
        case .singlePoint: ["1962-07-03"]
        case .controlCharacters: ["a\u{01}", "<b>", "c&d"]
        default: nil
        }
    }
}

/// The chart kinds (and axis variants) under test.
enum ChartKind: String, CaseIterable, Sendable {
    case line, logLine, percentLine, stackedArea, groupedBars

    func render(_ series: [ChartSeries], xLabels: [String]?, title: String = "Chart", width: Int = 960,
                height: Int = 480) -> String {
        switch self {
        case .line:
            Charts.lineChart(title: title, yLabel: "Value", series: series, xLabels: xLabels, width: width, height: height)
        case .logLine:
            Charts.lineChart(title: title, yLabel: "Wealth", series: series, xLabels: xLabels, logScale: true,
                             width: width, height: height)
        case .percentLine:
            Charts.lineChart(title: title, yLabel: "Drawdown", series: series, xLabels: xLabels, percent: true,
                             width: width, height: height)
        case .stackedArea:
            Charts.stackedArea(title: title, yLabel: "Weight", series: series, xLabels: xLabels, width: width, height: height)
        case .groupedBars:
            Charts.groupedBars(title: title, yLabel: "Return", groups: xLabels ?? ["W1", "W2"], series: series,
                               width: width, height: height)
        }
    }
}

// MARK: - Tests

@Suite("SVG charts")
struct ChartsTests {
    @Test("every edge case gives a valid SVG document", arguments: ChartEdgeCase.allCases, ChartKind.allCases)
    func validDocument(edge: ChartEdgeCase, kind: ChartKind) {
        let svg = kind.render(edge.series, xLabels: edge.xLabels)
        let parsed = parseSVG(svg)
        #expect(parsed.error == nil, "\(parsed.error ?? "")")
        #expect(parsed.root == "svg")
        #expect(svg.hasPrefix("<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\""))
        #expect(parsed.elements.contains { $0.name == "rect" && $0.attributes["fill"] == "#ffffff" })
        #expect(parsed.texts(in: "title") == ["Chart"])
        #expect(!parsed.texts(in: "y-ticks").isEmpty)
        #expect(parsed.elements.contains { $0.attributes["class"] == "axes" })
        // One legend entry per series, whatever its data.
        #expect(parsed.texts(in: "legend").count == edge.series.count)
        // No NaN or infinity leaks into an attribute (names appear only in text content).
        for element in parsed.elements {
            for value in element.attributes.values {
                #expect(!value.lowercased().contains("nan") && !value.lowercased().contains("inf"), "\(element.name): \(value)")
            }
        }
        // Same input, same bytes.
        #expect(kind.render(edge.series, xLabels: edge.xLabels) == svg)
    }

    @Test("odd sizes still give valid documents", arguments: [0, -5, 1, 100_000, Int.max, Int.min])
    func oddSizes(size: Int) {
        let series = [ChartSeries(name: "a", values: [1, 2, 3])]
        for kind in ChartKind.allCases {
            let parsed = parseSVG(kind.render(series, xLabels: nil, width: size, height: size))
            #expect(parsed.error == nil, "\(kind): \(parsed.error ?? "")")
        }
    }

    @Test("XML special characters are escaped in all text", arguments: ChartKind.allCases)
    func escaping(kind: ChartKind) {
        let name = "A<b> & \"c\" 'd'"
        let svg = kind.render([ChartSeries(name: name, values: [1, 2, 3])], xLabels: ["<1>", "&2", "\"3\""],
                              title: "Title <&> \"q\"")
        #expect(!svg.contains(name))
        #expect(svg.contains("A&lt;b&gt; &amp; &quot;c&quot; &apos;d&apos;"))
        let parsed = parseSVG(svg)
        #expect(parsed.error == nil, "\(parsed.error ?? "")")
        #expect(parsed.texts(in: "legend") == [name])
        #expect(parsed.texts(in: "title") == ["Title <&> \"q\""])
        #expect(parsed.texts(in: "x-ticks").contains("<1>"))
    }

    @Test func escapeReplacesCharactersXMLForbids() {
        #expect(Charts.escapeXML("a\u{00}b\u{1F}c\td\ne") == "a\u{FFFD}b\u{FFFD}c\td\ne")
        #expect(Charts.escapeXML("<&>\"'") == "&lt;&amp;&gt;&quot;&apos;")
        #expect(Charts.escapeXML("Zürich 東京 📈") == "Zürich 東京 📈")
    }

    @Test("the legend lists every series name, in order", arguments: [ChartKind.line, .stackedArea, .groupedBars])
    func legendNames(kind: ChartKind) {
        let names = (0..<40).map { "Asset \($0)" }
        let series = names.enumerated().map { ChartSeries(name: $0.element, values: [Double($0.offset), 1, 2]) }
        let parsed = parseSVG(kind.render(series, xLabels: nil))
        #expect(parsed.error == nil)
        #expect(parsed.texts(in: "legend") == names)
        // Ten colours, cycled; every swatch has one.
        let swatches = parsed.elements.filter { $0.classes.contains("legend") && $0.name != "text" && $0.name != "g" }
        #expect(swatches.count == 40)
        #expect(Set(swatches.compactMap { $0.attributes["stroke"] ?? $0.attributes["fill"] }).count == 10)
    }

    @Test func longSeriesAreDownsampled() {
        let count = 7_000
        var values = randomWalk(count: count, seed: 42)
        values[3_333] = 0.5    // a deep trough that must stay visible
        values[5_001] = 900    // and a spike
        let series = (0..<40).map { i in ChartSeries(name: "S\(i)", values: i == 0 ? values : randomWalk(count: count, seed: UInt64(i) + 7)) }
        let dates = (0..<count).map { "D\($0)" }
        let svg = Charts.lineChart(title: "Wealth", yLabel: "Wealth", series: series, xLabels: dates, logScale: true)
        let parsed = parseSVG(svg)
        #expect(parsed.error == nil)
        let lines = parsed.elements("path", withClass: "line")
        #expect(lines.count == 40)
        for line in lines {
            let points = pointCount(line.attributes["d"] ?? "")
            #expect(points > 100 && points <= 1_500)
        }
        #expect(svg.utf8.count < 800_000, "\(svg.utf8.count) bytes")

        // The trough and the spike survive downsampling.
        let runs = Charts.downsample(values, maxPoints: Charts.maxLinePoints)
        #expect(runs.count == 1)
        let kept = Set(runs.joined().map(\.index))
        #expect(kept.contains(3_333) && kept.contains(5_001))
        #expect(kept.count <= Charts.maxLinePoints)
        // Points stay in order.
        let indices = runs.joined().map(\.index)
        #expect(indices == indices.sorted())

        // Coordinates have at most one decimal.
        let numeric: Set<String> = ["d", "x", "y", "x1", "y1", "x2", "y2", "width", "height", "transform", "viewBox"]
        for element in parsed.elements {
            for (key, value) in element.attributes where numeric.contains(key) {
                for token in value.split(whereSeparator: { !"0123456789.".contains($0) }) {
                    if let dot = token.firstIndex(of: ".") {
                        #expect(token.distance(from: dot, to: token.endIndex) <= 2, "\(key)=\(token)")
                    }
                }
            }
        }
    }

    @Test func stackedAreasAreDownsampledToo() {
        let count = 7_000
        let series = (0..<40).map { i in ChartSeries(name: "W\(i)", values: Array(repeating: 1.0 / 40, count: count)) }
        let svg = Charts.stackedArea(title: "Weights", yLabel: "Weight", series: series, percent: true)
        let parsed = parseSVG(svg)
        #expect(parsed.error == nil)
        let areas = parsed.elements("path", withClass: "area")
        #expect(areas.count == 40)
        for area in areas { #expect(pointCount(area.attributes["d"] ?? "") <= 2 * Charts.maxAreaColumns) }
        #expect(svg.utf8.count < 800_000, "\(svg.utf8.count) bytes")
        // Weights summing to one: a 0 %...100 % axis.
        let labels = parsed.texts(in: "y-ticks")
        #expect(labels.first == "0%" && labels.last == "100%")
    }

    @Test func gapsSplitTheLine() {
        let runs = Charts.downsample([1, 2, .nan, 3, .nan, .nan, 4, 5, 6], maxPoints: 1_500)
        #expect(runs.map { $0.map(\.index) } == [[0, 1], [3], [6, 7, 8]])
        let svg = Charts.lineChart(title: "t", yLabel: "y", series: [ChartSeries(name: "g", values: [1, 2, .nan, 3, .nan, 4, 5])])
        let d = parseSVG(svg).elements("path", withClass: "line").first?.attributes["d"] ?? ""
        // Three subpaths; the lone point is drawn as a dot (a zero-length segment).
        #expect(d.filter { $0 == "M" }.count == 3)
        #expect(d.contains(" h0"))
    }

    @Test func niceTicksAreOneTwoFiveSequences() throws {
        let nice = try #require(Charts.niceTicks(lo: 0.83, hi: 27.1))
        #expect(nice.step == 5)
        #expect(nice.ticks == [0, 5, 10, 15, 20, 25, 30])
        for (lo, hi) in [(0.83, 27.1), (-0.35, 0.0), (0.001, 0.0042), (-1234.0, 98_765.0), (1e-7, 3e-7), (99.0, 101.0)] {
            let ticks = try #require(Charts.niceTicks(lo: lo, hi: hi)).ticks
            #expect(ticks.count >= 3 && ticks.count <= 13, "\(lo)...\(hi): \(ticks)")
            #expect(ticks.first! <= lo && ticks.last! >= hi)
            let step = ticks[1] - ticks[0]
            #expect(isOneTwoFive(step), "\(lo)...\(hi): step \(step)")
            for (a, b) in zip(ticks, ticks.dropFirst()) {
                #expect(abs((b - a) - step) <= step * 1e-9)
            }
        }
        #expect(Charts.niceTicks(lo: 1, hi: 1) == nil)
        #expect(Charts.niceTicks(lo: .nan, hi: 1) == nil)
        #expect(Charts.niceTicks(lo: -.greatestFiniteMagnitude, hi: .greatestFiniteMagnitude) == nil)
    }

    @Test func logTicksSpanTheData() {
        // Wealth from 0.8 to 12,000: every power of ten from 1 to 10^4.
        let wide = Charts.logTicks(lo: log10(0.8), hi: log10(12_000)).map(\.value)
        #expect(wide == [1, 10, 100, 1_000, 10_000])
        // Under three decades: 2 and 5 multiples join in.
        let narrow = Charts.logTicks(lo: log10(2.5), hi: log10(30)).map(\.value)
        #expect(narrow == [5, 10, 20])
        for value in narrow { #expect(isOneTwoFive(value)) }
        // Many decades are thinned to about ten labels, still powers of ten.
        let many = Charts.logTicks(lo: -30, hi: 30).map(\.value)
        #expect(many.count <= 11 && many.count >= 5)
        for value in many { #expect(abs(log10(value) - log10(value).rounded()) < 1e-9) }
        #expect(many.contains(1))   // thinned decades are aligned on multiples of the stride

        // In a rendered chart: the tick labels cover the data.
        let wealth = (0...100).map { pow(10, Double($0) / 25) }   // 1 ... 10,000
        let svg = Charts.lineChart(title: "Wealth", yLabel: "Wealth", series: [ChartSeries(name: "w", values: wealth + [0, -1])],
                                   logScale: true)
        let labels = parseSVG(svg).texts(in: "y-ticks")
        #expect(labels == ["1", "10", "100", "1000", "10k"])
    }

    @Test func tickLabelFormats() {
        #expect(Charts.formatTick(-0.2, resolution: 0.05, magnitude: 0.35, percent: true) == "-20%")
        #expect(Charts.formatTick(0.025, resolution: 0.005, magnitude: 0.03, percent: true) == "2.5%")
        #expect(Charts.formatTick(0, resolution: 0.05, magnitude: 0.35, percent: true) == "0%")
        #expect(Charts.formatTick(0.1 + 0.2, resolution: 0.1, magnitude: 1, percent: false) == "0.3")
        #expect(Charts.formatTick(12_500, resolution: 500, magnitude: 20_000, percent: false) == "12.5k")
        #expect(Charts.formatTick(2_000_000, resolution: 1_000_000, magnitude: 5_000_000, percent: false) == "2M")
        #expect(Charts.formatTick(-1_500, resolution: 500, magnitude: 2_000, percent: false) == "-1500")
        #expect(Charts.formatTick(2e-9, resolution: 1e-9, magnitude: 5e-9, percent: false) == "2e-9")
        #expect(Charts.formatTick(3e20, resolution: 1e20, magnitude: 5e20, percent: false) == "3e20")

        // Drawdowns on a percent axis.
        let svg = Charts.lineChart(title: "Drawdown", yLabel: "Drawdown",
                                   series: [ChartSeries(name: "dd", values: [0, -0.05, -0.2, -0.35, -0.1, 0])], percent: true)
        let labels = parseSVG(svg).texts(in: "y-ticks")
        #expect(labels.contains("-20%") && labels.contains("0%"))
    }

    @Test func coordinatesHaveAtMostOneDecimal() {
        #expect(Charts.coordinate(12.345) == "12.3")
        #expect(Charts.coordinate(12.96) == "13")
        #expect(Charts.coordinate(-3.25) == "-3.3" || Charts.coordinate(-3.25) == "-3.2")
        #expect(Charts.coordinate(-0.04) == "0")
        #expect(Charts.coordinate(.nan) == "0")
        #expect(Charts.coordinate(1e300) == "10000000")
    }

    @Test func xLabelsAreEvenlySpacedSubsets() {
        let dates = (0..<7_000).map { i in "19\(62 + i / 250)-01-\(String(format: "%02d", i % 28 + 1))" }
        let svg = Charts.lineChart(title: "t", yLabel: "y", series: [ChartSeries(name: "a", values: randomWalk(count: 7_000, seed: 3))],
                                   xLabels: dates)
        let shown = parseSVG(svg).texts(in: "x-ticks")
        #expect(shown.count >= 2 && shown.count <= 12)
        #expect(shown.first == dates.first && shown.last == dates.last)
        #expect(shown.allSatisfy { dates.contains($0) })

        // The wrong number of labels: position numbers instead.
        let fallback = Charts.lineChart(title: "t", yLabel: "y", series: [ChartSeries(name: "a", values: [1, 2, 3])], xLabels: ["x"])
        #expect(parseSVG(fallback).texts(in: "x-ticks") == ["0", "1", "2"])
    }

    @Test func barsGoBelowTheZeroLine() {
        let svg = Charts.groupedBars(title: "Windows", yLabel: "Return", groups: ["W1", "W2", "W3"],
                                     series: [ChartSeries(name: "policy", values: [0.1, -0.05, .nan]),
                                              ChartSeries(name: "baseline", values: [0.02, 0.03, 0.04])],
                                     percent: true)
        let parsed = parseSVG(svg)
        #expect(parsed.error == nil)
        let zero = parsed.elements.first { $0.attributes["class"] == "zero" }
        let zeroY = Double(zero?.attributes["y1"] ?? "") ?? -1
        let bars = parsed.elements("rect", withClass: "bars")
        #expect(bars.count == 5)   // the NaN draws no bar
        let negative = bars.filter { Double($0.attributes["y"] ?? "") == zeroY && (Double($0.attributes["height"] ?? "") ?? 0) > 0 }
        #expect(negative.count == 1)
        #expect(parsed.texts(in: "x-ticks") == ["W1", "W2", "W3"])
        // -5 % ... 10 %: a 2 % step from -6 % to 10 %.
        #expect(parsed.texts(in: "y-ticks") == ["-6%", "-4%", "-2%", "0%", "2%", "4%", "6%", "8%", "10%"])
    }
}

/// True when `value` is 1, 2 or 5 times a power of ten (within rounding).
private func isOneTwoFive(_ value: Double) -> Bool {
    guard value > 0, value.isFinite else { return false }
    let power = pow(10, log10(value).rounded(.down))
    let mantissa = value / power
    return [1.0, 2, 5, 10].contains { abs(mantissa - $0) < 1e-6 }
}
