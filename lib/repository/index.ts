// Every repository, built once on one postgres.js client (the composition root in lib/index.ts hands
// them to the services). A service that needs a transaction builds the ones it uses on the
// transaction's sql, with the same functions.
import type { Db } from './budgets.js'
import { createAlertRepository } from './alerts.js'
import { createAuditRepository } from './audit.js'
import { createDigestRepository } from './digests.js'
import { createExchangeRateRepository } from './exchange-rates.js'
import { createForecastRepository } from './forecasts.js'
import { createReportRepository } from './reports.js'
import { createBudgetRepository } from './budgets.js'
import { createReservationRepository } from './reservations.js'
import { createStatusRepository } from './status.js'
import { createUsageRepository } from './usage.js'

export function createRepositories (sql: Db) {
  return {
    budgets: createBudgetRepository(sql),
    usage: createUsageRepository(sql),
    status: createStatusRepository(sql),
    alerts: createAlertRepository(sql),
    reservations: createReservationRepository(sql),
    audit: createAuditRepository(sql),
    reports: createReportRepository(sql),
    exchangeRates: createExchangeRateRepository(sql),
    forecasts: createForecastRepository(sql),
    digests: createDigestRepository(sql)
  }
}

export type Repositories = ReturnType<typeof createRepositories>
