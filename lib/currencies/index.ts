// Currencies: exchange rates in force, set and read.
export type { ExchangeRates } from './exchange-rates.js'
