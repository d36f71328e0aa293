// The rules a usage record meets before it is stored, one place for POST /:id/usage (tracker.record) and POST /usage/batch (collector).
import { BudgetNotActiveError, exchangeRateError, IdempotencyConflictError, InvalidFieldError } from '../errors.js'
import { parsePositiveMoney, toUnits, type Money } from '../money.js'
import type { BudgetWindow } from '../repository/status.js'
import type { UsageRecord } from '../repository/usage.js'
import type { BudgetDefinition } from '../schemas.js'
import { checkTags } from '../tags.js'
import { parseTimestamp } from '../timestamps.js'

// A clock a little ahead of ours is not the future; a day ahead is a mistake.
const CLOCK_SKEW_MS = 5 * 60_000

/** A record as a request gives it (RecordUsageRequest without its budget). */
export interface UsageInput {
  amount: string | number
  currency: string
  source?: string
  description?: string
  metadata?: Record<string, unknown>
  occurredAt?: string | Date
}

/** A record's fields as they are stored. */
export interface ReadUsage {
  amount: Money
  metadata: Record<string, unknown>
  occurredAt: Date
  idempotencyKey: string | null
}

export interface UsageRuleOptions {
  now: () => Date
  /** A model's price-table name (see TrackerOptions.modelName). */
  modelName?: (name: string) => string
}

/** The checks that need no database: amount, timestamp, tags; the model under its price-table name and the idempotency key. */
export function readUsage (request: UsageInput, idempotencyKey: string | undefined, options: UsageRuleOptions): ReadUsage {
  const amount = parsePositiveMoney(request.amount, 'amount')
  const metadata = withModelName(request.metadata ?? {}, options.modelName)
  const occurredAt = request.occurredAt === undefined ? options.now() : parseTimestamp(request.occurredAt, 'occurredAt')
  if (occurredAt.getTime() > options.now().getTime() + CLOCK_SKEW_MS) throw new InvalidFieldError('occurredAt', 'is in the future')
  if (metadata.tags !== undefined) checkTags(metadata.tags, 'metadata.tags')
  return { amount, metadata, occurredAt, idempotencyKey: idempotencyKey ?? (typeof metadata.requestId === 'string' ? metadata.requestId : null) }
}

export function hasFilters (budget: BudgetDefinition): boolean {
  return budget.filters.models !== undefined || budget.filters.tags !== undefined
}

/** A record counts only toward budgets whose filters it matches (budget_matches, sql/007, decides `matches`). */
export function checkMatches (budget: BudgetDefinition, matches: boolean): void {
  if (!matches) {
    throw new InvalidFieldError('metadata', `does not match the filters of budget '${budget.name}' (${JSON.stringify(budget.filters)}): usage counts only toward budgets whose filters it matches`)
  }
}

/** The budget must have an active window at the time the spend happened. */
export function checkActive (budget: BudgetDefinition, occurredAt: Date, window: BudgetWindow | null): void {
  if (window?.state !== 'active' || occurredAt < window.periodStart) {
    throw new BudgetNotActiveError(budget.id, occurredAt.toISOString(), window?.state ?? 'unknown')
  }
}

/** A PostgreSQL error that storing one record raised, as the caller's mistake where it is one. */
export function storageError (error: unknown): unknown {
  // Usage in another currency is converted for each budget it counts toward (sql/012); without a rate it is refused.
  if ((error as { code?: string }).code === 'RB001') return exchangeRateError(error)
  // numeric_value_out_of_range: the amount fits its column, but a budget's total would not.
  if ((error as { code?: string }).code === '22003') return new InvalidFieldError('amount', 'would take a budget\'s total past the largest amount that can be stored (10^18)')
  return error
}

/** A record whose key was used before on its budget: the first one, if it is the same usage. */
export function replayOf (first: UsageRecord, amount: Money, currency: string, idempotencyKey: string): UsageRecord {
  if (toUnits(first.amount) !== toUnits(amount) || first.currency !== currency) {
    throw new IdempotencyConflictError(idempotencyKey, `it recorded ${first.amount} ${first.currency}`)
  }
  return first
}

/** The record's model under its price-table name, so model filters match it as they match a gated call. */
function withModelName (metadata: Record<string, unknown>, modelName: ((name: string) => string) | undefined): Record<string, unknown> {
  const given = metadata.modelId
  const name = typeof given === 'string' && modelName !== undefined ? modelName(given) : given
  return name === given ? metadata : { ...metadata, modelId: name, upstreamModel: metadata.upstreamModel ?? given }
}
