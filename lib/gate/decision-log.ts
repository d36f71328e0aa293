// The decision log's writer, reader and sweeper. The gate notes a decision in memory and goes on:
// decisions are written in batches off the response path, one multi-row insert at a time, when the
// buffer holds a batch or the flush interval has passed. The buffer is bounded: when it is full (the
// database is away or slower than the refusals), a new decision is dropped and counted
// (relaycore_budget_decision_log_dropped_total), never waited for, so the log can neither block nor
// fail a call. A batch whose insert fails goes back to the buffer's front while there is room.
import type { Logger } from '../kernel/logger.js'
import { Counter, type Registry } from 'prom-client'
import { InvalidFieldError } from '../kernel/errors.js'
import type { Decision, DecisionFilter, DecisionOutcome, DecisionRepository, StoredDecision } from './decision-repository.js'
import { SCOPE_TYPES, type ScopeType } from '../kernel/schemas.js'
import type { BudgetConstraintCheck } from './decision.js'
import { nanosecondsOf, parseMillisecondBound } from '../kernel/timestamps.js'
import { isUuid } from '../kernel/database/db.js'

export interface DecisionLogOptions {
  /** Store decisions at all. Default true. */
  enabled: boolean
  /** Decisions older than this many days are deleted. Default 30. */
  retentionDays: number
  /** The most decisions waiting in memory; past it a new one is dropped and counted. Default 10000. */
  maxBuffered: number
  /** A batch is written once this many wait. Default 500. */
  batchSize: number
  /** And at least this often while any wait. Default 1000 ms. */
  flushIntervalMs: number
  /** How often old decisions are swept. Default hourly. */
  sweepIntervalMs: number
}

export const DECISION_LOG_DEFAULTS: DecisionLogOptions = {
  enabled: true,
  retentionDays: 30,
  maxBuffered: 10_000,
  batchSize: 500,
  flushIntervalMs: 1000,
  sweepIntervalMs: 60 * 60_000
}

/** How many rows one sweep statement deletes: short statements, never a long lock on the table. */
const SWEEP_BATCH = 1000
/** The most statements one sweep runs; the rest waits for the next sweep. */
const SWEEP_ROUNDS = 100
const DAY_MS = 24 * 60 * 60_000

export interface DecisionPageQuery {
  budgetId?: string
  code?: string
  outcome?: DecisionOutcome
  scopeType?: ScopeType
  scopeId?: string
  from?: string
  to?: string
  limit?: number
  cursor?: string
}

const OUTCOMES: readonly DecisionOutcome[] = ['refused', 'clamped', 'downgraded']
const CODE = /^[a-z][a-z0-9_]{0,63}$/

/** The cursor names the last decision of a page, (at, id), in a form the client need not read. */
export function encodeCursor (decision: StoredDecision): string {
  return Buffer.from(`${Date.parse(decision.at)}.${decision.id}`).toString('base64url')
}

function decodeCursor (cursor: string): { at: Date, id: bigint } {
  const match = /^[A-Za-z0-9_-]{1,60}$/.test(cursor) ? /^(\d{1,15})\.([1-9]\d{0,18})$/.exec(Buffer.from(cursor, 'base64url').toString()) : null
  const at = match === null ? NaN : Number(match[1])
  if (match === null || at > Date.UTC(9999, 11, 31, 23, 59, 59, 999) || BigInt(match[2]!) > 9223372036854775807n) {
    throw new InvalidFieldError('cursor', 'is not a cursor this API returned')
  }
  return { at: new Date(at), id: BigInt(match[2]!) }
}

