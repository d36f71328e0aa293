// The bulk usage collector: up to 10,000 records in one request, each checked as POST /:id/usage checks
// it (lib/services/usage-rules.ts) and answered on its own, the good ones stored in one transaction.
import type { Sql } from 'postgres'
import { BudgetNotFoundError, InvalidFieldError, NoApplicableBudgetError } from '../errors.js'
import { checkStorable } from '../json-limits.js'
import type { Money } from '../money.js'
import type { BudgetRepository } from '../repository/budgets.js'
import type { StatusRepository } from '../repository/status.js'
import { createUsageBatchRepository, type ScopedCall } from '../repository/usage-batch.js'
import type { KeyHolder, UsageRecord, UsageValues } from '../repository/usage.js'
import { toErrorBody } from '../routes/error-handler.js'
import { compileValidator } from '../routes/validator.js'
import { BatchUsageRecord, type BatchUsageResult, type BudgetDefinition, type ScopeType } from '../schemas.js'
import type { Tags } from '../tags.js'
import { checkScopeId, toScopes } from './integration.js'
import { checkActive, checkMatches, hasFilters, readUsage, recordFault, replayOf, requestFingerprint, type ReadUsage, type UsageRuleOptions } from './usage-rules.js'

export interface CollectorRepositories {
  budgets: BudgetRepository
  status: StatusRepository
}

export interface BatchAnswer {
  results: BatchUsageResult[]
  created: number
  replayed: number
  refused: number
}

