// The seasonal forecast (budget_forecast, sql/functions/forecast.sql): spend per weekday in the budget's time zone over the
// last four weeks, the rest of the window projected day by day, the linear rule when there is not enough
// history. One implementation, read by the status's projectedTotal and by projected alerts.
import postgres, { type Sql } from 'postgres'
import t from 'tap'
import { compareMoney, fromUnits, normalizeMoney, toUnits } from '../lib/kernel/money.js'
import { ADMIN_TOKEN, PREFIX, buildApp } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'
import { localSeries, recordSeries } from './fixtures/series.js'

const DAY = 86_400_000

/** The first row of a query. */
const one = async <T>(query: PromiseLike<T[]>): Promise<T> => (await query)[0]!

const forecast = async (sql: Sql, id: string, start: Date | string, end: Date | string, current: string, at: Date | string) =>
  (await sql<Array<{ v: string }>>`select budget_forecast(${id}, ${start}::timestamptz, ${end}::timestamptz, ${current}::numeric, ${at}::timestamptz)::text as v`)[0]!.v
const linear = async (sql: Sql, current: string, start: Date | string, end: Date | string, at: Date | string) =>
  (await sql<Array<{ v: string }>>`select budget_linear_forecast(${current}::numeric, ${start}::timestamptz, ${end}::timestamptz, ${at}::timestamptz)::text as v`)[0]!.v

const distance = (a: string, b: string) => { const d = toUnits(a) - toUnits(b); return d < 0n ? -d : d }

t.test('the seasonal forecast beats the linear one on a weekday-heavy series, against the actual outcome', async (t) => {
  const { app, sql, createBudget } = await buildGateway(t)
  const zone = 'America/New_York'
  // Six weeks back from the Monday of this local week: weekly windows from Monday, in New York.
  const { thisMonday } = await one(sql<Array<{ thisMonday: string }>>`select to_char(date_trunc('week', now() at time zone ${zone}), 'YYYY-MM-DD') as "thisMonday"`)
  const { firstMonday } = await one(sql<Array<{ firstMonday: string }>>`select to_char(${thisMonday}::date - 42, 'YYYY-MM-DD') as "firstMonday"`)
  const budget = await createBudget({ amount: '100000', period: 'weekly', timezone: zone, startDate: firstMonday })
  // Weekdays: four calls a day, about 10 (a little more in some weeks); weekends: one call of about 1.
  const series = await localSeries(sql, zone, firstMonday, 42, ({ isodow, index }) => {
    const week = Math.floor(index / 7)
    return isodow <= 5
      ? ['09:00', '12:00', '15:00', '18:00'].map((time) => [time, fromUnits(toUnits('2.5') + toUnits('0.125') * BigInt(week % 3))] as [string, string])
      : [['12:00', fromUnits(toUnits('1') + toUnits('0.25') * BigInt(week % 2))]]
  })
  await recordSeries(app, budget.id, series)

  // The last whole week: the forecast seen at 13:00 local each day, against what the week really came to.
  const week = await one(sql<Array<{ start: Date, end: Date }>>`
    select (${thisMonday}::date - 7)::timestamp at time zone ${zone} as start, ${thisMonday}::date::timestamp at time zone ${zone} as end`)
  const { actual } = await one(sql<Array<{ actual: string }>>`
    select sum(amount)::text as actual from budget_usage_allocations where budget_id = ${budget.id} and occurred_at >= ${week.start} and occurred_at < ${week.end}`)
  let seasonalError = 0n
  let linearError = 0n
  for (let day = 0; day < 7; day++) {
    const { at } = await one(sql<Array<{ at: Date }>>`select ((${thisMonday}::date - 7 + ${day}::int) + time '13:00') at time zone ${zone} as at`)
    const { current } = await one(sql<Array<{ current: string }>>`
      select coalesce(sum(amount), 0)::text as current from budget_usage_allocations where budget_id = ${budget.id} and occurred_at >= ${week.start} and occurred_at < ${at}`)
    const seasonal = await forecast(sql, budget.id, week.start, week.end, current, at)
    const straight = await linear(sql, current, week.start, week.end, at)
    seasonalError += distance(seasonal, actual)
    linearError += distance(straight, actual)
  }
  t.ok(seasonalError * 4n < linearError, `seasonal error ${fromUnits(seasonalError)} is under a quarter of the linear error ${fromUnits(linearError)} (7 forecasts of ${actual})`)
})

