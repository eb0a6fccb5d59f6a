/// The portfolio domain's vocabulary: what a rebalance takes and gives.
///
/// Conventions (as in the API, proto/keel/v1/portfolio.proto): money in the
/// account's base currency, quantities in units of the instrument, weights as
/// fractions of total portfolio value (cash plus holdings at current prices),
/// volatilities annualised.

public enum AssetClass: String, Sendable, CaseIterable, Hashable {
    case unspecified, equity, fixedIncome, cashEquivalent, commodity, realEstate, alternative, multiAsset

    /// Annualised volatility assumed for an instrument without enough price
    /// history to estimate its own.
    public var defaultVolatility: Double {
        switch self {
        case .cashEquivalent: 0.005
        case .fixedIncome: 0.06
        case .multiAsset: 0.10
        case .alternative: 0.15
        case .equity, .realEstate, .unspecified: 0.20
        case .commodity: 0.25
        }
    }
}

/// MiFID II knowledge and experience: what a client has, or what an
/// instrument requires (complex products require `.advanced`).
public enum KnowledgeLevel: Int, Sendable, Comparable, CaseIterable {
    case basic = 1, informed = 2, advanced = 3

    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}

public enum CapacityForLoss: Int, Sendable, CaseIterable {
    case unspecified = 0, none, limited, significant, full
}

public enum Objective: Int, Sendable, CaseIterable {
    case unspecified = 0, capitalPreservation, income, balanced, growth, speculation
}

public struct Instrument: Sendable, Equatable {
    /// Prices Keel accepts, in any currency unit: from 1e-8 (a fraction of a
    /// cent, as some tokens trade) to 1e12. Within it every log return, and
    /// every feature computed from a history, stays finite in Float.
    public static let validPrices: ClosedRange<Double> = 1e-8...1e12
    /// How errors name ``validPrices``.
    public static let validPricesText = "a finite number from 1e-8 to 1e12"

    /// Whether `price` is a price Keel accepts (finite and in ``validPrices``).
    @inlinable
    public static func isValidPrice(_ price: Double) -> Bool { validPrices.contains(price) }

    public var id: String
    /// Current price, within ``validPrices``.
    public var price: Double
    public var sector: String
    public var assetClass: AssetClass
    /// 0...100; nil when not rated.
    public var esgScore: Double?
    /// Tradable unit; 0 means 1.
    public var lotSize: Double
    public var requiredKnowledge: KnowledgeLevel
    /// Half the bid-ask spread in basis points; 0 uses the engine default.
    public var halfSpreadBps: Double
    /// Units per day, for the market-impact term; 0 means unknown (no impact term).
    public var averageDailyVolume: Double
    /// Past prices, oldest first, at a regular (daily) spacing. The current
    /// `price` is the newest observation: it is appended when it differs from
    /// the last point.
    public var priceHistory: [Double]
    /// The series already analysed (``FeatureSet/SeriesData``), e.g. kept by
    /// the server's market state; when set, it replaces `priceHistory` and
    /// its last price must equal `price`.
    public var series: FeatureSet.SeriesData?

    public init(id: String, price: Double, sector: String = "", assetClass: AssetClass = .unspecified,
                esgScore: Double? = nil, lotSize: Double = 1, requiredKnowledge: KnowledgeLevel = .basic,
                halfSpreadBps: Double = 0, averageDailyVolume: Double = 0, priceHistory: [Double] = [],
                series: FeatureSet.SeriesData? = nil)
    {
        self.id = id
        self.price = price
        self.sector = sector
        self.assetClass = assetClass
        self.esgScore = esgScore
        self.lotSize = lotSize
        self.requiredKnowledge = requiredKnowledge
        self.halfSpreadBps = halfSpreadBps
        self.averageDailyVolume = averageDailyVolume
        self.priceHistory = priceHistory
        self.series = series
    }

    public static func == (a: Instrument, b: Instrument) -> Bool {
        a.id == b.id && a.price == b.price && a.sector == b.sector && a.assetClass == b.assetClass
            && a.esgScore == b.esgScore && a.lotSize == b.lotSize && a.requiredKnowledge == b.requiredKnowledge
            && a.halfSpreadBps == b.halfSpreadBps && a.averageDailyVolume == b.averageDailyVolume
            && a.priceHistory == b.priceHistory && a.series?.prices == b.series?.prices
    }
}

