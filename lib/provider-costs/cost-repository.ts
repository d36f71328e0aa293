// SQL for provider cost buckets and the collectors' cursors (sql/migrations/006_provider_costs.sql). Buckets
// are stored by budget_provider_costs_store (sql/functions/provider-costs.sql), which decides insert, keep or
// correct; a collector's page goes in one transaction with the cursor move past it.
import type { AuditContext } from '../audit/index.js'
import { withinBound } from '../kernel/database/bounded.js'
import type { Db } from '../kernel/database/db.js'
import type { CostBucket, CostSource } from './cost-bucket.js'
import type { ReportWindow } from './report-page.js'

export interface StoreCounts {
  inserted: number
  corrected: number
  unchanged: number
}

export interface StoredCost extends CostBucket {
  id: string
  collectedAt: string
  correctedAt: string | null
}

export interface CollectorCursor {
  window: ReportWindow
  nextPage: string | null
  pages: number
  completedThrough: Date | null
}

export interface CostFilter {
  provider?: string
  source?: CostSource
  from?: string
  to?: string
}

/** The cursor is not where this run left it: another process is collecting the same account. */
export class CursorMovedError extends Error {
  constructor (source: string, account: string) {
    super(`the ${source} cursor of account ${account} moved under this run: another process collects it`)
    this.name = 'CursorMovedError'
  }
}

interface CostRow { id: string, source: CostSource, provider: string, account: string, date: Date | string, project: string, lineItem: string, model: string,
  costType: string, tokenType: string, serviceTier: string, contextWindow: string, currency: string, amount: string, collectedAt: Date, correctedAt: Date | null }

const asRows = (buckets: CostBucket[]) => buckets.map((bucket) => ({
  source: bucket.source, provider: bucket.provider, account: bucket.account, bucket_date: bucket.date, project: bucket.project, line_item: bucket.lineItem,
  model: bucket.model, cost_type: bucket.costType, token_type: bucket.tokenType, service_tier: bucket.serviceTier, context_window: bucket.contextWindow,
  currency: bucket.currency, amount: bucket.amount
}))

/**
 * Buckets sent to budget_provider_costs_store in one statement. Its rows go as one JSON text, and a
 * 20,000-line CSV as one text was 6.7 MB stringified in one stretch of the event loop (17 ms); 2,000 rows
 * are about 0.7 MB, 2 ms, and the loop runs while each statement does.
 */
export const STORE_BATCH = 2_000