t.test('the fallback: the linear rule, exactly, without two weeks of history or without spend in it', async (t) => {
  const { app, sql, createBudget } = await buildGateway(t)
  // A budget from 2024 with no usage: four weeks of history, all of it zero. The status's old hand values.
  const quiet = await createBudget({ amount: '1000', startDate: '2024-01-01T00:00:00.000Z' })
  const april = ['2024-04-01T00:00:00Z', '2024-05-01T00:00:00Z'] as const
  t.equal(await forecast(sql, quiet.id, ...april, '250', '2024-04-11T00:00:00Z'), '750.0000000000', '250 + 25 a day x 20 days')
  t.equal(await forecast(sql, quiet.id, ...april, '100', '2024-04-04T00:00:00Z'), '1000.0000000000', '100 + 100 x 27 / 3 in one exact division')
  t.equal(await forecast(sql, quiet.id, ...april, '0.0001', '2024-04-02T00:00:00Z'), '0.0030000000')
  for (const ms of [0, 1, 1000]) {
    const at = new Date(Date.parse(april[0]) + ms)
    const expected = fromUnits(toUnits('2') + toUnits('48') * BigInt(Date.parse(april[1]) - at.getTime()) / BigInt(DAY))
    t.equal(compareMoney(await forecast(sql, quiet.id, ...april, '2', at), expected), 0, `${ms} ms in: 2 + 48 a day (the elapsed time floored at an hour)`)
  }
  t.equal(await forecast(sql, quiet.id, ...april, '0', '2024-03-01T00:00:00Z'), '0', 'before the window: nothing to project')
  t.equal(await forecast(sql, quiet.id, ...april, '300', '2024-06-01T00:00:00Z'), '300', 'after it: what was spent')

  // A calendar window that began before the budget: time counts from the budget's start (5 days, under two weeks of history).
  const late = await createBudget({ amount: '1000', startDate: '2024-04-21T00:00:00.000Z' })
  t.equal(await forecast(sql, late.id, ...april, '100', '2024-04-26T00:00:00Z'), '200.0000000000', '100 + 20 a day x the 5 days left')

  // Ten days of real spend: not enough history for a weekday profile.
  const start = new Date(Date.now() - 10 * DAY)
  const young = await createBudget({ amount: '1000', period: 'custom', startDate: start.toISOString(), endDate: new Date(start.getTime() + 30 * DAY).toISOString(), recurring: false })
  await recordSeries(app, young.id, Array.from({ length: 9 }, (_, day) => ({ at: new Date(start.getTime() + (day + 0.5) * DAY), amount: '3' })))
  const at = new Date()
  t.equal(await forecast(sql, young.id, start, new Date(start.getTime() + 30 * DAY), '27', at),
    await linear(sql, '27', start, new Date(start.getTime() + 30 * DAY), at), 'the linear rule')
})

t.test('weekdays are the budget\'s own: local days in its time zone, and a 25-hour day counts as one day', async (t) => {
  const { app, sql, createBudget } = await buildGateway(t)
  // Tokyo: every local Monday at 02:00 (a Sunday in UTC), 7.
  const tokyo = await createBudget({ amount: '1000', timezone: 'Asia/Tokyo', startDate: '2026-09-07' })
  await recordSeries(app, tokyo.id, await localSeries(sql, 'Asia/Tokyo', '2026-09-07', 56, ({ isodow }) => isodow === 1 ? [['02:00', '7']] : []))
  const [profile] = await sql`select days, totals::text[] as totals, counts from budget_weekday_profile(${tokyo.id}, 'Asia/Tokyo', '2026-09-06T15:00:00Z', '2026-11-01')`
  t.same({ ...profile, totals: (profile!.totals as string[]).map(normalizeMoney) }, { days: 28, totals: ['28', '0', '0', '0', '0', '0', '0'], counts: [4, 4, 4, 4, 4, 4, 4] },
    'four Mondays of 7, in Tokyo\'s week')
  // Seen at Sunday noon in Tokyo, to Tuesday's midnight: half of Sunday (nothing) and all of Monday (7).
  const sundayNoon = '2026-11-01T03:00:00Z'
  t.equal(await forecast(sql, tokyo.id, '2026-10-26T15:00:00Z', '2026-11-02T15:00:00Z', '5', sundayNoon), '12.0000000000', '5 + 0 x 1/2 + 7')

  // New York: 24 every local day at noon. On 1 November 2026 the clocks go back: a day of 25 hours.
  const york = await createBudget({ amount: '1000', timezone: 'America/New_York', startDate: '2026-09-28' })
  await recordSeries(app, york.id, await localSeries(sql, 'America/New_York', '2026-09-28', 34, () => [['12:00', '24']]))
  // Noon on the long day (17:00 UTC, EST): 13 of its 25 hours have passed, 12 are left: 24 x 12/25 = 11.52.
  t.equal(await forecast(sql, york.id, '2026-11-01T04:00:00Z', '2026-11-02T05:00:00Z', '1', '2026-11-01T17:00:00Z'), '12.5200000000', '1 + 24 x 12/25')
  // A window to Tuesday's midnight adds the whole Monday after the long day.
  t.equal(await forecast(sql, york.id, '2026-11-01T04:00:00Z', '2026-11-03T05:00:00Z', '1', '2026-11-01T17:00:00Z'), '36.5200000000', 'and all of Monday: 1 + 11.52 + 24')
})

