// The registry's rules for one budget and for a parent-child pair; pure, so every rule is tested without I/O.
// A request's shape (types, enums, lengths, patterns, ranges) is the API schema's, checked at both doors
// (lib/kernel/validator.ts); here are the rules a schema cannot say: between fields, exact money, thresholds,
// blank text. The CHECK constraints on budget_definitions mirror both, as the last line (docs/design-decisions.md).
import { CurrencyMismatchError, ExceedsParentError, InvalidFieldError, UnknownChannelError } from '../kernel/errors.js'
import { compareMoney, numberToDecimal, parseMoney, parsePositiveMoney, toUnits } from '../kernel/money.js'
import type { BudgetValues } from './budget-repository.js'
import type { ApprovalPolicy, BudgetAlert, BudgetDigest, BudgetFilters, CreateBudgetRequest, Period, RateLimits } from '../kernel/schemas.js'
import { parseTimestamp } from '../kernel/timestamps.js'

const DAY = 86_400_000
/** The longest a period of each kind can be; a custom period is as long as its dates say. */
const LONGEST_PERIOD: Record<Exclude<Period, 'custom'>, number> = {
  daily: DAY,
  weekly: 7 * DAY,
  monthly: 31 * DAY,
  quarterly: 92 * DAY,
  annual: 366 * DAY
}

/** Checks a whole budget (as created, or as it would be after an update) and puts it in canonical form. Its shape was checked already. */
export function normalizeBudget (input: CreateBudgetRequest): BudgetValues {
  const startDate = parseTimestamp(input.startDate, 'startDate')
  const endDate = input.endDate == null ? null : parseTimestamp(input.endDate, 'endDate')
  if (input.period === 'custom' && endDate === null) throw new InvalidFieldError('endDate', "is required when period is 'custom'")
  if (endDate !== null && endDate <= startDate) throw new InvalidFieldError('endDate', 'must be after startDate')
  const calendar = normalizeCalendar(input)
  return {
    name: requireText(input.name, 'name'),
    description: input.description ?? null,
    scopeType: input.scopeType,
    scopeId: input.scopeId,
    parentId: input.parentId ?? null,
    amount: parsePositiveMoney(input.amount, 'amount'),
    currency: input.currency,
    period: input.period,
    startDate,
    endDate,
    recurring: input.recurring ?? true,
    ...calendar,
    filters: normalizeFilters(input.filters ?? {}),
    rateLimits: normalizeRateLimits(input.rateLimits ?? {}),
    metrics: input.metrics ?? false,
    alerts: normalizeAlerts(input.alerts ?? []),
    enforcement: input.enforcement ?? 'hard',
    digest: normalizeDigest(input.digest ?? null),
    nearLimit: input.nearLimit ?? null,
    // The same precision rules as amount: an exact decimal in the budget's currency, above zero.
    maxCallCost: input.maxCallCost == null ? null : parsePositiveMoney(input.maxCallCost, 'maxCallCost')
  }
}

/** A digest as stored: null for none, else its frequency and its channels (the schema made them 1 to 20, each once). */
function normalizeDigest (digest: BudgetDigest | null): BudgetDigest | null {
  return digest === null ? null : { every: digest.every, channels: [...digest.channels] }
}

/**
 * The budget's calendar. A budget that names its zone or fiscal year wants calendar windows unless it
 * says otherwise; one that names neither keeps the seed's windows, stepped from its startDate. A custom
 * period is a length of time, never aligned to a calendar. (Whether PostgreSQL knows the zone is the
 * registry's check: it is PostgreSQL that computes the windows.)
 */
