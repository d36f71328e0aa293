// Review ra: two real gateway processes on a hot team+organization line, streaming, with hang-ups,
// an optional definition change mid-load and an optional SIGTERM/SIGKILL of one process.
// Run: DATABASE_URL=postgres://postgres@127.0.0.1:5432/test npx tsx review/ra-load.ts
// env: CHANGE=none|period|timezone|startDate|amount|blockall|move|delete|archive  STOP=none|SIGTERM|SIGKILL
//      TTL (RESERVATION_TTL_MS), SECONDS, CLIENTS, ORG_AMOUNT, TEAM_AMOUNT, MODES (comma list), CHUNK_MS
import postgres from 'postgres'
import { createTestDatabase } from '../test/fixtures/database.js'
import { startGatewayProcess, type GatewayProcess } from '../test/fixtures/gateway-process.js'
import { findViolations, waitForSettled } from '../test/fixtures/invariants.js'
import { modeFromPrompt, modeMarker, startUpstream, type UpstreamMode } from '../test/fixtures/upstream.js'

const teardowns: Array<() => unknown> = []
const t = { teardown: (fn: () => unknown) => { teardowns.push(fn) } }
const pause = async (ms: number) => await new Promise((resolve) => setTimeout(resolve, ms))
const env = process.env
const CHANGE = env.CHANGE ?? 'none'
const STOP = env.STOP ?? 'none'
const TTL = env.TTL ?? '3000'
const SECONDS = Number(env.SECONDS ?? 6)
const CLIENTS = Number(env.CLIENTS ?? 24)
const MODES = (env.MODES ?? 'sse,sse,json,sse-over-limit,json-pricier').split(',') as UpstreamMode[]
const TOKEN = 'review-ra-admin-token-0123456789'

