import KeelTestSupport

extension TestPaths {
    /// The linear example plugin built by `swift build --product KeelLinearBackend`.
    static var linearBackend: String? { product("libKeelLinearBackend.so") ?? product("libKeelLinearBackend.dylib") }
    static let linearBackendMissing = "libKeelLinearBackend.so not found next to the test bundle: build it first with "
        + "`swift build --product KeelLinearBackend` (make test-swift does)"
}
