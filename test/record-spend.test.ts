// Recording spend has one SQL owner, budget_record_spend (sql/functions/spend.sql): the usage trigger, the
// batch collector and both settlements record through it. These tests hold the four paths to the same
// allocations, window rows, updated_at rule and alert crossings for the same spend, and check that no other
// function writes allocations or spend.
import t from 'tap'
import { randomUUID } from 'node:crypto'
import type { Sql } from 'postgres'
import { PREFIX, budgetRequest, buildApp, type TestApp } from './fixtures/app.js'

const EUR_PER_USD = '0.9'
const CALLS = ['20', '40', '30'] // USD, in this order: running sums 20, 60, 90 (USD) and 18, 54, 81 (EUR)
const OLD = '2000-01-01T00:00:00Z' // an updated_at no write of today can leave

interface Pair { name: string, parent: string, child: string }
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Role = Record<string, any> & { budget: string }

async function createBudget (admin: TestApp['admin'], overrides: Record<string, unknown>): Promise<string> {
  const response = await admin({ method: 'POST', url: PREFIX, body: budgetRequest(overrides) })
  if (response.statusCode !== 201) throw new Error(response.body)
  return (response.json() as { id: string }).id
}

/**
 * A line whose budgets have different currencies: a call's team budget in USD and its user budget in EUR,
 * each 100 with alerts at 50 and 80 %. Usage is recorded on the user's (the most specific) and also counts
 * toward the team's. (`child` is the EUR user budget, `parent` the USD team budget.)
 */
async function createPair (admin: TestApp['admin'], name: string): Promise<Pair> {
  const alerts = [{ threshold: 50, actions: ['notify'] }, { threshold: 80, actions: ['notify'] }]
  const parent = await createBudget(admin, { name: `${name} usd`, scopeType: 'team', scopeId: `team-${name}`, amount: '100', alerts })
  const child = await createBudget(admin, { name: `${name} eur`, scopeType: 'user', scopeId: `user-${name}`, amount: '100', currency: 'EUR', alerts })
  return { name, parent, child }
}

/** Where the pair's money went, by role: what must be the same whichever path recorded it. */
async function ledger (sql: Sql, pair: Pair) {
  const role = (id: string) => id === pair.parent ? 'usd' : 'eur'
  const allocations = (await sql`
    select a.budget_id::text as budget, a.amount::text, a.exchange_rate::text as rate, a.occurred_at, u.amount::text as usage_amount, u.currency
    from budget_usage_allocations a join budget_usage_records u on u.id = a.usage_id
    where a.budget_id in (${pair.parent}, ${pair.child}) order by a.budget_id, a.amount`).map((row) => ({ ...row, budget: role(row.budget as string) }) as Role)
  const records = (await sql`
    select u.budget_id::text as budget, u.amount::text, u.currency, u.occurred_at, u.also_counts_toward::text[] as also
    from budget_usage_records u where u.budget_id in (${pair.parent}, ${pair.child}) order by u.amount`)
    .map((row) => ({ ...row, budget: role(row.budget as string), also: (row.also as string[]).map(role) }) as Role)
  const cache = (await sql`
    select c.budget_id::text as budget, c.period_start, c.period_end, c.current_amount::text, c.usage_count::int, c.last_usage_at
    from budget_status_cache c where c.budget_id in (${pair.parent}, ${pair.child}) order by c.budget_id, c.period_start`)
    .map((row) => ({ ...row, budget: role(row.budget as string) }) as Role)
  const crossings = (await sql`
    select h.budget_id::text as budget, h.threshold::text, h.basis, h.spent::text, h.limit_amount::text
    from budget_alert_history h where h.budget_id in (${pair.parent}, ${pair.child}) order by h.budget_id, h.threshold`)
    .map((row) => ({ ...row, budget: role(row.budget as string) }) as Role)
  const sort = (rows: Role[]) => rows.sort((a, b) => a.budget.localeCompare(b.budget))
  return { allocations: sort(allocations), records, cache: sort(cache), crossings: sort(crossings) }
}

