// A part of the plugin: what it hands out, and, when it runs beside the requests (timers, queues, a
// client), how it starts and stops. The plugin's root (lib/index.ts) lists its parts once, in the order
// they are built; that order is the lifecycle's.
import type { Logger } from './logger.js'

export interface Part<Api> {
  api: Api
  /** Once the server is ready, in the order the parts are listed. */
  start?: () => void
  /** When the server closes, in the reverse order: a part stops before the parts it uses. */
  stop?: () => Promise<void>
}

/** What hands out `api` and has nothing to start or stop. */
export function partOf<Api> (api: Api): Part<Api> {
  return { api }
}

/**
 * Starts `parts` in order; stops them in reverse. Every part is stopped even when one fails (a database
 * client left open would hold the process): the failure is logged, and the first one is thrown at the end.
 */
export function lifecycleOf (parts: ReadonlyArray<Part<unknown>>, log: Logger) {
  return {
    start (): void {
      for (const part of parts) part.start?.()
    },
    async stop (): Promise<void> {
      const failures: unknown[] = []
      for (const part of [...parts].reverse()) {
        try {
          await part.stop?.()
        } catch (error) {
          log.error({ err: error }, 'a part of the budgets plugin failed to stop; the others stop still')
          failures.push(error)
        }
      }
      if (failures.length > 0) throw failures[0]
    }
  }
}