public struct Holding: Sendable, Equatable {
    public var instrumentID: String
    /// >= 0.
    public var quantity: Double

    public init(instrumentID: String, quantity: Double) {
        self.instrumentID = instrumentID
        self.quantity = quantity
    }
}

public struct Portfolio: Sendable, Equatable {
    public var accountID: String
    public var holdings: [Holding]
    /// >= 0.
    public var cash: Double

    public init(accountID: String, holdings: [Holding], cash: Double) {
        self.accountID = accountID
        self.holdings = holdings
        self.cash = cash
    }
}

/// A client's MiFID II suitability profile.
public struct RiskProfile: Sendable, Equatable {
    /// SRI scale: 1 (lowest) ... 7 (highest).
    public var riskTolerance: Int
    public var capacityForLoss: CapacityForLoss
    /// 0 = not stated.
    public var horizonYears: Int
    public var knowledge: KnowledgeLevel
    public var objectives: [Objective]

    public init(riskTolerance: Int, capacityForLoss: CapacityForLoss = .unspecified, horizonYears: Int = 0,
                knowledge: KnowledgeLevel = .basic, objectives: [Objective] = [])
    {
        self.riskTolerance = riskTolerance
        self.capacityForLoss = capacityForLoss
        self.horizonYears = horizonYears
        self.knowledge = knowledge
        self.objectives = objectives
    }
}

/// The investment mandate: the strategic allocation and its hard limits.
/// A limit of `nil` means "none".
public struct Mandate: Sendable, Equatable {
    /// Instrument id and strategic weight, in the caller's order; with the
    /// strategic cash they sum to at most 1.
    public var strategicWeights: [(id: String, weight: Double)]
    public var maxInstrumentWeight: Double?
    public var sectorCaps: [String: Double]
    public var assetClassCaps: [AssetClass: Double]
    public var excludedInstruments: Set<String>
    /// Instruments rated below it are excluded (held positions sold down);
    /// unrated instruments are not bought while a floor is set. 0 = none.
    public var esgFloor: Double
    public var minCashWeight: Double
    /// Maximum one-way turnover per rebalance: max(buys, sells) / value.
    public var maxTurnover: Double?
    public var minTradeNotional: Double
    public var commissionBps: Double
    public var commissionMin: Double
    /// Trade any quantity instead of whole lots.
    public var allowFractional: Bool
    /// Instruments that may not be bought in this rebalance (a wash-sale
    /// repurchase block after a tax-loss harvest); held positions are kept,
    /// not sold down.
    public var blockedPurchases: Set<String>

    public init(strategicWeights: [(id: String, weight: Double)], maxInstrumentWeight: Double? = nil,
                sectorCaps: [String: Double] = [:], assetClassCaps: [AssetClass: Double] = [:],
                excludedInstruments: Set<String> = [], esgFloor: Double = 0, minCashWeight: Double = 0,
                maxTurnover: Double? = nil, minTradeNotional: Double = 0, commissionBps: Double = 0,
                commissionMin: Double = 0, allowFractional: Bool = false, blockedPurchases: Set<String> = [])
    {
        self.blockedPurchases = blockedPurchases
        self.strategicWeights = strategicWeights
        self.maxInstrumentWeight = maxInstrumentWeight
        self.sectorCaps = sectorCaps
        self.assetClassCaps = assetClassCaps
        self.excludedInstruments = excludedInstruments
        self.esgFloor = esgFloor
        self.minCashWeight = minCashWeight
        self.maxTurnover = maxTurnover
        self.minTradeNotional = minTradeNotional
        self.commissionBps = commissionBps
        self.commissionMin = commissionMin
        self.allowFractional = allowFractional
    }

    public static func == (a: Mandate, b: Mandate) -> Bool {
        a.strategicWeights.map(\.id) == b.strategicWeights.map(\.id)
            && a.strategicWeights.map(\.weight) == b.strategicWeights.map(\.weight)
            && a.maxInstrumentWeight == b.maxInstrumentWeight && a.sectorCaps == b.sectorCaps
            && a.assetClassCaps == b.assetClassCaps && a.excludedInstruments == b.excludedInstruments
            && a.esgFloor == b.esgFloor && a.minCashWeight == b.minCashWeight && a.maxTurnover == b.maxTurnover
            && a.minTradeNotional == b.minTradeNotional && a.commissionBps == b.commissionBps
            && a.commissionMin == b.commissionMin && a.allowFractional == b.allowFractional
            && a.blockedPurchases == b.blockedPurchases
    }
}

