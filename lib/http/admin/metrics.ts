// The admin route for Prometheus: the plugin's registry in the text exposition format (the gauges show money).
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { errorResponses } from './responses.js'
import { visibleBudgets } from './access.js'
import type { BudgetMetrics } from '../../metrics/index.js'

export interface MetricsRoutesOptions {
  metrics: BudgetMetrics
}

export const metricsRoutes: FastifyPluginAsyncTypebox<MetricsRoutesOptions> = async (app, { metrics }) => {
  app.get('/metrics', {
    config: { access: 'read' },
    schema: {
      summary: 'Prometheus metrics',
      description: 'The gate\'s decisions, latencies, live reservations, sweeper runs and notifications, and the spend, reserved, limit, remaining and seconds to reset of the budgets marked metrics: true and the top spenders, in Prometheus\'s text format. For a principal with scopes, the gauges of the budgets it may see alone (its own top spenders), without the gate\'s series, which count every tree\'s calls.',
      tags: ['metrics'],
      response: { 200: Type.String({ description: 'text/plain; version=0.0.4' }), ...errorResponses({}) }
    }
  }, async (request, reply) => {
    const within = visibleBudgets(request)
    const registry = within === null ? metrics.registry : await metrics.budgetsOnly(within)
    return await reply.type(registry.contentType).send(await registry.metrics())
  })
}
