// SQL for requests for approval and their decisions (sql/migrations/013_approval_requests.sql). Every
// statement about one request names its tree (root_id): on Citus it runs on that tree's shard.
import { normalizeMoney, type Money } from '../kernel/money.js'
import type { Db } from '../kernel/database/db.js'
import type { ApprovalPolicy } from '../kernel/schemas.js'

export type Verdict = 'approve' | 'reject'

export interface StoredRequest {
  id: string
  rootId: string
  budgetId: string
  amount: Money
  reason: string | null
  requestedBy: string
  policy: ApprovalPolicy
  levelsRequired: number
  approvalExpiresAt: Date | null
  state: 'pending' | 'approved' | 'rejected'
  createdAt: Date
  expiresAt: Date
  decidedAt: Date | null
  approvalId: string | null
  decisions: StoredDecision[]
}

export interface StoredDecision {
  level: number
  decidedBy: string
  verdict: Verdict
  comment: string | null
  decidedAt: Date
}

const columns = (sql: Db) => sql`
  r.id, r.root_id as "rootId", r.budget_id as "budgetId", r.amount::text as amount, r.reason, r.requested_by as "requestedBy",
  r.policy, r.levels_required as "levelsRequired", r.approval_expires_at as "approvalExpiresAt", r.state, r.created_at as "createdAt",
  r.expires_at as "expiresAt", r.decided_at as "decidedAt", r.approval_id as "approvalId",
  coalesce((select json_agg(json_build_object('level', d.level, 'decidedBy', d.decided_by, 'verdict', d.verdict, 'comment', d.comment,
                                              'decidedAt', d.decided_at) order by d.level)
            from budget_approval_decisions d where d.root_id = r.root_id and d.request_id = r.id), '[]') as decisions`

function stored (row: StoredRequest): StoredRequest {
  return { ...row, amount: normalizeMoney(row.amount), decisions: row.decisions.map((d) => ({ ...d, decidedAt: new Date(d.decidedAt) })) }
}

