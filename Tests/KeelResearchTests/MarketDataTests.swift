import Foundation
import KeelPortfolio
import Testing
@testable import KeelResearch

@Suite("Market data files")
struct MarketDataTests {
    @Test func relativesBecomePricesStartingAtOne() throws {
        let data = try MarketData.parse(Array("a,b\n1.1,0.5\n2,4\n".utf8), name: "t.csv")
        #expect(data.assets == ["a", "b"])
        #expect(!data.hasPrices)
        #expect(data.periods == 2)
        #expect(data.rows == 3)
        #expect(data.price(0, 0) == 1 && data.price(1, 1) == 0.5)
        #expect(abs(data.price(2, 0) - 2.2) < 1e-15 && data.price(2, 1) == 2)
        #expect(data.relative(1, 1) == 4)
        #expect(data.firstRow == [0, 0])
        #expect(data.sha256.count == 64)
    }

    @Test func pricesWithDatesListAssetsOnTheirFirstPrice() throws {
        let data = try MarketData.parse(Array("date,a,b\n2020-01-01,10,\n2020-01-02,11,\n2020-01-03,12,5\n2020-01-06,6,6\n".utf8),
                                        name: "p.csv")
        #expect(data.hasPrices)
        #expect(data.firstRow == [0, 2])
        #expect(data.relative(0, 1).isNaN && data.relative(1, 1).isNaN)
        #expect(data.relative(2, 1) == 6.0 / 5.0)
        #expect(data.relative(2, 0) == 0.5)
        #expect(data.dates == ["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-06"])
        #expect(data.label(ofRow: 3) == "2020-01-06")
    }

    /// Every malformed input is an error naming the line and the column.
    @Test(arguments: [
        ("", "the file is empty"),
        ("\n\n", "the file is empty"),
        ("a,b\n", "no data rows after the header"),
        ("a,b\n1,2\n1,2,3\n", "line 3: 3 cells, but the header names 2 columns"),
        ("a,b\n1,2\n1\n", "line 3: 1 cells"),
        ("a,b\n1,x\n", "line 2: column 2 ('b'): 'x' is not a number"),
        ("a,b\n1,1.2.3\n", "'1.2.3' is not a number"),
        ("a,b\n1,nan\n", "'nan' is not a number"),
        ("a,b\n1,inf\n", "'inf' is not a number"),
        ("a,b\n1,0\n", "line 2: column 2 ('b'): 0 is not > 0"),
        ("a,b\n1,-2\n", "-2 is not > 0"),
        ("a,b\n1,\n", "line 2: column 2 ('b') is empty"),
        ("a,a\n1,2\n", "column 2 ('a') has the same name as column 1"),
        ("a,,c\n1,2,3\n", "column 2 has no name"),
        ("a,date\n1,2\n", "column 2 is named 'date'; a date column must come first"),
        ("date\n2020-01-01\n", "names a date column but no assets"),
        ("date,a\n2020-01-02,1\n2020-01-01,1\n", "line 3: column 1 (date): 2020-01-01 does not come after"),
        ("date,a\n2020/01/02,1\n", "'2020/01/02' is not a date of the form YYYY-MM-DD"),
        ("date,a\n2020-02-30,1\n2020-03-01,1\n", "'2020-02-30' is not a date of the form YYYY-MM-DD"),
        ("a\n1e200\n1e200\n", "data row 2: the cumulative price of 'a' leaves the range of a double"),
        ("a\n1e-200\n1e-200\n", "data row 2: the cumulative price of 'a' leaves the range of a double"),
        ("date,a\n2020-01-01,1\n", "one price row"),
        ("date,a,b\n2020-01-01,1,2\n2020-01-02,1,\n2020-01-03,1,2\n", "line 3: column 3 ('b') is empty after the asset's first price"),
        ("date,a,b\n2020-01-01,1,\n2020-01-02,1,\n", "asset 'b' has no price at all"),
    ])
    func malformedInputIsAClearError(content: String, expected: String) {
        do {
            _ = try MarketData.parse(Array(content.utf8), name: "bad.csv")
            Issue.record("accepted: \(content.debugDescription)")
        } catch {
            #expect(error.code == .invalidData)
            #expect(error.message.contains(expected), "\(error.message)")
            #expect(error.message.hasPrefix("bad.csv"))
        }
    }

