// Budgets: their definitions, hierarchy and rules (lib/budgets/registry.ts). Other parts read definitions
// through the store this entry hands out.
export { createBudgetRepository } from './budget-repository.js'
export type { BudgetRepository } from './budget-repository.js'
export type { BudgetRegistry } from './registry.js'
