import Crypto

/// SHA-256 for the audit trail (swift-crypto: BoringSSL, which uses the
/// CPU's SHA extensions where it has them).
///
/// Thread safety: pure functions; call from any thread.
public enum AuditDigest {
    /// SHA-256 of `bytes` as 64 lowercase hexadecimal characters.
    public static func sha256Hex(_ bytes: some Collection<UInt8>) -> String {
        var hasher = SHA256()
        update(&hasher, bytes)
        return hex(hasher.finalize())
    }

    static func update(_ hasher: inout SHA256, _ bytes: some Collection<UInt8>) {
        let done: Void? = bytes.withContiguousStorageIfAvailable { hasher.update(bufferPointer: UnsafeRawBufferPointer($0)) }
        if done == nil { hasher.update(data: Array(bytes)) }
    }

    static func hex(_ digest: SHA256.Digest) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var text = [UInt8]()
        text.reserveCapacity(64)
        for byte in digest {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0xF)])
        }
        return String(decoding: text, as: UTF8.self)
    }
}
