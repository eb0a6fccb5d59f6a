import Foundation
import KeelAPI
import Synchronization

/// The latest price of every instrument, fed by PublishMarketData.
///
/// Thread safety: all methods may be called from any task; each takes one
/// short lock (validation happens before it).
public final class MarketState: Sendable {
    /// One instrument's latest price.
    public struct Quote: Sendable, Equatable {
        public let price: Double
        public let timeUnixNanos: Int64

        public init(price: Double, timeUnixNanos: Int64) {
            self.price = price
            self.timeUnixNanos = timeUnixNanos
        }
    }

    /// Instruments tracked at most; updates for further new ids are rejected.
    public let maxInstruments: Int
    /// How many rejection reasons a response carries at most.
    public static let maxReportedErrors = 5

    private let quotes = Mutex<[String: Quote]>([:])

    public init(maxInstruments: Int = 1_000_000) {
        self.maxInstruments = max(1, maxInstruments)
    }

    /// Validates and applies a batch: an update needs a non-empty
    /// `instrument_id` (at most 256 bytes) and a finite `price` > 0; a
    /// `time_unix_nanos` <= 0 means `now`. For each instrument the newest
    /// price by time is kept (an older update is accepted but does not
    /// overwrite a newer one).
    public func apply(_ updates: [Keel_V1_PriceUpdate], nowUnixNanos: Int64 = MarketState.nowUnixNanos())
        -> Keel_V1_PublishMarketDataResponse
    {
        var response = Keel_V1_PublishMarketDataResponse()
        var valid: [(String, Quote)] = []
        valid.reserveCapacity(updates.count)
        var errors: [String] = []
        func reject(_ reason: String) {
            response.rejected += 1
            if errors.count < Self.maxReportedErrors { errors.append(reason) }
        }
        for (index, update) in updates.enumerated() {
            let id = update.instrumentID
            if id.isEmpty {
                reject("update \(index): instrument_id is empty")
            } else if id.utf8.count > 256 {
                reject("update \(index): instrument_id is longer than 256 bytes")
            } else if !update.price.isFinite || update.price <= 0 {
                reject("update \(index) (\(id)): price \(update.price) is not a finite number > 0")
            } else {
                let time = update.timeUnixNanos > 0 ? update.timeUnixNanos : nowUnixNanos
                valid.append((id, Quote(price: update.price, timeUnixNanos: time)))
            }
        }
        if !valid.isEmpty {
            let overflow = quotes.withLock { q -> [String] in
                var overflow: [String] = []
                for (id, quote) in valid {
                    if let existing = q[id] {
                        if quote.timeUnixNanos >= existing.timeUnixNanos { q[id] = quote }
                    } else if q.count < maxInstruments {
                        q[id] = quote
                    } else {
                        overflow.append(id)
                    }
                }
                return overflow
            }
            response.accepted = Int64(valid.count - overflow.count)
            for id in overflow {
                reject("update for \(id): market state is full (\(maxInstruments) instruments)")
            }
        }
        response.errors = errors
        return response
    }

    /// The latest quote of `instrumentID`, if any.
    public func quote(for instrumentID: String) -> Quote? {
        quotes.withLock { $0[instrumentID] }
    }

    /// Number of instruments with a price.
    public var count: Int { quotes.withLock { $0.count } }

    /// The current wall-clock time in Unix nanoseconds.
    public static func nowUnixNanos() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) &* 1_000_000_000 &+ Int64(now.tv_nsec)
    }
}
