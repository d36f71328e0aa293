// The plugin's options: defaults, and a check at registration so a bad option fails app.ready(), not a request.
import { createHash, timingSafeEqual } from 'node:crypto'
import type { Sql } from 'postgres'
import { isModelApiName, MODEL_APIS } from './model-apis/index.js'
import { OptionsError } from './kernel/errors.js'
import { checkUnbudgetedPolicy, scopesFromHeaders, type GateOptions } from './http/gate/gate-options.js'
import { costFromUsage } from './pricing/estimate.js'
import type { MetricsOptions } from './metrics/metrics.js'
import { DECISION_LOG_DEFAULTS, type DecisionLogOptions } from './gate/decision-log.js'
import { parseEmailChannel, type NotificationOptions } from './alerts/notifications.js'
import { checkPriceTable, createPriceBook, DEFAULT_CHEAP_MODELS, DEFAULT_DOWNGRADES, type PriceBook } from './pricing/pricing.js'
import type { Authorize } from './http/admin/admin.js'
import type { CostCollectorOptions, ProviderCostsOptions } from './provider-costs/index.js'
import { RECONCILIATION_DEFAULTS, type ReconciliationOptions } from './reconciliation/index.js'

export interface BudgetsOptions {
  /** A postgres.js instance (left open on close) or a connection string (the plugin opens and closes its own client). */
  database: Sql | string
  /** Where the admin API lives. Default `/api/v1/budgets`. */
  prefix?: string
  /** Apply the migrations in sql/ on start, under an advisory lock. Default true. */
  migrate?: boolean
  /** A bearer token for the admin API (`Authorization: Bearer <token>`); the actor is `admin`. */
  adminToken?: string
  /** Your own check for the admin API; takes precedence over adminToken. */
  authorize?: Authorize
  /** A status cache row older than this is recomputed from the usage rows when read. Default 5 minutes. */
  statusCacheTtlMs?: number
  /** The gate on model-call routes; leave out to gate nothing. Every field has a default (lib/http/gate/gate-hooks.ts). */
  gate?: Partial<GateOptions>
  /** Where alert crossings are delivered: channels by the names budgets use in notificationChannels. */
  notifications?: Partial<NotificationOptions>
  /** Serve the dashboard page at {prefix}/ui (its data comes from the admin API, with the token typed into it). Default true. */
  dashboard?: boolean
  /** Prometheus metrics (lib/metrics/metrics.ts): how many top-spending budgets get gauges besides those marked `metrics: true`. */
  metrics?: Partial<MetricsOptions>
  /** The longest an admin request may take: past it a read answers 503, and a write is rolled back and answers 503 `BUDGET_ERR_TIMEOUT`. Default 10 s. */
  adminTimeoutMs?: number
  /** The decision log (GET {prefix}/decisions): each refusal, clamp and downgrade of the gate. Default on, kept 30 days. */
  decisions?: Partial<DecisionLogOptions>
  /** The providers' own cost reports, collected on a schedule (docs/provider-costs.md): an admin key per provider. None by default. */
  providerCosts?: ProviderCostsOptions
  /** Reconciliation with the provider's bill (docs/provider-costs.md#reconciliation): `tolerance`, the fraction of the recorded spend past which a day's difference is a drift (default 0.05). */
  reconciliation?: { tolerance?: string | number }
}

export interface ResolvedOptions {
  database: Sql | string
  prefix: string
  migrate: boolean
  authorize: Authorize
  statusCacheTtlMs: number
  gate: GateOptions | null
  /** The one price book, built while the gate's options were checked (the defaults' without a gate). */
  prices: PriceBook
  notifications: NotificationOptions
  metrics: MetricsOptions
  dashboard: boolean
  adminTimeoutMs: number
  decisions: DecisionLogOptions
  providerCosts: ProviderCostsOptions
  reconciliation: ReconciliationOptions
}

/** The longest delay setTimeout keeps (2^31 - 1 ms, about 24.8 days); a longer one fires at once. */
const MAX_TIMER_MS = 2 ** 31 - 1

