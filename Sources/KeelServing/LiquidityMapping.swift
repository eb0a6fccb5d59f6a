import KeelAPI
import KeelInference
import KeelPortfolio

/// `LiquidityContext` (API) ↔ the liquidity forecast (domain): validation
/// of the cash-flow history and scheduled flows, the forecaster's feature
/// rows, and the path with its recommended cash buffer (docs/LIQUIDITY.md).
public enum LiquidityMapping {
    public static let defaultConfidence = 0.95
    /// The largest cash flow accepted, in either direction: sums of up to
    /// 20 years of such flows stay finite.
    public static let maxAmount = 1e15

    /// A validated context: daily net flows up to the origin, the scheduled
    /// flows per forecast day, the horizon and the confidence.
    public struct Context: Sendable {
        public let firstDay: Int
        public let history: [Double]
        public let scheduled: [Double]
        public let confidence: Double
        public var origin: Int { firstDay + history.count - 1 }
        public var notes: [String]
    }

    /// Validates `context`; every problem names its field (`field` is the
    /// context's own name, e.g. `liquidity`).
    public static func context(_ context: Keel_V1_LiquidityContext, field: String) throws(RPCStatus) -> Context {
        func bad(_ message: String) -> RPCStatus { RPCStatus(.invalidArgument, message) }
        guard !context.history.isEmpty else {
            throw bad("\(field).history is empty: the forecaster needs the account's daily cash flows")
        }
        let horizon = Int(context.horizonDays)
        guard (1...LiquidityFeatures.maxHorizon).contains(horizon) else {
            throw bad("\(field).horizon_days \(context.horizonDays) is outside 1...\(LiquidityFeatures.maxHorizon)")
        }
        var confidence = context.confidence
        if confidence == 0 { confidence = defaultConfidence }
        guard confidence > 0.5, confidence < 1 else {
            throw bad("\(field).confidence \(context.confidence) is outside (0.5, 1)")
        }
        var days: [Int] = []
        days.reserveCapacity(context.history.count)
        for (k, flow) in context.history.enumerated() {
            guard let day = CivilDay.parse(flow.date) else {
                throw bad("\(field).history[\(k)].date '\(flow.date)' is not a date of the form YYYY-MM-DD")
            }
            guard flow.amount.isFinite, abs(flow.amount) <= maxAmount else {
                throw bad("\(field).history[\(k)].amount \(flow.amount) is not a finite amount within ±1e15")
            }
            if let last = days.last, day < last {
                throw bad("\(field).history[\(k)].date \(flow.date) comes before the previous flow's "
                    + "\(CivilDay.iso(last)) (history must be oldest first)")
            }
            days.append(day)
        }
        let first = days[0], origin = days[days.count - 1]
        guard origin - first < 20 * 366 else {
            throw bad("\(field).history spans \(origin - first + 1) days; at most 20 years are used")
        }
        var history = [Double](repeating: 0, count: origin - first + 1)
        for (k, flow) in context.history.enumerated() { history[days[k] - first] += flow.amount }
        var scheduled = [Double](repeating: 0, count: horizon)
        var beyond = 0
        for (k, flow) in context.scheduled.enumerated() {
            guard let day = CivilDay.parse(flow.date) else {
                throw bad("\(field).scheduled[\(k)].date '\(flow.date)' is not a date of the form YYYY-MM-DD")
            }
            guard flow.amount.isFinite, abs(flow.amount) <= maxAmount else {
                throw bad("\(field).scheduled[\(k)].amount \(flow.amount) is not a finite amount within ±1e15")
            }
            guard day > origin else {
                throw bad("\(field).scheduled[\(k)].date \(flow.date) is not after the last history day "
                    + "\(CivilDay.iso(origin))")
            }
            if day - origin > horizon { beyond += 1; continue }
            scheduled[day - origin - 1] += flow.amount
        }
        var notes: [String] = []
        if beyond > 0 { notes.append("\(beyond) scheduled flow(s) after the \(horizon)-day horizon are not counted") }
        if history.count < 180 {
            notes.append("only \(history.count) days of history; the forecaster looks back 6 months")
        }
        return Context(firstDay: first, history: history, scheduled: scheduled, confidence: confidence, notes: notes)
    }

    /// The forecast path and the recommended buffer from a liquidity model.
    public static func forecast(_ c: Context, model: LoadedModel) throws(RPCStatus)
        -> (path: [LiquidityDay], buffer: Double)
    {
        let horizon = c.scheduled.count
        let scale = LiquidityFeatures.scale(c.history)
        let rows = LiquidityFeatures.rows(history: c.history, firstDay: c.firstDay, horizon: horizon, scale: scale)
        let outputs: [Tensor]
        do {
            outputs = try model.withSession { session in try session.run(features: rows, rows: horizon) }
        } catch {
            throw RPCStatus(.internal, "model '\(model.name)' v\(model.version) failed: \(error)")
        }
        guard let t = outputs.first, t.shape == [horizon, 3] else {
            throw RPCStatus(.internal, "model '\(model.name)' v\(model.version) returned \(outputs.first?.shape ?? []); "
                + "a liquidity model returns [days, 3] (p5, p50, p95)")
        }
        let path = LiquidityPlanner.path(quantiles: t.values, firstForecastDay: c.origin + 1, scale: scale,
                                         scheduled: c.scheduled)
        let calibration = BufferCalibration(metadata: model.metadata["keel.buffer_calibration"])
        return (path, LiquidityPlanner.buffer(path, confidence: c.confidence, calibration: calibration))
    }

    public static func response(_ path: [LiquidityDay]) -> [Keel_V1_DailyForecast] {
        path.map { day in
            var f = Keel_V1_DailyForecast()
            f.date = CivilDay.iso(day.day)
            f.p5 = day.p5
            f.p50 = day.p50
            f.p95 = day.p95
            f.scheduled = day.scheduled
            return f
        }
    }
}
