// SQL for the decision log (budget_decision_log): a batch of decisions in one multi-row insert, a filtered page
// newest first (keyset on (at, id)), and the retention sweep in bounded batches.
import type { Sql, TransactionSql } from 'postgres'
import type { ScopeType } from '../kernel/schemas.js'
import type { Tags } from '../kernel/tags.js'
import { NIL_ROOT } from '../kernel/database/db.js'

export type DecisionOutcome = 'refused' | 'clamped' | 'downgraded'
export type DecisionApi = 'chat' | 'responses' | 'messages' | 'embeddings'

/** The binding budget as the gate read it; a rate limit refuses before any money is read: its numbers are null. */
export interface BindingBudget {
  id: string
  name: string
  limit: string | null
  current: string | null
  reserved: string | null
}

/** One decision as the gate noted it. */
export interface Decision {
  at: Date
  requestId: string
  api: DecisionApi
  outcome: DecisionOutcome
  code: string
  scopes: Partial<Record<ScopeType, string>>
  tags?: Tags
  model: string
  requestedModel?: string
  estimate: string
  currency: string
  budget: BindingBudget | null
}

/** A decision as the API serves it. */
export interface StoredDecision extends Omit<Decision, 'at'> {
  id: string
  at: string
}

export interface DecisionFilter {
  budgetId?: string
  code?: string
  outcome?: DecisionOutcome
  scope?: { type: ScopeType, id: string }
  from?: Date
  to?: Date
  /** Older than this (at, id), exclusive. */
  after?: { at: Date, id: bigint }
  /** A scoped reader's area (lib/access): only the decisions whose binding budget is one of these. */
  within?: readonly string[]
  limit: number
}

interface DecisionRow {
  id: string
  at: Date
  requestId: string
  api: DecisionApi
  outcome: DecisionOutcome
  code: string
  organization: string | null
  team: string | null
  user: string | null
  project: string | null
  tags: Tags | null
  model: string
  requestedModel: string | null
  estimate: string
  currency: string
  budgetId: string | null
  budgetName: string | null
  budgetLimit: string | null
  budgetCurrent: string | null
  budgetReserved: string | null
}

const SCOPE_COLUMNS = { organization: 'organization_id', team: 'team_id', user: 'user_id', project: 'project_id' } as const

function stored (row: DecisionRow): StoredDecision {
  const scopes: Partial<Record<ScopeType, string>> = {}
  for (const type of ['organization', 'team', 'user', 'project'] as const) if (row[type] !== null) scopes[type] = row[type]
  return {
    id: row.id,
    at: row.at.toISOString(),
    requestId: row.requestId,
    api: row.api,
    outcome: row.outcome,
    code: row.code,
    scopes,
    ...(row.tags === null ? {} : { tags: row.tags }),
    model: row.model,
    ...(row.requestedModel === null ? {} : { requestedModel: row.requestedModel }),
    estimate: row.estimate,
    currency: row.currency,
    budget: row.budgetId === null
      ? null
      : { id: row.budgetId, name: row.budgetName!, limit: row.budgetLimit, current: row.budgetCurrent, reserved: row.budgetReserved }
  }
}

/**
 * The most one statement of the log may wait or run. The log is written and swept in the background,
 * and closing the plugin waits for it: a locked table or a database that stops answering must cost
 * the log a batch, never hold the plugin's close (and the settlements and leases closed after it).
 */
const LOG_STATEMENT_BOUND_MS = 5000

