// SQL for usage in bulk: the budgets a caller's scopes reach, and a batch stored and counted at once (sql/014).
import type { Db } from './budgets.js'
import type { Scope } from './reservations.js'
import { toUsageRecord, usageColumns, type UsageRecord, type UsageRow, type UsageValues } from './usage.js'
import { canonicalTags, type Tags } from '../tags.js'

/** A call's scopes, model and tags, as budget_applicable (sql/007, sql/012) reads them. */
export interface ScopedCall {
  scopes: Scope[]
  currency: string
  model: string | null
  tags?: Tags
}

export function createUsageBatchRepository (sql: Db) {
  return {
    /**
     * For each call, the budgets its scopes match now, in the order a gated call records on them
     * (listApplicable's: the most specific scope first): the first takes the record, the others count it too.
     */
    async listScopeBudgets (calls: ScopedCall[]): Promise<string[][]> {
      if (calls.length === 0) return []
      const input = calls.map((call, index) => ({
        ord: index + 1, types: call.scopes.map((scope) => scope.type), ids: call.scopes.map((scope) => scope.id),
        currency: call.currency, model: call.model, tags: JSON.parse(canonicalTags(call.tags)) as unknown
      }))
      const rows = await sql<Array<{ ord: number, budgetIds: string[] }>>`
        select c.ord, array(
          select a.budget_id from budget_applicable(c.types, c.ids, c.currency, now(), c.model, c.tags) a
          where a.scope_matched order by a.scope_rank, a.budget_id
        )::text[] as "budgetIds"
        from jsonb_to_recordset(${JSON.stringify(input)}::text::jsonb) as c(ord int, types text[], ids text[], currency text, model text, tags jsonb)`
      const found = new Array<string[]>(calls.length).fill([])
      for (const row of rows) found[row.ord - 1] = row.budgetIds
      return found
    },

    /**
     * Stores the records (no two with the same budget and key) in order, allocated and counted as the
     * per-row trigger would one at a time. Returns the stored records by index; a record whose key was
     * used before on its budget is left out (the caller reads the first one). Run it in a transaction.
     */
    async insertUsageBatch (records: UsageValues[]): Promise<Map<number, UsageRecord>> {
      const input = records.map((values, index) => ({
        ord: index,
        budget_id: values.budgetId,
        amount: values.amount,
        currency: values.currency,
        source: values.source,
        description: values.description,
        metadata: values.metadata,
        idempotency_key: values.idempotencyKey,
        occurred_at: values.occurredAt.toISOString(),
        also_counts_toward: values.alsoCountsToward ?? []
      }))
      const stored = await sql<Array<{ ord: number, usageId: string }>>`
        select b.ord, b.usage_id::text as "usageId" from budget_record_usage_batch(${JSON.stringify(input)}::text::jsonb) b`
      // A statement does not see the rows a function it calls inserted: they are read by the next one.
      const rows = await sql<Array<UsageRow & { ord: number }>>`
        select s.ord::int as ord, ${usageColumns(sql)}
        from unnest(${stored.map((row) => row.usageId)}::text[]::uuid[], ${stored.map((row) => row.ord)}::int[]) as s(id, ord)
        join budget_usage_records u on u.id = s.id`
      return new Map(rows.map(({ ord, ...row }) => [ord, toUsageRecord(row)]))
    },

    /** The records stored under these budgets and keys, by `${budgetId} ${key}`. */
    async findUsageByKeys (keys: Array<{ budgetId: string, idempotencyKey: string }>): Promise<Map<string, UsageRecord>> {
      if (keys.length === 0) return new Map()
      const rows = await sql<Array<UsageRow & { key: string }>>`
        select k.idempotency_key as key, ${usageColumns(sql)}
        from unnest(${keys.map((key) => key.budgetId)}::text[]::uuid[], ${keys.map((key) => key.idempotencyKey)}::text[]) as k(budget_id, idempotency_key)
        join budget_usage_records u on u.budget_id = k.budget_id and u.idempotency_key = k.idempotency_key`
      return new Map(rows.map(({ key, ...row }) => [`${row.budgetId} ${key}`, toUsageRecord(row)]))
    }
  }
}

export type UsageBatchRepository = ReturnType<typeof createUsageBatchRepository>
