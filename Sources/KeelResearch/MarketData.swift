import Crypto
import Foundation
import KeelPortfolio

/// Daily market data for backtests and training, read from a CSV file in
/// one of two forms (docs/BACKTEST.md):
///
/// - **Price relatives** (no date column): a header of asset names, then one
///   row per period of x = p_t / p_(t-1). Prices are synthesised, starting at
///   1. A sibling file `NAME_dates.csv` (a header, then one date per row),
///   when present, labels the periods.
/// - **Prices with a date column**: a header `date,A,B,...`, then one row per
///   day. A cell is empty before the asset's first price: the asset joins the
///   universe on that day. A gap after the first price is an error.
///
/// Every malformed input (empty file, ragged row, non-numeric or
/// non-positive cell, unknown or duplicate column, dates out of order) is a
/// ``ResearchError`` naming the file, the line and the column.
public struct MarketData: Sendable {
    /// A label for reports: the file name without its directory.
    public let name: String
    public let assets: [String]
    /// True when the file holds prices (a date column); false for relatives.
    public let hasPrices: Bool
    /// Number of price rows; there are `rows - 1` periods.
    public let rows: Int
    /// `rows × assets`, row-major. NaN before an asset's first price.
    public let prices: [Double]
    /// `periods × assets`: price at row t + 1 over price at row t (for a
    /// relatives file, the file's values exactly). NaN where an asset is not
    /// listed at row t.
    public let relatives: [Double]
    /// Per asset: the first row with a price.
    public let firstRow: [Int]
    /// One label per price row (a date, or "start" for the synthetic first
    /// row of a relatives file), when the file has dates.
    public let dates: [String]?
    /// SHA-256 of the file's bytes (and of the dates file's, when used), hex.
    public let sha256: String

    public var periods: Int { rows - 1 }
    public var assetCount: Int { assets.count }

    /// Price of asset `i` at row `r` (NaN when not listed yet).
    @inlinable public func price(_ r: Int, _ i: Int) -> Double { prices[r * assets.count + i] }
    /// Relative of asset `i` over period `t` (NaN when not listed at row t).
    @inlinable public func relative(_ t: Int, _ i: Int) -> Double { relatives[t * assets.count + i] }
    /// True when asset `i` has a price at row `r`.
    @inlinable public func isListed(_ i: Int, atRow r: Int) -> Bool { firstRow[i] <= r }

    /// The first row dated on or after `date` (a relatives file's synthetic
    /// first row, labelled "start", never matches), or nil.
    public func row(onOrAfter date: String) -> Int? {
        guard let dates else { return nil }
        let first = hasPrices ? 0 : 1
        return dates.indices.first { $0 >= first && dates[$0] >= date }
    }

    /// The label of price row `r`: its date, or the row number.
    public func label(ofRow r: Int) -> String { dates.map { $0[r] } ?? String(r) }

    /// Builds data from prices in memory (rows × assets, row-major, NaN
    /// before a listing); used by tests and by the stress generator.
    public init(name: String, assets: [String], prices: [Double], dates: [String]? = nil, hasPrices: Bool = true,
                relatives given: [Double]? = nil) throws(ResearchError)
    {
        let m = assets.count
        guard m > 0 else { throw ResearchError(.invalidData, "\(name): no asset columns") }
        guard prices.count % m == 0, prices.count / m >= 2 else {
            throw ResearchError(.invalidData, "\(name): need at least two price rows for \(m) assets")
        }
        let rows = prices.count / m
        if let dates, dates.count != rows {
            throw ResearchError(.invalidData, "\(name): \(dates.count) dates for \(rows) price rows")
        }
        var first = [Int](repeating: -1, count: m)
        for r in 0..<rows {
            for i in 0..<m {
                let p = prices[r * m + i]
                if p.isNaN {
                    if first[i] >= 0 {
                        throw ResearchError(.invalidData, "\(name): asset '\(assets[i])' has no price at row \(r) "
                            + "after its first price at row \(first[i])")
                    }
                } else if !(p.isFinite && p > 0) {
                    throw ResearchError(.invalidData, "\(name): asset '\(assets[i])' at row \(r): price \(p) is not > 0")
                } else if first[i] < 0 {
                    first[i] = r
                }
            }
        }
        if let i = first.firstIndex(of: -1) {
            throw ResearchError(.invalidData, "\(name): asset '\(assets[i])' has no price at all")
        }
        if let i = first.firstIndex(where: { $0 >= rows - 1 }) {
            throw ResearchError(.invalidData, "\(name): asset '\(assets[i])' is listed only on the last row")
        }
        var relatives = [Double](repeating: .nan, count: (rows - 1) * m)
        if let given {
            guard given.count == relatives.count else {
                throw ResearchError(.invalidData, "\(name): \(given.count) relatives for \(rows - 1) periods")
            }
            relatives = given
        } else {
            for t in 0..<(rows - 1) {
                for i in 0..<m where first[i] <= t {
                    relatives[t * m + i] = prices[(t + 1) * m + i] / prices[t * m + i]
                }
            }
        }
        var seen = Set<String>()
        for a in assets where !seen.insert(a).inserted {
            throw ResearchError(.invalidData, "\(name): asset '\(a)' appears twice")
        }
        self.name = name
        self.assets = assets
        self.hasPrices = hasPrices
        self.rows = rows
        self.prices = prices
        self.relatives = relatives
        firstRow = first
        self.dates = dates
        var hash = SHA256()
        prices.withUnsafeBytes { hash.update(bufferPointer: $0) }
        sha256 = hash.finalize().map { String(format: "%02x", $0) }.joined()
    }

