// Spend reports: totals, call counts and tokens per group (the budget, a caller's scope of one type, model,
// day or a tag's value) and currency, over a time range or a calendar preset, sorted, optionally the top N,
// as JSON or as CSV streamed row by row. Amounts stay exact decimal text. docs/reports.md is the reference.
import { InvalidFieldError } from '../kernel/errors.js'
import type { ReportRepository, SpendFilter, SpendGroupBy, SpendLine, SpendPreset, SpendRow, SpendSort } from './report-repository.js'
import { SCOPE_TYPES, type ScopeType, type SpendReport } from '../kernel/schemas.js'
import { parseTimestamp } from '../kernel/timestamps.js'

export interface SpendReportQuery {
  from?: string
  to?: string
  preset?: SpendPreset
  timeZone?: string
  groupBy?: SpendGroupBy
  tagKey?: string
  scopeType?: ScopeType
  scopeId?: string
  currency?: string
  sort?: SpendSort
  limit?: number
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

/** Whether the limit left groups out, from the first page (it holds the limit's groups and the line after them). */
function cutIn (first: SpendLine[] | undefined): boolean {
  return first?.some((line) => line.other) ?? false
}

/**
 * @param listTimeZones the zone names PostgreSQL knows (read once): it is PostgreSQL that computes the
 *   presets' windows and the days, so a zone it does not know is refused before anything is read.
 */
export function createSpendReports (reports: ReportRepository, now: () => Date, listTimeZones: () => Promise<string[]>) {
  let timeZones: Promise<Set<string>> | undefined

  async function knownTimeZone (timeZone: string): Promise<string> {
    timeZones ??= listTimeZones().then((names) => new Set(names))
    const known = await timeZones.catch((error: unknown) => { timeZones = undefined; throw error })
    if (!known.has(timeZone)) throw new InvalidFieldError('timeZone', `is not a time zone PostgreSQL knows: '${timeZone}' (an IANA name such as Europe/Paris)`)
    return timeZone
  }

  /** The window: a preset in the zone, or from..to (default: the 30 days up to now). */
  async function windowOf (query: SpendReportQuery, timeZone: string): Promise<{ from: Date, to: Date }> {
    if (query.preset !== undefined) {
      const conflict = query.from !== undefined ? 'from' : query.to !== undefined ? 'to' : undefined
      if (conflict !== undefined) throw new InvalidFieldError('preset', `cannot be combined with ${conflict}: a preset is its own from..to`)
      return await reports.presetWindow(query.preset, timeZone, now())
    }
    const to = query.to === undefined ? now() : parseTimestamp(query.to, 'to')
    const from = query.from === undefined ? new Date(to.getTime() - 30 * DAY) : parseTimestamp(query.from, 'from')
    if (to <= from) throw new InvalidFieldError('to', 'must be after from')
    return { from, to }
  }

  /**
   * The query, checked: a bad one is a 400 naming its field before anything is read.
   * `within`: a scoped reader's area (lib/access), whose budgets' usage alone the report covers.
   */
  async function filterOf (query: SpendReportQuery, within?: ReadonlySet<string>): Promise<SpendFilter> {
    const groupBy = query.groupBy ?? 'scope'
    if (groupBy === 'tag' && query.tagKey === undefined) throw new InvalidFieldError('tagKey', 'is required when groupBy is tag')
    if ((query.scopeType === undefined) !== (query.scopeId === undefined)) {
      throw new InvalidFieldError(query.scopeType === undefined ? 'scopeType' : 'scopeId', 'scopeType and scopeId go together')
    }
    if (query.scopeType !== undefined && !SCOPE_TYPES.includes(query.scopeType)) throw new InvalidFieldError('scopeType', `must be one of ${SCOPE_TYPES.join(', ')}`)
    if (query.limit !== undefined && !(Number.isInteger(query.limit) && query.limit >= 1 && query.limit <= 1000)) throw new InvalidFieldError('limit', 'must be an integer from 1 to 1000')
    const timeZone = query.timeZone === undefined ? 'UTC' : await knownTimeZone(query.timeZone)
    const { from, to } = await windowOf(query, timeZone)
    return {
      from,
      to,
      groupBy,
      sort: query.sort ?? 'total',
      timeZone,
      ...(query.limit === undefined ? {} : { limit: query.limit }),
      ...(query.tagKey === undefined ? {} : { tagKey: query.tagKey }),
      ...(query.scopeType === undefined ? {} : { scope: { type: query.scopeType, id: query.scopeId! } }),
      ...(query.currency === undefined ? {} : { currency: query.currency }),
      ...(within === undefined ? {} : { within: [...within] })
    }
  }

  return {
    filterOf,

    /** The report as one JSON document (its size is the number of groups, or limit and a line per currency). */
    async spendReport (query: SpendReportQuery, within?: ReadonlySet<string>): Promise<SpendReport> {
      const filter = await filterOf(query, within)
      const groups: SpendRow[] = []
      const others: SpendReport['others'] = []
      for await (const lines of reports.spendLines(filter)) {
        for (const { other, key, groups: count, currency, total, calls, inputTokens, outputTokens } of lines) {
          if (other) others.push({ currency, total, calls, inputTokens, outputTokens, groups: count! })
          else groups.push({ key, currency, total, calls, inputTokens, outputTokens })
        }
      }
      return {
        from: filter.from.toISOString(),
        to: filter.to.toISOString(),
        timeZone: filter.timeZone,
        groupBy: filter.groupBy,
        sort: filter.sort,
        limit: filter.limit ?? null,
        groups,
        truncated: others.length > 0,
        others
      }
    },

    /**
     * The report as CSV: the groups only, a header line first, each page read from PostgreSQL as it is
     * written. Whether the limit cut groups is known from the first page, so it can go in a response
     * header (`truncated`) before the body; the per-currency rest is the JSON form's `others`.
     */
    async spendCsv (filter: SpendFilter): Promise<{ truncated: boolean, lines: AsyncIterable<string> }> {
      const pages = reports.spendLines(filter)[Symbol.asyncIterator]()
      const first = await pages.next()
      const head = `${[filter.groupBy === 'tag' ? `tag:${filter.tagKey!}` : filter.groupBy, ...COLUMNS.slice(1)].map(csvField).join(',')}\r\n`
      const page = (lines: SpendLine[]) => lines.filter((line) => !line.other).map((line) => `${COLUMNS.map((column) => csvField(line[column])).join(',')}\r\n`).join('')
      async function * lines (): AsyncIterable<string> {
        try {
          yield head
          if (first.done === true) return
          yield page(first.value)
          for (let next = await pages.next(); next.done !== true; next = await pages.next()) yield page(next.value)
        } finally {
          await pages.return?.() // a client that went away closes the cursor
        }
      }
      return { truncated: cutIn(first.done === true ? undefined : first.value), lines: lines() }
    }
  }
}

export type SpendReports = ReturnType<typeof createSpendReports>
