// Admin routes for reconciliation with the provider's bill: the mappings (audited), the report as JSON or CSV,
// the drift check now, and the true-up.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import {
  CostMapping, CostMappingBody, CostMappingList, CostMappingParams, CostMappingUpdate, DriftEvaluation, ReconciliationQuery, ReconciliationReport, TrueUpBody, TrueUpResult
} from '../../kernel/schemas.js'
import type { Reconciliation } from '../../reconciliation/index.js'
import { auditContext, errorResponses } from './responses.js'

const MAPPING_CODES = { 404: ['BUDGET_ERR_COST_MAPPING_NOT_FOUND'], 409: ['BUDGET_ERR_COST_MAPPING_CONFLICT'] }

/** CSV with format=csv, or (as GET /reports/spend) an Accept naming text/csv; format=json wins over Accept. */
const wantsCsv = (format: string | undefined, accept: string | undefined): boolean => format === undefined ? /\btext\/csv\b/.test(accept ?? '') : format === 'csv'

export const reconciliationRoutes: FastifyPluginAsyncTypebox<{ reconciliation: Reconciliation }> = async (app, { reconciliation }) => {
  app.get('/provider-costs/mappings', {
    config: { access: 'platform' },
    schema: {
      summary: 'List cost mappings',
      description: 'Which budget each provider dimension (an OpenAI project, an Anthropic workspace, an account) is compared with.',
      tags: ['reconciliation'],
      response: { 200: CostMappingList, ...errorResponses({}) }
    }
  }, async () => await reconciliation.listMappings())

  app.post('/provider-costs/mappings', {
    config: { access: 'platform' },
    schema: {
      summary: 'Map a provider dimension to a budget',
      description: 'A budget is compared with one provider\'s bill: mapping it to a second provider, or a dimension mapped already, is a 409. Audited (create-cost-mapping).',
      tags: ['reconciliation'],
      body: CostMappingBody,
      response: { 201: CostMapping, ...errorResponses({ 400: [], 404: [], 409: MAPPING_CODES[409] }) }
    }
  }, async (request, reply) => {
    const mapping = await reconciliation.createMapping(request.body, auditContext(request))
    return await reply.code(201).send(mapping)
  })

  app.put('/provider-costs/mappings/:id', {
    config: { access: 'platform' },
    schema: {
      summary: 'Change a cost mapping',
      description: 'Its value, budget or trueUp; the provider and kind stay. Moving it to another budget is a 409 BUDGET_ERR_COST_MAPPING_CONFLICT ' +
        'while its budget has true-up corrections for its provider that no other mapping of the pair keeps adjustable. Audited (update-cost-mapping).',
      tags: ['reconciliation'],
      params: CostMappingParams,
      body: CostMappingUpdate,
      response: { 200: CostMapping, ...errorResponses({ 400: [], 404: MAPPING_CODES[404], 409: MAPPING_CODES[409] }) }
    }
  }, async (request) => await reconciliation.updateMapping(request.params.id, request.body, auditContext(request)))

  app.delete('/provider-costs/mappings/:id', {
    config: { access: 'platform' },
    schema: {
      summary: 'Delete a cost mapping',
      description: 'A 409 BUDGET_ERR_COST_MAPPING_CONFLICT, naming the days, while its budget has true-up corrections for its provider that no other ' +
        'mapping of the pair keeps adjustable (they would be stranded: no true-up could adjust them again). Audited (delete-cost-mapping).',
      tags: ['reconciliation'],
      params: CostMappingParams,
      response: { 204: { type: 'null', description: 'Deleted.' }, ...errorResponses({ 404: MAPPING_CODES[404], 409: MAPPING_CODES[409] }) }
    }
  }, async (request, reply) => {
    await reconciliation.deleteMapping(request.params.id, auditContext(request))
    return await reply.code(204).send()
  })

  app.get('/reconciliation', {
    config: { access: 'platform' },
    schema: {
      summary: 'Reconcile with the provider\'s bill',
      description: 'Per UTC day, provider and mapped budget: the provider\'s amount in the budget\'s currency (at the rate in force at noon UTC of the day), the spend the ' +
        'gate recorded (corrections left out), the correction a true-up wrote, the difference and its ratio (6 places), and whether it drifts past the tolerance. ' +
        'JSON, or CSV with Accept: text/csv or format=csv.',
      tags: ['reconciliation'],
      querystring: ReconciliationQuery,
      produces: ['application/json', 'text/csv'],
      response: { 200: ReconciliationReport, ...errorResponses({ 400: [] }) }
    }
  }, async (request, reply) => {
    const { format, ...query } = request.query
    if (wantsCsv(format, request.headers.accept)) {
      const csv = await reconciliation.reportCsv(query)
      // The CSV goes out as text, past the serializer of the JSON form the 200 schema describes.
      return await reply.type('text/csv; charset=utf-8').header('content-disposition', 'attachment; filename="reconciliation.csv"')
        .serializer((payload: unknown) => payload as string).send(csv as never)
    }
    return await reconciliation.report(query)
  })

  app.post('/reconciliation/evaluate', {
    config: { access: 'platform' },
    schema: {
      summary: 'Check for drift now',
      description: 'Records each drift past the tolerance on the days before today, once per day, provider and budget, and sends budget.provider_drift through ' +
        'the channels the budget\'s alerts name. It also runs after each collection.',
      tags: ['reconciliation'],
      response: { 200: DriftEvaluation, ...errorResponses({}) }
    }
  }, async () => await reconciliation.evaluate())

  app.post('/reconciliation/true-up', {
    config: { access: 'platform' },
    schema: {
      summary: 'True a budget up to the provider\'s bill',
      description: 'Writes the day\'s difference into the budget as one correction, a usage record at noon UTC of the day (never a hold), or adjusts the one written ' +
        'before by one more record for the change: the same true-up twice stores nothing new. It counts in its own day\'s period, fires no alerts for a period that has ended, and may take a hard ' +
        'budget past its limit (it is the invoice). Only for a mapping with trueUp and a budget without model or tag filters. Audited (true-up).',
      tags: ['reconciliation'],
      body: TrueUpBody,
      response: { 200: TrueUpResult, ...errorResponses({ 400: ['BUDGET_ERR_EXCHANGE_RATE_MISSING'], 404: ['BUDGET_ERR_COST_REPORT_MISSING'], 409: ['BUDGET_ERR_TRUE_UP_REFUSED'] }) }
    }
  }, async (request) => await reconciliation.trueUp(request.body, auditContext(request)))
}
