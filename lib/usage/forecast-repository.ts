// SQL for the spend forecast: budget_forecast() (sql/functions/forecast.sql), the one projection that status, projected
// alerts and digests all read, and the burn rate beside it (budget_burn_rate).
import { normalizeMoney, type Money } from '../kernel/money.js'
import type { Db } from '../kernel/database/db.js'

export function createForecastRepository (sql: Db) {
  return {
    /**
     * What the budget will have spent when the window ends, seen at `at` with `currentAmount` spent in it so
     * far, and its burn rate then (budget_burn_rate, sql/functions/forecast.sql: the floor on the elapsed time is SQL's), in one
     * statement.
     */
    async projection (budgetId: string, window: { periodStart: Date, periodEnd: Date }, currentAmount: Money, at: Date): Promise<{ projectedTotal: Money, burnRate: Money }> {
      const [row] = await sql<Array<{ total: string, burnRate: string }>>`
        select budget_forecast(${budgetId}, ${window.periodStart}, ${window.periodEnd}, ${currentAmount}::numeric, ${at})::text as total,
               budget_burn_rate(${budgetId}, ${window.periodStart}, ${window.periodEnd}, ${currentAmount}::numeric, ${at})::text as "burnRate"`
      return { projectedTotal: normalizeMoney(row!.total), burnRate: normalizeMoney(row!.burnRate) }
    }
  }
}

export type ForecastRepository = ReturnType<typeof createForecastRepository>
