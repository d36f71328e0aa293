// The admin API's scope: strict validation, coded errors and authorization for every route inside it.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { UnauthorizedError } from '../errors.js'
import type { Authorize } from '../options.js'
import type { BudgetAlerts } from '../services/alerts.js'
import type { BudgetRegistry } from '../services/registry.js'
import type { BudgetTracker } from '../services/tracker.js'
import { alertRoutes } from './alerts.js'
import { budgetRoutes } from './budgets.js'
import { handleError } from './error-handler.js'
import { usageRoutes } from './usage.js'
import { compileValidator } from './validator.js'

export interface AdminRoutesOptions {
  authorize: Authorize
  registry: BudgetRegistry
  tracker: BudgetTracker
  alerts: BudgetAlerts
}

export const adminRoutes: FastifyPluginAsyncTypebox<AdminRoutesOptions> = async (app, { authorize, registry, tracker, alerts }) => {
  app.setValidatorCompiler(compileValidator)
  app.setErrorHandler(handleError)

  app.addHook('onRequest', async (request) => {
    const verdict = await authorize(request)
    if (verdict === false) throw new UnauthorizedError()
    request.budgetActor = verdict === true ? 'admin' : verdict
  })

  await app.register(budgetRoutes, { registry })
  await app.register(usageRoutes, { tracker })
  await app.register(alertRoutes, { alerts })
}
