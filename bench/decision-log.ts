// The decision log's cost on the gate's hot path (issue 21, item 3: at least 0.95x with the log on).
// Two gateway processes on one database, one with the log (the default) and one without
// (BENCH_DECISIONS=off: the gate as before the log), loaded in turn with the same calls, alternating
// off/on several times so drift in the machine falls on both: an admitting hot line (team + organization,
// nothing to note) and a refusing line (a team whose budget cannot hold any call: every call is a 402
// budget_exceeded the log writes). Afterwards the log holds one row per refusal the logging gateway
// answered, less any it dropped (counted in its metric).
import { once } from 'node:events'
import autocannon from 'autocannon'
import type { Sql } from 'postgres'
import { BENCH_ADMIN_TOKEN } from './gateway-server.js'
import { fmt, startBenchGateway } from './harness.js'

const PREFIX = '/api/v1/budgets'
const BODY = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 20 })

const cpuMicros = async (url: string) => ((await (await fetch(`${url}/bench/cpu`)).json()) as { micros: number }).micros

async function rate (url: string, team: string, connections: number, seconds: number): Promise<{ perSecond: number, ok: number, refused: number, cpuPerCall: number }> {
  const cpuBefore = await cpuMicros(url)
  const result = await autocannon({ url: `${url}/v1/chat/completions`, connections, duration: seconds, method: 'POST', headers: { 'content-type': 'application/json', 'x-relay-team-id': team }, body: BODY })
  // Includes the batches the logging gateway writes during the run (its flushes run on the same process).
  const cpuPerCall = (await cpuMicros(url) - cpuBefore) / result.requests.total
  return { perSecond: result.requests.total / seconds, ok: result['2xx'], refused: result.non2xx, cpuPerCall }
}

export async function decisionLogRows (databaseUrl: string, sql: Sql, connections: number, seconds: number, rounds = Number(process.env.BENCH_ROUNDS ?? 4)): Promise<{ rows: string[], summary: string }> {
  const on = await startBenchGateway(databaseUrl)
  const off = await startBenchGateway(databaseUrl, { BENCH_DECISIONS: 'off' })
  const admin = async (body: unknown) => {
    const response = await fetch(`${on.url}${PREFIX}`, { method: 'POST', headers: { authorization: `Bearer ${BENCH_ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify(body) })
    if (!response.ok) throw new Error(await response.text())
    return await response.json() as { id: string }
  }
  const org = await admin({ name: 'log org', scopeType: 'organization', scopeId: 'log-org', amount: '100000000', currency: 'USD', period: 'monthly', startDate: '2024-01-01' })
  await admin({ name: 'log hot team', scopeType: 'team', scopeId: 'log-hot', parentId: org.id, amount: '100000000', currency: 'USD', period: 'monthly', startDate: '2024-01-01' })
  await admin({ name: 'log refused team', scopeType: 'team', scopeId: 'log-refused', parentId: org.id, amount: '0.0000001', currency: 'USD', period: 'monthly', startDate: '2024-01-01' })

  const lines = [['admitting hot line (team + organization)', 'log-hot'], ['refusing line (every call a 402 the log writes)', 'log-refused']] as const
  const rows: string[] = []
  const ratios: number[] = []
  let refusalsLogged = 0
  for (const [label, team] of lines) {
    for (const gateway of [off, on]) await rate(gateway.url, team, connections, 2) // warm up both
    let offTotal = 0
    let onTotal = 0
    const roundRatios: number[] = []
    const cpu = { off: 0, on: 0 }
    for (let round = 0; round < rounds; round++) {
      // Off first in even rounds, on first in odd ones: neither always runs on the other's heels.
      const measured = new Map<typeof on, number>()
      for (const gateway of round % 2 === 0 ? [off, on] : [on, off]) {
        const run = await rate(gateway.url, team, connections, seconds)
        measured.set(gateway, run.perSecond)
        cpu[gateway === on ? 'on' : 'off'] += run.cpuPerCall / rounds
        if (gateway === on && team === 'log-refused') refusalsLogged += run.refused
      }
      offTotal += measured.get(off)!
      onTotal += measured.get(on)!
      roundRatios.push(measured.get(on)! / measured.get(off)!)
    }
    const ratio = onTotal / offTotal
    ratios.push(ratio)
    const spread = `rounds ${fmt(Math.min(...roundRatios))} to ${fmt(Math.max(...roundRatios))}`
    rows.push(`| ${label}, ${connections} connections: log off | ${fmt(offTotal / rounds, 0)} calls/s | 1.00 |`)
    rows.push(`| the same with the decision log on | ${fmt(onTotal / rounds, 0)} calls/s | ${fmt(ratio)} of log off (${spread}) |`)
    rows.push(`| gateway CPU per call on this line: log off / on | ${fmt(cpu.off, 0)} / ${fmt(cpu.on, 0)} µs | ${fmt(cpu.on / cpu.off)} |`)
  }
  const metrics = await (await fetch(`${on.url}${PREFIX}/metrics`, { headers: { authorization: `Bearer ${BENCH_ADMIN_TOKEN}` } })).text()
  const dropped = Number(/^relaycore_budget_decision_log_dropped_total (\S+)$/m.exec(metrics)?.[1] ?? 'NaN')
  for (const gateway of [on, off]) { gateway.child.kill('SIGTERM'); await once(gateway.child, 'exit') } // closing flushes the log
  const [stored] = await sql<Array<{ n: number }>>`select count(*)::int as n from budget_decision_log where team_id = 'log-refused'`
  // Warm-up refusals of the logging gateway are stored too: at least what the measured runs answered.
  const complete = stored!.n + dropped >= refusalsLogged
  return {
    rows,
    summary: `decision log: ${stored!.n} refusals stored, ${dropped} dropped, ${refusalsLogged} answered in the measured runs (${complete ? 'all accounted for' : 'NOT all accounted for'}); ` +
      `log on >= 0.95x log off -> ${ratios.every((ratio) => ratio >= 0.95) ? 'met' : 'NOT met'} (${ratios.map((ratio) => fmt(ratio)).join(', ')})`
  }
}
