/// Why a backtest or a training run could not go on. Every message names
/// what is wrong: the file, line and column of a bad cell, the strategy that
/// does not parse, the model that failed.
public struct ResearchError: Error, Sendable, CustomStringConvertible, Equatable {
    public enum Code: String, Sendable {
        /// A data file is missing, unreadable or malformed.
        case invalidData
        /// A strategy name, option or window specification is wrong.
        case invalidArgument
        /// A policy model could not be loaded or failed while it ran.
        case policyFailed
        /// A trained challenger did not beat the current model.
        case notBetter
        /// Writing a report or a model failed.
        case io
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
