// Review 2: a moved correction is replayed as one event at what it is now (its adjustments summed into its first record), not record by record in uuid order.
import t from 'tap'
import { buildApp } from './fixtures/app.js'
import { TWO_DAYS_AGO, YESTERDAY, importCsv, ok } from './fixtures/reconciliation.js'

t.test('a correction moved 150 -> 60: the replay crosses 80% at noon on a window whose records sum to 60', async (t) => {
  const app = await buildApp(t)
  const team = (await ok<{ id: string }>(app, 'POST', '', {
    name: 'Team', scopeType: 'team', scopeId: 'team-a', amount: '100', currency: 'USD', period: 'monthly', startDate: TWO_DAYS_AGO,
    alerts: [{ threshold: 80, actions: ['notify', 'block-all'], notificationChannels: ['ops'] }]
  }, 201)).id
  await ok(app, 'POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: team, trueUp: true }, 201)
  await ok(app, 'POST', `/${team}/usage`, { amount: '50', currency: 'USD', occurredAt: `${YESTERDAY}T01:00:00Z`, metadata: { requestId: 'a' } }, 201)
  // a gated call in the afternoon of the corrected day (its estimate recorded, as the gate records it)
  await app.sql`insert into budget_usage_records (budget_id, root_id, amount, currency, metadata, occurred_at)
                values (${team}, ${team}, 1, 'USD', '{"requestId":"g1","estimatedCost":"1","teamId":"team-a"}', ${`${YESTERDAY}T15:00:00Z`})`
  const bill = async (amount: string) => {
    await importCsv(app, [`${YESTERDAY},mistral,acme,proj_a,${amount},USD`])
    await ok(app, 'POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: team })
  }
  // The invoice says 150, then is corrected to 60 (the correction +99 then -90: 9); moved up and back until the replay's
  // order (occurred_at, then the record's uuid) puts an up-move before the down-move that cancels it.
  await bill('150')
  await bill('60')
  for (let i = 0; i < 10; i++) {
    const [prefix] = await app.sql`select max(s)::text as peak from (select 51 + sum(amount) over (order by id) as s from budget_usage_records where correction) x`
    t.comment(`round ${i}: the replay's peak at noon ${prefix!.peak}`)
    if (Number(prefix!.peak) >= 80) break
    await bill('150'); await bill('60')
  }
  const [window] = await app.sql`select current_amount::text as spent, usage_count::int as n from budget_status_cache where budget_id = ${team}`
  t.equal(window!.spent, '60.0000000000', 'the ledger: the window is at 60 (50 + 1 + the correction of 9)')
  const records = await app.sql`select amount::text, metadata ? 'adjusts' as adj from budget_usage_records where correction order by id`
  t.comment(JSON.stringify(records))

  const answer = await ok<{ budgets: Array<{ budgetId: string, periods: Array<{ spent: string, calls: number }>, crossings: unknown[], refused: unknown[], avoidedSpend: string }> }>(
    app, 'POST', '/simulate', { from: `${YESTERDAY}T00:00:00Z`, to: new Date().toISOString() })
  const replayed = answer.budgets.find((b) => b.budgetId === team)!
  t.comment(JSON.stringify(replayed))
  t.same(replayed.crossings, [], 'no crossing: the day\'s records sum to 60 of 100 (one correction of 9)')
  t.same(replayed.refused, [], 'the afternoon call is not refused')
  t.equal(replayed.periods[0]!.calls, 3, 'the usage, the gated call and ONE correction')
})
