// Adversarial review R-spend of c516a6e: budget_record_spend (sql/functions/spend.sql) as the one owner of
// recording spend. Each subtest holds the batch collector to the usage trigger recording the same records one
// at a time (the control), or checks the invariants after writers race on the same window rows. Its finding:
// two recordings took forecast profile rows in opposite orders and deadlocked (40P01, a collector request
// answered 500); a profile row is now written only under its key, taken without waiting
// (budget_forecast_profile_key, sql/functions/forecast.sql), and the three subtests below pass.
import t from 'tap'
import fc from 'fast-check'
import type { Sql } from 'postgres'
import { PREFIX, budgetRequest, buildApp, type TestApp } from './fixtures/app.js'
import { findViolations } from './fixtures/invariants.js'

async function createBudget (admin: TestApp['admin'], overrides: Record<string, unknown>): Promise<string> {
  const response = await admin({ method: 'POST', url: PREFIX, body: budgetRequest(overrides) })
  if (response.statusCode !== 201) throw new Error(response.body)
  return (response.json() as { id: string }).id
}

interface Rec { amount: string, month: number, day: number, also: boolean }

function batchJson (main: string, other: string, records: Rec[]) {
  return records.map((r, i) => ({
    ord: i + 1, budget_id: main, amount: r.amount, currency: 'USD', source: null, description: null, metadata: {},
    idempotency_key: null, request_fingerprint: null, occurred_at: instant(r), also_counts_toward: r.also ? [other] : []
  }))
}

function instant (r: Rec): string {
  return new Date(Date.UTC(2025, r.month, r.day, 12)).toISOString()
}

/** What must be the same whichever path recorded the records, with budget ids replaced by roles. */
async function ledger (sql: Sql, roles: Record<string, string>) {
  const ids = Object.keys(roles)
  const cache = (await sql`
    select c.budget_id::text as b, c.period_start, c.current_amount::text as cur, c.usage_count::int as n, c.last_usage_at as last
    from budget_status_cache c where c.budget_id in ${sql(ids)} order by c.period_start`).map((r) => ({ ...r, b: roles[r.b as string] }))
  const crossings = (await sql`
    select h.budget_id::text as b, h.period_start, h.threshold::text as th, h.basis, h.spent::text as spent, h.resolved_at is null as active
    from budget_alert_history h where h.budget_id in ${sql(ids)} order by h.period_start, h.threshold, h.spent`).map((r) => ({ ...r, b: roles[r.b as string] }))
  const allocations = (await sql`
    select a.budget_id::text as b, a.amount::text as amount, a.occurred_at from budget_usage_allocations a
    where a.budget_id in ${sql(ids)} order by a.occurred_at, a.amount`).map((r) => ({ ...r, b: roles[r.b as string] }))
  const order = (x: Record<string, unknown>) => JSON.stringify(x)
  return {
    cache: cache.map(order).sort(), crossings: crossings.map(order).sort(), allocations: allocations.map(order).sort()
  }
}

