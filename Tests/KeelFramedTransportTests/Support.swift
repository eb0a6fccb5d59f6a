import Foundation
import KeelAPI
import KeelFramedTransport
import KeelServing
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The test server's behaviour, by method:
/// - `listModels`: echo the request bytes;
/// - `rebalance`: sleep for the milliseconds in the first 4 payload bytes (big-endian),
///   honouring cancellation, then echo;
/// - `decide`: fail with INVALID_ARGUMENT (as a real handler does for undecodable bytes);
/// - anything else: UNIMPLEMENTED.
/// Counts the requests it started and finished. Thread-safe.
final class TestHandler: RequestHandler {
    let started = Atomic<Int>(0)
    let finished = Atomic<Int>(0)

    static func slowRequest(milliseconds: UInt32, tag: UInt8 = 0) -> [UInt8] {
        withUnsafeBytes(of: milliseconds.bigEndian) { Array($0) } + [tag]
    }

    func handle(_ method: RPCMethod, request: [UInt8], deadline: ContinuousClock.Instant) async -> Result<[UInt8], RPCStatus> {
        self.started.add(1, ordering: .relaxed)
        defer { self.finished.add(1, ordering: .relaxed) }
        switch method {
        case .listModels:
            return .success(request)
        case .rebalance:
            guard request.count >= 4 else { return .failure(RPCStatus(.invalidArgument, "need 4 bytes of delay")) }
            let ms = request[0..<4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            do {
                try await Task.sleep(for: .milliseconds(Int(ms)))
            } catch {
                return .failure(RPCStatus(.deadlineExceeded, "cancelled while sleeping"))
            }
            return .success(request)
        case .decide:
            return .failure(RPCStatus(.invalidArgument, "the payload does not decode as keel.v1.DecideRequest"))
        default:
            return .failure(RPCStatus(.unimplemented, "\(method) is not implemented by the test handler"))
        }
    }
}

/// Starts a server on an ephemeral loopback port, runs `body`, shuts the server down.
func withServer<T>(
    _ handler: TestHandler = TestHandler(),
    configure: (inout FramedServer.Configuration) -> Void = { _ in },
    _ body: (FramedServer, Int) async throws -> T
) async throws -> T {
    var configuration = FramedServer.Configuration(host: "127.0.0.1", port: 0, shutdownGracePeriod: .seconds(3))
    configure(&configuration)
    let server = FramedServer(handler: handler, configuration: configuration)
    let port = try await server.start()
    do {
        let result = try await body(server, port)
        await server.shutdown(gracefully: false)
        return result
    } catch {
        await server.shutdown(gracefully: false)
        throw error
    }
}

struct TimedOut: Error {}

/// Runs `body`, failing with ``TimedOut`` if it takes longer than `limit`.
func withTimeLimit<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else { throw TimedOut() }
        return value
    }
}

/// A frame as read by ``RawConnection``.
struct RawFrame: Sendable {
    var length: UInt32
    var version: UInt8
    var kind: UInt8
    var method: UInt16
    var requestID: UInt64
    var timeoutMicroseconds: UInt32
    var payload: [UInt8]

    var status: RPCStatus? {
        kind == FrameKind.error.rawValue ? FrameCodec.decodeErrorPayload(payload) : nil
    }
}

/// Runs a blocking call on its own thread, so that it cannot starve the cooperative
/// thread pool the server's request handlers run on.
func onOwnThread<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        let thread = Thread { continuation.resume(returning: work()) }
        thread.start()
    }
}

/// A blocking POSIX TCP connection with a receive timeout, for writing arbitrary bytes.
/// Reads run on their own thread (``onOwnThread(_:)``). Not thread-safe: use from one
/// task at a time.
final class RawConnection: @unchecked Sendable {
    private let fd: Int32

    init(port: Int, receiveTimeout: Duration = .seconds(3)) throws {
        #if canImport(Glibc)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
        let fd = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else { throw POSIXError(.EIO) }
        self.fd = fd
        var tv = timeval(tv_sec: Int(receiveTimeout.components.seconds), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else {
            close(fd)
            throw POSIXError(.ECONNREFUSED)
        }
    }

    deinit { close(self.fd) }

    func write(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { send(self.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            offset += n
        }
    }

    /// Exactly `count` bytes, or nil on EOF, error or timeout.
    func read(_ count: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: count)
        var offset = 0
        while offset < count {
            let n = out[offset...].withUnsafeMutableBytes { recv(self.fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return nil }
            offset += n
        }
        return out
    }

    func readFrame() async -> RawFrame? {
        await onOwnThread { self.readFrameBlocking() }
    }

    /// True when the peer closed the connection (EOF) within the receive timeout.
    func sawEOF() async -> Bool {
        await onOwnThread { self.sawEOFBlocking() }
    }

    private func readFrameBlocking() -> RawFrame? {
        guard let head = self.read(20) else { return nil }
        var buffer = ByteBuffer(bytes: head)
        guard let (length, version, kind, method, requestID, timeout) =
            buffer.readMultipleIntegers(as: (UInt32, UInt8, UInt8, UInt16, UInt64, UInt32).self),
            length >= 16
        else { return nil }
        let payload = length == 16 ? [] : self.read(Int(length) - 16)
        guard let payload else { return nil }
        return RawFrame(length: length, version: version, kind: kind, method: method, requestID: requestID, timeoutMicroseconds: timeout, payload: payload)
    }

    private func sawEOFBlocking() -> Bool {
        var byte: UInt8 = 0
        let n = recv(self.fd, &byte, 1, 0)
        return n == 0 || (n < 0 && errno == ECONNRESET)
    }
}

/// Encodes a frame with arbitrary header fields.
func rawFrame(
    length: UInt32? = nil, version: UInt8 = 1, kind: UInt8 = 1, method: UInt16, requestID: UInt64,
    timeoutMicroseconds: UInt32 = 0, payload: [UInt8] = []
) -> [UInt8] {
    var buffer = ByteBuffer()
    buffer.writeMultipleIntegers(length ?? UInt32(16 + payload.count), version, kind, method, requestID, timeoutMicroseconds)
    buffer.writeBytes(payload)
    return Array(buffer.readableBytesView)
}
