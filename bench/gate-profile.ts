// Where the gateway process spends its CPU on a hot line: bench/gateway-server.ts loaded with autocannon
// (16 connections, one hot team + organization line, as bench/gate.ts loads it), the gated route and the
// same route ungated one after the other, each profiled alone (the V8 profiler in the process, started
// after warm-up). Prints the CPU per call of each, and the functions by what they add per gated call:
// self time per call on the gated route less the same on the ungated one. What to change in the gate
// starts from these entries. BENCH_SECONDS sets each load's length (10 s); PROFILE_TOP the rows (25);
// PROFILE_SAVE=/tmp/x writes both profiles (/tmp/x-gated.cpuprofile, /tmp/x-ungated.cpuprofile) for Chrome's DevTools.
import { once } from 'node:events'
import { writeFile } from 'node:fs/promises'
import { relative } from 'node:path'
import autocannon from 'autocannon'
import postgres from 'postgres'
import { HOT_CALL as CALL, benchDatabase, fmt, hotLine, startBenchGateway } from './harness.js'

const SECONDS = Number(process.env.BENCH_SECONDS ?? 10)
const TOP = Number(process.env.PROFILE_TOP ?? 25)

interface ProfileNode { id: number, callFrame: { functionName: string, url: string, lineNumber: number } }
interface Profile { nodes: ProfileNode[], samples: number[], timeDeltas: number[] }

const database = await benchDatabase()
const gateway = await startBenchGateway(database.url)
const sql = postgres(database.url, { max: 1 })
/** The database's transactions so far, once every backend has reported its counts (they do within a second of going idle). */
const transactions = async () => {
  await new Promise((resolve) => setTimeout(resolve, 1500))
  const [row] = await sql<Array<{ n: string }>>`select (xact_commit + xact_rollback)::text as n from pg_stat_database where datname = current_database()`
  return Number(row!.n)
}
const post = async (path: string, body: unknown = {}, headers: Record<string, string> = {}) => {
  const response = await fetch(`${gateway.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) })
  if (!response.ok) throw new Error(await response.text())
  return await response.json() as unknown
}
const cpuMicros = async () => ((await (await fetch(`${gateway.url}/bench/cpu`)).json()) as { micros: number }).micros
await hotLine(gateway.url)

/** Loads `path` for SECONDS under the profiler: its calls, the process's CPU per call, and self microseconds per call by function. */
async function profiled (path: string) {
  await autocannon({ url: `${gateway.url}${path}`, connections: 16, duration: 2, ...CALL }) // warm up
  const transactionsBefore = await transactions()
  const before = await cpuMicros()
  await post('/bench/profile/start')
  const result = await autocannon({ url: `${gateway.url}${path}`, connections: 16, duration: SECONDS, ...CALL })
  const profile = await post('/bench/profile/stop') as Profile
  if (process.env.PROFILE_SAVE !== undefined) await writeFile(`${process.env.PROFILE_SAVE}-${path.includes('ungated') ? 'ungated' : 'gated'}.cpuprofile`, JSON.stringify(profile))
  const cpu = (await cpuMicros() - before) / result.requests.total
  const perCallTransactions = (await transactions() - transactionsBefore) / result.requests.total
  const selfMicros = new Map<number, number>()
  profile.samples.forEach((node, index) => selfMicros.set(node, (selfMicros.get(node) ?? 0) + (profile.timeDeltas[index] ?? 0)))
  const perCall = new Map<string, number>()
  for (const node of profile.nodes) {
    const micros = selfMicros.get(node.id) ?? 0
    if (micros === 0) continue
    const name = `${node.callFrame.functionName || '(anonymous)'} ${where(node)}`.trim()
    perCall.set(name, (perCall.get(name) ?? 0) + micros / result.requests.total)
  }
  return { calls: result.requests.total, failed: result.non2xx + result.errors, cpu, perCall, transactions: perCallTransactions }
}

/** A function's place: its file (relative, or its package's path) and line, as the profile gives them. */
function where (node: ProfileNode): string {
  const url = node.callFrame.url.replace(/^file:\/\//, '')
  if (url === '') return ''
  const path = url.includes('node_modules/') ? url.slice(url.lastIndexOf('node_modules/') + 13) : url.startsWith('/') ? relative(process.cwd(), url) : url
  return node.callFrame.lineNumber > 0 ? `${path}:${node.callFrame.lineNumber + 1}` : path
}

const ungated = await profiled('/ungated/v1/chat/completions')
const gated = await profiled('/v1/chat/completions')
gateway.child.kill('SIGTERM')
await once(gateway.child, 'exit')
await sql.end()
await database.close()

// Idle is time the process waited, not CPU: left out of the per-call figures.
const added = [...new Set([...gated.perCall.keys(), ...ungated.perCall.keys()])].filter((name) => name !== '(idle)')
  .map((name) => ({ name, gated: gated.perCall.get(name) ?? 0, added: (gated.perCall.get(name) ?? 0) - (ungated.perCall.get(name) ?? 0) }))
  .sort((a, b) => b.added - a.added)
const gateMicros = gated.cpu - ungated.cpu
process.stdout.write([
  `16 connections, ${SECONDS} s each: ungated ${ungated.calls} calls (${ungated.failed} failed), gated ${gated.calls} calls (${gated.failed} failed)`,
  `process CPU per call: ungated ${fmt(ungated.cpu, 1)} µs, gated ${fmt(gated.cpu, 1)} µs; the gate adds ${fmt(gateMicros, 1)} µs (${fmt(gated.cpu / ungated.cpu)}x)`,
  `transactions per gated call: ${fmt(gated.transactions, 3)} (the ungated route: ${fmt(ungated.transactions, 3)})`,
  '',
  '| µs per gated call | added by the gate | function |', '|---|---|---|',
  ...added.slice(0, TOP).map((entry) => `| ${fmt(entry.gated, 1)} | ${fmt(entry.added, 1)} | ${entry.name} |`),
  ''
].join('\n'))
