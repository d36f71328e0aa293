// Adversarial review of branch spendowner: recording spend has one SQL owner, budget_record_spend
// (sql/functions/spend.sql). Each subtest reproduces one defect found in it (both since fixed; the comments
// below describe the code as the review found it) and fails while the defect is there; each also runs the path that gets it right (the usage trigger, one record at a time) as its control,
// so the expectation is the code's own and not a guess.
import t from 'tap'
import type { Sql } from 'postgres'
import { PREFIX, budgetRequest, buildApp, type TestApp } from './fixtures/app.js'
import { findViolations } from './fixtures/invariants.js'

async function createBudget (admin: TestApp['admin'], overrides: Record<string, unknown>): Promise<string> {
  const response = await admin({ method: 'POST', url: PREFIX, body: budgetRequest(overrides) })
  if (response.statusCode !== 201) throw new Error(response.body)
  return (response.json() as { id: string }).id
}

interface Batched { ord: number, budget: string, amount: string, occurredAt: string }

async function recordBatch (sql: Sql, records: Batched[]): Promise<Array<{ ord: number, fault: string | null }>> {
  return await sql<Array<{ ord: number, fault: string | null }>>`select ord, fault from budget_record_usage_batch(${sql.json(records.map((r) => ({
    ord: r.ord, budget_id: r.budget, amount: r.amount, currency: 'USD', source: null, description: null, metadata: {},
    idempotency_key: null, request_fingerprint: null, occurred_at: r.occurredAt, also_counts_toward: []
  })))}::jsonb) order by ord`
}

t.test('a projected crossing is measured at the record that reached it, not with the spend of the records after it', async (t) => {
  // A projected alert's forecast reads the budget's spend per weekday over the whole days before today
  // (budget_forecast_profile). budget_record_spend inserts every allocation of the call first (step 2), then
  // measures each record's forecast (step 5): a later record dated yesterday is already in the profile when
  // an earlier record is measured. One record at a time, the first record's forecast cannot see it.
  //
  // Each budget: one window [now - 40 days, now + 30 days) (custom, so today and yesterday share it), 1 USD
  // a day of history for 26 days, a projected alert at 30 % of 1000. Then two calls, in this order: 200 today,
  // 100 dated yesterday noon. The forecast at the first call (226 spent in the window) is about 253 without the
  // 100 in the profile (no crossing) and about 353 with it; after the second (326 spent) about 453. So one at a
  // time the crossing is recorded at the second call, measured at the forecast of 326 spent.
  const { admin, sql } = await buildApp(t)
  const [{ start, end, today, yesterday }] = await sql`
    select date_trunc('day', now()) - interval '40 days' as start, date_trunc('day', now()) + interval '30 days' as end,
           now() - interval '1 second' as today, date_trunc('day', now()) - interval '12 hours' as yesterday` as unknown as
    [{ start: Date, end: Date, today: Date, yesterday: Date }]
  const alerts = [{ threshold: 30, actions: ['notify'], basis: 'projected' }]
  const budgetOf = async (name: string) => await createBudget(admin, {
    name, scopeType: 'team', scopeId: `team-${name}`, amount: '1000', period: 'custom', recurring: false,
    startDate: start.toISOString(), endDate: end.toISOString(), enforcement: 'soft', alerts
  })
  const paths = { trigger: await budgetOf('trigger'), batch: await budgetOf('batch'), settled: await budgetOf('settled') }
  for (const budget of Object.values(paths)) {
    await sql`insert into budget_usage_records (budget_id, amount, currency, occurred_at)
              select ${budget}, 1, 'USD', date_trunc('day', now()) - make_interval(days => d) + interval '12 hours' from generate_series(3, 28) d`
  }

  // 1. the control: the usage trigger, one record at a time, each in its own transaction
  await sql`insert into budget_usage_records (budget_id, amount, currency, occurred_at) values (${paths.trigger}, 200, 'USD', ${today})`
  await sql`insert into budget_usage_records (budget_id, amount, currency, occurred_at) values (${paths.trigger}, 100, 'USD', ${yesterday})`

  // 2. the batch collector, the two records in one batch, in the same order
  t.same(await recordBatch(sql, [
    { ord: 1, budget: paths.batch, amount: '200', occurredAt: today.toISOString() },
    { ord: 2, budget: paths.batch, amount: '100', occurredAt: yesterday.toISOString() }
  ]), [{ ord: 1, fault: null }, { ord: 2, fault: null }], 'the batch stores both')

  // 3. a settlement of two held calls; calls of a window count in reservation id order: today's first
  const settled = paths.settled
  await sql`insert into budget_status_cache (budget_id, period_start, period_end, reserved_amount) values (${settled}, ${start}, ${end}, 300)
            on conflict (budget_id, period_start, root_id) do update set reserved_amount = 300`
  const calls = [
    { id: '00000000-0000-4000-8000-000000000001', amount: '200', at: today },
    { id: '00000000-0000-4000-8000-000000000002', amount: '100', at: yesterday }
  ]
  for (const call of calls) {
    await sql`insert into budget_reservations (id, budget_id, period_start, amount, scope_matched, scope_rank, currency, request_id, created_at, expires_at, call_amount, exchange_rate)
              values (${call.id}, ${settled}, ${start}, ${call.amount}, true, 0, 'USD', ${`call-${call.id}`}, ${call.at}, now() + interval '1 hour', ${call.amount}, 1)`
  }
  const rows = await sql`select * from budget_settle_batch(${calls.map((c) => c.id)}::uuid[], ${calls.map((c) => c.amount)}::numeric[],
    ${calls.map(() => 'test')}::text[], ${calls.map(() => null)}::text[], ${calls.map(() => '{}')}::text[]::jsonb[])`
  t.equal(rows.filter((row) => row.usage_id !== null).length, 2, 'the settlement records both calls')
  t.same(await findViolations(sql), [], 'the invariants hold: the money itself is right on every path')

  // What each path recorded, against the forecast of the spend at the record that reaches the threshold (the
  // second record's: the window's whole spend, 26 of history and the two calls' 300), read now: the forecast
  // moves with the clock by well under 0.01 between the statements of this test.
  const crossings = async (budget: string) => await sql<Array<{ spent: string, current: string, expected: string, close: boolean }>>`
    select h.spent::text as spent, c.current_amount::text as current, f.expected::text as expected,
           abs(h.spent - f.expected) < 0.01 as close
    from budget_alert_history h
    join budget_status_cache c on c.budget_id = h.budget_id and c.period_start = h.period_start
    cross join lateral (select round(budget_forecast(h.budget_id, c.period_start, c.period_end, c.current_amount, now()), 10) as expected) f
    where h.budget_id = ${budget} and h.basis = 'projected'`
  const control = await crossings(paths.trigger)
  t.equal(control.length, 1, 'control: one crossing')
  t.same(control.map((row) => [row.current, row.close]), [['326.0000000000', true]],
    `control: one at a time the crossing is measured at the second record (forecast of the window's 326 spent, ${control[0]?.expected}; recorded ${control[0]?.spent})`)
  for (const path of ['settled', 'batch'] as const) {
    const found = await crossings(paths[path])
    t.same(found.map((row) => [row.current, row.close]), [['326.0000000000', true]],
      `${path}: the crossing is measured as one at a time would (expected about ${found[0]?.expected}, recorded ${found[0]?.spent})`)
  }
})

