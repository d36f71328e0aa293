// SQL for spend reports: usage records (each once, whatever budgets it counted toward, with or without a
// budget) totalled per group and currency, summed and ranked in PostgreSQL, read back a page of rows at a
// time (a cursor), so a report over millions of records streams in memory that does not grow with its result.
import { normalizeMoney } from '../kernel/money.js'
import type { SPEND_GROUP_BYS, SPEND_PRESETS, SPEND_SORTS } from '../kernel/schemas.js'
import type { Db } from '../kernel/database/db.js'

export type SpendGroupBy = typeof SPEND_GROUP_BYS[number]
export type SpendSort = typeof SPEND_SORTS[number]
export type SpendPreset = typeof SPEND_PRESETS[number]

export interface SpendFilter {
  from: Date
  to: Date
  groupBy: SpendGroupBy
  /** For groupBy=tag: the tag whose values are the groups. */
  tagKey?: string
  /** Only usage that counted toward a budget of this scope (so never usage that no budget covered). */
  scope?: { type: string, id: string }
  currency?: string
  /**
   * A scoped reader's area (lib/access): only usage that counted toward one of these budgets; grouped by
   * budget, the key of a budget outside them left empty, as for usage no budget covered; and a scope's
   * budgets (the scope filter) only those among them, so another tree's scope reads as one without budgets.
   */
  within?: readonly string[]
  /** total: largest first; key: by group, then currency. */
  sort: SpendSort
  /** At most this many groups; the rest are summed per currency as `others`. */
  limit?: number
  /** The zone whose calendar days groupBy=day follows (an IANA name PostgreSQL knows). */
  timeZone: string
}

export interface SpendRow {
  key: string | null
  currency: string
  total: string
  calls: number
  inputTokens: string
  outputTokens: string
}

/**
 * A line of the report as read: a group (other false), or, after every group, the groups past the limit
 * in one currency (other true, key null, groups: how many). One flat object per line, as PostgreSQL
 * sends it: a million-group CSV makes no second object per row.
 */
export interface SpendLine extends SpendRow { other: boolean, groups: number | null }