export function createProviderCostRepository (sql: Db) {
  const store = async (db: Db, buckets: CostBucket[], context: AuditContext): Promise<StoreCounts> => {
    if (buckets.length === 0) return { inserted: 0, corrected: 0, unchanged: 0 }
    const [counts] = await db<StoreCounts[]>`
      select inserted, corrected, unchanged from budget_provider_costs_store(${JSON.stringify(asRows(buckets))}::text::jsonb, ${context.actor}, ${context.requestId})`
    return counts!
  }

  return {
    /**
     * Stores buckets in the caller's transaction (hand it the transaction's sql): the CSV import's whole file,
     * STORE_BATCH at a time. The function locks each batch's rows in key order, but two files' batches split
     * their keys differently, so two imports of overlapping files could lock in opposite orders: imports take
     * one lock first and store one after the other. (A collector's page is one batch, of other sources' keys.)
     */
    async storeBuckets (buckets: CostBucket[], context: AuditContext): Promise<StoreCounts> {
      await sql`select pg_advisory_xact_lock(hashtextextended('relaycore-budgets:provider-costs-import', 0))`
      const total: StoreCounts = { inserted: 0, corrected: 0, unchanged: 0 }
      for (let from = 0; from < buckets.length; from += STORE_BATCH) {
        if (from > 0 && !('begin' in sql)) await withinBound(sql)
        const counts = await store(sql, buckets.slice(from, from + STORE_BATCH), context)
        total.inserted += counts.inserted
        total.corrected += counts.corrected
        total.unchanged += counts.unchanged
      }
      return total
    },

    async readCursor (source: CostSource, account: string): Promise<CollectorCursor | null> {
      const [row] = await sql<Array<{ windowStart: Date, windowEnd: Date, nextPage: string | null, pages: string, completedThrough: Date | null }>>`
        select window_start as "windowStart", window_end as "windowEnd", next_page as "nextPage", pages::text as pages, completed_through as "completedThrough"
        from budget_provider_cost_cursors where source = ${source} and account = ${account}`
      return row === undefined ? null : { window: { start: row.windowStart, end: row.windowEnd }, nextPage: row.nextPage, pages: Number(row.pages), completedThrough: row.completedThrough }
    },

    /** A new window to read from its first page (the cursor keeps completed_through). */
    async startWindow (source: CostSource, account: string, window: ReportWindow): Promise<void> {
      await sql`
        insert into budget_provider_cost_cursors (source, account, window_start, window_end, updated_at)
        values (${source}, ${account}, ${window.start}, ${window.end}, clock_timestamp())
        on conflict (source, account) do update set window_start = excluded.window_start, window_end = excluded.window_end, next_page = null, pages = 0,
          updated_at = excluded.updated_at`
    },

    /**
     * Stores a page's buckets and moves the cursor past it, in one transaction: the cursor must still be at
     * `page` of `window` (else CursorMovedError, and nothing is stored). Without a next page the window is complete.
     */
    async storePage (source: CostSource, account: string, window: ReportWindow, page: string | null, buckets: CostBucket[], nextPage: string | null, context: AuditContext): Promise<StoreCounts> {
      if (!('begin' in sql)) throw new TypeError('storePage opens its own transaction: give the repository the client, not a transaction')
      return await sql.begin(async (tx) => {
        const [cursor] = await tx<Array<{ windowStart: Date, windowEnd: Date, nextPage: string | null }>>`
          select window_start as "windowStart", window_end as "windowEnd", next_page as "nextPage" from budget_provider_cost_cursors
          where source = ${source} and account = ${account} for update`
        if (cursor === undefined || cursor.windowStart.getTime() !== window.start.getTime() || cursor.windowEnd.getTime() !== window.end.getTime() || cursor.nextPage !== page) {
          throw new CursorMovedError(source, account)
        }
        const counts = await store(tx, buckets, context)
        await tx`
          update budget_provider_cost_cursors set next_page = ${nextPage}, pages = pages + 1, last_error = null, updated_at = statement_timestamp(),
            completed_through = case when ${nextPage}::text is null then greatest(completed_through, window_end) else completed_through end
          where source = ${source} and account = ${account}`
        return counts
      }) as StoreCounts
    },

    async recordFailure (source: CostSource, account: string, message: string): Promise<void> {
      await sql`update budget_provider_cost_cursors set last_error = ${message.slice(0, 2000)}, updated_at = statement_timestamp() where source = ${source} and account = ${account}`
    },

    /** Buckets by day and id, after the bucket `after` (its id) when given. */
    async list (filter: CostFilter, after: string | null, limit: number): Promise<StoredCost[]> {
      const rows = await sql<CostRow[]>`
        select c.id::text as id, c.source, c.provider, c.account, c.bucket_date::text as date, c.project, c.line_item as "lineItem", c.model,
               c.cost_type as "costType", c.token_type as "tokenType", c.service_tier as "serviceTier", c.context_window as "contextWindow",
               c.currency, c.amount::text as amount, c.collected_at as "collectedAt", c.corrected_at as "correctedAt"
        from budget_provider_costs c
        ${after === null ? sql`` : sql`cross join (select bucket_date, id from budget_provider_costs where id = ${after}::bigint) k`}
        where true
          ${filter.provider === undefined ? sql`` : sql`and c.provider = ${filter.provider}`}
          ${filter.source === undefined ? sql`` : sql`and c.source = ${filter.source}`}
          ${filter.from === undefined ? sql`` : sql`and c.bucket_date >= ${filter.from}::date`}
          ${filter.to === undefined ? sql`` : sql`and c.bucket_date <= ${filter.to}::date`}
          ${after === null ? sql`` : sql`and (c.bucket_date, c.id) > (k.bucket_date, k.id)`}
        order by c.bucket_date, c.id
        limit ${limit}`
      return rows.map((row) => ({ ...row, date: String(row.date), collectedAt: row.collectedAt.toISOString(), correctedAt: row.correctedAt?.toISOString() ?? null }))
    },

    async costExists (id: string): Promise<boolean> {
      const [row] = await sql<Array<{ found: boolean }>>`select exists (select 1 from budget_provider_costs where id = ${id}::bigint) as found`
      return row!.found
    }
  }
}

export type ProviderCostRepository = ReturnType<typeof createProviderCostRepository>
