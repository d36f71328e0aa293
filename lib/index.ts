// @relaycore/budgets: the Fastify plugin. Its whole shape is here: options, database, migrations,
// the services it decorates the instance with, and the admin routes.
import fp from 'fastify-plugin'
import type { FastifyPluginAsync } from 'fastify'
import { boundedTransaction, withBoundedBegin } from './kernel/database/bounded.js'
import { registerGate } from './http/gate/gate-hooks.js'
import type { ApiName } from './model-apis/model-api.js'
import type { BudgetGateState } from './http/gate/gate-options.js'
import { GATE_DEFAULTS, resolveOptions, type BudgetsOptions } from './options.js'
import { adminGuard, adminRoutes } from './http/admin/admin.js'
import type { RecordUsage } from './http/admin/usage.js'
import { dashboardRoutes } from './http/dashboard.js'
import { createBudgetRegistry, type BudgetRegistry } from './budgets/registry.js'
import { createBudgetAlerts, type BudgetAlerts } from './alerts/alerts.js'
import type { BudgetIntegration, BudgetTracker } from './gate/integration.js'
import { createGate } from './gate/gate.js'
import { createDefinitionsVersion } from './gate/definitions-version.js'
import { openDatabase } from './kernel/database/client.js'
import { createNotificationDeliverer, type NotificationDeliverer } from './alerts/notifications.js'
import { createDigestScheduler } from './alerts/digests.js'
import { createBudgetTracker } from './usage/tracker.js'
import { createUsageCollector } from './usage/collector.js'
import { createPriceBook } from './pricing/pricing.js'
import { preloadTokenizers } from './pricing/tokens.js'
import { createRepositories } from './repositories.js'
import { createBudgetMetrics, type BudgetMetrics } from './metrics/metrics.js'
import { createBudgetAudit } from './audit/audit.js'
import { createSpendReports } from './reports/reports.js'
import { createExchangeRates } from './currencies/exchange-rates.js'
import { createChannelTests } from './alerts/channels.js'
import { createDecisionLog, type DecisionLog } from './gate/decision-log.js'
import { createDecisionRepository } from './gate/decision-repository.js'

declare module 'fastify' {
  interface FastifyInstance {
    budgetRegistry: BudgetRegistry
    budgetTracker: BudgetTracker
    budgetIntegration: BudgetIntegration
    budgetAlerts: BudgetAlerts
    budgetNotifications: NotificationDeliverer
    /** Prometheus metrics in a registry of the plugin's own: merge `registry` into yours, or scrape GET {prefix}/metrics. */
    budgetMetrics: BudgetMetrics
    /** The gate's decision log: flush() writes what waits (it is written in batches), sweep() deletes past the retention. */
    budgetDecisions: DecisionLog
    /** An onRequest/preHandler hook with the admin API's authorization, for the host's own routes. */
    budgetAdminGuard: (request: FastifyRequest) => Promise<void>
  }
  interface FastifyContextConfig {
    /** Gate this route: `true` infers its API from the path's end (/chat/completions, /responses, /messages, /embeddings); an API name names it. */
    budgetGate?: boolean | ApiName
  }
  interface FastifyRequest {
    /** Who called the admin API, as the authorize option named them; null outside it. */
    budgetActor: string | null
    /** What the gate decided for a model call; null on routes it does not gate. */
    budgetGate: BudgetGateState | null
  }
}

