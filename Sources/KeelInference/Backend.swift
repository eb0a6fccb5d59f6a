import CKeelCore

/// A backend that decodes and runs models: the built-in ONNX/OpenBLAS one or
/// a plugin loaded from a shared library through the plugin ABI
/// (`keel_backend.h`, see docs/PLUGINS.md).
///
/// Thread safety: a backend is immutable and may be shared freely between
/// threads and tasks. Every ``Model`` keeps its backend alive, so a plugin is
/// unloaded only after the last model loaded through it is gone.
public final class Backend: @unchecked Sendable {
    // @unchecked: the handle is only read after init and the C core documents
    // every backend query as thread-safe; it is freed once, in deinit.
    let handle: OpaquePointer
    private let owned: Bool

    /// The built-in ONNX/OpenBLAS backend.
    public static let builtin: Backend = {
        guard let handle = keel_backend_builtin() else {
            fatalError("keel_backend_builtin() returned NULL")  // static storage in the core: cannot happen
        }
        return Backend(handle: handle, owned: false)
    }()

    private init(handle: OpaquePointer, owned: Bool) {
        self.handle = handle
        self.owned = owned
        self.name = keel_backend_name(handle).map { String(cString: $0) } ?? ""
        self.version = keel_backend_version(handle).map { String(cString: $0) } ?? ""
        self.abiVersion = ABIVersion(
            major: Int(keel_backend_abi_major(handle)), minor: Int(keel_backend_abi_minor(handle)))
    }

    /// Loads a plugin backend from the shared library at `path`.
    ///
    /// Throws ``KeelError/Code/plugin`` when the library cannot be loaded or
    /// does not export the entry point, ``KeelError/Code/version`` when it was
    /// built for an incompatible ABI.
    public convenience init(pluginAt path: String) throws(KeelError) {
        var out: OpaquePointer?
        try keelCall { keel_backend_open(path, &out, $0) }
        guard let handle = out else {
            throw KeelError(code: .internal, message: "keel_backend_open succeeded without a backend")
        }
        self.init(handle: handle, owned: true)
    }

    deinit {
        if owned { keel_backend_free(handle) }
    }

    /// A plugin ABI version.
    public struct ABIVersion: Sendable, Equatable, Comparable, CustomStringConvertible {
        public let major: Int
        public let minor: Int
        public init(major: Int, minor: Int) {
            self.major = major
            self.minor = minor
        }
        public static func < (a: ABIVersion, b: ABIVersion) -> Bool {
            (a.major, a.minor) < (b.major, b.minor)
        }
        public var description: String { "\(major).\(minor)" }
    }

    /// The backend's short identifier, e.g. `"onnx-openblas"` or `"keel-linear"`.
    public let name: String
    /// The backend's own version string.
    public let version: String
    /// The plugin ABI version the backend was built with.
    public let abiVersion: ABIVersion

    /// Whether this is the built-in backend.
    public var isBuiltin: Bool { !owned }

    /// The ABI version this host implements.
    public static var hostABIVersion: ABIVersion {
        ABIVersion(major: Int(KEEL_BACKEND_ABI_MAJOR), minor: Int(KEEL_BACKEND_ABI_MINOR))
    }
}

/// Process-wide OpenBLAS settings.
public enum Blas {
    /// Sets how many threads OpenBLAS may use for one matrix product
    /// (process-wide). Call at start-up, not while runs are in flight.
    /// `n < 1` throws ``KeelError/Code/invalidArgument``.
    public static func setThreads(_ n: Int) throws(KeelError) {
        guard let value = Int32(exactly: n) else {
            throw KeelError(code: .invalidArgument, message: "BLAS thread count \(n) is out of range")
        }
        try keelCall { keel_blas_set_threads(value, $0) }
    }

    /// The number of threads OpenBLAS currently uses. Thread-safe.
    public static var threads: Int { Int(keel_blas_threads()) }

    /// The kernel set OpenBLAS uses ("Haswell", "SkylakeX", "Cooperlake", ...).
    public static var coreName: String { String(cString: keel_blas_core_name()) }

    /// Whether this CPU has AVX-512 (OpenBLAS has faster kernels for it).
    public static var cpuHasAVX512: Bool { keel_cpu_has_avx512() != 0 }

    /// A warning when OpenBLAS runs kernels older than the CPU supports, which
    /// makes matrix products 2 to 3 times slower (benchmarks/RESULTS.md), or nil.
    public static var kernelWarning: String? {
        let avx512Kernels = ["skylakex", "cooperlake", "sapphirerapids", "zen4", "zen5"]
        guard cpuHasAVX512, !avx512Kernels.contains(coreName.lowercased()) else { return nil }
        return "OpenBLAS uses its \(coreName) kernels on a CPU with AVX-512 (is OPENBLAS_CORETYPE set?): "
            + "matrix products run 2 to 3 times slower than with the AVX-512 kernels"
    }
}

/// Facts about the linked Keel core.
public enum KeelCore {
    /// The core's version, e.g. `"0.1.0"`.
    public static var version: String {
        keel_version_string().map { String(cString: $0) } ?? "unknown"
    }
}
