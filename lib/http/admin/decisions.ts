// Admin route for the decision log: the gate's refusals, clamps and downgrades, newest first, filtered
// by binding budget, code, outcome, caller and time, a keyset page at a time.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { DecisionPage, DecisionQuery } from '../../kernel/schemas.js'
import type { DecisionLog } from '../../gate/index.js'
import { errorResponses } from './responses.js'
import { visibleBudgets } from './access.js'

export interface DecisionRoutesOptions {
  decisions: DecisionLog
}

export const decisionRoutes: FastifyPluginAsyncTypebox<DecisionRoutesOptions> = async (app, { decisions }) => {
  app.get('/decisions', {
    config: { access: 'read' },
    schema: {
      summary: 'The gate\'s decisions',
      description: 'Each refusal (402, 429, and 503 exchange_rate_missing), clamp and downgrade the gate made, with the caller, the model, the estimate and the binding budget\'s limit, current and reserved as read when it decided. For a principal with scopes, only the decisions whose binding budget it may see. Newest first; kept for the decisions.retentionDays option. Written in batches: a decision shows here within decisions.flushIntervalMs.',
      tags: ['decisions'],
      querystring: DecisionQuery,
      response: { 200: DecisionPage, ...errorResponses({ 400: [] }) }
    }
  }, async (request) => await decisions.page(request.query, visibleBudgets(request) ?? undefined))
}
