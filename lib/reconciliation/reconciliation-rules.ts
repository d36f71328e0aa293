// Reconciliation's pure rules: which days a request may name, whether a line drifts (the SQL's rule,
// budget_recon_drifts_past, read again for the report's highlight on the exact decimals it returned), and
// the report as CSV.
import { InvalidFieldError } from '../kernel/errors.js'
import type { ReportLine } from './reconciliation-repository.js'

const DAY = /^\d{4}-\d{2}-\d{2}$/
const DAY_MS = 86_400_000
export const utcDay = (at: Date): string => at.toISOString().slice(0, 10)
export const daysBefore = (day: string, days: number): string => utcDay(new Date(Date.parse(`${day}T00:00:00Z`) - days * DAY_MS))
/** The longest report one request reads: a year and a day. */
export const MAX_REPORT_DAYS = 366

/** A UTC day as YYYY-MM-DD that exists, from year 1 (PostgreSQL's dates have no year 0). */
export function readDay (field: string, text: string): string {
  if (!DAY.test(text) || text.startsWith('0000') || Number.isNaN(Date.parse(`${text}T00:00:00Z`)) || !new Date(`${text}T00:00:00Z`).toISOString().startsWith(text)) {
    throw new InvalidFieldError(field, 'must be a day as YYYY-MM-DD')
  }
  return text
}

/** The first day PostgreSQL stores and readDay accepts: a default from is never earlier. */
const FIRST_DAY = '0001-01-01'

/** The report's days: to defaults to today, from to 30 days before to (and never before 0001-01-01). */
export function readRange (query: { from?: string, to?: string }, today: string): { from: string, to: string } {
  const to = query.to === undefined ? today : readDay('to', query.to)
  const defaultFrom = daysBefore(to, 30)
  // A day before year 1 prints as year 0000 or '-000001-…': either sorts before FIRST_DAY.
  const from = query.from === undefined ? (defaultFrom < FIRST_DAY ? FIRST_DAY : defaultFrom) : readDay('from', query.from)
  if (from > to) throw new InvalidFieldError('to', 'must not be before from')
  if ((Date.parse(`${to}T00:00:00Z`) - Date.parse(`${from}T00:00:00Z`)) / DAY_MS > MAX_REPORT_DAYS) throw new InvalidFieldError('to', `must be at most ${MAX_REPORT_DAYS} days after from`)
  return { from, to }
}


/** A decimal string as [sign, digits scaled to `scale` places]: exact, for comparing decimals PostgreSQL returned. */
function scaled (text: string, scale: number): bigint {
  const negative = text.startsWith('-')
  const [whole, fraction = ''] = (negative ? text.slice(1) : text).split('.')
  const units = BigInt(whole! + fraction.padEnd(scale, '0').slice(0, scale))
  return negative ? -units : units
}

/** budget_recon_drifts_past, on the report's strings: |difference| > tolerance x recorded, or anything billed against nothing recorded. */
export function driftsPast (line: Pick<ReportLine, 'difference' | 'recordedAmount'>, tolerance: string): boolean {
  if (line.difference === null) return false
  const scale = 40
  const difference = scaled(line.difference, scale)
  if (difference === 0n) return false
  const recorded = scaled(line.recordedAmount, scale)
  if (recorded === 0n) return true
  const magnitude = difference < 0n ? -difference : difference
  // tolerance x recorded at 2 x scale against |difference| at 2 x scale
  return magnitude * 10n ** BigInt(scale) > scaled(tolerance, scale) * recorded
}

export const REPORT_CSV_COLUMNS = ['day', 'provider', 'budget_id', 'budget_name', 'currency', 'provider_amount', 'recorded_amount', 'correction', 'difference', 'ratio', 'drift', 'missing_rate'] as const

/** RFC 4180: a field with a comma, quote or line break is quoted; a field a spreadsheet would run as a formula is prefixed with '. */
function csvField (value: string): string {
  // Only a whole plain decimal (a negative amount) keeps its -: '-1+1+cmd|…' is a formula.
  const safe = /^[=+\-@\t\r]/.test(value) && !/^-?\d+(\.\d+)?$/.test(value) ? `'${value}` : value
  return /[",\r\n]/.test(safe) ? `"${safe.replaceAll('"', '""')}"` : safe
}

export function reportCsv (lines: Array<Omit<ReportLine, 'filtered'> & { drift: boolean }>): string {
  const rows = lines.map((line) => [line.day, line.provider, line.budgetId, line.budgetName, line.currency, line.providerAmount ?? '', line.recordedAmount,
    line.correction ?? '', line.difference ?? '', line.ratio ?? '', String(line.drift), line.missingRate ?? ''].map(csvField).join(','))
  return [REPORT_CSV_COLUMNS.join(','), ...rows].join('\r\n') + '\r\n'
}
