// Review of 2d6ae2f: the gate's statements as its repositories now call them (each naming the trees of its
// line, p_roots, and the first as p_root), racing on lines that span two trees whose budget ids order opposite
// to their roots, from seven connections on plain PostgreSQL: holds and settlements of several calls at once (the
// calls' trees named, or none as the give-back does), lease take / leased settlement / renewal / return (in
// parallel with each other), rate takes and give-backs on both trees' buckets, usage batches and two sweepers.
// No statement fails (no 40P01, no lock timeout), and the escrow invariants hold at the end, with every hard
// budget within its limit: the estimates cover the costs, and the limits are tight enough to refuse.
import t from 'tap'
import postgres from 'postgres'
import { randomUUID } from 'node:crypto'
import { migrate } from '../lib/kernel/database/migrate.js'
import { createTestSql } from './fixtures/database.js'
import { findViolations } from './fixtures/invariants.js'

const ORG = '90000000-0000-4000-8000-000000000000'
const TEAM = '10000000-0000-4000-8000-000000000000'
const USER = '50000000-0000-4000-8000-000000000000'
const USER2 = '00000000-0000-4000-8000-00000000000a'
const ROOT: Record<string, string> = { [ORG]: ORG, [TEAM]: ORG, [USER]: USER, [USER2]: USER2 }
const treesOf = (budgets: string[]) => [...new Set(budgets.map((b) => ROOT[b]!))].sort()

