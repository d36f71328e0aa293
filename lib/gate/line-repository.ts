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

/** The trees a caller's scopes name budgets in, and the definitions' global version read before them. */
export interface ScopeTrees {
  roots: string[]
  version: number
}

/** A caller's line as loaded, with the versions it was read under. */
export interface LoadedLine {
  line: BudgetTerms[]
  definitionsVersion: number
  trees: TreeVersion[]
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

  /**
   * The trees the scopes' live budgets are in, and the definitions' global version read before them
   * (budget_scope_trees: a read of every shard on Citus, since a caller's scopes do not say which trees).
   */
  const scopeTrees = async (scopes: readonly Scope[]): Promise<ScopeTrees> => {
    const [row] = await sql<Array<{ roots: string[], version: string }>>`
      select roots, version::text as version from budget_scope_trees(${scopes.map((s) => s.type)}::text[], ${scopes.map((s) => s.id)}::text[])`
    return { roots: row!.roots, version: Number(row!.version) }
  }

  /**
   * budget_line for the call; `named`: only the trees read by scopeTrees, the call sent to the first one's node
   * on Citus, and the line stamped with the version read with them (budget_scope_trees says why). Null: every
   * tree, in one call.
   */
  const loadLineIn = async (call: CallFilter, currency: string, named: ScopeTrees | null): Promise<LoadedLine> => {
    const { scopes } = call
    const rows = await sql<Array<BudgetTerms & { definitionsVersion: string, treeVersion: string }>>`
      select budget_id as "budgetId", name, alerts, scope_matched as "scopeMatched", scope_rank as "scopeRank",
             period_start as "periodStart", period_end as "periodEnd", definitions_version::text as "definitionsVersion",
             rate_requests_per_minute as "requestsPerMinute", rate_tokens_per_minute::float8 as "tokensPerMinute", currency, near_limit as "nearLimit",
             max_call_cost::text as "maxCallCost", enforcement, root_id as "rootId", tree_version::text as "treeVersion"
      from ${named === null || named.roots.length === 0
        ? sql`budget_line(${scopes.map((s) => s.type)}::text[], ${scopes.map((s) => s.id)}::text[], ${currency}, ${call.model}, ${canonicalTags(call.tags)}::text::jsonb)`
        : sql`budget_line_in_trees(${scopes.map((s) => s.type)}::text[], ${scopes.map((s) => s.id)}::text[], ${currency}, ${call.model}, ${canonicalTags(call.tags)}::text::jsonb,
                                   ${named.roots}::text[]::uuid[], ${named.roots[0]!}::uuid)`}`
    // A caller with no budget still learns the version: its empty line is as cacheable as any.
    const version = named?.version ?? Number(rows[0]?.definitionsVersion ?? (await versions()).version)
    const trees = new Map<string, number>()
    for (const row of rows) trees.set(row.rootId, Number(row.treeVersion))
    return {
      line: rows.map(({ definitionsVersion: _version, treeVersion: _tree, ...budget }) => ({ ...budget, maxCallCost: budget.maxCallCost === null ? null : normalizeMoney(budget.maxCallCost) })),
      definitionsVersion: version,
      trees: [...trees].map(([rootId, treeVersion]) => ({ rootId, version: treeVersion }))
    }
  }

  return {
    /**
     * The caller's budget line now, its windows' cache rows made sure of (budget_line, sql/functions/lines.sql), with
     * the versions it was read under: the global one and its trees'. Every budget applies whatever its
     * currency: budget_applicable ignores the currency it is given. `byTree` (on Citus): the trees the scopes'
     * budgets are in are read first (scopeTrees), and the line is loaded on the first tree's node, naming them.
     */
    async loadLine (call: CallFilter, currency: string, { byTree = false }: { byTree?: boolean } = {}): Promise<LoadedLine> {
      if (!byTree) return await loadLineIn(call, currency, null)
      const named = await scopeTrees(call.scopes)
      // no budget names any of the scopes: an empty line, as cacheable as any, at the version read with that
      if (named.roots.length === 0) return { line: [], definitionsVersion: named.version, trees: [] }
      return await loadLineIn(call, currency, named)
    },

    scopeTrees,
    loadLineIn,
    versions
  }
}

export type LineRepository = ReturnType<typeof createLineRepository>
