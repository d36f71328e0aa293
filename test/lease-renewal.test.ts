// Keeping a lease alive: the renewal locks in the lock order of sql/functions/locks.sql, and a renewal that meets a
// lease not yet written (its first take still waiting) leaves it be.
import postgres from 'postgres'
import t from 'tap'
import { createLeaseRepository } from '../lib/gate/lease-repository.js'
import { buildApp } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'
import { findViolations } from './fixtures/invariants.js'
import { pause, waitingForLock } from './fixtures/sessions.js'

// A renewal that updated a lease's rows with a plain `update ... where id = $1` (as renewLease once did)
// locked them outside the documented lock order (locks.sql). A plan that reads the rows
// in heap order (seq scan, or a bitmap heap scan, which visits pages in physical order) locks them in
// the reverse of (id, budget_id) when the lease's rows lie so in the heap (budget_lease_take inserts
// them in the line's order). Against budget_settle_leased / budget_lease_return (ordered) it deadlocks:
// the same setup as test/lease-integrity.test.ts's first test, with the renewal as one of the two.
for (const other of ['settle', 'return'] as const) {
  t.test(`a lease renewal and a ${other} of the same lease never deadlock`, async (t) => {
    const { app, sql, admin } = await buildApp(t)
    for (const scopeId of ['a', 'b', 'c']) {
      await admin({ method: 'POST', url: '/api/v1/budgets', body: { name: scopeId, scopeType: 'team', scopeId, amount: '100', currency: 'USD', period: 'monthly', startDate: '2024-01-01' } })
    }
    const line = await sql<Array<{ budgetId: string, rootId: string, start: Date, end: Date }>>`
      select budget_id as "budgetId", root_id as "rootId", period_start as start, period_end as "end"
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
    await blocker.connection`select 1 from budget_reservations where root_id = ${line[1]!.rootId} and id = ${lease} and budget_id = ${middle} for update`
    // the lease repository's renewLease, on a session of its own
    const renew = createLeaseRepository(renewingClient).renewLease(lease, [...new Set(line.map((b) => b.rootId))].sort(), 900_000)
      .then(() => null, (error: { code?: string, cause?: { code?: string } }) => error.cause ?? error)
    await waitingForLock(sql, renewing.pid)
    const second = (other === 'settle'
      ? ordered.connection`select * from budget_settle_leased(array[${lease}]::uuid[], array['call-1'], array[0.002]::numeric[], array['gateway'], array[null]::text[],
                                         array['{}'::jsonb], array[now()], interval '1 minute')`
      : ordered.connection`select budget_lease_return(${lease}, 0.001, false, 1)`).execute().then(() => null, (error: { code?: string }) => error)
    await waitingForLock(sql, ordered.pid)
    await blocker.connection`commit`
    const failures = (await Promise.all([renew, second])).filter((error) => error !== null)
    t.same(failures.map((error) => error!.code), [], 'neither statement was killed as a deadlock')
    await app.close()
  })
}

// A lease whose first take waits on a locked window row longer than a third of the TTL.
// The renewal timer (leases.ts) renews it and finds no row yet (the take has not committed); it once
// read that as "expired and swept", ended the lease and dropped it from `draining`. The take then
// committed and inserted the lease's rows; take() called giveBack(), which returned at once because the
// lease was ended. Nothing gave the slice back or renewed it: it expired and the
// sweeper recorded the whole slice as spend that never happened ('expired-reservation', lease:<id>).
// In production the wait is a hot window row (settlements, other takes, an admin write, a batch);
// here a session holds it for 1 s (take's lock_timeout is 2 s).
t.test('a lease take that waits on a window row past a third of the TTL is not orphaned and swept as spend', async (t) => {
  // The take waits ~1 s: past a third of the TTL (a renewal runs meanwhile), within the TTL (a statement
  // that waits past the TTL writes rows already expired, since their expiry counts from its start: a
  // different matter, left to the SQL's owner)
  const ttlMs = 1500
  const gateway = await buildGateway(t, { captureLogs: true, gate: { reservationTtlMs: ttlMs, sweepIntervalMs: 100, timeoutMs: 5000 } })
  const { sql, createBudget, call } = gateway
  const budget = await createBudget({ scopeId: 'team-a', amount: '10', enforcement: 'hard' })
  const caller = { team: 'team-a' }
  t.equal((await call(caller)).statusCode, 200, 'a first call loads the line')

  // Another session holds the window row for 1 s (a batch, an admin write, a queue of settlements)
  const locked = sql.begin(async (tx) => {
    await tx`select 1 from budget_status_cache where root_id = ${budget.id} and budget_id = ${budget.id} for update` // a root: its own tree
    await pause(Number(process.env.LOCK_MS ?? 1000))
  })
  await pause(50)
  // Two calls 20 ms apart: the line is hot, the second takes a lease, whose take waits for the row
  const first = call(caller, { messages: [{ role: 'user', content: 'one' }] })
  await pause(20)
  const second = call(caller, { messages: [{ role: 'user', content: 'two' }] })
  await locked
  const statuses = [(await first).statusCode, (await second).statusCode]
  t.comment(`statuses ${JSON.stringify(statuses)}`)
  const served = statuses.filter((s) => s === 200).length + 1
  // Let the lease idle (2 s) and be given back, and anything expired be swept
  await pause(4000)
  await gateway.app.close()
  const records = await sql<Array<{ source: string, amount: string, requestId: string }>>`
    select source, amount::text, metadata ->> 'requestId' as "requestId" from budget_usage_records order by occurred_at`
  t.comment(JSON.stringify(records))
  t.equal(records.filter((r) => r.source === 'gateway').length, served, 'every served call recorded')
  t.same(records.filter((r) => r.source !== 'gateway'), [], 'nothing swept: the process was alive and gave back its lease')
  t.same(await findViolations(sql), [], 'invariants')
})