export function createReportRepository (sql: Db) {
  const tokens = (field: string) => sql`
    coalesce(sum(case when jsonb_typeof(u.metadata -> ${field}) = 'number' then (u.metadata ->> ${field})::numeric end), 0)`

  const query = (filter: SpendFilter) => {
    // Every grouping but scope reads the record alone: the caller's scopes are the record's own,
    // whatever budget it was recorded on; a record no budget covered is a record like any other.
    const key = {
      // the budget the usage was recorded on; null for a call that no budget covered
      scope: sql`b.scope_type || ':' || b.scope_id`,
      organization: sql`u.organization_id`,
      team: sql`u.team_id`,
      user: sql`u.user_id`,
      project: sql`u.project_id`,
      model: sql`u.model_id`,
      day: sql`to_char(u.occurred_at at time zone ${filter.timeZone}, 'YYYY-MM-DD')`,
      tag: sql`u.metadata -> 'tags' ->> ${filter.tagKey ?? ''}`
    }[filter.groupBy]
    // on g (the groups), never on the output columns: those are text, and '10' sorts before '9'
    const order = filter.sort === 'total' ? sql`g.total desc, g.key nulls last, g.currency` : sql`g.key nulls last, g.currency`
    const grouped = sql`
        select ${key} as key, u.currency, sum(u.amount) as total, count(*) as calls,
               ${tokens('inputTokens')} as input_tokens, ${tokens('outputTokens')} as output_tokens
        from budget_usage_records u
        ${filter.groupBy === 'scope'
          ? sql`left join budget_definitions b on b.root_id = u.root_id and b.id = u.budget_id ${filter.within === undefined ? sql`` : sql`and b.id = any (${filter.within}::uuid[])`}`
          : sql``}
        where u.occurred_at >= ${filter.from} and u.occurred_at < ${filter.to}
          ${filter.currency === undefined ? sql`` : sql`and u.currency = ${filter.currency}`}
          ${filter.scope === undefined
            ? sql``
            // not correlated: a record's allocations may be in other trees than it (on Citus, other nodes)
            : sql`and u.id in (select a.usage_id from budget_usage_allocations a join budget_definitions s on s.root_id = a.root_id and s.id = a.budget_id
                               where s.scope_type = ${filter.scope.type} and s.scope_id = ${filter.scope.id}
                                 ${filter.within === undefined ? sql`` : sql`and s.id = any (${filter.within}::uuid[])`})`}
          ${filter.within === undefined ? sql`` : sql`and u.id in (select a.usage_id from budget_usage_allocations a where a.budget_id = any (${filter.within}::uuid[]))`}
        group by 1, 2`
    const columns = sql`key, currency, total::text as total, calls::int as calls,
             input_tokens::text as "inputTokens", output_tokens::text as "outputTokens"`
    if (filter.limit === undefined) return sql<SpendLine[]>`select false as other, ${columns}, null::int as groups from (${grouped}) g order by ${order}`
    // Top N: the N first groups (a top-N sort, not a sort of every group), then one line per currency for
    // the groups left out: that currency's sums over every group less its sums over the groups kept, exact
    // (numeric). A subtraction, not an anti-join: no group is compared with another.
    const sums = sql`sum(total) as total, sum(calls) as calls, sum(input_tokens) as input_tokens, sum(output_tokens) as output_tokens, count(*) as groups`
    return sql<SpendLine[]>`
      with grouped as (${grouped}),
      kept as (select g.*, row_number() over (order by ${order}) as place from (select * from grouped g order by ${order} limit ${filter.limit}) g)
      select false as other, ${columns}, null::int as groups, place from kept
      union all
      select true, null, a.currency, (a.total - coalesce(k.total, 0))::text, (a.calls - coalesce(k.calls, 0))::int,
             (a.input_tokens - coalesce(k.input_tokens, 0))::text, (a.output_tokens - coalesce(k.output_tokens, 0))::text,
             (a.groups - coalesce(k.groups, 0))::int, null
      from (select currency, ${sums} from grouped group by currency) a
      left join (select currency, ${sums} from kept group by currency) k using (currency)
      where a.groups > coalesce(k.groups, 0)
      order by other, place, currency`
  }

  return {
    /**
     * Every line of the report, a page at a time: `batch` lines, and at least limit + 1, so the first page
     * says whether the limit cut groups (an `other` line follows the last group kept).
     */
    async * spendLines (filter: SpendFilter, batch = 1000): AsyncIterable<SpendLine[]> {
      for await (const rows of query(filter).cursor(Math.max(batch, (filter.limit ?? 0) + 1))) {
        for (const line of rows) line.total = normalizeMoney(line.total)
        yield rows
      }
    },

    /**
     * A preset's window in a zone: the ISO week (from Monday) or the month that holds `now` there, or the
     * one before it, from local midnight to local midnight, by the calendar functions every budget uses.
     */
    async presetWindow (preset: SpendPreset, timeZone: string, now: Date): Promise<{ from: Date, to: Date }> {
      const period = preset.endsWith('week') ? 'weekly' : 'monthly'
      const step = preset.startsWith('last') ? -1 : 0
      // A local midnight that a clock change repeats is its first occurrence (PostgreSQL takes the
      // later): read from the hour before, which no change at midnight makes ambiguous, plus the hour.
      const [row] = await sql<Array<{ from: Date, to: Date }>>`
        select (budget_window_step(${period}, c.start, ${step}) - interval '1 hour') at time zone ${timeZone} + interval '1 hour' as "from",
               (budget_window_step(${period}, c.start, ${step + 1}) - interval '1 hour') at time zone ${timeZone} + interval '1 hour' as "to"
        from (select budget_calendar_start(${period}, ${now}::timestamptz at time zone ${timeZone}, 1) as start) c`
      return row!
    }
  }
}

export type ReportRepository = ReturnType<typeof createReportRepository>