export function createDecisionRepository (sql: Sql) {
  async function bounded<T> (work: (tx: TransactionSql) => Promise<T>): Promise<T> {
    return await sql.begin(async (tx) => {
      await tx.unsafe(`set local statement_timeout = ${LOG_STATEMENT_BOUND_MS}; set local lock_timeout = ${LOG_STATEMENT_BOUND_MS}`)
      return await work(tx)
    }) as T
  }

  // numeric's text trimmed of trailing zeros: the API's money form (exact, no exponent).
  const money = (column: string) => sql.unsafe(`trim_scale(${column})::text`)
  return {
    /**
     * The batch in one statement, each column an array (unnest keeps it one round trip whatever the size),
     * each row naming its budget's root, read first: on Citus an insert is routed by its root before any
     * trigger could find it (a decision no budget made, or one whose budget is gone: the nil root).
     */
    async insert (decisions: Decision[]): Promise<void> {
      if (decisions.length === 0) return
      const column = <T>(pick: (decision: Decision) => T) => decisions.map(pick)
      await bounded(async (sql) => {
        const budgetIds = [...new Set(decisions.flatMap((d) => d.budget === null ? [] : [d.budget.id]))]
        const roots = new Map(budgetIds.length === 0
          ? []
          : (await sql<Array<{ id: string, rootId: string }>>`
              select id, root_id as "rootId" from budget_definitions where id = any (${budgetIds}::uuid[])`).map((row) => [row.id, row.rootId]))
        await sql`
        insert into budget_decision_log (at, request_id, api, outcome, code, organization_id, team_id, user_id, project_id, tags,
          model, requested_model, estimate, currency, budget_id, budget_name, budget_limit, budget_current, budget_reserved, root_id)
        select * from unnest(
          ${column((d) => d.at.toISOString())}::timestamptz[], ${column((d) => d.requestId)}::text[], ${column((d) => d.api)}::text[],
          ${column((d) => d.outcome)}::text[], ${column((d) => d.code)}::text[],
          ${column((d) => d.scopes.organization ?? null)}::text[], ${column((d) => d.scopes.team ?? null)}::text[],
          ${column((d) => d.scopes.user ?? null)}::text[], ${column((d) => d.scopes.project ?? null)}::text[],
          ${column((d) => d.tags === undefined ? null : JSON.stringify(d.tags))}::text[]::jsonb[],
          ${column((d) => d.model)}::text[], ${column((d) => d.requestedModel ?? null)}::text[],
          ${column((d) => d.estimate)}::numeric[], ${column((d) => d.currency)}::text[],
          ${column((d) => d.budget?.id ?? null)}::uuid[], ${column((d) => d.budget?.name ?? null)}::text[],
          ${column((d) => d.budget?.limit ?? null)}::numeric[], ${column((d) => d.budget?.current ?? null)}::numeric[],
          ${column((d) => d.budget?.reserved ?? null)}::numeric[],
          ${column((d) => (d.budget === null ? undefined : roots.get(d.budget.id)) ?? NIL_ROOT)}::uuid[])`
      })
    },

    /** Newest first: (at, id) descending, strictly below `after` when given. */
    async list (filter: DecisionFilter): Promise<StoredDecision[]> {
      const { budgetId, code, outcome, scope, from, to, after, within, limit } = filter
      const rows = await sql<DecisionRow[]>`
        select id::text as id, at, request_id as "requestId", api, outcome, code,
               organization_id as organization, team_id as team, user_id as user, project_id as project, tags,
               model, requested_model as "requestedModel", ${money('estimate')} as estimate, currency,
               budget_id as "budgetId", budget_name as "budgetName", ${money('budget_limit')} as "budgetLimit",
               ${money('budget_current')} as "budgetCurrent", ${money('budget_reserved')} as "budgetReserved"
        from budget_decision_log
        where ${budgetId === undefined ? sql`true` : sql`budget_id = ${budgetId}::uuid`}
          and ${code === undefined ? sql`true` : sql`code = ${code}`}
          and ${outcome === undefined ? sql`true` : sql`outcome = ${outcome}`}
          and ${scope === undefined ? sql`true` : sql`${sql(SCOPE_COLUMNS[scope.type])} = ${scope.id}`}
          and ${from === undefined ? sql`true` : sql`at >= ${from.toISOString()}::timestamptz`}
          and ${to === undefined ? sql`true` : sql`at < ${to.toISOString()}::timestamptz`}
          and ${after === undefined ? sql`true` : sql`(at, id) < (${after.at.toISOString()}::timestamptz, ${after.id.toString()}::bigint)`}
          and ${within === undefined ? sql`true` : sql`budget_id = any (${within}::uuid[])`}
        order by at desc, id desc
        limit ${limit}`
      return rows.map(stored)
    },

    /** Deletes up to `batch` decisions older than `before`; how many it deleted. */
    async deleteOlderThan (before: Date, batch: number): Promise<number> {
      const deleted = await bounded(async (sql) => await sql`
        delete from budget_decision_log where id in (
          select id from budget_decision_log where at < ${before.toISOString()}::timestamptz order by at limit ${batch})`)
      return deleted.count
    }
  }
}

export type DecisionRepository = ReturnType<typeof createDecisionRepository>
