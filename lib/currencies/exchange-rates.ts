// Exchange rates as admins manage them: exact decimals, each pair's rate from an instant on. The
// conversions themselves happen in SQL where money is counted (budget_convert: rounded up, the rate stored).
import { InvalidFieldError } from '../kernel/errors.js'
import type { AuditContext } from '../audit/index.js'
import { canonicalDecimal, type ExchangeRate, type ExchangeRateRepository } from './exchange-rate-repository.js'
import { parseTimestamp } from '../kernel/timestamps.js'

const CURRENCY = /^[A-Z]{3}$/
// Up to 18 digits either side of the point: enough for any pair of ISO currencies, exact in numeric.
const RATE = /^\d{1,18}(\.\d{1,18})?$/

export interface SetRateRequest {
  rate: string | number
  effectiveFrom?: string
}

/** The rate as an exact decimal string: a string as given, or a JSON number of at most 15 significant digits. */
function parseRate (value: unknown): string {
  let text: string
  if (typeof value === 'string') text = value.trim()
  else if (typeof value === 'number' && Number.isFinite(value)) {
    // A double holds 15 significant digits faithfully; past that (or in exponent form) the number is not the rate that was meant.
    text = String(value)
    if (/e/i.test(text) || text.replace(/^[0.]+/, '').replace('.', '').length > 15) throw new InvalidFieldError('rate', 'has more digits than a JSON number keeps; send it as a decimal string')
  } else throw new InvalidFieldError('rate', 'must be a decimal string such as "0.92"')
  if (!RATE.test(text)) throw new InvalidFieldError('rate', 'must be a decimal with up to 18 digits before and after the point, such as "0.92"')
  const rate = canonicalDecimal(text)
  if (/^0(\.0*)?$/.test(rate)) throw new InvalidFieldError('rate', 'must be greater than 0')
  return rate
}

function checkPair (from: string, to: string): void {
  if (!CURRENCY.test(from)) throw new InvalidFieldError('from', 'must be an ISO 4217 code in upper case, such as USD')
  if (!CURRENCY.test(to)) throw new InvalidFieldError('to', 'must be an ISO 4217 code in upper case, such as EUR')
  if (from === to) throw new InvalidFieldError('to', 'must differ from from: a currency converts to itself at 1')
}

export function createExchangeRates (rates: ExchangeRateRepository, now: () => Date) {
  return {
    /** Sets one unit of `from` to be `rate` units of `to` from `effectiveFrom` (default now) on; audited as `context`'s change. */
    async setRate (from: string, to: string, request: SetRateRequest, context: AuditContext): Promise<{ rate: ExchangeRate, created: boolean }> {
      checkPair(from, to)
      const rate = parseRate(request.rate)
      const effectiveFrom = request.effectiveFrom === undefined ? now() : parseTimestamp(request.effectiveFrom, 'effectiveFrom')
      return await rates.setRate(from, to, rate, effectiveFrom, context)
    },

    /** A page of rates, by pair and newest first; the cursor is the last rate's id (rates are never deleted, so it always names one). */
    async listRates (query: { from?: string, to?: string, limit?: number, cursor?: string } = {}): Promise<{ rates: ExchangeRate[], nextCursor: string | null }> {
      const limit = query.limit ?? 100
      if (!Number.isInteger(limit) || limit < 1 || limit > 500) throw new InvalidFieldError('limit', 'must be an integer from 1 to 500')
      const cursor = query.cursor ?? null
      if (cursor !== null && (!/^[1-9]\d{0,18}$/.test(cursor) || BigInt(cursor) > 2n ** 63n - 1n || !await rates.rateExists(cursor))) {
        throw new InvalidFieldError('cursor', 'is not a cursor this API returned')
      }
      const found = await rates.listRates({ from: query.from, to: query.to }, cursor, limit + 1)
      const shown = found.slice(0, limit)
      return { rates: shown, nextCursor: found.length > limit ? shown[shown.length - 1]!.id : null }
    },

    /** The rate in force at `at` (default now); null when none is. */
    async rateAt (from: string, to: string, at: Date = now()): Promise<string | null> {
      checkPair(from, to)
      return await rates.rateAt(from, to, at)
    }
  }
}

export type ExchangeRates = ReturnType<typeof createExchangeRates>