t.test('the gate\'s statements naming their trees, racing on two-tree lines: no deadlock, invariants and limits hold', async (t) => {
  const { url, sql } = await createTestSql(t, { max: 2 })
  await migrate(sql)
  await sql`insert into budget_definitions (id, name, scope_type, scope_id, amount, currency, period, start_date, enforcement, alerts, rate_requests_per_minute)
            values (${ORG}, 'org', 'organization', 'acme', 60, 'USD', 'monthly', '2024-01-01', 'hard',
                    '[{"threshold": 10, "actions": ["notify"]}, {"threshold": 50, "actions": ["notify"]}]'::jsonb, 100000)`
  await sql`insert into budget_definitions (id, name, scope_type, scope_id, amount, currency, period, start_date, enforcement, parent_id, rate_requests_per_minute)
            values (${TEAM}, 'team', 'team', 'platform', 40, 'USD', 'monthly', '2024-01-01', 'hard', ${ORG}, 100000)`
  await sql`insert into budget_definitions (id, name, scope_type, scope_id, amount, currency, period, start_date, enforcement, rate_requests_per_minute)
            values (${USER}, 'user', 'user', 'ada', 30, 'USD', 'monthly', '2024-01-01', 'hard', 100000),
                   (${USER2}, 'user2', 'user', 'bob', 50, 'USD', 'monthly', '2024-01-01', 'hard', 100000)`
  const windows = await sql<Array<{ id: string, start: Date, end: Date }>>`
    select d.id, w.period_start as start, w.period_end as end from budget_definitions d cross join lateral budget_window(d, now()) w`
  for (const w of windows) await sql`select refresh_budget_status_cache(${w.id}, ${w.start}, ${w.end})`
  const win = (id: string) => windows.find((w) => w.id === id)!

  const lines = [[USER, TEAM, ORG], [TEAM, ORG], [USER2, USER], [USER2, TEAM, ORG], [ORG, TEAM, USER]]
  const errors: string[] = []
  const deadline = Date.now() + 10_000
  const clients = Array.from({ length: 7 }, () => postgres(url, { max: 1, onnotice: () => {} }))
  t.teardown(async () => { for (const c of clients) await c.end({ timeout: 1 }) })
  const guard = async (fn: () => Promise<unknown>) => {
    try { await fn() } catch (error: any) { errors.push(`${error.code as string}: ${error.message as string}`) }
  }
  const pick = () => lines[Math.floor(Math.random() * lines.length)]!
  const hold = async (c: postgres.Sql, calls: Array<{ id: string, line: string[] }>, ttl = '1 hour') => {
    const rowCalls = calls.flatMap((call, i) => call.line.map(() => String(i + 1)))
    const rowBudgets = calls.flatMap((call) => call.line)
    const trees = treesOf(rowBudgets)
    return await c<Array<{ call_index: number, is_reserved: boolean }>>`select call_index, bool_and(is_reserved) as is_reserved from budget_hold_batch(${calls.map((x) => x.id)}::uuid[],
      ${calls.map(() => '0.5')}::numeric[], ${calls.map((x) => `req-${x.id}`)}::text[], 'USD', ${ttl}::interval, ${rowCalls}::text[]::integer[], ${rowBudgets}::uuid[],
      ${rowBudgets.map((b) => win(b).start.toISOString())}::timestamptz[], ${rowBudgets.map((b) => win(b).end.toISOString())}::timestamptz[],
      array_fill(true, array[${rowBudgets.length}::int]), ${calls.flatMap((call) => call.line.map((_, i) => String(i)))}::text[]::integer[], false, false,
      ${trees}::uuid[], ${trees[0]!}::uuid) group by call_index`
  }
  let admitted = 0
  const holdsAndSettles = async (c: postgres.Sql, other: postgres.Sql) => {
    while (Date.now() < deadline) {
      const calls = Array.from({ length: 1 + Math.floor(Math.random() * 3) }, () => ({ id: randomUUID(), line: pick() }))
      await guard(async () => {
        const held = await hold(c, calls)
        admitted += held.filter((h) => h.is_reserved).length
        const ids = calls.map((x) => x.id).sort(() => Math.random() - 0.5)
        const trees = Math.random() < 0.8 ? treesOf(calls.flatMap((x) => x.line)) : null // the give-back names none
        await other`select * from budget_settle_batch(${ids}::uuid[], ${ids.map(() => String(0.1 + Math.floor(Math.random() * 5) / 10))}::numeric[],
          ${ids.map(() => 'gate')}::text[], ${ids.map(() => 'call')}::text[], array_fill(${'{}'}::text::jsonb, array[${ids.length}::int]), null,
          ${trees}::uuid[], ${trees?.[0] ?? '00000000-0000-0000-0000-000000000000'}::uuid)`
      })
    }
  }
  // one lease per line at a time, drawn on, renewed and returned from two connections at once
  const leases = async (c: postgres.Sql, other: postgres.Sql, line: string[]) => {
    const trees = treesOf(line)
    let n = 0
    while (Date.now() < deadline) {
      const lease = randomUUID()
      await guard(async () => {
        const [took] = await c`select max(granted)::text as granted from budget_lease_take(${lease}, 'USD', '1 hour'::interval, 2, 0.01, ${line}::uuid[],
          ${line.map((b) => win(b).start.toISOString())}::timestamptz[], ${line.map((b) => win(b).end.toISOString())}::timestamptz[],
          array_fill(true, array[${line.length}::int]), ${line.map((_, i) => String(i))}::text[]::integer[], ${trees}::uuid[], ${trees[0]!}::uuid)`
        if (took?.granted === null || took === undefined) return
        for (let i = 1; i <= 3; i++) {
          // each call costs at most what the slice still holds for it
          await Promise.all([
            other`select * from budget_settle_leased(array[${lease}]::uuid[], array[${`leased-${lease}-${n++}`}], array[least(0.2, ${took.granted}::numeric / 4)]::numeric[],
              array['gate'], array['call'], array['{}'::jsonb], array[now()], '1 hour'::interval, null, ${trees}::uuid[], ${trees[0]!}::uuid)`,
            c`select budget_lease_renew(${lease}, '1 hour'::interval, ${trees}::uuid[], ${trees[0]!}::uuid)`
          ])
          await c`select budget_lease_return(${lease}, 0.01, false, ${i}, ${trees}::uuid[], ${trees[0]!}::uuid)`
        }
        await other`select budget_lease_return(${lease}, 0, true, 4, ${trees}::uuid[], ${trees[0]!}::uuid)`
      })
    }
  }
  // rate allowance on both trees' buckets, taken and given back as the gate does
  const rates = async (c: postgres.Sql) => {
    while (Date.now() < deadline) {
      const line = pick()
      const roots = line.map((b) => ROOT[b]!)
      await guard(async () => {
        await c`select * from budget_rate_take(${line}::uuid[], ${line.map(() => '1')}::numeric[], ${line.map(() => '0')}::numeric[],
          ${line.map(() => '3')}::numeric[], ${line.map(() => '0')}::numeric[], ${roots}::uuid[], ${[...roots].sort()[0]!}::uuid)`
        await c`select budget_rate_give_back(${line}::uuid[], ${line.map(() => '1')}::numeric[], ${line.map(() => '0')}::numeric[], ${roots}::uuid[], ${[...roots].sort()[0]!}::uuid)`
      })
    }
  }
  const usageAndSweep = async (c: postgres.Sql) => {
    let k = 0
    while (Date.now() < deadline) {
      await guard(async () => {
        await hold(c, [{ id: randomUUID(), line: pick() }], '-1 second')
        await c`select budget_sweep_expired(100)`
        if (k++ % 5 === 0) {
          const records = [USER2].map((b, i) => ({ ord: i + 1, budget_id: b, amount: '0.01', currency: 'USD', source: 'batch',
            description: 'x', metadata: {}, idempotency_key: `k-${k}`, request_fingerprint: null, occurred_at: new Date().toISOString(), also_counts_toward: [] }))
          await c`select * from budget_record_usage_batch(${JSON.stringify(records)}::text::jsonb)`
        }
      })
    }
  }
  const [c1, c2, c3, c4, c5, c6, c7] = clients as [postgres.Sql, postgres.Sql, postgres.Sql, postgres.Sql, postgres.Sql, postgres.Sql, postgres.Sql]
  await Promise.all([holdsAndSettles(c1, c2), holdsAndSettles(c2, c1), leases(c3, c4, [USER, TEAM, ORG]), leases(c4, c3, [ORG, TEAM, USER2]),
    usageAndSweep(c5), rates(c6), usageAndSweep(c7)])

  t.ok(admitted > 20, `calls were admitted (${admitted})`)
  t.same([...new Set(errors)], [], 'no statement failed (no 40P01, no lock timeout)')
  await sql`update budget_reservations set expires_at = now() - interval '1 second'`
  await sql`select budget_sweep_expired(100000)`
  t.same(await findViolations(sql), [], 'invariants, and no hard budget over its limit')
  const [refused] = await sql`select count(*)::int as n from budget_status_cache c join budget_definitions d on d.root_id = c.root_id and d.id = c.budget_id where c.current_amount > d.amount * 0.5`
  t.ok(refused!.n > 0, 'some budget filled past half its limit: the limits were in play')
})
