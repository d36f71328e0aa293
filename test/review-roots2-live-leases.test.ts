// Review (second) of migration 010 (row roots) on a database with live holds and leases: the rows are made by
// the version before (fd4a9ca: its sql/, functions and all), the newer migrate() runs while they are live, and
// the newer functions then settle, return, top up, sweep and carry them, as an older instance still serving
// would drive them (the same functions, the same arguments). Checked: the holds and leases end with nothing
// reserved, each window's spend is the sum of its allocations, and every row's root is its budget's.
import t from 'tap'
import { migrate } from '../lib/kernel/database/migrate.js'
import { misrootedRows } from './fixtures/budget-roots.js'
import { createTestSql } from './fixtures/database.js'
import { sqlOfVersion } from './fixtures/version-before.js'

type Sql = Awaited<ReturnType<typeof createTestSql>>['sql']

async function ledger (sql: Sql) {
  return await sql<Array<{ name: string, current: string, reserved: string, allocated: string }>>`
    select d.name, c.current_amount::text as current, c.reserved_amount::text as reserved,
           (select coalesce(sum(a.amount), 0)::text from budget_usage_allocations a
            where a.budget_id = c.budget_id and a.occurred_at >= c.period_start and a.occurred_at < c.period_end) as allocated
    from budget_status_cache c join budget_definitions d on d.id = c.budget_id order by d.name, c.period_start`
}

t.test('holds and leases live across the migration settle, return, top up and sweep on the newer functions', async (t) => {
  const { sql } = await createTestSql(t, { max: 1 })
  await migrate(sql, await sqlOfVersion('fd4a9ca'))
  t.equal((await sql`select max(version)::int as v from budget_schema_migrations`)[0]!.v, 9, 'the version before: migration 9')

  const [org] = await sql`insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date, enforcement)
                          values ('org', 'organization', 'acme', 100, 'USD', 'monthly', '2024-01-01', 'hard') returning id, root_id`
  const [team] = await sql`insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date, enforcement, parent_id)
                           values ('team', 'team', 'team-a', 50, 'USD', 'monthly', '2024-01-01', 'hard', ${org!.id}) returning id, root_id`
  t.equal(team!.root_id, org!.id)
  const budgets = [team!.id, org!.id]
  const windows = await sql<Array<{ budget_id: string, period_start: Date, period_end: Date }>>`
    insert into budget_status_cache (budget_id, period_start, period_end)
    select d.id, w.period_start, w.period_end from budget_definitions d cross join lateral budget_window(d, now()) w
    returning budget_id, period_start, period_end`
  const startOf = (id: string) => windows.find((w) => w.budget_id === id)!
  const starts = budgets.map((id) => startOf(id).period_start.toISOString())
  const ends = budgets.map((id) => startOf(id).period_end.toISOString())

  const hold = async (id: string, amount: string, ttl: string) => await sql`
    select call_index, fits from budget_hold_batch(array[${id}]::uuid[], array[${amount}]::numeric[], array[${`req-${id}`}]::text[], 'USD', ${ttl}::interval,
      array[1, 1]::integer[], ${budgets}::uuid[], ${starts}::timestamptz[], ${ends}::timestamptz[], array[true, true]::boolean[], array[0, 1]::integer[], false, false)`
  const h1 = '11111111-1111-4111-8111-111111111111'
  const h2 = '22222222-2222-4222-8222-222222222222'
  const lease = '33333333-3333-4333-8333-333333333333'
  t.ok((await hold(h1, '2', '1 hour')).every((row) => row.fits), 'hold 1 (live)')
  t.ok((await hold(h2, '3', '-1 second')).every((row) => row.fits), 'hold 2 (already expired: for the sweeper)')
  const take = async (wanted: string) => await sql`
    select granted::text as granted from budget_lease_take(${lease}, 'USD', '1 hour'::interval, ${wanted}::numeric, '0.01'::numeric,
      ${budgets}::uuid[], ${starts}::timestamptz[], ${ends}::timestamptz[], array[true, true]::boolean[], array[0, 1]::integer[])`
  t.equal(Number((await take('5'))[0]?.granted), 5, 'the lease takes 5')
  await sql`select budget_lease_return(${lease}, 1, false, 1)`
  t.same((await sql`select amount::text, returns_applied from budget_reservations where id = ${lease} order by budget_id`).map((r) => [r.amount, r.returns_applied]),
    [['4.0000000000', 1], ['4.0000000000', 1]], 'return 1 applied before the upgrade')

  // the upgrade, with all of that live
  t.ok((await migrate(sql)).versions.includes(10), 'migration 10 runs')
  t.same(await misrootedRows(sql), [], 'every row\'s root is its budget\'s after the migration')

  await sql`select budget_lease_return(${lease}, 1, false, 1)`
  t.same((await sql`select amount::text from budget_reservations where id = ${lease}`).map((r) => r.amount), ['4.0000000000', '4.0000000000'],
    'return 1 sent again after the upgrade is not applied twice')
  t.equal(Number((await take('2'))[0]?.granted), 2, 'a top-up of the lease taken before the upgrade')
  t.same((await sql`select amount::text from budget_reservations where id = ${lease}`).map((r) => r.amount), ['6.0000000000', '6.0000000000'],
    'the lease rows grew, none added')
  const settled = await sql`select usage_id, lease_found from budget_settle_leased(array[${lease}]::uuid[], array['leased-1'], array[1.25]::numeric[],
    array['gate'], array['a call'], array['{}'::jsonb], array[now()], '1 hour'::interval)`
  t.ok(settled[0]?.lease_found && settled[0].usage_id !== null, 'a leased call settles on the lease from before')
  await sql`select budget_lease_return(${lease}, 1, false, 2)`
  await sql`select * from budget_settle_batch(array[${h1}]::uuid[], array[1.5]::numeric[], array['gate'], array['call'], array['{}'::jsonb])`
  t.equal((await sql`select budget_sweep_expired(100) as n`)[0]!.n, 1, 'the sweeper settles the expired hold from before')
  await sql`select budget_lease_return(${lease}, 0, true, 3)`

  t.same(await sql`select id from budget_reservations`, [], 'no live hold left')
  const rows = await ledger(sql)
  for (const row of rows) {
    t.equal(Number(row.reserved), 0, `${row.name}: nothing reserved`)
    t.equal(row.current, row.allocated, `${row.name}: its spend is the sum of its allocations`)
  }
  t.same(rows.map((r) => r.current), ['5.7500000000', '5.7500000000'], 'org and team: 1.25 + 1.5 + 3 (the swept hold at its estimate)')
  t.same(await misrootedRows(sql), [], 'every row\'s root is its budget\'s at the end')
})

