import Foundation
import KeelAPI
import KeelPortfolio
import KeelServing
import SwiftProtobuf

/// Deterministic, realistic requests for `keel bench` and tests.
///
/// The same seed and sizes always give the same bytes.
public enum BenchRequests {
    /// A serialized request of `method` sized by `assets`: a full Rebalance
    /// request (with `historyDays` daily prices per instrument inside it; 0
    /// leaves the history to the server's market state), a PriceUpdateBatch
    /// of `assets` updates for PublishMarketData, a HealthCheckRequest for
    /// Check, and the method's empty request otherwise.
    public static func serialized(
        _ method: RPCMethod, assets: Int, historyDays: Int = 0, seed: UInt64 = 42
    ) throws(RPCStatus) -> [UInt8] {
        do {
            switch method {
            case .rebalance:
                return try rebalance(assets: assets, historyDays: historyDays, seed: seed).serializedBytes()
            case .publishMarketData:
                return try priceUpdates(assets: assets, seed: seed).serializedBytes()
            case .healthCheck:
                return try Grpc_Health_V1_HealthCheckRequest().serializedBytes()
            case .listModels:
                return try Keel_V1_ListModelsRequest().serializedBytes()
            default:
                return []
            }
        } catch let status as RPCStatus {
            throw status
        } catch {
            throw RPCStatus(.internal, "cannot serialize the \(method.name) request: \(error)")
        }
    }

    static let sectors = [
        "Information Technology", "Health Care", "Financials", "Consumer Discretionary", "Communication Services",
        "Industrials", "Consumer Staples", "Energy", "Utilities", "Real Estate", "Materials",
    ]

    static func instrumentID(_ i: Int) -> String {
        var digits = String(i + 1)
        while digits.count < 5 { digits = "0" + digits }
        return "KEEL" + digits
    }

