// SQL for budget_usage_records: recording (budget_record_usage_in_trees stores a record and counts it), history pages and summaries.
import { normalizeMoney, type Money } from '../kernel/money.js'
import { NIL_ROOT, type Db } from '../kernel/database/db.js'
import { wellFormedText } from '../kernel/json-limits.js'

export interface UsageValues {
  budgetId: string
  amount: Money
  currency: string
  source: string | null
  description: string | null
  metadata: Record<string, unknown>
  idempotencyKey: string | null
  /** What identifies the request under its key (lib/usage/usage-rules.ts requestFingerprint). */
  requestFingerprint: string
  occurredAt: Date
  /** Budgets the usage also counts toward, besides its own budget's line. */
  alsoCountsToward?: string[]
}

/** A served call no budget covered: stored with no budget, once per request id. */
export interface UnbudgetedValues {
  /** The record's id, made by the caller: sent again after a connection cut, it finds its own record by it. */
  id: string
  requestId: string
  amount: Money
  currency: string
  source: string
  description: string | null
  metadata: Record<string, unknown>
  occurredAt: Date
}

/** The record that holds a key, and the fingerprint of the request that made it ('legacy': stored before keys were the record's; null: a gated call's). */
export interface KeyHolder {
  record: UsageRecord
  fingerprint: string | null
}

export interface UsageRecord {
  id: string
  budgetId: string
  amount: Money
  currency: string
  source: string | null
  description: string | null
  metadata: Record<string, unknown>
  occurredAt: string
  recordedAt: string
}

export interface UsageRow extends Omit<UsageRecord, 'occurredAt' | 'recordedAt'> {
  occurredAt: Date
  recordedAt: Date
}

export interface UsageFilter {
  from: Date
  to: Date
  modelId?: string
  userId?: string
  /** Only usage carrying this tag: [key, value]. */
  tag?: [string, string]
}

export interface UsagePageKey {
  occurredAt: Date
  id: string
}

export interface UsageGroupTotal {
  key: string | null
  total: Money
  count: number
}

/** A usage record's columns (of `u`), as toUsageRecord reads them. */
export function usageColumns (sql: Db) {
  return sql`
    u.id, u.budget_id as "budgetId", u.amount::text as amount, u.currency, u.source, u.description, u.metadata,
    u.occurred_at as "occurredAt", u.recorded_at as "recordedAt"`
}

/**
 * The record that holds each key asked for, in the order asked (undefined: none). A key names one record across
 * budgets; a record stored before that (no fingerprint) holds its key on its own budget only. On Citus a key is
 * unique within its tree only, so several trees may each hold it: the record of the same request (its
 * fingerprint) comes first, then one on the budget asked for (a request on another budget is a conflict either way).
 */
export async function findKeyHolders (sql: Db, keys: Array<{ budgetId: string, idempotencyKey: string, fingerprint: string }>): Promise<Array<KeyHolder | undefined>> {
  if (keys.length === 0) return []
  // A join rather than a lateral read per key: on Citus the records are read on every shard, where a lateral
  // subquery cannot be pushed down.
  const rows = await sql<Array<UsageRow & { n: number, fingerprint: string | null }>>`
    select distinct on (k.n) k.n::int as n, ${usageColumns(sql)}, u.request_fingerprint as fingerprint
    from unnest(${keys.map((key) => key.budgetId)}::text[]::uuid[], ${keys.map((key) => key.idempotencyKey)}::text[], ${keys.map((key) => key.fingerprint)}::text[])
      with ordinality as k(budget_id, idempotency_key, fingerprint, n)
    join budget_usage_records u on u.idempotency_key = k.idempotency_key and (u.request_fingerprint is not null or u.budget_id = k.budget_id)
    order by k.n, u.request_fingerprint is null, u.request_fingerprint is distinct from k.fingerprint, u.budget_id is distinct from k.budget_id, u.recorded_at, u.id`
  const found = new Array<KeyHolder | undefined>(keys.length)
  for (const { n, fingerprint, ...row } of rows) found[n - 1] = { record: toUsageRecord(row), fingerprint }
  return found
}

