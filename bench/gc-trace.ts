// The gateway's garbage collections under the hot-line load (16 connections, 5 s after a 2 s warm-up),
// from --trace-gc, summed by kind: runs, milliseconds, and microseconds per call. A young-generation
// collection (Scavenge) that takes milliseconds, or a heap that grows at each one, means per-call
// objects live long enough to be promoted. PROFILE_ROUTE=ungated measures the same route without the gate.
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import autocannon from 'autocannon'
import { HOT_CALL as CALL, benchDatabase, hotLine } from './harness.js'

const database = await benchDatabase()
const child = spawn(process.execPath, ['--trace-gc', '--import', 'tsx', new URL('./gateway-server.ts', import.meta.url).pathname], { env: { ...process.env, DATABASE_URL: database.url }, stdio: ['ignore', 'pipe', 'inherit'] })
let url = ''
const gcLines: string[] = []
let recording = false
const lines = createInterface({ input: child.stdout })
await new Promise<void>((resolve) => {
  lines.on('line', (line) => {
    const found = /^listening (\S+)/.exec(line)?.[1]
    if (found !== undefined) { url = found; resolve() }
    if (recording && line.includes('ms: ')) gcLines.push(line)
  })
})
await hotLine(url)
const path = process.env.PROFILE_ROUTE === 'ungated' ? '/ungated/v1/chat/completions' : '/v1/chat/completions'
await autocannon({ url: `${url}${path}`, connections: 16, duration: 2, ...CALL })
recording = true
const result = await autocannon({ url: `${url}${path}`, connections: 16, duration: 5, ...CALL })
recording = false
child.kill('SIGTERM')
const kinds = new Map<string, { count: number, ms: number }>()
for (const line of gcLines) {
  const kind = /(Scavenge|Mark-Compact|Mark-sweep|Minor Mark-Compact)/i.exec(line)?.[1] ?? 'other'
  const ms = Number(/, ([\d.]+) \/ [\d.]+ ms/.exec(line)?.[1] ?? /([\d.]+) ms: /.exec(line)?.[1] ?? 0)
  const entry = kinds.get(kind) ?? { count: 0, ms: 0 }
  entry.count++; entry.ms += ms
  kinds.set(kind, entry)
}
console.log(result.requests.total, 'calls', [...kinds].map(([k, v]) => `${k}: ${v.count} runs, ${v.ms.toFixed(1)} ms, ${(v.ms * 1000 / result.requests.total).toFixed(1)} us/call`).join('; '))
console.log(gcLines.slice(0, 3).join('\n')); console.log(gcLines.slice(-3).join('\n'))
await database.close()
