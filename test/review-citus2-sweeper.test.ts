// Review of 14647b9 (the sweeper settles only reservations whose every row it locked, SKIP LOCKED, tree by
// tree): a reservation one of whose trees another transaction holds (a renewal or a return of a lease half
// way through its tree-by-tree locks; a stuck transaction), and what p_limit and the return value mean then.
import t from 'tap'
import { migrate } from '../lib/kernel/database/migrate.js'
import { createTestSql } from './fixtures/database.js'
import { findViolations } from './fixtures/invariants.js'

const LEASE = '11111111-1111-4111-8111-111111111111'

async function twoTrees (t: Parameters<typeof createTestSql>[0]) {
  const { sql } = await createTestSql(t, { max: 3 })
  await migrate(sql)
  const [user] = await sql`insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date, enforcement)
                           values ('user', 'user', 'ada', 100, 'USD', 'monthly', '2024-01-01', 'hard') returning id`
  const [org] = await sql`insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date, enforcement)
                          values ('org', 'organization', 'acme', 100, 'USD', 'monthly', '2024-01-01', 'hard') returning id`
  const [team] = await sql`insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date, enforcement, parent_id)
                           values ('team', 'team', 'platform', 100, 'USD', 'monthly', '2024-01-01', 'hard', ${org!.id}) returning id`
  const budgets = [user!.id as string, team!.id as string, org!.id as string]
  const windows = await sql<Array<{ id: string, start: Date, end: Date }>>`
    select d.id, w.period_start as start, w.period_end as end from budget_definitions d cross join lateral budget_window(d, now()) w`
  for (const w of windows) await sql`select refresh_budget_status_cache(${w.id}, ${w.start}, ${w.end})`
  const window = (id: string) => windows.find((w) => w.id === id)!
  const starts = budgets.map((b) => window(b).start.toISOString())
  const ends = budgets.map((b) => window(b).end.toISOString())
  const expiredLease = async (id: string) => await sql`
    select granted from budget_lease_take(${id}, 'USD', '-1 second'::interval, 8::numeric, 1::numeric, ${budgets}::uuid[],
      ${starts}::timestamptz[], ${ends}::timestamptz[], array[true, true, false]::boolean[], array[0, 1, 2]::integer[])`
  const expiredHold = async (id: string, on: string[] = budgets) => await sql`
    select bool_and(fits) as fits from budget_hold_batch(array[${id}]::uuid[], array[1]::numeric[], array[${`req-${id}`}]::text[], 'USD',
      '-1 second'::interval, ${on.map(() => '1')}::text[]::integer[], ${on}::uuid[],
      ${on.map((b) => window(b).start.toISOString())}::timestamptz[], ${on.map((b) => window(b).end.toISOString())}::timestamptz[],
      ${on.map(() => 'true')}::text[]::boolean[], ${on.map((_, i) => String(i))}::text[]::integer[], false, false)`
  const roots = async (id: string) => (await sql`select root_id from budget_reservations where id = ${id} group by root_id order by root_id`).map((r) => r.root_id as string)
  return { sql, budgets, expiredLease, expiredHold, roots }
}

t.test('a lease renewed while swept, its first tree locked by the renewal: not swept, not deadlocked, renewed', async (t) => {
  const { sql, expiredLease, roots } = await twoTrees(t)
  t.equal((await expiredLease(LEASE)).length, 3, 'an expired lease on the three budgets')
  const [first] = await roots(LEASE) as [string, string]
  const outcome = await sql.begin(async (tx) => {
    // the renewal on Citus: the first tree's statement has locked its rows, the second's has not run yet
    await tx`select 1 from budget_reservations where id = ${LEASE} and root_id = ${first} order by id, budget_id for update`
    const started = Date.now()
    const swept = (await sql`select budget_sweep_expired(100) as n`)[0]!.n as number
    const waited = Date.now() - started
    // the renewal goes on: the rest of its locks, then the update
    await tx`set local lock_timeout = '3s'`
    const locked = (await tx`select budget_lock_reservations(array[${LEASE}]::uuid[]) as n`)[0]!.n as number
    await tx`update budget_reservations set expires_at = now() + interval '1 minute' where id = ${LEASE}`
    return { swept, waited, locked }
  })
  t.equal(outcome.swept, 0, 'the sweeper leaves the lease it could not lock whole')
  t.ok(outcome.waited < 1000, `and waits for nothing (${outcome.waited} ms)`)
  t.equal(outcome.locked, 3, 'the renewal then locks every row: the sweeper holds none of them any more')
  t.equal((await sql`select budget_sweep_expired(100) as n`)[0]!.n, 0, 'renewed: not expired')
  t.equal((await sql`select count(*)::int as n from budget_usage_records`)[0]!.n, 0, 'nothing counted')
  await sql`select budget_lease_return(${LEASE}, 0, true, 1)`
  t.same(await findViolations(sql), [], 'invariants')
})

t.test('a lease returned while swept, the sweeper first in its second tree: one of them ends it, once', async (t) => {
  const { sql, expiredLease, roots } = await twoTrees(t)
  await expiredLease(LEASE)
  const [, second] = await roots(LEASE) as [string, string]
  // the sweeper holds the second tree's row (as a sweeper that met it there first); the return waits on it
  const returned = sql.begin(async (tx) => {
    await tx`select 1 from budget_reservations where id = ${LEASE} and root_id = ${second} for update`
    await new Promise((resolve) => setTimeout(resolve, 300))
    return (await tx`select budget_sweep_expired(100) as n`)[0]!.n as number
  })
  await new Promise((resolve) => setTimeout(resolve, 100))
  const ret = sql`select budget_lease_return(${LEASE}, 0, true, 1)`.then(() => null, (error: { code: string }) => error.code)
  const [swept, returnError] = await Promise.all([returned, ret])
  t.equal(returnError, null, 'the return does not fail (no deadlock, no lock timeout)')
  const records = (await sql`select count(*)::int as n from budget_usage_records`)[0]!.n as number
  t.equal(records, swept, `swept ${swept}: counted as spent exactly when swept`)
  t.same(await findViolations(sql), [], 'invariants')
})
