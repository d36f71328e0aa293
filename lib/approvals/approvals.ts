// Requests for approval, decided level by level. A budget's require-approval alert may name a policy: levels
// in order, each decided by the roles or actors it names, and an amount (upTo) above which the next level must
// approve as well. A request needs its first level and each next one while its amount is above the level's
// upTo; when every level it needs has approved, it becomes an approval as an admin's own is (lib/alerts),
// for its amount and time-boxed. No level is skipped or decided twice, nobody decides their own request or
// two levels of one, and a request past its expiry takes no decision. Each step (the filing, each decision) is
// queued, in its own transaction, for the channels the budget's alerts name (lib/alerts/notifications.ts).
import { ApprovalLevelError, ApprovalRequestClosedError, ApprovalRequestNotFoundError, BudgetNotActiveError, BudgetNotFoundError, InvalidFieldError, NotAnApproverError } from '../kernel/errors.js'
import { parsePositiveMoney, toUnits, type Money } from '../kernel/money.js'
import type { ApprovalPolicy, ApprovalRequestRecord } from '../kernel/schemas.js'
import { parseTimestamp } from '../kernel/timestamps.js'
import type { Db } from '../kernel/database/db.js'
import { isUuid } from '../kernel/database/db.js'
import type { BudgetRepository } from '../budgets/index.js'
import type { UsageTracker } from '../usage/index.js'
import { createAlertRepository, type BudgetAlerts } from '../alerts/index.js'
import { createApprovalRepository, type StoredRequest, type Verdict } from './approval-repository.js'

/** Who files or decides: the admin API's principal, by its actor and role. */
export interface Decider {
  actor: string
  role: 'viewer' | 'editor' | 'approver' | 'admin'
}

/** A budget whose require-approval names no policy: one level, decided by those who may approve (docs/access.md). */
export const DEFAULT_POLICY: ApprovalPolicy = Object.freeze({ levels: [{ name: 'approver', roles: ['approver', 'admin'] }] }) as ApprovalPolicy
const DEFAULT_TTL_MINUTES = 1440
/** A decidable queue is read this many requests at a time, at most MOST_PAGES pages (50,000 requests) a query. */
const PAGE = 500
const MOST_PAGES = 100

/** How many levels a request of `amount` needs: the first, and each next one while the amount is above the level's upTo. */
export function levelsRequired (policy: ApprovalPolicy, amount: Money): number {
  let needed = 1
  while (needed < policy.levels.length && toUnits(amount) > toUnits(policy.levels[needed - 1]!.upTo as Money)) needed++
  return needed
}

/** Why `decider` may not decide the request's next level, or null when it may. */
export function refusalToDecide (request: Pick<StoredRequest, 'policy' | 'requestedBy' | 'decisions'>, decider: Decider): string | null {
  const level = request.policy.levels[request.decisions.length]
  if (level === undefined) return 'The request has no level left to decide'
  if (request.requestedBy === decider.actor) return 'You filed this request: someone else decides it'
  if (request.decisions.some((decision) => decision.decidedBy === decider.actor)) return 'You decided an earlier level of this request: another approver decides this one'
  const named = level.roles?.includes(decider.role) === true || level.actors?.includes(decider.actor) === true
  if (!named) return `Level ${request.decisions.length + 1} (${level.name}) is decided by ${[...(level.roles ?? []).map((role) => `the role ${role}`), ...(level.actors ?? [])].join(', ')}`
  return null
}

export interface ApprovalDeps {
  /** Admin writes: a transaction bounded at adminTimeoutMs (lib/kernel/database/bounded.ts), run again on a conflict. */
  inTransaction: <T>(work: (tx: Db) => Promise<T>) => Promise<T>
  sql: Db
  budgets: BudgetRepository
  tracker: UsageTracker
  alerts: BudgetAlerts
  now: () => Date
}

