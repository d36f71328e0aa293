// The bulk usage collector: up to 10,000 records in one request, each checked as POST /:id/usage checks
// it (lib/usage/usage-rules.ts) and answered on its own, the good ones stored in one transaction.
import type { Sql, TransactionSql } from 'postgres'
import { withinBound } from '../kernel/database/bounded.js'
import { BudgetNotFoundError, InvalidFieldError, NoApplicableBudgetError } from '../kernel/errors.js'
import { checkStorable } from '../kernel/json-limits.js'
import type { Money } from '../kernel/money.js'
import { createBudgetRepository } from '../budgets/index.js'
import { createStatusRepository } from './status-repository.js'
import { createUsageBatchRepository, type ScopedCall } from './usage-batch-repository.js'
import type { UsageRecord, UsageValues } from './usage-repository.js'
import { toErrorBody } from '../kernel/error-body.js'
import { compileSchema } from '../kernel/validator.js'
import { BatchUsageRecord, type BatchUsageResult, type ScopeType } from '../kernel/schemas.js'
import type { Tags } from '../kernel/tags.js'
import { checkActive, checkMatches, hasFilters, readUsage, recordFault, replayOf, requestFingerprint, type ReadUsage, type UsageRuleOptions } from './usage-rules.js'
import { checkScopeId, toScopes } from '../kernel/scopes.js'

export interface BatchAnswer {
  results: BatchUsageResult[]
  created: number
  replayed: number
  refused: number
}

/** A check of a well-formed record before anything is read for it: throws the refusal. */
export type RecordCheck = (record: BatchUsageRecord) => void

/** A record that passed every check: where it goes and what is stored. */
interface Checked {
  index: number
  /** Its budget's tree (on Citus, where its key is unique). */
  rootId: string
  values: UsageValues
}

/** A record read, before its budget is known. */
interface Read {
  index: number
  record: BatchUsageRecord
  usage: ReadUsage
  fingerprint: string
  /** The budget it names, or the ones its scopes reach (the first takes it). */
  budgetIds: string[] | null
  call: ScopedCall | null
}

const validateRecord = compileSchema(BatchUsageRecord, 'body')

/**
 * Records checked between two turns of the event loop. A batch's checks and answers are some 50 to 100 us of
 * CPU per record, half a second to seconds for 10,000 on a busy host: run at once they would hold up every
 * gated call of the process (whose database timeout then answers 503) until the batch is done.
 */
const RECORDS_PER_TURN = 250

async function yieldEvery (count: number): Promise<void> {
  if (count % RECORDS_PER_TURN === RECORDS_PER_TURN - 1) await new Promise((resolve) => setImmediate(resolve))
}

/** Rolls the batch's statement back, to run it again with the records it refused left out (a window past numeric(28,10) only). */
class RetryBatch extends Error {}

/**
 * `sql`'s `begin` is bounded (lib/kernel/database/bounded.ts: withBoundedBegin): every statement of a batch, its
 * checks as well as its store, runs in that one transaction, so a batch past the bound stores nothing and
 * answers AdminTimeoutError, and asks nothing of the shared pool ahead of the gate.
 */
