#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A problem with an input file, already phrased for people.
struct InputError: Error {
    let message: String
}

/// One non-blank line of a CSV file, split into cells.
struct CSVRow {
    /// 1-based line number in the file.
    let line: Int
    let cells: [String]
}

/// A small CSV reader: comma-separated cells, optional double quotes around a
/// cell (`""` inside quotes is a literal quote; quoted cells may not span
/// lines), blanks around cells ignored, blank lines skipped, `\r\n` accepted,
/// UTF-8 with an optional byte-order mark.
enum CSV {
    static func read(path: String) throws(InputError) -> [CSVRow] {
        guard let file = fopen(path, "rb") else {
            let reason = String(cString: strerror(errno))
            throw InputError(message: "\(path): cannot open: \(reason)")
        }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, file) }
            if n > 0 { bytes.append(contentsOf: chunk[0..<n]) }
            if n < chunk.count {
                if ferror(file) != 0 {
                    throw InputError(message: "\(path): read error: \(String(cString: strerror(errno)))")
                }
                break
            }
        }
        return try parse(bytes, name: path)
    }

    static func parse(_ bytes: [UInt8], name: String) throws(InputError) -> [CSVRow] {
        var body = bytes[...]
        if body.starts(with: [0xEF, 0xBB, 0xBF]) { body = body.dropFirst(3) }
        guard let text = String(validating: body, as: UTF8.self) else {
            throw InputError(message: "\(name): not valid UTF-8 text")
        }
        var rows: [CSVRow] = []
        var lineNumber = 0
        // "\r\n" is a single Character in Swift: split on both forms.
        for rawLine in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }) {
            lineNumber += 1
            var line = Substring(rawLine)
            if line.last == "\r" { line.removeLast() }
            if line.allSatisfy({ $0 == " " || $0 == "\t" }) { continue }
            rows.append(CSVRow(line: lineNumber, cells: try cells(of: line, line: lineNumber, name: name)))
        }
        return rows
    }

    private static func cells(of line: Substring, line number: Int, name: String) throws(InputError) -> [String] {
        var cells: [String] = []
        var i = line.startIndex
        func isBlank(_ c: Character) -> Bool { c == " " || c == "\t" }
        while true {
            while i < line.endIndex, isBlank(line[i]) { i = line.index(after: i) }
            var cell = ""
            if i < line.endIndex, line[i] == "\"" {
                let column = cells.count + 1
                i = line.index(after: i)
                var closed = false
                while i < line.endIndex {
                    let c = line[i]
                    i = line.index(after: i)
                    if c == "\"" {
                        if i < line.endIndex, line[i] == "\"" {
                            cell.append("\"")
                            i = line.index(after: i)
                        } else {
                            closed = true
                            break
                        }
                    } else {
                        cell.append(c)
                    }
                }
                guard closed else {
                    throw InputError(message: "\(name): line \(number), column \(column): unterminated quoted cell")
                }
                while i < line.endIndex, isBlank(line[i]) { i = line.index(after: i) }
                if i < line.endIndex, line[i] != "," {
                    throw InputError(
                        message: "\(name): line \(number), column \(column): unexpected text after a quoted cell")
                }
            } else {
                let start = i
                while i < line.endIndex, line[i] != "," { i = line.index(after: i) }
                var end = i
                while end > start, isBlank(line[line.index(before: end)]) { end = line.index(before: end) }
                cell = String(line[start..<end])
            }
            cells.append(cell)
            if i < line.endIndex, line[i] == "," {
                i = line.index(after: i)
                continue
            }
            return cells
        }
    }

    /// A finite number in a cell, or nil.
    static func number(_ cell: String) -> Float? {
        guard !cell.isEmpty, let value = Float(cell), value.isFinite else { return nil }
        return value
    }
}
