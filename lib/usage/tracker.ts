// The Budget Tracker: records usage exactly once, and reads live status, history and summaries.
import { BudgetNotFoundError, InvalidFieldError } from '../kernel/errors.js'
import { fromUnits, toUnits } from '../kernel/money.js'
import type { BudgetRepository } from '../budgets/index.js'
import type { AuditContext } from '../audit/index.js'
import type { BudgetWindow, StatusCacheRow, StatusRepository } from './status-repository.js'
import type { ForecastRepository } from './forecast-repository.js'
import type { UsageFilter, UsagePageKey, UsageRecord, UsageRepository } from './usage-repository.js'
import type { BudgetDefinition } from '../kernel/schemas.js'
import type { Tags } from '../kernel/tags.js'
import { parseTimestamp } from '../kernel/timestamps.js'
import { computeStatus, type BudgetStatusInfo } from './status-rules.js'
import { checkActive, checkMatches, hasFilters, readUsage, replayOf, requestFingerprint, storageError } from './usage-rules.js'
import { isUuid } from '../kernel/database/db.js'

export interface RecordUsageRequest {
  budgetId: string
  amount: string | number
  currency: string
  source?: string
  description?: string
  metadata?: UsageMetadata
  /** When the spend happened; default now. Not in the future. */
  occurredAt?: string | Date
  /** Other budgets this usage applies to (a call's other scopes); each budget in all their lines counts it once. */
  alsoCountsToward?: string[]
}

export interface UsageMetadata {
  requestId?: string
  modelId?: string
  userId?: string
  teamId?: string
  projectId?: string
  organizationId?: string
  inputTokens?: number
  outputTokens?: number
  [key: string]: unknown
}

export interface RecordOptions {
  /** Overrides metadata.requestId as the key that makes a retry store nothing new. */
  idempotencyKey?: string
  /**
   * The caller's scopes, when budgetId is the budget they reach (recordModelCall): a retry is then the same
   * request whichever budget the scopes reach by then, and replays the first record where it was stored.
   */
  scopes?: Record<string, string>
}

export interface UsageHistoryQuery {
  from?: string
  to?: string
  modelId?: string
  userId?: string
  /** Only usage carrying this tag, as key=value. */
  tag?: string
  limit?: number
  cursor?: string
}

export type UsageSummaryQuery = Pick<UsageHistoryQuery, 'from' | 'to' | 'modelId' | 'tag'> & {
  /** Also total the usage by this tag's value. */
  tagKey?: string
}

export interface TrackerOptions {
  /** A cache row older than this is recomputed from the usage rows when read. */
  statusCacheTtlMs: number
  now: () => Date
  /** A model's price-table name: a record's metadata.modelId is kept under it (the name given stays as upstreamModel), as the gate keeps it. */
  modelName?: (name: string) => string
  /** An idempotency key is unique within its budget's tree only (UsageRuleOptions.keysByTree). */
  keysByTree?: boolean
}

/** The stores the tracker reads and writes: the budgets', and the ledger's own. */
export interface TrackerRepositories {
  budgets: BudgetRepository
  usage: UsageRepository
  status: StatusRepository
  forecasts: ForecastRepository
}