const NOTIFICATION_DEFAULTS: NotificationOptions = { channels: {}, intervalMs: 5000, maxAttempts: 8, backoffMs: 1000, unconfiguredChannelGraceMs: 15 * 60_000 }

export const GATE_DEFAULTS: GateOptions = {
  routes: [],
  resolveScopes: scopesFromHeaders,
  // No estimateCost: each route's API estimates its own calls unless the operator gives one for all.
  actualCost: costFromUsage,
  // Your own prices over the catalog's (@pydantic/genai-prices), model by model; none: the catalog alone.
  prices: {},
  cheapModels: DEFAULT_CHEAP_MODELS,
  downgrades: DEFAULT_DOWNGRADES,
  currency: 'USD',
  failureMode: 'closed',
  timeoutMs: 3000,
  reservationTtlMs: 15 * 60_000,
  sweepIntervalMs: 60_000,
  nearLimit: 'refuse',
  clampFloorTokens: 16,
  unbudgeted: 'allow'
}

const DEFAULTS = { prefix: '/api/v1/budgets', migrate: true, statusCacheTtlMs: 5 * 60_000, dashboard: true, adminTimeoutMs: 10_000 }

export function resolveOptions (options: BudgetsOptions): ResolvedOptions {
  const { database, prefix, migrate, adminToken, authorize, statusCacheTtlMs, gate, notifications, metrics, dashboard, adminTimeoutMs, decisions, providerCosts, reconciliation } = { ...DEFAULTS, ...options }
  if (typeof database !== 'string' && typeof database !== 'function') {
    throw new OptionsError('database must be a postgres.js instance or a connection string')
  }
  if (typeof database === 'string' && !/^postgres(ql)?:\/\//.test(database)) {
    throw new OptionsError('database connection string must start with postgres:// or postgresql://')
  }
  if (typeof prefix !== 'string' || !prefix.startsWith('/')) throw new OptionsError('prefix must be a path starting with /')
  if (typeof migrate !== 'boolean') throw new OptionsError('migrate must be a boolean')
  if (typeof dashboard !== 'boolean') throw new OptionsError('dashboard must be a boolean')
  if (!Number.isInteger(statusCacheTtlMs) || statusCacheTtlMs < 0) throw new OptionsError('statusCacheTtlMs must be a whole number of milliseconds')
  if (!Number.isInteger(adminTimeoutMs) || adminTimeoutMs < 1) throw new OptionsError('adminTimeoutMs must be a whole number of milliseconds, at least 1')
  if (authorize !== undefined && typeof authorize !== 'function') throw new OptionsError('authorize must be a function')
  if (adminToken !== undefined && (typeof adminToken !== 'string' || adminToken.length < 16)) {
    throw new OptionsError('adminToken must be a string of at least 16 characters')
  }
  if (authorize === undefined && adminToken === undefined) {
    throw new OptionsError('the admin API needs adminToken or authorize (pass authorize: () => true to open it on purpose)')
  }
  return {
    database,
    prefix: prefix.replace(/\/$/, ''),
    migrate,
    statusCacheTtlMs,
    adminTimeoutMs,
    authorize: authorize ?? bearerToken(adminToken!),
    ...(gate === undefined ? { gate: null, prices: priceBookOf(GATE_DEFAULTS) } : resolveGateOptions(gate)),
    notifications: resolveNotificationOptions(notifications ?? {}),
    metrics: resolveMetricsOptions(metrics ?? {}),
    dashboard,
    decisions: resolveDecisionLogOptions(decisions ?? {}),
    providerCosts: resolveProviderCostsOptions(providerCosts ?? {}),
    reconciliation: resolveReconciliationOptions(reconciliation ?? {})
  }
}

