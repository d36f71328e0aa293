// Review rc: a forecast as of a past instant (a late weekly digest, budget_forecast with p_at in the past) prunes
// the backdated marks of the kept profile of today, which did not see them: today's projection stays stale.
import postgres from 'postgres'
import t from 'tap'
import { PREFIX, buildApp } from './fixtures/app.js'
import { localSeries, recordSeries } from './fixtures/series.js'

t.test('a past-instant forecast leaves today\'s stale profile trusted', async (t) => {
  const { app, admin, sql } = await buildApp(t)
  const budget = (await admin({ method: 'POST', url: PREFIX, body: { name: 'f', scopeType: 'team', scopeId: 'team-f', amount: '100000', currency: 'USD', period: 'monthly', startDate: '2024-01-01' } })).json() as { id: string }
  const [{ today }] = await sql`select (now() at time zone 'UTC')::date::text as today` as unknown as [{ today: string }]
  const [{ from }] = await sql`select ((now() at time zone 'UTC')::date - 28)::text as "from"` as unknown as [{ from: string }]
  await recordSeries(app, budget.id, await localSeries(sql, 'UTC', from, 26, () => [['10:00', '1']]))
  const status = async () => (await admin({ url: `${PREFIX}/${budget.id}/status` })).json() as { projectedTotal: string, currentAmount: string }
  t.comment(`today ${today}; before: ${JSON.stringify(await status())}`)

  // another session stores backdated usage (5 days ago: 1000) and has not committed yet
  const [{ url }] = await sql`select current_database() as url` as unknown as [{ url: string }]
  const other = postgres({ host: '127.0.0.1', port: 5432, user: 'postgres', database: url, onnotice: () => {} })
  t.teardown(async () => await other.end())
  const tx = await other.reserve()
  await tx`begin`
  await tx`insert into budget_usage_records (budget_id, amount, currency, occurred_at) values (${budget.id}, 1000, 'USD', now() - interval '5 days')`
  // today's profile is summed now, without it (its snapshot does not see it)
  const during = await status()
  await tx`commit`
  tx.release()
  const afterCommit = await status()
  t.comment(`during: ${JSON.stringify(during)}; after commit: ${JSON.stringify(afterCommit)}`)

  // fresh: what today's projection is once the profile is summed again from scratch
  const fresh = async () => { await sql`update budget_forecast_profiles set snapshot = null`; return await status() }

  // second round: same, but a forecast as of yesterday noon runs between the commit and the next read
  const tx2 = await other.reserve()
  await tx2`begin`
  await tx2`insert into budget_usage_records (budget_id, amount, currency, occurred_at) values (${budget.id}, 1000, 'USD', now() - interval '6 days')`
  const during2 = await status()
  await tx2`commit`
  tx2.release()
  const [{ pastOk }] = await sql`select (now() - interval '1 day') >= date_trunc('month', now()) as "pastOk"` as unknown as [{ pastOk: boolean }]
  t.comment(`a past instant inside this month: ${String(pastOk)}`)
  // as a late weekly digest would: the forecast as of a past instant (inside the window)
  const w = await sql`select period_start, period_end from budget_status_cache where budget_id = ${budget.id} order by period_start desc limit 1`
  await sql`select budget_forecast(${budget.id}, ${w[0]!.period_start}, ${w[0]!.period_end}, 0, greatest(now() - interval '1 day', ${w[0]!.period_start}::timestamptz + interval '1 hour'))`
  const afterPast = await status()
  const truth = await fresh()
  t.comment(`during2: ${JSON.stringify(during2)}; after the past-instant forecast: ${JSON.stringify(afterPast)}; summed afresh: ${JSON.stringify(truth)}`)
  t.equal(afterPast.projectedTotal, truth.projectedTotal, 'today\'s projection counts the backdated usage once it committed')
})
