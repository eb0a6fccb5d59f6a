// swift-tools-version: 6.1
// Keel: low-latency AI portfolio rebalancing engine.
//
// Layers point one way (docs/ARCHITECTURE.md):
//   CKeelABI (C plugin ABI) <- CKeelCore (C11 inference core on OpenBLAS + protobuf-c)
//   <- KeelInference (the only Swift module that imports C) <- KeelCLI (`keel`).
import PackageDescription

let package = Package(
    name: "Keel",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "keel", targets: ["KeelCLI"]),
        .library(name: "KeelInference", targets: ["KeelInference"]),
        // Example plugin backend (linear models from their own file format),
        // loaded at run time with dlopen through the plugin ABI.
        .library(name: "KeelLinearBackend", type: .dynamic, targets: ["KeelLinearBackend"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        .target(
            name: "CKeelABI",
            path: "Sources/CKeelABI"
        ),
        .target(
            name: "CKeelCore",
            dependencies: ["CKeelABI"],
            path: "Sources/CKeelCore",
            cSettings: [
                .define("_GNU_SOURCE"),
                .headerSearchPath("Generated"),
            ],
            linkerSettings: [
                .linkedLibrary("openblas"),
                .linkedLibrary("protobuf-c"),
                .linkedLibrary("m"),
                .linkedLibrary("dl"),
            ]
        ),
        .target(
            name: "KeelLinearBackend",
            dependencies: ["CKeelABI"],
            path: "Sources/KeelLinearBackend"
        ),
        .target(
            name: "KeelInference",
            dependencies: ["CKeelCore"]
        ),
        .executableTarget(
            name: "KeelCLI",
            dependencies: [
                "KeelInference",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(
            name: "KeelInferenceTests",
            dependencies: ["KeelInference"]
        ),
        .testTarget(
            name: "KeelCLITests",
            dependencies: ["KeelInference"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
