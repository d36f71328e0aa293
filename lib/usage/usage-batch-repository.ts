// SQL for usage in bulk: the budgets a caller's scopes reach, and a batch stored and counted at once (budget_record_usage_batch, sql/functions/usage-recording.sql).
import { findKeyHolders, toUsageRecord, usageColumns, type KeyHolder, type UsageRecord, type UsageRow, type UsageValues } from './usage-repository.js'
import { canonicalTags, type Tags } from '../kernel/tags.js'
import type { Db } from '../kernel/database/db.js'
import type { Scope } from '../kernel/scopes.js'

/** A call's scopes, model and tags, as budget_applicable (sql/functions/lines.sql) reads them. */
export interface ScopedCall {
  scopes: Scope[]
  /** Passed on, and ignored: a budget applies whatever its currency. */
  currency: string
  model: string | null
  tags?: Tags
}

/** What the batch did with its records: those stored, by index, and those it refused (RB001 with detail 'FROM/TO', or 22003). */
export interface BatchStored {
  stored: Map<number, UsageRecord>
  faults: Map<number, { code: string, detail: string | null }>
}

export function createUsageBatchRepository (sql: Db) {
  return {
    /**
     * For each call, the budgets its scopes match now, the one that takes the record first; the others count
     * it too. The rule (README, Recording in bulk): the most specific scope the call gives (user, project,
     * team, organization: budget_applicable's scope_rank); among several budgets on that scope, one with
     * filters (the call matched them: the narrower) before one without, then the one created first. The id
     * only parts two created at the same instant.
     */
    async listScopeBudgets (calls: ScopedCall[]): Promise<string[][]> {
      if (calls.length === 0) return []
      const input = calls.map((call, index) => ({
        ord: index + 1, types: call.scopes.map((scope) => scope.type), ids: call.scopes.map((scope) => scope.id),
        currency: call.currency, model: call.model, tags: JSON.parse(canonicalTags(call.tags)) as unknown
      }))
      // The budgets each call reaches, with their trees; then their definitions, read by tree and id (on Citus a
      // join of budget_applicable to the definitions by id alone is refused), in the order the rule gives.
      const reached = await sql<Array<{ ord: number, budgetId: string, rootId: string, scopeRank: number }>>`
        select c.ord, a.budget_id::text as "budgetId", a.root_id::text as "rootId", a.scope_rank as "scopeRank"
        from jsonb_to_recordset(${JSON.stringify(input)}::text::jsonb) as c(ord int, types text[], ids text[], currency text, model text, tags jsonb)
        cross join lateral budget_applicable(c.types, c.ids, c.currency, now(), c.model, c.tags) a
        where a.scope_matched`
      const found = Array.from({ length: calls.length }, (): string[] => [])
      if (reached.length === 0) return found
      const ordered = await sql<Array<{ ord: number, budgetId: string }>>`
        select r.ord, r.budget_id::text as "budgetId"
        from unnest(${reached.map((row) => row.ord)}::int[], ${reached.map((row) => row.budgetId)}::text[]::uuid[],
                    ${reached.map((row) => row.rootId)}::text[]::uuid[], ${reached.map((row) => row.scopeRank)}::int[]) as r(ord, budget_id, root_id, scope_rank)
        join budget_definitions b on b.root_id = r.root_id and b.id = r.budget_id
        order by r.ord, r.scope_rank, (b.filter_models is null and b.filter_tags is null), b.created_at, r.budget_id`
      for (const row of ordered) found[row.ord - 1]!.push(row.budgetId)
      return found
    },

    /** For each (budget, model, tags), does a call match the budget's filters? (budget_filters_match, sql/functions/definitions.sql, given its columns: on a Citus shard a row is not of budget_definitions' type), in one statement, in their order. */
    async matchCalls (calls: Array<{ budgetId: string, model: string | null, tags: Tags | undefined }>): Promise<boolean[]> {
      if (calls.length === 0) return []
      const rows = await sql<Array<{ ord: number, matches: boolean }>>`
        select c.ord::int as ord, budget_filters_match(b.filter_models, b.filter_tags, c.model, c.tags) as matches
        from unnest(${calls.map((call) => call.budgetId)}::text[]::uuid[], ${calls.map((call) => call.model)}::text[],
                    ${calls.map((call) => call.tags === undefined ? null : JSON.stringify(call.tags))}::text[]::jsonb[]) with ordinality as c(budget_id, model, tags, ord)
        join budget_definitions b on b.id = c.budget_id`
      const matched = new Array<boolean>(calls.length).fill(false)
      for (const row of rows) matched[row.ord - 1] = row.matches
      return matched
    },

    /**
     * Stores the records in the order they came (several may share a key), allocated and counted as the per-row trigger would
     * one at a time (budget_record_usage_batch). A record whose key was held when it came (before, or by an earlier record) is
     * neither stored nor refused (the caller reads the holder). Run it in a transaction.
     */
    async insertUsageBatch (records: UsageValues[]): Promise<BatchStored> {
      const input = records.map((values, index) => ({
        ord: index,
        budget_id: values.budgetId,
        amount: values.amount,
        currency: values.currency,
        source: values.source,
        description: values.description,
        metadata: values.metadata,
        idempotency_key: values.idempotencyKey,
        request_fingerprint: values.idempotencyKey === null ? null : values.requestFingerprint,
        occurred_at: values.occurredAt.toISOString(),
        also_counts_toward: values.alsoCountsToward ?? []
      }))
      const answered = await sql<Array<{ ord: number, usageId: string | null, fault: string | null, detail: string | null }>>`
        select b.ord, b.usage_id::text as "usageId", b.fault, b.detail from budget_record_usage_batch(${JSON.stringify(input)}::text::jsonb) b`
      const stored = answered.filter((row) => row.usageId !== null)
      const faults = new Map(answered.filter((row) => row.fault !== null).map((row) => [row.ord, { code: row.fault!, detail: row.detail }]))
      // A statement does not see the rows a function it calls inserted: they are read by the next one.
      const rows = await sql<Array<UsageRow & { ord: number }>>`
        select s.ord::int as ord, ${usageColumns(sql)}
        from unnest(${stored.map((row) => row.usageId!)}::text[]::uuid[], ${stored.map((row) => row.ord)}::int[]) as s(id, ord)
        join budget_usage_records u on u.id = s.id`
      return { stored: new Map(rows.map(({ ord, ...row }) => [ord, toUsageRecord(row)])), faults }
    },

    /** The records that hold these keys, in the order asked (findKeyHolders). */
    async findKeyHolders (keys: Array<{ budgetId: string, idempotencyKey: string, fingerprint: string }>): Promise<Array<KeyHolder | undefined>> {
      return await findKeyHolders(sql, keys)
    }
  }
}

export type UsageBatchRepository = ReturnType<typeof createUsageBatchRepository>
