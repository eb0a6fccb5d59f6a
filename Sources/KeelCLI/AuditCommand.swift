import ArgumentParser
import KeelAudit

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Verify or export an audit log.",
        discussion: """
            The audit log is the append-only, hash-chained SQLite file in which the \
            server records every Rebalance decision and approval event before it \
            answers (docs/AUDIT.md). Both subcommands open it read-only; they may run \
            while a server appends to it and see the records committed when they start.

            Examples:
              keel audit verify --db audit.db
              keel audit export --db audit.db --since 2026-11-21 --format csv --output audit.csv
            """,
        subcommands: [AuditVerify.self, AuditExport.self]
    )
}

struct AuditVerify: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check the whole hash chain of an audit log.",
        discussion: """
            Checks every record in sequence order: sequences contiguous from 1, each \
            prev_hash equal to the previous record's hash, each stored hash equal to its \
            recomputation, each payload decoding as the message its kind names, and \
            recorded times never going backwards.

            Prints the number of records and the hash of the last one (the head). \
            Exit status 0 when the chain verifies; 1 with \
            `error: <file>: record <sequence>: <reason>` on standard error for the first \
            broken record, or with the reason when the file is not a readable audit log.
            """
    )

    @Option(help: ArgumentHelp("The audit log file.", valueName: "path"))
    var db: String

    func run() throws {
        let verification: AuditVerification
        do {
            verification = try AuditReader.verify(path: db)
        } catch {
            throw fail(db, error)
        }
        print("records: \(verification.records)")
        print("head:    \(verification.headHash ?? "-")")
        if let broken = verification.firstBroken {
            throw fail("\(db): record \(broken.sequence): \(broken.reason)")
        }
        print("ok: \(db): the chain verifies")
    }
}

struct AuditExport: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write audit records as JSON lines or CSV.",
        discussion: """
            Writes the records recorded at or after --since, in sequence order, with the \
            fields sequence, recorded_at (ISO-8601 UTC), kind, account_id, decision_id, \
            prev_hash, hash and payload (the decoded DecisionRecord or ApprovalRecord as \
            protobuf JSON). jsonl: one JSON object per line, the payload an object. csv: \
            a header line, RFC 4180 quoting, CRLF line ends, the payload a quoted JSON \
            string.

            --since takes a date (2026-11-21, midnight UTC) or a time with a zone \
            (2026-11-21T10:00:00Z, 2026-11-21T10:00:00.5+01:00). With --output the file \
            appears only when the export is complete. Export does not check the chain: \
            run `keel audit verify` for that.
            """
    )

    enum Format: String, ExpressibleByArgument, CaseIterable {
        case jsonl
        case csv

        var auditFormat: AuditExportFormat {
            switch self {
            case .jsonl: .jsonl
            case .csv: .csv
            }
        }
    }

    @Option(help: ArgumentHelp("The audit log file.", valueName: "path"))
    var db: String

    @Option(help: ArgumentHelp("Only records recorded at or after this date or time.", valueName: "date"))
    var since: String?

    @Option(help: "Output format.")
    var format: Format = .jsonl

    @Option(help: ArgumentHelp("Write to this file instead of standard output.", valueName: "file"))
    var output: String?

    func validate() throws {
        if let since, AuditReader.parseSince(since) == nil {
            throw ValidationError(
                "--since '\(since)' is not a date (2026-11-21) or a time with a zone (2026-11-21T10:00:00Z)")
        }
    }

    func run() throws {
        let sinceNanos = since.flatMap(AuditReader.parseSince) ?? Int64.min
        guard let output else {
            do {
                try AuditReader.export(path: db, sinceUnixNanos: sinceNanos, format: format.auditFormat) {
                    print($0, terminator: "")
                }
            } catch {
                throw fail(db, error)
            }
            return
        }
        // Write next to the target and rename when complete, so a failed
        // export never leaves a plausible-looking partial file.
        let partial = output + ".partial-\(getpid())"
        guard let file = fopen(partial, "wb") else {
            throw fail("\(output): cannot create: \(String(cString: strerror(errno)))")
        }
        var writeFailed = false
        do {
            try AuditReader.export(path: db, sinceUnixNanos: sinceNanos, format: format.auditFormat) { line in
                guard !writeFailed else { return }
                var text = line
                let count = text.utf8.count
                writeFailed = text.withUTF8 { fwrite($0.baseAddress, 1, $0.count, file) } != count
            }
        } catch {
            fclose(file)
            unlink(partial)
            throw fail(db, error)
        }
        let flushFailed = fflush(file) != 0 || fsync(fileno(file)) != 0
        let reason = String(cString: strerror(errno))
        fclose(file)
        if writeFailed || flushFailed {
            unlink(partial)
            throw fail("\(output): write error: \(reason)")
        }
        guard rename(partial, output) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(partial)
            throw fail("\(output): cannot create: \(reason)")
        }
    }
}

/// Prints `error: <path>: <code name>: <message>` to standard error and
/// returns exit code 1. A message that already starts with the path does
/// not repeat it.
func fail(_ path: String, _ error: AuditError) -> ExitCode {
    var message = error.message
    if message.hasPrefix(path + ": ") { message.removeFirst(path.count + 2) }
    printError("error: \(path): \(error.code.name): \(message)")
    return ExitCode(1)
}
