// The admin API's scope: strict validation, coded errors and authorization for every route inside it.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { RouteNotFoundError, UnauthorizedError } from '../../kernel/errors.js'
import { principalOf, type AccessScope, type BudgetAccess, type Role } from '../../access/index.js'
import { checkAccess, requireEveryTree } from './access.js'
import { checkStorable } from '../../kernel/json-limits.js'
import type { FastifyRequest } from 'fastify'
import type { BudgetAlerts } from '../../alerts/index.js'
import type { BudgetMetrics } from '../../metrics/index.js'
import type { BudgetAudit } from '../../audit/index.js'
import type { SpendReports } from '../../reports/index.js'
import type { BudgetRegistry } from '../../budgets/index.js'
import type { BudgetTracker } from '../../gate/index.js'
import type { UsageCollector } from '../../usage/index.js'
import type { ChannelTests } from '../../alerts/index.js'
import type { DecisionLog } from '../../gate/index.js'
import { alertRoutes } from './alerts.js'
import { budgetRoutes } from './budgets.js'
import { channelRoutes } from './channels.js'
import { decisionRoutes } from './decisions.js'
import { approvalRequestRoutes } from './approval-requests.js'
import type { BudgetApprovals } from '../../approvals/index.js'
import { handleError } from '../error-handler.js'
import { metricsRoutes } from './metrics.js'
import { auditRoutes } from './audit.js'
import { principalRoutes } from './principal.js'
import { reportRoutes } from './reports.js'
import { exchangeRateRoutes } from './exchange-rates.js'
import type { ExchangeRates } from '../../currencies/index.js'
import { usageRoutes, type RecordUsage } from './usage.js'
import { providerCostRoutes } from './provider-costs.js'
import { simulateRoutes } from './simulate.js'
import type { Simulator } from '../../simulate/index.js'
import type { ProviderCosts } from '../../provider-costs/index.js'
import { compileValidator } from '../validator.js'
import { reconciliationRoutes } from './reconciliation.js'
import type { Reconciliation } from '../../reconciliation/index.js'

/**
 * Decides whether a request may use the admin API, and as whom. Return `true` (a platform admin named
 * 'admin'), a non-empty string naming a platform admin, or a principal `{ actor, role, scopes }`
 * (lib/access/principal.ts): a role, and the budget subtrees it may touch (null: every tree). The actor is
 * what the audit log records. Anything else refuses (401), a principal badly made included: access fails
 * closed, so `undefined` from a forgotten return is a refusal, not a pass.
 */
export type Authorize = (request: FastifyRequest) => boolean | string | PrincipalVerdict | Promise<boolean | string | PrincipalVerdict>

/** A principal as authorize returns it; `scopes`: `{ budgetId }` or `{ scopeType, scopeId }` entries. */
export interface PrincipalVerdict {
  actor: string
  role: Role
  /** null: every tree. Required: a principal without it is refused. */
  scopes: AccessScope[] | null
}

export interface AdminRoutesOptions {
  authorize: Authorize
  /** Each scoped principal's area, read per request. */
  access: BudgetAccess
  registry: BudgetRegistry
  tracker: BudgetTracker
  collector: UsageCollector
  alerts: BudgetAlerts
  /** Requests for approval, decided level by level: POST /:id/approval-requests and the routes after it. */
  approvals: BudgetApprovals
  metrics: BudgetMetrics
  audit: BudgetAudit
  reports: SpendReports
  rates: ExchangeRates
  /** The notification channels: GET /channels and POST /channels/:name/test. */
  channels: ChannelTests
  /** Records one usage in a bounded transaction (lib/kernel/database/bounded.ts): POST /:id/usage. */
  recordUsage: RecordUsage
  /** The longest an admin request may take (the plugin's adminTimeoutMs). */
  timeoutMs: number
  /** The gate's decision log: GET /decisions. */
  decisions?: DecisionLog
  /** The providers' cost reports: POST /provider-costs/import, GET /provider-costs, POST /provider-costs/collect. */
  providerCosts: ProviderCosts
  /** Reconciliation with the provider's bill: the mappings, GET /reconciliation, POST /reconciliation/evaluate and /true-up. */
  reconciliation: Reconciliation
  /** The what-if replay: POST /simulate. */
  simulator: Simulator
}