t.test('a batch and the same records one at a time leave the same allocations, window rows and crossings (fast-check)', async (t) => {
  const { admin, sql } = await buildApp(t)
  t.equal((await admin({ method: 'PUT', url: `${PREFIX}/exchange-rates/USD/JPY`, body: { rate: '151.1234567891', effectiveFrom: '2024-01-01T00:00:00Z' } })).statusCode, 201)
  let run = 0
  const amount = fc.oneof(
    fc.integer({ min: 1, max: 60 }).map(String),
    fc.integer({ min: 1, max: 999 }).map((n) => `0.${String(n).padStart(10, '0')}`),
    fc.integer({ min: 1, max: 4000 }).map((n) => (n / 100).toFixed(2))
  )
  const rec = fc.record({ amount, month: fc.integer({ min: 0, max: 2 }), day: fc.integer({ min: 1, max: 27 }), also: fc.boolean() })
  const alert = fc.uniqueArray(fc.constantFrom(10, 25, 50, 80, 100, 150), { minLength: 1, maxLength: 4 })
  await fc.assert(fc.asyncProperty(
    fc.array(rec, { maxLength: 4 }), fc.array(rec, { minLength: 1, maxLength: 8 }), alert, alert, fc.boolean(),
    async (before, records, mainAlerts, otherAlerts, alertsLater) => {
      run++
      const make = async (path: string) => {
        const alertsOf = (list: number[]) => list.map((threshold) => ({ threshold, actions: ['notify'] }))
        const main = await createBudget(admin, { name: `m${run}${path}`, scopeType: 'team', scopeId: `m${run}${path}`, amount: '100', enforcement: 'soft', alerts: alertsLater ? [] : alertsOf(mainAlerts) })
        const other = await createBudget(admin, { name: `o${run}${path}`, scopeType: 'team', scopeId: `o${run}${path}`, amount: '15000', currency: 'JPY', enforcement: 'soft', alerts: alertsLater ? [] : alertsOf(otherAlerts) })
        // spend recorded before (one at a time on both paths); alerts perhaps defined only after it
        for (const r of before) {
          await sql`insert into budget_usage_records (budget_id, amount, currency, occurred_at, also_counts_toward)
                    values (${main}, ${r.amount}, 'USD', ${instant(r)}, ${r.also ? [other] : []}::uuid[])`
        }
        if (alertsLater) {
          await sql`update budget_definitions set alerts = ${sql.json(alertsOf(mainAlerts))}::jsonb where id = ${main}`
          await sql`update budget_definitions set alerts = ${sql.json(alertsOf(otherAlerts))}::jsonb where id = ${other}`
        }
        return { main, other }
      }
      const one = await make('t')
      const many = await make('b')
      for (const r of records) {
        await sql`insert into budget_usage_records (budget_id, amount, currency, occurred_at, also_counts_toward)
                  values (${one.main}, ${r.amount}, 'USD', ${instant(r)}, ${r.also ? [one.other] : []}::uuid[])`
      }
      const faults = await sql`select ord, fault from budget_record_usage_batch(${sql.json(batchJson(many.main, many.other, records))}::jsonb) where fault is not null`
      if (faults.length > 0) throw new Error(`batch refused ${JSON.stringify(faults)}`)
      const control = await ledger(sql, { [one.main]: 'main', [one.other]: 'other' })
      const batch = await ledger(sql, { [many.main]: 'main', [many.other]: 'other' })
      t.same(batch, control, `batch vs one at a time: ${JSON.stringify({ before, records, mainAlerts, otherAlerts, alertsLater })}`)
      const violations = await findViolations(sql)
      t.same(violations, [], 'invariants')
      if (JSON.stringify(batch) !== JSON.stringify(control) || violations.length > 0) throw new Error('differs')
    }), { numRuns: Number(process.env.RSPEND_RUNS ?? 60), seed: 4242, endOnFailure: true })
})

