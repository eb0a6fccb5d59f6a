// swift-tools-version: 6.1
// Keel: low-latency AI portfolio rebalancing engine.
//
// Layers point one way (docs/ARCHITECTURE.md):
//   CKeelABI (C plugin ABI) <- CKeelCore (C11 inference core on OpenBLAS + protobuf-c)
//   <- KeelInference (the only Swift module that imports C)
//   KeelPortfolio (pure domain: features, risk, constraints, orders, approvals)
//   KeelAudit (hash-chained audit log in SQLite through GRDB)
//   KeelResearch (backtester, stress, reports, training, tax alpha; KeelPortfolio + KeelInference)
//   <- KeelServing (model repository, handlers; no NIO/gRPC; messages from KeelAPI)
//   <- KeelFramedTransport (SwiftNIO), KeelServer (gRPC + composition), KeelClient
//   <- KeelCLI (`keel`).
import PackageDescription

let package = Package(
    name: "Keel",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "keel", targets: ["KeelCLI"]),
        .executable(name: "keel-engine-bench", targets: ["KeelEngineBench"]),
        .library(name: "KeelInference", targets: ["KeelInference"]),
        // Example plugin backend (linear models from their own file format),
        // loaded at run time with dlopen through the plugin ABI.
        .library(name: "KeelLinearBackend", type: .dynamic, targets: ["KeelLinearBackend"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
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
        // Generated protobuf messages of the Keel API (scripts/gen-proto-swift.sh).
        .target(
            name: "KeelAPI",
            dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf")]
        ),
        // Generated gRPC service stubs; only transports and clients import them.
        .target(
            name: "KeelGRPC",
            dependencies: [
                "KeelAPI",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
            ]
        ),
        // The portfolio domain: feature set, risk, policy tilts, compliance
        // guardrails, orders, explanations, approvals. Pure Swift: no NIO, no
        // gRPC, no protobuf, no C. The policy network reaches it through the
        // PolicyScorer protocol.
        .target(
            name: "KeelPortfolio"
        ),
        // The audit trail: an append-only, hash-chained log in SQLite (GRDB, WAL)
        // with group commit, verification and export. No NIO, no gRPC. SHA-256
        // from swift-crypto (BoringSSL, with the CPU's SHA extensions).
        .target(
            name: "KeelAudit",
            dependencies: [
                "KeelAPI",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "GRDBSQLite", package: "GRDB.swift"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        // The research loop: market data files, the backtester (static rules
        // and the policy through the serving engine), metrics, stress
        // scenarios, reports and charts, and walk-forward training of the
        // policy with evolution strategies on the C core.
        .target(
            name: "KeelResearch",
            dependencies: [
                "KeelPortfolio",
                "KeelInference",
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // Transport-independent serving: model repository with hot swap, request
        // handlers, admission control and deadlines. No NIO, no gRPC.
        .target(
            name: "KeelServing",
            dependencies: [
                "KeelInference",
                "KeelPortfolio",
                "KeelAudit",
                "KeelAPI",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        // The framed TCP protocol (docs/PROTOCOL.md) on SwiftNIO: server and client.
        .target(
            name: "KeelFramedTransport",
            dependencies: [
                "KeelServing",
                "KeelAPI",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The server: gRPC transport (grpc-swift-2 on NIO), the framed transport,
        // metrics over HTTP, model polling, graceful shutdown.
        .target(
            name: "KeelServer",
            dependencies: [
                "KeelAPI",
                "KeelServing",
                "KeelAudit",
                "KeelPortfolio",
                "KeelGRPC",
                "KeelFramedTransport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        // Clients for both transports and the load generator behind `keel bench`.
        .target(
            name: "KeelClient",
            dependencies: [
                "KeelAPI",
                "KeelGRPC",
                "KeelServing",
                "KeelPortfolio",
                "KeelFramedTransport",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        .executableTarget(
            name: "KeelCLI",
            dependencies: [
                "KeelAPI",
                "KeelInference",
                "KeelServing",
                "KeelAudit",
                "KeelServer",
                "KeelClient",
                "KeelResearch",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // benchmarks/: the engine alone (docs in benchmarks/RESULTS.md).
        .executableTarget(
            name: "KeelEngineBench",
            dependencies: [
                "KeelInference", "KeelPortfolio", "KeelServing", "KeelClient", "KeelAPI", "KeelAudit",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            path: "benchmarks/EngineBench"
        ),
        // Test support shared by the Swift test targets (an ONNX model writer).
        .target(
            name: "KeelTestSupport",
            path: "Tests/KeelTestSupport"
        ),
        .testTarget(
            name: "KeelAPITests",
            dependencies: ["KeelAPI", .product(name: "SwiftProtobuf", package: "swift-protobuf")]
        ),
        .testTarget(
            name: "KeelInferenceTests",
            dependencies: ["KeelInference", "KeelTestSupport"]
        ),
        .testTarget(
            name: "KeelPortfolioTests",
            dependencies: ["KeelPortfolio"]
        ),
        .testTarget(
            name: "KeelResearchTests",
            dependencies: ["KeelResearch", "KeelPortfolio", "KeelInference", "KeelTestSupport"]
        ),
        .testTarget(
            name: "KeelAuditTests",
            dependencies: [
                "KeelAudit", "KeelAPI",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        .testTarget(
            name: "KeelCLITests",
            dependencies: ["KeelInference", "KeelTestSupport"]
        ),
        .testTarget(
            name: "KeelServingTests",
            dependencies: [
                "KeelServing", "KeelAPI", "KeelInference", "KeelTestSupport", "KeelPortfolio", "KeelAudit",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        .testTarget(
            name: "KeelFramedTransportTests",
            dependencies: ["KeelFramedTransport", "KeelServing", "KeelAPI"]
        ),
        .testTarget(
            name: "KeelServerTests",
            dependencies: [
                "KeelServer", "KeelServing", "KeelClient", "KeelAPI", "KeelAudit", "KeelPortfolio",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
            ]
        ),
        .testTarget(
            name: "KeelClientTests",
            dependencies: [
                "KeelClient", "KeelServing", "KeelAPI", "KeelFramedTransport",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
