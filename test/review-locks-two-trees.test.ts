// Review of ebaffca (locks.sql): the gate's statements racing on lines that span two trees whose budget ids
// order opposite to their roots (a user budget that is its own root, a team under an organization; by budget id
// team < user < org, by root user < org), so that locking by budget id alone and locking by root disagree.
// Holds, settlements of several calls at once, lease take / leased settlement / renewal / return, usage
// batches and one sweeper, from six connections: no deadlock (40P01), and the escrow invariants at the end.
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

t.test('a two-tree line under every gate statement at once: no deadlock, invariants hold', async (t) => {
  const { url, sql } = await createTestSql(t, { max: 2 })
  await migrate(sql)
  await sql`insert into budget_definitions (id, name, scope_type, scope_id, amount, currency, period, start_date, enforcement, alerts)
            values (${ORG}, 'org', 'organization', 'acme', 100000, 'USD', 'monthly', '2024-01-01', 'hard',
                    '[{"threshold": 1, "actions": ["notify"]}, {"threshold": 2, "actions": ["notify"]}]'::jsonb)`
  await sql`insert into budget_definitions (id, name, scope_type, scope_id, amount, currency, period, start_date, enforcement, parent_id)
            values (${TEAM}, 'team', 'team', 'platform', 100000, 'USD', 'monthly', '2024-01-01', 'hard', ${ORG})`
  await sql`insert into budget_definitions (id, name, scope_type, scope_id, amount, currency, period, start_date, enforcement)
            values (${USER}, 'user', 'user', 'ada', 100000, 'USD', 'monthly', '2024-01-01', 'hard'),
                   (${USER2}, 'user2', 'user', 'bob', 100000, 'USD', 'monthly', '2024-01-01', 'hard')`
  const windows = await sql<Array<{ id: string, start: Date, end: Date }>>`
    select d.id, w.period_start as start, w.period_end as end from budget_definitions d cross join lateral budget_window(d, now()) w`
  for (const w of windows) await sql`select refresh_budget_status_cache(${w.id}, ${w.start}, ${w.end})`
  const win = (id: string) => windows.find((w) => w.id === id)!
  t.same((await sql`select id from budget_definitions order by root_id, id`).map((r) => r.id), [USER2, USER, TEAM, ORG], 'lock order by root')

  const lines = [[USER, TEAM, ORG], [TEAM, ORG], [USER2, USER], [USER2, TEAM, ORG], [ORG, TEAM, USER]]
  const errors: string[] = []
  const deadline = Date.now() + 12_000
  const db = () => postgres(url, { max: 1, onnotice: () => {} })
  const clients = Array.from({ length: 6 }, db)
  t.teardown(async () => { for (const c of clients) await c.end({ timeout: 1 }) })
  const guard = async (fn: () => Promise<unknown>) => {
    try { await fn() } catch (error: any) { errors.push(`${error.code as string}: ${error.message as string}`) }
  }
  const hold = async (c: postgres.Sql, calls: Array<{ id: string, line: string[] }>, ttl = '1 hour') => {
    const rowCalls = calls.flatMap((call, i) => call.line.map(() => i + 1))
    const rowBudgets = calls.flatMap((call) => call.line)
    return await c`select call_index, fits from budget_hold_batch(${calls.map((x) => x.id)}::uuid[], ${calls.map(() => '0.5')}::numeric[],
      ${calls.map((x) => `req-${x.id}`)}::text[], 'USD', ${ttl}::interval, ${rowCalls}::integer[], ${rowBudgets}::uuid[],
      ${rowBudgets.map((b) => win(b).start.toISOString())}::timestamptz[], ${rowBudgets.map((b) => win(b).end.toISOString())}::timestamptz[],
      array_fill(true, array[${rowBudgets.length}::int]), ${calls.flatMap((call) => call.line.map((_, i) => i))}::integer[], false, false)`
  }
  const pick = () => lines[Math.floor(Math.random() * lines.length)]!

  // holds of 1-3 calls, settled together (ids in random order) by another connection
  const holdsAndSettles = async (c: postgres.Sql, other: postgres.Sql) => {
    while (Date.now() < deadline) {
      const calls = Array.from({ length: 1 + Math.floor(Math.random() * 3) }, () => ({ id: randomUUID(), line: pick() }))
      await guard(async () => {
        await hold(c, calls)
        const ids = calls.map((x) => x.id).sort(() => Math.random() - 0.5)
        await other`select * from budget_settle_batch(${ids}::uuid[], ${ids.map(() => '0.3')}::numeric[], ${ids.map(() => 'gate')}::text[],
          ${ids.map(() => 'call')}::text[], array_fill(${"{}"}::text::jsonb, array[${ids.length}::int]))`
      })
    }
  }
  // one lease per line, taken, drawn on, renewed and returned from two connections
  const leases = async (c: postgres.Sql, other: postgres.Sql, line: string[]) => {
    let n = 0
    while (Date.now() < deadline) {
      const lease = randomUUID()
      await guard(async () => {
        await c`select * from budget_lease_take(${lease}, 'USD', '1 hour'::interval, 5, 0.01, ${line}::uuid[],
          ${line.map((b) => win(b).start.toISOString())}::timestamptz[], ${line.map((b) => win(b).end.toISOString())}::timestamptz[],
          array_fill(true, array[${line.length}::int]), ${line.map((_, i) => i)}::integer[])`
        for (let i = 1; i <= 3; i++) {
          await Promise.all([
            other`select * from budget_settle_leased(array[${lease}]::uuid[], array[${`leased-${n++}`}], array[0.2]::numeric[], array['gate'],
              array['call'], array['{}'::jsonb], array[now()], '1 hour'::interval)`,
            c`with bound as materialized (select set_config('lock_timeout', '500ms', true)),
                  locked as materialized (select budget_lock_reservations(array[${lease}]::uuid[]) as rows from bound)
                update budget_reservations r set expires_at = now() + interval '1 hour' from locked l where r.id = ${lease} and l.rows > 0`
          ])
          await c`select budget_lease_return(${lease}, 0.1, false, ${i})`
        }
        await other`select budget_lease_return(${lease}, 0, true, 4)`
      })
    }
  }
  // usage batches on the two trees, and the sweeper of short holds
  const usageAndSweep = async (c: postgres.Sql) => {
    let k = 0
    while (Date.now() < deadline) {
      await guard(async () => {
        const records = [USER, TEAM, USER2].map((b, i) => ({ ord: i + 1, budget_id: b, amount: '0.1', currency: 'USD', source: 'batch',
          description: 'x', metadata: {}, idempotency_key: `k-${k++}`, request_fingerprint: null, occurred_at: new Date().toISOString(),
          also_counts_toward: b === USER2 ? [USER] : b === USER ? [TEAM] : [] }))
        await c`select * from budget_record_usage_batch(${JSON.stringify(records)}::text::jsonb)`
        await hold(c, [{ id: randomUUID(), line: pick() }], '-1 second')
        await c`select budget_sweep_expired(100)`
      })
    }
  }
  const [c1, c2, c3, c4, c5, c6] = clients as [postgres.Sql, postgres.Sql, postgres.Sql, postgres.Sql, postgres.Sql, postgres.Sql]
  await Promise.all([holdsAndSettles(c1, c2), holdsAndSettles(c2, c1), leases(c3, c4, [USER, TEAM, ORG]), leases(c4, c3, [ORG, TEAM, USER]),
    usageAndSweep(c5), holdsAndSettles(c6, c5)])

  t.same([...new Set(errors)], [], 'no statement failed (no 40P01, no lock timeout)')
  await sql`update budget_reservations set expires_at = now() - interval '1 second'`
  await sql`select budget_sweep_expired(100000)`
  t.same(await findViolations(sql), [], 'invariants')
})