async function windowOf (sql: Sql, budget: string, at: Date): Promise<{ start: Date, end: Date }> {
  const [row] = await sql`select w.period_start as start, w.period_end as end from budget_definitions b cross join lateral budget_window(b, ${at}) w where b.id = ${budget}`
  return row as { start: Date, end: Date }
}

/** Window rows for the pair holding `held` (in each budget's currency), last written long ago. */
async function openWindows (sql: Sql, pair: Pair, at: Date, held: { parent: string, child: string }) {
  for (const [budget, amount] of [[pair.parent, held.parent], [pair.child, held.child]] as const) {
    const w = await windowOf(sql, budget, at)
    await sql`insert into budget_status_cache (budget_id, period_start, period_end, reserved_amount, updated_at)
              values (${budget}, ${w.start}, ${w.end}, ${amount}, ${OLD})`
  }
}

function rateOf (pair: Pair, budget: string): string {
  return budget === pair.parent ? '1' : EUR_PER_USD
}

t.test('the trigger, the batch and both settlements record the same spend the same way, converted into each budget\'s currency', async (t) => {
  const { admin, sql } = await buildApp(t)
  t.equal((await admin({ method: 'PUT', url: `${PREFIX}/exchange-rates/USD/EUR`, body: { rate: EUR_PER_USD, effectiveFrom: '2024-01-01T00:00:00Z' } })).statusCode, 201)
  const [{ at }] = await sql`select date_trunc('second', now()) - interval '5 seconds' as at` as unknown as [{ at: Date }]
  const paths = {
    trigger: await createPair(admin, 'trigger'),
    batch: await createPair(admin, 'batch'),
    settled: await createPair(admin, 'settled'),
    leased: await createPair(admin, 'leased')
  }
  const before = new Date(Date.now() - 1000)

  // 1. the per-row trigger, one record after another
  for (const amount of CALLS) {
    await sql`insert into budget_usage_records (budget_id, amount, currency, occurred_at, also_counts_toward) values (${paths.trigger.child}, ${amount}, 'USD', ${at}, ${[paths.trigger.parent]}::uuid[])`
  }

  // 2. the batch collector, the three records in one batch
  await sql`select * from budget_record_usage_batch(${sql.json(CALLS.map((amount, i) => ({
    ord: i, budget_id: paths.batch.child, amount, currency: 'USD', source: null, description: null, metadata: {},
    idempotency_key: null, request_fingerprint: null, occurred_at: at.toISOString(), also_counts_toward: [paths.batch.parent]
  })))}::jsonb)`

  // 3. a settlement of three held calls (reservation ids in the calls' order: calls of a window take their
  //    steps in id order), each holding 50 USD on both budgets at the hold's rate
  const settled = paths.settled
  await openWindows(sql, settled, at, { parent: '150', child: '135' })
  const ids = CALLS.map((_, i) => `00000000-0000-4000-8000-00000000000${i + 1}`)
  for (const [i, id] of ids.entries()) {
    for (const budget of [settled.child, settled.parent]) {
      const w = await windowOf(sql, budget, at)
      const rate = rateOf(settled, budget)
      await sql`insert into budget_reservations (id, budget_id, period_start, amount, scope_matched, scope_rank, currency, request_id, created_at, expires_at, call_amount, exchange_rate)
                values (${id}, ${budget}, ${w.start}, ${String(50 * Number(rate))}, true, ${budget === settled.child ? 0 : 1}, 'USD', ${`call-${i}`}, ${at}, now() + interval '1 hour', 50, ${rate})`
    }
  }
  const settledRows = await sql`select * from budget_settle_batch(${ids}::uuid[], ${CALLS}::numeric[], ${CALLS.map(() => 'test')}::text[],
    ${CALLS.map(() => null)}::text[], ${CALLS.map(() => '{}')}::text[]::jsonb[])`
  t.equal(settledRows.filter((row) => row.usage_id !== null).length, 3, 'every held call is recorded')

  // 4. a leased settlement: one lease of 100 USD on the line, its EUR row converted at the lease row's rate
  const leased = paths.leased
  await openWindows(sql, leased, at, { parent: '100', child: '90' })
  const lease = '00000000-0000-4000-8000-0000000000aa'
  for (const budget of [leased.child, leased.parent]) {
    const w = await windowOf(sql, budget, at)
    const rate = rateOf(leased, budget)
    await sql`insert into budget_reservations (id, budget_id, period_start, amount, scope_matched, scope_rank, currency, request_id, created_at, expires_at, lease, exchange_rate)
              values (${lease}, ${budget}, ${w.start}, ${String(100 * Number(rate))}, true, ${budget === leased.child ? 0 : 1}, 'USD', ${`lease:${lease}`}, ${at}, now() + interval '1 hour', true, ${rate})`
  }
  const leasedRows = await sql`select * from budget_settle_leased(${CALLS.map(() => lease)}::uuid[], ${CALLS.map((_, i) => `r${i}`)}::text[], ${CALLS}::numeric[],
    ${CALLS.map(() => 'test')}::text[], ${CALLS.map(() => null)}::text[], ${CALLS.map(() => '{}')}::text[]::jsonb[], ${CALLS.map(() => at.toISOString())}::text[]::timestamptz[], interval '1 minute')`
  t.same(leasedRows.map((row) => [row.request_id, row.usage_id !== null, row.lease_found]), [['r0', true, true], ['r1', true, true], ['r2', true, true]], 'every leased call is recorded')

  const expected = await ledger(sql, paths.trigger)
  t.same(expected.allocations.map((row) => [row.budget, row.amount, row.rate]), [
    ['eur', '18.0000000000', '0.9'], ['eur', '27.0000000000', '0.9'], ['eur', '36.0000000000', '0.9'],
    ['usd', '20.0000000000', '1'], ['usd', '30.0000000000', '1'], ['usd', '40.0000000000', '1']
  ], 'the trigger converts each allocation into its budget\'s currency at the rate in force')
  t.same(expected.cache.map((row) => [row.budget, row.current_amount, row.usage_count]), [['eur', '81.0000000000', 3], ['usd', '90.0000000000', 3]])
  t.same(expected.crossings.map((row) => [row.budget, row.threshold, row.spent]), [
    ['eur', '50', '54.0000000000'], ['eur', '80', '81.0000000000'], ['usd', '50', '60.0000000000'], ['usd', '80', '90.0000000000']
  ], 'each crossing is recorded at the spend of the record that reached it')
  for (const path of ['batch', 'settled', 'leased'] as const) {
    const found = await ledger(sql, paths[path])
    t.same(found, expected, `${path}: the same records, allocations, window rows and crossings as the trigger`)
  }

  // the updated_at rule: a row whose spend was written says now(); the release a settlement adds is no spend
  const written = await sql`select b.name, c.updated_at from budget_status_cache c join budget_definitions b on b.id = c.budget_id order by b.name`
  t.same(written.filter((row) => (row.updated_at as Date) < before).map((row) => row.name), [], 'every row that took spend was stamped by that write')

  // what each settlement adds: the release of what was held
  const reserved = await sql`select c.budget_id::text as budget, c.reserved_amount::text from budget_status_cache c
    where c.budget_id in (${settled.parent}, ${settled.child}, ${leased.parent}, ${leased.child}) order by c.budget_id`
  const byBudget = Object.fromEntries(reserved.map((row) => [row.budget, row.reserved_amount]))
  t.same([byBudget[settled.parent], byBudget[settled.child]], ['0.0000000000', '0.0000000000'], 'a settlement releases what its holds held')
  t.same([byBudget[leased.parent], byBudget[leased.child]], ['10.0000000000', '9.0000000000'], 'a lease gives up what its calls cost, in each budget\'s currency')
  const leaseRows = await sql`select budget_id::text as budget, amount::text from budget_reservations where id = ${lease}`
  t.same(Object.fromEntries(leaseRows.map((row) => [row.budget, row.amount])), { [leased.parent]: '10.0000000000', [leased.child]: '9.0000000000' },
    'the lease is drawn down by the converted cost')
})