export function createUsageCollector (sql: Sql, options: UsageRuleOptions) {
  /** The first check a record fails, as { code, message, field }; a fault that is no record's (a bug, the database) is thrown. */
  function refusal (error: unknown): NonNullable<BatchUsageResult['error']> {
    const body = toErrorBody(error as Parameters<typeof toErrorBody>[0])
    if (body.statusCode >= 500) throw error
    return { code: body.code, message: body.message, ...(body.field === undefined ? {} : { field: body.field }) }
  }

  /** The checks of one record that need no database. */
  function read (index: number, record: unknown, clock: UsageRuleOptions, mayRecord?: RecordCheck): Read {
    checkStorable(record, '')
    if (!validateRecord(record)) throw Object.assign(new Error('invalid record'), { validation: validateRecord.errors, validationContext: 'record' })
    const valid = record as BatchUsageRecord
    if ((valid.budgetId === undefined) === (valid.scopes === undefined)) throw new InvalidFieldError('budgetId', 'give either budgetId or scopes (not both)')
    mayRecord?.(valid)
    const usage = readUsage(valid, undefined, clock)
    const fingerprint = requestFingerprint(valid.scopes === undefined ? { budgetId: valid.budgetId! } : { scopes: valid.scopes as Record<string, string> }, valid, usage)
    if (valid.scopes === undefined) return { index, record: valid, usage, fingerprint, budgetIds: [valid.budgetId!.toLowerCase()], call: null } // a uuid in any case, as the single route reads it
    for (const [type, id] of Object.entries(valid.scopes)) checkScopeId(id, `scopes.${type}`)
    const model = typeof usage.metadata.modelId === 'string' ? usage.metadata.modelId : null
    const tags = usage.metadata.tags as Tags | undefined
    return { index, record: valid, usage, fingerprint, budgetIds: null, call: { scopes: toScopes(valid.scopes as Partial<Record<ScopeType, string>>), currency: valid.currency, model, ...(tags === undefined ? {} : { tags }) } }
  }

  /** Resolves scopes to budgets, then checks each record on its budget: found, its filters matched, active when the spend happened. */
  async function check (tx: TransactionSql, reads: Read[], answer: (index: number, error: unknown) => void): Promise<Checked[]> {
    const batch = createUsageBatchRepository(tx)
    // Scopes: one lookup per distinct call (scopes, currency, model, tags).
    const calls = new Map<string, ScopedCall>()
    const callKey = (call: ScopedCall) => JSON.stringify([call.scopes, call.currency, call.model, call.tags ?? null])
    for (const { call } of reads) if (call !== null) calls.set(callKey(call), call)
    const callList = [...calls.values()]
    await withinBound(tx)
    const reached = new Map((await batch.listScopeBudgets(callList)).map((ids, i) => [callKey(callList[i]!), ids]))
    for (const entry of reads) {
      if (entry.call !== null) entry.budgetIds = reached.get(callKey(entry.call)) ?? []
    }

    // Budgets, filters and windows: each a statement over every distinct question (a batch may name 10,000 budgets).
    await withinBound(tx)
    const found = await createBudgetRepository(tx).findBudgets([...new Set(reads.flatMap((entry) => entry.budgetIds?.slice(0, 1) ?? []))])
    const matchKey = (budgetId: string, usage: ReadUsage) => JSON.stringify([budgetId, usage.metadata.modelId ?? null, usage.metadata.tags ?? null])
    const matchQuestions = new Map<string, { budgetId: string, model: string | null, tags: Tags | undefined }>()
    for (const { budgetIds, usage } of reads) {
      const budget = budgetIds?.[0] === undefined ? undefined : found.get(budgetIds[0])
      if (budget === undefined || !hasFilters(budget)) continue
      matchQuestions.set(matchKey(budget.id, usage), { budgetId: budget.id, model: typeof usage.metadata.modelId === 'string' ? usage.metadata.modelId : null, tags: usage.metadata.tags as Tags | undefined })
    }
    await withinBound(tx)
    const answers = await batch.matchCalls([...matchQuestions.values()])
    const matched = new Map([...matchQuestions.keys()].map((key, i) => [key, answers[i]!]))
    const windowKey = (budgetId: string, at: Date) => `${budgetId} ${at.getTime()}`
    const windowQuestions = new Map<string, { budgetId: string, at: Date }>()
    for (const { budgetIds, usage } of reads) {
      const budgetId = budgetIds?.[0]
      if (budgetId !== undefined && found.has(budgetId)) windowQuestions.set(windowKey(budgetId, usage.occurredAt), { budgetId, at: usage.occurredAt })
    }
    const windowList = [...windowQuestions.values()]
    await withinBound(tx)
    const windows = new Map((await createStatusRepository(tx).findWindows(windowList)).map((window, i) => [windowKey(windowList[i]!.budgetId, windowList[i]!.at), window]))

    const checked: Checked[] = []
    for (const [order, { index, record, usage, fingerprint, budgetIds, call }] of reads.entries()) {
      await yieldEvery(order)
      try {
        const [budgetId, ...others] = budgetIds ?? []
        if (budgetId === undefined) throw new NoApplicableBudgetError(describe(call!))
        const budget = found.get(budgetId)
        if (budget === undefined) throw new BudgetNotFoundError(budgetId)
        checkMatches(budget, !hasFilters(budget) || matched.get(matchKey(budget.id, usage)) === true)
        checkActive(budget, usage.occurredAt, windows.get(windowKey(budget.id, usage.occurredAt)) ?? null)
        checked.push({
          index,
          rootId: budget.rootId,
          values: {
            budgetId: budget.id,
            amount: usage.amount,
            currency: record.currency,
            source: record.source ?? null,
            description: record.description ?? null,
            metadata: usage.metadata,
            idempotencyKey: usage.idempotencyKey,
            requestFingerprint: fingerprint,
            occurredAt: usage.occurredAt,
            alsoCountsToward: others
          }
        })
      } catch (error) {
        answer(index, error)
      }
    }
    return checked
  }

  /**
   * Stores the checked records in one statement (budget_record_usage_batch), all of them, in the order they came: a record it
   * cannot store (no exchange rate, past numeric(28,10)) is refused there, and the next other request under
   * its key is tried in its place, as posting them one at a time would. Only a record that would take a
   * window past numeric(28,10) is found after the keys are taken: if it held a key that a later request
   * would then have taken, the statement is rolled back and run again without it (rare: a window near
   * numeric(28,10) and a key reused for another request; each run refuses one record more). Then each
   * record not stored is the replay of the one that holds its key, or a conflict.
   */
  async function store (tx: TransactionSql, checked: Checked[], answer: (index: number, error: unknown) => void, done: (index: number, status: 'created' | 'replayed', record: UsageRecord) => void): Promise<void> {
    const keyOf = ({ values }: Checked) => values.idempotencyKey
    // where a key is held: every tree, or (on Citus) its budget's tree
    const heldAt = (entry: Checked) => options.keysByTree === true ? `${entry.rootId} ${keyOf(entry)}` : keyOf(entry)
    const refusals = new Map<number, Error>() // by the record's index
    let stored = new Map<number, UsageRecord>() // by the record's index
    for (let again = true; again;) {
      const tried = checked.filter((entry) => !refusals.has(entry.index))
      await tx.savepoint(async (sp) => {
        const { stored: byOrder, faults } = await createUsageBatchRepository(sp).insertUsageBatch(tried.map((entry) => entry.values))
        stored = new Map([...byOrder].map(([order, record]) => [tried[order]!.index, record]))
        const refusedNow = [...faults].map(([order, { code, detail }]) => {
          const entry = tried[order]!
          refusals.set(entry.index, recordFault(code, detail)!)
          return entry
        })
        const keysTaken = new Set(tried.filter((entry) => stored.has(entry.index)).map(heldAt))
        again = tried.some((entry) => keyOf(entry) !== null && !stored.has(entry.index) && !refusals.has(entry.index) && !keysTaken.has(heldAt(entry)) &&
          refusedNow.some((refused) => heldAt(refused) === heldAt(entry) && refused.index < entry.index))
        if (again) throw new RetryBatch()
      }).catch((error: unknown) => { if (!(error instanceof RetryBatch)) throw error })
    }

    // The record that holds the key of each record not stored: the same request's, stored before or by this batch
    // (a replay), else another (a conflict; findKeyHolders).
    const replays = checked.filter((entry) => keyOf(entry) !== null && !stored.has(entry.index) && !refusals.has(entry.index))
    await withinBound(tx)
    const holders = await createUsageBatchRepository(tx).findKeyHolders(replays.map((entry) => ({ budgetId: entry.values.budgetId, idempotencyKey: keyOf(entry)!, fingerprint: entry.values.requestFingerprint })))
    const holderOf = new Map(replays.map((entry, i) => [entry.index, holders[i]!]))

    for (const [order, entry] of checked.entries()) {
      await yieldEvery(order)
      const created = stored.get(entry.index)
      if (created !== undefined) { done(entry.index, 'created', created); continue }
      const refused = refusals.get(entry.index)
      if (refused !== undefined) { answer(entry.index, refused); continue }
      try {
        done(entry.index, 'replayed', replayOf(holderOf.get(entry.index)!, entry.values.amount as Money, entry.values.currency, entry.values.idempotencyKey!, entry.values.requestFingerprint))
      } catch (error) {
        answer(entry.index, error)
      }
    }
  }

  return {
    /**
     * Checks and stores each record; answers every one, in input order. A database fault stores none of them (and is thrown).
     * `mayRecord`: the caller's own check of a well-formed record (a scoped principal's area), which throws to refuse it.
     */
    async collect (records: unknown[], mayRecord?: RecordCheck): Promise<BatchAnswer> {
      // One instant for the batch: a record without occurredAt happened when the batch arrived.
      const arrived = options.now()
      const clock: UsageRuleOptions = { now: () => arrived, ...(options.modelName === undefined ? {} : { modelName: options.modelName }) }
      const results = new Array<BatchUsageResult | undefined>(records.length)
      const answer = (index: number, error: unknown) => { results[index] = { index, status: 'refused', error: refusal(error) } }
      const reads: Read[] = []
      for (const [index, record] of records.entries()) {
        await yieldEvery(index)
        try {
          reads.push(read(index, record, clock, mayRecord))
        } catch (error) {
          answer(index, error)
        }
      }
      if (reads.length > 0) {
        await sql.begin(async (tx) => {
          const checked = await check(tx, reads, answer)
          if (checked.length > 0) await store(tx, checked, answer, (index, status, record) => { results[index] = { index, status, record } })
        })
      }
      const answered = results as BatchUsageResult[]
      const count = (status: BatchUsageResult['status']) => answered.filter((result) => result.status === status).length
      return { results: answered, created: count('created'), replayed: count('replayed'), refused: count('refused') }
    }
  }
}

export type UsageCollector = ReturnType<typeof createUsageCollector>

function describe (call: ScopedCall): string {
  const scopes = call.scopes.map((scope) => `${scope.type} ${scope.id}`).join(', ')
  const tags = call.tags === undefined ? '' : `, tags ${Object.entries(call.tags).map(([key, value]) => `${key}=${value}`).join(',')}`
  return `the scopes ${scopes} (model ${call.model ?? 'none'}${tags}, currency ${call.currency})`
}