t.test('a window change after the migration carries a hold and a lease from before, with their roots', async (t) => {
  const { sql } = await createTestSql(t, { max: 1 })
  await migrate(sql, await sqlOfVersion('fd4a9ca'))
  const [org] = await sql`insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date, enforcement)
                          values ('org', 'organization', 'acme', 100, 'USD', 'monthly', '2024-01-01', 'hard') returning id`
  const [team] = await sql`insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date, enforcement, parent_id)
                           values ('team', 'team', 'team-a', 50, 'USD', 'monthly', '2024-01-01', 'hard', ${org!.id}) returning id`
  const budgets = [team!.id, org!.id]
  const windows = await sql<Array<{ budget_id: string, period_start: Date, period_end: Date }>>`
    insert into budget_status_cache (budget_id, period_start, period_end)
    select d.id, w.period_start, w.period_end from budget_definitions d cross join lateral budget_window(d, now()) w
    returning budget_id, period_start, period_end`
  const starts = budgets.map((id) => windows.find((w) => w.budget_id === id)!.period_start.toISOString())
  const ends = budgets.map((id) => windows.find((w) => w.budget_id === id)!.period_end.toISOString())
  const h1 = '11111111-1111-4111-8111-111111111111'
  const lease = '33333333-3333-4333-8333-333333333333'
  await sql`select * from budget_hold_batch(array[${h1}]::uuid[], array[2]::numeric[], array['r1'], 'USD', '1 hour'::interval,
    array[1, 1]::integer[], ${budgets}::uuid[], ${starts}::timestamptz[], ${ends}::timestamptz[], array[true, true]::boolean[], array[0, 1]::integer[], false, false)`
  await sql`select * from budget_lease_take(${lease}, 'USD', '1 hour'::interval, 4, 0.01, ${budgets}::uuid[], ${starts}::timestamptz[], ${ends}::timestamptz[],
    array[true, true]::boolean[], array[0, 1]::integer[])`
  await migrate(sql)

  // the team's window becomes weekly: its hold and its lease go to this week's window
  await sql`update budget_definitions set period = 'weekly' where id = ${team!.id}`
  const moved = await sql`select r.id, r.period_start, c.period_end from budget_reservations r join budget_status_cache c using (budget_id, period_start)
                          where r.budget_id = ${team!.id} order by r.id`
  t.equal(moved.length, 2, 'both rows carried to a window row of the new definition')
  t.same(await misrootedRows(sql), [], 'the carried rows and the new window row carry their budget\'s root')
  await sql`select * from budget_settle_batch(array[${h1}]::uuid[], array[1]::numeric[], array['gate'], array['call'], array['{}'::jsonb])`
  await sql`select budget_lease_return(${lease}, 0, true, 1)`
  t.same(await sql`select id from budget_reservations`, [])
  const rows = await ledger(sql)
  for (const row of rows) {
    t.equal(Number(row.reserved), 0, `${row.name} ${row.current}: nothing reserved`)
    t.equal(row.current, row.allocated, `${row.name}: its spend is the sum of its allocations`)
  }
  t.same(await misrootedRows(sql), [])
})
