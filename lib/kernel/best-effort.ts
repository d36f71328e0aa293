// Work whose failure must not fail its caller and must not go unnoticed either: a give-back, a top-up in
// the background, a poll, a timer's round. It never throws; a failure is logged with a message that says
// what was lost and the ids an operator needs to find it. Retrying is the job's own business (a lease's
// give-back tries again for seconds): this is where it finally gives up.
import type { Logger } from './logger.js'

export type BestEffortLevel = 'debug' | 'info' | 'warn' | 'error'

/** The logger's methods the helper writes with (a Fastify or pino logger has them all). */
export type BestEffortLog = Pick<Logger, BestEffortLevel>

/**
 * Runs `job` and resolves once it has ended, true when it succeeded. A failure (a rejection, or a throw
 * before the first await) is logged at `level` with `message` and `context` (give the ids of what was
 * lost), and resolves false.
 */
export async function bestEffort (log: BestEffortLog, job: () => Promise<unknown>, message: string,
  context: Record<string, unknown> = {}, level: BestEffortLevel = 'warn'): Promise<boolean> {
  try {
    await job()
    return true
  } catch (error) {
    log[level]({ ...context, err: error }, message)
    return false
  }
}
