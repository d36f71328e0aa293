// Provider costs as the admin API offers them: import a CSV, list what is stored, run the collectors now.
import { InvalidFieldError } from '../kernel/errors.js'
import type { AuditContext } from '../audit/index.js'
import { PROVIDER_NAME, type CostSource } from './cost-bucket.js'
import type { ProviderCostRepository, StoreCounts, StoredCost } from './cost-repository.js'
import type { CollectOutcome } from './collector.js'
import { readCostCsv } from './csv-costs.js'

export interface CostListQuery {
  provider?: string
  source?: CostSource
  from?: string
  to?: string
  limit?: number
  cursor?: string
}

const DAY = /^\d{4}-\d{2}-\d{2}$/
const validDay = (text: string): boolean => DAY.test(text) && !Number.isNaN(Date.parse(`${text}T00:00:00Z`)) && new Date(`${text}T00:00:00Z`).toISOString().startsWith(text)

export function createProviderCostService (repository: ProviderCostRepository, inTransaction: <T>(work: (repository: ProviderCostRepository) => Promise<T>) => Promise<T>, runCollectors: () => Promise<CollectOutcome[]>) {
  return {
    /** Stores a cost CSV whole, in one transaction, or nothing of it (a 400 naming the line). */
    async importCsv (text: string, context: AuditContext): Promise<StoreCounts & { rows: number }> {
      const buckets = await readCostCsv(text)
      const counts = await inTransaction(async (tx) => await tx.storeBuckets(buckets, context))
      return { rows: buckets.length, ...counts }
    },

    /** Buckets by day then id, a page at a time; the cursor is the last bucket's id (buckets are never deleted). */
    async list (query: CostListQuery = {}): Promise<{ costs: StoredCost[], nextCursor: string | null }> {
      const limit = query.limit ?? 100
      if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new InvalidFieldError('limit', 'must be an integer from 1 to 1000')
      if (query.provider !== undefined && !PROVIDER_NAME.test(query.provider)) throw new InvalidFieldError('provider', 'is not a provider name (a-z, 0-9, ".", "_", "-")')
      for (const name of ['from', 'to'] as const) {
        const day = query[name]
        if (day !== undefined && !validDay(day)) throw new InvalidFieldError(name, 'must be a day as YYYY-MM-DD')
      }
      if (query.from !== undefined && query.to !== undefined && query.from > query.to) throw new InvalidFieldError('to', 'must not be before from')
      const cursor = query.cursor ?? null
      if (cursor !== null && (!/^[1-9]\d{0,18}$/.test(cursor) || BigInt(cursor) > 2n ** 63n - 1n || !await repository.costExists(cursor))) {
        throw new InvalidFieldError('cursor', 'is not a cursor this API returned')
      }
      const found = await repository.list({ provider: query.provider, source: query.source, from: query.from, to: query.to }, cursor, limit + 1)
      const costs = found.slice(0, limit)
      return { costs, nextCursor: found.length > limit ? costs[costs.length - 1]!.id : null }
    },

    /** Runs every configured collector now (joining a run under way): what each stored, or why it failed. */
    async collect (): Promise<{ collectors: CollectOutcome[] }> {
      return { collectors: await runCollectors() }
    }
  }
}

export type ProviderCosts = ReturnType<typeof createProviderCostService>
