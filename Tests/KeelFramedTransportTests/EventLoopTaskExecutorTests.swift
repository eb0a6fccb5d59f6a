import KeelFramedTransport
import NIOCore
import NIOPosix
import Testing

@Suite("EventLoopTaskExecutor")
struct EventLoopTaskExecutorTests {
    @Test("a task that prefers it runs on its loop, in child tasks too; preferring the global executor leaves the loop")
    func runsOnItsLoop() async throws {
        let loops = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { loops.shutdownGracefully { _ in } }
        let loop = loops.next()
        let executor = EventLoopTaskExecutor(loop)
        let (outer, child, global) = await withTaskExecutorPreference(executor) {
            let outer = loop.inEventLoop
            let child = await withTaskGroup(of: Bool.self) { group in
                group.addTask { loop.inEventLoop }
                return await group.next() ?? false
            }
            let global = await withTaskExecutorPreference(globalConcurrentExecutor) {
                MultiThreadedEventLoopGroup.currentEventLoop == nil
            }
            return (outer, child, global)
        }
        #expect(outer)
        #expect(child)
        #expect(global)
    }
}