/** The route's query as the repository's filter; a 400 naming the field for anything it cannot mean. */
export function decisionFilter (query: DecisionPageQuery): DecisionFilter {
  const limit = query.limit ?? 100
  if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new InvalidFieldError('limit', 'must be an integer from 1 to 1000')
  if (query.budgetId !== undefined && !isUuid(query.budgetId)) throw new InvalidFieldError('budgetId', 'must be a budget id (a UUID)')
  if (query.code !== undefined && !CODE.test(query.code)) throw new InvalidFieldError('code', 'must be a refusal code such as budget_exceeded')
  if (query.outcome !== undefined && !OUTCOMES.includes(query.outcome)) throw new InvalidFieldError('outcome', `must be one of ${OUTCOMES.join(', ')}`)
  if ((query.scopeType === undefined) !== (query.scopeId === undefined)) {
    throw new InvalidFieldError(query.scopeType === undefined ? 'scopeType' : 'scopeId', 'scopeType and scopeId go together')
  }
  if (query.scopeType !== undefined && !SCOPE_TYPES.includes(query.scopeType)) throw new InvalidFieldError('scopeType', `must be one of ${SCOPE_TYPES.join(', ')}`)
  const from = query.from === undefined ? undefined : parseMillisecondBound(query.from, 'from')
  const to = query.to === undefined ? undefined : parseMillisecondBound(query.to, 'to')
  if (from !== undefined && to !== undefined && nanosecondsOf(query.to, 'to') <= nanosecondsOf(query.from, 'from')) throw new InvalidFieldError('to', 'must be after from')
  return {
    limit,
    ...(query.budgetId === undefined ? {} : { budgetId: query.budgetId.toLowerCase() }),
    ...(query.code === undefined ? {} : { code: query.code }),
    ...(query.outcome === undefined ? {} : { outcome: query.outcome }),
    ...(query.scopeType === undefined ? {} : { scope: { type: query.scopeType, id: query.scopeId! } }),
    ...(from === undefined ? {} : { from }),
    ...(to === undefined ? {} : { to }),
    ...(query.cursor === undefined ? {} : { after: decodeCursor(query.cursor) })
  }
}

/** PostgreSQL's data exceptions (SQLSTATE class 22): the statement will fail whenever it is retried. */
function isDataError (error: unknown): boolean {
  const code = (error as { code?: unknown }).code
  return typeof code === 'string' && code.startsWith('22')
}

