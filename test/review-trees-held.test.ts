// Review of 6a19965 on plain PostgreSQL: what held. Reservations of the version before (trees null) settled,
// returned and renewed by the new code with a partial tree list; returns out of order, retried, final after
// partial; the sweeper on two-tree reservations with one tree's rows held by a stuck transaction.
import t from 'tap'
import { randomUUID } from 'node:crypto'
import postgres from 'postgres'
import { twoTreeLine } from './fixtures/two-trees.js'
import { findViolations } from './fixtures/invariants.js'

async function setUp (t: Parameters<typeof twoTreeLine>[0]) {
  const line = await twoTreeLine(t)
  const { sql, budgets } = line
  const [user, , org] = budgets as [string, string, string]
  const windows = await sql<Array<{ id: string, start: Date, end: Date }>>`
    select d.id, w.period_start as start, w.period_end as end from budget_definitions d cross join lateral budget_window(d, now()) w`
  const win = (id: string) => windows.find((w) => w.id === id)!
  const matched = (on: string[]) => on.map((b) => String(b !== org))
  const on = budgets
  const hold = async (id: string, amount: string) => (await sql`
    select coalesce(bool_and(is_reserved), false) as fits from budget_hold_batch(array[${id}]::uuid[], array[${amount}]::numeric[], array[${`req-${id}`}]::text[], 'USD',
      '1 hour'::interval, ${on.map(() => '1')}::text[]::integer[], ${on}::uuid[], ${on.map((b) => win(b).start.toISOString())}::text[]::timestamptz[],
      ${on.map((b) => win(b).end.toISOString())}::text[]::timestamptz[], ${matched(on)}::text[]::boolean[], ${on.map((_, i) => String(i))}::text[]::integer[],
      false, false, ${[user, org]}::uuid[])`)[0]!.fits as boolean
  const settle = async (id: string, actual: string, roots: string[]) => await sql`
    select reservation_id from budget_settle_batch(array[${id}]::uuid[], array[${actual}]::numeric[], array['gate'], array['call'], array['{}'::jsonb], null, ${roots}::uuid[])`
  const takeLease = async (id: string, wanted: string) => (await sql`
    select max(granted)::text as granted from budget_lease_take(${id}, 'USD', '1 hour'::interval, ${wanted}::numeric, 0.0001::numeric, ${on}::uuid[],
      ${on.map((b) => win(b).start.toISOString())}::text[]::timestamptz[], ${on.map((b) => win(b).end.toISOString())}::text[]::timestamptz[],
      ${matched(on)}::text[]::boolean[], ${on.map((_, i) => String(i))}::text[]::integer[], ${[user, org]}::uuid[])`)[0]?.granted ?? null
  const settleLeased = async (lease: string, request: string, actual: string, roots: string[]) => await sql`
    select usage_id, lease_found from budget_settle_leased(array[${lease}]::uuid[], array[${request}], array[${actual}]::numeric[], array['gate'], array['call'],
      array['{}'::jsonb], array[now()], '1 hour'::interval, null, ${roots}::uuid[])`
  const returnLease = async (lease: string, amount: string, final: boolean, n: number, roots: string[]) =>
    await sql`select budget_lease_return(${lease}, ${amount}::numeric, ${final}, ${n}::integer, ${roots}::uuid[])`
  const renew = async (lease: string, roots: string[]) => (await sql`select budget_lease_renew(${lease}, '1 hour'::interval, ${roots}::uuid[]) as ok`)[0]!.ok as boolean
  const spent = async () => (await sql`select d.name, trim_scale(c.current_amount)::text as c, trim_scale(c.reserved_amount)::text as r
    from budget_status_cache c join budget_definitions d on d.id = c.budget_id order by d.name`).map((x) => `${x.name as string}:${x.c as string}/${x.r as string}`)
  const broken = async () => await findViolations(sql)
  return { ...line, user, org, hold, settle, takeLease, settleLeased, returnLease, renew, spent, broken }
}

t.test('reservations of the version before (trees null), told one tree only', async (t) => {
  const s = await setUp(t)
  const id = randomUUID()
  const lease = randomUUID()
  t.ok(await s.hold(id, '3'), 'held')
  t.equal(await s.takeLease(lease, '8'), '8', 'leased')
  await s.sql`update budget_reservations set trees = null`
  t.ok(await s.renew(lease, [s.user]), 'renewed')
  t.equal((await s.sql`select count(*)::int as n from budget_reservations where id = ${lease} and expires_at > now() + interval '50 minutes'`)[0]!.n, 3, 'every row renewed')
  await s.settle(id, '2', [s.user])
  await s.settleLeased(lease, 'r1', '5', [s.org])
  await s.returnLease(lease, '1', false, 1, [s.user])
  await s.returnLease(lease, '0', true, 2, [s.org])
  t.same(await s.spent(), ['org:7/0', 'team:7/0', 'user:7/0'], 'both calls on every budget, nothing held')
  t.same(await s.broken(), [], 'invariants')
})

t.test('returns out of order, retried, final after partial', async (t) => {
  const s = await setUp(t)
  const lease = randomUUID()
  t.equal(await s.takeLease(lease, '8'), '8', 'leased')
  await s.returnLease(lease, '2', false, 2, [s.user, s.org])
  await s.returnLease(lease, '1', false, 1, [s.user]) // late: ignored
  await s.returnLease(lease, '2', false, 2, [s.org]) // retry: ignored
  t.same(await s.spent(), ['org:0/6', 'team:0/6', 'user:0/6'], 'return 2 applied once, 1 ignored')
  await s.settleLeased(lease, 'r1', '3', [s.user, s.org])
  await s.returnLease(lease, '1', false, 3, [s.user, s.org])
  await s.returnLease(lease, '0', true, 4, [s.user])
  await s.returnLease(lease, '0', true, 4, [s.user]) // final sent again
  t.same(await s.spent(), ['org:3/0', 'team:3/0', 'user:3/0'], 'the call counted, nothing held')
  t.same(await s.broken(), [], 'invariants')
})

t.test('the sweeper with a stuck transaction on one tree\'s rows of two-tree reservations', async (t) => {
  const s = await setUp(t)
  const ids = [randomUUID(), randomUUID(), randomUUID()]
  for (const id of ids) t.ok(await s.hold(id, '2'), 'held')
  const lease = randomUUID()
  t.equal(await s.takeLease(lease, '8'), '8', 'leased')
  await s.sql`update budget_reservations set expires_at = now() - interval '1 second'`
  const other = postgres(s.url, { max: 1, onnotice: () => {} })
  t.teardown(async () => { await other.end() })
  let release!: () => void
  const held = new Promise<void>((resolve) => { release = resolve })
  let locked!: () => void
  const isLocked = new Promise<void>((resolve) => { locked = resolve })
  const stuck = other.begin(async (tx) => {
    await tx`select 1 from budget_reservations where id = ${ids[0]!} and root_id = ${s.user} for update`
    locked()
    await held
  })
  await isLocked
  const n1 = (await s.sql`select budget_sweep_expired(100) as n`)[0]!.n as number
  t.equal(n1, 3, 'every reservation but the one held elsewhere')
  release()
  await stuck
  const n2 = (await s.sql`select budget_sweep_expired(100) as n`)[0]!.n as number
  t.equal(n2, 1, 'then that one')
  t.same(await s.spent(), ['org:14/0', 'team:14/0', 'user:14/0'], 'each at its estimate, once')
  t.same(await s.broken(), [], 'invariants')
})
