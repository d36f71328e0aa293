// One day of one account's cost for one combination of a report's dimensions, as every source gives it:
// the row budget_provider_costs stores (sql/migrations/006_provider_costs.sql), its natural key and amount.
import { isStorableText } from '../kernel/json-limits.js'

export type CostSource = 'openai' | 'anthropic' | 'csv'

export interface CostBucket {
  source: CostSource
  provider: string
  account: string
  /** The UTC day the bucket starts, YYYY-MM-DD. */
  date: string
  /** A dimension the source does not give is ''. */
  project: string
  lineItem: string
  model: string
  costType: string
  tokenType: string
  serviceTier: string
  contextWindow: string
  /** ISO 4217, upper case. */
  currency: string
  /** A canonical decimal in the currency's major unit (lib/kernel/exact-json.ts exactDecimal). */
  amount: string
}

/** The dimensions' longest texts, as the table's checks have them. */
export const DIMENSION_LIMITS = { account: 256, project: 256, lineItem: 512, model: 256, costType: 64, tokenType: 64, serviceTier: 64, contextWindow: 64 } as const

/** Digits an amount may have before, and after, the point: every report's amounts fit, and 1e400 does not. */
export const AMOUNT_DIGITS = 40

export const PROVIDER_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/
export const CURRENCY = /^[A-Z]{3}$/

/** Why a dimension's text cannot be stored, or null when it can. */
export function dimensionProblem (name: keyof typeof DIMENSION_LIMITS, text: string): string | null {
  if (text.length > DIMENSION_LIMITS[name]) return `is longer than ${DIMENSION_LIMITS[name]} characters`
  if (!isStorableText(text)) return 'contains a NUL character or an unpaired surrogate'
  return null
}

/** The natural key, one string: two buckets with the same key are the same bucket. */
export function bucketKey (bucket: CostBucket): string {
  return JSON.stringify([bucket.source, bucket.provider, bucket.account, bucket.date, bucket.project, bucket.lineItem, bucket.model,
    bucket.costType, bucket.tokenType, bucket.serviceTier, bucket.contextWindow, bucket.currency])
}

/** The UTC day of an instant, YYYY-MM-DD. */
export function utcDay (at: Date): string {
  return at.toISOString().slice(0, 10)
}
