// POST /usage/batch: the bulk usage collector's route. Registered inside the admin scope (lib/http/admin/usage.ts).
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifySchemaCompiler } from 'fastify'
import { RecordUsageBatchBody, UsageBatchResponse } from '../../kernel/schemas.js'
import type { UsageCollector } from '../../usage/index.js'
import { errorResponses } from './responses.js'
import { compileValidator } from '../validator.js'
import { batchRecordCheck, batchWithinArea } from './access.js'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The route checks each record of its body on its own (storable text, nesting, schema): the admin scope checks only the rest. */
    checksEachRecord?: boolean
  }
}

/**
 * 10,000 records of the documented example's size (about 190 bytes each with an uuid budgetId, 250 with
 * scopes and tags) make 2 to 2.5 MB; test/usage-batch.test.ts measures it. 16 MiB leaves room for
 * records of about 1.6 KB each on average (long descriptions, metadata), and bounds what one request
 * may make the process parse and hold.
 */
export const BATCH_BODY_LIMIT = 16 * 1024 * 1024

// The request is checked as a whole only for its shape (an object with 1 to 10,000 records); each record
// against BatchUsageRecord by the collector, so one bad record is answered on its own and blocks no other.
// The documented schema (what the OpenAPI document shows) stays the full one.
const WholeBatch = { ...RecordUsageBatchBody, properties: { records: { ...RecordUsageBatchBody.properties.records, items: {} } } }
const validateWholeBatch: FastifySchemaCompiler<any> = (route) => compileValidator({ ...route, schema: route.httpPart === 'body' ? WholeBatch : route.schema })

export const usageBatchRoutes: FastifyPluginAsyncTypebox<{ collector: UsageCollector }> = async (app, { collector }) => {
  app.post('/usage/batch', {
    bodyLimit: BATCH_BODY_LIMIT,
    config: { access: 'write', checksEachRecord: true },
    validatorCompiler: validateWholeBatch,
    schema: {
      summary: 'Record usage in bulk',
      description: 'Records 1 to 10,000 usage records in one request, each with either budgetId or the caller\'s scopes (counted on the ' +
        'budgets a gated call with those scopes, model and tags would count on). Each record is checked as POST /{id}/usage checks it ' +
        'and answered on its own, in input order: created, replayed (its metadata.requestId was used before, on whatever budget, in this ' +
        'batch or an earlier request, for the same request) or refused with the error the single route would give. The records ' +
        'created are stored in one transaction, with the same allocations, status and alert crossings as posting them one by one ' +
        'in order; a database fault stores none of them (503). A body that is not an object of 1 to 10,000 records is a 400; ' +
        'one over 16 MiB is a 413. A principal with scopes names each record\'s budget by budgetId, one it may touch (else that record is refused with BUDGET_ERR_OUT_OF_SCOPE).',
      tags: ['usage'],
      body: RecordUsageBatchBody,
      response: {
        200: UsageBatchResponse,
        ...errorResponses({ 400: [] }),
        413: { ...errorResponses({ 400: [] })[400], description: 'Error codes: FST_ERR_CTP_BODY_TOO_LARGE' }
      }
    }
  }, async (request) => batchWithinArea(request, request.body.records, await collector.collect(request.body.records, batchRecordCheck(request))))
}
