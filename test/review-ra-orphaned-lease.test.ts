// Review ra: a lease whose first take waits on a locked window row longer than a third of the TTL.
// The renewal timer (leases.ts) renews it with `update ... where id`, finds no row yet (the take has
// not committed), decides the lease "expired and was swept", sets ended = true and drops it from
// `draining`. The take then commits and inserts the lease's rows; take() calls giveBack(), which returns
// at once because the lease is ended. Nothing gives the slice back or renews it: it expires and the
// sweeper records the whole slice as spend that never happened ('expired-reservation', lease:<id>).
// In production the wait is a hot window row (settlements, other takes, an admin write, a batch);
// here a session holds it for 1 s (take's lock_timeout is 2 s).
import t from 'tap'
import { buildGateway } from './fixtures/gateway.js'
import { findViolations } from './fixtures/invariants.js'

const pause = async (ms: number) => await new Promise((resolve) => setTimeout(resolve, ms))

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
    await tx`select 1 from budget_status_cache where budget_id = ${budget.id} for update`
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
