// SQL for budget_exchange_rates (sql/functions/exchange-rates.sql): the rates admins set, each from an instant on, kept as a
// history (a rate set again for the same instant adds a row), each set audited in its own transaction.
import type { TransactionSql } from 'postgres'
import { createAuditRepository, type AuditContext } from '../audit/index.js'
import type { Db } from '../kernel/database/db.js'

export interface ExchangeRate {
  id: string
  from: string
  to: string
  /** One unit of `from` is `rate` units of `to`: an exact decimal string. */
  rate: string
  effectiveFrom: string
  setBy: string | null
  setAt: string
  /** A later rate was set for the same pair and instant: this one is history. */
  replaced: boolean
}

interface RateRow { id: string, from: string, to: string, rate: string, effectiveFrom: Date, setBy: string | null, setAt: Date, replaced: boolean }

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
  const columns = sql`
    r.id::text as id, r.from_currency as "from", r.to_currency as "to", r.rate::text as rate, r.effective_from as "effectiveFrom",
    r.set_by as "setBy", r.set_at as "setAt",
    exists (select 1 from budget_exchange_rates n where n.from_currency = r.from_currency and n.to_currency = r.to_currency
            and n.effective_from = r.effective_from and n.id > r.id) as replaced`
  const inTransaction = async <T>(work: (tx: TransactionSql) => Promise<T>): Promise<T> =>
    'begin' in sql ? await sql.begin(work) as T : await sql.savepoint(work) as T

  return {
    /**
     * Sets the pair's rate from `effectiveFrom` on, and audits it, in one transaction. The same pair and
     * instant again adds a row that replaces the rate in force; the replaced one stays. Returns the rate
     * and whether it was new (no rate was set for that instant before).
     */
    async setRate (from: string, to: string, rate: string, effectiveFrom: Date, context: AuditContext): Promise<{ rate: ExchangeRate, created: boolean }> {
      return await inTransaction(async (tx) => {
        // One writer per pair at a time, so the row set last has the highest id (the one in force).
        await tx`select pg_advisory_xact_lock(hashtextextended(${`relaycore-budgets:exchange-rate:${from}/${to}`}, 0))`
        const [previous] = await tx<RateRow[]>`
          select ${columns} from budget_exchange_rates r
          where r.from_currency = ${from} and r.to_currency = ${to} and r.effective_from = ${effectiveFrom}
          order by r.id desc limit 1`
        const [row] = await tx<RateRow[]>`
          insert into budget_exchange_rates as r (from_currency, to_currency, rate, effective_from, set_by)
          values (${from}, ${to}, ${rate}::numeric, ${effectiveFrom}, ${context.actor})
          returning r.id::text as id, r.from_currency as "from", r.to_currency as "to", r.rate::text as rate, r.effective_from as "effectiveFrom",
                    r.set_by as "setBy", r.set_at as "setAt", false as replaced`
        const stored = toRate(row!)
        const before = previous === undefined ? null : { ...toRate(previous), replaced: true }
        await createAuditRepository(tx).record(null, 'set-exchange-rate', context, { changes: ['rate'], before, after: stored })
        return { rate: stored, created: previous === undefined }
      })
    },

    /** Rates by pair and then newest first (the last set first within an instant), after the rate `after` (its id); one pair's or one currency's when given. */
    async listRates (pair: { from?: string, to?: string }, after: string | null, limit: number): Promise<ExchangeRate[]> {
      const rows = await sql<RateRow[]>`
        select ${columns} from budget_exchange_rates r
        ${after === null ? sql`` : sql`cross join (select from_currency, to_currency, effective_from, id from budget_exchange_rates where id = ${after}::bigint) c`}
        where true ${pair.from === undefined ? sql`` : sql`and r.from_currency = ${pair.from}`} ${pair.to === undefined ? sql`` : sql`and r.to_currency = ${pair.to}`}
          ${after === null
            ? sql``
            : sql`and ((r.from_currency, r.to_currency) > (c.from_currency, c.to_currency)
                       or ((r.from_currency, r.to_currency) = (c.from_currency, c.to_currency) and (r.effective_from, r.id) < (c.effective_from, c.id)))`}
        order by r.from_currency, r.to_currency, r.effective_from desc, r.id desc
        limit ${limit}`
      return rows.map(toRate)
    },

    /** Whether a rate has this id (a cursor this API returned names one). */
    async rateExists (id: string): Promise<boolean> {
      const [row] = await sql<Array<{ found: boolean }>>`select exists (select 1 from budget_exchange_rates where id = ${id}::bigint) as found`
      return row!.found
    },

    /** The rate in force at `at` (1 for one currency), or null. */
    async rateAt (from: string, to: string, at: Date): Promise<string | null> {
      const [row] = await sql<Array<{ rate: string | null }>>`select budget_exchange_rate(${from}, ${to}, ${at})::text as rate`
      return row?.rate == null ? null : canonicalDecimal(row.rate)
    }
  }
}

export type ExchangeRateRepository = ReturnType<typeof createExchangeRateRepository>
