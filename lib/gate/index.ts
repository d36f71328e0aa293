// The gate: admission of model calls against every budget that applies (hold, lease, settle), rate
// limits, and the decision log. The HTTP hooks that call it are in lib/http/gate/.
export { bindingOf } from './decision-log.js'
export type { DecisionLog } from './decision-log.js'
export type { Decision, DecisionOutcome } from './decision-repository.js'
export type { BudgetConstraintCheck } from './decision.js'
export type { BudgetIntegration, BudgetTracker } from './integration.js'
export type { RateRefusal } from './rate-limits.js'
export { sweptBeforeSettling } from './settlements.js'