t.test('batches, single records and hold-then-settle racing on the same window rows: no error, every record counted once', async (t) => {
  const { admin, sql } = await buildApp(t)
  const alerts = [{ threshold: 10, actions: ['notify'] }, { threshold: 50, actions: ['notify'] }, { threshold: 80, actions: ['notify'] }]
  const budgets: string[] = []
  for (const name of ['a', 'b', 'c']) {
    budgets.push(await createBudget(admin, { name, scopeType: 'team', scopeId: `team-${name}`, amount: '1000', enforcement: 'soft', alerts }))
  }
  // the windows of now, for the holds
  const windows = await sql<Array<{ id: string, start: Date, end: Date }>>`
    select b.id::text as id, w.period_start as start, w.period_end as end from budget_definitions b cross join lateral budget_window(b, now()) w
    where b.id in ${sql(budgets)} order by b.id`
  for (const w of windows) await sql`insert into budget_status_cache (budget_id, period_start, period_end) values (${w.id}, ${w.start}, ${w.end})`

  const errors: string[] = []
  let expectedAllocations = 0
  let rng = 12345
  const rand = (n: number) => { rng = (rng * 1103515245 + 12345) % 2147483648; return Math.floor((rng / 2147483648) * n) }
  const pick = () => {
    const main = budgets[rand(3)]!
    const also = budgets.filter((b) => b !== main && rand(2) === 0)
    return { main, also }
  }
  const at = (iteration: number) => new Date(Date.UTC(2024, iteration, 1 + rand(27), 12)).toISOString()
  const ITERATIONS = 24

  const batchWorker = async () => {
    for (let i = 0; i < ITERATIONS; i++) {
      const records = Array.from({ length: 3 + rand(10) }, (_, n) => {
        const { main, also } = pick()
        return { ord: n + 1, budget_id: main, amount: String(1 + rand(90)), currency: 'USD', source: null, description: null, metadata: {}, idempotency_key: null,
          request_fingerprint: null, occurred_at: rand(3) === 0 ? new Date().toISOString() : at(i), also_counts_toward: also }
      })
      try {
        const faults = await sql`select fault from budget_record_usage_batch(${sql.json(records)}::jsonb) where fault is not null`
        if (faults.length > 0) errors.push(`batch faults ${JSON.stringify(faults)}`)
        expectedAllocations += records.reduce((n, r) => n + 1 + r.also_counts_toward.length, 0)
      } catch (error) { errors.push(`batch: ${(error as { code?: string }).code ?? ''} ${(error as Error).message}`) }
    }
  }
  const singleWorker = async () => {
    for (let i = 0; i < ITERATIONS; i++) {
      for (let k = 0; k < 3; k++) {
        const { main, also } = pick()
        try {
          await sql`insert into budget_usage_records (budget_id, amount, currency, occurred_at, also_counts_toward)
                    values (${main}, ${String(1 + rand(90))}, 'USD', ${rand(3) === 0 ? new Date().toISOString() : at(i)}, ${also}::text[]::uuid[])`
          expectedAllocations += 1 + also.length
        } catch (error) { errors.push(`single: ${(error as { code?: string }).code ?? ''} ${(error as Error).message}`) }
      }
    }
  }
  let held = 0
  const holdWorker = async (w: number) => {
    for (let i = 0; i < ITERATIONS; i++) {
      const id = `00000000-0000-4000-8000-${String(w * 1000 + i).padStart(12, '0')}`
      const order = rand(2) === 0 ? windows : [...windows].reverse()
      try {
        const rows = await sql`select is_reserved from budget_hold_batch(${[id]}::text[]::uuid[], ${['5']}::text[]::numeric[], ${[`req-${id}`]}::text[], 'USD', '1 minute'::interval,
          ${order.map(() => '1')}::text[]::int[], ${order.map((x) => x.id)}::text[]::uuid[], ${order.map((x) => x.start.toISOString())}::text[]::timestamptz[],
          ${order.map((x) => x.end.toISOString())}::text[]::timestamptz[], ${order.map((x) => String(x.id === order[0]!.id))}::text[]::boolean[], ${order.map((_, n) => String(n))}::text[]::int[], false, false)`
        if (!rows.every((r) => r.is_reserved as boolean)) { errors.push(`hold ${id} not held`); continue }
        const actual = ['0', '3', '5', '40'][rand(4)]!
        const settled = await sql`select usage_id from budget_settle_batch(${[id]}::text[]::uuid[], ${[actual]}::text[]::numeric[], ${['test']}::text[], ${[null]}::text[], ${['{}']}::text[]::jsonb[])`
        if (actual !== '0' && settled[0]?.usage_id == null) errors.push(`settlement ${id} recorded nothing`)
        if (actual !== '0') { held += 1; expectedAllocations += 3 }
      } catch (error) { errors.push(`hold/settle: ${(error as { code?: string }).code ?? ''} ${(error as Error).message}`) }
    }
  }
  await Promise.all([batchWorker(), batchWorker(), singleWorker(), singleWorker(), holdWorker(1), holdWorker(2)])
  t.same(errors, [], 'no writer failed (no deadlock, no lock timeout)')
  const [{ n }] = await sql`select count(*)::int as n from budget_usage_allocations where budget_id in ${sql(budgets)}` as unknown as [{ n: number }]
  t.equal(n, expectedAllocations, `every stored record allocated once (${held} settlements)`)
  t.same(await findViolations(sql), [], 'the invariants hold')
  const crossings = await sql`select budget_id, period_start, threshold, count(*)::int as n from budget_alert_history group by 1, 2, 3 having count(*) > 1`
  t.same(crossings, [], 'each crossing recorded once per window')
})

