// The estimate's prompt tokens are an upper bound on what OpenAI bills, and a tight one: over a seeded
// corpus of 1,200 varied requests, never under the actual count and at most 5% over at the median.
import { createRequire } from 'node:module'
import t from 'tap'
import { worstCaseTokens } from '../lib/pricing/estimate.js'
import type { ModelPrice } from '../lib/pricing/pricing.js'
import { MAX_TOKENIZED_WORK, encodingFor, tokenCounter } from '../lib/pricing/tokens.js'
import { openAICounter, openAIPromptTokens, type OracleBody } from './fixtures/openai-tokens.js'
import { tightness, tightnessRows } from './fixtures/tightness.js'

const PRICE: ModelPrice = { input: '1', output: '1', maxOutputTokens: 16_384, maxImageTokens: 1445 }
const estimate = async (body: OracleBody): Promise<number> => (await worstCaseTokens(body, PRICE)).inputTokens
const actual = (body: OracleBody) => openAIPromptTokens(body, PRICE.maxImageTokens!)!

t.test('over the corpus, the estimate is never under what OpenAI bills, and at most 5% over at the median', async (t) => {
  const rows = await tightnessRows()
  t.ok(rows.length >= 1000, `${rows.length} requests`)
  const under = rows.filter((row) => row.estimate < row.actual)
  t.same(under.map((row) => ({ model: row.body.model, estimate: row.estimate, actual: row.actual })), [], 'no request is estimated under its actual prompt tokens')
  const { estimate: ratios, bytes } = tightness(rows)
  t.ok(ratios.min >= 1, `minimum estimated/actual ${ratios.min.toFixed(3)} >= 1`)
  t.ok(ratios.median <= 1.05, `median estimated/actual ${ratios.median.toFixed(3)} <= 1.05 (the byte count's: ${bytes.median.toFixed(2)})`)
})

t.test('the tokenizer follows the model: o200k_base, cl100k_base, or none (the byte count)', async (t) => {
  for (const model of ['gpt-4o', 'gpt-4o-mini-2024-07-18', 'gpt-4.1-nano', 'o1', 'o3-mini', 'o4-mini', 'gpt-5', 'gpt-5.1-codex', 'chatgpt-4o-latest']) t.equal(encodingFor(model), 'o200k_base', model)
  for (const model of ['gpt-4', 'gpt-4-0613', 'gpt-4-turbo', 'gpt-3.5-turbo', 'gpt-3.5-turbo-0125']) t.equal(encodingFor(model), 'cl100k_base', model)
  for (const model of ['claude-sonnet-4', 'gpt-oss-120b', 'o10', 'gpt-40', 'llama-3']) t.equal(encodingFor(model), null, model)
  const body = { model: 'claude-sonnet-4', messages: [{ role: 'user', content: 'Hello there' }] }
  t.equal((await worstCaseTokens(body, PRICE)).inputTokens, Buffer.byteLength(JSON.stringify(body.messages)) + 4 + 3, 'an Anthropic model keeps the byte count')
})

t.test('counting piece by piece is the library\'s count; special-token text is ordinary text', async (t) => {
  const whole = openAICounter('gpt-4o')!
  for (const text of ['Hello, world!', '预算网关限制每个团队本月模型调用的支出。'.repeat(20), `${'x'.repeat(40)} ${'='.repeat(70)}\n/\n/${' '.repeat(50)}end`, 'مرحبا 🎉👨‍👩‍👧 Größe']) {
    t.equal(await tokenCounter('gpt-4o')!(text), whole(text), JSON.stringify(text.slice(0, 30)))
  }
  t.equal(await tokenCounter('gpt-4o')!('<|endoftext|><|im_start|>'), whole('<|endoftext|><|im_start|>'), 'no throw, counted as text')
  const long = '预算网关限制每个团队本月模型调用的支出'.repeat(20)
  t.equal(await tokenCounter('gpt-4o')!(long), Buffer.byteLength(long), 'a piece too long to merge quickly counts its bytes')
  t.ok(Buffer.byteLength(long) >= whole(long), 'which is more than its tokens')
})

