// Provider costs: what OpenAI's and Anthropic's own cost reports say was spent, collected on a schedule, and
// what a CSV says for every other provider, stored once per bucket (docs/provider-costs.md). Reconciliation
// with the budgets' own spend reads these rows.
import type { Sql } from 'postgres'
import { boundedTransaction } from '../kernel/database/bounded.js'
import type { Logger } from '../kernel/logger.js'
import type { Part } from '../kernel/part.js'
import { anthropicCostsClient } from './anthropic-costs.js'
import { collectOnce, type CollectorSchedule } from './collector.js'
import { createProviderCostRepository } from './cost-repository.js'
import { FETCH_DEFAULTS, type FetchPolicy } from './fetch-report.js'
import { openAiCostsClient } from './openai-costs.js'
import { createProviderCostService, type ProviderCosts } from './provider-costs.js'
import type { ReportClient } from './report-page.js'
import { scheduleCollectors } from './scheduler.js'

export type { ProviderCosts, CostListQuery } from './provider-costs.js'
export type { CollectOutcome } from './collector.js'
export type { StoredCost } from './cost-repository.js'
export { CSV_COLUMNS, MAX_CSV_ROWS } from './csv-costs.js'

export interface CostCollectorOptions {
  /** An admin key: OpenAI's (sk-admin-…) or Anthropic's (sk-ant-admin…). */
  adminKey: string
  /** The account the buckets are stored under; OpenAI also receives it as OpenAI-Organization. Default 'default'. */
  organization?: string
  /** The API's origin (a local server in tests). */
  baseUrl?: string
  /** How often the collector runs; 0: only when asked (POST {prefix}/provider-costs/collect). Default 6 hours. */
  intervalMs?: number
  /** Days before today read again each run, so that corrected buckets are seen. Default 3. */
  lookbackDays?: number
}

export interface ProviderCostsOptions {
  openai?: CostCollectorOptions
  anthropic?: CostCollectorOptions
  /** How a page is fetched again after a 429 or a 5xx (lib/provider-costs/fetch-report.ts). */
  retry?: Partial<Pick<FetchPolicy, 'serverErrorRetries' | 'rateLimitRetries' | 'backoffMs' | 'maxRetryAfterMs' | 'timeoutMs'>>
}

// maxPagesPerRun: a window of up to 91 days is 3 pages of 31 days; 100 leaves room for a provider that pages
// more finely, and bounds the requests of one that never stops saying has_more.
export const COLLECTOR_DEFAULTS = { intervalMs: 6 * 3_600_000, lookbackDays: 3, maxCatchUpDays: 90, maxPagesPerRun: 100 }

/** afterCollection: run after each collector's run (the drift check of lib/reconciliation/, handed in by the plugin's root). */
export function createProviderCosts (sql: Sql, options: ProviderCostsOptions, adminTimeoutMs: number, log: Logger, now: () => Date,
  afterCollection: () => Promise<void> = async () => {}): Part<ProviderCosts> {
  const repository = createProviderCostRepository(sql)
  const inBoundedTransaction = boundedTransaction(sql, adminTimeoutMs, log)
  const fetchPolicy: FetchPolicy = { ...FETCH_DEFAULTS, ...options.retry }
  const configured: Array<[ReportClient, CostCollectorOptions]> = []
  if (options.openai !== undefined) configured.push([openAiCostsClient(options.openai), options.openai])
  if (options.anthropic !== undefined) configured.push([anthropicCostsClient(options.anthropic), options.anthropic])
  const scheduler = scheduleCollectors(configured.map(([client, collector]) => {
    const schedule: CollectorSchedule = { ...COLLECTOR_DEFAULTS, lookbackDays: collector.lookbackDays ?? COLLECTOR_DEFAULTS.lookbackDays }
    return {
      intervalMs: collector.intervalMs ?? COLLECTOR_DEFAULTS.intervalMs,
      run: async (signal: AbortSignal) => {
        const outcome = await collectOnce(client, repository, { schedule, fetch: fetchPolicy, now, signal, log })
        await afterCollection()
        return outcome
      }
    }
  }), log)
  const service = createProviderCostService(repository,
    async (work) => await inBoundedTransaction(async (tx) => await work(createProviderCostRepository(tx))),
    scheduler.runNow)
  return { api: service, start: scheduler.start, stop: scheduler.stop }
}
