// Review ra: renewLease (lib/repository/reservations.ts) updates a lease's rows with a plain
// `update ... where id = $1`, outside the documented lock order of sql/016. A plan that reads the rows
// in heap order (seq scan, or a bitmap heap scan, which visits pages in physical order) locks them in
// the reverse of (id, budget_id) when the lease's rows lie so in the heap (budget_lease_take inserts
// them in the line's order). Against budget_settle_leased / budget_lease_return (ordered) it deadlocks:
// the same setup as test/lease-integrity.test.ts's first test, with the renewal as one of the two.
import postgres, { type Sql } from 'postgres'
import t from 'tap'
import { createReservationRepository } from '../lib/repository/reservations.js'
import { buildApp } from './fixtures/app.js'

const pause = async (ms: number) => await new Promise((resolve) => setTimeout(resolve, ms))
async function waitingForLock (sql: Sql, pid: number): Promise<void> {
  for (let waited = 0; waited < 10_000; waited += 10) {
    const [row] = await sql<Array<{ waiting: boolean }>>`select wait_event_type = 'Lock' as waiting from pg_stat_activity where pid = ${pid}`
    if (row?.waiting === true) return
    await pause(10)
  }
  throw new Error(`session ${pid} never waited for a lock`)
}

for (const other of ['settle', 'return'] as const) {
  t.test(`a lease renewal and a ${other} of the same lease never deadlock`, async (t) => {
    const { app, sql, admin } = await buildApp(t)
    for (const scopeId of ['a', 'b', 'c']) {
      await admin({ method: 'POST', url: '/api/v1/budgets', body: { name: scopeId, scopeType: 'team', scopeId, amount: '100', currency: 'USD', period: 'monthly', startDate: '2024-01-01' } })
    }
    const line = await sql<Array<{ budgetId: string, start: Date, end: Date }>>`
      select budget_id as "budgetId", period_start as start, period_end as "end"
      from budget_line(array['team', 'team', 'team'], array['a', 'b', 'c'], 'USD', null, '{}'::jsonb) order by budget_id desc`
    const lease = '00000000-0000-4000-8000-00000000beef'
    await sql`select * from budget_lease_take(${lease}, 'USD', interval '1 minute', 0.01, 0.001, ${line.map((b) => b.budgetId)}::text[]::uuid[],
      ${line.map((b) => b.start.toISOString())}::text[]::timestamptz[], ${line.map((b) => b.end.toISOString())}::text[]::timestamptz[], array[true, true, true], array[1, 2, 3])`
    const middle = line[1]!.budgetId
    const session = async () => {
      const connection = await sql.reserve()
      t.teardown(() => { connection.release() })
      const [row] = await connection<Array<{ pid: number }>>`select pg_backend_pid() as pid`
      return { connection, pid: row!.pid }
    }
    const blocker = await session()
    const ordered = await session()
    // the renewal's plan reads the heap (as a bitmap heap scan or a seq scan does); the ordered statement's is the index
    const url = new URL(process.env.DATABASE_URL!)
    url.pathname = `/${(await sql<Array<{ name: string }>>`select current_database() as name`)[0]!.name}`
    const renewingClient = postgres(url.href, { max: 1, onnotice: () => {}, connection: { enable_indexscan: 'off', enable_bitmapscan: 'off' } })
    t.teardown(async () => await renewingClient.end())
    const [renewingRow] = await renewingClient<Array<{ pid: number }>>`select pg_backend_pid() as pid`
    const renewing = { pid: renewingRow!.pid }
    await ordered.connection`select set_config('enable_seqscan', 'off', false), set_config('enable_bitmapscan', 'off', false)`
    await blocker.connection`begin`
    await blocker.connection`select 1 from budget_reservations where id = ${lease} and budget_id = ${middle} for update`
    // ReservationRepository.renewLease, on a session of its own
    const renew = createReservationRepository(renewingClient).renewLease(lease, 900_000)
      .then(() => null, (error: { code?: string, cause?: { code?: string } }) => error.cause ?? error)
    await waitingForLock(sql, renewing.pid)
    const second = (other === 'settle'
      ? ordered.connection`select * from budget_settle_leased(array[${lease}]::uuid[], array['call-1'], array[0.002]::numeric[], array['gateway'], array[null]::text[],
                                         array['{}'::jsonb], array[now()], interval '1 minute')`
      : ordered.connection`select budget_lease_return(${lease}, 0.001)`).execute().then(() => null, (error: { code?: string }) => error)
    await waitingForLock(sql, ordered.pid)
    await blocker.connection`commit`
    const failures = (await Promise.all([renew, second])).filter((error) => error !== null)
    t.same(failures.map((error) => error!.code), [], 'neither statement was killed as a deadlock')
    await app.close()
  })
}