    /// A Rebalance request for `assets` instruments (at least 1): prices,
    /// sectors, asset classes, ESG scores (about one in ten unrated), lot sizes,
    /// spreads and volumes; a portfolio holding about 60 % of them in tax
    /// lots; a MiFID II risk profile; a mandate with strategic weights, caps
    /// and costs; and, when `historyDays` > 0, that many daily prices per
    /// instrument (``priceHistory(for:days:)``).
    public static func rebalance(assets: Int, historyDays: Int = 0, seed: UInt64 = 42)
        -> Keel_V1_RebalanceRequest
    {
        let n = max(1, assets)
        var rng = SplitMix64(seed: seed)
        var request = Keel_V1_RebalanceRequest()
        request.requestID = "bench-\(seed)-\(n)"
        request.model = "policy"
        request.asOfUnixNanos = 1_795_000_000_000_000_000

        var instruments: [Keel_V1_Instrument] = []
        instruments.reserveCapacity(n)
        var holdings: [Keel_V1_Holding] = []
        var strategic: [Keel_V1_Weight] = []
        var rawWeights: [Double] = []
        var marketValue = 0.0
        for i in 0..<n {
            var inst = Keel_V1_Instrument()
            inst.id = instrumentID(i)
            let classRoll = rng.unit()
            let assetClass: Keel_V1_AssetClass =
                classRoll < 0.60 ? .equity : classRoll < 0.85 ? .fixedIncome : classRoll < 0.90 ? .realEstate
                : classRoll < 0.94 ? .commodity : classRoll < 0.97 ? .alternative : .cashEquivalent
            inst.assetClass = assetClass
            inst.sector = sectors[Int(rng.next() % UInt64(sectors.count))]
            inst.price = (10 + rng.unit() * 490).roundedTo(cents: true)
            if rng.unit() >= 0.1 { inst.esgScore = (rng.unit() * 100).roundedTo(cents: true) }
            inst.lotSize = assetClass == .fixedIncome ? 10 : 1
            inst.requiredKnowledge =
                assetClass == .alternative || assetClass == .commodity ? .advanced
                : assetClass == .equity ? .basic : .informed
            inst.halfSpreadBps = 1 + (rng.unit() * 19).roundedTo(cents: true)
            inst.averageDailyVolume = (1e5 + rng.unit() * 1e7).rounded()
            if i % 7 == 0, n > 1 { inst.replacementForTax = instrumentID((i + 1) % n) }
            instruments.append(inst)

            rawWeights.append(0.5 + rng.unit())
        }
        let weightSum = rawWeights.reduce(0, +)
        for (i, w) in rawWeights.enumerated() {
            strategic.append(.with {
                $0.id = instruments[i].id
                $0.weight = (w / weightSum * 0.98 * 1e6).rounded() / 1e6
            })
        }
        // Held: about 60 % of the instruments (none below the mandate's ESG
        // floor), each within ±40 % of its strategic weight of a portfolio
        // worth 10,000 per instrument, in 1 to 3 tax lots.
        let value = 10_000 * Double(n)
        for (i, inst) in instruments.enumerated() {
            guard rng.unit() < 0.6, inst.hasEsgScore, inst.esgScore >= 20 else { continue }
            let units = strategic[i].weight * value * (0.6 + 0.8 * rng.unit()) / inst.price
            let totalLots = max(1, Int(units / inst.lotSize))
            let lots = min(totalLots, 1 + Int(rng.next() % 3))
            var holding = Keel_V1_Holding()
            holding.instrumentID = inst.id
            var total = 0.0
            for l in 0..<lots {
                var lot = Keel_V1_TaxLot()
                lot.lotID = "\(inst.id)-L\(l + 1)"
                let share = l == lots - 1 ? totalLots - (totalLots / lots) * (lots - 1) : totalLots / lots
                lot.quantity = Double(share) * inst.lotSize
                let year = 2019 + Int(rng.next() % 7)
                let month = 1 + Int(rng.next() % 12)
                let day = 1 + Int(rng.next() % 28)
                lot.acquiredOn = "\(year)-\(month < 10 ? "0" : "")\(month)-\(day < 10 ? "0" : "")\(day)"
                lot.costPerShare = (inst.price * (0.7 + rng.unit() * 0.6)).roundedTo(cents: true)
                total += lot.quantity
                holding.lots.append(lot)
            }
            holding.quantity = total
            marketValue += total * inst.price
            holdings.append(holding)
        }

        var portfolio = Keel_V1_Portfolio()
        portfolio.accountID = "ACC-\(seed)"
        portfolio.householdID = "HH-\(seed)"
        portfolio.holdings = holdings
        portfolio.cash = max(value - marketValue, value * 0.03).roundedTo(cents: true)
        portfolio.baseCurrency = "EUR"
        portfolio.firstRebalance = false

        var profile = Keel_V1_RiskProfile()
        profile.riskTolerance = 4
        profile.capacityForLoss = .limited
        profile.horizonYears = 10
        profile.knowledge = .informed
        profile.objectives = [.balanced, .growth]

        var mandate = Keel_V1_Mandate()
        mandate.strategicWeights = strategic
        mandate.maxInstrumentWeight = min(1, max(0.10, 2.0 / Double(n)))
        mandate.sectorCaps = sectors.map { sector in .with { $0.id = sector; $0.weight = 0.35 } }
        mandate.assetClassCaps = [
            ("ASSET_CLASS_EQUITY", 0.75), ("ASSET_CLASS_FIXED_INCOME", 0.6), ("ASSET_CLASS_COMMODITY", 0.1),
            ("ASSET_CLASS_ALTERNATIVE", 0.1), ("ASSET_CLASS_REAL_ESTATE", 0.15),
        ].map { name, cap in .with { $0.id = name; $0.weight = cap } }
        mandate.esgFloor = 20
        mandate.minCashWeight = 0.01
        mandate.maxTurnover = 0.3
        mandate.minTradeNotional = 100
        mandate.commissionBps = 2
        mandate.commissionMin = 1

        request.portfolio = portfolio
        request.instruments = instruments
        request.riskProfile = profile
        request.mandate = mandate
        if historyDays > 0 {
            let history = priceHistory(for: request, days: historyDays, seed: seed)
            var byID: [String: [Keel_V1_PricePoint]] = [:]
            for update in history.updates {
                byID[update.instrumentID, default: []].append(.with {
                    $0.price = update.price
                    $0.timeUnixNanos = update.timeUnixNanos
                })
            }
            for i in request.instruments.indices {
                request.instruments[i].priceHistory = byID[request.instruments[i].id] ?? []
            }
        }
        return request
    }

