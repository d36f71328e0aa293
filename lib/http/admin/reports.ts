// Admin routes for spend reports: JSON by default; with Accept: text/csv, CSV streamed row by row.
import { Readable } from 'node:stream'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { SpendReport, SpendReportQuery } from '../../kernel/schemas.js'
import { errorResponses } from './responses.js'
import { visibleBudgets } from './access.js'
import type { SpendReports } from '../../reports/index.js'

export interface ReportRoutesOptions {
  reports: SpendReports
}

/** A report over a busy month sums millions of records: longer than the admin API's usual bound. */
export const REPORT_TIMEOUT_MS = 300_000

export const reportRoutes: FastifyPluginAsyncTypebox<ReportRoutesOptions> = async (app, { reports }) => {
  app.get('/reports/spend', {
    config: { access: 'read' },
    handlerTimeout: REPORT_TIMEOUT_MS,
    schema: {
      summary: 'Spend report',
      description: 'Totals, call counts and tokens per group (the budget a call was recorded on, the caller\'s organization, team, user or project, model, day or a tag\'s value) and currency, over from..to (default: the last 30 days) or a preset week or month in timeZone, every served call included whether or not a budget covered it (for a principal with scopes: only the calls counted toward a budget it may see, and no other budget named). Sorted by total (largest first) or by key; limit keeps the top N and sums the rest in others. Optionally only the usage that counted toward one scope\'s budgets, or in one currency. JSON; with Accept: text/csv, CSV streamed row by row (the groups only; header x-report-truncated says whether limit cut any). docs/reports.md: the rule that makes a team\'s total equal its budget\'s status.',
      tags: ['reports'],
      querystring: SpendReportQuery,
      response: { 200: SpendReport, ...errorResponses({ 400: [] }) }
    }
  }, async (request, reply) => {
    const within = visibleBudgets(request) ?? undefined // a scoped principal: the usage of its area's budgets only
    if (!/\btext\/csv\b/.test(request.headers.accept ?? '')) return await reports.spendReport(request.query, within)
    const filter = await reports.filterOf(request.query, within) // a bad query is a 400 before the stream starts
    const { truncated, lines } = await reports.spendCsv(filter)
    return await reply
      .type('text/csv; charset=utf-8')
      .header('content-disposition', `attachment; filename="spend-by-${filter.groupBy}.csv"`)
      .header('x-report-truncated', String(truncated))
      .header('x-report-from', filter.from.toISOString())
      .header('x-report-to', filter.to.toISOString())
      // a stream goes out as it is (the 200 schema describes the JSON form; it serializes no stream)
      .send(Readable.from(lines) as never)
  })
}
