// SQL for alert history, acknowledgements, approvals and the notification outbox.
import { normalizeMoney, type Money } from '../kernel/money.js'
import type { AlertAction, ApprovalPolicy } from '../kernel/schemas.js'
import { randomUUID } from 'node:crypto'
import type { PendingQuery, Row } from 'postgres'
import type { Db } from '../kernel/database/db.js'

export interface AlertDelivery {
  channel: string
  status: 'pending' | 'delivered' | 'failed'
  attempts: number
  deliveredAt: string | null
  lastError: string | null
}

export interface AlertRecord {
  id: string
  budgetId: string
  periodStart: string
  threshold: number
  basis: 'current' | 'projected'
  actions: AlertAction[]
  spent: Money
  limit: Money
  crossedAt: string
  /** When the budget's definition stopped reaching this crossing (sql/functions/alerts.sql); null while it is active. */
  resolvedAt: string | null
  acknowledgedBy: string | null
  acknowledgedAt: string | null
  /** A shadow budget's crossing: notify only. */
  shadow: boolean
  deliveries: AlertDelivery[]
}

export interface Approval {
  id: string
  budgetId: string
  periodStart: string
  amount: Money
  spentAtApproval: Money
  approvedBy: string
  reason: string | null
  createdAt: string
  expiresAt: string
}

/** An approval as it is inserted: its id and creation time are the database's. */
export type NewApproval = Omit<Approval, 'id' | 'createdAt' | 'periodStart' | 'expiresAt'> & { periodStart: Date, expiresAt: Date }

/** An outbox row this process has claimed: the claim's id, which its outcome must name (sql/migrations/002_outbox_claims.sql). */
export interface OutboxClaim {
  outboxId: string
  /** The row's tree: its outcome is written by a statement that names it (on Citus, one shard's). */
  rootId: string
  claimId: string
  channel: string
  /** Attempts whose outcome was recorded before this one. */
  attempts: number
}

export interface DueNotification extends OutboxClaim {
  alert: AlertRecord
  budget: { id: string, name: string, currency: string, scopeType: string, scopeId: string }
}

/**
 * Which rows a process claims: those of the channels it configures as soon as they are due, and those of
 * any other channel only once they have been due for `graceMs` (no process that has the channel took them:
 * then this one records the attempt as failed, with the reason). Without it, a process lacking a channel
 * (a rolling deploy adding it) would use up the attempts of the processes that have it.
 */
export interface ClaimChannels {
  configured: string[]
  graceMs: number
}

/** Due rows read a round, to claim the first that no other process is claiming. */
const CLAIM_CANDIDATES = 16

/** The kinds of event the outbox holds, each told by the column that names it. */
export type OutboxKind = 'alert' | 'digest' | 'drift' | 'approval'
const eventColumn = (sql: Db, kind: OutboxKind) =>
  ({ alert: sql`d.alert_id`, digest: sql`d.digest_id`, drift: sql`d.drift_id`, approval: sql`d.approval_request_id` })[kind]

/**
 * The claim of the next due outbox row of a kind (a crossing's, a digest's, a drift's or an approval step's): the next due row (of
 * `channels`, when given) that no other statement is claiming (SKIP LOCKED), but those in `tried`, its next
 * attempt pushed to the claim's deadline and a new claim id (made here: Citus runs no volatile function in an
 * UPDATE). In two steps: the due rows are read, 16 at a time (on Citus, from every shard), then claimed one at a
 * time by a statement that names the row's tree, which checks again that the row is due (Citus locks rows on one
 * shard only). `claim` runs that statement, given its `claimed` CTE (returning the row) and the tree, and answers
 * the row it read, or undefined when the row was taken meanwhile. Each statement commits at once: no lock
 * outlives it. A process that dies while it delivers leaves the row due again at the deadline
 * (sql/migrations/002_outbox_claims.sql).
 */
