// SQL for the spend forecast: budget_forecast() (sql/functions/forecast.sql), the one projection that status, projected
// alerts and digests all read.
import { normalizeMoney, type Money } from '../kernel/money.js'
import type { Db } from '../kernel/database/db.js'

export function createForecastRepository (sql: Db) {
  return {
    /** What the budget will have spent when the window ends, seen at `at` with `currentAmount` spent in it so far. */
    async projectedTotal (budgetId: string, window: { periodStart: Date, periodEnd: Date }, currentAmount: Money, at: Date): Promise<Money> {
      const [row] = await sql<Array<{ total: string }>>`
        select budget_forecast(${budgetId}, ${window.periodStart}, ${window.periodEnd}, ${currentAmount}::numeric, ${at})::text as total`
      return normalizeMoney(row!.total)
    }
  }
}

export type ForecastRepository = ReturnType<typeof createForecastRepository>