/** A record that passed every check: where it goes and what is stored. */
interface Checked {
  index: number
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

const validateRecord = compileValidator({ schema: BatchUsageRecord, httpPart: 'body', method: 'POST', url: '/usage/batch' }) as
  ((value: unknown) => boolean) & { errors?: unknown[] | null }

/** Rolls the batch's statement back, to run it again with the records it refused left out. */
class RetryBatch extends Error {}

export function createUsageCollector (sql: Sql, { budgets, status }: CollectorRepositories, options: UsageRuleOptions) {
  /** The first check a record fails, as { code, message, field }; a fault that is no record's (a bug, the database) is thrown. */
  function refusal (error: unknown): NonNullable<BatchUsageResult['error']> {
    const body = toErrorBody(error as Parameters<typeof toErrorBody>[0])
    if (body.statusCode >= 500) throw error
    return { code: body.code, message: body.message, ...(body.field === undefined ? {} : { field: body.field }) }
  }

  /** The checks of one record that need no database. */
  function read (index: number, record: unknown, clock: UsageRuleOptions): Read {
    checkStorable(record, '')
    if (!validateRecord(record)) throw Object.assign(new Error('invalid record'), { validation: validateRecord.errors, validationContext: 'record' })
    const valid = record as BatchUsageRecord
    if ((valid.budgetId === undefined) === (valid.scopes === undefined)) throw new InvalidFieldError('budgetId', 'give either budgetId or scopes (not both)')
    const usage = readUsage(valid, undefined, clock)
    const fingerprint = requestFingerprint(valid.scopes === undefined ? { budgetId: valid.budgetId! } : { scopes: valid.scopes as Record<string, string> }, valid, usage)
    if (valid.scopes === undefined) return { index, record: valid, usage, fingerprint, budgetIds: [valid.budgetId!], call: null }
    for (const [type, id] of Object.entries(valid.scopes)) checkScopeId(id, `scopes.${type}`)
    const model = typeof usage.metadata.modelId === 'string' ? usage.metadata.modelId : null
    const tags = usage.metadata.tags as Tags | undefined
    return { index, record: valid, usage, fingerprint, budgetIds: null, call: { scopes: toScopes(valid.scopes as Partial<Record<ScopeType, string>>), currency: valid.currency, model, ...(tags === undefined ? {} : { tags }) } }
  }

  /** Resolves scopes to budgets, then checks each record on its budget: found, its filters matched, active when the spend happened. */
  async function check (reads: Read[], answer: (index: number, error: unknown) => void): Promise<Checked[]> {
    // Scopes: one lookup per distinct call (scopes, currency, model, tags).
    const calls = new Map<string, ScopedCall>()
    const callKey = (call: ScopedCall) => JSON.stringify([call.scopes, call.currency, call.model, call.tags ?? null])
    for (const { call } of reads) if (call !== null) calls.set(callKey(call), call)
    const callList = [...calls.values()]
    const reached = new Map((await createUsageBatchRepository(sql).listScopeBudgets(callList)).map((ids, i) => [callKey(callList[i]!), ids]))
    for (const entry of reads) {
      if (entry.call !== null) entry.budgetIds = reached.get(callKey(entry.call)) ?? []
    }

    // Budgets, filters and windows, each asked once per distinct question.
    const ids = [...new Set(reads.flatMap((entry) => entry.budgetIds?.slice(0, 1) ?? []))]
    const found = new Map<string, BudgetDefinition | null>(await Promise.all(ids.map(async (id) => [id, await budgets.findBudget(id)] as const)))
    const matchKey = (budgetId: string, usage: ReadUsage) => JSON.stringify([budgetId, usage.metadata.modelId ?? null, usage.metadata.tags ?? null])
    const matchQuestions = new Map<string, Promise<boolean>>()
    for (const { budgetIds, usage } of reads) {
      const budget = budgetIds?.[0] === undefined ? null : found.get(budgetIds[0]) ?? null
      if (budget === null || !hasFilters(budget) || matchQuestions.has(matchKey(budget.id, usage))) continue
      matchQuestions.set(matchKey(budget.id, usage), budgets.matchesCall(budget.id, typeof usage.metadata.modelId === 'string' ? usage.metadata.modelId : null, usage.metadata.tags as Tags | undefined))
    }
    const matched = new Map(await Promise.all([...matchQuestions].map(async ([key, question]) => [key, await question] as const)))
    const windowKey = (budgetId: string, at: Date) => `${budgetId} ${at.getTime()}`
    const windowQuestions = new Map<string, { budgetId: string, at: Date }>()
    for (const { budgetIds, usage } of reads) {
      const budgetId = budgetIds?.[0]
      if (budgetId !== undefined && found.get(budgetId) != null) windowQuestions.set(windowKey(budgetId, usage.occurredAt), { budgetId, at: usage.occurredAt })
    }
    const windowList = [...windowQuestions.values()]
    const windows = new Map((await status.findWindows(windowList)).map((window, i) => [windowKey(windowList[i]!.budgetId, windowList[i]!.at), window]))

    const checked: Checked[] = []
    for (const { index, record, usage, fingerprint, budgetIds, call } of reads) {
      try {
        const [budgetId, ...others] = budgetIds ?? []
        if (budgetId === undefined) throw new NoApplicableBudgetError(describe(call!))
        const budget = found.get(budgetId) ?? null
        if (budget === null) throw new BudgetNotFoundError(budgetId)
        checkMatches(budget, !hasFilters(budget) || matched.get(matchKey(budget.id, usage)) === true)
        checkActive(budget, usage.occurredAt, windows.get(windowKey(budget.id, usage.occurredAt)) ?? null)
        checked.push({
          index,
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
   * Stores the checked records in one transaction, the first under each key, in one statement (sql/018): a
   * record it cannot store (no exchange rate, past numeric(28,10)) is refused there, alone. A record under the
   * key of one refused so is the same refusal if it is the same request. Another request under that key would
   * have been tried in its place one at a time: then the statement is rolled back and run again with it (rare:
   * a batch that reuses a key for another request after a refused one). Then each record not stored is the
   * replay of the one that holds its key, or a conflict.
   */
  async function store (checked: Checked[], answer: (index: number, error: unknown) => void, done: (index: number, status: 'created' | 'replayed', record: UsageRecord) => void): Promise<void> {
    const keyOf = ({ values }: Checked) => values.idempotencyKey
    await sql.begin(async (tx) => {
      const batch = createUsageBatchRepository(tx)
      const refusals = new Map<number, Error>() // by the record's index
      const refusedRequests = new Map<string, Error>() // by key and fingerprint
      const requestOf = (entry: Checked) => `${keyOf(entry)!} ${entry.values.requestFingerprint}`
      let stored = new Map<number, UsageRecord>() // by the record's index
      for (let again = true; again;) {
        // The first record under each key that is not a request refused before.
        const seen = new Set<string>()
        const firsts = checked.filter((entry) => {
          const key = keyOf(entry)
          if (key === null) return true
          const refused = refusedRequests.get(requestOf(entry))
          if (refused !== undefined) { refusals.set(entry.index, refused); return false }
          if (seen.has(key)) return false
          seen.add(key)
          return true
        })
        await tx.savepoint(async (sp) => {
          const { stored: byOrder, faults } = await createUsageBatchRepository(sp).insertUsageBatch(firsts.map((entry) => entry.values))
          stored = new Map([...byOrder].map(([order, record]) => [firsts[order]!.index, record]))
          for (const [order, { code, detail }] of faults) {
            const entry = firsts[order]!
            const error = recordFault(code, detail)!
            refusals.set(entry.index, error)
            if (keyOf(entry) !== null) refusedRequests.set(requestOf(entry), error)
          }
          // Another request under a refused one's key, later in the batch: it goes in the refused one's place.
          again = checked.some((entry) => keyOf(entry) !== null && !refusals.has(entry.index) && !refusedRequests.has(requestOf(entry)) &&
            firsts.some((first) => refusals.has(first.index) && keyOf(first) === keyOf(entry) && first.index < entry.index))
          if (again) throw new RetryBatch()
        }).catch((error: unknown) => { if (!(error instanceof RetryBatch)) throw error })
      }

      // The record that holds each key: this batch's, or one stored before.
      const holders = new Map<string, KeyHolder>()
      for (const entry of checked) {
        const record = stored.get(entry.index)
        if (record !== undefined && keyOf(entry) !== null) holders.set(keyOf(entry)!, { record, fingerprint: entry.values.requestFingerprint })
      }
      const missing = checked.filter((entry) => keyOf(entry) !== null && !stored.has(entry.index) && !refusals.has(entry.index) && !holders.has(keyOf(entry)!))
      const before = await batch.findKeyHolders(missing.map((entry) => ({ budgetId: entry.values.budgetId, idempotencyKey: entry.values.idempotencyKey! })))
      for (const [key, holder] of before) holders.set(key, holder)

      for (const entry of checked) {
        const created = stored.get(entry.index)
        if (created !== undefined) { done(entry.index, 'created', created); continue }
        const refused = refusals.get(entry.index)
        if (refused !== undefined) { answer(entry.index, refused); continue }
        try {
          done(entry.index, 'replayed', replayOf(holders.get(keyOf(entry)!)!, entry.values.amount as Money, entry.values.currency, entry.values.idempotencyKey!, entry.values.requestFingerprint))
        } catch (error) {
          answer(entry.index, error)
        }
      }
    })
  }

  return {
    /** Checks and stores each record; answers every one, in input order. A database fault stores none of them (and is thrown). */
    async collect (records: unknown[]): Promise<BatchAnswer> {
      // One instant for the batch: a record without occurredAt happened when the batch arrived.
      const arrived = options.now()
      const clock: UsageRuleOptions = { now: () => arrived, ...(options.modelName === undefined ? {} : { modelName: options.modelName }) }
      const results = new Array<BatchUsageResult | undefined>(records.length)
      const answer = (index: number, error: unknown) => { results[index] = { index, status: 'refused', error: refusal(error) } }
      const reads: Read[] = []
      records.forEach((record, index) => {
        try {
          reads.push(read(index, record, clock))
        } catch (error) {
          answer(index, error)
        }
      })
      const checked = await check(reads, answer)
      if (checked.length > 0) await store(checked, answer, (index, status, record) => { results[index] = { index, status, record } })
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