    @Test func missingFileIsAnError() {
        #expect(throws: ResearchError.self) { try MarketData.load(path: "/nonexistent/keel/data.csv") }
        do { _ = try MarketData.load(path: "/nonexistent/keel/data.csv") } catch {
            #expect(error.message.contains("no such file"))
        }
    }

    @Test func blankLinesBOMQuotesAndCRLFAreAccepted() throws {
        let text = "\u{FEFF}\"a\", b\r\n\r\n1.5 , 2\r\n  \n0.5,1e0\r\n"
        let data = try MarketData.parse(Array(text.utf8), name: "t.csv")
        #expect(data.assets == ["a", "b"])
        #expect(data.periods == 2)
        #expect(data.relative(1, 1) == 1)
    }

    @Test func aDatesFileBesideARelativesFileLabelsTheRows() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("keel-md-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try "a\n1.1\n0.9\n".write(to: dir.appendingPathComponent("x.csv"), atomically: true, encoding: .utf8)
        try "date\n1999-01-04\n1999-01-05\n".write(to: dir.appendingPathComponent("x_dates.csv"), atomically: true,
                                                   encoding: .utf8)
        let data = try MarketData.load(path: dir.appendingPathComponent("x.csv").path)
        #expect(data.dates == ["start", "1999-01-04", "1999-01-05"])
        // "start" sorts after any digit: date lookups must skip it.
        #expect(data.row(onOrAfter: "1999-01-05") == 2)
        #expect(data.row(onOrAfter: "1900-01-01") == 1)
        #expect(data.row(onOrAfter: "2000-01-01") == nil)
        #expect(data.name == "x.csv")
    }

    @Test(arguments: [
        ("date\n1999-01-04\n1999-02-31\n", "x_dates.csv: line 3: '1999-02-31' is not a date of the form YYYY-MM-DD"),
        ("date\n1999-01-05\n1999-01-04\n", "x_dates.csv: line 3: 1999-01-04 is not after the previous date"),
        ("date\n1999-01-04\n", "x_dates.csv: 1 dates, but x.csv has 2 rows"),
    ])
    func aBadDatesFileIsAClearError(dates: String, expected: String) {
        do {
            _ = try MarketData.parse(Array("a\n1.1\n0.9\n".utf8), name: "x.csv", dates: Array(dates.utf8),
                                     datesName: "x_dates.csv")
            Issue.record("accepted: \(dates.debugDescription)")
        } catch {
            #expect(error.message == expected)
        }
    }

    /// The fast decimal path agrees with the standard library's parser.
    @Test func numbersParseExactly() {
        var rng = SplitMix64(seed: 3)
        var texts = ["1", "-0.5", "+2", ".5", "5.", "0.000001234", "1e3", "1.5E-7", "123456789012345678901234",
                     "0.1234567890123456789012", "4.9406564584124654e-324", "1.7976931348623157e308", "0x1p3"]
        for _ in 0..<2000 {
            let digits = Int(rng.next() % 12) + 1
            let v = rng.unit() * pow(10, Double(Int(rng.next() % 8)) - 3)
            texts.append(String(format: "%.\(digits)f", v))
            texts.append(String(v))
        }
        for text in texts {
            let bytes = Array(text.utf8)
            #expect(parseNumber(bytes, 0..<bytes.count) == Double(text), "\(text)")
        }
        for bad in ["", "-", ".", "1.2.3", "1e", "abc", "1,0", "nan", "inf", "1e999"] {
            let bytes = Array(bad.utf8)
            #expect(parseNumber(bytes, 0..<bytes.count) == nil, "\(bad)")
        }
    }
}
