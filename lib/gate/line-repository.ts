// SQL for budget lines: a caller's line (its budgets' terms and windows) and the versions it was read under.
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

/** A budget tree's version as read: a newer one than a process saw means the tree changed (sql/functions/definitions.sql). */
export interface TreeVersion {
  rootId: string
  version: number
}

/** The versions a process reads: the definitions' global one, and those of the trees asked for. */
export interface Versions {
  version: number
  trees: TreeVersion[]
}

export function createLineRepository (sql: Db) {
  /**
   * The definitions' global version now, and the versions of the trees `roots` (budget_tree_versions; a
   * tree without a row is at 0). One statement, so both are read in one snapshot.
   */
  const versions = async (roots: readonly string[] = []): Promise<Versions> => {
    const rows = await sql<Array<{ version: string, rootId: string | null, treeVersion: string | null }>>`
      select g.version::text as version, t.root_id as "rootId", t.version::text as "treeVersion"
      from budget_definitions_version g left join budget_tree_versions t on t.root_id = any(${roots as string[]}::uuid[])`
    const found = new Map(rows.map((row) => [row.rootId, row.treeVersion]))
    return { version: Number(rows[0]!.version), trees: roots.map((rootId) => ({ rootId, version: Number(found.get(rootId) ?? 0) })) }
  }

  return {
    /**
     * The caller's budget line now, its windows' cache rows made sure of (budget_line, sql/functions/lines.sql), with
     * the versions it was read under: the global one and its trees'. Every budget applies whatever its
     * currency: budget_applicable ignores the currency it is given.
     */
    async loadLine (call: CallFilter, currency: string): Promise<{ line: BudgetTerms[], definitionsVersion: number, trees: TreeVersion[] }> {
      const { scopes } = call
      const rows = await sql<Array<BudgetTerms & { definitionsVersion: string, treeVersion: string }>>`
        select budget_id as "budgetId", name, alerts, scope_matched as "scopeMatched", scope_rank as "scopeRank",
               period_start as "periodStart", period_end as "periodEnd", definitions_version::text as "definitionsVersion",
               rate_requests_per_minute as "requestsPerMinute", rate_tokens_per_minute::float8 as "tokensPerMinute", currency, near_limit as "nearLimit",
               max_call_cost::text as "maxCallCost", enforcement, root_id as "rootId", tree_version::text as "treeVersion"
        from budget_line(${scopes.map((s) => s.type)}::text[], ${scopes.map((s) => s.id)}::text[], ${currency}, ${call.model}, ${canonicalTags(call.tags)}::text::jsonb)`
      // A caller with no budget still learns the version: its empty line is as cacheable as any.
      const version = rows[0]?.definitionsVersion ?? (await versions()).version
      const trees = new Map<string, number>()
      for (const row of rows) trees.set(row.rootId, Number(row.treeVersion))
      return {
        line: rows.map(({ definitionsVersion: _version, treeVersion: _tree, ...budget }) => ({ ...budget, maxCallCost: budget.maxCallCost === null ? null : normalizeMoney(budget.maxCallCost) })),
        definitionsVersion: Number(version),
        trees: [...trees].map(([rootId, treeVersion]) => ({ rootId, version: treeVersion }))
      }
    },

    versions
  }
}

export type LineRepository = ReturnType<typeof createLineRepository>
