// When the collectors run: each on its own interval, one run at a time per collector (a run asked for while
// one is under way joins it), and none once stopped. Stopping cancels the timers, aborts the waits and
// requests of a run under way, and waits for it to end (a page being stored finishes or rolls back).
import type { Logger } from '../kernel/logger.js'
import type { CollectOutcome } from './collector.js'

export interface ScheduledCollector {
  /** 0: only when asked (runNow). */
  intervalMs: number
  run: (signal: AbortSignal) => Promise<CollectOutcome>
}

export function scheduleCollectors (collectors: ScheduledCollector[], log: Logger) {
  const controller = new AbortController()
  const timers = new Set<NodeJS.Timeout>()
  const running = new Map<ScheduledCollector, Promise<CollectOutcome>>()
  let stopped = false

  function runOne (collector: ScheduledCollector): Promise<CollectOutcome> {
    const underWay = running.get(collector)
    if (underWay !== undefined) return underWay
    const run = collector.run(controller.signal).finally(() => { running.delete(collector) })
    running.set(collector, run)
    return run
  }

  function plan (collector: ScheduledCollector, delayMs: number): void {
    if (stopped || collector.intervalMs === 0) return
    const timer = setTimeout(() => {
      timers.delete(timer)
      runOne(collector).catch((error: unknown) => { log.error({ err: error }, 'a provider cost collector run threw') })
        .finally(() => { plan(collector, collector.intervalMs) })
    }, delayMs)
    timer.unref()
    timers.add(timer)
  }

  return {
    start (): void {
      for (const collector of collectors) plan(collector, 0)
    },
    /** Runs every collector now (joining a run under way); after stop, none. */
    async runNow (): Promise<CollectOutcome[]> {
      if (stopped) return []
      return await Promise.all(collectors.map(runOne))
    },
    async stop (): Promise<void> {
      stopped = true
      for (const timer of timers) clearTimeout(timer)
      timers.clear()
      controller.abort()
      await Promise.allSettled([...running.values()])
    }
  }
}