function normalizeCalendar (input: CreateBudgetRequest): Pick<BudgetValues, 'timezone' | 'fiscalYearStartMonth' | 'periodAlignment'> {
  const named = input.timezone !== undefined || input.fiscalYearStartMonth !== undefined
  const periodAlignment = input.periodAlignment ?? (named && input.period !== 'custom' ? 'calendar' : 'start')
  const fiscalYearStartMonth = input.fiscalYearStartMonth ?? 1
  if (typeof input.timezone === 'string' && input.timezone.trim() === '') throw new InvalidFieldError('timezone', 'must be an IANA time zone name such as America/New_York')
  if (input.period === 'custom' && periodAlignment === 'calendar') {
    throw new InvalidFieldError('periodAlignment', "must be 'start' for a custom period: it is a length of time, not a calendar window")
  }
  if (periodAlignment === 'start' && fiscalYearStartMonth !== 1) {
    throw new InvalidFieldError('fiscalYearStartMonth', "applies to calendar windows: set periodAlignment to 'calendar' (windows stepped from startDate follow startDate)")
  }
  return { timezone: input.timezone ?? 'UTC', fiscalYearStartMonth, periodAlignment }
}

/** Filters as stored: absent rather than empty (the schema checked their shape). */
function normalizeFilters (filters: BudgetFilters): BudgetFilters {
  const { models, tags } = filters
  return {
    ...(models === undefined ? {} : { models: [...models] }),
    ...(tags === undefined || Object.keys(tags).length === 0 ? {} : { tags: { ...tags } })
  }
}

/** Rate limits as stored: only those given (the schema made them whole numbers within the columns). */
function normalizeRateLimits (limits: RateLimits): RateLimits {
  return {
    ...(limits.requestsPerMinute === undefined ? {} : { requestsPerMinute: limits.requestsPerMinute }),
    ...(limits.tokensPerMinute === undefined ? {} : { tokensPerMinute: limits.tokensPerMinute })
  }
}

/**
 * Calls match model filters by the price-table name of the model called, so a filter naming a dated
 * snapshot or an alias ('gpt-4o-2024-08-06') could never match: it is refused, naming the name to use.
 */
export function checkFilterModels (filters: BudgetFilters, modelName: (name: string) => string): void {
  for (const pattern of filters.models ?? []) {
    const name = pattern.endsWith('*') ? pattern : modelName(pattern)
    if (name !== pattern) {
      throw new InvalidFieldError('filters.models', `names '${pattern}', which calls are counted as: '${name}' (the price table's name); filter on '${name}'`)
    }
  }
}

/** A name is text once its spaces are trimmed: "   " is no name. */
function requireText (value: string, field: string): string {
  const text = value.trim()
  if (text === '') throw new InvalidFieldError(field, 'must not be empty or only spaces')
  return text
}

/** Alerts sorted by threshold, one alert per threshold and basis. */
function normalizeAlerts (alerts: BudgetAlert[]): BudgetAlert[] {
  const policies = new Map<BudgetAlert, ApprovalPolicy>()
  alerts.forEach((alert, index) => {
    // A percent with more than 4 decimals (1e-7) is a typo, not a threshold anyone means.
    if (!/^\d+(\.\d{1,4})?$/.test(numberToDecimal(alert.threshold)) || alert.threshold < 0.0001) {
      throw new InvalidFieldError(`alerts.${index}.threshold`, 'must be a percent from 0.0001 to 1000 with at most 4 decimal places')
    }
    if (alert.approvalPolicy !== undefined) policies.set(alert, checkedPolicy(alert, `alerts.${index}.approvalPolicy`))
  })
  if (alerts.filter((alert) => alert.approvalPolicy !== undefined).length > 1) {
    throw new InvalidFieldError('alerts', 'names an approvalPolicy on more than one alert: a budget\'s requests for approval follow one policy')
  }
  const sorted = alerts
    .map((alert) => ({ ...alert, notificationChannels: alert.notificationChannels ?? [], ...(policies.has(alert) ? { approvalPolicy: policies.get(alert)! } : {}) }))
    .sort((a, b) => a.threshold - b.threshold)
  const seen = new Set<string>()
  sorted.forEach((alert) => {
    const key = `${alert.threshold}/${alert.basis ?? 'current'}`
    if (seen.has(key)) throw new InvalidFieldError('alerts', `has two ${alert.basis ?? 'current'} alerts at threshold ${alert.threshold}`)
    seen.add(key)
    if (alert.maxPricePerMillion !== undefined) parseMoney(alert.maxPricePerMillion, 'alerts.maxPricePerMillion')
  })
  return sorted
}

