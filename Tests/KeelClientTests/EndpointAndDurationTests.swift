import KeelClient
import Testing

@Suite("Endpoint parsing")
struct EndpointTests {
    @Test(arguments: [
        ("grpc://127.0.0.1:50051", Endpoint.Transport.grpc, "127.0.0.1", 50051),
        ("tcp://localhost:50052", .tcp, "localhost", 50052),
        ("TCP://[::1]:9", .tcp, "::1", 9),
        ("grpc://keel.internal:65535", .grpc, "keel.internal", 65535),
        ("tcp://10.0.0.1:1", .tcp, "10.0.0.1", 1),
    ])
    func valid(_ text: String, _ transport: Endpoint.Transport, _ host: String, _ port: Int) throws {
        let endpoint = try Endpoint(parsing: text)
        #expect(endpoint.transport == transport)
        #expect(endpoint.host == host)
        #expect(endpoint.port == port)
        // The description parses back to the same endpoint.
        #expect(try Endpoint(parsing: endpoint.description) == endpoint)
    }

    @Test(arguments: [
        "127.0.0.1:50051", "http://127.0.0.1:80", "grpc://127.0.0.1", "grpc://:50051", "tcp://host:0",
        "tcp://host:65536", "tcp://host:port", "tcp://[::1", "tcp://[::1]50052", "", "tcp://host:-1",
        "grpc://host:",
    ])
    func invalid(_ text: String) {
        #expect(throws: EndpointError.self) { try Endpoint(parsing: text) }
    }

    @Test func errorNamesTheText() {
        do {
            _ = try Endpoint(parsing: "http://x:1")
            Issue.record("expected an error")
        } catch {
            #expect(error.description.contains("http://x:1"))
            #expect(error.description.contains("grpc or tcp"))
        }
    }
}

@Suite("Duration text")
struct DurationTextTests {
    @Test(arguments: [
        ("500us", Duration.microseconds(500)),
        ("500µs", .microseconds(500)),
        ("2ms", .milliseconds(2)),
        ("1s", .seconds(1)),
        ("30s", .seconds(30)),
        ("1.5s", .milliseconds(1500)),
        ("250ns", .nanoseconds(250)),
        ("2m", .seconds(120)),
        ("1h", .seconds(3600)),
        (" 10ms ", .milliseconds(10)),
        ("0s", .zero),
        ("0.25ms", .microseconds(250)),
    ])
    func parses(_ text: String, _ expected: Duration) throws {
        #expect(try DurationText.parse(text) == expected)
    }

    @Test(arguments: ["", "10", "ms", "-1s", "1.2.3s", "5 parsecs", "1e3s", "fast", "1sx", ".s", "nan s"])
    func rejects(_ text: String) {
        #expect(throws: DurationParseError.self) { try DurationText.parse(text) }
    }

    @Test func missingUnitIsExplained() {
        do {
            _ = try DurationText.parse("10")
            Issue.record("expected an error")
        } catch {
            #expect(error.description.contains("unit"))
        }
    }

    @Test(arguments: [
        (Duration.nanoseconds(850), "850ns"),
        (.microseconds(12), "12us"),
        (.nanoseconds(12_340), "12.3us"),
        (.nanoseconds(4_560_000), "4.56ms"),
        (.milliseconds(1230), "1.23s"),
        (.seconds(1), "1s"),
    ])
    func formats(_ duration: Duration, _ text: String) {
        #expect(DurationText.format(duration) == text)
    }
}