export async function claimOutboxRow<T> (sql: Db, kind: OutboxKind, claimMs: number, tried: string[], channels: ClaimChannels | undefined,
  claim: (claimed: PendingQuery<Row[]>, rootId: string) => Promise<T | undefined>): Promise<T | null> {
  const due = () => sql`
    d.status = 'pending' and d.next_attempt_at <= now() and d.id <> all(${tried}::uuid[])
    and ${eventColumn(sql, kind)} is not null
    ${channels === undefined ? sql`` : sql`and (d.channel = any(${channels.configured}::text[]) or d.next_attempt_at <= now() - ${`${channels.graceMs} milliseconds`}::interval)`}`
  // the rows found claimed by another statement meanwhile: the next read passes them, so rows behind them are reached
  const skipped: string[] = []
  for (;;) {
    const candidates = await sql<Array<{ rootId: string, id: string }>>`
      select d.root_id as "rootId", d.id from budget_notification_outbox d
      where ${due()} and d.id <> all(${skipped}::uuid[]) order by d.next_attempt_at limit ${CLAIM_CANDIDATES}`
    if (candidates.length === 0) return null
    for (const { rootId, id } of candidates) {
      const claimed = sql`
        claimed as (
          update budget_notification_outbox o
          set claim_id = ${randomUUID()}, next_attempt_at = now() + ${`${claimMs} milliseconds`}::interval
          where o.root_id = ${rootId} and o.id = (
            select d.id from budget_notification_outbox d
            where d.root_id = ${rootId} and d.id = ${id} and ${due()}
            for update skip locked
          )
          returning o.id, o.root_id, o.alert_id, o.digest_id, o.drift_id, o.approval_request_id, o.approval_level, o.channel, o.attempts, o.claim_id
        )`
      const row = await claim(claimed, rootId)
      if (row !== undefined) return row
      skipped.push(id)
    }
  }
}

/** The columns every claim statement selects beside its event's: the claim, and the event's budget. */
export interface ClaimedColumns { outbox_id: string, claim_id: string, channel: string, attempts: number, budget_id: string, budget_name: string, currency: string, scope_type: string, scope_id: string }

/** A claimed row's claim (in the tree `rootId`) and its event's budget, as the delivery loop takes them. */
export function claimedOf (row: ClaimedColumns, rootId: string): OutboxClaim & { budget: DueNotification['budget'] } {
  return {
    outboxId: row.outbox_id,
    rootId,
    claimId: row.claim_id,
    channel: row.channel,
    attempts: row.attempts,
    budget: { id: row.budget_id, name: row.budget_name, currency: row.currency, scopeType: row.scope_type, scopeId: row.scope_id }
  }
}

/**
 * A step of a request for approval, claimed: the request as it was filed, and the step, its filing (level 0) or
 * a level's decision. What came after the step (a later level, the request's end) is not the step's to say.
 */
export interface DueApprovalStepNotification extends OutboxClaim {
  budget: DueNotification['budget']
  request: { id: string, amount: Money, reason: string | null, requestedBy: string, levelsRequired: number, policy: ApprovalPolicy, createdAt: string, expiresAt: string }
  level: number
  decision: { decidedBy: string, verdict: 'approve' | 'reject', comment: string | null, decidedAt: string } | null
}

interface ApprovalStepRow {
  request_id: string, amount: string, reason: string | null, requested_by: string, levels_required: number, policy: ApprovalPolicy,
  created_at: Date, expires_at: Date, level: number, decided_by: string | null, verdict: 'approve' | 'reject' | null, comment: string | null, decided_at: Date | null
}

interface DriftRow { id: string, provider: string, day: string, provider_amount: string, recorded_amount: string, difference: string, ratio: string | null, tolerance: string, alerted_at: Date }

/** A drift's delivery, claimed: the drift (the provider's amount beside the gate's for one UTC day) and its budget. */
export interface DueDriftNotification extends OutboxClaim {
  drift: { id: string, provider: string, day: string, providerAmount: string, recordedAmount: string, difference: string, ratio: string | null, tolerance: string, alertedAt: string }
  budget: DueNotification['budget']
}

interface AlertRow {
  id: string
  budget_id: string
  period_start: Date
  threshold: string
  basis: 'current' | 'projected'
  actions: AlertAction[]
  spent: string
  limit_amount: string
  crossed_at: Date
  resolved_at: Date | null
  acknowledged_by: string | null
  acknowledged_at: Date | null
  shadow: boolean
  deliveries: Array<{ channel: string, status: AlertDelivery['status'], attempts: number, delivered_at: string | null, last_error: string | null }>
}