export function createUsageRepository (sql: Db) {
  const columns = usageColumns(sql)

  // The usage that counts toward a budget (its own and its descendants'), through its allocations: the
  // allocations read first, by themselves (a CTE kept apart), then their records. A record's allocations may be
  // in other trees than it (a call whose line spans two): on Citus the allocations are then one result that
  // each shard of the records is joined to, where joining the two tables directly would repartition them
  // (seconds a read). `page`: the keyset's position and the page's size, applied to the allocations already
  // when no filter reads the records.
  const recordFilter = (filter: UsageFilter) => filter.modelId !== undefined || filter.userId !== undefined || filter.tag !== undefined
  const countingToward = (budgetId: string, filter: UsageFilter, page?: { after: UsagePageKey | null, limit: number }) => {
    const early = page !== undefined && !recordFilter(filter)
    return sql`
      with a as materialized (
        select a.usage_id, a.amount, a.occurred_at from budget_usage_allocations a
        where a.budget_id = ${budgetId} and a.occurred_at >= ${filter.from} and a.occurred_at < ${filter.to}
        ${page?.after == null ? sql`` : sql`and (a.occurred_at, a.usage_id) < (${page.after.occurredAt}, ${page.after.id})`}
        ${early ? sql`order by a.occurred_at desc, a.usage_id desc limit ${page.limit}` : sql``}
      )
      select ${columns}, u.model_id, u.user_id, a.amount as counted, a.occurred_at as counted_at
      from a join budget_usage_records u on u.id = a.usage_id
      where true
      ${filter.modelId === undefined ? sql`` : sql`and u.model_id = ${filter.modelId}`}
      ${filter.userId === undefined ? sql`` : sql`and u.user_id = ${filter.userId}`}
      ${filter.tag === undefined ? sql`` : sql`and u.metadata -> 'tags' ->> ${filter.tag[0]} = ${filter.tag[1]}`}`
  }

  return {
    /**
     * Stores the record and counts it toward every budget it reaches, in one statement
     * (budget_record_usage_in_trees, sql/functions/usage-recording.sql), or stores nothing when its idempotency
     * key was used before, on any budget (then null). `trees`: the trees of its budgets, its own budget's
     * first; on Citus the call runs on that tree's node.
     */
    async insertUsage (values: UsageValues, trees: string[]): Promise<UsageRecord | null> {
      // the text fields as the driver would send them as parameters (a library caller's text may end in half a
      // character); the metadata as it always went, in JSON
      const text = (value: string | null) => value === null ? null : wellFormedText(value)
      const record = {
        budget_id: values.budgetId,
        amount: values.amount,
        currency: values.currency,
        source: text(values.source),
        description: text(values.description),
        metadata: values.metadata,
        idempotency_key: text(values.idempotencyKey),
        request_fingerprint: values.idempotencyKey === null ? null : text(values.requestFingerprint),
        occurred_at: values.occurredAt.toISOString(),
        also_counts_toward: values.alsoCountsToward ?? []
      }
      const [row] = await sql<UsageRow[]>`
        select ${columns}
        from budget_record_usage_in_trees(${JSON.stringify(record)}::text::jsonb, ${trees}::text[]::uuid[], ${trees[0] ?? NIL_ROOT}::uuid) u`
      return row === undefined ? null : toUsageRecord(row)
    },

    /**
     * Stores served calls that no budget covered, in one statement: budget_id null, under the ids the caller
     * made, keyed by the call's request id, so a record sent again is stored once
     * (budget_usage_records_unbudgeted_key). No allocation: such a record counts toward no budget, then or
     * later. Resolves with the ids of the records that are these calls'. `afterCut`: an earlier attempt's reply
     * was cut, and it may have committed; a record it stored is found by its id (a second statement). A record
     * missing from the answer lost its request id to another record (a replay).
     */
    async insertUnbudgeted (records: UnbudgetedValues[], { afterCut = false }: { afterCut?: boolean } = {}): Promise<Set<string>> {
      if (records.length === 0) return new Set()
      const rows = await sql<Array<{ id: string }>>`
        insert into budget_usage_records (id, budget_id, amount, currency, source, description, metadata, idempotency_key, occurred_at)
        select r.id, null, r.amount, r.currency, r.source, r.description, r.metadata, r.request_id, r.occurred_at
        from unnest(${records.map((r) => r.id)}::text[]::uuid[], ${records.map((r) => r.amount)}::text[]::numeric[], ${records.map((r) => r.currency)}::text[],
                    ${records.map((r) => r.source)}::text[], ${records.map((r) => r.description)}::text[], ${records.map((r) => JSON.stringify(r.metadata))}::text[]::jsonb[],
                    ${records.map((r) => r.requestId)}::text[], ${records.map((r) => r.occurredAt.toISOString())}::text[]::timestamptz[])
          as r(id, amount, currency, source, description, metadata, request_id, occurred_at)
        on conflict (idempotency_key, root_id) where budget_id is null and idempotency_key is not null do nothing
        returning id`
      const stored = new Set(rows.map((row) => row.id))
      const unanswered = records.filter((record) => !stored.has(record.id)).map((record) => record.id)
      if (afterCut && unanswered.length > 0) {
        for (const row of await sql<Array<{ id: string }>>`select id from budget_usage_records where id = any (${unanswered}::text[]::uuid[])`) stored.add(row.id)
      }
      return stored
    },

    /**
     * The record that holds the key: the one the usage API stored under it, whatever its budget; failing
     * that (a key also used by a gated call on this budget), the budget's own record under it.
     */
    async findKeyHolder (budgetId: string, idempotencyKey: string, fingerprint: string): Promise<KeyHolder | null> {
      return (await findKeyHolders(sql, [{ budgetId, idempotencyKey, fingerprint }]))[0] ?? null
    },

    /** One page, newest first, strictly after `after` in that order (a keyset: stable while records arrive). */
    async listUsage (budgetId: string, filter: UsageFilter, after: UsagePageKey | null, limit: number): Promise<UsageRecord[]> {
      const rows = await sql<UsageRow[]>`
        select c."id", c."budgetId", c.amount, c.currency, c.source, c.description, c.metadata, c."occurredAt", c."recordedAt"
        from (${countingToward(budgetId, filter, { after, limit })}) c
        order by c.counted_at desc, c.id desc
        limit ${limit}`
      return rows.map(toUsageRecord)
    },

    async summarizeUsage (budgetId: string, filter: UsageFilter, tagKey?: string) {
      const group = async (key: ReturnType<typeof sql>) => {
        const rows = await sql<Array<{ key: string | null, total: string, count: number }>>`
          select ${key} as key, sum(c.counted)::text as total, count(*)::int as count
          from (${countingToward(budgetId, filter)}) c
          group by 1 order by 1 nulls last`
        return rows.map((row): UsageGroupTotal => ({ key: row.key, total: normalizeMoney(row.total), count: row.count }))
      }
      const [byModel, byUser, byDay, byTag] = await Promise.all([
        group(sql`c.model_id`),
        group(sql`c.user_id`),
        group(sql`to_char(c.counted_at at time zone 'UTC', 'YYYY-MM-DD')`),
        tagKey === undefined ? undefined : group(sql`c.metadata -> 'tags' ->> ${tagKey}`)
      ])
      return { byModel, byUser, byDay, byTag }
    }
  }
}

export type UsageRepository = ReturnType<typeof createUsageRepository>

export function toUsageRecord (row: UsageRow): UsageRecord {
  return { ...row, amount: normalizeMoney(row.amount), occurredAt: row.occurredAt.toISOString(), recordedAt: row.recordedAt.toISOString() }
}
