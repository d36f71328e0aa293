// Every repository, built once on one postgres.js client (the composition root in lib/index.ts hands
// them to the services). A service that needs a transaction builds the ones it uses on the
// transaction's sql, with the same functions.
import { createAlertRepository } from './alerts/alert-repository.js'
import { createAuditRepository } from './audit/audit-repository.js'
import { createDigestRepository } from './alerts/digest-repository.js'
import { createExchangeRateRepository } from './currencies/exchange-rate-repository.js'
import { createForecastRepository } from './usage/forecast-repository.js'
import { createReportRepository } from './reports/report-repository.js'
import { createBudgetRepository } from './budgets/budget-repository.js'
import { createReservationRepository } from './gate/reservation-repository.js'
import { createStatusRepository } from './usage/status-repository.js'
import { createUsageRepository } from './usage/usage-repository.js'
import type { Db } from './kernel/database/db.js'

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