export function createDecisionLog (repository: DecisionRepository, options: DecisionLogOptions, log: Logger, registry: Registry, now: () => Date = () => new Date()) {
  const dropped = new Counter({
    name: 'relaycore_budget_decision_log_dropped_total',
    help: 'Gate decisions (refusals, clamps, downgrades) not stored: the buffer was full, or the plugin closed with the database away.',
    registers: [registry]
  })
  const written = new Counter({ name: 'relaycore_budget_decision_log_written_total', help: 'Gate decisions stored in the decision log.', registers: [registry] })
  let buffer: Decision[] = []
  let flushing: Promise<void> | null = null
  let flushTimer: NodeJS.Timeout | undefined
  let sweepTimer: NodeJS.Timeout | undefined
  let closed = false
  let sweeping: Promise<unknown> = Promise.resolve()

  /** Writes what waits, a batch at a time; one flush runs at once. A batch that fails goes back in front, room permitting. */
  async function writeBatches (): Promise<void> {
    while (buffer.length > 0) {
      const batch = buffer.splice(0, options.batchSize)
      try {
        await repository.insert(batch)
        written.inc(batch.length)
      } catch (error) {
        if (isDataError(error)) {
          // A decision PostgreSQL refuses (class 22: a value it cannot store) would fail every later
          // flush with its batch: the batch's decisions are written one by one, and a refused one dropped.
          await writeOneByOne(batch)
          continue
        }
        const kept = Math.max(0, Math.min(batch.length, options.maxBuffered - buffer.length))
        if (kept < batch.length) dropped.inc(batch.length - kept)
        buffer = [...batch.slice(0, kept), ...buffer]
        log.warn({ err: error, waiting: buffer.length }, 'writing the decision log failed: its batch waits for the next flush')
        return
      }
    }
  }

  async function writeOneByOne (batch: Decision[]): Promise<void> {
    for (const decision of batch) {
      try {
        await repository.insert([decision])
        written.inc()
      } catch (error) {
        dropped.inc()
        log.error({ err: error, requestId: decision.requestId }, 'a decision could not be stored: dropped')
      }
    }
  }

  function flush (): Promise<void> {
    flushing ??= writeBatches().finally(() => { flushing = null })
    return flushing
  }

  /** One sweep at a time: a sweep asked for while the timer's runs waits for it, so each counts only its own deletions. */
  function sweepInTurn (): Promise<number> {
    const run = sweeping.then(sweep, sweep)
    sweeping = run.catch(() => {})
    return run
  }

  /** Deletes decisions past the retention, a bounded batch per statement; how many it deleted. */
  async function sweep (): Promise<number> {
    const before = new Date(now().getTime() - options.retentionDays * DAY_MS)
    let deleted = 0
    for (let round = 0; round < SWEEP_ROUNDS; round++) {
      const count = await repository.deleteOlderThan(before, SWEEP_BATCH)
      deleted += count
      if (count < SWEEP_BATCH) break
    }
    return deleted
  }

  return {
    enabled: options.enabled,

    /** Keeps the decision for the next batch: no I/O here, whatever the database's state. */
    note (decision: Decision): void {
      if (!options.enabled || closed) return
      if (buffer.length >= options.maxBuffered) {
        dropped.inc()
        return
      }
      buffer.push(decision)
      if (buffer.length >= options.batchSize && flushing === null) setImmediate(() => { void flush() })
    },

    /** Writes every decision noted so far (tests, and close). */
    flush,
    sweep: sweepInTurn,

    /** A page of decisions, newest first, with the cursor of the next; `within`: a scoped reader's area, whose binding budgets' decisions alone it reads. */
    async page (query: DecisionPageQuery, within?: ReadonlySet<string>): Promise<{ decisions: StoredDecision[], nextCursor: string | null }> {
      const filter = decisionFilter(query)
      const rows = await repository.list({ ...filter, ...(within === undefined ? {} : { within: [...within] }), limit: filter.limit + 1 })
      const decisions = rows.slice(0, filter.limit)
      return { decisions, nextCursor: rows.length > filter.limit ? encodeCursor(decisions[decisions.length - 1]!) : null }
    },

    start (): void {
      if (options.enabled) {
        flushTimer = setInterval(() => { if (buffer.length > 0) void flush() }, options.flushIntervalMs)
        flushTimer.unref()
      }
      // Swept also when disabled: what was stored before keeps its retention.
      const sweepNow = () => {
        sweepInTurn().catch((error: unknown) => { log.error({ err: error }, 'sweeping the decision log failed') })
      }
      sweepTimer = setInterval(sweepNow, options.sweepIntervalMs)
      sweepTimer.unref()
      sweepNow()
    },

    /** Stops the timers and writes what waits (one try: with the database away, the rest is counted as dropped). */
    async close (): Promise<void> {
      closed = true
      clearInterval(flushTimer)
      clearInterval(sweepTimer)
      await sweeping
      await flushing
      await flush()
      if (buffer.length > 0) {
        dropped.inc(buffer.length)
        buffer = []
      }
    }
  }
}

export type DecisionLog = ReturnType<typeof createDecisionLog>

/** What a decision was about, in one currency: the estimate and the binding budget's numbers as the check read them. */
export function bindingOf (check: BudgetConstraintCheck, budgetId: string | null, callEstimate: string, callCurrency: string, rateLimitedBy?: { budgetId: string, name: string }): Pick<Decision, 'budget' | 'estimate' | 'currency'> {
  // A rate limit refuses before any budget's money is read: the budget is named, without numbers it never read.
  if (rateLimitedBy !== undefined) return { budget: { id: rateLimitedBy.budgetId, name: rateLimitedBy.name, limit: null, current: null, reserved: null }, estimate: callEstimate, currency: callCurrency }
  const binding = budgetId === null ? undefined : check.budgets.find((budget) => budget.budgetId === budgetId)
  if (binding === undefined) return { budget: null, estimate: callEstimate, currency: callCurrency }
  const budget = { id: binding.budgetId, name: binding.name, limit: binding.limit, current: binding.currentAmount, reserved: binding.reservedAmount }
  // In the budget's currency when the call's converts into it, so the estimate compares with its numbers.
  return binding.estimatedCost === null
    ? { budget, estimate: callEstimate, currency: callCurrency }
    : { budget, estimate: binding.estimatedCost, currency: binding.currency ?? callCurrency }
}