t.test('updated_at: a settlement that charges nothing releases its hold and leaves updated_at; one that charges stamps it', async (t) => {
  const { admin, sql } = await buildApp(t)
  t.equal((await admin({ method: 'PUT', url: `${PREFIX}/exchange-rates/USD/EUR`, body: { rate: EUR_PER_USD, effectiveFrom: '2024-01-01T00:00:00Z' } })).statusCode, 201)
  const pair = await createPair(admin, 'zero')
  const [{ at }] = await sql`select now() - interval '5 seconds' as at` as unknown as [{ at: Date }]
  await openWindows(sql, pair, at, { parent: '50', child: '45' })
  const id = '00000000-0000-4000-8000-0000000000bb'
  for (const budget of [pair.child, pair.parent]) {
    const w = await windowOf(sql, budget, at)
    const rate = rateOf(pair, budget)
    await sql`insert into budget_reservations (id, budget_id, period_start, amount, scope_matched, scope_rank, currency, request_id, created_at, expires_at, call_amount, exchange_rate)
              values (${id}, ${budget}, ${w.start}, ${String(50 * Number(rate))}, true, ${budget === pair.child ? 0 : 1}, 'USD', 'call-zero', ${at}, now() + interval '1 hour', 50, ${rate})`
  }
  const [row] = await sql`select * from budget_settle_batch(${[id]}::uuid[], ${['0']}::numeric[], ${['test']}::text[], ${[null]}::text[], ${['{}']}::text[]::jsonb[])`
  t.equal(row!.usage_id, null, 'nothing recorded')
  const cache = await sql`select reserved_amount::text, current_amount::text, usage_count::int, updated_at from budget_status_cache where budget_id in (${pair.parent}, ${pair.child})`
  t.same(cache.map((c) => [c.reserved_amount, c.current_amount, c.usage_count, (c.updated_at as Date).toISOString()]),
    [['0.0000000000', '0.0000000000', 0, new Date(OLD).toISOString()], ['0.0000000000', '0.0000000000', 0, new Date(OLD).toISOString()]],
    'the hold is released, and updated_at (the last spend written) stays')
})