t.test('the status\'s projectedTotal is the forecast', async (t) => {
  const { app, sql, createBudget } = await buildGateway(t)
  // A daily budget in UTC whose history never spends on today's weekday: the forecast is what was spent, where the linear rule adds to it.
  const { today, isodow } = await one(sql<Array<{ today: string, isodow: number }>>`select to_char(now() at time zone 'UTC', 'YYYY-MM-DD') as today, extract(isodow from now() at time zone 'UTC')::int as isodow`)
  const { first } = await one(sql<Array<{ first: string }>>`select to_char(${today}::date - 35, 'YYYY-MM-DD') as first`)
  const budget = await createBudget({ amount: '1000', period: 'daily', timezone: 'UTC', startDate: first })
  await recordSeries(app, budget.id, await localSeries(sql, 'UTC', first, 35, ({ isodow: day }) => day === isodow ? [] : [['06:00', '10']]))
  await app.budgetTracker.recordUsage({ budgetId: budget.id, amount: '1', currency: 'USD', source: 'test' })
  const status = await app.budgetTracker.getBudgetStatus(budget.id)
  t.equal(status.currentAmount, '1')
  t.equal(status.projectedTotal, '1', 'nothing more is spent on this weekday')
  t.not(await linear(sql, '1', status.periodStart, status.periodEnd, new Date()), '1', 'where the linear rule would project more')
  t.equal(compareMoney(status.burnRate, '0'), 1, 'the burn rate is still spend per elapsed day')
})

t.test('projected alerts compare the forecast; only budgets with one pay for it', async (t) => {
  const { app, sql, createBudget } = await buildGateway(t)
  // Windows of one day that began 30 minutes ago; 40 a day for the four weeks before.
  const start = new Date(Date.now() - 28 * DAY - 30 * 60_000)
  const custom = { period: 'custom', startDate: start.toISOString(), endDate: new Date(start.getTime() + DAY).toISOString(), recurring: true }
  const budget = await createBudget({ amount: '100', ...custom, alerts: [{ threshold: 50, basis: 'projected', actions: ['notify'] }] })
  const plain = await createBudget({ scopeId: 'team-b', amount: '100', ...custom, alerts: [{ threshold: 50, actions: ['notify'] }] })
  const { first } = await one(sql<Array<{ first: string }>>`select to_char((${start}::timestamptz at time zone 'UTC')::date + 1, 'YYYY-MM-DD') as first`)
  const { days } = await one(sql<Array<{ days: number }>>`select (now() at time zone 'UTC')::date - ${first}::date as days`)
  const history = await localSeries(sql, 'UTC', first, days, () => [['12:00', '40']])
  await recordSeries(app, budget.id, history)
  await recordSeries(app, plain.id, history)
  const crossings = async () => await sql`select budget_id, period_start, spent::text as spent from budget_alert_history where budget_id = ${budget.id}`
  t.same([...await crossings()], [], 'past windows ended at 40 of 100: no crossing')

  const window = await app.budgetTracker.getWindow(budget.id)
  await app.budgetTracker.recordUsage({ budgetId: budget.id, amount: '3', currency: 'USD', source: 'test' })
  t.ok(compareMoney(await linear(sql, '3', window.periodStart, window.periodEnd, new Date()), '50') >= 0, 'the linear rule projects 3 in half an hour past 50')
  t.same([...await crossings()], [], 'the forecast, 3 + 40 x 23.5/24, about 42: no crossing')

  await app.budgetTracker.recordUsage({ budgetId: budget.id, amount: '9', currency: 'USD', source: 'test' })
  const [crossing] = await crossings()
  t.equal(crossing?.period_start.getTime(), window.periodStart.getTime(), 'now 12 + about 39.2: the projected alert fired in this window')
  t.ok(compareMoney(crossing!.spent as string, '51') > 0 && compareMoney(crossing!.spent as string, '51.1666666667') <= 0, `at the forecast (${crossing!.spent as string})`)

  await app.budgetTracker.recordUsage({ budgetId: plain.id, amount: '3', currency: 'USD', source: 'test' })
  const profiles = await sql`select budget_id from budget_forecast_profiles`
  t.same(profiles.map((row) => row.budget_id), [budget.id], 'the budget without a projected alert has no forecast profile: its updates never made one')
})