t.test('two batches on different windows of the same two budgets with projected alerts do not deadlock on their forecast profiles', async (t) => {
  // budget_record_spend walks the windows with a projected alert not crossed yet FIRST, then writes the
  // other windows' steps; both take the budget's forecast profile row (budget_forecast_profiles: the walk
  // deletes it after a backdated allocation, the alert trigger's forecast upserts it). So a batch whose walked
  // window is the later budget's takes the profiles in the order (Y, X), while a batch on past windows of
  // both (both walked, in the lock order) takes them (X, Y). Their window rows are disjoint, so nothing
  // orders them: they deadlock. Session B below only holds profile X for a moment, so the two batches meet
  // in that interleaving every run (without it the same cycle is a matter of timing).
  const { admin, sql } = await buildApp(t)
  const made: string[] = []
  for (const name of ['p', 'q']) {
    made.push(await createBudget(admin, { name, scopeType: 'team', scopeId: `team-${name}`, amount: '100', enforcement: 'soft', period: 'annual', startDate: '2024-01-01' }))
  }
  made.sort()
  const [x, y] = made as [string, string]
  // X: a projected alert that is crossed (active) in the window of now; Y: one never reached
  await sql`update budget_definitions set alerts = ${sql.json([{ threshold: 10, actions: ['notify'], basis: 'projected' }])}::jsonb where id = ${x}`
  await sql`update budget_definitions set alerts = ${sql.json([{ threshold: 100000, actions: ['notify'], basis: 'projected' }])}::jsonb where id = ${y}`
  const [{ now, yesterday, lastYear }] = await sql`select now() - interval '1 second' as now, date_trunc('day', now()) - interval '6 hours' as yesterday,
    date_trunc('year', now()) - interval '100 days' as "lastYear"` as unknown as [{ now: Date, yesterday: Date, lastYear: Date }]
  await sql`insert into budget_usage_records (budget_id, amount, currency, occurred_at) values (${x}, 20, 'USD', ${now})`
  await sql`insert into budget_usage_records (budget_id, amount, currency, occurred_at) values (${y}, 1, 'USD', ${now})`
  const active = await sql`select budget_id::text as b, basis from budget_alert_history where resolved_at is null`
  t.same(active, [{ b: x, basis: 'projected' }], 'setup: X has its projected crossing in the window of now, Y has none')
  t.equal((await sql`select count(*)::int as n from budget_forecast_profiles where budget_id in (${x}, ${y})`)[0]!.n, 2, 'setup: both profiles kept')

  const rec = (ord: number, budget: string, at: Date) => ({ ord, budget_id: budget, amount: '1', currency: 'USD', source: null, description: null, metadata: {},
    idempotency_key: null, request_fingerprint: null, occurred_at: at.toISOString(), also_counts_toward: [] })
  const b = await sql.reserve()
  const t1 = await sql.reserve()
  const t2 = await sql.reserve()
  const errors: string[] = []
  try {
    await b`begin`
    await b`select 1 from budget_forecast_profiles where budget_id = ${x} for update`
    // T2: last year's windows of X and Y (both walked: no projected crossing there), backdated records
    const second = t2`select ord, fault from budget_record_usage_batch(${t2.json([rec(1, x, lastYear), rec(2, y, lastYear)])}::jsonb)`
      .catch((error: { code?: string, message: string }) => { errors.push(`batch on last year's windows: ${error.code ?? ''} ${error.message}`); t.comment(JSON.stringify(error)) })
    await new Promise((resolve) => setTimeout(resolve, 300))
    // T1: this year's windows, records of yesterday (backdated): Y walked, X not (its crossing is active)
    const first = t1`select ord, fault from budget_record_usage_batch(${t1.json([rec(1, x, yesterday), rec(2, y, yesterday)])}::jsonb)`
      .catch((error: { code?: string, message: string }) => { errors.push(`batch on this year's windows: ${error.code ?? ''} ${error.message}`); t.comment(JSON.stringify(error)) })
    await new Promise((resolve) => setTimeout(resolve, 300))
    await b`commit`
    await Promise.all([first, second])
  } finally {
    b.release(); t1.release(); t2.release()
  }
  t.same(errors, [], 'both batches are stored (no 40P01 deadlock)')
  t.same(await findViolations(sql), [], 'the invariants hold')
})

