// SQL for spend reports: usage records (each once, whatever budgets it counted toward) totalled per
// group and currency, summed in PostgreSQL, read back a page of rows at a time (a cursor), so a report
// over millions of records streams in memory that does not grow with its result.
import { normalizeMoney } from '../money.js'
import type { Db } from './budgets.js'

export type SpendGroupBy = 'scope' | 'model' | 'day' | 'tag'

export interface SpendFilter {
  from: Date
  to: Date
  groupBy: SpendGroupBy
  /** For groupBy=tag: the tag whose values are the groups. */
  tagKey?: string
  /** Only usage that counted toward a budget of this scope. */
  scope?: { type: string, id: string }
  currency?: string
}

export interface SpendRow {
  key: string | null
  currency: string
  total: string
  calls: number
  inputTokens: string
  outputTokens: string
}

export function createReportRepository (sql: Db) {
  const tokens = (field: string) => sql`
    coalesce(sum(case when jsonb_typeof(u.metadata -> ${field}) = 'number' then (u.metadata ->> ${field})::numeric end), 0)::text`

  const query = (filter: SpendFilter) => {
    const key = {
      scope: sql`b.scope_type || ':' || b.scope_id`,
      model: sql`u.model_id`,
      day: sql`to_char(u.occurred_at at time zone 'UTC', 'YYYY-MM-DD')`,
      tag: sql`u.metadata -> 'tags' ->> ${filter.tagKey ?? ''}`
    }[filter.groupBy]
    return sql<SpendRow[]>`
      select ${key} as key, u.currency, sum(u.amount)::text as total, count(*)::int as calls,
             ${tokens('inputTokens')} as "inputTokens", ${tokens('outputTokens')} as "outputTokens"
      from budget_usage_records u join budget_definitions b on b.id = u.budget_id
      where u.occurred_at >= ${filter.from} and u.occurred_at < ${filter.to}
        ${filter.currency === undefined ? sql`` : sql`and u.currency = ${filter.currency}`}
        ${filter.scope === undefined
          ? sql``
          : sql`and exists (select 1 from budget_usage_allocations a join budget_definitions s on s.id = a.budget_id
                            where a.usage_id = u.id and s.scope_type = ${filter.scope.type} and s.scope_id = ${filter.scope.id})`}
      group by 1, 2 order by 1 nulls last, 2`
  }

  return {
    /** Every group, a page of `batch` rows at a time. */
    async * spendRows (filter: SpendFilter, batch = 1000): AsyncIterable<SpendRow[]> {
      for await (const rows of query(filter).cursor(batch)) yield rows.map((row) => ({ ...row, total: normalizeMoney(row.total) }))
    }
  }
}

export type ReportRepository = ReturnType<typeof createReportRepository>