t.test('backdated usage refreshes the cached profile: the forecast after it is a fresh computation, and projected alerts fire on it', async (t) => {
  const { app, sql, createBudget } = await buildGateway(t)
  // Windows of 14 days in UTC, the current one from the day before yesterday; 10 a day at noon for the 30 days before today.
  const { today } = await one(sql<Array<{ today: string }>>`select to_char(now() at time zone 'UTC', 'YYYY-MM-DD') as today`)
  const day = (offset: number) => new Date(Date.parse(today) + offset * DAY)
  const custom = { period: 'custom', timezone: 'UTC', startDate: day(-30).toISOString(), endDate: day(-16).toISOString(), recurring: true }
  // Stale, the forecast stays at most 130 + 80 + 10 (the rest of today); fresh, yesterday's weekday comes back at day +6 at (40 + 80) / 4: at least 230.
  const budget = await createBudget({ amount: '250', ...custom, alerts: [{ threshold: 90, basis: 'projected', actions: ['notify'] }] })
  await recordSeries(app, budget.id, await localSeries(sql, 'UTC', day(-30).toISOString().slice(0, 10), 30, () => [['12:00', '10']]))
  const window = await app.budgetTracker.getWindow(budget.id)
  t.equal(window.periodStart.getTime(), day(-2).getTime(), 'the window began the day before yesterday')

  const at = new Date()
  const cached = async () => await forecast(sql, budget.id, window.periodStart, window.periodEnd, (await app.budgetTracker.getBudgetStatus(budget.id)).currentAmount, at)
  const fresh = async () => {
    // The same forecast from a profile summed now, in a transaction rolled back: the cached row stays as it was.
    const rollback = new Error('rollback')
    let value = ''
    await sql.begin(async (tx) => {
      await tx`delete from budget_forecast_profiles where budget_id = ${budget.id}`
      const [row] = await tx<Array<{ v: string }>>`
        select budget_forecast(${budget.id}, ${window.periodStart}::timestamptz, ${window.periodEnd}::timestamptz, c.current_amount, ${at}::timestamptz)::text as v
        from budget_status_cache c where c.budget_id = ${budget.id} and c.period_start = ${window.periodStart}`
      value = row!.v
      throw rollback
    }).catch((error: unknown) => { if (error !== rollback) throw error })
    return value
  }
  const before = await cached()
  t.equal(before, await fresh(), 'before: the cached profile is the fresh one')
  t.equal((await sql`select count(*)::int as n from budget_forecast_profiles where budget_id = ${budget.id}`)[0]!.n, 1, 'a profile is cached')
  t.same([...await sql`select 1 from budget_alert_history where budget_id = ${budget.id}`], [], 'no crossing yet')

  // 80 more yesterday, recorded now.
  await app.budgetTracker.recordUsage({ budgetId: budget.id, amount: '80', currency: 'USD', source: 'test', occurredAt: new Date(day(-1).getTime() + DAY / 2) })
  const after = await cached()
  t.equal(after, await fresh(), 'after backdated usage: the forecast read equals a fresh computation')
  t.ok(compareMoney(after, '230') >= 0, `the fresh forecast counts yesterday's weekday again (${after})`)
  const crossings = await sql`select basis, spent::text as spent from budget_alert_history where budget_id = ${budget.id}`
  t.equal(crossings.length, 1, 'the projected alert fired on the backdated usage')
  t.ok(compareMoney(crossings[0]!.spent as string, '225') >= 0, `at the fresh forecast (${crossings[0]?.spent as string})`)
})

