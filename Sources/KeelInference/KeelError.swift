import CKeelCore

/// An error reported by the Keel inference core or by this wrapper.
///
/// `code` is one of the core's stable status codes (they cross the C ABI, so
/// the raw values never change); `message` is the core's explanation, which
/// names the file, node, operator, tensor or line involved.
public struct KeelError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The status codes of `keel_status` (every one except `KEEL_OK`).
    public enum Code: Int32, CaseIterable, CustomStringConvertible, Sendable {
        /// A caller passed a bad argument: a bad index, shape or count.
        case invalidArgument = 1
        /// A file could not be opened or read.
        case io = 2
        /// The bytes are not a well-formed model file.
        case parse = 3
        /// The model decoded, but its graph is inconsistent.
        case invalidModel = 4
        /// A valid model that Keel does not run (operator, data type, attribute).
        case unsupported = 5
        /// Input or intermediate shapes do not fit.
        case shape = 6
        /// An allocation failed.
        case outOfMemory = 7
        /// A configured size limit would be exceeded.
        case limit = 8
        /// A plugin was built for an incompatible ABI version.
        case version = 9
        /// A plugin could not be loaded or is malformed.
        case plugin = 10
        /// A bug in Keel.
        case `internal` = 11

        /// The core's human-readable name of the code, e.g. `"parse error"`.
        public var name: String {
            guard let s = keel_status_name(keel_status(rawValue: .init(rawValue))) else {
                return "unknown status"
            }
            return String(cString: s)
        }

        public var description: String { name }
    }

    /// What went wrong, as a stable code.
    public let code: Code
    /// The details, for people.
    public let message: String

    public init(code: Code, message: String) {
        self.code = code
        self.message = message
    }

    /// `"<code name>: <message>"`, e.g. `"parse error: model.onnx: truncated field at byte 12"`.
    public var description: String { "\(code.name): \(message)" }
}

// MARK: - Bridging helpers (internal)

extension KeelError {
    /// Converts a failed status and its filled error record.
    init(status: keel_status, record: keel_error) {
        let raw = Int32(truncatingIfNeeded: status.rawValue)
        var record = record
        let text = withUnsafeBytes(of: &record.message) { raw -> String in
            let bytes = raw.bindMemory(to: UInt8.self)
            let length = bytes.firstIndex(of: 0) ?? bytes.count
            return String(decoding: UnsafeBufferPointer(rebasing: bytes[0..<length]), as: UTF8.self)
        }
        let code = Code(rawValue: raw) ?? .internal
        self.init(code: code, message: text.isEmpty ? code.name : text)
    }
}

/// Calls a C function that takes a `keel_error *` and throws on failure.
@inline(__always)
func keelCall(_ body: (UnsafeMutablePointer<keel_error>) -> keel_status) throws(KeelError) {
    var record = keel_error()
    let status = body(&record)
    if status != KEEL_OK {
        throw KeelError(status: status, record: record)
    }
}
