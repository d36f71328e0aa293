// The rules a usage record meets before it is stored, one place for POST /:id/usage (tracker.record) and POST /usage/batch (collector).
import { createHash } from 'node:crypto'
import { BudgetNotActiveError, exchangeRateError, IdempotencyConflictError, InvalidFieldError } from '../kernel/errors.js'
import { parsePositiveMoney, toUnits, type Money } from '../kernel/money.js'
import type { BudgetWindow } from './status-repository.js'
import type { KeyHolder, UsageRecord } from './usage-repository.js'
import type { BudgetDefinition } from '../kernel/schemas.js'
import { checkTags } from '../kernel/tags.js'
import { parseTimestamp } from '../kernel/timestamps.js'

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
  /** An idempotency key is unique within its budget's tree only (the tables distributed on Citus), not across every tree. */
  keysByTree?: boolean
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

/** A record counts only toward budgets whose filters it matches (budget_matches, sql/functions/definitions.sql, decides `matches`). */
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
  return recordFault((error as { code?: string }).code, (error as { detail?: string }).detail) ?? error
}

/**
 * The refusal for a record that cannot be stored: no exchange rate (RB001, detail 'FROM/TO'), or an amount
 * past numeric(28,10) (22003). The single route meets these as errors, the batch (budget_record_usage_batch) as answers.
 */
export function recordFault (code: string | null | undefined, detail: string | null | undefined): Error | null {
  // Usage in another currency is converted for each budget it counts toward (budget_convert); without a rate it is refused.
  if (code === 'RB001') return exchangeRateError({ code, detail }) as Error
  // numeric_value_out_of_range: the amount fits its column, but a converted amount or a budget's total would not.
  if (code === '22003') return new InvalidFieldError('amount', 'would take a budget\'s total past the largest amount that can be stored (10^18)')
  return null
}

/** Where a record was sent: a budget by id, or the caller's scopes (the budget they reach may change between two attempts). */
export type UsageTarget = { budgetId: string } | { scopes: Record<string, string> }

/**
 * What identifies a request under its key (as Stripe compares a retry's parameters with the first's): where it
 * was sent and everything it says, as the client wrote it, in a canonical form (the amount in canonical
 * money, object keys in order; occurredAt only when given). The key itself is not part of it.
 */
export function requestFingerprint (target: UsageTarget, request: UsageInput, read: ReadUsage): string {
  const given = [
    'budgetId' in target ? ['budget', target.budgetId.toLowerCase()] : ['scopes', target.scopes],
    read.amount, request.currency, request.source ?? null, request.description ?? null, request.metadata ?? {},
    request.occurredAt === undefined ? null : read.occurredAt.toISOString()
  ]
  return createHash('sha256').update(canonicalJson(given)).digest('base64url')
}

/**
 * A record whose key was used before: the first one, if this is the same request. A key names one record
 * whatever budget took it; the same key with anything else different is a 409. A record stored before
 * keys were the record's has no fingerprint ('legacy'): its retry is compared as it was then, on amount and currency.
 */
export function replayOf (first: KeyHolder, amount: Money, currency: string, idempotencyKey: string, fingerprint: string): UsageRecord {
  const { record } = first
  if (first.fingerprint === null || first.fingerprint === LEGACY_FINGERPRINT) {
    if (toUnits(record.amount) !== toUnits(amount) || record.currency !== currency) {
      throw new IdempotencyConflictError(idempotencyKey, `it recorded ${record.amount} ${record.currency}`)
    }
  } else if (first.fingerprint !== fingerprint) {
    throw new IdempotencyConflictError(idempotencyKey, `it recorded ${record.amount} ${record.currency} on budget ${record.budgetId} for a request with other parameters; a retry repeats the first request`)
  }
  return record
}

const LEGACY_FINGERPRINT = 'legacy'

function canonicalJson (value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value).filter(([, v]) => v !== undefined).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`
  }
  return JSON.stringify(value) ?? 'null'
}

/** The record's model under its price-table name, so model filters match it as they match a gated call. */
function withModelName (metadata: Record<string, unknown>, modelName: ((name: string) => string) | undefined): Record<string, unknown> {
  const given = metadata.modelId
  const name = typeof given === 'string' && modelName !== undefined ? modelName(given) : given
  return name === given ? metadata : { ...metadata, modelId: name, upstreamModel: metadata.upstreamModel ?? given }
}