t.test('backdated records posted as a batch and one by one give the same projected crossings', async (t) => {
  const { app, sql, createBudget } = await buildGateway(t)
  const admin = { authorization: `Bearer ${ADMIN_TOKEN}` }
  const { today } = await one(sql<Array<{ today: string }>>`select to_char(now() at time zone 'UTC', 'YYYY-MM-DD') as today`)
  const day = (offset: number) => new Date(Date.parse(today) + offset * DAY)
  const custom = { amount: '500', period: 'custom', timezone: 'UTC', startDate: day(-30).toISOString(), endDate: day(-16).toISOString(), recurring: true }
  const single = await createBudget({ scopeId: 'single', ...custom })
  const batched = await createBudget({ scopeId: 'batched', ...custom })
  // History without a projected alert yet: no profile is summed while it is recorded.
  const history = await localSeries(sql, 'UTC', day(-30).toISOString().slice(0, 10), 30, () => [['12:00', '10']])
  for (const budget of [single, batched]) {
    await recordSeries(app, budget.id, history)
    const changed = await app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: admin, body: { alerts: [{ threshold: 50, basis: 'projected', actions: ['notify'] }] } })
    t.equal(changed.statusCode, 200)
  }
  // The change evaluated the new projected alert at once (budget_alerts_follow_definition): each budget's profile is summed now, under 50%.
  t.equal((await sql`select count(*)::int as n from budget_forecast_profiles`)[0]!.n, 2, 'a profile each, summed by the change')
  t.same([...await sql`select 1 from budget_alert_history`], [], 'no crossing yet')

  // Four records of 25 yesterday. Counted whole, yesterday's weekday comes back at day +6 at (40 + 100) / 4, and the
  // forecast reaches 255 at least; with only the first of them in the profile, at most 246.25. The threshold: 250.
  const yesterdayNoon = new Date(day(-1).getTime() + DAY / 2).toISOString()
  const records = [1, 2, 3, 4].map((n) => ({ amount: '25', currency: 'USD', source: 'test', occurredAt: yesterdayNoon, metadata: { requestId: `late-${n}` } }))
  for (const record of records) {
    const response = await app.inject({ method: 'POST', url: `${PREFIX}/${single.id}/usage`, headers: admin, body: record })
    t.equal(response.statusCode, 201)
  }
  // Keys of their own: a key names one record across budgets.
  const batch = await app.inject({ method: 'POST', url: `${PREFIX}/usage/batch`, headers: admin, body: { records: records.map((record, n) => ({ budgetId: batched.id, ...record, metadata: { requestId: `late-batch-${n + 1}` } })) } })
  t.equal(batch.statusCode, 200, batch.body.slice(0, 200))
  const crossings = async (id: string) => (await sql`select threshold::text as threshold, basis from budget_alert_history where budget_id = ${id}`).map((row) => `${row.threshold as string} ${row.basis as string}`)
  t.same(await crossings(single.id), ['50 projected'], 'one by one: the projected alert fired')
  t.same(await crossings(single.id), await crossings(batched.id), 'the batch crossed the same')
})

t.test('a profile summed while backdated usage is being stored, before it commits, is summed again once it has', async (t) => {
  const { app, sql, createBudget } = await buildGateway(t)
  const { today } = await one(sql<Array<{ today: string }>>`select to_char(now() at time zone 'UTC', 'YYYY-MM-DD') as today`)
  const day = (offset: number) => new Date(Date.parse(today) + offset * DAY)
  const budget = await createBudget({ amount: '1000', period: 'custom', timezone: 'UTC', startDate: day(-30).toISOString(), endDate: day(-16).toISOString(), recurring: true })
  await recordSeries(app, budget.id, await localSeries(sql, 'UTC', day(-30).toISOString().slice(0, 10), 30, () => [['12:00', '10']]))
  const window = { start: day(-2), end: day(12) }
  const at = new Date()
  const read = async (db: Sql) => (await db<Array<{ v: string }>>`
    select budget_forecast(${budget.id}, ${window.start}::timestamptz, ${window.end}::timestamptz, c.current_amount, ${at}::timestamptz)::text as v
    from budget_status_cache c where c.budget_id = ${budget.id} and c.period_start = ${window.start}`)[0]!.v
  await sql`delete from budget_forecast_profiles`

  // Session B stores 80 more yesterday and has not committed; session A sums (and keeps) the profile meanwhile.
  const b = await sql.reserve()
  t.teardown(() => { b.release() })
  await b`begin`
  await b`insert into budget_usage_records (budget_id, amount, currency, source, metadata, idempotency_key, occurred_at)
          values (${budget.id}, 80, 'USD', 'test', '{}'::jsonb, 'late', ${new Date(day(-1).getTime() + DAY / 2)})`
  const during = await read(sql)
  t.equal((await sql`select count(*)::int as n from budget_forecast_profiles`)[0]!.n, 1, 'A kept the profile it summed without B\'s usage')
  await b`commit`

  const after = await read(sql)
  const rollback = new Error('rollback')
  let fresh = ''
  await sql.begin(async (tx) => {
    await tx`delete from budget_forecast_profiles`
    fresh = await read(tx as unknown as Sql)
    throw rollback
  }).catch((error: unknown) => { if (error !== rollback) throw error })
  t.not(after, during, 'the forecast moved once B committed')
  t.equal(after, fresh, 'and is the fresh one: B\'s mark, invisible to the kept profile\'s snapshot, made it stale')
})