t.test('a window row made inside the statement counts the spend from elsewhere once, and the batch\'s records each once', async (t) => {
  const { admin, sql } = await buildApp(t)
  t.equal((await admin({ method: 'PUT', url: `${PREFIX}/exchange-rates/USD/EUR`, body: { rate: EUR_PER_USD, effectiveFrom: '2024-01-01T00:00:00Z' } })).statusCode, 201)
  const pair = await createPair(admin, 'made')
  const [{ at }] = await sql`select now() - interval '5 seconds' as at` as unknown as [{ at: Date }]
  await sql`insert into budget_usage_records (budget_id, amount, currency, occurred_at, also_counts_toward) values (${pair.child}, '10', 'USD', ${at}, ${[pair.parent]}::uuid[])`
  await sql`delete from budget_status_cache` // the window's spend from elsewhere is in the allocations only
  await sql`select * from budget_record_usage_batch(${sql.json(['5', '7', '11'].map((amount, i) => ({
    ord: i, budget_id: pair.child, amount, currency: 'USD', source: null, description: null, metadata: {},
    idempotency_key: null, request_fingerprint: null, occurred_at: at.toISOString(), also_counts_toward: [pair.parent]
  })))}::jsonb)`
  const rows = await sql`select c.budget_id::text as budget, c.current_amount::text, c.usage_count::int, s.current_amount::text as summed, s.usage_count::int as calls
    from budget_status_cache c cross join lateral calculate_budget_status(c.budget_id, c.period_start, c.period_end) s order by (c.budget_id = ${pair.parent})`
  t.same(rows.map((row) => [row.current_amount, row.usage_count, row.summed, row.calls]), [
    ['29.7000000000', 4, '29.7000000000', 4],
    ['33.0000000000', 4, '33.0000000000', 4]
  ], 'each row equals its allocations: the earlier record counted once, each of the batch\'s once')
})

