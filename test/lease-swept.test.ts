// a lease swept while its process still holds it in memory. One gateway loses its database
// (a network cut, here a TCP proxy) for longer than the reservation TTL while a lease is live; another
// process's sweeper (here the test's own session, running the same budget_sweep_expired) counts the
// lease at what it holds and deletes it. When the database is back, the process admits calls from the
// lease's in-memory slice at once (a version read is all it asks for), before its renewal timer finds
// the row gone: those calls are held nowhere, their settlements find no lease ('expired'), and they are
// never recorded. A top-up of the same lease id then re-inserts the rows (budget_lease_take's
// `on conflict` insert), so the memory slice exceeds what PostgreSQL holds.
import t from 'tap'
import { buildGateway } from './fixtures/gateway.js'
import { findViolations } from './fixtures/invariants.js'
import { startTcpProxy, throughProxy } from './fixtures/tcp-proxy.js'

const pause = async (ms: number) => await new Promise((resolve) => setTimeout(resolve, ms))

t.test('calls admitted from a lease that was swept while the process was cut off are recorded', async (t) => {
  const target = new URL(process.env.DATABASE_URL!)
  const proxy = await startTcpProxy(target.hostname, Number(target.port || 5432))
  t.teardown(async () => await proxy.cut())
  const ttlMs = 600
  const gateway = await buildGateway(t, {
    captureLogs: true,
    gatewayDatabase: async (url) => throughProxy(url, proxy),
    gate: { reservationTtlMs: ttlMs, sweepIntervalMs: 0, timeoutMs: 500 }
  })
  const { sql, createBudget, call } = gateway
  await createBudget({ scopeId: 'team-a', amount: '10', enforcement: 'hard' })
  const caller = { team: 'team-a' }
  // Make the line hot: a lease is taken
  let served = 0
  for (let wave = 0; wave < 3; wave++) {
    const statuses = await Promise.all(Array.from({ length: 10 }, async (_, i) => (await call(caller, { messages: [{ role: 'user', content: `warm ${wave}-${i}` }] })).statusCode))
    served += statuses.filter((s) => s === 200).length
  }
  await pause(100)
  const [lease] = await sql<Array<{ n: number, amount: string }>>`select count(*)::int as n, coalesce(sum(amount), 0)::text as amount from budget_reservations where lease`
  t.ok(lease!.n > 0, `a lease is live (${lease!.amount} held)`)

  // The gateway is cut off for longer than the TTL; meanwhile another process's sweeper runs.
  await proxy.cut()
  await pause(ttlMs + 200)
  const [{ swept }] = await sql<Array<{ swept: number }>>`select budget_sweep_expired(100) as swept` as any
  t.equal(swept, 1, 'the other process swept the lease (counted at what it held)')
  await proxy.restore()

  // The database is back: callers come again at once
  let after = 0
  const seen: number[] = []
  for (let wave = 0; wave < 20; wave++) {
    const statuses = await Promise.all(Array.from({ length: 4 }, async (_, i) => (await call(caller, { messages: [{ role: 'user', content: `after ${wave}-${i}` }] })).statusCode))
    after += statuses.filter((s) => s === 200).length
    seen.push(...statuses)
    await pause(15)
  }
  t.comment(JSON.stringify(seen))
  served += after
  t.comment(`served after the restore: ${after}`)
  await gateway.app.close()
  await pause(200)
  const [records] = await sql<Array<{ n: number }>>`select count(*)::int as n from budget_usage_records where source = 'gateway'`
  const expiredWarnings = gateway.logs.filter((line) => /expired/.test(line.msg ?? '')).length
  t.comment(`expiry warnings: ${expiredWarnings}`)
  t.equal(records!.n, served, 'every served call has its usage record (the sweep counted only what the lease held before)')
  // leftover rows are swept by the test (the process is gone)
  await sql`update budget_reservations set expires_at = now() - interval '1 second'`
  await sql`select budget_sweep_expired(100)`
  t.same(await findViolations(sql), [], 'invariants')
})
