// Spend reports: totals, call counts and tokens per group (scope, model, UTC day or a tag's value) and
// currency, over a time range, as JSON or as CSV streamed row by row. Amounts stay exact decimal text.
import { InvalidFieldError } from '../errors.js'
import type { ReportRepository, SpendFilter, SpendGroupBy, SpendRow } from '../repository/reports.js'
import { SCOPE_TYPES, type ScopeType } from '../schemas.js'
import { parseTimestamp } from '../timestamps.js'

export interface SpendReportQuery {
  from?: string
  to?: string
  groupBy?: SpendGroupBy
  tagKey?: string
  scopeType?: ScopeType
  scopeId?: string
  currency?: string
}

const DAY = 86_400_000
const COLUMNS = ['key', 'currency', 'total', 'calls', 'inputTokens', 'outputTokens'] as const

/** A CSV field: quoted when it must be, and never read as a formula by a spreadsheet (=, +, -, @ first). */
function csvField (value: string | number | null): string {
  if (value === null) return ''
  let text = String(value)
  if (typeof value === 'string' && /^[=+\-@\t\r]/.test(text)) text = `'${text}`
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text
}

export function createSpendReports (reports: ReportRepository, now: () => Date) {
  /** The query, checked: a bad one is a 400 naming its field before anything is read. */
  function filterOf (query: SpendReportQuery): SpendFilter {
    const to = query.to === undefined ? now() : parseTimestamp(query.to, 'to')
    const from = query.from === undefined ? new Date(to.getTime() - 30 * DAY) : parseTimestamp(query.from, 'from')
    if (to <= from) throw new InvalidFieldError('to', 'must be after from')
    const groupBy = query.groupBy ?? 'scope'
    if (groupBy === 'tag' && query.tagKey === undefined) throw new InvalidFieldError('tagKey', 'is required when groupBy is tag')
    if ((query.scopeType === undefined) !== (query.scopeId === undefined)) {
      throw new InvalidFieldError(query.scopeType === undefined ? 'scopeType' : 'scopeId', 'scopeType and scopeId go together')
    }
    if (query.scopeType !== undefined && !SCOPE_TYPES.includes(query.scopeType)) throw new InvalidFieldError('scopeType', `must be one of ${SCOPE_TYPES.join(', ')}`)
    return {
      from,
      to,
      groupBy,
      ...(query.tagKey === undefined ? {} : { tagKey: query.tagKey }),
      ...(query.scopeType === undefined ? {} : { scope: { type: query.scopeType, id: query.scopeId! } }),
      ...(query.currency === undefined ? {} : { currency: query.currency })
    }
  }

  return {
    filterOf,

    /** The report as one JSON document (its size is the number of groups, not of records). */
    async spendReport (query: SpendReportQuery): Promise<{ from: string, to: string, groupBy: SpendGroupBy, groups: SpendRow[] }> {
      const filter = filterOf(query)
      const groups: SpendRow[] = []
      for await (const rows of reports.spendRows(filter)) groups.push(...rows)
      return { from: filter.from.toISOString(), to: filter.to.toISOString(), groupBy: filter.groupBy, groups }
    },

    /** The report as CSV lines, a header first, each group read from PostgreSQL as it is written. */
    async * spendCsv (filter: SpendFilter): AsyncIterable<string> {
      yield `${[filter.groupBy === 'tag' ? `tag:${filter.tagKey!}` : filter.groupBy, ...COLUMNS.slice(1)].map(csvField).join(',')}\r\n`
      for await (const rows of reports.spendRows(filter)) {
        yield rows.map((row) => `${COLUMNS.map((column) => csvField(row[column])).join(',')}\r\n`).join('')
      }
    }
  }
}

export type SpendReports = ReturnType<typeof createSpendReports>
