import { NIL_ROOT, type Db } from '../kernel/database/db.js'
// SQL for the audit log: entries written with the change they record (hand it the change's
// transaction), and read newest first, a page at a time (keyset on the entry's id).

export type AuditAction = 'create' | 'update' | 'delete' | 'approve' | 'acknowledge' | 'refresh-cache' | 'set-exchange-rate' | 'test-channel' | 'correct-provider-cost' |
  'create-cost-mapping' | 'update-cost-mapping' | 'delete-cost-mapping' | 'true-up' | 'simulate'

/** Who made a change and in which request: authorize's name, and Fastify's request id (null from the library). */
export interface AuditContext {
  actor: string
  requestId: string | null
}

export interface AuditEntry {
  id: string
  /** Null for an action that is no budget's: an exchange rate set (set-exchange-rate), a channel tested (test-channel), a provider's cost bucket corrected (correct-provider-cost), a what-if replay run (simulate). */
  budgetId: string | null
  action: AuditAction
  changes: string[]
  before: unknown
  after: unknown
  actor: string
  requestId: string | null
  at: string
}

interface AuditRow extends Omit<AuditEntry, 'at'> {
  at: Date
}

export function createAuditRepository (sql: Db) {
  const columns = sql`id::text as id, budget_id as "budgetId", action, changes, before, after, actor, request_id as "requestId", at`
  const json = (value: unknown) => value === undefined || value === null ? null : JSON.stringify(value)

  return {
    /**
     * The entry names its budget's root, read with it in one statement (a budget's entry on Citus is routed by
     * its root before any trigger could fill it); an entry of no budget has the nil root.
     */
    async record (budgetId: string | null, action: AuditAction, context: AuditContext, entry: { changes?: string[], before?: unknown, after?: unknown } = {}): Promise<void> {
      const values = sql`${action}, ${entry.changes ?? []}::text[], ${json(entry.before)}::text::jsonb, ${json(entry.after)}::text::jsonb, ${context.actor}, ${context.requestId}`
      const written = budgetId === null
        ? await sql`insert into budget_audit_log (budget_id, root_id, action, changes, before, after, actor, request_id)
                    values (null, ${NIL_ROOT}, ${values})`
        : await sql`insert into budget_audit_log (budget_id, root_id, action, changes, before, after, actor, request_id)
                    select d.id, d.root_id, ${values} from budget_definitions d where d.id = ${budgetId}`
      if (written.count !== 1) throw new Error(`no audit entry written for budget ${budgetId}: it does not exist`)
    },

    /** Newest first, after the entry `before` (exclusive) when given; one budget's, or every budget's. */
    async list (budgetId: string | null, before: bigint | null, limit: number, within: string[] | null): Promise<AuditEntry[]> {
      const rows = await sql<AuditRow[]>`
        select ${columns} from budget_audit_log
        where ${budgetId === null ? sql`true` : sql`budget_id = ${budgetId}`}
          and ${within === null ? sql`true` : sql`budget_id = any (${within}::text[]::uuid[])`}
          and ${before === null ? sql`true` : sql`id < ${before.toString()}::bigint`}
        order by budget_audit_log.id desc limit ${limit}`
      return rows.map((row) => ({ ...row, at: row.at.toISOString() }))
    },

    /** Does the budget exist, deleted or not? (A deleted budget's history stays readable.) */
    async budgetEverExisted (budgetId: string): Promise<boolean> {
      const [row] = await sql<Array<{ found: boolean }>>`select exists (select 1 from budget_definitions where id = ${budgetId}) as found`
      return row!.found
    }
  }
}

export type AuditRepository = ReturnType<typeof createAuditRepository>
