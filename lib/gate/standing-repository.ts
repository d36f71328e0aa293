// SQL for reads that hold nothing: the budgets that apply to a caller or above a budget, each one's terms and its
// numbers for an estimate, as a hold would measure them (checkCaller, checkBudgetConstraints, the caller's summary).
import { normalizeMoney, type Money } from '../kernel/money.js'
import { canonicalTags } from '../kernel/tags.js'
import type { Db } from '../kernel/database/db.js'
import { numbersFrom, type BudgetNumbers, type BudgetTerms } from './budget-terms.js'
import type { CallFilter } from './line-repository.js'

/** Budgets read together: their terms, and the numbers measured for each (by budget id, in the same order). */
export interface Standings {
  terms: BudgetTerms[]
  numbers: BudgetNumbers[]
}

/** One statement reads both halves of a budget. */
type StandingRow = BudgetTerms & BudgetNumbers

export function createStandingRepository (sql: Db) {
  // The terms and numbers the decision needs, for budgets and windows from `source` (budget_id, scope_matched,
  // scope_rank, period_start, period_end).
  // `estimate` is in `currency`; each budget reads it converted into its own (budget_convert), rounded up.
  const readStandings = async (source: ReturnType<typeof sql>, estimate: Money, currency: string): Promise<Standings> => {
    const rows = await sql<StandingRow[]>`
      select x.budget_id as "budgetId", b.root_id as "rootId", b.name, b.alerts, b.currency, b.near_limit as "nearLimit", b.max_call_cost::text as "maxCallCost",
             x.scope_matched as "scopeMatched", x.scope_rank as "scopeRank", x.period_start as "periodStart", x.period_end as "periodEnd",
             b.rate_requests_per_minute as "requestsPerMinute", b.rate_tokens_per_minute::float8 as "tokensPerMinute",
             b.amount::text as amount, b.enforcement,
             n.current_amount::text as "currentAmount", n.reserved_amount::text as "reservedAmount",
             budget_approved_in_tree(b.root_id, x.budget_id, x.period_start)::text as "approvedThrough",
             budget_projected_actions(b.root_id, x.budget_id, x.period_start) as "projectedActions",
             coalesce(budget_fits(b.enforcement, b.amount, n.current_amount, n.reserved_amount, converted.estimate)
                      and budget_within_cap(converted.estimate, b.max_call_cost), false) as fits,
             coalesce(not budget_within_cap(converted.estimate, b.max_call_cost), false) as "overCap",
             converted.estimate::text as estimate, converted.estimate is null and converted.rate is not null as "outOfRange"
      from ${source} x
      join budget_definitions b on b.id = x.budget_id
      left join budget_status_cache c on c.budget_id = x.budget_id and c.period_start = x.period_start
      -- coalesce short-circuits: the sum runs only for a window that has no cache row yet, and once
      cross join lateral (
        select coalesce(c.current_amount, (select current_amount from calculate_budget_status(x.budget_id, x.period_start, x.period_end))) as current_amount,
               coalesce(c.reserved_amount, 0) as reserved_amount
      ) n
      -- as a hold would convert it (budget_hold_amount): null without a rate, or past what the budget can hold
      cross join lateral (select r.rate, budget_hold_amount(${estimate}::numeric, r.rate, n.current_amount, n.reserved_amount) as estimate
                          from (select budget_exchange_rate(${currency}, b.currency, now()) as rate) r) converted
      order by x.scope_matched desc, x.scope_rank, x.budget_id`
    // The row mapping at the edge: one statement read both halves.
    return {
      terms: rows.map((row) => ({
        budgetId: row.budgetId, rootId: row.rootId, name: row.name, alerts: row.alerts, currency: row.currency, nearLimit: row.nearLimit,
        maxCallCost: row.maxCallCost === null ? null : normalizeMoney(row.maxCallCost), scopeMatched: row.scopeMatched, scopeRank: row.scopeRank, periodStart: row.periodStart, periodEnd: row.periodEnd,
        requestsPerMinute: row.requestsPerMinute, tokensPerMinute: row.tokensPerMinute, enforcement: row.enforcement
      })),
      numbers: rows.map(numbersFrom)
    }
  }

  return {
    /**
     * The budgets that apply to the scopes, whatever their currency, with their current numbers and `estimate`
     * (in `currency`) converted into each one's; reads only, locks nothing.
     */
    async listApplicable ({ scopes, model, tags }: CallFilter, currency: string, estimate: Money = '0'): Promise<Standings> {
      return await readStandings(sql`
        budget_applicable(${scopes.map((s) => s.type)}::text[], ${scopes.map((s) => s.id)}::text[], ${currency}, now(), ${model}, ${canonicalTags(tags)}::text::jsonb)`, estimate, currency)
    },

    /** The budget and each live ancestor with a window now, nearest first, with the same numbers as listApplicable (`estimate` in `currency`). */
    async listLineage (budgetId: string, currency: string, estimate: Money = '0'): Promise<Standings> {
      return await readStandings(sql`(
        select l.id as budget_id, l.depth = 1 as scope_matched, l.depth as scope_rank, w.period_start, w.period_end
        from budget_lineage(${budgetId}) l
        join budget_definitions live on live.id = l.id and live.deleted_at is null
        cross join lateral budget_window(live, now()) w
      )`, estimate, currency)
    }
  }
}

export type StandingRepository = ReturnType<typeof createStandingRepository>