t.test('the batch decides a threshold crossing by budget_alert_reached, the one rule', async (t) => {
  const { admin, sql } = await buildApp(t)
  const budget = await createBudget(admin, { name: 'edge', scopeId: 'team-edge', amount: '100', alerts: [{ threshold: 50, actions: ['notify'] }] })
  const record = (amount: string, i: number) => ({
    ord: i, budget_id: budget, amount, currency: 'USD', source: null, description: null, metadata: {},
    idempotency_key: null, request_fingerprint: null, occurred_at: new Date().toISOString(), also_counts_toward: []
  })
  const crossings = async () => (await sql`select threshold::text, spent::text from budget_alert_history where budget_id = ${budget} and resolved_at is null`)
    .map((row) => [row.threshold, row.spent])

  await sql`select * from budget_record_usage_batch(${sql.json([record('30', 0), record('19.9999999999', 1)])}::jsonb)`
  t.same(await crossings(), [], 'just below the threshold: no crossing')

  // The rule changed in its one place (here: reached at half the threshold, in a transaction rolled back):
  // the batch finds the record that reaches it by the same rule, so on running sums 20, 30, 60 the crossing
  // is recorded at 30. A comparison of its own in the batch (x 100 >= threshold x amount) would write no
  // step at 30, and the crossing would be recorded at the batch's last record, 60.
  const other = await createBudget(admin, { name: 'half', scopeId: 'team-half', amount: '100', alerts: [{ threshold: 50, actions: ['notify'] }] })
  await sql.begin(async (tx) => {
    await tx`create or replace function budget_alert_reached(p_measured numeric, p_threshold numeric, p_amount numeric) returns boolean
             language sql immutable parallel safe as $$ select p_measured * 200 >= p_threshold * p_amount $$`
    const at = (amount: string, i: number) => ({ ...record(amount, i), budget_id: other })
    await tx`select * from budget_record_usage_batch(${tx.json([at('20', 0), at('10', 1), at('30', 2)])}::jsonb)`
    t.same((await tx`select spent::text from budget_alert_history where budget_id = ${other}`).map((row) => row.spent), ['30.0000000000'],
      'the batch steps at the record the rule says reaches the threshold')
    throw new Error('roll back')
  }).catch((error: unknown) => { if ((error as Error).message !== 'roll back') throw error })

  await sql`select * from budget_record_usage_batch(${sql.json([record('0.0000000001', 0)])}::jsonb)`
  t.same(await crossings(), [['50', '50.0000000000']], 'exactly at the threshold: crossed, at the spend that reached it')
})

t.test('only budget_record_spend writes allocations and adds spend to a window row', async (t) => {
  const { sql } = await buildApp(t)
  const bodies = await sql<Array<{ name: string, body: string }>>`
    select p.proname as name, p.prosrc as body from pg_proc p where p.pronamespace = 'public'::regnamespace order by 1`
  const insertsAllocations = bodies.filter((f) => /\binsert\s+into\s+budget_usage_allocations\b/i.test(f.body)).map((f) => f.name)
  t.same(insertsAllocations, ['budget_record_spend'], 'one function inserts allocations')
  const writesSpend = bodies.filter((f) => /(?:\bset\s+|,\s*)(?:\w+\.)?(?:current_amount|usage_count)\s*=/i.test(f.body)).map((f) => f.name)
  // refresh_budget_status_cache(_in_tree) puts a row right by its drift from the allocations (status-cache.sql): it
  // records no spend, it re-reads what budget_record_spend recorded.
  t.same(writesSpend, ['budget_record_spend', 'refresh_budget_status_cache_in_tree'], 'one function adds spend; the refresh only repairs drift')
  t.ok(bodies.some((f) => f.name === 'budget_record_spend' && /budget_alert_reached/.test(f.body)), 'the crossing rule is read from budget_alert_reached')
  t.notOk(bodies.some((f) => /\*\s*100\s*>=/.test(f.body) && f.name !== 'budget_alert_reached'), 'and compared nowhere else inline')
})

