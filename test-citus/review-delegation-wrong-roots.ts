// On the Citus cluster (`npm run test:citus`): test/review-delegation-wrong-roots.test.ts's cases where the trees a
// caller names (p_roots) are not the trees of the rows, on a distributed database, each call delegated by its
// p_root. A user budget that is its own root and a team under an organization, hard budgets of 100.
import t, { type Test } from 'tap'
import { randomUUID } from 'node:crypto'
import { distributeOnCitus } from '../lib/kernel/database/citus.js'
import { migrate } from '../lib/kernel/database/migrate.js'
import { createTestSql } from '../test/fixtures/database.js'
import { findViolations } from '../test/fixtures/invariants.js'

const ORG = '90000000-0000-4000-8000-000000000000'
const TEAM = '10000000-0000-4000-8000-000000000000'
const USER = '50000000-0000-4000-8000-000000000000'
const LINE = [USER, TEAM, ORG]
const BOTH = [ORG, USER]

async function setUp (t: Test) {
  const { sql } = await createTestSql(t, { max: 2 })
  await migrate(sql)
  await distributeOnCitus(sql)
  await sql`insert into budget_definitions (id, root_id, name, scope_type, scope_id, amount, currency, period, start_date, enforcement)
            values (${ORG}, ${ORG}, 'org', 'organization', 'acme', 100, 'USD', 'monthly', '2024-01-01', 'hard')`
  await sql`insert into budget_definitions (id, root_id, name, scope_type, scope_id, amount, currency, period, start_date, enforcement, parent_id)
            values (${TEAM}, ${ORG}, 'team', 'team', 'platform', 100, 'USD', 'monthly', '2024-01-01', 'hard', ${ORG})`
  await sql`insert into budget_definitions (id, root_id, name, scope_type, scope_id, amount, currency, period, start_date, enforcement)
            values (${USER}, ${USER}, 'user', 'user', 'ada', 100, 'USD', 'monthly', '2024-01-01', 'hard')`
  const windows = await sql<Array<{ id: string, start: Date, end: Date }>>`select budget_id as id, period_start as start, period_end as end
    from budget_line(array['user', 'team', 'organization'], array['ada', 'platform', 'acme'], 'USD', 'gpt-4o-mini', '{}'::jsonb)`
  const win = (id: string) => windows.find((w) => w.id === id)!
  const matched = (on: string[]) => on.map((b) => String(b !== ORG))
  const rootsOf = (on: string[]) => [...new Set(on.map((b) => b === USER ? USER : ORG))].sort()
  const hold = async (id: string, amount: string, on: string[] = LINE) => (await sql`
    select coalesce(bool_and(is_reserved), false) as fits from budget_hold_batch(array[${id}]::uuid[], array[${amount}]::numeric[], array[${`req-${id}`}]::text[], 'USD',
      '1 hour'::interval, ${on.map(() => '1')}::text[]::integer[], ${on}::uuid[], ${on.map((b) => win(b).start.toISOString())}::text[]::timestamptz[],
      ${on.map((b) => win(b).end.toISOString())}::text[]::timestamptz[], ${matched(on)}::text[]::boolean[], ${on.map((_, i) => String(i))}::text[]::integer[],
      false, false, ${rootsOf(on)}::uuid[], ${rootsOf(on)[0]!}::uuid)`)[0]!.fits as boolean
  const settle = async (id: string, actual: string, roots: string[]) => await sql`
    select reservation_id, usage_id from budget_settle_batch(array[${id}]::uuid[], array[${actual}]::numeric[], array['gate'], array['call'],
      array['{}'::jsonb], null, ${roots}::uuid[], ${roots[0] ?? ORG}::uuid)`
  const takeLease = async (id: string, wanted: string, roots: string[]) => (await sql<Array<{ granted: string | null }>>`
    select max(granted)::text as granted from budget_lease_take(${id}, 'USD', '1 hour'::interval, ${wanted}::numeric, 0.0001::numeric, ${LINE}::uuid[],
      ${LINE.map((b) => win(b).start.toISOString())}::text[]::timestamptz[], ${LINE.map((b) => win(b).end.toISOString())}::text[]::timestamptz[],
      ${matched(LINE)}::text[]::boolean[], ${LINE.map((_, i) => String(i))}::text[]::integer[], ${roots}::uuid[], ${roots[0] ?? ORG}::uuid)`)[0]?.granted ?? null
  const settleLeased = async (lease: string, request: string, actual: string, roots: string[]) => await sql`
    select usage_id, lease_found from budget_settle_leased(array[${lease}]::uuid[], array[${request}], array[${actual}]::numeric[], array['gate'], array['call'],
      array['{}'::jsonb], array[now()], '1 hour'::interval, null, ${roots}::uuid[], ${roots[0] ?? ORG}::uuid)`
  const returnLease = async (lease: string, amount: string, final: boolean, number: number, roots: string[]) =>
    await sql`select budget_lease_return(${lease}, ${amount}::numeric, ${final}, ${number}::integer, ${roots}::uuid[], ${roots[0] ?? ORG}::uuid)`
  const spent = async () => Object.fromEntries((await sql`select budget_id, trim_scale(current_amount)::text as current from budget_status_cache`)
    .map((r) => [r.budget_id === USER ? 'user' : r.budget_id === TEAM ? 'team' : 'org', r.current as string]))
  const broken = async () => (await findViolations(sql)).filter((v) => !v.startsWith('reservation '))
  return { sql, hold, settle, takeLease, settleLeased, returnLease, spent, broken }
}