    private init(name: String, assets: [String], hasPrices: Bool, rows: Int, prices: [Double], relatives: [Double],
                 firstRow: [Int], dates: [String]?, sha256: String)
    {
        self.name = name
        self.assets = assets
        self.hasPrices = hasPrices
        self.rows = rows
        self.prices = prices
        self.relatives = relatives
        self.firstRow = firstRow
        self.dates = dates
        self.sha256 = sha256
    }

    /// The same data with its relatives replaced (prices re-derived from the
    /// first row); used by the stress generator.
    public func replacingRelatives(_ x: [Double], name newName: String) throws(ResearchError) -> MarketData {
        let m = assets.count
        guard x.count == relatives.count else {
            throw ResearchError(.invalidData, "\(newName): \(x.count) relatives for \(periods) periods")
        }
        var p = prices
        for t in 0..<periods {
            for i in 0..<m where firstRow[i] <= t {
                let v = x[t * m + i]
                guard v.isFinite, v > 0 else {
                    throw ResearchError(.invalidData, "\(newName): relative \(v) of '\(assets[i])' in period \(t) is not > 0")
                }
                p[(t + 1) * m + i] = p[t * m + i] * v
            }
        }
        var hash = SHA256()
        x.withUnsafeBytes { hash.update(bufferPointer: $0) }
        hash.update(data: Array(sha256.utf8))
        return MarketData(name: newName, assets: assets, hasPrices: hasPrices, rows: rows, prices: p, relatives: x,
                          firstRow: firstRow, dates: dates, sha256: hash.finalize().map { String(format: "%02x", $0) }.joined())
    }

    // MARK: - Reading files

    /// Reads a data file (either form; see the type's documentation).
    public static func load(path: String) throws(ResearchError) -> MarketData {
        guard let data = FileManager.default.contents(atPath: path) else {
            let exists = FileManager.default.fileExists(atPath: path)
            throw ResearchError(.invalidData, "\(path): \(exists ? "cannot be read" : "no such file")")
        }
        let url = URL(fileURLWithPath: path)
        let stem = url.deletingPathExtension().lastPathComponent
        let datesPath = url.deletingLastPathComponent().appendingPathComponent("\(stem)_dates.csv").path
        let datesBytes = FileManager.default.contents(atPath: datesPath).map { [UInt8]($0) }
        return try parse([UInt8](data), name: url.lastPathComponent, dates: datesBytes,
                         datesName: URL(fileURLWithPath: datesPath).lastPathComponent)
    }

