import Foundation

// Shared by the Swift test targets.
/// Locations the tests need: the package root, scratch files and built products.
public enum TestPaths {
    /// The package root (this file is Tests/KeelTestSupport/TestPaths.swift).
    public static let packageRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    public static let policyModel = packageRoot.appendingPathComponent("models/policy/1/model.onnx").path
    public static let policyCSV = packageRoot.appendingPathComponent("docs/examples/policy-input.csv").path

    /// A fresh scratch directory, removed by the caller with `remove`.
    public static func scratchDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory
            .appendingPathComponent("keel-tests-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    public static func remove(_ url: URL) {
        try? FileManager.default.removeItem(at: url)
    }

    /// Directories that may hold the built products: the test executable's own
    /// directory (.build/<triple>/<config>/), its parents, and .build/<config>.
    public static var productDirectories: [URL] {
        var dirs: [URL] = []
        var starts: [String] = []
        if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") { starts.append(exe) }
        if let first = CommandLine.arguments.first { starts.append(first) }
        starts.append(Bundle.main.bundlePath)
        starts.append(Bundle.main.executablePath ?? "")
        for start in starts where !start.isEmpty {
            var url = URL(fileURLWithPath: start).resolvingSymlinksInPath().deletingLastPathComponent()
            for _ in 0..<5 {
                dirs.append(url)
                url = url.deletingLastPathComponent()
            }
        }
        for config in ["debug", "release"] {
            dirs.append(packageRoot.appendingPathComponent(".build/\(config)"))
        }
        return dirs
    }

    /// The first product named `name` found in `productDirectories`.
    public static func product(_ name: String) -> String? {
        for dir in productDirectories {
            let path = dir.appendingPathComponent(name).path
            if FileManager.default.isExecutableFile(atPath: path) || FileManager.default.fileExists(atPath: path) {
                return path
            }
        }
        return nil
    }
}