t.test('huge and hostile prompts: bounded work, never under the actual count', async (t) => {
  // The oracle tokenizes without bounds; for the last two it would take minutes (one piece of 1 MB):
  // there the bound is the byte count, which a byte-level BPE never exceeds.
  for (const [name, content, oracle] of [
    ['1 MB of prose', 'The quick brown fox jumps over the lazy dog. '.repeat(23_000), true],
    ['newlines and slashes', '!/\n'.repeat(50_000), true],
    ['1 MB of one letter', 'a'.repeat(1_000_000), false],
    ['Chinese without punctuation', '预算网关令牌模型成本限制周期'.repeat(5000), false]
  ] as const) {
    const body = { model: 'gpt-4o', messages: [{ role: 'user', content }] }
    const started = process.hrtime.bigint()
    const counted = await estimate(body)
    const ms = Number(process.hrtime.bigint() - started) / 1e6
    const bytes = Buffer.byteLength(content)
    if (oracle) t.ok(counted >= actual(body), `${name}: ${counted} >= ${actual(body)}`)
    else t.equal(counted, bytes + 7, `${name}: its bytes, and the format's 7 tokens`)
    t.ok(counted <= bytes + 7, `${name}: never more than the byte count`)
    t.comment(`${name}: ${ms.toFixed(1)} ms`)
  }
})

t.test('tools, tool calls and results: at least their best-known rendering, even where JSON is shorter', async (t) => {
  const manyEnums = [{ type: 'function', function: { name: 'pick', parameters: { type: 'object', properties: { choice: { type: 'string', enum: Array.from({ length: 200 }, (_, i) => `v${i}`) }, n: { type: 'integer', enum: Array.from({ length: 100 }, (_, i) => i) } } } } }]
  const calls = Array.from({ length: 3 }, (_, i) => ({ id: `call_${i}`, type: 'function', function: { name: 'a_rather_long_function_name_for_lookups', arguments: JSON.stringify({ a: 1, b: 2.5, c: [1, 2, 3], d: { e: 4 } }) } }))
  const bodies: OracleBody[] = [
    { model: 'gpt-4o', messages: [{ role: 'system', content: 'x' }, { role: 'user', content: 'pick' }], tools: manyEnums, tool_choice: { type: 'function', function: { name: 'pick' } } },
    { model: 'gpt-4', messages: [{ role: 'user', content: 'go' }], functions: manyEnums.map((tool) => tool.function), function_call: 'none' },
    { model: 'gpt-4o', messages: [{ role: 'user', content: 'go' }, { role: 'assistant', content: null, tool_calls: calls }, ...calls.map((call) => ({ role: 'tool', tool_call_id: call.id, content: JSON.stringify({ ok: 1, rows: [1, 2] }) }))] },
    { model: 'gpt-4o', messages: [{ role: 'user', content: 'go' }], response_format: { type: 'json_schema', json_schema: { name: 'a', description: 'd', schema: { type: 'object', properties: { x: { type: 'number' } } } } } }
  ]
  for (const body of bodies) {
    const counted = await estimate(body)
    t.ok(counted >= actual(body), `${counted} >= ${actual(body)}`)
  }
})

t.test('the work budget counts calls and messages, not only bytes: many short texts fall back to their bytes', async (t) => {
  const count = tokenCounter('gpt-4o')!
  const counts: number[] = []
  for (let i = 0; i < 10_000; i++) counts.push(await count('hello world'))
  t.equal(counts[0], 2, 'tokenized while the budget lasts')
  t.equal(counts.at(-1), Buffer.byteLength('hello world'), '10,000 calls of 11 bytes (110 KB, which a budget of bytes alone would tokenize) spend it: then bytes, a bound')
})

