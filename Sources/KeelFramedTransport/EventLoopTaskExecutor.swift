import NIOCore

/// A task executor that runs jobs on one NIO event loop.
///
/// The gRPC server's tasks prefer it, and its connections live on the same
/// loop, so a request's bytes, the grpc-swift state machine and the response
/// writes stay on one thread instead of crossing to the global pool and back
/// at every step. Inference does not run here: the bridge hands each call to
/// the global concurrent executor (`GRPCBridge`).
///
/// Thread safety: `enqueue` may be called from any thread.
public final class EventLoopTaskExecutor: TaskExecutor {
    public let eventLoop: any EventLoop

    public init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute {
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }
}
