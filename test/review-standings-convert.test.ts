// Found while reviewing budget_standings: an estimate converted into a budget's currency is to be rounded UP at 10
// decimals, but budget_convert computed ceil(x * 10^10) / 10^10, a numeric division whose scale PostgreSQL picks
// from the operands' sizes, so a converted amount of 11 or more integer digits was rounded to nearest, sometimes
// DOWN. It now multiplies by 10^-10, which is exact (sql/functions/money.sql).
import t from 'tap'
import { buildApp, postBudget } from './fixtures/app.js'
import { createStandingRepository } from '../lib/gate/standing-repository.js'

t.test('the standings\' estimate in another currency is never below estimate x rate', async (t) => {
  const { sql, admin } = await buildApp(t)
  await postBudget(admin, { name: 'euro', scopeType: 'organization', scopeId: 'acme', amount: '999999999999999999', currency: 'EUR', period: 'monthly', startDate: '2024-01-01' })
  await sql`insert into budget_exchange_rates (from_currency, to_currency, effective_from, rate) values ('USD', 'EUR', '2024-01-01', 0.5)`
  const read = await createStandingRepository(sql).listApplicable({ scopes: [{ type: 'organization', id: 'acme' }] as any, model: null }, 'USD', '123456789012.1234567849')
  // 123456789012.1234567849 x 0.5 = 61728394506.06172839245: rounded up at 10 decimals, 61728394506.0617283925
  t.equal(read.numbers[0]!.estimate, '61728394506.0617283925', 'rounded up at 10 decimals')
})
