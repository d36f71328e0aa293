// Admin routes for the providers' cost reports: import a CSV, list the stored buckets, run the collectors now.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyError } from 'fastify'
import { CostCsvTooLargeError, InvalidFieldError } from '../../kernel/errors.js'
import { decodeUtf8InSlices } from '../../kernel/utf8-decode.js'
import { ProviderCostCollectResult, ProviderCostImportBody, ProviderCostImportResult, ProviderCostList, ProviderCostQuery } from '../../kernel/schemas.js'
import { MAX_CSV_ROWS, type ProviderCosts } from '../../provider-costs/index.js'
import { handleError } from '../error-handler.js'
import { auditContext, errorResponses } from './responses.js'

/**
 * A cost CSV of 10,000 lines (MAX_CSV_ROWS) of some 100 bytes. Fastify reads a body into one Buffer, and
 * light work on every byte in one stretch (the concatenation, the string) held the loop some 10 ms at 4 MiB:
 * at 1 MiB a whole import stays near the 20 ms target (bench/cost-import-stall.ts). A larger file is split.
 */
export const COST_CSV_BODY_LIMIT = 1024 * 1024
/** A run may wait on a provider's retry-after several times (each at most providerCosts.retry.maxRetryAfterMs). */
const COLLECT_TIMEOUT_MS = 15 * 60_000


export const providerCostRoutes: FastifyPluginAsyncTypebox<{ costs: ProviderCosts }> = async (app, { costs }) => {
  // The import takes CSV and nothing else: in a scope of its own, without the JSON parser, any other type is a 415.
  await app.register(async (csv: typeof app) => {
    csv.removeAllContentTypeParsers()
    // Fastify's 413, with its code kept, saying what to do with a file too large.
    csv.setErrorHandler(function (error: FastifyError, request, reply) {
      const tooLarge = error.code === 'FST_ERR_CTP_BODY_TOO_LARGE' ? new CostCsvTooLargeError('1 MiB', `${MAX_CSV_ROWS.toLocaleString('en-US')} lines and 1 MiB`) : error
      return handleError.call(this, tooLarge, request, reply)
    })
    // Read as bytes and decoded strictly: a file that is not UTF-8 is refused, not read with U+FFFD in it.
    // Decoded in slices: 4 MiB in one call held the event loop some 18 ms (1 MiB is 2 slices).
    csv.addContentTypeParser('text/csv', { parseAs: 'buffer', bodyLimit: COST_CSV_BODY_LIMIT }, async (_request: unknown, body: Buffer) => {
      try {
        return await decodeUtf8InSlices(body)
      } catch {
        throw new InvalidFieldError('body', 'is not UTF-8 text')
      }
    })
    csv.post('/provider-costs/import', {
      bodyLimit: COST_CSV_BODY_LIMIT,
      // The reader checks each field it stores (a dimension for NUL and unpaired surrogates, the rest against
      // ASCII patterns): the admin scope's walk of a whole 4 MiB text held the event loop some 10 ms more.
      config: { access: 'platform', checksEachRecord: true },
      schema: {
        summary: 'Import provider costs from CSV',
        description: 'Stores the buckets of a cost CSV (Content-Type: text/csv; docs/provider-costs.md) for providers without a collector. The whole file in one ' +
          'transaction, or nothing: the first line that is wrong is a 400 BUDGET_ERR_COST_CSV_INVALID naming it. Importing the same file again changes nothing; ' +
          'a bucket imported again with another amount is replaced, and the audit log keeps the old amount (correct-provider-cost).',
        tags: ['provider-costs'],
        consumes: ['text/csv'],
        body: ProviderCostImportBody,
        response: {
          200: ProviderCostImportResult,
          ...errorResponses({ 400: ['BUDGET_ERR_COST_CSV_INVALID'] }),
          413: { ...errorResponses({ 400: [] })[400], description: 'Error codes: FST_ERR_CTP_BODY_TOO_LARGE' }
        }
      }
    }, async (request) => await costs.importCsv(request.body, auditContext(request)))
  })

  app.get('/provider-costs', {
    config: { access: 'platform' },
    schema: {
      summary: 'List provider costs',
      description: 'The stored cost buckets by day, then as stored, a page at a time (`limit`, `cursor`); `provider`, `source`, `from` and `to` (days, inclusive) narrow them.',
      tags: ['provider-costs'],
      querystring: ProviderCostQuery,
      response: { 200: ProviderCostList, ...errorResponses({ 400: [] }) }
    }
  }, async (request) => await costs.list(request.query))

  app.post('/provider-costs/collect', {
    config: { access: 'platform' },
    handlerTimeout: COLLECT_TIMEOUT_MS,
    schema: {
      summary: 'Collect provider costs now',
      description: 'Runs every configured collector (providerCosts.openai, providerCosts.anthropic) now, or joins the run under way, and answers what each stored. ' +
        'A provider that fails (past the retries of a 429 or a 5xx, or a malformed page) is a collector with status failed: the pages before it stay stored, ' +
        'and the next run resumes at the page that failed.',
      tags: ['provider-costs'],
      response: { 200: ProviderCostCollectResult, ...errorResponses({}) }
    }
  }, async () => await costs.collect())
}