async function main () {
  const upstream = await startUpstream(t as any, { mode: modeFromPrompt('sse'), chunkDelayMs: Number(env.CHUNK_MS ?? 10) })
  const url = await createTestDatabase(t)
  const sql = postgres(url, { onnotice: () => {}, connection: { application_name: 'review-harness' } })
  const logs: string[] = []
  const procs: GatewayProcess[] = []
  for (let i = 0; i < 2; i++) {
    const gw = await startGatewayProcess({ DATABASE_URL: url, ADMIN_TOKEN: TOKEN, UPSTREAM_URL: upstream.url, RESERVATION_TTL_MS: TTL, SWEEP_INTERVAL_MS: '200', STOP_GRACE_MS: '3000' })
    gw.child.stderr!.on('data', (d: Buffer) => logs.push(`[p${i}] ${d.toString()}`))
    gw.child.stdout!.on('data', (d: Buffer) => logs.push(`[p${i}] ${d.toString()}`))
    procs.push(gw)
  }
  const adminCall = async (method: string, path: string, body?: unknown) => {
    const r = await fetch(`${procs[0]!.url}/api/v1/budgets${path}`, { method, headers: { authorization: `Bearer ${TOKEN}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) }, body: body === undefined ? undefined : JSON.stringify(body) })
    const text = await r.text()
    return { status: r.status, json: text === '' ? null : JSON.parse(text) }
  }
  const create = async (body: Record<string, unknown>) => {
    const r = await adminCall('POST', '', { currency: 'USD', period: 'monthly', startDate: '2024-01-01', enforcement: 'hard', ...body })
    if (r.status !== 201) throw new Error(JSON.stringify(r.json))
    return r.json.id as string
  }
  const org = await create({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: env.ORG_AMOUNT ?? '0.05' })
  const org2 = await create({ name: 'org2', scopeType: 'organization', scopeId: 'acme2', amount: '100' })
  const team = await create({ name: 'team', scopeType: 'team', scopeId: 'platform', amount: env.TEAM_AMOUNT ?? '0.04', parentId: org })

  interface Call { proc: number, sentAt: number, headersAt: number, status: number, served: boolean, aborted: boolean, mode: string, budgetId: string | null }
  const calls: Call[] = []
  let running = true
  let stopped = -1
  const start = Date.now()
  let n = 0
  async function client (c: number) {
    while (running) {
      const i = n++
      const proc = stopped === 0 ? 1 : i % 2
      const mode = MODES[i % MODES.length]!
      const stream = mode.startsWith('sse')
      const controller = new AbortController()
      const giveUp = setTimeout(() => { call.aborted = true; controller.abort() }, Number(env.CLIENT_TIMEOUT_MS ?? 4000))
      const hangUp = i % 7 === 3 && stream
      const call: Call = { proc, sentAt: Date.now(), headersAt: 0, status: 0, served: false, aborted: false, mode, budgetId: null }
      try {
        const r = await fetch(`${procs[proc]!.url}/v1/chat/completions`, {
          method: 'POST', signal: controller.signal,
          headers: { 'content-type': 'application/json', 'x-relay-team-id': 'platform', 'x-relay-organization-id': 'acme' },
          body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: `${modeMarker(mode)} c${c} call ${i}` }], max_tokens: 30, stream, ...(stream ? { stream_options: { include_usage: true } } : {}) })
        })
        call.headersAt = Date.now(); call.status = r.status; call.budgetId = r.headers.get('x-budget-id')
        calls.push(call)
        if (hangUp && r.status === 200) {
          const reader = r.body!.getReader(); await reader.read(); await reader.read(); controller.abort(); call.aborted = true; call.served = true
        } else {
          const text = await r.text()
          call.served = r.status === 200
        }
      } catch (e) {
        if (call.status === 0) { call.status = -1; calls.push(call) }
        await pause(20)
      }
      clearTimeout(giveUp)
      if (call.status === 402) await pause(30)
    }
  }
  const clients = Array.from({ length: CLIENTS }, (_, c) => client(c))
  let changedAt = 0
  const changer = (async () => {
    await pause(SECONDS * 400)
    if (CHANGE === 'none') return
    const t0 = Date.now()
    let r: any
    switch (CHANGE) {
      case 'period': r = await adminCall('PUT', `/${team}`, { period: 'daily' }); break
      case 'timezone': r = await adminCall('PUT', `/${team}`, { timezone: 'Pacific/Kiritimati' }); break
      case 'startDate': r = await adminCall('PUT', `/${team}`, { startDate: new Date().toISOString().slice(0, 10) }); break
      case 'amount': r = await adminCall('PUT', `/${team}`, { amount: '0.000001' }); break
      case 'blockall': r = await adminCall('PUT', `/${team}`, { alerts: [{ threshold: 0.0001, actions: ['block-all'] }] }); break
      case 'move': r = await adminCall('PUT', `/${team}`, { parentId: org2 }); break
      case 'delete': r = await adminCall('DELETE', `/${org}?cascade=true`); break
      case 'archive': r = await adminCall('DELETE', `/${team}`); break
    }
    changedAt = Date.now()
    console.log(`change ${CHANGE}: ${r.status} in ${changedAt - t0} ms ${r.status >= 300 ? JSON.stringify(r.json) : ''}`)
  })()
  const faulter = (async () => {
    const FAULT = env.FAULT ?? 'none'
    if (FAULT === 'none') return
    await pause(SECONDS * 300)
    if (FAULT === 'terminate') {
      let killed = 0
      const until = Date.now() + 2500
      while (Date.now() < until) {
        const rows = await sql`select pg_terminate_backend(pid) as ok from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid() and backend_type = 'client backend' and application_name <> 'review-harness'`
        killed += rows.length
        await pause(150 + Math.random() * 200)
      }
      console.log(`terminated ${killed} backends`)
    }
    if (FAULT === 'lock') {
      const holdMs = Number(env.LOCK_MS ?? 6000)
      const locking = sql.begin(async (tx) => {
        await tx`select 1 from budget_status_cache where budget_id = ${team} for update`
        await pause(holdMs)
      })
      await pause(200)
      const t0 = Date.now()
      const r = await adminCall('PUT', `/${team}`, { amount: '0.045' })
      console.log(`admin PUT under a ${holdMs} ms window-row lock: ${r.status} in ${Date.now() - t0} ms ${JSON.stringify(r.json).slice(0, 200)}`)
      const t1 = Date.now()
      const u = await adminCall('POST', `/${team}/usage`, { amount: '0.00001', currency: 'USD', source: 'review' })
      console.log(`admin POST usage under the lock: ${u.status} in ${Date.now() - t1} ms ${JSON.stringify(u.json).slice(0, 200)}`)
      await locking
    }
  })()
  const stopper = (async () => {
    if (STOP === 'none') return
    await pause(SECONDS * 600)
    stopped = 0
    const t0 = Date.now()
    procs[0]!.child.kill(STOP as NodeJS.Signals)
    const [code, signal] = await new Promise<[number | null, string | null]>((resolve) => procs[0]!.child.once('exit', (c, s) => resolve([c, s])))
    console.log(`${STOP}: process 0 exited code=${code} signal=${signal} after ${Date.now() - t0} ms`)
  })()
  await pause(SECONDS * 1000)
  running = false
  await Promise.all([...clients, changer, stopper, faulter])
  const statuses: Record<string, number> = {}
  for (const c of calls) statuses[c.status] = (statuses[c.status] ?? 0) + 1
  console.log('statuses', JSON.stringify(statuses), 'elapsed', Date.now() - start)
  const lat = calls.filter((c) => c.headersAt > 0).map((c) => c.headersAt - c.sentAt).sort((a, b) => a - b)
  console.log('header latency p50/p99/max', lat[Math.floor(lat.length / 2)], lat[Math.floor(lat.length * 0.99)], lat[lat.length - 1])
  const settledErr = await waitForSettled(sql, Number(TTL) + 15_000).then(() => null, (e: Error) => e.message)
  console.log('settled:', settledErr ?? 'ok')
  const served = calls.filter((c) => c.status === 200).length
  const [{ gw, expired }] = await sql<any[]>`select count(*) filter (where source = 'gateway')::int as gw, count(*) filter (where source <> 'gateway')::int as expired from budget_usage_records`
  console.log(`served(200)=${served} records gateway=${gw} other=${expired} upstream calls=${upstream.count()}`)
  const others = await sql`select source, amount::text, description, metadata, occurred_at from budget_usage_records where source <> 'gateway'`
  for (const o of others) console.log('other record:', JSON.stringify(o))
  const totals = await sql`select b.name, b.amount::text, b.deleted_at is not null as archived, c.period_start, c.current_amount::text, c.reserved_amount::text from budget_status_cache c join budget_definitions b on b.id = c.budget_id order by b.name, c.period_start`
  for (const row of totals) console.log(JSON.stringify(row))
  if (changedAt > 0) {
    const late = calls.filter((c) => c.status === 200 && c.sentAt > changedAt + 100)
    console.log(`admitted (200) with sentAt > change+100ms: ${late.length}; budgetIds: ${JSON.stringify([...new Set(late.map((c) => c.budgetId))])}`)
    const lateAlloc = await sql`select a.budget_id, b.name, count(*)::int as n, max(a.occurred_at) as last from budget_usage_allocations a join budget_definitions b on b.id = a.budget_id where a.occurred_at > ${new Date(changedAt + 100)} group by 1, 2`
    console.log('allocations dated > change+100ms:', JSON.stringify(lateAlloc))
  }
  console.log('violations:', JSON.stringify(await findViolations(sql), null, 1))
  const all = logs.join('')
  for (const pat of ['40P01', 'deadlock', 'giving back', '"statusCode":500', 'settling a gated call failed', 'renewing', 'expired', 'error']) {
    const count = all.split(pat).length - 1
    if (count > 0) console.log(`log "${pat}": ${count}`)
  }
  if (env.SHOW_LOGS) console.log(all.slice(-6000))
  if (env.LOGFILE) (await import('node:fs')).writeFileSync(env.LOGFILE, all)
  for (const p of procs) await p.stop('SIGKILL')
  await sql.end()
  for (const fn of teardowns.reverse()) await fn()
}
main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1) })
