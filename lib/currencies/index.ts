// Currencies: exchange rates in force, set and read.
import type { Sql } from 'postgres'
import { boundedTransaction } from '../kernel/database/bounded.js'
import type { Logger } from '../kernel/logger.js'
import type { Part } from '../kernel/part.js'
import { createExchangeRateRepository } from './exchange-rate-repository.js'
import { createExchangeRates, type ExchangeRates } from './exchange-rates.js'

export type { ExchangeRates } from './exchange-rates.js'

/** Rates read on the shared pool; setting one is a statement in a transaction bounded at `adminTimeoutMs`, like every admin write. */
export function createCurrencies (sql: Sql, adminTimeoutMs: number, log: Logger, now: () => Date): Part<ExchangeRates> {
  const rates = createExchangeRates(createExchangeRateRepository(sql), now)
  const inBoundedTransaction = boundedTransaction(sql, adminTimeoutMs, log)
  const setRate: ExchangeRates['setRate'] = async (...args) =>
    await inBoundedTransaction(async (tx) => await createExchangeRates(createExchangeRateRepository(tx), now).setRate(...args))
  return { api: { ...rates, setRate } }
}
