// pg_terminate_backend on the gateway's connections mid-load crashed the process with an unhandled
// promise rejection (CONNECTION_CLOSED / ECONNRESET from postgres.js's per-connection array-type read),
// seen in 4 of 4 runs of a two-process load harness: one process exited, its lease was swept as spend. Here: the plugin in this process, calls streaming, every backend of the database
// terminated every ~250 ms for 2.5 s; any unhandled rejection is caught and reported.
import postgres from 'postgres'
import t from 'tap'
import { buildGateway } from './fixtures/gateway.js'

const pause = async (ms: number) => await new Promise((resolve) => setTimeout(resolve, ms))

t.test('terminating the gateway\'s PostgreSQL backends under load leaves no unhandled rejection', async (t) => {
  const unhandled: unknown[] = []
  const onUnhandled = (error: unknown) => { unhandled.push(error) }
  process.on('unhandledRejection', onUnhandled)
  t.teardown(() => { process.off('unhandledRejection', onUnhandled) })
  const gateway = await buildGateway(t, { gatewayDatabase: async (url) => url, mockTokenDelayMs: 10, gate: { reservationTtlMs: 15_000, sweepIntervalMs: 200 } })
  const killer = postgres(gateway.url, { max: 1, onnotice: () => {}, connection: { application_name: 'killer' } })
  t.teardown(async () => await killer.end())
  await gateway.createBudget({ scopeId: 'team-a', amount: '10', enforcement: 'hard' })
  let running = true
  const statuses: Record<string, number> = {}
  const clients = Array.from({ length: 12 }, async (_, c) => {
    for (let i = 0; running; i++) {
      const response = await gateway.call({ team: 'team-a' }, { stream: i % 2 === 0, messages: [{ role: 'user', content: `c${c} ${i}` }] }).catch(() => ({ statusCode: -1 }))
      statuses[response.statusCode] = (statuses[response.statusCode] ?? 0) + 1
    }
  })
  await pause(1000)
  let killed = 0
  for (const until = Date.now() + 2500; Date.now() < until;) {
    const rows = await killer`select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()
      and backend_type = 'client backend' and application_name <> 'killer'`
    killed += rows.length
    await pause(150 + Math.random() * 200)
  }
  await pause(1000)
  running = false
  await Promise.all(clients)
  t.comment(`terminated ${killed} backends; statuses ${JSON.stringify(statuses)}`)
  for (const error of unhandled) {
    const e = error as Record<string, unknown>
    t.comment(`unhandled: ${String(e?.message)} code=${String(e?.code)} keys=${Object.keys(e ?? {}).join(',')} query=${String((e as { query?: unknown }).query ?? '')}`)
  }
  t.equal(unhandled.length, 0, 'no unhandled rejection (the example gateway exits on one)')
})
