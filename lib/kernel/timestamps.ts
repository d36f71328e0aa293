// Reads request timestamps strictly: a date or a date-time with a real zone offset, only days that
// exist, and only instants PostgreSQL and JSON both hold (1970 to 9999).
import { InvalidFieldError } from './errors.js'

const ISO_TIMESTAMP = /^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?(Z|([+-])(\d{2}):(\d{2})))?$/
const EARLIEST = Date.UTC(1970, 0, 1)
// The last instant whose ISO form has a four-digit year: past it, toISOString() writes "+010000-…".
const LATEST = Date.UTC(9999, 11, 31, 23, 59, 59, 999)

/** A date alone means midnight UTC. A date-time must say its zone: a local time would mean a different instant on every host. */
export function parseTimestamp (value: unknown, field: string): Date {
  if (value instanceof Date) return withinRange(value, field, value.toString())
  const match = typeof value === 'string' ? ISO_TIMESTAMP.exec(value) : null
  if (match === null) {
    throw new InvalidFieldError(field, 'must be an ISO 8601 date (2024-01-01) or date-time with a zone (2024-01-01T00:00:00Z)')
  }
  const [year, month, day, hour, minute, second] = match.slice(1, 7).map((part) => Number(part ?? 0)) as [number, number, number, number, number, number]
  const calendar = new Date(Date.UTC(year, month - 1, day))
  if (calendar.getUTCMonth() !== month - 1 || calendar.getUTCDate() !== day) {
    throw new InvalidFieldError(field, `is not a valid date: ${match[0]}`)
  }
  if (hour > 23 || minute > 59 || second > 59) throw new InvalidFieldError(field, `is not a valid time: ${match[0]}`)
  // Real offsets run from -12:00 to +14:00.
  const most = match[8] === '-' ? 12 : 14
  if (match[8] !== undefined && (Number(match[9]) > most || Number(match[10]) > 59 || (Number(match[9]) === most && Number(match[10]) > 0))) {
    throw new InvalidFieldError(field, `has an offset that no time zone has: ${match[7]}`)
  }
  return withinRange(new Date(match[4] === undefined ? `${match[0]}T00:00:00Z` : match[0]), field, match[0])
}

function withinRange (instant: Date, field: string, text: string): Date {
  const time = instant.getTime()
  if (Number.isNaN(time)) throw new InvalidFieldError(field, 'is an invalid date')
  if (time < EARLIEST || time > LATEST) throw new InvalidFieldError(field, `is outside 1970-01-01 to 9999-12-31 UTC: ${text}`)
  return instant
}

/**
 * A bound over instants kept to the millisecond (a Date's precision): the first whole millisecond at or
 * after the instant written, so that digits past the millisecond move the bound up, never down. Both
 * `at >= from` and `at < to` then select what the written bound selects.
 */
export function parseMillisecondBound (value: unknown, field: string): Date {
  const instant = parseTimestamp(value, field)
  const fraction = typeof value === 'string' ? /\.\d{3}(\d+)/.exec(value)?.[1] : undefined
  return fraction !== undefined && /[1-9]/.test(fraction) ? withinRange(new Date(instant.getTime() + 1), field, String(value)) : instant
}

/** The instant written, in nanoseconds since 1970: for comparing two written bounds at their own precision. */
export function nanosecondsOf (value: unknown, field: string): bigint {
  const instant = parseTimestamp(value, field)
  const fraction = typeof value === 'string' ? /\.\d{3}(\d{1,6})/.exec(value)?.[1] : undefined
  return BigInt(instant.getTime()) * 1_000_000n + BigInt((fraction ?? '').padEnd(6, '0'))
}