export function createApprovalRepository (sql: Db) {
  return {
    /** Files a request on the budget's tree, audited as request-approval; null when the budget is gone. */
    async insertRequest (values: { budgetId: string, amount: Money, reason: string | null, requestedBy: string, policy: ApprovalPolicy, levelsRequired: number, approvalExpiresAt: Date | null, expiresAt: Date }, requestId: string | null): Promise<StoredRequest | null> {
      const [row] = await sql<StoredRequest[]>`
        with budget as (select id, root_id from budget_definitions where id = ${values.budgetId} and deleted_at is null),
        inserted as (
          insert into budget_approval_requests (root_id, budget_id, amount, reason, requested_by, policy, levels_required, approval_expires_at, expires_at)
          select b.root_id, b.id, ${values.amount}, ${values.reason}, ${values.requestedBy}, ${sql.json(values.policy as never)}, ${values.levelsRequired},
                 ${values.approvalExpiresAt}, ${values.expiresAt}
          from budget b
          returning *
        ),
        audited as (
          insert into budget_audit_log (budget_id, root_id, action, after, actor, request_id)
          select i.budget_id, i.root_id, 'request-approval',
                 jsonb_build_object('requestId', i.id, 'amount', i.amount::text, 'reason', i.reason, 'levelsRequired', i.levels_required, 'expiresAt', i.expires_at),
                 i.requested_by, ${requestId}
          from inserted i
        )
        select r.id, r.root_id as "rootId", r.budget_id as "budgetId", r.amount::text as amount, r.reason, r.requested_by as "requestedBy",
               r.policy, r.levels_required as "levelsRequired", r.approval_expires_at as "approvalExpiresAt", r.state, r.created_at as "createdAt",
               r.expires_at as "expiresAt", r.decided_at as "decidedAt", r.approval_id as "approvalId", '[]'::json as decisions
        from inserted r`
      return row === undefined ? null : stored(row)
    },

    /** One request of a budget, locked for a decision when `lock` (in a transaction): by its tree, one shard's row. */
    async findRequest (budgetId: string, requestId: string, lock = false): Promise<StoredRequest | null> {
      // a live budget's: an archived budget's requests take no decision
      const [budget] = await sql<Array<{ rootId: string }>>`select root_id as "rootId" from budget_definitions where id = ${budgetId} and deleted_at is null`
      if (budget === undefined) return null
      // the lock on its own: Citus routes a FOR UPDATE of one shard's row, not one with the decisions' subquery
      if (lock) await sql`select 1 from budget_approval_requests where root_id = ${budget.rootId} and id = ${requestId} for update`
      const [row] = await sql<StoredRequest[]>`
        select ${columns(sql)} from budget_approval_requests r
        where r.root_id = ${budget.rootId} and r.id = ${requestId} and r.budget_id = ${budgetId}`
      return row === undefined ? null : stored(row)
    },

    /**
     * Requests of live budgets newest first, older than `before` when given: of one state (expired: pending past
     * expires_at, whose state the table still says pending), of one budget or of `within` (a scoped reader's area; null: every budget).
     */
    async listRequests (filter: { state: 'pending' | 'approved' | 'rejected' | 'expired', budgetId?: string, within: readonly string[] | null, limit: number, before?: { createdAt: Date, id: string } }): Promise<StoredRequest[]> {
      const state = filter.state === 'expired'
        ? sql`r.state = 'pending' and r.expires_at <= now()`
        : filter.state === 'pending' ? sql`r.state = 'pending' and r.expires_at > now()` : sql`r.state = ${filter.state}`
      const rows = await sql<StoredRequest[]>`
        select ${columns(sql)} from budget_approval_requests r
        join budget_definitions b on b.root_id = r.root_id and b.id = r.budget_id and b.deleted_at is null
        where ${state}
          ${filter.before === undefined ? sql`` : sql`and (r.created_at, r.id) < (${filter.before.createdAt}, ${filter.before.id})`}
          ${filter.budgetId === undefined ? sql`` : sql`and r.budget_id = ${filter.budgetId}`}
          ${filter.within === null ? sql`` : sql`and r.budget_id = any (${filter.within}::uuid[])`}
        order by r.created_at desc, r.id desc
        limit ${filter.limit}`
      return rows.map(stored)
    },

    /** A level's decision, audited as decide-approval; the key refuses a level decided twice. */
    async insertDecision (request: StoredRequest, decision: { level: number, decidedBy: string, verdict: Verdict, comment: string | null }, requestId: string | null): Promise<void> {
      await sql`
        with inserted as (
          insert into budget_approval_decisions (root_id, request_id, level, decided_by, verdict, comment)
          values (${request.rootId}, ${request.id}, ${decision.level}, ${decision.decidedBy}, ${decision.verdict}, ${decision.comment})
          returning *
        )
        insert into budget_audit_log (budget_id, root_id, action, after, actor, request_id)
        select ${request.budgetId}, i.root_id, 'decide-approval',
               jsonb_build_object('requestId', i.request_id, 'level', i.level, 'verdict', i.verdict, 'comment', i.comment), i.decided_by, ${requestId}
        from inserted i`
    },

    /**
     * Queues a step of the request for delivery through every channel its budget's alerts name, in the step's
     * transaction: its filing (level 0) or a level's decision. The outbox delivers it (lib/alerts/notifications.ts).
     */
    async queueStep (request: Pick<StoredRequest, 'rootId' | 'budgetId' | 'id'>, level: number): Promise<void> {
      await sql`
        insert into budget_notification_outbox (root_id, approval_request_id, approval_level, channel)
        select distinct b.root_id, ${request.id}::uuid, ${level}::int, channel.name
        from budget_definitions b
        cross join lateral jsonb_array_elements(b.alerts) alert
        cross join lateral jsonb_array_elements_text(coalesce(alert -> 'notificationChannels', '[]'::jsonb)) as channel(name)
        where b.root_id = ${request.rootId} and b.id = ${request.budgetId}`
    },

    /** The request's end: rejected, or approved as the approval `approvalId`. */
    async closeRequest (request: StoredRequest, state: 'approved' | 'rejected', approvalId: string | null): Promise<void> {
      await sql`
        update budget_approval_requests set state = ${state}, decided_at = now(), approval_id = ${approvalId}
        where root_id = ${request.rootId} and id = ${request.id}`
    }
  }
}

export type ApprovalRepository = ReturnType<typeof createApprovalRepository>
