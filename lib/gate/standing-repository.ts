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
  // scope_rank, period_start, period_end, root_id), matched scopes first, then by rank and id.
  // `estimate` is in `currency`; each budget reads it converted into its own (budget_convert), rounded up.
  // budget_standings (sql/functions/standings.sql) reads them budget by budget, each in its tree.
  const readStandings = async (source: ReturnType<typeof sql>, estimate: Money, currency: string): Promise<Standings> => {
    const rows = await sql<StandingRow[]>`
      select s.budget_id as "budgetId", s.root_id as "rootId", s.name, s.alerts, s.currency, s.near_limit as "nearLimit", s.max_call_cost::text as "maxCallCost",
             s.scope_matched as "scopeMatched", s.scope_rank as "scopeRank", s.period_start as "periodStart", s.period_end as "periodEnd",
             s.rate_requests_per_minute as "requestsPerMinute", s.rate_tokens_per_minute::float8 as "tokensPerMinute",
             s.amount::text as amount, s.enforcement,
             s.current_amount::text as "currentAmount", s.reserved_amount::text as "reservedAmount",
             s.approved_through::text as "approvedThrough", s.projected_actions as "projectedActions",
             s.fits, s.over_cap as "overCap", s.estimate::text as estimate, s.out_of_range as "outOfRange"
      from (select array_agg(x.budget_id order by x.o) as ids, array_agg(x.root_id order by x.o) as roots,
                   array_agg(x.scope_matched order by x.o) as matched, array_agg(x.scope_rank order by x.o) as ranks,
                   array_agg(x.period_start order by x.o) as starts, array_agg(x.period_end order by x.o) as ends
            from (select x.*, row_number() over (order by x.scope_matched desc, x.scope_rank, x.budget_id) as o from ${source} x) x) a
      cross join lateral budget_standings(a.ids, a.roots, a.matched, a.ranks, a.starts, a.ends, ${estimate}::numeric, ${currency}) with ordinality s
      order by s.ordinality`
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
      return await readStandings(sql`budget_lineage_windows(${budgetId}, now())`, estimate, currency)
    }
  }
}

export type StandingRepository = ReturnType<typeof createStandingRepository>