t.test('budget_lease_take told one tree, or a tree not the line\'s: no lease (on Citus the lock count tells)', async (t) => {
  const s = await setUp(t)
  t.ok(await s.hold(randomUUID(), '96', [TEAM, ORG]), '96 held on the team and organization')
  t.equal(await s.takeLease(randomUUID(), '8', [USER]), null, 'the user\'s tree only: no lease')
  t.equal(await s.takeLease(randomUUID(), '1000', [randomUUID()]), null, 'another tree: no lease')
  t.same(await s.broken(), [], 'invariants')
})

t.test('budget_settle_leased told only the user\'s tree, then the lease returned whole: the call counts on every budget of its lease', async (t) => {
  const s = await setUp(t)
  const lease = randomUUID()
  t.equal(await s.takeLease(lease, '8', BOTH), '8', 'a slice of 8')
  const [settled] = await s.settleLeased(lease, 'r1', '5', [USER])
  t.ok(settled!.lease_found, 'answered as found')
  await s.returnLease(lease, '0', true, 1, BOTH)
  t.same(await s.broken(), [], 'invariants')
  t.same(await s.spent(), { user: '5', team: '5', org: '5' }, 'the call\'s 5 counts on every budget of its lease')
})

t.test('budget_lease_return told one tree, then sent again with both under the same number', async (t) => {
  const s = await setUp(t)
  const lease = randomUUID()
  t.equal(await s.takeLease(lease, '8', BOTH), '8', 'a slice of 8')
  await s.returnLease(lease, '3', false, 1, [USER])
  await s.returnLease(lease, '3', false, 1, BOTH)
  const rows = await s.sql`select budget_id, trim_scale(amount)::text as amount from budget_reservations where id = ${lease} order by budget_id`
  t.same(rows.map((r) => r.amount), ['5', '5', '5'], 'return number 1 applied once on every row')
})

t.test('budget_settle_batch told only the user\'s tree: recorded once, at its cost on every budget', async (t) => {
  const s = await setUp(t)
  const id = randomUUID()
  t.ok(await s.hold(id, '1'), 'held 1')
  t.equal((await s.settle(id, '5', [USER])).length, 1, 'answered as settled')
  await s.sql`update budget_reservations set expires_at = now() - interval '1 second'`
  await s.sql`select budget_sweep_expired(100)`
  const records = await s.sql`select count(*)::int as n from budget_usage_records where idempotency_key = ${`req-${id}`}`
  t.equal(records[0]!.n, 1, 'the call recorded once')
  t.same(await s.spent(), { user: '5', team: '5', org: '5' }, 'its actual cost on every budget')
})
