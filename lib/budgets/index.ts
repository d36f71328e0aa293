// Budgets: their definitions, hierarchy and rules (lib/budgets/registry.ts). Other parts read definitions
// through the store this entry hands out.
import type { Sql } from 'postgres'
import { withBoundedBegin } from '../kernel/database/bounded.js'
import type { Logger } from '../kernel/logger.js'
import type { Part } from '../kernel/part.js'
import { createBudgetRegistry, type BudgetRegistry, type RegistryOptions } from './registry.js'

export { createBudgetRepository } from './budget-repository.js'
export type { BudgetRepository } from './budget-repository.js'
export type { BudgetRegistry } from './registry.js'

/** The registry: its writes run in transactions bounded at `adminTimeoutMs`, on a connection of their own (lib/kernel/database/bounded.ts). */
export function createBudgets (sql: Sql, adminTimeoutMs: number, log: Logger, options: RegistryOptions): Part<BudgetRegistry> {
  return { api: createBudgetRegistry(withBoundedBegin(sql, adminTimeoutMs, log), options) }
}
// The registry on a handle of the caller's: the what-if replay applies a proposal by these rules in a transaction it rolls back.
export { createBudgetRegistry } from './registry.js'
export type { RegistryOptions } from './registry.js'