/** The tolerance as an exact decimal string from 0 to 1 (a number is read by its shortest text, 0.05 as '0.05'). */
function resolveReconciliationOptions (options: { tolerance?: string | number }): ReconciliationOptions {
  if (typeof options !== 'object' || options === null) throw new OptionsError('reconciliation must be an object such as { tolerance: 0.05 }')
  for (const key of Object.keys(options)) if (key !== 'tolerance') throw new OptionsError(`reconciliation.${key} is not an option (tolerance)`)
  const tolerance = options.tolerance === undefined ? RECONCILIATION_DEFAULTS.tolerance : String(options.tolerance)
  if ((typeof options.tolerance !== 'undefined' && typeof options.tolerance !== 'string' && typeof options.tolerance !== 'number') ||
      !/^(0(\.\d{1,12})?|1(\.0{1,12})?)$/.test(tolerance)) {
    throw new OptionsError('reconciliation.tolerance must be a decimal from 0 to 1 with at most 12 places, such as 0.05')
  }
  return { tolerance }
}

function resolveProviderCostsOptions (options: ProviderCostsOptions): ProviderCostsOptions {
  if (typeof options !== 'object' || options === null) throw new OptionsError('providerCosts must be an object such as { openai: { adminKey } }')
  for (const key of Object.keys(options)) {
    if (!['openai', 'anthropic', 'retry'].includes(key)) throw new OptionsError(`providerCosts.${key} is not an option (openai, anthropic, retry)`)
  }
  for (const name of ['openai', 'anthropic'] as const) {
    const collector: CostCollectorOptions | undefined = options[name]
    if (collector === undefined) continue
    const at = `providerCosts.${name}`
    if (typeof collector !== 'object' || collector === null) throw new OptionsError(`${at} must be an object such as { adminKey }`)
    for (const key of Object.keys(collector)) {
      if (!['adminKey', 'organization', 'baseUrl', 'intervalMs', 'lookbackDays'].includes(key)) throw new OptionsError(`${at}.${key} is not an option (adminKey, organization, baseUrl, intervalMs, lookbackDays)`)
    }
    if (typeof collector.adminKey !== 'string' || collector.adminKey.trim() === '' || !/^[\x21-\x7e]+$/.test(collector.adminKey)) {
      throw new OptionsError(`${at}.adminKey must be the provider's admin key (printable ASCII, no spaces)`)
    }
    if (collector.organization !== undefined && (typeof collector.organization !== 'string' || !/^[\x21-\x7e]{1,256}$/.test(collector.organization))) {
      throw new OptionsError(`${at}.organization must be 1 to 256 printable ASCII characters`)
    }
    if (collector.baseUrl !== undefined && (typeof collector.baseUrl !== 'string' || !URL.canParse(collector.baseUrl) || !/^https?:$/.test(new URL(collector.baseUrl).protocol))) {
      throw new OptionsError(`${at}.baseUrl must be an http(s) URL`)
    }
    if (collector.intervalMs !== undefined && (!Number.isInteger(collector.intervalMs) || collector.intervalMs < 0 || collector.intervalMs > MAX_TIMER_MS)) {
      throw new OptionsError(`${at}.intervalMs must be a whole number of milliseconds from 0 (only when asked) to ${MAX_TIMER_MS}`)
    }
    if (collector.lookbackDays !== undefined && (!Number.isInteger(collector.lookbackDays) || collector.lookbackDays < 0 || collector.lookbackDays > 90)) {
      throw new OptionsError(`${at}.lookbackDays must be a whole number of days from 0 to 90`)
    }
  }
  const retry = options.retry ?? {}
  if (typeof retry !== 'object' || retry === null) throw new OptionsError('providerCosts.retry must be an object')
  for (const [key, value] of Object.entries(retry)) {
    if (!['serverErrorRetries', 'rateLimitRetries', 'backoffMs', 'maxRetryAfterMs', 'timeoutMs'].includes(key)) throw new OptionsError(`providerCosts.retry.${key} is not an option`)
    const least = key === 'timeoutMs' ? 1 : 0
    if (!Number.isInteger(value) || (value as number) < least || (value as number) > MAX_TIMER_MS) throw new OptionsError(`providerCosts.retry.${key} must be a whole number from ${least} to ${MAX_TIMER_MS}`)
  }
  return options
}

