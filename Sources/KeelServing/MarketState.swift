import Foundation
import KeelAPI
import KeelPortfolio
import Synchronization

/// Rolling per-instrument price state, fed by PublishMarketData: for every
/// instrument, its daily price series (the last price of each UTC day, up to
/// ``daysKept`` days, oldest first; today's point moves with every newer
/// update) and its latest quote. Rebalance requests that carry no price or
/// history for an instrument take them from here, so the engine computes
/// the same feature set from streamed data as from request data.
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

    /// Daily observations kept per instrument (a year of trading days plus a margin).
    public static let daysKept = 300
    static let nanosPerDay: Int64 = 86_400 * 1_000_000_000

    /// One instrument's state.
    /// A class, so that reading one under the lock (every Rebalance reads
    /// one per instrument) retains one object instead of copying its arrays.
    final class History {
        var latest: Quote
        /// Last price of each day, oldest first; the last entry is `latest`'s day.
        var closes: [Double]
        var lastDay: Int64
        /// `closes` analysed (returns, statistics), kept until the next update.
        var analysed: FeatureSet.SeriesData?

        init(_ quote: Quote) {
            latest = quote
            closes = [quote.price]
            lastDay = quote.timeUnixNanos / MarketState.nanosPerDay
        }

        /// Applies a newer quote: same day replaces today's point, a later day appends.
        func apply(_ quote: Quote) {
            guard quote.timeUnixNanos >= latest.timeUnixNanos else { return }
            latest = quote
            analysed = nil
            let day = quote.timeUnixNanos / MarketState.nanosPerDay
            if day == lastDay {
                closes[closes.count - 1] = quote.price
            } else {
                closes.append(quote.price)
                lastDay = day
                if closes.count > MarketState.daysKept { closes.removeFirst(closes.count - MarketState.daysKept) }
            }
        }
    }

    private let quotes = Mutex<[String: History]>([:])

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
            } else if !Instrument.isValidPrice(update.price) {
                reject("update \(index) (\(id)): price \(update.price) is not \(Instrument.validPricesText)")
            } else {
                let time = update.timeUnixNanos > 0 ? update.timeUnixNanos : nowUnixNanos
                valid.append((id, Quote(price: update.price, timeUnixNanos: time)))
            }
        }
        if !valid.isEmpty {
            let overflow = quotes.withLock { q -> [String] in
                var overflow: [String] = []
                for (id, quote) in valid {
                    if let history = q[id] {
                        history.apply(quote)
                    } else if q.count < maxInstruments {
                        q[id] = History(quote)
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
        quotes.withLock { $0[instrumentID]?.latest }
    }

    /// An instrument's daily series analysed for the feature set (computed
    /// once per update and shared by every request until the next one), with
    /// its latest quote; nil when the instrument has no price.
    public func analysedSeries(for instrumentID: String)
        -> (series: FeatureSet.SeriesData, latestPrice: Double, latestTime: Int64)?
    {
        quotes.withLock { q in Self.analysed(q, instrumentID) }
    }

    /// ``analysedSeries(for:)`` for several instruments under one lock (a
    /// Rebalance asks for all of its instruments at once); nil entries are
    /// passed over and answered nil.
    public func analysedSeries(for instrumentIDs: [String?])
        -> [(series: FeatureSet.SeriesData, latestPrice: Double, latestTime: Int64)?]
    {
        quotes.withLock { q in instrumentIDs.map { id in id.flatMap { Self.analysed(q, $0) } } }
    }

    /// Reads the cached analysis (one retain of the history, no copy of its
    /// arrays), or computes and keeps it. Call under the lock.
    private static func analysed(_ q: [String: History], _ instrumentID: String)
        -> (series: FeatureSet.SeriesData, latestPrice: Double, latestTime: Int64)?
    {
        guard let history = q[instrumentID] else { return nil }
        let latest = history.latest
        if let cached = history.analysed { return (cached, latest.price, latest.timeUnixNanos) }
        let data = FeatureSet.SeriesData(prices: history.closes)
        history.analysed = data
        return (data, latest.price, latest.timeUnixNanos)
    }

    /// An instrument's daily series (oldest first, today's latest price last)
    /// and its latest quote, if it has any.
    public func window(for instrumentID: String) -> (prices: [Double], latestPrice: Double?, latestTime: Int64?)? {
        quotes.withLock { q in
            q[instrumentID].map { ($0.closes, $0.latest.price, $0.latest.timeUnixNanos) }
        }
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
