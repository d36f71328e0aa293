// SQL for budget_exchange_rates (sql/012): the rates admins set, each from an instant on.
import type { Db } from './budgets.js'

export interface ExchangeRate {
  from: string
  to: string
  /** One unit of `from` is `rate` units of `to`: an exact decimal string. */
  rate: string
  effectiveFrom: string
  setBy: string | null
  setAt: string
}

interface RateRow { from: string, to: string, rate: string, effectiveFrom: Date, setBy: string | null, setAt: Date }

/** A decimal without leading or trailing zeros ("0.920" is "0.92"): rates keep every digit they were given. */
export function canonicalDecimal (text: string): string {
  const [integer = '0', fraction = ''] = text.split('.')
  const whole = integer.replace(/^0+(?=\d)/, '')
  const part = fraction.replace(/0+$/, '')
  return part === '' ? whole : `${whole}.${part}`
}

const toRate = (row: RateRow): ExchangeRate => ({
  ...row, rate: canonicalDecimal(row.rate), effectiveFrom: row.effectiveFrom.toISOString(), setAt: row.setAt.toISOString()
})

export function createExchangeRateRepository (sql: Db) {
  const columns = sql`from_currency as "from", to_currency as "to", rate::text as rate, effective_from as "effectiveFrom", set_by as "setBy", set_at as "setAt"`
  return {
    /** Sets the pair's rate from `effectiveFrom` on; the same pair and instant again replaces it. Returns it and whether it was new. */
    async setRate (from: string, to: string, rate: string, effectiveFrom: Date, setBy: string): Promise<{ rate: ExchangeRate, created: boolean }> {
      const [row] = await sql<Array<RateRow & { created: boolean }>>`
        insert into budget_exchange_rates (from_currency, to_currency, rate, effective_from, set_by)
        values (${from}, ${to}, ${rate}::numeric, ${effectiveFrom}, ${setBy})
        on conflict (from_currency, to_currency, effective_from) do update set rate = excluded.rate, set_by = excluded.set_by, set_at = now()
        returning ${columns}, (xmax = 0) as created`
      const { created, ...stored } = row!
      return { rate: toRate(stored), created }
    },

    /** Every rate, by pair and then newest first; only one pair's when given. */
    async listRates (pair?: { from?: string, to?: string }): Promise<ExchangeRate[]> {
      const rows = await sql<RateRow[]>`
        select ${columns} from budget_exchange_rates
        where true ${pair?.from === undefined ? sql`` : sql`and from_currency = ${pair.from}`} ${pair?.to === undefined ? sql`` : sql`and to_currency = ${pair.to}`}
        order by from_currency, to_currency, effective_from desc
        limit 10000`
      return rows.map(toRate)
    },

    /** The rate in force at `at` (1 for one currency), or null. */
    async rateAt (from: string, to: string, at: Date): Promise<string | null> {
      const [row] = await sql<Array<{ rate: string | null }>>`select budget_exchange_rate(${from}, ${to}, ${at})::text as rate`
      return row?.rate == null ? null : canonicalDecimal(row.rate)
    }
  }
}

export type ExchangeRateRepository = ReturnType<typeof createExchangeRateRepository>
