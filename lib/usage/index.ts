// The usage ledger: usage records stored once per idempotency key (one or a batch of 10,000), and the
// live status they sum to (spend, burn rate, forecast, health). What other parts of the plugin may use of it:
import type { Sql } from 'postgres'
import { createBudgetRepository } from '../budgets/index.js'
import { boundedTransaction, withBoundedBegin } from '../kernel/database/bounded.js'
import type { Db } from '../kernel/database/db.js'
import type { Logger } from '../kernel/logger.js'
import type { Part } from '../kernel/part.js'
import { createUsageCollector, type UsageCollector } from './collector.js'
import { createForecastRepository } from './forecast-repository.js'
import { createStatusRepository } from './status-repository.js'
import { createBudgetTracker, type TrackerOptions, type UsageTracker } from './tracker.js'
import { createUsageRepository } from './usage-repository.js'

export type { UsageCollector } from './collector.js'
export type { MetricBudget, StatusRepository } from './status-repository.js'
export { budgetHealth, computeStatus, currentAlertsReached, remainingUnits } from './status-rules.js'
export type { BudgetHealth, BudgetStatusInfo } from './status-rules.js'
export type { UsageMetadata, UsageTracker } from './tracker.js'
export type { UnbudgetedValues } from './usage-repository.js'

export interface Usage {
  /** Reads of usage and status, and the gate's records, on the shared pool. */
  tracker: UsageTracker
  /** One record from the admin API, in a bounded transaction of its own. */
  recordUsage: UsageTracker['record']
  /** The bulk collector (POST /usage/batch): the tracker's rules, a batch stored in one bounded transaction. */
  collector: UsageCollector
}

/** The ledger: admin writes run in transactions bounded at `adminTimeoutMs`, on a connection of their own (lib/kernel/database/bounded.ts). */
export function createUsage (sql: Sql, adminTimeoutMs: number, log: Logger, options: TrackerOptions): Part<Usage> {
  const trackerOn = (db: Db) => createBudgetTracker({ budgets: createBudgetRepository(db), usage: createUsageRepository(db), status: createStatusRepository(db), forecasts: createForecastRepository(db) }, options)
  const inBoundedTransaction = boundedTransaction(sql, adminTimeoutMs, log)
  return {
    api: {
      tracker: trackerOn(sql),
      recordUsage: async (request, recordOptions) => await inBoundedTransaction(async (tx) => await trackerOn(tx).record(request, recordOptions)),
      collector: createUsageCollector(withBoundedBegin(sql, adminTimeoutMs, log), options)
    }
  }
}
