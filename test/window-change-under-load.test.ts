// A budget's window changed while the gate holds and settles on it (issue 21 item 4, review finding 1):
// the carry-over (budget_carry_reservations, sql/016 then sql/026) met a hold that committed between its
// two lock statements, and that hold's settlement, in a deadlock; PostgreSQL killed the change, and the
// admin's PUT answered 500. Now the carry-over locks the rows it moves without waiting on the gate, and a
// change that meets a settlement runs again (lib/services/registry.ts): every PUT is answered 200.
import type { ReservedSql, Sql } from 'postgres'
import t, { type Test } from 'tap'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'
import { checkInvariants, waitForSettled } from './fixtures/invariants.js'
import { pause } from './fixtures/sessions.js'

const admin = { authorization: `Bearer ${ADMIN_TOKEN}` }
const caller = { organization: 'acme', team: 'platform' }

async function session (t: Test, sql: Sql): Promise<{ connection: ReservedSql, pid: number }> {
  const connection = await sql.reserve()
  t.teardown(() => { connection.release() })
  const [row] = await connection<Array<{ pid: number }>>`select pg_backend_pid() as pid`
  return { connection, pid: row!.pid }
}

/** Waits until some other session waits for a lock that session `pid` holds; returns its pid. Throws after 10 s. */
async function blockedBy (sql: Sql, pid: number): Promise<number> {
  for (let waited = 0; waited < 10_000; waited += 10) {
    const [row] = await sql<Array<{ pid: number }>>`select pid from pg_stat_activity where ${pid}::int = any (pg_blocking_pids(pid)) limit 1`
    if (row !== undefined) return row.pid
    await pause(10)
  }
  throw new Error(`no session waited for session ${pid}`)
}

t.test('a hold committed between the carry-over\'s two lock statements, then settled while the change runs: the PUT is answered 200, nothing deadlocks', async (t) => {
  // Deterministic: sessions holding rows the change and the settlement need put each statement where the
  // reviewer's runs found them. L holds the first hold's reservation row, so the change (T) takes its
  // first lock statement's snapshot and waits; a second hold commits (R); Z holds the child's window row
  // and S the new hold's reservation rows; L lets go, so T locks the reservation rows it saw and waits
  // for the window; Z lets go. 016's loop then wants R's row, held by S; S's settlement then wants the
  // window T holds: 40P01, and PostgreSQL kills T, the first to wait (deadlock_timeout later).
  const { app, sql, createBudget } = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const parent = await createBudget({ scopeType: 'organization', scopeId: 'acme', amount: '100' })
  const child = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '10', parentId: parent.id })
  const integration = app.budgetIntegration
  const first = (await integration.reserveCall(caller, '0.001')).reservationId!
  t.ok(first, 'a first call holds on both budgets')

  const l = await session(t, sql)
  const z = await session(t, sql)
  const s = await session(t, sql)
  await l.connection`begin`
  await l.connection`select 1 from budget_reservations where id = ${first} and budget_id = ${child.id} for update`
  const put = app.inject({ method: 'PUT', url: `${PREFIX}/${child.id}`, headers: admin, body: { period: 'daily' } })
  await blockedBy(sql, l.pid)

  await pause(150) // not close enough to the first call for a lease: the second call holds its own reservation
  const second = (await integration.reserveCall(caller, '0.001')).reservationId!
  const [rows] = await sql<Array<{ n: number }>>`select count(*)::int as n from budget_reservations where id = ${second}`
  t.equal(rows!.n, 2, 'the second call holds its own reservation on both budgets, committed after the change\'s first lock')

  await z.connection`begin`
  await z.connection`select 1 from budget_status_cache where budget_id = ${child.id} for update`
  await s.connection`begin`
  await s.connection`select 1 from budget_reservations where id = ${second} order by id, budget_id for update`
  await l.connection`commit`
  await blockedBy(sql, z.pid) // the change holds the reservation rows it saw and waits for the window row
  await z.connection`commit`
  await blockedBy(sql, s.pid) // the change (or its second run) waits for the second hold's rows
  const settled = s.connection`
    select * from budget_settle_batch(array[${second}]::uuid[], array[0.001]::numeric[], array['gateway'], array[null]::text[], array['{}'::jsonb])`
    .execute().then(() => null, (error: { code?: string }) => error.code ?? String(error))
  t.equal(await settled, null, 'the settlement went through')
  await s.connection`commit`

  const answer = await put
  t.equal(answer.statusCode, 200, `the PUT is answered 200 (${answer.body.slice(0, 200)})`)
  t.equal(answer.json().period, 'daily', 'and the child is daily')
  await integration.settleCall(first, '0.001')
  await waitForSettled(sql)
  await checkInvariants(t, sql)
  const windows = await sql<Array<{ days: number }>>`
    select extract(epoch from period_end - period_start)::int / 86400 as days from budget_status_cache where budget_id = ${child.id}`
  t.same(windows.map((row) => row.days), [1], 'the child has one window row, a daily one')
})