function resolveDecisionLogOptions (options: Partial<DecisionLogOptions>): DecisionLogOptions {
  if (typeof options !== 'object' || options === null) throw new OptionsError('decisions must be an object such as { enabled: true, retentionDays: 30 }')
  const decisions = { ...DECISION_LOG_DEFAULTS, ...options }
  if (typeof decisions.enabled !== 'boolean') throw new OptionsError('decisions.enabled must be a boolean')
  if (!Number.isInteger(decisions.retentionDays) || decisions.retentionDays < 1 || decisions.retentionDays > 3650) {
    throw new OptionsError('decisions.retentionDays must be a whole number of days from 1 to 3650')
  }
  for (const name of ['maxBuffered', 'batchSize', 'flushIntervalMs', 'sweepIntervalMs'] as const) {
    if (!Number.isInteger(decisions[name]) || decisions[name] < 1) throw new OptionsError(`decisions.${name} must be a positive whole number`)
  }
  if (decisions.batchSize > decisions.maxBuffered) throw new OptionsError('decisions.batchSize must be at most decisions.maxBuffered')
  return decisions
}

function resolveMetricsOptions (options: Partial<MetricsOptions>): MetricsOptions {
  const metrics = { topBudgets: 10, ...options }
  if (!Number.isInteger(metrics.topBudgets) || metrics.topBudgets < 0 || metrics.topBudgets > 1000) {
    throw new OptionsError('metrics.topBudgets must be a whole number from 0 to 1000')
  }
  return metrics
}

