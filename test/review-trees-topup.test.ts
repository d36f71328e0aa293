// Review of 6a19965: a lease topped up by a second take whose line gained a budget (a row of a new tree), then
// a return retried under a number already applied to the older rows. A new row would start at returns_applied 0,
// with a trees list the older rows lack: a lease keeps the line of its first take, and a top-up on another one
// takes nothing (budget_lease_take, sql/functions/leases.sql).
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { twoTreeLine } from './fixtures/two-trees.js'
import { findViolations } from './fixtures/invariants.js'

async function setUp (t: Parameters<typeof twoTreeLine>[0]) {
  const line = await twoTreeLine(t)
  const { sql, budgets } = line
  const [user, team, org] = budgets as [string, string, string]
  const windows = await sql<Array<{ id: string, start: Date, end: Date }>>`
    select d.id, w.period_start as start, w.period_end as end from budget_definitions d cross join lateral budget_window(d, now()) w`
  const win = (id: string) => windows.find((w) => w.id === id)!
  const matched = (on: string[]) => on.map((b) => String(b !== org))
  const hold = async (id: string, amount: string, on: string[], roots: string[]) => (await sql`
    select coalesce(bool_and(is_reserved), false) as fits from budget_hold_batch(array[${id}]::uuid[], array[${amount}]::numeric[], array[${`req-${id}`}]::text[], 'USD',
      '1 hour'::interval, ${on.map(() => '1')}::text[]::integer[], ${on}::uuid[], ${on.map((b) => win(b).start.toISOString())}::text[]::timestamptz[],
      ${on.map((b) => win(b).end.toISOString())}::text[]::timestamptz[], ${matched(on)}::text[]::boolean[], ${on.map((_, i) => String(i))}::text[]::integer[],
      false, false, ${roots}::uuid[])`)[0]!.fits as boolean
  const settle = async (id: string, actual: string, roots: string[]) => await sql`
    select reservation_id from budget_settle_batch(array[${id}]::uuid[], array[${actual}]::numeric[], array['gate'], array['call'], array['{}'::jsonb], null, ${roots}::uuid[])`
  const takeLease = async (id: string, wanted: string, on: string[], roots: string[]) => (await sql`
    select max(granted)::text as granted from budget_lease_take(${id}, 'USD', '1 hour'::interval, ${wanted}::numeric, 0.0001::numeric, ${on}::uuid[],
      ${on.map((b) => win(b).start.toISOString())}::text[]::timestamptz[], ${on.map((b) => win(b).end.toISOString())}::text[]::timestamptz[],
      ${matched(on)}::text[]::boolean[], ${on.map((_, i) => String(i))}::text[]::integer[], ${roots}::uuid[])`)[0]?.granted ?? null
  const settleLeased = async (lease: string, request: string, actual: string, roots: string[]) => await sql`
    select usage_id, lease_found from budget_settle_leased(array[${lease}]::uuid[], array[${request}], array[${actual}]::numeric[], array['gate'], array['call'],
      array['{}'::jsonb], array[now()], '1 hour'::interval, null, ${roots}::uuid[])`
  const returnLease = async (lease: string, amount: string, final: boolean, n: number, roots: string[]) =>
    await sql`select budget_lease_return(${lease}, ${amount}::numeric, ${final}, ${n}::integer, ${roots}::uuid[])`
  const broken = async () => (await findViolations(sql)).filter((v) => !v.startsWith('reservation '))
  return { ...line, user, team, org, hold, settle, takeLease, settleLeased, returnLease, broken }
}

t.test('a top-up on a line with a budget the lease has no row for takes nothing; return number 1 retried moves nothing', async (t) => {
  const s = await setUp(t)
  const lease = randomUUID()
  t.equal(await s.takeLease(lease, '8', [s.team, s.org], [s.org]), '8', 'first take: team and org')
  await s.returnLease(lease, '8', false, 1, [s.org])
  t.equal(await s.takeLease(lease, '8', s.budgets, [s.user, s.org]), null, 'second take, the line now with the user too: refused (a lease keeps its first line)')
  // return 1 sent again (its first try committed, its reply lost): applied before, so nothing moves
  await s.returnLease(lease, '8', false, 1, [s.user, s.org])
  const rows = await s.sql`select budget_id, trim_scale(amount)::text as amount, returns_applied, trees::text[] as trees from budget_reservations where id = ${lease} order by budget_id`
  t.same(rows.map((r) => r.budget_id).sort(), [s.team, s.org].sort(), 'no row on the user budget')
  t.same(rows.map((r) => r.amount), ['0', '0'], 'each row gave its 8 back once')
  for (const r of rows) t.same(r.trees, [s.org], `row ${r.budget_id as string}: its trees are the lease's one tree`)
  t.ok(await s.hold(randomUUID(), '100', [s.user], [s.user]), 'the user budget\'s whole room is free: the lease holds none of it')
  await s.returnLease(lease, '0', true, 2, [s.org])
  t.same(await s.broken(), [], 'no hard budget over its limit')
})

t.test('a top-up on the lease\'s own line adds to its rows, whose trees stay the lease\'s', async (t) => {
  const s = await setUp(t)
  const lease = randomUUID()
  t.equal(await s.takeLease(lease, '8', s.budgets, [s.user, s.org]), '8', 'first take: the two trees')
  t.equal(await s.takeLease(lease, '8', s.budgets, [s.user, s.org]), '8', 'second take on the same line')
  const rows = await s.sql`select budget_id, trim_scale(amount)::text as amount, trees::text[] as trees from budget_reservations where id = ${lease} order by budget_id`
  const all = [s.user, s.org].sort()
  for (const r of rows) {
    t.same([...(r.trees as string[])].sort(), all, `row ${r.budget_id as string}: trees lists both trees`)
    t.equal(r.amount, '16', `row ${r.budget_id as string}: both slices`)
  }
  await s.returnLease(lease, '0', true, 1, [s.user, s.org])
  t.same(await s.broken(), [], 'invariants')
})