    /// Parses the bytes of a data file. `dates`, for a relatives file, is the
    /// content of its dates file (a header, then one date per row).
    public static func parse(_ bytes: [UInt8], name: String, dates datesBytes: [UInt8]? = nil,
                             datesName: String = "dates") throws(ResearchError) -> MarketData
    {
        var reader = LineReader(bytes)
        func fail(_ line: Int, _ what: String) -> ResearchError {
            ResearchError(.invalidData, "\(name): line \(line): \(what)")
        }
        guard let header = reader.next() else {
            throw ResearchError(.invalidData, "\(name): the file is empty")
        }
        let names = header.range.isEmpty ? [] : splitCells(bytes, header.range).map { cellText(bytes, $0) }
        guard !names.isEmpty, names.contains(where: { !$0.isEmpty }) else {
            throw fail(header.line, "the header row is empty; it must name the columns")
        }
        let dated = names[0].lowercased() == "date"
        for (k, n) in names.enumerated() {
            if n.isEmpty { throw fail(header.line, "column \(k + 1) has no name") }
            if k > 0 && n.lowercased() == "date" {
                throw fail(header.line, "column \(k + 1) is named 'date'; a date column must come first")
            }
            if let j = names[..<k].firstIndex(of: n) {
                throw fail(header.line, "column \(k + 1) ('\(n)') has the same name as column \(j + 1)")
            }
        }
        let assets = dated ? Array(names.dropFirst()) : names
        guard !assets.isEmpty else { throw fail(header.line, "the header names a date column but no assets") }
        let m = assets.count
        var values: [Double] = []
        values.reserveCapacity(bytes.count / 6)
        var rowDates: [String] = []
        var cells: [Range<Int>] = []
        cells.reserveCapacity(names.count + 1)
        while let line = reader.next() {
            cells.removeAll(keepingCapacity: true)
            splitCells(bytes, line.range, into: &cells)
            guard cells.count == names.count else {
                throw fail(line.line, "\(cells.count) cells, but the header names \(names.count) columns (a ragged row)")
            }
            var first = 0
            if dated {
                let date = cellText(bytes, cells[0])
                guard isISODate(date) else {
                    throw fail(line.line, "column 1 (date): '\(date)' is not a date of the form YYYY-MM-DD")
                }
                if let last = rowDates.last, date <= last {
                    throw fail(line.line, "column 1 (date): \(date) does not come after the previous row's \(last)")
                }
                rowDates.append(date)
                first = 1
            }
            for k in first..<cells.count {
                let r = cells[k]
                var column: String { "column \(k + 1) ('\(names[k])')" }
                if r.isEmpty {
                    guard dated else { throw fail(line.line, "\(column) is empty") }
                    values.append(.nan)
                    continue
                }
                guard let v = parseNumber(bytes, r) else {
                    throw fail(line.line, "\(column): '\(cellText(bytes, r))' is not a number")
                }
                guard v > 0 else {
                    throw fail(line.line, "\(column): \(cellText(bytes, r)) is not > 0 (\(dated ? "a price" : "a price relative") must be positive)")
                }
                values.append(v)
            }
            if dated, values.count > m {
                let base = values.count - m
                for i in 0..<m where values[base + i].isNaN && !values[base - m + i].isNaN {
                    throw fail(line.line, "column \(i + 2) ('\(assets[i])') is empty after the asset's first price; "
                        + "gaps are not filled")
                }
            }
        }
        guard !values.isEmpty else { throw ResearchError(.invalidData, "\(name): no data rows after the header") }
        var hash = SHA256()
        hash.update(data: bytes)
        if dated {
            guard values.count / m >= 2 else {
                throw ResearchError(.invalidData, "\(name): one price row; a backtest needs at least two")
            }
            let built = try MarketData(name: name, assets: assets, prices: values, dates: rowDates, hasPrices: true)
            return MarketData(name: name, assets: assets, hasPrices: true, rows: built.rows, prices: built.prices,
                              relatives: built.relatives, firstRow: built.firstRow, dates: rowDates,
                              sha256: hash.finalize().map { String(format: "%02x", $0) }.joined())
        }
        // Relatives: prices start at 1.
        let periods = values.count / m
        var prices = [Double](repeating: 1, count: (periods + 1) * m)
        for t in 0..<periods {
            for i in 0..<m {
                let p = prices[t * m + i] * values[t * m + i]
                guard p.isFinite, p > 0 else {
                    throw ResearchError(.invalidData, "\(name): data row \(t + 1): the cumulative price of "
                        + "'\(assets[i])' leaves the range of a double (\(p)); the relatives overflow or underflow")
                }
                prices[(t + 1) * m + i] = p
            }
        }
        var dates: [String]? = nil
        if let datesBytes {
            var dr = LineReader(datesBytes)
            _ = dr.next()
            var list = ["start"]
            var previous: Int? = nil
            while let line = dr.next() {
                let cells = splitCells(datesBytes, line.range)
                let text = cells.first.map { cellText(datesBytes, $0) } ?? ""
                guard let day = CivilDay.parse(text) else {
                    throw ResearchError(.invalidData, "\(datesName): line \(line.line): '\(text)' is not a date "
                        + "of the form YYYY-MM-DD")
                }
                if let previous, day <= previous {
                    throw ResearchError(.invalidData, "\(datesName): line \(line.line): \(text) is not after the "
                        + "previous date")
                }
                previous = day
                list.append(text)
            }
            guard list.count == periods + 1 else {
                throw ResearchError(.invalidData, "\(datesName): \(list.count - 1) dates, but \(name) has \(periods) rows")
            }
            hash.update(data: datesBytes)
            dates = list
        }
        return MarketData(name: name, assets: assets, hasPrices: false, rows: periods + 1, prices: prices,
                          relatives: values, firstRow: [Int](repeating: 0, count: m), dates: dates,
                          sha256: hash.finalize().map { String(format: "%02x", $0) }.joined())
    }

    /// A date of the form YYYY-MM-DD that exists.
    static func isISODate(_ s: String) -> Bool { CivilDay.parse(s) != nil }
}

