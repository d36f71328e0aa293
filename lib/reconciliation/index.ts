// Reconciliation with the provider's bill (docs/provider-costs.md#reconciliation): which budget a provider's
// project, workspace or account is; its amount beside the gate's per UTC day; the drift alerted once per day and
// scope; and the true-up that writes the difference into the budget. It reads what lib/provider-costs/ stored.
import type { Sql } from 'postgres'
import { boundedTransaction } from '../kernel/database/bounded.js'
import { bestEffort } from '../kernel/best-effort.js'
import type { Logger } from '../kernel/logger.js'
import type { Part } from '../kernel/part.js'
import { createReconciliationRepository } from './reconciliation-repository.js'
import { createReconciliationService, type Reconciliation } from './reconciliation.js'

export type { Reconciliation, ReportQuery, ReportLineWithDrift } from './reconciliation.js'
export type { CostMapping, MappingKind, ReportLine } from './reconciliation-repository.js'
export { REPORT_CSV_COLUMNS } from './reconciliation-rules.js'

export interface ReconciliationOptions {
  /** How far the provider's amount may be from the gate's, as a fraction of the gate's, before it is a drift: a decimal string or number (default 0.05). */
  tolerance: string
}

export const RECONCILIATION_DEFAULTS: ReconciliationOptions = { tolerance: '0.05' }

export function createReconciliation (sql: Sql, options: ReconciliationOptions, adminTimeoutMs: number, log: Logger, now: () => Date): Part<Reconciliation & { afterCollection: () => Promise<void> }> {
  const inBoundedTransaction = boundedTransaction(sql, adminTimeoutMs, log)
  const service = createReconciliationService(createReconciliationRepository(sql),
    async (work) => await inBoundedTransaction(async (tx) => await work(createReconciliationRepository(tx))), options.tolerance, now)
  // After each collection the drift check runs: a failure is logged, and the next collection (or POST
  // /reconciliation/evaluate) checks the same days again, alerting each drift once.
  const afterCollection = async (): Promise<void> => {
    await bestEffort(log, async () => { await service.evaluate() }, 'the drift check after a cost collection failed')
  }
  return { api: { ...service, afterCollection } }
}