export function createBudgetTracker ({ budgets, status, usage, forecasts }: TrackerRepositories, options: TrackerOptions) {

  async function requireBudget (budgetId: string): Promise<BudgetDefinition> {
    const budget = await budgets.findBudget(budgetId)
    if (budget === null) throw new BudgetNotFoundError(budgetId)
    return budget
  }

  /**
   * The cache row of the window, recomputed when missing, older than the TTL, or made for another
   * window that began at the same instant (the budget's period changed since).
   */
  async function currentCacheRow (budgetId: string, window: BudgetWindow): Promise<StatusCacheRow> {
    const row = await status.findCacheRow(budgetId, window.periodStart)
    const stale = row === null ||
      row.periodEnd.getTime() !== window.periodEnd.getTime() ||
      options.now().getTime() - row.updatedAt.getTime() > options.statusCacheTtlMs
    return stale ? await status.refreshCacheRow(budgetId, window) : row
  }

  async function standing (budget: BudgetDefinition): Promise<{ budget: BudgetDefinition, window: BudgetWindow, row: StatusCacheRow }> {
    const window = (await status.findWindow(budget.id, options.now()))!
    const row = await currentCacheRow(budget.id, window)
    return { budget, window, row }
  }

  async function toStatus ({ budget, window, row }: Awaited<ReturnType<typeof standing>>): Promise<BudgetStatusInfo> {
    const crossings = await status.listActiveCrossings(budget.id, window.periodStart)
    const now = options.now()
    const { projectedTotal, burnRate } = await forecasts.projection(budget.id, window, row.currentAmount, now)
    const computed = computeStatus({ budget, ...window, ...row, lastUpdated: row.updatedAt, now, crossings, projectedTotal, burnRate })
    if (budget.enforcement !== 'shadow') return computed
    return { ...computed, shadow: await status.readShadow(budget.rootId, budget.id, window.periodStart, computed.currentAmount) }
  }

  /** The trees of the budgets a record counts toward, its own budget's first (an id that names no budget has none). */
  async function treesOf (budget: BudgetDefinition, also: string[]): Promise<string[]> {
    const others = also.length === 0 ? [] : [...(await budgets.findBudgets(also)).values()].map((other) => other.rootId)
    return [...new Set([budget.rootId, ...others])]
  }

  /** Records a usage once per idempotency key, whatever budget took it; `replayed` tells a retry from the first call. */
  async function record (request: RecordUsageRequest, recordOptions: RecordOptions = {}): Promise<{ record: UsageRecord, replayed: boolean }> {
    const read = readUsage(request, recordOptions.idempotencyKey, options)
    const { amount, metadata, occurredAt, idempotencyKey } = read
    const fingerprint = requestFingerprint(recordOptions.scopes === undefined ? { budgetId: request.budgetId } : { scopes: recordOptions.scopes }, request, read)
    const budget = await requireBudget(request.budgetId)
    if (hasFilters(budget)) {
      checkMatches(budget, await budgets.matchesCall(budget.id, typeof metadata.modelId === 'string' ? metadata.modelId : null, metadata.tags as Tags | undefined))
    }
    checkActive(budget, occurredAt, await status.findWindow(budget.id, occurredAt))
    const values = {
      budgetId: budget.id,
      amount,
      currency: request.currency,
      source: request.source ?? null,
      description: request.description ?? null,
      metadata,
      idempotencyKey,
      requestFingerprint: fingerprint,
      occurredAt,
      alsoCountsToward: request.alsoCountsToward
    }
    const inserted = await usage.insertUsage(values, await treesOf(budget, request.alsoCountsToward ?? [])).catch((error: unknown) => { throw storageError(error) })
    if (inserted !== null) return { record: inserted, replayed: false }
    // The key was used before (perhaps by an identical request a moment ago, now committed), perhaps on another budget.
    const first = (await usage.findKeyHolder(budget.id, idempotencyKey!, fingerprint))!
    return { record: replayOf(first, amount, request.currency, idempotencyKey!, fingerprint), replayed: true }
  }

  /** The query's range, by default the budget's current window. */
  function usageFilter (window: BudgetWindow, query: UsageHistoryQuery): UsageFilter {
    const from = query.from === undefined ? window.periodStart : parseTimestamp(query.from, 'from')
    const to = query.to === undefined ? window.periodEnd : parseTimestamp(query.to, 'to')
    if (to <= from) throw new InvalidFieldError('to', 'must be after from')
    const tag = query.tag === undefined ? undefined : query.tag.split('=')
    if (tag !== undefined && (tag.length !== 2 || tag[0] === '' || tag[1] === '')) throw new InvalidFieldError('tag', 'must be key=value')
    return { from, to, modelId: query.modelId, userId: query.userId, ...(tag === undefined ? {} : { tag: tag as [string, string] }) }
  }

  return {
    record,

    async recordUsage (request: RecordUsageRequest, recordOptions?: RecordOptions): Promise<UsageRecord> {
      return (await record(request, recordOptions)).record
    },

    /** The window the budget's status speaks of now, and its state; reads only (no cache row is made or refreshed). */
    async getWindow (budgetId: string): Promise<BudgetWindow> {
      const budget = await requireBudget(budgetId)
      return (await status.findWindow(budget.id, options.now()))!
    },

    async getBudgetStatus (budgetId: string): Promise<BudgetStatusInfo> {
      return await toStatus(await standing(await requireBudget(budgetId)))
    },

    /** Recomputes the current window's cache row from the usage rows, whatever its age. */
    async refreshCache (budgetId: string, audit: AuditContext = { actor: 'library', requestId: null }): Promise<BudgetStatusInfo> {
      const budget = await requireBudget(budgetId)
      const window = (await status.findWindow(budget.id, options.now()))!
      const row = await status.refreshCacheRowAudited(budget.id, window, audit)
      return await toStatus({ budget, window, row })
    },

    /** Usage that counts toward the budget (its own and its descendants'), newest first, a page at a time. */
    async getUsageHistory (budgetId: string, query: UsageHistoryQuery = {}): Promise<{ records: UsageRecord[], nextCursor: string | null }> {
      const budget = await requireBudget(budgetId)
      const filter = usageFilter((await status.findWindow(budget.id, options.now()))!, query)
      const limit = query.limit ?? 50
      if (!Number.isInteger(limit) || limit < 1 || limit > 500) throw new InvalidFieldError('limit', 'must be an integer from 1 to 500')
      const after = query.cursor === undefined ? null : decodeCursor(query.cursor)
      const page = await usage.listUsage(budget.id, filter, after, limit + 1)
      const records = page.slice(0, limit)
      const last = records[records.length - 1]
      return { records, nextCursor: page.length > limit && last !== undefined ? encodeCursor(last) : null }
    },

    async getUsageSummary (budgetId: string, query: UsageSummaryQuery = {}) {
      const budget = await requireBudget(budgetId)
      const filter = usageFilter((await status.findWindow(budget.id, options.now()))!, query)
      const { byModel, byUser, byDay, byTag } = await usage.summarizeUsage(budget.id, filter, query.tagKey)
      return {
        budgetId: budget.id,
        currency: budget.currency,
        from: filter.from.toISOString(),
        to: filter.to.toISOString(),
        total: fromUnits(byDay.reduce((sum, day) => sum + toUnits(day.total), 0n)),
        count: byDay.reduce((sum, day) => sum + day.count, 0),
        byModel: byModel.map(({ key, ...totals }) => ({ modelId: key, ...totals })),
        byUser: byUser.map(({ key, ...totals }) => ({ userId: key, ...totals })),
        byDay: byDay.map(({ key, ...totals }) => ({ day: key!, ...totals })),
        ...(byTag === undefined ? {} : { byTag: byTag.map(({ key, ...totals }) => ({ value: key, ...totals })) })
      }
    }
  }
}

export type UsageTracker = ReturnType<typeof createBudgetTracker>

// A cursor is the last record's position in the page order; opaque to clients.
function encodeCursor (record: UsageRecord): string {
  return Buffer.from(JSON.stringify([record.occurredAt, record.id])).toString('base64url')
}

function decodeCursor (cursor: string): UsagePageKey {
  try {
    const decoded: unknown = JSON.parse(Buffer.from(cursor, 'base64url').toString())
    if (!Array.isArray(decoded) || decoded.length !== 2) throw new Error('bad cursor')
    const [occurredAt, id] = decoded as [unknown, unknown]
    if (typeof id !== 'string' || !isUuid(id)) throw new Error('bad cursor')
    return { occurredAt: parseTimestamp(occurredAt, 'cursor'), id }
  } catch {
    throw new InvalidFieldError('cursor', 'is not a cursor this API returned')
  }
}
