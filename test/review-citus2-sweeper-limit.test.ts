// Review of 14647b9 (p_limit): (the sweeper settles only reservations whose every row it locked, SKIP LOCKED, tree by
// tree): a reservation one of whose trees another transaction holds (a renewal or a return of a lease half
// way through its tree-by-tree locks; a stuck transaction), and what p_limit and the return value mean then.
import t from 'tap'
import { migrate } from '../lib/kernel/database/migrate.js'
import { createTestSql } from './fixtures/database.js'
import { findViolations } from './fixtures/invariants.js'

const HOLD = '22222222-2222-4222-8222-222222222222'

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

t.test('a reservation a stuck transaction holds in one tree: the others are still swept, under the gateway\'s limit of 100', async (t) => {
  const { sql, budgets, expiredHold, roots } = await twoTrees(t)
  const [, team, org] = budgets as [string, string, string]
  // 50 calls on the two-tree line, each with two rows in the organization's tree: the gateway's limit of 100 rows
  const stuckIds = Array.from({ length: 50 }, (_, i) => `0aaaaaaa-0000-4000-8000-${String(i).padStart(12, '0')}`)
  for (const id of stuckIds) t.ok((await expiredHold(id))[0]!.fits)
  const stuckId = stuckIds[0]!
  // another expired hold in the organization's tree alone, after the stuck one in id order
  t.ok((await expiredHold(HOLD, [team, org]))[0]!.fits)
  const [first, second] = await roots(stuckId) as [string, string]
  const stuckTree = (await sql`select root_id from budget_reservations where id = ${HOLD} limit 1`)[0]!.root_id as string
  const lockedTree = stuckTree === first ? second : first
  const reserve = await sql.reserve()
  t.teardown(() => { reserve.release() })
  await reserve`begin`
  // a stuck transaction holds their rows in the user's tree (the other tree)
  await reserve`select 1 from budget_reservations where id = any (${stuckIds}::uuid[]) and root_id = ${lockedTree} for update`
  // the gateway's sweep (lib/gate/integration.ts: limit 100), run every interval
  let swept = 0
  for (let i = 0; i < 3; i++) swept += (await sql`select budget_sweep_expired(100) as n`)[0]!.n as number
  const left = (await sql`select count(*)::int as n from budget_reservations where id = ${HOLD}`)[0]!.n as number
  await reserve`rollback`
  t.equal(swept, 1, `the free expired hold swept while the stuck one is held (swept ${swept}, its rows left: ${left})`)
  let rest = 0
  for (let n = -1; n !== 0;) { n = (await sql`select budget_sweep_expired(100) as n`)[0]!.n as number; rest += n }
  t.equal(swept + rest, 51, 'all swept once free, each once')
  t.same(await findViolations(sql), [], 'invariants')
})
