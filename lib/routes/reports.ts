// Admin routes for spend reports: JSON by default; with Accept: text/csv, CSV streamed row by row.
import { Readable } from 'node:stream'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { SpendReport, SpendReportQuery } from '../schemas.js'
import { errorResponses } from './responses.js'
import type { SpendReports } from '../services/reports.js'

export interface ReportRoutesOptions {
  reports: SpendReports
}

/** A report over a busy month sums millions of records: longer than the admin API's usual bound. */
export const REPORT_TIMEOUT_MS = 300_000

export const reportRoutes: FastifyPluginAsyncTypebox<ReportRoutesOptions> = async (app, { reports }) => {
  app.get('/reports/spend', {
    handlerTimeout: REPORT_TIMEOUT_MS,
    schema: {
      summary: 'Spend report',
      description: 'Totals, call counts and tokens per group (scope, model, UTC day or a tag\'s value) and currency over from..to (default: the last 30 days), optionally only the usage that counted toward one scope\'s budgets, or in one currency. JSON; with Accept: text/csv, CSV streamed row by row.',
      tags: ['reports'],
      querystring: SpendReportQuery,
      response: { 200: SpendReport, ...errorResponses({ 400: [] }) }
    }
  }, async (request, reply) => {
    if (!/\btext\/csv\b/.test(request.headers.accept ?? '')) return await reports.spendReport(request.query)
    const filter = reports.filterOf(request.query) // a bad query is a 400 before the stream starts
    return await reply
      .type('text/csv; charset=utf-8')
      .header('content-disposition', `attachment; filename="spend-by-${filter.groupBy}.csv"`)
      // a stream goes out as it is (the 200 schema describes the JSON form; it serializes no stream)
      .send(Readable.from(reports.spendCsv(filter)) as never)
  })
}
