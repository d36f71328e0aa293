// Alerts as operators see them: each threshold crossing (recorded once by the database), its
// deliveries, acknowledgements, and the approvals that lift require-approval.
import { AlertNotFoundError, BudgetNotActiveError, InvalidFieldError } from '../kernel/errors.js'
import { fromUnits, parsePositiveMoney, toUnits } from '../kernel/money.js'
import type { AlertRecord, AlertRepository, Approval, NewApproval } from './alert-repository.js'
import { parseTimestamp } from '../kernel/timestamps.js'
import type { UsageTracker } from '../usage/index.js'
import { isUuid } from '../kernel/database/db.js'

export interface ApprovalRequest {
  /** How much more may be spent past the point of approval. */
  amount: string | number
  /** Until when; default: one hour from now. Never past the current period. */
  expiresAt?: string | Date
  reason?: string
}

const HOUR = 3_600_000

export function createBudgetAlerts (alerts: AlertRepository, tracker: UsageTracker, now: () => Date) {
  /**
   * The approval a request stands for, as it is stored (insertApproval): the spend it starts from (settled and
   * reserved now) and its end, within the current period. Refused before anything is read when the request is bad.
   */
  async function approvalOf (budgetId: string, request: ApprovalRequest, who: string): Promise<NewApproval> {
    // Every check on the request first: a refused approval reads nothing that could refresh a cache row.
    const amount = parsePositiveMoney(request.amount, 'amount')
    const expiresAt = request.expiresAt === undefined ? new Date(now().getTime() + HOUR) : parseTimestamp(request.expiresAt, 'expiresAt')
    if (expiresAt <= now()) throw new InvalidFieldError('expiresAt', 'must be in the future')
    // An approval lifts require-approval in the current window; a budget with none has nothing to approve.
    const window = await tracker.getWindow(budgetId)
    if (window.state !== 'active') throw new BudgetNotActiveError(budgetId, now().toISOString(), window.state)
    const status = await tracker.getBudgetStatus(budgetId)
    const periodEnd = new Date(status.periodEnd)
    return {
      budgetId,
      periodStart: new Date(status.periodStart),
      amount,
      spentAtApproval: fromUnits(toUnits(status.currentAmount) + toUnits(status.reservedAmount)),
      approvedBy: who,
      reason: request.reason ?? null,
      expiresAt: expiresAt < periodEnd ? expiresAt : periodEnd
    }
  }

  return {
    /** Every crossing of the budget, newest first, with its deliveries. */
    async listAlerts (budgetId: string): Promise<AlertRecord[]> {
      await tracker.getBudgetStatus(budgetId) // 404 for an unknown budget
      return await alerts.listAlerts(budgetId)
    },

    /** The latest crossings across budgets, for a feed or a dashboard. `within`: only these budgets' (a scoped principal's area). */
    async listRecentAlerts (limit = 50, within: ReadonlySet<string> | null = null): Promise<AlertRecord[]> {
      return await alerts.listRecentAlerts(limit, within === null ? null : [...within])
    },

    async acknowledgeAlert (budgetId: string, alertId: string, who: string, requestId: string | null = null): Promise<AlertRecord> {
      const acknowledged = isUuid(budgetId) && isUuid(alertId) ? await alerts.acknowledge(budgetId, alertId, who, requestId) : null
      if (acknowledged === null) throw new AlertNotFoundError(alertId, budgetId)
      return acknowledged
    },

    /** Lets calls past require-approval for `amount` more spend until `expiresAt`, recorded with who approved. */
    async approve (budgetId: string, request: ApprovalRequest, who: string, requestId: string | null = null): Promise<Approval> {
      return await alerts.insertApproval(await approvalOf(budgetId, request, who), requestId)
    },

    approvalOf,

    async listApprovals (budgetId: string): Promise<Approval[]> {
      await tracker.getBudgetStatus(budgetId)
      return await alerts.listApprovals(budgetId)
    }
  }
}

export type BudgetAlerts = ReturnType<typeof createBudgetAlerts>
