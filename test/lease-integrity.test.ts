// Leases and settlements under the ways they broke (issue 19): statements locking a lease's rows in
// opposite orders, a false expiry warning on every leased call, calls that cost more than their lease
// held, and a budget's window changed under calls in flight.
import postgres, { type Sql } from 'postgres'
import t from 'tap'
import { buildApp } from './fixtures/app.js'
import { findViolations } from './fixtures/invariants.js'

const pause = async (ms: number) => await new Promise((resolve) => setTimeout(resolve, ms))

/** Waits until the session `pid` waits for a lock (pg_stat_activity). */
async function waitingForLock (sql: Sql, pid: number): Promise<void> {
  for (let waited = 0; waited < 10_000; waited += 10) {
    const [row] = await sql<Array<{ waiting: boolean }>>`select wait_event_type = 'Lock' as waiting from pg_stat_activity where pid = ${pid}`
    if (row?.waiting === true) return
    await pause(10)
  }
  throw new Error(`session ${pid} never waited for a lock`)
}

t.test('a lease\'s give-back and a settlement of its calls, meeting on its rows, never deadlock: every statement locks in one order', async (t) => {
  // Deterministic. A lease on three budgets; its rows lie in the heap in the reverse of their key order
  // (budget_lease_take inserts them in the line's order). A statement whose plan reads them by a
  // sequential scan meets them in the heap's order, one that reads the primary key in key order: the
  // planner settings below pick each plan, as table statistics and row versions do in production. A
  // third session holds the middle row, so each statement takes its first row and waits for the second;
  // then it lets go. Locked without an order (sql/006, sql/009), one statement holds the first row in
  // key order and wants the middle one, the other holds the middle one and wants the first: 40P01.
  const { app, sql, admin } = await buildApp(t)
  const ids: string[] = []
  for (const scopeId of ['a', 'b', 'c']) {
    const created = await admin({ method: 'POST', url: '/api/v1/budgets', body: { name: scopeId, scopeType: 'team', scopeId, amount: '100', currency: 'USD', period: 'monthly', startDate: '2024-01-01' } })
    ids.push(created.json().id)
  }
  const line = await sql<Array<{ budgetId: string, start: Date, end: Date }>>`
    select budget_id as "budgetId", period_start as start, period_end as "end"
    from budget_line(array['team', 'team', 'team'], array['a', 'b', 'c'], 'USD', null, '{}'::jsonb) order by budget_id desc`
  const lease = '00000000-0000-4000-8000-00000000beef'
  await sql`select * from budget_lease_take(${lease}, 'USD', interval '1 minute', 0.01, 0.001, ${line.map((b) => b.budgetId)}::text[]::uuid[],
    ${line.map((b) => b.start.toISOString())}::text[]::timestamptz[], ${line.map((b) => b.end.toISOString())}::text[]::timestamptz[], array[true, true, true], array[1, 2, 3])`
  const heapOrder = await sql<Array<{ budgetId: string }>>`select budget_id as "budgetId" from budget_reservations order by ctid`
  t.same(heapOrder.map((row) => row.budgetId), line.map((b) => b.budgetId), 'the rows lie in the heap in descending key order')
  const middle = line[1]!.budgetId

  const session = async () => {
    const connection = await sql.reserve()
    t.teardown(() => { connection.release() })
    const [{ pid }] = await connection<Array<{ pid: number }>>`select pg_backend_pid() as pid`
    return { connection, pid }
  }
  const blocker = await session()
  const returning = await session()
  const settling = await session()
  await returning.connection`select set_config('enable_indexscan', 'off', false), set_config('enable_bitmapscan', 'off', false)`
  await settling.connection`select set_config('enable_seqscan', 'off', false), set_config('enable_bitmapscan', 'off', false)`

  await blocker.connection`begin`
  await blocker.connection`select 1 from budget_reservations where id = ${lease} and budget_id = ${middle} for update`
  const giveBack = returning.connection`select budget_lease_return(${lease}, 0.001)`.execute().then(() => null, (error: { code?: string }) => error)
  await waitingForLock(sql, returning.pid)
  const settle = settling.connection`
    select * from budget_settle_leased(array[${lease}]::uuid[], array['call-1'], array[0.002]::numeric[], array['gateway'], array[null]::text[],
                                       array['{}'::jsonb], array[now()], interval '1 minute')`.execute().then(() => null, (error: { code?: string }) => error)
  await waitingForLock(sql, settling.pid)
  await blocker.connection`commit`

  const failures = (await Promise.all([giveBack, settle])).filter((error) => error !== null)
  t.same(failures.map((error) => error!.code), [], 'neither statement was killed as a deadlock')
  const [held] = await sql<Array<{ amount: string }>>`select min(amount)::text as amount from budget_reservations where id = ${lease}`
  t.equal(Number(held!.amount), 0.007, 'the lease gave back 0.001 and paid 0.002 on each budget')
  await app.close()
})
