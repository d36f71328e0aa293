// Real gateway process + /health probe: the longest /health wait while one adversarial body is in flight.
import { startGatewayProcess } from '../test/fixtures/gateway-process.js'
import { request } from 'undici'
const LIMIT = 1_048_576
function fill (make: (n: number) => any) { let lo = 1, hi = 1; while (JSON.stringify(make(hi)).length < LIMIT) hi *= 2; while (lo < hi - 1) { const m = (lo + hi) >> 1; if (JSON.stringify(make(m)).length <= LIMIT) lo = m; else hi = m } return make(lo) }
const shapes: Record<string, any> = {
  'plain prose 1MB': fill((n) => ({ model: 'gpt-4o', messages: [{ role: 'user', content: 'The quick brown fox jumps over the lazy dog. '.repeat(n) }], max_tokens: 10 })),
  'claude prose 1MB': fill((n) => ({ model: 'claude-3-5-sonnet', messages: [{ role: 'user', content: 'The quick brown fox jumps over the lazy dog. '.repeat(n) }], max_tokens: 10 })),
  'tiny': { model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }], max_tokens: 10 },
  "a's repeated": fill((n) => ({ model: 'gpt-4o', messages: [{ role: 'user', content: "a's".repeat(n) }], max_tokens: 10 })),
  "x'd repeated": fill((n) => ({ model: 'gpt-4o', messages: [{ role: 'user', content: "x'd".repeat(n) }], max_tokens: 10 })),
  'empty-object messages': fill((n) => ({ model: 'gpt-4o', messages: Array.from({ length: n }, () => ({})), max_tokens: 10 })),
  'combining marks': fill((n) => ({ model: 'gpt-4o', messages: [{ role: 'user', content: ('a' + '\u0301'.repeat(50) + ' ').repeat(n) }], max_tokens: 10 })),
  'response_format big': fill((n) => ({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object', properties: Object.fromEntries(Array.from({ length: n }, (_, i) => [`p${i}`, { type: 'string' }])) } } }, max_tokens: 10 })),
  'tiny messages extra key': fill((n) => ({ model: 'gpt-4o', messages: Array.from({ length: n }, () => ({ role: 'user', content: 'x', z: 1 })), max_tokens: 10 })),
  'claude empty-object messages': fill((n) => ({ model: 'claude-3-5-sonnet', messages: Array.from({ length: n }, () => ({})), max_tokens: 10 })),
}
const gw = await startGatewayProcess({ DATABASE_URL: process.env.DATABASE_URL, SWEEP_INTERVAL_MS: '0', UPSTREAM_URL: 'http://127.0.0.1:47111/v1' })
try {
  // warm up: tokenizer load, first call
  await request(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-relay-team-id': 'stall' }, body: JSON.stringify(shapes.tiny) }).then((r) => r.body.text())
  for (const [name, body] of Object.entries(shapes)) {
    const text = JSON.stringify(body)
    for (let run = 0; run < 3; run++) {
      let done = false
      let worst = 0
      const probe = (async () => {
        while (!done) {
          const s = performance.now()
          await request(`${gw.url}/health`).then((r) => r.body.text())
          worst = Math.max(worst, performance.now() - s)
          await new Promise((r) => setTimeout(r, 1))
        }
      })()
      await new Promise((r) => setTimeout(r, 30))
      const s = performance.now()
      const res = await request(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-relay-team-id': 'stall' }, body: text })
      const answer = await res.body.text()
      const took = performance.now() - s
      await new Promise((r) => setTimeout(r, 30))
      done = true
      await probe
      console.log(name.padEnd(30), (text.length / 1e6).toFixed(2), 'MB', 'status', res.statusCode, 'post', took.toFixed(0), 'ms', 'worst /health', worst.toFixed(1), 'ms', res.statusCode >= 400 ? answer.slice(0, 100) : '')
    }
  }
} finally { await gw.stop() }
