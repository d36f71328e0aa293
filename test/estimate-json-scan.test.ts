// The estimate reads both refusals of a body (nesting past MAX_NESTING, a cache_control key) from the
// JSON text it serializes anyway (issue 19, item 8: the walk over parsed objects held the event loop
// longest on bodies of many small objects). The text's answers must be the walk's, key for key, on
// shapes meant to fool a text scan: keys spelled inside strings, escapes, brackets inside strings.
import t from 'tap'
import { MAX_NESTING, jsonTextShape, walkForDepthOrKey } from '../lib/kernel/json-limits.js'
import { estimateChatCost } from '../lib/pricing/estimate.js'
import { DEFAULT_PRICES, createPriceBook } from '../lib/pricing/pricing.js'
import { chatPromptTokens, tokenCounter } from '../lib/pricing/tokens.js'

const nest = (depth: number, leaf: unknown = 'x'): unknown => {
  let value = leaf
  for (let i = 0; i < depth; i++) value = { a: value }
  return value
}
const walkDepth = (value: unknown): number => {
  let depth = 0
  while (walkForDepthOrKey(value, depth, null) === 'deep') depth++
  return depth
}

t.test('the text scan answers as the walk does', async (t) => {
  const values: unknown[] = [
    {}, [], [[]], { a: [1, { b: 2 }] }, nest(5), nest(63), nest(64), [nest(10), nest(3)],
    { s: '{{{[[[' }, { s: '"}]' }, { s: 'a\\' }, { s: '\\"{' }, { s: '\\\\', t: '"{[', u: ['\\\\\\"]]'] }, { 'k{': { '"x': [] } },
    { cache_control: 1 }, { a: { cache_control: { type: 'ephemeral' } } }, [{ b: 1, cache_control: null }],
    { s: ',"cache_control":1' }, { s: '{"cache_control":{}}' }, { s: '\\",\\"cache_control\\":' }, { 'x,"cache_control":': 1 },
    { cache_controls: 1 }, { '"cache_control"': 1 }, { s: 'cache_control' }, ['cache_control', { cache_control_: 2 }]
  ]
  for (const value of values) {
    const text = JSON.stringify(value)
    const shape = (await jsonTextShape(text, 'cache_control'))
    t.equal(shape.hasKey, walkForDepthOrKey(value, 1_000, 'cache_control') === 'key', `key in ${text.slice(0, 60)}`)
    t.equal(shape.depth, walkDepth(value), `depth of ${text.slice(0, 60)}`)
  }
})

t.test('the estimate refuses as before: nesting and cache_control at any depth, and a body too deep to serialize', async (t) => {
  const book = createPriceBook(DEFAULT_PRICES)
  for (const model of ['gpt-4o', 'claude-3-5-sonnet']) {
    const base = { model, max_tokens: 10 }
    // response_format at depth 1, so its text's depth 63 puts a leaf object at depth 63: allowed.
    await t.resolves(async () => (await estimateChatCost({ ...base, messages: [{ role: 'user', content: 'x' }], response_format: nest(62, {}) }, book)), `${model}: 63 deep`)
    await t.rejects(async () => (await estimateChatCost({ ...base, messages: [{ role: 'user', content: 'x' }], response_format: nest(63, {}) }, book)), /nested more than 64/, `${model}: 64 deep`)
    await t.rejects(async () => (await estimateChatCost({ ...base, messages: [{ role: 'user', content: 'x' }], response_format: nest(200_000, {}) }, book)), /nested more than 64/, `${model}: too deep for JSON.stringify`)
    await t.rejects(async () => (await estimateChatCost({ ...base, messages: [{ role: 'user', content: [{ type: 'text', text: 'x', cache_control: { type: 'ephemeral' } }] }] }, book)), /prompt-cache write/, `${model}: cache_control in a part`)
    await t.resolves(async () => (await estimateChatCost({ ...base, messages: [{ role: 'user', content: '{"cache_control":{"type":"ephemeral"}}' }] }, book)), `${model}: cache_control spelled in text`)
  }
  t.equal(MAX_NESTING, 64)
})

t.test('past the work budget, the rest of the messages is bounded by the bytes of their JSON, from the text', async (t) => {
  // Enough messages, with strings holding commas, brackets, quotes and non-ASCII, to spend the budget midway.
  const messages = Array.from({ length: 6_000 }, (_, i) => ({ role: i % 2 === 0 ? 'user' : 'assistant', content: `m${i}, [x] {"y": "é${i}"} \\ ,` }))
  const body = { messages, response_format: { type: 'json_object' } }
  const unknown = await chatPromptTokens(body, tokenCounter('gpt-4o')!)
  const count = tokenCounter('gpt-4o')!
  count.knownJson = new Map<unknown, string>([[messages, JSON.stringify(messages)], [body.response_format, JSON.stringify(body.response_format)]])
  t.equal((await chatPromptTokens(body, count)), unknown, 'the same count with the texts known')
  t.ok(unknown < 3 * JSON.stringify(messages).length, 'the budget ran out midway (else this shows nothing)')
})