function resolveNotificationOptions (options: Partial<NotificationOptions>): NotificationOptions {
  const notifications = { ...NOTIFICATION_DEFAULTS, ...options }
  if (typeof notifications.channels !== 'object' || notifications.channels === null) throw new OptionsError('notifications.channels must be an object of channels by name')
  for (const [name, channel] of Object.entries(notifications.channels)) {
    const valid = typeof channel === 'object' && channel !== null &&
      ('deliver' in channel
        ? typeof channel.deliver === 'function'
        : channel.type === 'log' || (channel.type === 'webhook' && /^https?:\/\//.test(channel.url)) ||
          (channel.type === 'email' && typeof channel.url === 'string' && parseEmailChannel(channel.url) !== null))
    if (!valid) {
      throw new OptionsError(`notifications.channels.${name} must be { type: 'webhook', url }, { type: 'email', url: 'smtp://host:port?from=…&to=…' }, { type: 'log' } or a notifier with deliver()`)
    }
    // Infinity or NaN (Number() of an unset variable) would make every claim's deadline an invalid interval.
    const timeoutMs = 'deliver' in channel || channel.type !== 'webhook' ? undefined : channel.timeoutMs
    if (timeoutMs !== undefined && (!Number.isInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > MAX_TIMER_MS)) {
      throw new OptionsError(`notifications.channels.${name}.timeoutMs must be a whole number of milliseconds from 1 to ${MAX_TIMER_MS}`)
    }
  }
  for (const name of ['intervalMs', 'backoffMs', 'unconfiguredChannelGraceMs'] as const) {
    if (!Number.isInteger(notifications[name]) || notifications[name] < 0 || notifications[name] > MAX_TIMER_MS) {
      throw new OptionsError(`notifications.${name} must be a whole number of milliseconds from 0 to ${MAX_TIMER_MS}`)
    }
  }
  if (!Number.isInteger(notifications.maxAttempts) || notifications.maxAttempts < 1) throw new OptionsError('notifications.maxAttempts must be at least 1')
  if (notifications.dashboardUrl !== undefined && (typeof notifications.dashboardUrl !== 'string' || !/^https?:\/\//.test(notifications.dashboardUrl))) {
    throw new OptionsError('notifications.dashboardUrl must be an http(s) URL')
  }
  return notifications
}

/** The catalog's prices are USD list prices: in another currency only the operator's table prices calls. */
function priceBookOf (gate: GateOptions): PriceBook {
  return createPriceBook(gate.prices, { catalogPrices: gate.currency === 'USD' })
}

function resolveGateOptions (options: Partial<GateOptions>): { gate: GateOptions, prices: PriceBook } {
  const gate = { ...GATE_DEFAULTS, ...options }
  checkGateRoutes(gate.routes)
  for (const name of ['resolveScopes', 'actualCost'] as const) {
    if (typeof gate[name] !== 'function') throw new OptionsError(`gate.${name} must be a function`)
  }
  if (gate.estimateCost !== undefined && typeof gate.estimateCost !== 'function') throw new OptionsError('gate.estimateCost must be a function when given')
  if (gate.maxCallCost !== undefined && typeof gate.maxCallCost !== 'function') throw new OptionsError('gate.maxCallCost must be a function of the request when given')
  const priceProblem = typeof gate.prices === 'object' && gate.prices !== null ? checkPriceTable(gate.prices) : 'gate.prices must be a price table'
  if (priceProblem !== null) throw new OptionsError(priceProblem)
  if (!Array.isArray(gate.cheapModels) || !gate.cheapModels.every((model) => typeof model === 'string')) throw new OptionsError('gate.cheapModels must be a list of model names')
  const book = priceBookOf(gate)
  if (typeof gate.downgrades !== 'object' || gate.downgrades === null || !Object.values(gate.downgrades).every((model) => typeof model === 'string' && book.resolve(model) !== null)) {
    throw new OptionsError(`gate.downgrades must map models to cheaper models that have prices${gate.currency === 'USD' ? '' : ' (the catalog prices in USD only: in another currency, gate.prices must name them)'}`)
  }
  if (typeof gate.currency !== 'string' || !/^[A-Z]{3}$/.test(gate.currency)) throw new OptionsError('gate.currency must be an ISO 4217 code')
  if (gate.failureMode !== 'closed' && gate.failureMode !== 'open') throw new OptionsError("gate.failureMode must be 'closed' or 'open'")
  for (const name of ['timeoutMs', 'reservationTtlMs'] as const) {
    if (!Number.isInteger(gate[name]) || gate[name] <= 0) throw new OptionsError(`gate.${name} must be a positive whole number of milliseconds`)
  }
  if (!Number.isInteger(gate.sweepIntervalMs) || gate.sweepIntervalMs < 0) throw new OptionsError('gate.sweepIntervalMs must be a whole number of milliseconds (0: no sweeper)')
  if (gate.nearLimit !== 'refuse' && gate.nearLimit !== 'clamp') throw new OptionsError("gate.nearLimit must be 'refuse' or 'clamp'")
  if (!Number.isInteger(gate.clampFloorTokens) || gate.clampFloorTokens < 1) throw new OptionsError('gate.clampFloorTokens must be a positive whole number of tokens')
  checkUnbudgetedPolicy(gate.unbudgeted)
  return { gate, prices: book }
}

/** Each route a URL (its API inferred from the path when the route is declared), or { url, api } naming an API the gate knows. */
function checkGateRoutes (routes: unknown): void {
  const shape = `gate.routes must be a list of URLs or { url, api } (api: ${Object.keys(MODEL_APIS).map((name) => `'${name}'`).join(', ')})`
  if (!Array.isArray(routes)) throw new OptionsError(shape)
  for (const [index, route] of routes.entries()) {
    if (typeof route === 'string') continue
    if (typeof route !== 'object' || route === null || typeof (route as { url?: unknown }).url !== 'string') throw new OptionsError(`${shape}; gate.routes[${index}] is neither`)
    const { url, api } = route as { url: string, api?: unknown }
    if (!isModelApiName(api)) throw new OptionsError(`${shape}; gate.routes[${index}] (${url}) names the API ${JSON.stringify(api) ?? 'undefined'}, which the gate does not know`)
  }
}

function bearerToken (token: string): Authorize {
  const expected = digest(token)
  return (request) => {
    const header = request.headers.authorization
    const presented = header?.startsWith('Bearer ') === true ? header.slice(7) : ''
    // Comparing digests keeps the comparison constant-time whatever the presented length.
    return timingSafeEqual(digest(presented), expected) && 'admin'
  }
}

function digest (text: string): Buffer {
  return createHash('sha256').update(text).digest()
}
