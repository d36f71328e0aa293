// The admin route for Prometheus: the plugin's registry in the text exposition format (the gauges show money).
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { errorResponses } from './responses.js'
import type { BudgetMetrics } from '../../metrics/index.js'

export interface MetricsRoutesOptions {
  metrics: BudgetMetrics
}

export const metricsRoutes: FastifyPluginAsyncTypebox<MetricsRoutesOptions> = async (app, { metrics }) => {
  app.get('/metrics', {
    schema: {
      summary: 'Prometheus metrics',
      description: 'The gate\'s decisions, latencies, live reservations, sweeper runs and notifications, and the spend, reserved, limit, remaining and seconds to reset of the budgets marked metrics: true and the top spenders, in Prometheus\'s text format.',
      tags: ['metrics'],
      response: { 200: Type.String({ description: 'text/plain; version=0.0.4' }), ...errorResponses({}) }
    }
  }, async (_request, reply) => await reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()))
}
