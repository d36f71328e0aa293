// The generic cost CSV (docs/provider-costs.md): a header line naming the columns, then one bucket per line.
// Strict, so a file that is not what it seems is refused whole (CostCsvInvalidError names the line) rather
// than half-read: RFC 4180 quoting, ISO dates that exist, plain decimals kept exact, each bucket once.
import { CostCsvInvalidError } from '../kernel/errors.js'
import { exactDecimal } from '../kernel/exact-json.js'
import { slices as newSlices, type Slices } from '../kernel/loop-slices.js'
import { AMOUNT_DIGITS, bucketKey, CURRENCY, dimensionProblem, PROVIDER_NAME, type CostBucket } from './cost-bucket.js'

export const CSV_COLUMNS = ['date', 'provider', 'account', 'project', 'model', 'line_item', 'amount', 'currency'] as const
const REQUIRED: ReadonlyArray<typeof CSV_COLUMNS[number]> = ['date', 'provider', 'account', 'amount', 'currency']
/**
 * The most data lines one import stores (one transaction). With the route's 1 MiB body limit this keeps a
 * whole request's longest stretch of the event loop near its 20 ms target (bench/cost-import-stall.ts); a
 * larger export is split, and each part is imported (and can be imported again) on its own.
 */
export const MAX_CSV_ROWS = 10_000
/** The work (lib/kernel/loop-slices.ts units) a field counts: a slice is SLICE_WORK / (fields × FIELD_WORK) lines. */
export const FIELD_WORK = 64
const MAX_FIELD_LENGTH = 512
const SPLIT_THE_FILE = 'split the file: each part is imported on its own, and importing a part again changes nothing'
const DATE = /^(\d{4})-(\d{2})-(\d{2})$/
const PLAIN_DECIMAL = /^-?\d+(\.\d+)?$/
const QUOTE = 0x22

/** The most fields a line may have: CSV_COLUMNS on the header line, then as many as the header names. */
interface FieldLimit { fields: number }

// An unquoted field's characters, at most one past the limit: the scan stops there, not at the end of the file.
const UNQUOTED = new RegExp(`[^,\\r\\n"]{0,${MAX_FIELD_LENGTH + 1}}`, 'y')

const ordinal = (n: number): string => `${n}${n % 10 === 1 && n % 100 !== 11 ? 'st' : n % 10 === 2 && n % 100 !== 12 ? 'nd' : n % 10 === 3 && n % 100 !== 13 ? 'rd' : 'th'}`

/**
 * The file's lines as fields, one at a time, with the line number each starts on: RFC 4180 (quotes doubled
 * inside quotes, CRLF or LF). A field's length and a line's field count are checked as they are scanned, so
 * that no line is longer than some 4 KiB of scanning (8 fields of 512 characters): a line of millions of
 * commas, or a field of millions of doubled quotes, is refused at its 9th field or 513th character, without
 * holding the event loop over the rest of it. The refusal says how far into the line the scan got.
 */
function * records (text: string, limit: FieldLimit): Generator<{ line: number, fields: string[] }> {
  let rows = 0
  let at = text.charCodeAt(0) === 0xFEFF ? 1 : 0
  let line = 1
  while (at < text.length) {
    const start = line
    const lineStart = at
    const fields: string[] = []
    // `at` is the scan's cursor: the refusal names the character of the line it stopped at.
    const tooLong = (): never => {
      throw new CostCsvInvalidError(line, `field ${fields.length + 1} is longer than ${MAX_FIELD_LENGTH} characters (refused at its ${ordinal(MAX_FIELD_LENGTH + 1)} character, character ${at - lineStart} of the line)`)
    }
    for (;;) {
      if (fields.length === limit.fields) {
        const where = `refused at the ${ordinal(limit.fields + 1)}, which starts at character ${at - lineStart + 1} of the line`
        throw new CostCsvInvalidError(start, rows === 0 ? `more than ${limit.fields} columns (${where}; columns: ${CSV_COLUMNS.join(', ')})` : `more than ${limit.fields} fields where the header names ${limit.fields} (${where})`)
      }
      let field = ''
      if (text[at] === '"') {
        at++
        for (;;) {
          // Up to the next quote, but never past the field's 513th character (indexOf would run to the quote, however far).
          const stop = Math.min(text.length, at + MAX_FIELD_LENGTH + 1 - field.length)
          let end = at
          while (end < stop && text.charCodeAt(end) !== QUOTE) end++
          const chunk = text.slice(at, end)
          line += chunk.split('\n').length - 1
          field += chunk
          at = end
          if (field.length > MAX_FIELD_LENGTH) tooLong()
          if (at === text.length) throw new CostCsvInvalidError(start, 'a quoted field is not closed')
          at++
          if (text[at] === '"') {
            field += '"'
            at++
            if (field.length > MAX_FIELD_LENGTH) tooLong()
            continue
          }
          break
        }
        if (at < text.length && text[at] !== ',' && text[at] !== '\n' && !(text[at] === '\r' && text[at + 1] === '\n')) {
          throw new CostCsvInvalidError(line, 'text follows a closing quote')
        }
      } else {
        UNQUOTED.lastIndex = at
        field = UNQUOTED.exec(text)![0]
        at += field.length
        if (field.length > MAX_FIELD_LENGTH) tooLong()
        if (text[at] === '"') throw new CostCsvInvalidError(line, 'a quote inside an unquoted field (quote the whole field, doubling the quote)')
        if (text[at] === '\r' && text[at + 1] !== '\n') throw new CostCsvInvalidError(line, 'a carriage return outside a quoted field')
      }
      fields.push(field)
      if (text[at] === ',') { at++; continue }
      break
    }
    if (text[at] === '\r') at++
    if (text[at] === '\n') at++
    if (++rows > MAX_CSV_ROWS + 1) throw new CostCsvInvalidError(start, `more than ${MAX_CSV_ROWS.toLocaleString('en-US')} data lines; ${SPLIT_THE_FILE}`)
    yield { line: start, fields }
    line++
  }
}

