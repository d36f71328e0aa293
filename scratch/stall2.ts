import { estimateChatCost } from '../lib/services/estimate.js'
import { DEFAULT_PRICES, createPriceBook } from '../lib/services/pricing.js'
import { preloadTokenizers } from '../lib/services/tokens.js'
const LIMIT = 1_048_576
const book = createPriceBook({ ...DEFAULT_PRICES })
preloadTokenizers(['gpt-4o'])
function fill (make: (n: number) => any) { let lo = 1, hi = 1; while (JSON.stringify(make(hi)).length < LIMIT) hi *= 2; while (lo < hi - 1) { const m = (lo + hi) >> 1; if (JSON.stringify(make(m)).length <= LIMIT) lo = m; else hi = m } return make(lo) }
let seed = 7; const rnd = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed }
const word = (n: number) => { let s = ''; for (let i = 0; i < n; i++) s += String.fromCharCode(97 + rnd() % 26); return s }
const shapes: Record<string, () => any> = {
  'tool calls, args with many keys': () => fill((n) => ({ model: 'gpt-4o', messages: [{ role: 'user', content: 'go' }, { role: 'assistant', content: null, tool_calls: Array.from({ length: n }, (_, i) => ({ id: `c${i}`, type: 'function', function: { name: 'f', arguments: JSON.stringify(Object.fromEntries(Array.from({ length: 30 }, (_, j) => [`k${j}`, j]))) } })) }], max_tokens: 10 })),
  'tool results, JSON': () => fill((n) => ({ model: 'gpt-4o', messages: [{ role: 'user', content: 'go' }, ...Array.from({ length: n }, (_, i) => ({ role: 'tool', tool_call_id: `c${i}`, content: JSON.stringify({ a: i, b: [1, 2, { c: 'x' }] }) }))], max_tokens: 10 })),
  'tiny messages, many extra keys': () => fill((n) => ({ model: 'gpt-4o', messages: Array.from({ length: n }, (_, i) => ({ role: 'user', content: 'x', z: 1 })), max_tokens: 10 })),
  'empty-object messages': () => fill((n) => ({ model: 'gpt-4o', messages: Array.from({ length: n }, () => ({})), max_tokens: 10 })),
  'text parts empty': () => fill((n) => ({ model: 'gpt-4o', messages: [{ role: 'user', content: Array.from({ length: n }, () => ({ type: 'text', text: '' })) }], max_tokens: 10 })),
  'image parts': () => fill((n) => ({ model: 'gpt-4o', messages: [{ role: 'user', content: Array.from({ length: n }, () => ({ type: 'image_url' })) }], max_tokens: 10 })),
  'many tool_calls empty args': () => fill((n) => ({ model: 'gpt-4o', messages: [{ role: 'assistant', content: null, tool_calls: Array.from({ length: n }, (_, i) => ({ id: `${i}`, function: { name: 'f' } })) }], max_tokens: 10 })),
  'tools with names only': () => fill((n) => ({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], tools: Array.from({ length: n }, (_, i) => ({ type: 'function', function: { name: `t${i}` } })), max_tokens: 10 })),
  'unique words one message': () => ({ model: 'gpt-4o', messages: [{ role: 'user', content: Array.from({ length: 90000 }, () => word(10)).join(' ') }], max_tokens: 10 }),
  'one piece emoji/ZWJ': () => ({ model: 'gpt-4o', messages: [{ role: 'user', content: '👨‍👩‍👧'.repeat(40000) }], max_tokens: 10 }),
  'combining marks': () => ({ model: 'gpt-4o', messages: [{ role: 'user', content: ('a' + '\u0301'.repeat(50) + ' ').repeat(9000) }], max_tokens: 10 }),
  'uppercase then lower (regex)': () => ({ model: 'gpt-4o', messages: [{ role: 'user', content: 'A'.repeat(500000) + '1' }], max_tokens: 10 }),
  'spaces': () => ({ model: 'gpt-4o', messages: [{ role: 'user', content: ' '.repeat(1000000) + 'x' }], max_tokens: 10 }),
  'space-newline alternating': () => ({ model: 'gpt-4o', messages: [{ role: 'user', content: ' \n'.repeat(500000) }], max_tokens: 10 }),
  'apostrophes': () => ({ model: 'gpt-4o', messages: [{ role: 'user', content: "a's".repeat(300000) }], max_tokens: 10 }),
  'digits': () => ({ model: 'gpt-4o', messages: [{ role: 'user', content: '1234567890'.repeat(100000) }], max_tokens: 10 }),
  'response_format big': () => fill((n) => ({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object', properties: Object.fromEntries(Array.from({ length: n }, (_, i) => [`p${i}`, { type: 'string' }])) } } }, max_tokens: 10 })),
  'tool_choice big': () => fill((n) => ({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], tools: [{ type: 'function', function: { name: 'f' } }], tool_choice: { type: 'function', function: { name: Array.from({ length: n }, () => word(8)).join(' ') } }, max_tokens: 10 })),
}
for (const [name, make] of Object.entries(shapes)) {
  const body = make()
  const size = JSON.stringify(body).length
  const cpus: number[] = []
  let err = ''
  for (let i = 0; i < 5; i++) {
    const c = process.cpuUsage()
    try { estimateChatCost(body, book) } catch (e) { err = (e as Error).message.slice(0, 50) }
    const u = process.cpuUsage(c); cpus.push((u.user + u.system) / 1000)
  }
  cpus.sort((a, b) => a - b)
  console.log(name.padEnd(36), (size / 1e6).toFixed(2), 'MB', 'median', cpus[2]!.toFixed(1), 'max', cpus[4]!.toFixed(1), err)
}
