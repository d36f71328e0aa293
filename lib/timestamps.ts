// Reads request timestamps strictly: a date or a date-time with a zone, and only days that exist.
import { InvalidFieldError } from './errors.js'

const ISO_TIMESTAMP = /^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2}))?$/

/** A date alone means midnight UTC. A date-time must say its zone: a local time would mean a different instant on every host. */
export function parseTimestamp (value: unknown, field: string): Date {
  if (value instanceof Date) {
    if (Number.isNaN(value.getTime())) throw new InvalidFieldError(field, 'is an invalid Date')
    return value
  }
  const match = typeof value === 'string' ? ISO_TIMESTAMP.exec(value) : null
  if (match === null) {
    throw new InvalidFieldError(field, 'must be an ISO 8601 date (2024-01-01) or date-time with a zone (2024-01-01T00:00:00Z)')
  }
  const [year, month, day, hour, minute, second] = match.slice(1, 7).map((part) => Number(part ?? 0)) as [number, number, number, number, number, number]
  const calendar = new Date(Date.UTC(year, month - 1, day))
  if (year < 1970 || calendar.getUTCMonth() !== month - 1 || calendar.getUTCDate() !== day) {
    throw new InvalidFieldError(field, `is not a valid date: ${match[0]}`)
  }
  if (hour > 23 || minute > 59 || second > 59) throw new InvalidFieldError(field, `is not a valid time: ${match[0]}`)
  return new Date(match[4] === undefined ? `${match[0]}T00:00:00Z` : match[0])
}
