// The audit log: every change to budgets, rates and channels, who made it and when. Writers record in
// their own transaction, so the entry hands out the store for them.
export { createAuditRepository } from './audit-repository.js'
export type { AuditContext } from './audit-repository.js'
export type { BudgetAudit } from './audit.js'
