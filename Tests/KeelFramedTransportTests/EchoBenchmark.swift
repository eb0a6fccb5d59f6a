import Foundation
import KeelFramedTransport
import KeelServing
import Testing

/// Round-trip latency of the framed transport with an echo handler and a payload the
/// size of a 100-asset Rebalance request (100 instrument ids + 1200 float features).
/// Not a test: runs only when KEEL_FRAMED_BENCH is set, best in release
/// (`swift build -c release --build-tests`), and prints percentiles.
@Suite("Framed transport: echo round-trip benchmark")
struct EchoBenchmark {
    struct Echo: RequestHandler {
        func handle(_ method: RPCMethod, request: [UInt8], deadline: ContinuousClock.Instant) async -> Result<[UInt8], RPCStatus> {
            .success(request)
        }
    }

    static var enabled: Bool { ProcessInfo.processInfo.environment["KEEL_FRAMED_BENCH"] != nil }

    static func percentiles(_ samples: [Duration]) -> String {
        let sorted = samples.sorted()
        func p(_ q: Double) -> String {
            let d = sorted[min(sorted.count - 1, Int(Double(sorted.count) * q))]
            return String(format: "%.1f", Double(d.components.attoseconds) / 1e12 + Double(d.components.seconds) * 1e6)
        }
        return "n=\(sorted.count) p50=\(p(0.5)) p90=\(p(0.9)) p99=\(p(0.99)) p99.9=\(p(0.999)) us"
    }

    /// About 6 KB, like a serialized RebalanceRequest of 100 instruments with 12 features each.
    static let payload: [UInt8] = (0..<(100 * 12 * 4 + 100 * 10)).map { UInt8(truncatingIfNeeded: $0 &* 31) }

    @Test("sequential and 5,000 req/s open-loop echo round trips", .enabled(if: EchoBenchmark.enabled))
    func echo() async throws {
        let server = FramedServer(handler: Echo(), configuration: .init(host: "127.0.0.1", port: 0))
        let port = try await server.start()
        let client = try await FramedClient.connect(host: "127.0.0.1", port: port)
        let clock = ContinuousClock()
        let payload = Self.payload

        for _ in 0..<2000 { _ = try await client.call(.rebalance, request: payload, timeout: .seconds(1)) }
        var sequential: [Duration] = []
        sequential.reserveCapacity(20000)
        for _ in 0..<20000 {
            let start = clock.now
            _ = try await client.call(.rebalance, request: payload, timeout: .seconds(1))
            sequential.append(clock.now - start)
        }
        print("framed echo, sequential, \(payload.count)-byte payload: \(Self.percentiles(sequential))")
        sequential.removeAll(keepingCapacity: true)
        for _ in 0..<20000 {
            let start = clock.now
            _ = try await client.call(.listModels, request: [], timeout: .seconds(1))
            sequential.append(clock.now - start)
        }
        print("framed echo, sequential, empty payload: \(Self.percentiles(sequential))")

        // Open loop: one call every 200 µs for 2 s, each in its own task.
        let rate = 5000
        let total = rate * 2
        let interval = Duration.nanoseconds(1_000_000_000 / rate)
        let begin = clock.now
        let openLoop = try await withThrowingTaskGroup(of: Duration.self) { group in
            for i in 0..<total {
                let due = begin + interval * i
                if due > clock.now { try await Task.sleep(until: due, clock: clock) }
                group.addTask {
                    let start = clock.now
                    _ = try await client.call(.rebalance, request: payload, timeout: .seconds(1))
                    return clock.now - start
                }
            }
            var samples: [Duration] = []
            for try await d in group { samples.append(d) }
            return samples
        }
        let elapsed = clock.now - begin
        let achieved = Double(total) / (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
        print("framed echo, open loop \(rate) req/s (achieved ~\(Int(achieved))): \(Self.percentiles(openLoop))")
        await client.close()
        await server.shutdown()
    }
}
