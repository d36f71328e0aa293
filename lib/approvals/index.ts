// Requests for approval, decided level by level by the budget's approval policy (approvals.ts).
export { createApprovals, DEFAULT_POLICY, levelsRequired, type BudgetApprovals, type Decider } from './approvals.js'
