// Review of 6a19965 on the Citus cluster: a lease topped up by a take whose line gained a tree would have left the
// older rows' trees list without it, and a settlement told the old tree only would have missed the new tree's row.
// A lease keeps the line of its first take: such a top-up takes nothing (budget_lease_take). A user budget that is its own root and a team under an organization, hard budgets of 100.
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
  const takeLease = async (id: string, wanted: string, roots: string[], on: string[] = LINE) => (await sql<Array<{ granted: string | null }>>`
    select max(granted)::text as granted from budget_lease_take(${id}, 'USD', '1 hour'::interval, ${wanted}::numeric, 0.0001::numeric, ${on}::uuid[],
      ${on.map((b) => win(b).start.toISOString())}::text[]::timestamptz[], ${on.map((b) => win(b).end.toISOString())}::text[]::timestamptz[],
      ${matched(on)}::text[]::boolean[], ${on.map((_, i) => String(i))}::text[]::integer[], ${roots}::uuid[], ${roots[0] ?? ORG}::uuid)`)[0]?.granted ?? null
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


t.test('a top-up on a line that gained the user tree takes nothing; the lease, settled and returned on its own tree, counts its call there', async (t) => {
  const s = await setUp(t)
  const lease = randomUUID()
  t.equal(await s.takeLease(lease, '8', [ORG], [TEAM, ORG]), '8', 'first take: team and organization')
  t.equal(await s.takeLease(lease, '8', BOTH), null, 'second take, the line now with the user: refused (a lease keeps its first line)')
  await s.settleLeased(lease, 'r1', '5', [ORG])
  await s.returnLease(lease, '0', true, 1, [ORG])
  const left = await s.sql`select count(*)::int as n from budget_reservations where id = ${lease}`
  t.equal(left[0]!.n, 0, 'the final return ended every row of the lease')
  t.same(await s.spent(), { user: '0', team: '5', org: '5' }, 'the call\'s 5 counts on the budgets of its lease, the team and the organization')
  t.same(await s.broken(), [], 'invariants')
})
