// The example gateway stopped by a signal under load, as an orchestrator stops it: a real process on a
// real database, a real upstream, many calls in flight on a hot line (a lease held). It must drain:
// every call it served settled at its actual cost, its lease given back, and exit 0.
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import postgres from 'postgres'
import t from 'tap'
import { startEmbeddedPostgres } from '../examples/embedded-postgres.js'
import { fromUnits, toUnits } from '../lib/kernel/money.js'
import { PREFIX } from './fixtures/app.js'
import { createTestDatabase } from './fixtures/database.js'
import { startGatewayProcess, type GatewayProcess } from './fixtures/gateway-process.js'
import { findViolations } from './fixtures/invariants.js'
import { modeFromPrompt, modeMarker, startUpstream, type Usage } from './fixtures/upstream.js'

const ADMIN_TOKEN = 'gateway-stop-admin-token-0123456789'
const pause = async (ms: number) => await new Promise((resolve) => setTimeout(resolve, ms))

/** gpt-4o-mini's list price per 1M tokens, exact and rounded up to the last stored decimal, as the gate rounds. */
function priced (usage: Usage): string {
  const scaled = BigInt(usage.prompt_tokens) * toUnits('0.15') + BigInt(usage.completion_tokens) * toUnits('0.6')
  return fromUnits((scaled + 999_999n) / 1_000_000n)
}

interface Outcome {
  call: number
  /** A 200 whose answer arrived whole: a JSON completion, or a stream up to its [DONE]. */
  served: boolean
  status: number | null
  /** Why the call failed, when it did: TimeoutError is the client's own deadline. */
  error?: string
}

/** One call; `served` only when the whole answer arrived. A call the closing gateway turns away is not served. */
async function send (url: string, call: number, stream: boolean): Promise<Outcome> {
  try {
    const response = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-relay-team-id': 'platform' },
      body: JSON.stringify({
        model: 'gpt-4o-mini',
        messages: [{ role: 'user', content: `call ${call} ${modeMarker(stream ? 'sse' : 'json')}` }],
        max_tokens: 20,
        stream
      }),
      signal: AbortSignal.timeout(20_000)
    })
    const text = await response.text()
    const whole = stream ? text.endsWith('data: [DONE]\n\n') : (JSON.parse(text) as { choices?: unknown }).choices !== undefined
    return { call, served: response.status === 200 && whole, status: response.status }
  } catch (error) {
    return { call, served: false, status: null, error: (error as Error).name } // refused or cut: the connection is gone
  }
}

/** The embedded server's URL, from the postmaster.pid PostgreSQL writes in its folder (its 4th line is the port). */
async function embeddedUrl (dataDir: string): Promise<string> {
  const port = (await readFile(join(dataDir, 'postmaster.pid'), 'utf8')).split('\n')[3]
  return `postgres://postgres:postgres@127.0.0.1:${port}/postgres`
}

const RUNS = [
  { signal: 'SIGTERM', database: 'DATABASE_URL' },
  { signal: 'SIGINT', database: 'DATABASE_URL' },
  // No DATABASE_URL: the gateway's own embedded PostgreSQL, stopped by the gateway once Fastify has closed.
  { signal: 'SIGTERM', database: 'embedded' }
] as const