const budgets: FastifyPluginAsync<BudgetsOptions> = async (fastify, options) => {
  const { database, prefix, migrate: applyMigrations, authorize, statusCacheTtlMs, gate, notifications, metrics: metricsOptions, dashboard, adminTimeoutMs, decisions } = resolveOptions(options)
  const client = await openDatabase(database, { migrate: applyMigrations })
  const { sql } = client

  // The composition root: every repository once, and the services built on them.
  const repositories = createRepositories(sql)
  const { currency, reservationTtlMs, timeoutMs, cheapModels, downgrades } = gate ?? GATE_DEFAULTS
  // The catalog's prices are USD list prices: in another currency only the operator's table prices calls.
  const prices = createPriceBook((gate ?? GATE_DEFAULTS).prices, { catalogPrices: currency === 'USD' })
  // The estimate's tokenizers load here, once, not on a call (0.1 to 0.4 s each); the catalog knows models of both.
  if (gate !== null) preloadTokenizers([...prices.models().map(({ model }) => model), ...(currency === 'USD' ? ['gpt-4o', 'gpt-4'] : [])])
  // Models go by their price-table name everywhere budgets match them (a dated snapshot as its base model).
  const modelName = (name: string) => prices.resolve(name)?.model ?? name
  // What the gate derives from budget definitions is forgotten when they move: at once for a change made
  // here, at the next statement for one made in another process (lib/gate/definitions-version.ts).
  const versions = createDefinitionsVersion()
  // Writes of the admin API run in bounded transactions, on a connection of their own (never queued behind
  // the gate's statements), cut at adminTimeoutMs by PostgreSQL and rolled back (lib/kernel/database/bounded.ts).
  const inBoundedTransaction = boundedTransaction(sql, adminTimeoutMs, fastify.log)
  const budgetRegistry = createBudgetRegistry(withBoundedBegin(sql, adminTimeoutMs, fastify.log), { modelName, onChange: versions.forget, channels: Object.keys(notifications.channels) })
  const trackerOptions = { statusCacheTtlMs, now: () => new Date(), modelName }
  const usageTracker = createBudgetTracker(repositories, trackerOptions)
  const recordUsage: RecordUsage = async (request, recordOptions) =>
    await inBoundedTransaction(async (tx) => await createBudgetTracker(createRepositories(tx), trackerOptions).record(request, recordOptions))
  // The bulk usage collector (POST /usage/batch): the tracker's rules, a batch stored in one transaction.
  const usageCollector = createUsageCollector(withBoundedBegin(sql, adminTimeoutMs, fastify.log), { now: () => new Date(), modelName })
  // The gate's machinery (lines, leases, holds, settlements, rate limits) and the Budget Integration on it.
  const gateParts = createGate({ reservations: repositories.reservations, findBudget: repositories.budgets.findBudget, recordUnbudgeted: repositories.usage.insertUnbudgeted },
    usageTracker, versions, { currency, reservationTtlMs, timeoutMs, models: { prices, cheapModels, downgrades } }, fastify.log)
  const { integration: budgetIntegration, tracker: budgetTracker } = gateParts
  fastify.decorate('budgetRegistry', budgetRegistry)
  fastify.decorate('budgetTracker', budgetTracker)
  const budgetAlerts = createBudgetAlerts(repositories.alerts, budgetTracker, () => new Date())
  // Prometheus: the gate's counters as calls happen, the budgets' gauges read from the status cache when scraped.
  const budgetMetrics = createBudgetMetrics(async (top) => await repositories.status.listMetricBudgets(top), metricsOptions, currency)
  // Digests are made by the deliverer's loop, before each round of deliveries, and delivered by it.
  const digests = createDigestScheduler(repositories, () => new Date())
  const budgetNotifications = createNotificationDeliverer(sql, notifications, fastify.log, budgetMetrics.notified, digests.produceDue)
  fastify.decorate('budgetIntegration', budgetIntegration)
  fastify.decorate('budgetAlerts', budgetAlerts)
  fastify.decorate('budgetNotifications', budgetNotifications)
  fastify.decorate('budgetMetrics', budgetMetrics)
  // The admin API's check, for the host's own routes that show money (a /metrics of its own, say).
  fastify.decorate('budgetAdminGuard', adminGuard(authorize))
  fastify.decorateRequest('budgetActor', null)
  fastify.decorateRequest('budgetGate', null)

  // The gate's refusals, clamps and downgrades, noted in memory and written in batches (budget_decision_log).
  const decisionLog = createDecisionLog(createDecisionRepository(sql), decisions, fastify.log, budgetMetrics.registry)
  fastify.decorate('budgetDecisions', decisionLog)
  const gateHooks = gate === null ? null : registerGate(fastify, gate, budgetIntegration, prices, budgetMetrics, decisions.enabled ? decisionLog : null)
  fastify.addHook('onReady', async () => { budgetNotifications.start(); decisionLog.start() })
  fastify.addHook('onClose', async () => {
    await gateHooks?.drain() // settle what the gate admitted before the client ends
    await decisionLog.close() // write the decisions noted so far
    await gateParts.stop() // settle, then give back what is left of leases and rate allowances
    await budgetNotifications.stop()
    await client.close()
  })

  // Setting a rate is one statement: it runs in a bounded transaction of its own, like every admin write.
  const rates = createExchangeRates(repositories.exchangeRates, () => new Date())
  const setRate: typeof rates.setRate = async (...args) =>
    await inBoundedTransaction(async (tx) => await createExchangeRates(createRepositories(tx).exchangeRates, () => new Date()).setRate(...args))
  await fastify.register(adminRoutes, { prefix, authorize, registry: budgetRegistry, tracker: budgetTracker, collector: usageCollector, alerts: budgetAlerts, metrics: budgetMetrics, audit: createBudgetAudit(repositories.audit),
    reports: createSpendReports(repositories.reports, () => new Date(), repositories.budgets.listTimeZones), rates: { ...rates, setRate }, channels: createChannelTests(budgetNotifications, inBoundedTransaction, adminTimeoutMs), recordUsage, timeoutMs: adminTimeoutMs, decisions: decisionLog })
  // The page beside the API, outside its authorization: it holds no data, and asks the API with the operator's token.
  if (dashboard) await fastify.register(dashboardRoutes, { prefix, apiPrefix: prefix })
}

