// @relaycore/budgets: the Fastify plugin. Its whole shape is here: the options, then the parts it is made
// of, each built once from the parts before it (a part hands out an api, and may start and stop), the
// decorators and the routes. Parts start in the order listed below once the server is ready, and stop in
// the reverse order when it closes.
import fp from 'fastify-plugin'
import type { FastifyPluginAsync } from 'fastify'
import { resolveOptions, GATE_DEFAULTS, type BudgetsOptions } from './options.js'
import { openDatabase } from './kernel/database/client.js'
import { citusCluster } from './kernel/database/citus.js'
import { lifecycleOf, partOf } from './kernel/part.js'
import { createRepositories } from './repositories.js'
import { createPricing } from './pricing/index.js'
import { createBudgets, type BudgetRegistry } from './budgets/index.js'
import { createUsage } from './usage/index.js'
import { createDecisions, createDefinitionsVersion, createGate, type BudgetIntegration, type BudgetTracker, type DecisionLog } from './gate/index.js'
import { createAlerts, type BudgetAlerts } from './alerts/index.js'
import { createApprovals } from './approvals/index.js'
import { boundedTransaction } from './kernel/database/bounded.js'
import type { NotificationDeliverer } from './alerts/notifications.js'
import { createCurrencies } from './currencies/index.js'
import { createBudgetMetrics, type BudgetMetrics } from './metrics/metrics.js'
import { createBudgetAudit } from './audit/audit.js'
import { createAccess } from './access/index.js'
import { createSpendReports } from './reports/reports.js'
import { createProviderCosts } from './provider-costs/index.js'
import { createReconciliation } from './reconciliation/index.js'
import { createSimulate } from './simulate/index.js'
import { registerGate } from './http/gate/gate-hooks.js'
import type { BudgetGateState } from './http/gate/gate-options.js'
import { adminGuard, adminRoutes } from './http/admin/admin.js'
import { dashboardRoutes } from './http/dashboard.js'
import type { ApiName } from './model-apis/model-api.js'

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
    /** An onRequest/preHandler hook with the admin API's authorization, for the host's own routes that show every tree (principals without scopes). */
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
  const { database: databaseOption, prefix, migrate, authorize, statusCacheTtlMs, gate: gateOptions, notifications, metrics: metricsOptions, dashboard, adminTimeoutMs, decisions: decisionOptions, prices: priceBook, providerCosts: providerCostOptions, reconciliation: reconciliationOptions } = resolveOptions(options)
  const { currency, reservationTtlMs, timeoutMs, cheapModels, downgrades, nearLimit } = gateOptions ?? GATE_DEFAULTS
  const log = fastify.log
  const now = () => new Date()

  // The parts. Admin writes run in transactions bounded at adminTimeoutMs, on connections of their own (never
  // queued behind the gate's statements), cut by PostgreSQL and rolled back (lib/kernel/database/bounded.ts).
  const database = await openDatabase(databaseOption, { migrate, log }) // the schema is brought up to date first
  // A registration that fails from here on (a decoration already present, say) ends the client it opened.
  try {
    const sql = database.api
    const repositories = createRepositories(sql)
    const pricing = createPricing(priceBook, currency, gateOptions !== null)
    const { prices, modelName } = pricing.api
    // What the gate derives from budget definitions is forgotten when they move: at once for a change made
    // here, at the next statement for one made in another process (lib/gate/definitions-version.ts).
    const versions = createDefinitionsVersion()
    const onCitus = await citusCluster(sql) // the tables distributed by tree (lib/kernel/database/citus.ts)
    const registry = createBudgets(sql, adminTimeoutMs, log, { modelName, onChange: versions.forget, channels: Object.keys(notifications.channels), bumpAfterCommit: onCitus })
    const usage = createUsage(sql, adminTimeoutMs, log, { statusCacheTtlMs, now, modelName, keysByTree: onCitus })
    // Lines, leases, holds, settlements, rate limits, and the admission API on them.
    const gate = createGate({ reservations: repositories.reservations, findBudget: repositories.budgets.findBudget, recordUnbudgeted: repositories.usage.insertUnbudgeted, onCitus },
      usage.api.tracker, versions, { currency, reservationTtlMs, timeoutMs, nearLimit, models: { prices, cheapModels, downgrades } }, log)
    // Prometheus: the gate's counters as calls happen, the budgets' gauges read from the status cache when scraped.
    const metrics = partOf(createBudgetMetrics(async (top, within) => await repositories.status.listMetricBudgets(top, within), metricsOptions, currency))
    const alerts = createAlerts(sql, repositories, gate.api.tracker, { notifications, notified: metrics.api.notified, adminTimeoutMs, now }, log)
    const decisions = createDecisions(sql, decisionOptions, log, metrics.api.registry)
    const currencies = createCurrencies(sql, adminTimeoutMs, log, now)
    const reports = partOf(createSpendReports(repositories.reports, now, repositories.budgets.listTimeZones))
    const audit = partOf(createBudgetAudit(repositories.audit))
    // The provider's bill beside the gate's spend: mappings, the report, drift alerts, true-ups.
    const reconciliation = createReconciliation(sql, reconciliationOptions, adminTimeoutMs, log, now)
    // The providers' own cost reports, collected on the operator's schedule; a corrected bucket is audited, and
    // each collection is followed by the drift check.
    const providerCosts = createProviderCosts(sql, providerCostOptions, adminTimeoutMs, log, now, reconciliation.api.afterCollection)
    // What-if replay: a proposal applied by the registry's rules in a transaction always rolled back, and the
    // recorded usage of a past range replayed through the gate's and the alerts' SQL rules.
    const simulate = createSimulate(sql, { cheapModels, downgrades, prices, currency, registry: { modelName, channels: Object.keys(notifications.channels) } })
    // Who may see and change which budgets: a scoped principal's area, read per admin request.
    const access = createAccess(sql)
    // Requests for approval, decided level by level by the budget's approval policy; the last level makes the approval.
    const approvals = partOf(createApprovals({ inTransaction: boundedTransaction(sql, adminTimeoutMs, log), sql, budgets: repositories.budgets, tracker: gate.api.tracker, alerts: alerts.api.alerts, now }))

    fastify.decorate('budgetRegistry', registry.api)
    fastify.decorate('budgetTracker', gate.api.tracker)
    fastify.decorate('budgetIntegration', gate.api.integration)
    fastify.decorate('budgetAlerts', alerts.api.alerts)
    fastify.decorate('budgetNotifications', alerts.api.notifications)
    fastify.decorate('budgetMetrics', metrics.api)
    fastify.decorate('budgetDecisions', decisions.api)
    // The admin API's check, for the host's own routes that show money (a /metrics of its own, say).
    fastify.decorate('budgetAdminGuard', adminGuard(authorize, { everyTree: true }))
    fastify.decorateRequest('budgetActor', null)
    fastify.decorateRequest('budgetPrincipal', null)
    fastify.decorateRequest('budgetArea', null)
    fastify.decorateRequest('budgetGate', null)

    // The gate's hooks on the host's model routes; they drain the calls in flight first when the server closes.
    const gateHooks = gateOptions === null ? partOf(null) : registerGate(fastify, gateOptions, gate.api.integration, prices, metrics.api, decisionOptions.enabled ? decisions.api : null, prefix)
    const lifecycle = lifecycleOf([database, pricing, registry, usage, gate, metrics, alerts, decisions, currencies, reports, audit, reconciliation, providerCosts, simulate, access, approvals, gateHooks], log)
    fastify.addHook('onReady', async () => { lifecycle.start() })
    fastify.addHook('onClose', async () => { await lifecycle.stop() })

    await fastify.register(adminRoutes, {
      prefix, authorize, access: access.api, registry: registry.api, tracker: gate.api.tracker, collector: usage.api.collector, recordUsage: usage.api.recordUsage,
      alerts: alerts.api.alerts, approvals: approvals.api, channels: alerts.api.channels, metrics: metrics.api, audit: audit.api, reports: reports.api, rates: currencies.api,
      decisions: decisions.api, providerCosts: providerCosts.api, reconciliation: reconciliation.api, simulator: simulate.api, timeoutMs: adminTimeoutMs
    })
    // The page beside the API, outside its authorization: it holds no data, and asks the API with the operator's token.
    if (dashboard) await fastify.register(dashboardRoutes, { prefix, apiPrefix: prefix })
  } catch (error) {
    await database.stop?.()
    throw error
  }
}

export default fp(budgets, { fastify: '5.x', name: '@relaycore/budgets' })
export { budgets }
export * from './kernel/errors.js'
export type { BudgetsOptions } from './options.js'
export type { ProviderCostsOptions, CostCollectorOptions, CollectOutcome, StoredCost } from './provider-costs/index.js'
export type { Authorize, PrincipalVerdict } from './http/admin/admin.js'
export type { AccessScope, Principal, Role } from './access/index.js'
export type { BudgetRegistry, CreateBudgetInput as CreateBudgetRequest, UpdateBudgetInput as UpdateBudgetRequest, DeleteBudgetOptions } from './budgets/registry.js'
export type { UsageRecord } from './usage/usage-repository.js'
export type { RecordUsageRequest, UsageMetadata } from './usage/tracker.js'
export type { BudgetIntegration, BudgetTracker } from './gate/integration.js'
export type { CallerScopes } from './kernel/scopes.js'
export type { BudgetAlerts, ApprovalRequest } from './alerts/alerts.js'
export type { AlertEvent, DigestEvent, DriftEvent, ApprovalStepEvent, BudgetEvent, Notifier, NotificationOptions, ChannelConfig } from './alerts/notifications.js'
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
export { budgetJsonParser } from './http/json-body.js'
