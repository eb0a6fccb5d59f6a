import Synchronization

/// Fresh decision ids: RFC 4122 version-4-format UUID strings without a
/// system call or Foundation on the request path.
///
/// The 128 bits come from two SplitMix64 outputs of a counter that starts at
/// a random seed (from the system generator, once per process): SplitMix64's
/// finalizer is a bijection, so ids never repeat within a process (2^64
/// counter values), and the random seed makes collisions across processes as
/// unlikely as for random UUIDs. They are unique, not secret.
///
/// Thread safety: lock-free (one atomic add per id).
enum DecisionID {
    private static let counter: Atomic<UInt64> = {
        var generator = SystemRandomNumberGenerator()
        return Atomic(generator.next())
    }()
    private static let key: UInt64 = {
        var generator = SystemRandomNumberGenerator()
        return generator.next() | 1
    }()

    private static func mix(_ value: UInt64) -> UInt64 {
        var z = value &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    static func make() -> String {
        let n = counter.wrappingAdd(1, ordering: .relaxed).newValue
        var high = mix(n)
        var low = mix(n ^ key)
        high = (high & ~0xF000) | 0x4000                                    // version 4
        low = (low & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000        // RFC 4122 variant
        return format(high, low)
    }

    static func format(_ high: UInt64, _ low: UInt64) -> String {
        let digits: StaticString = "0123456789abcdef"
        return String(unsafeUninitializedCapacity: 36) { buffer in
            digits.withUTF8Buffer { hex in
                var position = 0
                func put(_ word: UInt64, _ nibbles: Int, from start: Int) {
                    for i in 0..<nibbles {
                        let shift = UInt64((start - i) * 4)
                        buffer[position] = hex[Int((word >> shift) & 0xF)]
                        position += 1
                    }
                }
                // 8-4-4-4-12 hex digits: high = 16 nibbles, low = 16 nibbles.
                put(high, 8, from: 15); buffer[position] = 0x2D; position += 1
                put(high, 4, from: 7); buffer[position] = 0x2D; position += 1
                put(high, 4, from: 3); buffer[position] = 0x2D; position += 1
                put(low, 4, from: 15); buffer[position] = 0x2D; position += 1
                put(low, 12, from: 11)
            }
            return 36
        }
    }
}