/// Everything one rebalance decision is made from.
public struct RebalanceInput: Sendable {
    public var portfolio: Portfolio
    /// Every held or candidate instrument; ids unique.
    public var instruments: [Instrument]
    public var profile: RiskProfile
    public var mandate: Mandate

    public init(portfolio: Portfolio, instruments: [Instrument], profile: RiskProfile, mandate: Mandate) {
        self.portfolio = portfolio
        self.instruments = instruments
        self.profile = profile
        self.mandate = mandate
    }
}

public enum Side: Sendable, Equatable { case buy, sell }

/// Why an order exists (one order usually has several).
public enum ReasonCode: String, Sendable, CaseIterable {
    case drift = "DRIFT"
    case policySignal = "POLICY_SIGNAL"
    case riskLimit = "RISK_LIMIT"
    case suitability = "SUITABILITY"
    case cap = "CAP"
    case esgExclusion = "ESG_EXCLUSION"
    case cashTarget = "CASH_TARGET"
    case tax = "TAX"
    case exclusion = "EXCLUSION"
    case liquidity = "LIQUIDITY"
    case washSaleBlock = "WASH_SALE_BLOCK"
}

/// One feature's part in the policy's score for an asset.
public struct FeatureContribution: Sendable, Equatable {
    public var feature: String
    /// The feature's value for the asset.
    public var value: Double
    /// Score minus the score with this feature replaced by its cross-sectional mean.
    public var contribution: Double
}

public struct Order: Sendable, Equatable {
    public var instrumentID: String
    public var side: Side
    /// Whole lots unless the mandate allows fractions; > 0.
    public var quantity: Double
    public var price: Double
    public var notional: Double { quantity * price }
    /// Commission + half-spread + market impact.
    public var estimatedCost: Double
    public var expectedBenefit: Double
    /// Forced by a hard constraint (cap, exclusion, minimum cash, risk limit): never dropped for cost.
    public var required: Bool
    public var reasons: [ReasonCode]
    public var topFeatures: [FeatureContribution]
    public var explanation: String
    /// Tax lots a sale relieves, in order (see ``TaxLotAssignment``); empty
    /// when the holding carries no lots.
    public var lotIDs: [String] = []
}

/// What the engine decided.
public enum DecisionStatus: Sendable, Equatable {
    /// Orders that satisfy every constraint.
    case executable
    /// Nothing worth trading (or everything already in place).
    case noTrade
    /// The constraints cannot all hold; see `ComplianceReport.conflicts`. No orders.
    case infeasible
}

public struct TargetWeight: Sendable, Equatable {
    public var instrumentID: String
    public var currentWeight: Double
    public var strategicWeight: Double
    /// The weight after the orders (whole lots, at current prices).
    public var targetWeight: Double
    public var policyScore: Double
}

public struct ComplianceCheck: Sendable, Equatable {
    public var rule: String
    public var passed: Bool
    public var detail: String
}

public struct ComplianceReport: Sendable, Equatable {
    public var compliant: Bool { checks.allSatisfy(\.passed) && conflicts.isEmpty }
    public var checks: [ComplianceCheck]
    /// Constraints that cannot hold together, each naming the rules involved.
    public var conflicts: [String]
}

public struct RiskFigures: Sendable, Equatable {
    /// Annualised, from the EWMA covariance.
    public var volatility: Double
    /// Annualised volatility of the difference to the strategic weights.
    public var trackingError: Double
    /// Herfindahl index of the instrument weights.
    public var concentration: Double
    /// The profile's limit.
    public var maxVolatility: Double
}

public struct RebalanceDecision: Sendable {
    public var status: DecisionStatus
    public var targets: [TargetWeight]
    public var orders: [Order]
    public var compliance: ComplianceReport
    public var riskBefore: RiskFigures
    public var riskAfter: RiskFigures
    /// One-way turnover of the orders: max(buys, sells) / total value.
    public var turnover: Double
    public var totalValue: Double
    public var cashWeightBefore: Double
    public var cashWeightAfter: Double
    public var totalEstimatedCost: Double
    public var summary: String
    /// Caveats (e.g. instruments without price history).
    public var notes: [String]
}