export function createApprovals ({ inTransaction, sql, budgets, tracker, alerts, now }: ApprovalDeps) {
  const repository = createApprovalRepository(sql)

  /** The request as the API shows it to `viewer`: its levels with their decisions, the next one, and whether the viewer may decide it. */
  function view (request: StoredRequest, viewer: Decider): ApprovalRequestRecord {
    const expired = request.state === 'pending' && request.expiresAt <= now()
    const nextLevel = request.state === 'pending' && !expired ? request.decisions.length + 1 : null
    return {
      id: request.id,
      budgetId: request.budgetId,
      amount: request.amount,
      reason: request.reason,
      requestedBy: request.requestedBy,
      state: expired ? 'expired' : request.state,
      createdAt: request.createdAt.toISOString(),
      expiresAt: request.expiresAt.toISOString(),
      decidedAt: request.decidedAt?.toISOString() ?? null,
      approvalId: request.approvalId,
      levels: request.policy.levels.slice(0, request.levelsRequired).map((level, index) => {
        const decision = request.decisions.find((one) => one.level === index + 1)
        return {
          level: index + 1,
          name: level.name,
          decidedBy: decision?.decidedBy ?? null,
          verdict: decision?.verdict ?? null,
          comment: decision?.comment ?? null,
          decidedAt: decision?.decidedAt.toISOString() ?? null
        }
      }),
      nextLevel,
      mayDecide: nextLevel !== null && refusalToDecide(request, viewer) === null
    }
  }

  return {
    /** Files a request for `amount` more spend on the budget, under its policy as it is now. */
    async fileRequest (budgetId: string, body: { amount: string | number, reason?: string, expiresAt?: string }, requester: Decider, requestId: string | null = null): Promise<ApprovalRequestRecord> {
      const amount = parsePositiveMoney(body.amount, 'amount')
      const approvalExpiresAt = body.expiresAt === undefined ? null : parseTimestamp(body.expiresAt, 'expiresAt')
      if (approvalExpiresAt !== null && approvalExpiresAt <= now()) throw new InvalidFieldError('expiresAt', 'must be in the future')
      const budget = isUuid(budgetId) ? await budgets.findBudget(budgetId) : null
      if (budget === null) throw new BudgetNotFoundError(budgetId)
      // as for an approval: a window of the budget's in force now, whose require-approval the request is about
      const window = await tracker.getWindow(budget.id)
      if (window.state !== 'active') throw new BudgetNotActiveError(budget.id, now().toISOString(), window.state)
      const policy = budget.alerts.find((alert) => alert.approvalPolicy !== undefined)?.approvalPolicy ?? DEFAULT_POLICY
      // it waits its policy's time, never past its period (an approval is of one period) nor past the approval it asks for
      const ttlEnd = new Date(now().getTime() + (policy.requestTtlMinutes ?? DEFAULT_TTL_MINUTES) * 60_000)
      const waits = ttlEnd < window.periodEnd ? ttlEnd : window.periodEnd
      const request = await inTransaction(async (tx) => {
        const requests = createApprovalRepository(tx)
        const filed = await requests.insertRequest({
          budgetId: budget.id,
          amount,
          reason: body.reason ?? null,
          requestedBy: requester.actor,
          policy,
          levelsRequired: levelsRequired(policy, amount),
          approvalExpiresAt,
          // nobody approves a request whose approval would already be over
          expiresAt: approvalExpiresAt !== null && approvalExpiresAt < waits ? approvalExpiresAt : waits
        }, requestId)
        if (filed !== null) await requests.queueStep(filed, 0)
        return filed
      })
      if (request === null) throw new BudgetNotFoundError(budgetId) // archived meanwhile
      return view(request, requester)
    },

    /** Requests newest first (pending by default), of one budget or of `within` (a scoped reader's area; null: every budget). */
    async listRequests (query: { state?: 'pending' | 'approved' | 'rejected' | 'expired', budgetId?: string, decidable?: boolean, limit?: number }, viewer: Decider, within: ReadonlySet<string> | null): Promise<ApprovalRequestRecord[]> {
      if (query.budgetId !== undefined && !isUuid(query.budgetId)) throw new InvalidFieldError('budgetId', 'must be a budget id (a UUID)')
      const budgetId = query.budgetId?.toLowerCase()
      if (budgetId !== undefined && within !== null && !within.has(budgetId)) return [] // another tree's: as a budget with no request
      const limit = query.limit ?? 50
      const filter = { state: query.state ?? 'pending', ...(budgetId === undefined ? {} : { budgetId }), within: within === null ? null : [...within], limit }
      if (query.decidable !== true) return (await repository.listRequests(filter)).map((row) => view(row, viewer))
      // Whether the viewer may decide a request is the policy's to say, read here: pages until `limit` are found.
      const decidable: ApprovalRequestRecord[] = []
      for (let before: { createdAt: Date, id: string } | undefined, pages = 0; decidable.length < limit && pages < MOST_PAGES; pages++) {
        const rows = await repository.listRequests({ ...filter, limit: PAGE, ...(before === undefined ? {} : { before }) })
        decidable.push(...rows.map((row) => view(row, viewer)).filter((one) => one.mayDecide))
        if (rows.length < PAGE) break
        before = { createdAt: rows[rows.length - 1]!.createdAt, id: rows[rows.length - 1]!.id }
      }
      return decidable.slice(0, limit)
    },

    /**
     * Decides the request's next level, which `level` must name. A rejection closes the request; the last level
     * it needs approving makes it an approval, in the same transaction.
     */
    async decide (budgetId: string, id: string, body: { level: number, verdict: Verdict, comment?: string }, decider: Decider, requestId: string | null = null): Promise<ApprovalRequestRecord> {
      if (!isUuid(budgetId) || !isUuid(id)) throw new ApprovalRequestNotFoundError(id, budgetId)
      // The approval a last level makes, read before the transaction: read inside it, it would take a second
      // connection while holding one, and a burst of decisions would hold every connection of the pool waiting.
      const seen = await repository.findRequest(budgetId, id)
      if (seen === null) throw await budgets.findBudget(budgetId) === null ? new BudgetNotFoundError(budgetId) : new ApprovalRequestNotFoundError(id, budgetId)
      const last = body.verdict === 'approve' && body.level === seen.levelsRequired && view(seen, decider).state === 'pending'
      const approval = last
        ? await alerts.approvalOf(seen.budgetId, {
          amount: seen.amount,
          ...(seen.approvalExpiresAt === null ? {} : { expiresAt: seen.approvalExpiresAt }),
          reason: seen.reason ?? `approval request ${seen.id}`
        }, decider.actor) // approvedBy: every decider, named under the lock
        : null
      const decided = await inTransaction(async (tx) => {
        const requests = createApprovalRepository(tx)
        const request = await requests.findRequest(budgetId, id, true)
        if (request === null) throw new ApprovalRequestNotFoundError(id, budgetId)
        const state = view(request, decider).state
        if (state !== 'pending') throw new ApprovalRequestClosedError(id, state)
        const next = request.decisions.length + 1
        if (body.level !== next) throw new ApprovalLevelError(body.level, next)
        const refusal = refusalToDecide(request, decider)
        if (refusal !== null) throw new NotAnApproverError(refusal)
        await requests.insertDecision(request, { level: next, decidedBy: decider.actor, verdict: body.verdict, comment: body.comment ?? null }, requestId)
        await requests.queueStep(request, next)
        if (body.verdict === 'reject') await requests.closeRequest(request, 'rejected', null)
        else if (next === request.levelsRequired) {
          // Every level approved: the approval, for the request's amount and time. The level checks above held
          // under the lock, so the request read before it had these decisions: `approval` was read for this one.
          const deciders = [...request.decisions.map((decision) => decision.decidedBy), decider.actor].join(', ')
          const made = await createAlertRepository(tx).insertApproval({ ...approval!, approvedBy: deciders }, requestId)
          await requests.closeRequest(request, 'approved', made.id)
        }
        return (await requests.findRequest(budgetId, id))!
      })
      return view(decided, decider)
    }
  }
}

export type BudgetApprovals = ReturnType<typeof createApprovals>
