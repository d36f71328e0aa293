// SQL for budget lines: a caller's line (its budgets' terms and windows) and the definitions' version it was read under.
import type { Db } from '../kernel/database/db.js'
import type { Scope } from '../kernel/scopes.js'
import { canonicalTags, type Tags } from '../kernel/tags.js'
import { normalizeMoney } from '../kernel/money.js'
import type { BudgetTerms } from './budget-terms.js'

/** A call as budgets see it: who calls, which model (after downgrade and snapshot resolution), which tags. */
export interface CallFilter {
  scopes: Scope[]
  model: string | null
  tags?: Tags
}

export function createLineRepository (sql: Db) {
  /** The budget definitions' version now (budget_definitions_version, sql/functions/definitions.sql). */
  const definitionsVersion = async (): Promise<number> => {
    const [row] = await sql<Array<{ version: string }>>`select budget_definitions_version()::text as version`
    return Number(row!.version)
  }

  return {
    /**
     * The caller's budget line now, its windows' cache rows made sure of (budget_line, sql/functions/lines.sql). Every
     * budget applies whatever its currency: budget_applicable ignores the currency it is given.
     */
    async loadLine (call: CallFilter, currency: string): Promise<{ line: BudgetTerms[], definitionsVersion: number }> {
      const { scopes } = call
      const rows = await sql<Array<BudgetTerms & { definitionsVersion: string }>>`
        select budget_id as "budgetId", name, alerts, scope_matched as "scopeMatched", scope_rank as "scopeRank",
               period_start as "periodStart", period_end as "periodEnd", definitions_version::text as "definitionsVersion",
               rate_requests_per_minute as "requestsPerMinute", rate_tokens_per_minute::float8 as "tokensPerMinute", currency, near_limit as "nearLimit",
               max_call_cost::text as "maxCallCost", enforcement
        from budget_line(${scopes.map((s) => s.type)}::text[], ${scopes.map((s) => s.id)}::text[], ${currency}, ${call.model}, ${canonicalTags(call.tags)}::text::jsonb)`
      // A caller with no budget still learns the version: its empty line is as cacheable as any.
      const version = rows[0]?.definitionsVersion ?? await definitionsVersion()
      return {
        line: rows.map(({ definitionsVersion: _version, ...budget }) => ({ ...budget, maxCallCost: budget.maxCallCost === null ? null : normalizeMoney(budget.maxCallCost) })),
        definitionsVersion: Number(version)
      }
    },

    definitionsVersion
  }
}

export type LineRepository = ReturnType<typeof createLineRepository>