export default fp(budgets, { fastify: '5.x', name: '@relaycore/budgets' })
export { budgets }
export * from './kernel/errors.js'
export type { BudgetsOptions } from './options.js'
export type { Authorize } from './http/admin/admin.js'
export type { BudgetRegistry, CreateBudgetInput as CreateBudgetRequest, UpdateBudgetInput as UpdateBudgetRequest, DeleteBudgetOptions } from './budgets/registry.js'
export type { UsageRecord } from './usage/usage-repository.js'
export type { RecordUsageRequest, UsageMetadata } from './usage/tracker.js'
export type { BudgetIntegration, BudgetTracker } from './gate/integration.js'
export type { CallerScopes } from './kernel/scopes.js'
export type { BudgetAlerts, ApprovalRequest } from './alerts/alerts.js'
export type { AlertEvent, DigestEvent, BudgetEvent, Notifier, NotificationOptions, ChannelConfig } from './alerts/notifications.js'
export { webhookNotifier } from './alerts/notifications.js'
export type { BudgetGateState, GateOptions, GateRoute } from './http/gate/gate-options.js'
export type { ApiName, ModelApi, Refusal, RefusalKind, StreamUsageReader, OutputLimit } from './model-apis/model-api.js'
export { apiForUrl } from './model-apis/index.js'
export type { CostEstimate } from './pricing/estimate.js'
export { estimateChatCost, costFromUsage, worstCaseTokens } from './pricing/estimate.js'
export type { BudgetConstraintCheck } from './gate/decision.js'
export type { BudgetStatusInfo } from './usage/status-rules.js'
export type { PriceTable, ModelPrice, PriceTier, PriceBook, PriceBookOptions, PricedModel, TokenUsage } from './pricing/pricing.js'
export { DEFAULT_PRICES, createPriceBook, pricesAt } from './pricing/pricing.js'
export type * from './kernel/schemas.js'