t.test('a window row made by a batch does not take last_usage_at from a record the batch refused', async (t) => {
  // budget_record_spend reads a window row it makes from calculate_budget_status after inserting the call's
  // allocations (step 3), so its last_usage_at includes every record of the call; a record refused in step 4
  // (it would take the window past 10^18) has its allocations deleted, but the last_usage_at read with them
  // stays. One at a time, the refused record fails its statement and leaves nothing.
  const { admin, sql } = await buildApp(t)
  const budgetOf = async (name: string) => await createBudget(admin, {
    name, scopeType: 'team', scopeId: `team-${name}`, amount: '900000000000000000', enforcement: 'soft', period: 'monthly', startDate: '2024-01-01'
  })
  const paths = { trigger: await budgetOf('trigger'), batch: await budgetOf('batch') }
  // a past window with no row yet: the first record makes it
  const first = '2025-03-10T00:00:00.000Z'
  const second = '2025-03-20T00:00:00.000Z' // later, and refused: 6e17 + 6e17 is past 10^18
  const big = '600000000000000000'

  // the control: one record at a time; the second fails with 22003 and leaves nothing
  await sql`insert into budget_usage_records (budget_id, amount, currency, occurred_at) values (${paths.trigger}, ${big}, 'USD', ${first})`
  await t.rejects(sql`insert into budget_usage_records (budget_id, amount, currency, occurred_at) values (${paths.trigger}, ${big}, 'USD', ${second})`,
    { code: '22003' }, 'control: the second record is refused')

  t.same(await recordBatch(sql, [
    { ord: 1, budget: paths.batch, amount: big, occurredAt: first },
    { ord: 2, budget: paths.batch, amount: big, occurredAt: second }
  ]), [{ ord: 1, fault: null }, { ord: 2, fault: '22003' }], 'the batch refuses the second record, as one at a time')

  const rowOf = async (budget: string) => {
    const [row] = await sql`select c.current_amount::text as current, c.usage_count::int as calls, c.last_usage_at,
                                   (select max(a.occurred_at) from budget_usage_allocations a
                                    where a.budget_id = c.budget_id and a.occurred_at >= c.period_start and a.occurred_at < c.period_end) as last_allocated
                            from budget_status_cache c where c.budget_id = ${budget}`
    return { current: row!.current as string, calls: row!.calls as number, lastUsageAt: (row!.last_usage_at as Date).toISOString(),
             lastAllocated: (row!.last_allocated as Date).toISOString() }
  }
  const control = await rowOf(paths.trigger)
  t.same(control, { current: `${big}.0000000000`, calls: 1, lastUsageAt: first, lastAllocated: first }, 'control: the window row names the stored record')
  t.same(await rowOf(paths.batch), control, 'batch: the same window row as one at a time; last_usage_at is the stored record\'s, not the refused one\'s')
  t.same(await findViolations(sql), [], 'the invariants (which do not read last_usage_at) hold')
})