/**
 * The admin API's authorization as a hook. Fails closed: only `true`, an actor's name or a well-made
 * principal allows; undefined, null, 0, '' or any other object refuses, and so does an authorize that throws.
 * `everyTree`: the guard of a host's own route that shows every tree's money (a /metrics of its own), open to
 * principals without scopes only.
 */
export function adminGuard (authorize: Authorize, { everyTree = false } = {}) {
  return async (request: FastifyRequest): Promise<void> => {
    const verdict: unknown = await Promise.resolve().then(async () => await authorize(request)).catch((error: unknown) => {
      request.log.warn({ err: error }, 'the authorize option threw: refusing the admin request')
      return false
    })
    const principal = principalOf(verdict)
    if (principal === null) {
      if (typeof verdict === 'object' && verdict !== null) request.log.warn('the authorize option returned a principal badly made (actor, role, scopes): refusing the admin request')
      throw new UnauthorizedError()
    }
    if (everyTree) requireEveryTree(principal)
    request.budgetPrincipal = principal
    request.budgetActor = principal.actor
  }
}

export const adminRoutes: FastifyPluginAsyncTypebox<AdminRoutesOptions> = async (app, { authorize, access, registry, tracker, collector, alerts, approvals, metrics, audit, reports, rates, channels, recordUsage, timeoutMs, decisions, providerCosts, reconciliation, simulator }) => {
  app.setValidatorCompiler(compileValidator)
  app.setErrorHandler(handleError)
  // A database that neither answers nor refuses (connections that never open in an outage) must not
  // hold an admin request forever: past the bound Fastify answers, and the error handler makes it a 503.
  // Fastify stops counting once a request's body is read, so writes carry the bound themselves, in
  // PostgreSQL (lib/kernel/database/bounded.ts), and answer only once their transaction has ended: Fastify's
  // timer is their backstop, at twice the bound, so it cannot answer 503 for a write that then commits.
  app.addHook('onRoute', (route) => {
    const reads = [route.method].flat().every((method) => method === 'GET' || method === 'HEAD')
    route.handlerTimeout ??= reads ? timeoutMs : 2 * timeoutMs
  })
  // A URL under the prefix that names no route gets the API's own error body, with a code.
  app.setNotFoundHandler(async (request) => { throw new RouteNotFoundError(request.method, request.url.split('?')[0]!) })

  app.addHook('onRequest', adminGuard(authorize))
  app.addHook('onRequest', checkAccess(access))
  // Text PostgreSQL cannot store is the caller's mistake, named before any route sees it.
  app.addHook('preValidation', async (request) => {
    // A batch checks each record on its own (lib/usage/collector.ts): one bad record must not refuse the others.
    const body = request.routeOptions.config.checksEachRecord === true ? undefined : request.body
    for (const part of [request.params, request.query, body]) checkStorable(part, '')
  })

  await app.register(principalRoutes)
  await app.register(budgetRoutes, { registry })
  await app.register(usageRoutes, { tracker, collector, recordUsage })
  await app.register(alertRoutes, { alerts })
  await app.register(approvalRequestRoutes, { approvals })
  await app.register(metricsRoutes, { metrics })
  await app.register(auditRoutes, { audit })
  await app.register(reportRoutes, { reports })
  await app.register(exchangeRateRoutes, { rates })
  await app.register(channelRoutes, { channels })
  await app.register(providerCostRoutes, { costs: providerCosts })
  await app.register(reconciliationRoutes, { reconciliation })
  await app.register(simulateRoutes, { simulator })
  if (decisions !== undefined) await app.register(decisionRoutes, { decisions })
}
