import ArgumentParser
import KeelInference

struct Infer: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a model on a CSV file of features, one row per asset.",
        discussion: """
            The CSV has one row per asset and one column per input feature, with or \
            without a header row. The first row is a header when none of its cells is \
            a number (or when some cells are not numbers and at least one names a \
            feature of the model).

            With a header, if the model lists its features (metadata keel.features), \
            columns are matched by name: they may come in any order, extra columns \
            (e.g. a ticker) are ignored, and a missing feature is an error. Otherwise \
            the number of columns must equal the model's feature count and columns \
            are taken in order.

            Prints one line per input row: that row's outputs, comma-separated, at \
            full float precision. Nothing else goes to standard output; every \
            problem (a bad cell is reported with its line and column) goes to \
            standard error with exit status 1.
            """
    )

    @Option(help: ArgumentHelp("The model file.", valueName: "file"))
    var model: String

    @Option(help: ArgumentHelp("The CSV file of input features.", valueName: "csv"))
    var input: String

    @OptionGroup var backendOptions: BackendOptions

    func run() throws {
        let loaded = try backendOptions.loadModel(model)
        guard loaded.inputs.count == 1, let info = loaded.inputs.first, info.rank == 2 else {
            let described = loaded.inputs.map(\.description).joined(separator: ", ")
            throw fail("\(model): infer needs a model with one [rows, features] input; this one has \(described)")
        }
        let table: FeatureTable
        do {
            let rows = try CSV.read(path: input)
            table = try FeatureTable(rows: rows, source: input, featureNames: loaded.featureNames,
                                     featureCount: info.dims[1])
        } catch {
            throw fail(error.message)
        }

        let outputs: [Tensor]
        do {
            let session = try loaded.makeSession()
            outputs = try session.run(features: table.values, rows: table.rowCount)
        } catch {
            throw fail(model, error)
        }
        for (tensor, outInfo) in zip(outputs, loaded.outputs) where tensor.rowCount != table.rowCount {
            throw fail("\(model): output '\(outInfo.name)' has shape \(tensor.shape), not one row per input row")
        }

        var text = ""
        text.reserveCapacity(table.rowCount * 16)
        for r in 0..<table.rowCount {
            var first = true
            for tensor in outputs {
                for value in tensor.row(r) {
                    if !first { text += "," }
                    first = false
                    text += String(describing: value)
                }
            }
            text += "\n"
        }
        print(text, terminator: "")
    }
}

/// The feature matrix read from a CSV file, in the model's feature order.
struct FeatureTable {
    var values: [Float] = []
    var rowCount = 0

    init(rows: [CSVRow], source: String, featureNames: [String]?, featureCount: Int?) throws(InputError) {
        guard let first = rows.first else {
            throw InputError(message: "\(source): no rows")
        }
        let expected = featureCount ?? featureNames?.count
        // Names are used only when the metadata agrees with the graph.
        let names = featureNames.flatMap { list in
            list.isEmpty || (expected.map { list.count != $0 } ?? false) ? nil : list
        }

        let numeric = first.cells.map { CSV.number($0) != nil }
        let hasHeader: Bool
        if numeric.allSatisfy({ $0 }) {
            hasHeader = false
        } else if numeric.allSatisfy({ !$0 }) {
            hasHeader = true
        } else {
            hasHeader = names.map { known in first.cells.contains(where: known.contains) } ?? false
        }

        let header = hasHeader ? first.cells : nil
        let dataRows = hasHeader ? Array(rows.dropFirst()) : rows
        let widthSource = hasHeader ? "the header on line \(first.line)" : "line \(first.line)"
        let width = first.cells.count

        // columnFor[f] = CSV column of feature f.
        var columnFor: [Int]
        if let header, let names {
            var index: [String: Int] = [:]
            for (c, cell) in header.enumerated() {
                if index[cell] != nil, names.contains(cell) {
                    throw InputError(message: "\(source): line \(first.line): column '\(cell)' appears twice")
                }
                if index[cell] == nil { index[cell] = c }
            }
            columnFor = []
            var missing: [String] = []
            for name in names {
                if let c = index[name] { columnFor.append(c) } else { missing.append(name) }
            }
            if !missing.isEmpty {
                let list = missing.map { "'\($0)'" }.joined(separator: ", ")
                throw InputError(
                    message: "\(source): line \(first.line): the header has no column for model feature"
                        + "\(missing.count == 1 ? "" : "s") \(list)")
            }
        } else {
            if let expected, width != expected {
                throw InputError(
                    message: "\(source): \(widthSource) has \(width) column\(width == 1 ? "" : "s"), "
                        + "the model expects \(expected) feature\(expected == 1 ? "" : "s")")
            }
            columnFor = Array(0..<width)
        }

        guard !dataRows.isEmpty else {
            throw InputError(message: "\(source): no data rows")
        }
        values.reserveCapacity(dataRows.count * columnFor.count)
        for row in dataRows {
            guard row.cells.count == width else {
                throw InputError(
                    message: "\(source): line \(row.line): \(row.cells.count) column\(row.cells.count == 1 ? "" : "s"), "
                        + "expected \(width) as on \(widthSource)")
            }
            for c in columnFor {
                let cell = row.cells[c]
                guard let value = CSV.number(cell) else {
                    let label = header.map { " ('\($0[c])')" } ?? ""
                    let what = cell.isEmpty ? "empty cell" : "'\(cell)' is not a finite number"
                    throw InputError(message: "\(source): line \(row.line), column \(c + 1)\(label): \(what)")
                }
                values.append(value)
            }
        }
        rowCount = dataRows.count
    }
}
