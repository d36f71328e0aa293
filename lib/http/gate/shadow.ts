// What a call tells of the shadow budgets that would have refused, clamped or downgraded it: the
// x-budget-shadow header, and metadata.shadow on its usage record (the reason and the binding figures).
import type { ShadowVerdict } from '../../gate/index.js'

export const SHADOW_HEADER = 'x-budget-shadow'

/** `<budgetId>;code=<code>;outcome=<outcome>` for each shadow budget, joined by ", ". */
export function shadowHeader (verdicts: readonly ShadowVerdict[]): string {
  return verdicts.map((verdict) => `${verdict.budgetId};code=${verdict.code};outcome=${verdict.outcome}`).join(', ')
}

/** Each verdict as the usage record keeps it: the figures are the budget's as-if ledger before this call, in its currency. */
export function shadowMetadata (verdicts: readonly ShadowVerdict[]): Array<Record<string, string | null>> {
  return verdicts.map((verdict) => ({
    budgetId: verdict.budgetId,
    code: verdict.code,
    outcome: verdict.outcome,
    reason: verdict.reason,
    limit: verdict.limit,
    currentAmount: verdict.currentAmount,
    reservedAmount: verdict.reservedAmount,
    remaining: verdict.remaining,
    estimatedCost: verdict.estimatedCost,
    currency: verdict.currency,
    downgradeTo: verdict.downgradeTo
  }))
}
