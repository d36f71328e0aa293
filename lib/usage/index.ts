// The usage ledger: usage records stored once per idempotency key (one or a batch of 10,000), and the
// live status they sum to (spend, burn rate, forecast, health). What other parts of the plugin may use of it:
export type { UsageCollector } from './collector.js'
export type { MetricBudget, StatusRepository } from './status-repository.js'
export { budgetHealth, computeStatus, currentAlertsReached, remainingUnits } from './status-rules.js'
export type { BudgetHealth, BudgetStatusInfo } from './status-rules.js'
export type { UsageMetadata, UsageTracker } from './tracker.js'
export type { UnbudgetedValues } from './usage-repository.js'