function toAlert (row: AlertRow): AlertRecord {
  return {
    id: row.id,
    budgetId: row.budget_id,
    periodStart: row.period_start.toISOString(),
    threshold: Number(row.threshold),
    basis: row.basis,
    actions: row.actions,
    spent: normalizeMoney(row.spent),
    limit: normalizeMoney(row.limit_amount),
    crossedAt: row.crossed_at.toISOString(),
    resolvedAt: row.resolved_at?.toISOString() ?? null,
    acknowledgedBy: row.acknowledged_by,
    acknowledgedAt: row.acknowledged_at?.toISOString() ?? null,
    shadow: row.shadow,
    deliveries: row.deliveries.map((d) => ({
      channel: d.channel, status: d.status, attempts: d.attempts, deliveredAt: d.delivered_at === null ? null : new Date(d.delivered_at).toISOString(), lastError: d.last_error
    }))
  }
}

export function createAlertRepository (sql: Db) {
  const alertColumns = sql`
    h.id, h.budget_id, h.period_start, h.threshold::text as threshold, h.basis, h.actions, h.spent::text as spent,
    h.limit_amount::text as limit_amount, h.crossed_at, h.resolved_at, h.acknowledged_by, h.acknowledged_at, h.shadow,
    coalesce((select json_agg(json_build_object('channel', o.channel, 'status', o.status, 'attempts', o.attempts,
              'delivered_at', o.delivered_at, 'last_error', o.last_error) order by o.channel)
              from budget_notification_outbox o where o.root_id = h.root_id and o.alert_id = h.id), '[]') as deliveries`

  /** A budget's tree, which every statement that writes its rows names (on Citus an insert is routed by it); null: no such budget. */
  const rootOf = async (budgetId: string): Promise<string | null> =>
    (await sql<Array<{ rootId: string }>>`select root_id as "rootId" from budget_definitions where id = ${budgetId}`)[0]?.rootId ?? null

  return {
    /** Crossings of a budget, newest first; of one window when `periodStart` is given. */
    async listAlerts (budgetId: string, periodStart?: Date): Promise<AlertRecord[]> {
      const rows = await sql<AlertRow[]>`
        select ${alertColumns} from budget_alert_history h
        where h.budget_id = ${budgetId} ${periodStart === undefined ? sql`` : sql`and h.period_start = ${periodStart}`}
        order by h.crossed_at desc, h.threshold desc
        limit 500`
      return rows.map(toAlert)
    },

    /** The latest crossings of every live budget, newest first. */
    async listRecentAlerts (limit: number, within: string[] | null): Promise<AlertRecord[]> {
      const rows = await sql<AlertRow[]>`
        select ${alertColumns} from budget_alert_history h
        where exists (select 1 from budget_definitions b where b.root_id = h.root_id and b.id = h.budget_id and b.deleted_at is null)
          ${within === null ? sql`` : sql`and h.budget_id = any (${within}::text[]::uuid[])`}
        order by h.crossed_at desc, h.threshold desc, h.id
        limit ${limit}`
      return rows.map(toAlert)
    },

    /** Acknowledges the crossing; the first acknowledgement stands and is the one the audit log records (same statement). */
    async acknowledge (budgetId: string, alertId: string, who: string, requestId: string | null = null): Promise<AlertRecord | null> {
      const rootId = await rootOf(budgetId)
      if (rootId === null) return null
      // Only a crossing not yet acknowledged is written, and audited from the rows written: of two at once, the one
      // that waited for the other's row lock finds it acknowledged and writes nothing (no second audit entry, the
      // first one's time kept). Then the crossing is read as it stands (its deliveries are a correlated subquery,
      // which Citus does not run over a CTE).
      await sql`
        with acknowledged as (
          update budget_alert_history set acknowledged_by = ${who}, acknowledged_at = now()
          where root_id = ${rootId} and id = ${alertId} and budget_id = ${budgetId} and acknowledged_at is null
          returning id, root_id, budget_id, threshold, period_start
        )
        insert into budget_audit_log (budget_id, root_id, action, after, actor, request_id)
        select a.budget_id, a.root_id, 'acknowledge', jsonb_build_object('alertId', a.id, 'threshold', a.threshold, 'periodStart', a.period_start), ${who}, ${requestId}
        from acknowledged a`
      const [row] = await sql<AlertRow[]>`
        select ${alertColumns} from budget_alert_history h where h.root_id = ${rootId} and h.id = ${alertId} and h.budget_id = ${budgetId}`
      return row === undefined ? null : toAlert(row)
    },

    /** Records the approval and its audit entry, in one statement that names the budget's tree. */
    async insertApproval (values: NewApproval, requestId: string | null = null): Promise<Approval> {
      const rootId = await rootOf(values.budgetId)
      const [row] = await sql<Approval[]>`
        with inserted as (
          insert into budget_approvals (budget_id, root_id, period_start, amount, spent_at_approval, approved_by, reason, expires_at)
          values (${values.budgetId}, ${rootId}, ${values.periodStart}, ${values.amount}, ${values.spentAtApproval}, ${values.approvedBy}, ${values.reason}, ${values.expiresAt})
          returning *
        ),
        audited as (
          insert into budget_audit_log (budget_id, root_id, action, after, actor, request_id)
          select i.budget_id, i.root_id, 'approve', jsonb_build_object('approvalId', i.id, 'amount', i.amount::text, 'periodStart', i.period_start,
                                                              'expiresAt', i.expires_at, 'reason', i.reason), i.approved_by, ${requestId}
          from inserted i
        )
        select id, budget_id as "budgetId", period_start as "periodStart", amount::text as amount, spent_at_approval::text as "spentAtApproval",
               approved_by as "approvedBy", reason, created_at as "createdAt", expires_at as "expiresAt"
        from inserted`
      return toApproval(row!)
    },

    async listApprovals (budgetId: string): Promise<Approval[]> {
      const rows = await sql<Approval[]>`
        select id, budget_id as "budgetId", period_start as "periodStart", amount::text as amount, spent_at_approval::text as "spentAtApproval",
               approved_by as "approvedBy", reason, created_at as "createdAt", expires_at as "expiresAt"
        from budget_approvals where budget_id = ${budgetId} order by created_at desc limit 500`
      return rows.map(toApproval)
    },

    /**
     * Claims the next due delivery of a crossing (of `channels`, when given) until `claimMs` from now, but none
     * of the rows in `tried` (those a round has tried already), or null when none is due. Digests' are claimDueDigest (lib/alerts/digest-repository.ts).
     */
    async claimDueNotification (claimMs: number, tried: string[] = [], channels?: ClaimChannels): Promise<DueNotification | null> {
      return await claimOutboxRow(sql, 'alert', claimMs, tried, channels, async (claimed, rootId) => {
        const [row] = await sql<Array<AlertRow & ClaimedColumns>>`
          with ${claimed}
          select claimed.id as outbox_id, claimed.claim_id, claimed.channel, claimed.attempts, ${alertColumns},
                 b.name as budget_name, b.currency, b.scope_type, b.scope_id
          from claimed join budget_alert_history h on h.root_id = ${rootId} and h.id = claimed.alert_id
          join budget_definitions b on b.root_id = ${rootId} and b.id = h.budget_id`
        return row === undefined ? undefined : { ...claimedOf(row, rootId), alert: toAlert(row) }
      })
    },

    /**
     * Claims the next due delivery of a drift from the provider's bill (sql/functions/reconciliation.sql), as
     * claimDueNotification does a crossing's; null when none is due.
     */
    async claimDueDrift (claimMs: number, tried: string[] = [], channels?: ClaimChannels): Promise<DueDriftNotification | null> {
      return await claimOutboxRow(sql, 'drift', claimMs, tried, channels, async (claimed, rootId) => {
        const [row] = await sql<Array<DriftRow & ClaimedColumns>>`
          with ${claimed}
          select claimed.id as outbox_id, claimed.claim_id, claimed.channel, claimed.attempts,
                 r.id, r.provider, r.day::text as day, r.provider_amount::text as provider_amount, r.recorded_amount::text as recorded_amount,
                 r.difference::text as difference, r.ratio::text as ratio, r.tolerance::text as tolerance, r.alerted_at,
                 b.id as budget_id, b.name as budget_name, b.currency, b.scope_type, b.scope_id
          from claimed join budget_recon_drifts r on r.root_id = ${rootId} and r.id = claimed.drift_id
          join budget_definitions b on b.root_id = ${rootId} and b.id = r.budget_id`
        return row === undefined
          ? undefined
          : {
              ...claimedOf(row, rootId),
              drift: { id: row.id, provider: row.provider, day: row.day, providerAmount: row.provider_amount, recordedAmount: row.recorded_amount, difference: row.difference, ratio: row.ratio, tolerance: row.tolerance, alertedAt: row.alerted_at.toISOString() }
            }
      })
    },

    /** Claims the next due delivery of an approval request's step (lib/approvals), as claimDueNotification does a crossing's; null when none is due. */
    async claimDueApprovalStep (claimMs: number, tried: string[] = [], channels?: ClaimChannels): Promise<DueApprovalStepNotification | null> {
      return await claimOutboxRow(sql, 'approval', claimMs, tried, channels, async (claimed, rootId) => {
        const [row] = await sql<Array<ApprovalStepRow & ClaimedColumns>>`
          with ${claimed}
          select claimed.id as outbox_id, claimed.claim_id, claimed.channel, claimed.attempts, claimed.approval_level as level,
                 r.id as request_id, r.amount::text as amount, r.reason, r.requested_by, r.levels_required, r.policy, r.created_at, r.expires_at,
                 d.decided_by, d.verdict, d.comment, d.decided_at,
                 b.id as budget_id, b.name as budget_name, b.currency, b.scope_type, b.scope_id
          from claimed join budget_approval_requests r on r.root_id = ${rootId} and r.id = claimed.approval_request_id
          left join budget_approval_decisions d on d.root_id = ${rootId} and d.request_id = r.id and d.level = claimed.approval_level
          join budget_definitions b on b.root_id = ${rootId} and b.id = r.budget_id`
        if (row === undefined) return undefined
        return {
          ...claimedOf(row, rootId),
          request: {
            id: row.request_id,
            amount: normalizeMoney(row.amount),
            reason: row.reason,
            requestedBy: row.requested_by,
            levelsRequired: row.levels_required,
            policy: row.policy,
            createdAt: row.created_at.toISOString(),
            expiresAt: row.expires_at.toISOString()
          },
          level: row.level,
          decision: row.decided_by === null ? null : { decidedBy: row.decided_by, verdict: row.verdict!, comment: row.comment, decidedAt: row.decided_at!.toISOString() }
        }
      })
    },

    /**
     * Records a claimed delivery as done. False when the claim is no longer the row's (it outlived its
     * deadline and another process claimed the row): then nothing is written.
     */
    async markDelivered ({ outboxId, rootId, claimId }: OutboxClaim): Promise<boolean> {
      const updated = await sql`
        update budget_notification_outbox
        set status = 'delivered', attempts = attempts + 1, delivered_at = now(), last_error = null, claim_id = null
        where root_id = ${rootId} and id = ${outboxId} and claim_id = ${claimId} and status = 'pending'`
      return updated.count > 0
    },

    /** Records a claimed delivery's failure: tried again `retryInMs` from now, or failed for good (null). False as markDelivered. */
    async markAttemptFailed ({ outboxId, rootId, claimId }: OutboxClaim, error: string, retryInMs: number | null): Promise<boolean> {
      const updated = await sql`
        update budget_notification_outbox
        set attempts = attempts + 1, last_error = ${error}, claim_id = null,
            status = ${retryInMs === null ? 'failed' : 'pending'},
            next_attempt_at = now() + ${`${retryInMs ?? 0} milliseconds`}::interval
        where root_id = ${rootId} and id = ${outboxId} and claim_id = ${claimId} and status = 'pending'`
      return updated.count > 0
    }
  }
}

function toApproval (row: Approval): Approval {
  return {
    ...row,
    amount: normalizeMoney(row.amount),
    spentAtApproval: normalizeMoney(row.spentAtApproval),
    periodStart: new Date(row.periodStart).toISOString(),
    createdAt: new Date(row.createdAt).toISOString(),
    expiresAt: new Date(row.expiresAt).toISOString()
  }
}

export type AlertRepository = ReturnType<typeof createAlertRepository>
