// Reviewer rb: bodies under the 1 MiB body limit whose estimate holds the event loop far past 20 ms
// (CPU time of the synchronous estimateChatCost, median of 5 runs; the machine is shared: see the report).
import t from 'tap'
import { estimateChatCost } from '../lib/services/estimate.js'
import { DEFAULT_PRICES, createPriceBook } from '../lib/services/pricing.js'
import { preloadTokenizers } from '../lib/services/tokens.js'

const LIMIT = 1_048_576
const book = createPriceBook(DEFAULT_PRICES)
preloadTokenizers(['gpt-4o'])
const fill = (make: (n: number) => Record<string, unknown>) => {
  let lo = 1; let hi = 1
  while (Buffer.byteLength(JSON.stringify(make(hi))) < LIMIT) hi *= 2
  while (lo < hi - 1) { const m = (lo + hi) >> 1; if (Buffer.byteLength(JSON.stringify(make(m))) <= LIMIT) lo = m; else hi = m }
  return make(lo)
}
const SHAPES: Array<[string, Record<string, unknown>]> = [
  ["\"a's\" repeated (one piece met again and again: 1 unit each, ~2 us each in the library)", fill((n) => ({ model: 'gpt-4o', messages: [{ role: 'user', content: "a's".repeat(n) }], max_tokens: 10 }))],
  ['response_format with many properties', fill((n) => ({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object', properties: Object.fromEntries(Array.from({ length: n }, (_, i) => [`p${i}`, { type: 'string' }])) } } }, max_tokens: 10 }))],
  ['tiny messages with an extra key', fill((n) => ({ model: 'gpt-4o', messages: Array.from({ length: n }, () => ({ role: 'user', content: 'x', z: 1 })), max_tokens: 10 }))],
  ['combining marks', fill((n) => ({ model: 'gpt-4o', messages: [{ role: 'user', content: ('a' + '\u0301'.repeat(50) + ' ').repeat(n) }], max_tokens: 10 }))]
]

for (const [name, body] of SHAPES) {
  t.test(name, async (t) => {
    const cpu: number[] = []
    for (let i = 0; i < 5; i++) {
      const start = process.cpuUsage()
      estimateChatCost(body, book)
      const used = process.cpuUsage(start)
      cpu.push((used.user + used.system) / 1000)
    }
    const median = cpu.sort((a, b) => a - b)[2]!
    t.ok(median <= 20, `${(Buffer.byteLength(JSON.stringify(body)) / 1e6).toFixed(2)} MB: median CPU ${median.toFixed(1)} ms <= 20 ms`)
  })
}