// MARK: - Byte-level CSV scanning (fast: NYSE(O)'s 200,000 cells in a few ms)

/// Lines of a byte buffer, with 1-based numbers; `\r\n` accepted, a UTF-8
/// byte-order mark skipped, blank lines skipped.
struct LineReader {
    let bytes: [UInt8]
    var position = 0
    var line = 0

    init(_ bytes: [UInt8]) {
        self.bytes = bytes
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { position = 3 }
    }

    mutating func next() -> (line: Int, range: Range<Int>)? {
        while position < bytes.count {
            line += 1
            let start = position
            var end = start
            while end < bytes.count && bytes[end] != 0x0A { end += 1 }
            position = end + 1
            var stop = end
            if stop > start && bytes[stop - 1] == 0x0D { stop -= 1 }
            var blank = true
            for k in start..<stop where bytes[k] != 0x20 && bytes[k] != 0x09 { blank = false; break }
            if !blank { return (line, start..<stop) }
        }
        return nil
    }
}

/// The cells of a line, blanks and one pair of double quotes trimmed.
func splitCells(_ bytes: [UInt8], _ range: Range<Int>) -> [Range<Int>] {
    var out: [Range<Int>] = []
    splitCells(bytes, range, into: &out)
    return out
}

func splitCells(_ bytes: [UInt8], _ range: Range<Int>, into out: inout [Range<Int>]) {
    var start = range.lowerBound
    var k = start
    while true {
        if k == range.upperBound || bytes[k] == 0x2C {
            var a = start, b = k
            while a < b && (bytes[a] == 0x20 || bytes[a] == 0x09) { a += 1 }
            while b > a && (bytes[b - 1] == 0x20 || bytes[b - 1] == 0x09) { b -= 1 }
            if b - a >= 2 && bytes[a] == 0x22 && bytes[b - 1] == 0x22 { a += 1; b -= 1 }
            out.append(a..<b)
            if k == range.upperBound { return }
            start = k + 1
        }
        k += 1
    }
}

func cellText(_ bytes: [UInt8], _ range: Range<Int>) -> String {
    String(decoding: bytes[range], as: UTF8.self)
}

private let exactPowersOfTen: [Double] = (0...22).map { k in
    var p = 1.0
    for _ in 0..<k { p *= 10 }
    return p
}

/// A finite decimal number, or nil. Plain decimals with at most 19
/// significant digits take an exact fast path (an integer mantissa and a
/// power of ten ≤ 10^22, both exact in a double, so one correctly rounded
/// operation); anything else goes through `strtod`.
func parseNumber(_ bytes: [UInt8], _ range: Range<Int>) -> Double? {
    var k = range.lowerBound
    let end = range.upperBound
    guard k < end else { return nil }
    var negative = false
    if bytes[k] == 0x2D || bytes[k] == 0x2B { negative = bytes[k] == 0x2D; k += 1 }
    var mantissa: UInt64 = 0
    var digits = 0
    var scale = 0
    var any = false
    var truncated = false
    while k < end, bytes[k] >= 0x30, bytes[k] <= 0x39 {
        if digits < 19 {
            mantissa = mantissa * 10 + UInt64(bytes[k] - 0x30)
            if mantissa > 0 { digits += 1 }
        } else {
            scale += 1
            truncated = true
        }
        any = true
        k += 1
    }
    if k < end, bytes[k] == 0x2E {
        k += 1
        while k < end, bytes[k] >= 0x30, bytes[k] <= 0x39 {
            if digits < 19 {
                mantissa = mantissa * 10 + UInt64(bytes[k] - 0x30)
                if mantissa > 0 { digits += 1 }
                scale -= 1
            } else {
                truncated = true
            }
            any = true
            k += 1
        }
    }
    if any, !truncated, k == end, mantissa < (1 << 53), scale >= -22, scale <= 22 {
        var v = Double(mantissa)
        v = scale < 0 ? v / exactPowersOfTen[-scale] : v * exactPowersOfTen[scale]
        return negative ? -v : v
    }
    // General path: exponents, long mantissas, hexadecimal... via strtod,
    // which must consume the whole cell.
    let count = end - range.lowerBound
    guard count < 512 else { return nil }
    return withUnsafeTemporaryAllocation(of: CChar.self, capacity: count + 1) { buffer -> Double? in
        for j in 0..<count { buffer[j] = CChar(bitPattern: bytes[range.lowerBound + j]) }
        buffer[count] = 0
        var stop: UnsafeMutablePointer<CChar>? = nil
        let v = strtod(buffer.baseAddress!, &stop)
        guard let stop, stop == buffer.baseAddress! + count, v.isFinite else { return nil }
        return v
    }
}