t.test('the same two batches, started together with no session between them, repeatedly: no deadlock', async (t) => {
  const { admin, sql } = await buildApp(t)
  const errors: string[] = []
  const ROUNDS = Number(process.env.RSPEND_ROUNDS ?? 25)
  const [{ now, yesterday, lastYear }] = await sql`select now() - interval '1 second' as now, date_trunc('day', now()) - interval '6 hours' as yesterday,
    date_trunc('year', now()) - interval '100 days' as "lastYear"` as unknown as [{ now: Date, yesterday: Date, lastYear: Date }]
  const rec = (ord: number, budget: string, at: Date) => ({ ord, budget_id: budget, amount: '1', currency: 'USD', source: null, description: null, metadata: {},
    idempotency_key: null, request_fingerprint: null, occurred_at: at.toISOString(), also_counts_toward: [] })
  for (let round = 0; round < ROUNDS; round++) {
    const made: string[] = []
    for (const name of ['p', 'q']) {
      made.push(await createBudget(admin, { name: `${name}${round}`, scopeType: 'team', scopeId: `team-${name}${round}`, amount: '100', enforcement: 'soft', period: 'annual', startDate: '2024-01-01' }))
    }
    made.sort()
    const [x, y] = made as [string, string]
    await sql`update budget_definitions set alerts = ${sql.json([{ threshold: 10, actions: ['notify'], basis: 'projected' }])}::jsonb where id = ${x}`
    await sql`update budget_definitions set alerts = ${sql.json([{ threshold: 100000, actions: ['notify'], basis: 'projected' }])}::jsonb where id = ${y}`
    await sql`insert into budget_usage_records (budget_id, amount, currency, occurred_at) values (${x}, 20, 'USD', ${now})`
    await sql`insert into budget_usage_records (budget_id, amount, currency, occurred_at) values (${y}, 1, 'USD', ${now})`
    const batches = [[rec(1, x, lastYear), rec(2, y, lastYear)], [rec(1, x, yesterday), rec(2, y, yesterday)]]
    await Promise.all(batches.map(async (records) => {
      try {
        await sql`select ord, fault from budget_record_usage_batch(${sql.json(records)}::jsonb)`
      } catch (error) { errors.push(`round ${round}: ${(error as { code?: string }).code ?? ''} ${(error as Error).message}`) }
    }))
  }
  t.same(errors, [], `no batch failed in ${ROUNDS} rounds`)
  t.same(await findViolations(sql), [], 'the invariants hold')
})

t.test('through POST /usage/batch: no collector request meets a deadlock (there is no retry there)', async (t) => {
  const { admin, sql } = await buildApp(t)
  const statuses: string[] = []
  const ROUNDS = Number(process.env.RSPEND_ROUNDS ?? 25)
  const [{ now, yesterday, lastYear }] = await sql`select now() - interval '1 second' as now, date_trunc('day', now()) - interval '6 hours' as yesterday,
    date_trunc('year', now()) - interval '100 days' as "lastYear"` as unknown as [{ now: Date, yesterday: Date, lastYear: Date }]
  const rec = (budgetId: string, at: Date) => ({ budgetId, amount: '1', currency: 'USD', occurredAt: at.toISOString() })
  for (let round = 0; round < ROUNDS; round++) {
    const made: string[] = []
    for (const name of ['p', 'q']) {
      made.push(await createBudget(admin, { name: `${name}${round}`, scopeType: 'team', scopeId: `team-${name}${round}`, amount: '100', enforcement: 'soft', period: 'annual', startDate: '2024-01-01' }))
    }
    made.sort()
    const [x, y] = made as [string, string]
    await sql`update budget_definitions set alerts = ${sql.json([{ threshold: 10, actions: ['notify'], basis: 'projected' }])}::jsonb where id = ${x}`
    await sql`update budget_definitions set alerts = ${sql.json([{ threshold: 100000, actions: ['notify'], basis: 'projected' }])}::jsonb where id = ${y}`
    await sql`insert into budget_usage_records (budget_id, amount, currency, occurred_at) values (${x}, 20, 'USD', ${now})`
    await sql`insert into budget_usage_records (budget_id, amount, currency, occurred_at) values (${y}, 1, 'USD', ${now})`
    const batches = [[rec(x, lastYear), rec(y, lastYear)], [rec(x, yesterday), rec(y, yesterday)]]
    await Promise.all(batches.map(async (records) => {
      const response = await admin({ method: 'POST', url: `${PREFIX}/usage/batch`, body: { records } })
      if (response.statusCode >= 300) statuses.push(`round ${round}: ${response.statusCode} ${response.body.slice(0, 200)}`)
    }))
  }
  t.same(statuses, [], `every batch answered 2xx in ${ROUNDS} rounds`)
  t.same(await findViolations(sql), [], 'the invariants hold')
})