t.test('a threshold reached before the call: written once when its crossing is active, at the first record when it is not', async (t) => {
  // budget_record_spend writes a window row once for several records unless one at a time would record a
  // crossing at an earlier record. A threshold the window has reached already is reached again at the first
  // record: nothing is recorded there while its crossing is active, and it is recorded there when it is not
  // (here, resolved by hand). Each path, the batch and a settlement, against one at a time (the trigger).
  const { admin, sql } = await buildApp(t)
  const alerts = [{ threshold: 50, actions: ['notify'] }]
  const budgetOf = async (name: string) => await createBudget(admin, { name, scopeId: `team-${name}`, amount: '100', alerts })
  const [{ at }] = await sql`select now() - interval '5 seconds' as at` as unknown as [{ at: Date }]
  const paths = { trigger: await budgetOf('trigger'), batch: await budgetOf('batch'), settled: await budgetOf('settled') }
  const record = (budget: string, amount: string) => sql`insert into budget_usage_records (budget_id, amount, currency, occurred_at) values (${budget}, ${amount}, 'USD', ${at})`
  for (const budget of Object.values(paths)) await record(budget, '60')
  const crossings = async (budget: string) => (await sql`select spent::text, resolved_at is null as active from budget_alert_history where budget_id = ${budget} order by spent`)
    .map((row) => [row.spent, row.active])
  const twice = async () => {
    await record(paths.trigger, '5')
    await record(paths.trigger, '7')
    await sql`select * from budget_record_usage_batch(${sql.json(['5', '7'].map((amount, i) => ({
      ord: i, budget_id: paths.batch, amount, currency: 'USD', source: null, description: null, metadata: {},
      idempotency_key: null, request_fingerprint: null, occurred_at: at.toISOString(), also_counts_toward: []
    })))}::jsonb)`
    const w = await windowOf(sql, paths.settled, at)
    await sql`update budget_status_cache set reserved_amount = reserved_amount + 12 where budget_id = ${paths.settled} and period_start = ${w.start}`
    const ids = [randomUUID(), randomUUID()].sort()
    for (const [i, id] of ids.entries()) {
      await sql`insert into budget_reservations (id, budget_id, period_start, amount, scope_matched, scope_rank, currency, request_id, created_at, expires_at, call_amount, exchange_rate)
                values (${id}, ${paths.settled}, ${w.start}, ${i === 0 ? '5' : '7'}, true, 0, 'USD', ${`call-${id}`}, ${at}, now() + interval '1 hour', 1, 1)`
    }
    await sql`select * from budget_settle_batch(${ids}::uuid[], ${['5', '7']}::numeric[], ${['test', 'test']}::text[], ${[null, null]}::text[], ${['{}', '{}']}::text[]::jsonb[])`
  }

  await twice() // the crossing at 60 is active: nothing recorded again
  const first = await crossings(paths.trigger)
  t.same(first, [['60.0000000000', true]], 'control: the crossing at 60 only')
  t.same(await crossings(paths.batch), first, 'batch: the same')
  t.same(await crossings(paths.settled), first, 'settlement: the same')

  await sql`update budget_alert_history set resolved_at = now() where resolved_at is null`
  await twice() // reached and not active: recorded at the first record, 72 + 5
  const second = await crossings(paths.trigger)
  t.same(second, [['60.0000000000', false], ['77.0000000000', true]], 'control: recorded again at the first record')
  t.same(await crossings(paths.batch), second, 'batch: the same, at the first record and not at the last')
  t.same(await crossings(paths.settled), second, 'settlement: the same')
  const rows = await sql`select current_amount::text, usage_count::int, reserved_amount::text from budget_status_cache where budget_id in (${paths.batch}, ${paths.settled}, ${paths.trigger})`
  t.same(rows.map((row) => [row.current_amount, row.usage_count, row.reserved_amount]), Array(3).fill(['84.0000000000', 5, '0.0000000000']), 'the rows agree')
})