function isoDate (text: string): string | null {
  const match = DATE.exec(text)
  if (match === null) return null
  const [, year, month, day] = match.map(Number) as [number, number, number, number]
  const at = new Date(Date.UTC(year, month - 1, day))
  return year >= 1970 && at.getUTCFullYear() === year && at.getUTCMonth() === month - 1 && at.getUTCDate() === day ? text : null
}

/**
 * Reads a cost CSV into buckets (source csv); throws CostCsvInvalidError for the first line that is wrong.
 * It is read in slices, giving the loop a turn between them (bench/cost-import-stall.ts measures the longest stretch).
 */
export async function readCostCsv (text: string, slices: Slices = newSlices()): Promise<CostBucket[]> {
  const limit: FieldLimit = { fields: CSV_COLUMNS.length }
  const lines = records(text, limit)
  const header = lines.next()
  if (header.done === true) throw new CostCsvInvalidError(1, `the file is empty: it needs a header line such as ${REQUIRED.join(',')}`)
  const columns = header.value.fields.map((name) => name.trim())
  for (const name of columns) {
    if (!(CSV_COLUMNS as readonly string[]).includes(name)) throw new CostCsvInvalidError(1, `unknown column '${name.slice(0, 64)}' (columns: ${CSV_COLUMNS.join(', ')})`)
  }
  if (new Set(columns).size !== columns.length) throw new CostCsvInvalidError(1, 'a column is named twice')
  for (const name of REQUIRED) if (!columns.includes(name)) throw new CostCsvInvalidError(1, `the column '${name}' is missing`)
  limit.fields = columns.length

  const seen = new Map<string, number>()
  const buckets: CostBucket[] = []
  for (const { line, fields } of lines) {
    buckets.push(readLine(line, fields, columns, seen))
    slices.spend(fields.length * FIELD_WORK)
    if (slices.due()) await slices.pause()
  }
  if (buckets.length === 0) throw new CostCsvInvalidError(2, 'no data lines after the header')
  return buckets
}

/** One data line as a bucket; `seen` holds the keys of the lines before it, to refuse a bucket given twice. */
function readLine (line: number, fields: string[], columns: string[], seen: Map<string, number>): CostBucket {
  if (fields.length !== columns.length) throw new CostCsvInvalidError(line, `${fields.length} fields where the header names ${columns.length}`)
  const value = (name: typeof CSV_COLUMNS[number]): string => {
    const index = columns.indexOf(name)
    return index === -1 ? '' : fields[index]!
  }
  const date = isoDate(value('date')) ?? (() => { throw new CostCsvInvalidError(line, 'date must be a day that exists, as YYYY-MM-DD') })()
  const provider = value('provider')
  if (!PROVIDER_NAME.test(provider)) throw new CostCsvInvalidError(line, 'provider must be 1 to 64 of a-z, 0-9, ".", "_" and "-", starting with a letter or digit')
  const amountText = value('amount')
  const amount = PLAIN_DECIMAL.test(amountText) ? exactDecimal(amountText, AMOUNT_DIGITS) : null
  if (amount === null) throw new CostCsvInvalidError(line, `amount must be a plain decimal such as 12.3456 (no exponent, no thousands separator, at most ${AMOUNT_DIGITS} digits either side of the point)`)
  const currency = value('currency')
  if (!CURRENCY.test(currency)) throw new CostCsvInvalidError(line, 'currency must be an ISO 4217 code in upper case, such as USD')
  const account = value('account')
  if (account === '') throw new CostCsvInvalidError(line, 'account must not be empty')
  const dimensions = { account, project: value('project'), model: value('model'), lineItem: value('line_item') }
  for (const [name, text] of Object.entries(dimensions) as Array<[keyof typeof dimensions, string]>) {
    const problem = dimensionProblem(name, text)
    if (problem !== null) throw new CostCsvInvalidError(line, `${name === 'lineItem' ? 'line_item' : name} ${problem}`)
  }
  const bucket: CostBucket = { source: 'csv', provider, date, ...dimensions, costType: '', tokenType: '', serviceTier: '', contextWindow: '', currency, amount }
  const key = bucketKey(bucket)
  const earlier = seen.get(key)
  if (earlier !== undefined) throw new CostCsvInvalidError(line, `the same bucket as line ${earlier} (date, provider, account, project, model, line_item and currency)`)
  seen.set(key, line)
  return bucket
}