t.test('a forecast as of a past instant keeps the marks today\'s kept profile has not seen: today\'s projection counts them', async (t) => {
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
  // the projection moves with the clock (its linear part) between the two reads: compared to the cent
  const cents = (money: string) => Number(money).toFixed(2)
  t.equal(cents(afterPast.projectedTotal), cents(truth.projectedTotal), 'today\'s projection counts the backdated usage once it committed')
  t.not(cents(afterPast.projectedTotal), cents(during2.projectedTotal), 'which it did not before')
})

t.test('the burn rate is SQL\'s (budget_burn_rate, sql/functions/forecast.sql): the status\'s hand-computed values, the floor it shares with the linear rule', async (t) => {
  const { app, sql, createBudget } = await buildGateway(t)
  const burn = async (id: string, current: string, at: string, start = '2024-04-01T00:00:00Z', end = '2024-05-01T00:00:00Z') => normalizeMoney(
    (await sql<Array<{ v: string }>>`select budget_burn_rate(${id}, ${start}::timestamptz, ${end}::timestamptz, ${current}::numeric, ${at}::timestamptz)::text as v`)[0]!.v)
  const april = await createBudget({ amount: '1000', startDate: '2024-04-01' }) // April: a 30-day window
  t.equal(await burn(april.id, '250', '2024-04-11T00:00:00Z'), '25', '250 over 10 days')
  t.equal(await burn(april.id, '100', '2024-04-04T00:00:00Z'), '33.3333333333', '100 over 3 days, rounded half up at 10 places')
  t.equal(await burn(april.id, '0.0001', '2024-04-02T00:00:00Z'), '0.0001')
  t.equal(await burn(april.id, '300', '2024-06-01T00:00:00Z'), '10', 'an ended window: over the whole 30 days')
  t.equal(await burn(april.id, '0', '2024-03-01T00:00:00Z'), '0', 'before the budget starts')
  const late = await createBudget({ scopeId: 'late', amount: '1000', startDate: '2024-04-21', timezone: 'UTC', period: 'monthly' })
  t.equal(await burn(late.id, '100', '2024-04-26T00:00:00Z'), '20', 'a calendar window that began before the budget: over the 5 days since the budget began')
  for (const at of ['2024-04-01T00:00:00Z', '2024-04-01T00:00:00.001Z', '2024-04-01T00:00:01Z']) {
    t.equal(await burn(april.id, '2', at), '48', `${at}: 2 spent over the one-hour minimum is 48 a day`)
  }
  // The linear rule divides by the same floored time: 1 s in, 2 spent, 30 days - 1 s left: 2 + 2 x 2591999 / 3600.
  t.equal(await linear(sql, '2', '2024-04-01T00:00:00Z', '2024-05-01T00:00:00Z', '2024-04-01T00:00:01Z'), '1441.9994444444')

  // The status reads it: a budget that began 10 minutes ago has spent 2 over the one-hour floor.
  const fresh = await createBudget({ scopeId: 'fresh', amount: '1000', period: 'daily', startDate: new Date(Date.now() - 600_000).toISOString() })
  await app.budgetTracker.recordUsage({ budgetId: fresh.id, amount: '2', currency: 'USD', source: 'test' })
  t.equal((await app.budgetTracker.getBudgetStatus(fresh.id)).burnRate, '48')
})