t.test('adversarial shapes up to the body limit: bounded work, still never under what OpenAI bills', async (t) => {
  const tool = (i: number) => ({ type: 'function', function: { name: `tool_${i}`, description: `does thing ${i}`, parameters: { type: 'object', properties: { id: { type: 'string', enum: ['a', 'b', `c${i}`] }, n: { type: 'integer', enum: [1, 2, 3] } } } } })
  const calls = Array.from({ length: 3000 }, (_, i) => ({ id: `call_${i}`, type: 'function', function: { name: 'lookup', arguments: JSON.stringify({ a: i, b: [1, 2, { c: 'x' }] }) } }))
  const bodies: Array<[string, OracleBody]> = [
    ['20,000 tiny named messages', { model: 'gpt-4o', messages: Array.from({ length: 20_000 }, (_, i) => ({ role: i % 2 === 0 ? 'user' : 'assistant', name: `u${i}`, content: `m${i}` })) }],
    ['6,000 tools', { model: 'gpt-4o', messages: [{ role: 'user', content: 'pick' }], tools: Array.from({ length: 6000 }, (_, i) => tool(i)), tool_choice: 'required' }],
    ['3,000 tool calls and their JSON results', { model: 'gpt-4o', messages: [{ role: 'user', content: 'go' }, { role: 'assistant', content: null, tool_calls: calls }, ...calls.map((call) => ({ role: 'tool', tool_call_id: call.id, content: JSON.stringify({ ok: 1, rows: [1, 2, 3], note: 'x' }) }))] }],
    ['30,000 text parts', { model: 'gpt-4o', messages: [{ role: 'user', content: Array.from({ length: 30_000 }, (_, i) => ({ type: 'text', text: `p${i}` })) }] }],
    ['new words, 600 KB', { model: 'gpt-4o', messages: [{ role: 'user', content: Array.from({ length: 60_000 }, (_, i) => `w${(i * 7919).toString(36)}q`).join(' ') }] }]
  ]
  for (const [name, body] of bodies) {
    const counted = await estimate(body)
    const billed = actual(body)
    t.ok(counted >= billed, `${name}: ${counted} >= ${billed} (${(counted / billed).toFixed(2)}x)`)
  }
})

t.test('the work budget prices a piece met again at what it costs: the reviewer\'s shapes hand the tokenizer a bounded share', async (t) => {
  // Deterministic, not timed (bench/estimate-stall.ts times them): the characters the estimate hands the
  // tokenizer library for a 1 MB body. A piece met before was charged 1 unit (0.1 us) while "a's" costs
  // 1.2 us and a run of combining marks 3.9 us: the whole body went to the library, 100+ ms of it.
  const library = createRequire(import.meta.url)('gpt-tokenizer/encoding/o200k_base') as { countTokens: (text: string, options: unknown) => number }
  const original = library.countTokens
  let handed = 0
  library.countTokens = (text, options) => { handed += text.length; return original(text, options) }
  t.teardown(() => { library.countTokens = original })
  const shapes: Array<[string, string, number]> = [
    // At least 12 units a piece of 3 characters ("a's" is one piece of the split pattern).
    ["\"a's\" repeated", "a's".repeat(100_000), Math.ceil(MAX_TOKENIZED_WORK / 12 * 3)],
    // A run of one letter and 50 combining marks, and its space: 12 + 50 units, 52 characters.
    ['combining marks', ('a' + '\u0301'.repeat(50) + ' ').repeat(4_000), Math.ceil(MAX_TOKENIZED_WORK / 62 * 52)]
  ]
  for (const [name, content, most] of shapes) {
    handed = 0
    const body = { model: 'gpt-4o', messages: [{ role: 'user', content }] }
    const counted = await estimate(body)
    t.ok(handed <= most, `${name} (${content.length} characters): ${handed} handed to the tokenizer <= ${most}`)
    t.ok(counted >= actual(body), `${name}: still never under what OpenAI bills`)
  }
  handed = 0
  const wide = { model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object', properties: Object.fromEntries(Array.from({ length: 10_000 }, (_, i) => [`p${i}`, { type: 'string' }])) } } } }
  const counted = await estimate(wide)
  // Its JSON (250 KB) is charged a unit a byte before a piece is counted, which spends the budget: the
  // library gets none of it, and the schema counts a token a byte.
  t.ok(handed <= MAX_TOKENIZED_WORK / 12 * 4, `response_format of 10,000 properties: ${handed} characters handed to the tokenizer`)
  t.ok(counted >= actual(wide), 'and never under what OpenAI bills')
})