/**
 * An alert's approval policy, checked: it goes with require-approval; each level names who decides it; every
 * level but the last has an upTo, each above the one before; the amounts as parseMoney writes them.
 */
function checkedPolicy (alert: BudgetAlert, field: string): ApprovalPolicy {
  const policy = alert.approvalPolicy!
  if (!alert.actions.includes('require-approval')) throw new InvalidFieldError(field, 'goes with the require-approval action: it says who decides a request for more spend')
  let below = 0n
  const levels = policy.levels.map((level, index) => {
    if (level.roles === undefined && level.actors === undefined) throw new InvalidFieldError(`${field}.levels.${index}`, 'must name roles or actors: who decides this level')
    const last = index === policy.levels.length - 1
    if (last !== (level.upTo === undefined)) {
      throw new InvalidFieldError(`${field}.levels.${index}.upTo`, last ? 'must not be set on the last level: it decides whatever is above the others' : 'is required on every level but the last: above it, the next level decides too')
    }
    if (level.upTo === undefined) return level
    const upTo = parsePositiveMoney(level.upTo, `${field}.levels.${index}.upTo`)
    if (toUnits(upTo) <= below) throw new InvalidFieldError(`${field}.levels.${index}.upTo`, 'must be above the upTo of the level before')
    below = toUnits(upTo)
    return { ...level, upTo }
  })
  return { ...policy, levels }
}

export function periodLength (budget: Pick<BudgetValues, 'period' | 'startDate' | 'endDate'>): number {
  return budget.period === 'custom' ? budget.endDate!.getTime() - budget.startDate.getTime() : LONGEST_PERIOD[budget.period]
}

type Described = Pick<BudgetValues, 'name' | 'amount' | 'currency' | 'period' | 'startDate' | 'endDate'>

/**
 * A child lives inside its parent: same currency, an amount no larger, a period no longer.
 * Children may together promise more than the parent holds; the gate enforces the parent anyway.
 */
export function checkChildFitsParent (child: Described, parent: Described): void {
  if (child.currency !== parent.currency) {
    throw new CurrencyMismatchError(`Budget '${child.name}' is in ${child.currency} but its parent '${parent.name}' is in ${parent.currency}`)
  }
  if (compareMoney(child.amount, parent.amount) > 0) {
    throw new ExceedsParentError('amount', `Budget '${child.name}' amount ${child.amount} exceeds its parent '${parent.name}' amount ${parent.amount}`)
  }
  if (periodLength(child) > periodLength(parent)) {
    throw new ExceedsParentError('period', `Budget '${child.name}' has a ${child.period} period, longer than its parent '${parent.name}' ${parent.period} period`)
  }
}

/**
 * Every channel the request names (its alerts' notificationChannels, its digest's channels) is one the
 * plugin configures: a name with no channel would take the alert nowhere. Only what the request names
 * is checked, so an update that leaves a stored budget's channels alone still applies to it.
 */
export function checkChannels (request: Pick<CreateBudgetRequest, 'alerts' | 'digest'>, configured: readonly string[]): void {
  const known = new Set(configured)
  const named: Array<[string, unknown]> = [
    ...(Array.isArray(request.alerts) ? request.alerts : []).flatMap((alert, index) =>
      (Array.isArray(alert?.notificationChannels) ? alert.notificationChannels : []).map((channel, at): [string, unknown] => [`alerts.${index}.notificationChannels.${at}`, channel])),
    ...(Array.isArray(request.digest?.channels) ? request.digest.channels : []).map((channel, at): [string, unknown] => [`digest.channels.${at}`, channel])
  ]
  for (const [field, channel] of named) {
    if (typeof channel === 'string' && !known.has(channel)) throw new UnknownChannelError(field, channel, [...known])
  }
}