    /// Rewrites `request`'s mandate and risk profile into mandate `variant`
    /// (1, 2, ...) of a family where caps bind: sector caps 12 % to 35 %,
    /// asset-class caps scaled by 0.5 to 1, risk tolerance 1 to 7, turnover
    /// caps 2 % to 100 %, minimum cash 0 to 20 %, the first fifth of the
    /// instruments excluded in every third variant and basic knowledge in
    /// every fourth. The instruments, holdings and prices are left as they
    /// are, so every variant matches one published price history. The
    /// generated request's own mandate (sector caps 35 %, turnover 30 %)
    /// mostly leaves its caps slack.
    public static func varyMandate(_ request: inout Keel_V1_RebalanceRequest, variant: Int) {
        let v = max(0, variant)
        let sectorCap = [0.35, 0.25, 0.2, 0.15, 0.12][v % 5], classScale = [1.0, 0.8, 0.6, 0.5][v / 5 % 4]
        for i in request.mandate.sectorCaps.indices { request.mandate.sectorCaps[i].weight = sectorCap }
        for i in request.mandate.assetClassCaps.indices { request.mandate.assetClassCaps[i].weight *= classScale }
        request.riskProfile.riskTolerance = Int32(1 + v % 7)
        request.mandate.maxTurnover = [0.02, 0.05, 0.1, 0.3, 1.0][v / 3 % 5]
        request.mandate.minCashWeight = [0.0, 0.01, 0.05, 0.2][v / 7 % 4]
        if v % 3 == 0 {
            request.mandate.excludedInstruments = request.instruments.prefix(request.instruments.count / 5).map(\.id)
        }
        if v % 4 == 0 { request.riskProfile.knowledge = .basic }
    }

    static let nanosPerDay: Int64 = 86_400 * 1_000_000_000

    /// Daily prices for every instrument of `request`: a geometric random
    /// walk (annualised volatility 10 % to 40 % per instrument) of `days`
    /// closes ending at the instrument's price on the request's as-of day,
    /// oldest first, as one PublishMarketData batch.
    public static func priceHistory(for request: Keel_V1_RebalanceRequest, days: Int, seed: UInt64 = 42)
        -> Keel_V1_PriceUpdateBatch
    {
        var rng = SplitMix64(seed: seed ^ 0x5EED_0F_D1CE)
        var batch = Keel_V1_PriceUpdateBatch()
        let count = max(1, days)
        let end = request.asOfUnixNanos > 0 ? request.asOfUnixNanos : 1_795_000_000_000_000_000
        batch.updates.reserveCapacity(count * request.instruments.count)
        for instrument in request.instruments {
            let daily = (0.10 + rng.unit() * 0.30) / 252.0.squareRoot()
            var prices = [Double](repeating: instrument.price, count: count)
            for k in stride(from: count - 2, through: 0, by: -1) {
                // Box-Muller normal step, walking backwards from today's price.
                let u1 = max(rng.unit(), 1e-12), u2 = rng.unit()
                let z = (-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2)
                prices[k] = (prices[k + 1] / Foundation.exp(daily * z) * 100).rounded() / 100
            }
            for k in 0..<count {
                batch.updates.append(.with {
                    $0.instrumentID = instrument.id
                    $0.price = max(0.01, prices[k])
                    $0.timeUnixNanos = end - Int64(count - 1 - k) * nanosPerDay
                })
            }
        }
        return batch
    }

    /// A batch of `assets` price updates, one per instrument.
    public static func priceUpdates(assets: Int, seed: UInt64 = 42) -> Keel_V1_PriceUpdateBatch {
        var rng = SplitMix64(seed: seed)
        var batch = Keel_V1_PriceUpdateBatch()
        for i in 0..<max(1, assets) {
            var update = Keel_V1_PriceUpdate()
            update.instrumentID = instrumentID(i)
            update.price = (10 + rng.unit() * 490).roundedTo(cents: true)
            update.timeUnixNanos = 1_795_000_000_000_000_000 + Int64(i)
            batch.updates.append(update)
        }
        return batch
    }
}

extension Double {
    fileprivate func roundedTo(cents: Bool) -> Double { (self * 100).rounded() / 100 }
}
