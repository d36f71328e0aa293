// The estimate of a large body gives the event loop turns while it runs (issue 19, item 8: one request
// held /health for seconds), and slicing changes nothing in what it counts. Not timed: what is checked
// is that other work ran before the estimate finished, and that the counts are equal however the work
// is split (bench/estimate-stall.ts measures the stretches).
import t from 'tap'
import { jsonTextInSlices } from '../lib/kernel/json-limits.js'
import { slices } from '../lib/kernel/loop-slices.js'
import { estimateChatCost } from '../lib/pricing/estimate.js'
import { DEFAULT_PRICES, createPriceBook } from '../lib/pricing/pricing.js'
import { chatPromptTokens, forgetCountedPieces, tokenCounter } from '../lib/pricing/tokens.js'

const book = createPriceBook(DEFAULT_PRICES)

/** Lowercase words of 2 to 12 letters, from a fixed seed: each a new piece for the tokenizer. */
function randomWords (bytes: number): string {
  let state = 7
  const next = () => { state = (state * 1103515245 + 12345) % 2147483648; return state }
  const words: string[] = []
  let length = 0
  while (length < bytes) {
    const word = Array.from({ length: 2 + (next() % 11) }, () => String.fromCharCode(97 + (next() % 26))).join('')
    words.push(word)
    length += word.length + 1
  }
  return words.join(' ').slice(0, bytes)
}

const large = { model: 'gpt-4o', messages: [{ role: 'user', content: randomWords(1_000_000) }, { role: 'assistant', content: 'ok' }, { role: 'user', content: 'again' }], max_tokens: 100 }

t.test('an estimate of a 1 MB body lets a setImmediate scheduled before it run before it finishes', async (t) => {
  forgetCountedPieces()
  let ranAt: 'before' | 'after' | null = null
  let finished = false
  setImmediate(() => { ranAt = finished ? 'after' : 'before' })
  const estimate = await estimateChatCost(large, book)
  finished = true
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(ranAt, 'before', 'the loop had a turn while the estimate ran')
  t.ok(estimate.tokens! > 100, `an estimate all the same: ${estimate.amount}`)
})

t.test('two large estimates interleaved give what each gives alone', async (t) => {
  const chinese = { model: 'gpt-4o', messages: [{ role: 'user', content: '预算网关令牌模型成本限制周期每个团队本月调用支出'.repeat(20_000) }], max_tokens: 10 }
  forgetCountedPieces()
  const alone = [await estimateChatCost(large, book), await estimateChatCost(chinese, book)]
  forgetCountedPieces()
  const together = await Promise.all([estimateChatCost(large, book), estimateChatCost(chinese, book)])
  t.same(together.map(({ amount, tokens }) => ({ amount, tokens })), alone.map(({ amount, tokens }) => ({ amount, tokens })))
})

t.test('the count split into the smallest slices equals the count never split', async (t) => {
  const body = {
    messages: [
      { role: 'system', content: randomWords(40_000) },
      { role: 'user', content: [{ type: 'text', text: 'a part' }, { type: 'text', text: randomWords(3_000) }] },
      { role: 'assistant', content: null, tool_calls: [{ id: 'c1', type: 'function', function: { name: 'lookup', arguments: JSON.stringify({ id: 1, tags: ['a', 'b'] }) } }] },
      { role: 'tool', tool_call_id: 'c1', content: JSON.stringify({ rows: [1, 2, 3], note: randomWords(500) }) },
      ...Array.from({ length: 3_000 }, (_, i) => ({ role: i % 2 === 0 ? 'user' : 'assistant', content: `message ${i}` }))
    ],
    tools: [{ type: 'function', function: { name: 'lookup', description: 'finds a row', parameters: { type: 'object', properties: { id: { type: 'integer' } } } } }],
    response_format: { type: 'json_object' }
  }
  const finest = slices({ ms: 0, work: 1 })
  const whole = slices({ ms: Infinity, work: Infinity })
  const split = await chatPromptTokens(body, tokenCounter('gpt-4o', finest)!)
  const unsplit = await chatPromptTokens(body, tokenCounter('gpt-4o', whole)!)
  t.equal(split, unsplit, `${split} tokens either way`)
  t.ok(finest.yields > 1_000, `split: ${finest.yields} turns of the loop`)
  t.equal(whole.yields, 0, 'never split: no turn')
})

t.test('a field written in slices is JSON.stringify\'s text', async (t) => {
  const values: unknown[] = [
    { a: [1, 'x', null, true, { b: [[], {}, [{ c: 'é"\\\n' }]] }], d: undefined, e: () => 1, f: [undefined, () => 1, Symbol('s')] },
    [{ toJSON: () => 'own' }, new Date(0), { x: { toJSON: 'not a function' } }, Object.assign(Object.create(null), { n: { m: 1 } })],
    JSON.parse('{"__proto__":{"x":[1]},"k":[{"y":{}}]}'), [1, 2, 3], {}, [], 'text', 5, null,
    { properties: Object.fromEntries(Array.from({ length: 5_000 }, (_, i) => [`p${i}`, { type: 'string', enum: [i, `${i}`] }])) },
    [1, , [2, , { a: [3] }]]
  ]
  for (const value of values) {
    const finest = slices({ ms: 0, work: 1 })
    t.equal(await jsonTextInSlices(value, finest), JSON.stringify(value), JSON.stringify(value)?.slice(0, 60))
  }
  const cycle: Record<string, unknown> = { a: { b: 1 } }
  ;(cycle.a as Record<string, unknown>).self = cycle
  await t.rejects(jsonTextInSlices(cycle, slices({ ms: 0, work: 1 })), TypeError, 'a cycle throws, as JSON.stringify does, however often the loop had a turn')
})