for (const { signal, database } of RUNS) {
  t.test(`${signal} under load on a hot line (${database}): exit 0, every served call settled at its actual cost, no reservation left`, async (t) => {
    const upstream = await startUpstream(t, { mode: modeFromPrompt('json'), chunkDelayMs: 15 })
    let databaseUrl: string
    let gateway: GatewayProcess
    let dataDir = ''
    if (database === 'embedded') {
      dataDir = await mkdtemp(join(tmpdir(), 'relaycore-gateway-stop-'))
      t.teardown(async () => await rm(dataDir, { recursive: true, force: true }))
      gateway = await startGatewayProcess({ DATABASE_URL: undefined, BUDGETS_DATA_DIR: dataDir, ADMIN_TOKEN, UPSTREAM_URL: upstream.url })
      t.teardown(async () => await gateway.stop()) // only if the test failed before the signal; stops its server too
      databaseUrl = await embeddedUrl(dataDir)
    } else {
      databaseUrl = await createTestDatabase(t)
      gateway = await startGatewayProcess({ DATABASE_URL: databaseUrl, ADMIN_TOKEN, UPSTREAM_URL: upstream.url })
      t.teardown(async () => await gateway.stop('SIGKILL')) // only if the test failed before the signal
    }
    let sql = postgres(databaseUrl, { onnotice: () => {} })
    t.teardown(async () => await sql.end())
    const created = await fetch(`${gateway.url}${PREFIX}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'platform', scopeType: 'team', scopeId: 'platform', amount: '10', currency: 'USD', period: 'monthly', startDate: '2024-01-01' })
    })
    t.equal(created.status, 201)

    // Twenty clients calling back to back (every other call a stream) until the gateway turns them away.
    let next = 0
    let stopped = false
    const outcomes: Outcome[] = []
    const clients = Array.from({ length: 20 }, async () => {
      while (!stopped) {
        const call = next++
        const outcome = await send(gateway.url, call, call % 2 === 0)
        outcomes.push(outcome)
        if (outcome.status !== 200) return // a closing gateway answers 503 or no longer accepts
      }
    })

    // The signal comes with calls in flight and a lease held (calls this close together make the line hot).
    const leased = async () => (await sql`select count(*)::int as n from budget_reservations where lease`)[0]!.n as number > 0
    for (const deadline = Date.now() + 20_000; !(upstream.count() >= 60 && await leased());) {
      if (Date.now() > deadline) throw new Error(`no lease under load: ${upstream.count()} upstream calls`)
      await pause(10)
    }
    const exited = once(gateway.child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>
    gateway.child.kill(signal)
    const signalledAt = Date.now()
    const [code, killedBy] = await exited
    t.comment(`exited ${Date.now() - signalledAt} ms after ${signal}`)
    stopped = true
    await Promise.all(clients)

    t.same({ code, killedBy }, { code: 0, killedBy: null }, `${signal}: the gateway drained and exited 0`)
    if (database === 'embedded') {
      // The gateway stopped its server (a running one would keep its postmaster.pid); read what it left with a server of our own.
      t.notOk(existsSync(join(dataDir, 'postmaster.pid')), 'the embedded PostgreSQL was stopped')
      await sql.end()
      const inspector = await startEmbeddedPostgres({ dataDir, persistent: true })
      t.teardown(async () => { await sql.end(); await inspector.stop() })
      sql = postgres(inspector.url, { onnotice: () => {} })
    }
    const served = outcomes.filter((outcome) => outcome.served)
    t.equal(served.length, upstream.count(), `every call that reached the upstream (${upstream.count()}) was served whole`)
    t.ok(served.some((outcome) => outcome.call % 2 === 0) && served.some((outcome) => outcome.call % 2 === 1), 'streams and JSON calls among them')

    // What each served call cost, from the usage the upstream reported for it (its prompt names the call).
    const usageOf = new Map(upstream.calls.map((call) => [/call (\d+) /.exec(String(call.body.messages[0]!.content))![1], call.usage]))
    const costs = served.map((outcome) => usageOf.get(String(outcome.call)))
    t.ok(costs.every((usage) => usage != null), 'the upstream reported usage for every served call')
    const expected = fromUnits(costs.reduce((sum, usage) => sum + toUnits(priced(usage!)), 0n))

    const [records] = await sql<Array<{ count: number, exact: boolean, total: string, byUsage: number }>>`
      select count(*)::int as count, coalesce(sum(amount), 0) = ${expected}::numeric as exact, coalesce(sum(amount), 0)::text as total,
             count(*) filter (where source = 'gateway' and metadata->>'costBasis' = 'usage')::int as "byUsage"
      from budget_usage_records`
    t.equal(records!.count, served.length, 'one usage record per served call')
    t.equal(records!.byUsage, served.length, 'each charged from its usage')
    t.ok(records!.exact, `recorded ${records!.total}, the served calls cost ${expected}`)
    t.same(await findViolations(sql), [], 'no reservation left (the lease was given back), caches equal records')
  })
}

t.test('a call still running when the stop grace ends is cut and charged its estimate; the gateway exits 0, nothing held', async (t) => {
  const upstream = await startUpstream(t, { mode: 'hang' })
  const databaseUrl = await createTestDatabase(t)
  const sql = postgres(databaseUrl, { onnotice: () => {} })
  t.teardown(async () => await sql.end())
  const gateway = await startGatewayProcess({ DATABASE_URL: databaseUrl, ADMIN_TOKEN, UPSTREAM_URL: upstream.url, STOP_GRACE_MS: '500' })
  t.teardown(async () => await gateway.stop('SIGKILL')) // only if the test failed before the signal
  await fetch(`${gateway.url}${PREFIX}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'platform', scopeType: 'team', scopeId: 'platform', amount: '10', currency: 'USD', period: 'monthly', startDate: '2024-01-01' })
  })
  const answer = send(gateway.url, 0, false) // the upstream never answers it
  await upstream.waitForCalls(1)
  const [held] = await sql<Array<{ amount: string }>>`select amount::text from budget_reservations`
  const exited = once(gateway.child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>
  gateway.child.kill('SIGTERM')
  const [code, killedBy] = await exited
  t.same({ code, killedBy }, { code: 0, killedBy: null }, 'exited 0 once the grace was over')
  const outcome = await answer
  t.ok(!outcome.served && outcome.error !== 'TimeoutError', `the gateway cut the call (${outcome.error ?? outcome.status}), before the client's 20 s deadline`)
  t.ok(upstream.calls[0]!.aborted, 'and the upstream call cancelled')
  const charged = await sql<Array<{ exact: boolean, amount: string, costBasis: string }>>`
    select amount = ${held!.amount}::numeric as exact, amount::text, metadata->>'costBasis' as "costBasis" from budget_usage_records`
  t.equal(charged.length, 1, 'charged once: cut while the upstream call was in flight, never free')
  t.match(charged[0], { exact: true, costBasis: 'estimate' }, `at the estimate held, ${held!.amount}`)
  t.same(await findViolations(sql), [], 'no reservation left')
})
