import Foundation
import KeelTestSupport

/// Runs the built `keel` executable as a subprocess.
enum CLI {
    static let packageRoot = TestPaths.packageRoot
    static let policyModel = TestPaths.policyModel
    static let policyCSV = TestPaths.policyCSV
    static var hasPolicyModel: Bool { FileManager.default.fileExists(atPath: policyModel) }

    static func product(_ name: String) -> String? { TestPaths.product(name) }

    static var keel: String? { product("keel") }
    static let keelMissing = "the keel executable was not found next to the test bundle: run `swift build` first"
    static var linearBackend: String? { product("libKeelLinearBackend.so") }
    static let linearBackendMissing = "libKeelLinearBackend.so not found: run `swift build --product KeelLinearBackend`"

    struct Result {
        let status: Int32
        let stdout: String
        let stderr: String
    }

    static func run(_ arguments: [String]) throws -> Result {
        guard let keel else { throw CLIError(keelMissing) }
        let dir = try scratchDirectory()
        defer { remove(dir) }
        let outURL = dir.appendingPathComponent("stdout")
        let errURL = dir.appendingPathComponent("stderr")
        guard FileManager.default.createFile(atPath: outURL.path, contents: nil),
              FileManager.default.createFile(atPath: errURL.path, contents: nil)
        else { throw CLIError("cannot create capture files in \(dir.path)") }
        let outHandle = try FileHandle(forWritingTo: outURL)
        let errHandle = try FileHandle(forWritingTo: errURL)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: keel)
        process.arguments = arguments
        process.standardOutput = outHandle
        process.standardError = errHandle
        process.standardInput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        try outHandle.close()
        try errHandle.close()
        return Result(status: process.terminationStatus,
                      stdout: String(decoding: try Data(contentsOf: outURL), as: UTF8.self),
                      stderr: String(decoding: try Data(contentsOf: errURL), as: UTF8.self))
    }

    static func scratchDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory
            .appendingPathComponent("keel-cli-tests-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    static func remove(_ url: URL) { try? FileManager.default.removeItem(at: url) }

    static func write(_ text: String, in dir: URL, name: String) throws -> String {
        let path = dir.appendingPathComponent(name).path
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        return path
    }
}

struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
