// Past the work budget a body's text counts a token a byte, cheaply, but a body can hold tens of
// thousands of texts (content parts, tool calls): the estimate still gives the loop a turn whenever its
// slice is spent, never walks all of them in one stretch. Slices here end by counted work only (never by
// the clock), so the number of turns does not depend on the machine.
import t from 'tap'
import { slices } from '../lib/kernel/loop-slices.js'
import { chatPromptTokens, tokenCounter } from '../lib/pricing/tokens.js'

const SLICE_WORK = 32_768
const words = Array.from({ length: 60_000 }, (_, i) => `w${i.toString(36)}x`).join(' ')

/** Turns of the loop while `body` is counted in slices of SLICE_WORK units, and the work the counter spent. */
async function turnsWhileCounting (body: { messages: unknown[] }): Promise<{ turns: number, yields: number }> {
  const workOnly = slices({ ms: Number.POSITIVE_INFINITY, work: SLICE_WORK })
  const count = tokenCounter('gpt-4o', workOnly)!
  let turns = 0
  let running = true
  const probe = () => { if (running) { turns++; setImmediate(probe) } }
  setImmediate(probe)
  await chatPromptTokens(body, count)
  running = false
  return { turns, yields: workOnly.yields }
}

t.test('content parts past the budget: the loop gets turns through them', async (t) => {
  // The first part spends the budget; 60,000 parts after it are 60,000 calls of the counter (16 units each: 29 slices).
  const body = { messages: [{ role: 'user', content: [{ type: 'text', text: words }, ...Array.from({ length: 60_000 }, (_, i) => ({ type: 'text', text: `p${i}` }))] }] }
  const { turns, yields } = await turnsWhileCounting(body)
  t.ok(yields >= 25, `${yields} yields`)
  t.ok(turns >= 25, `${turns} turns of the loop`)
})

t.test('tool calls past the budget: the loop gets turns through them', async (t) => {
  // The first call's arguments spend the budget; each of the 60,000 after it costs a call of the counter
  // and its arguments' bytes (about 24 units: 43 slices).
  const calls = Array.from({ length: 60_001 }, (_, i) => ({ id: `c${i}`, type: 'function', function: { name: 'f', arguments: i === 0 ? JSON.stringify({ text: words }) : `{"a":${i}}` } }))
  const body = { messages: [{ role: 'assistant', content: null, tool_calls: calls }] }
  const { turns, yields } = await turnsWhileCounting(body)
  t.ok(yields >= 35, `${yields} yields`)
  t.ok(turns >= 35, `${turns} turns of the loop`)
})

t.test('a large object in a body is enumerated at most once a turn of the loop', async (t) => {
  // Enumerating 35,000 keys takes some ms: the serializer once checked a large child's flatness twice
  // and took its keys a third time, all in one stretch (the wide response_format's longest).
  const { jsonTextInSlices } = await import('../lib/kernel/json-limits.js')
  let turn = 0
  let running = true
  const probe = () => { if (running) { turn++; setImmediate(probe) } }
  setImmediate(probe)
  const enumeratedIn: number[] = []
  const properties = new Proxy(Object.fromEntries(Array.from({ length: 2_000 }, (_, i) => [`p${i}`, { type: 'string' }])), {
    ownKeys: (target) => { enumeratedIn.push(turn); return Reflect.ownKeys(target) }
  })
  const value = { type: 'json_schema', json_schema: { schema: { type: 'object', properties } } }
  const text = await jsonTextInSlices(value, slices({ ms: 0, work: 0 }))
  running = false
  t.equal(text, JSON.stringify(value), 'the same text')
  const beforeStringify = enumeratedIn.slice(0, -1) // the last is JSON.stringify of the check above
  t.ok(beforeStringify.length >= 1, `enumerated in turns ${beforeStringify.join(', ')}`)
  t.equal(new Set(beforeStringify).size, beforeStringify.length, 'never twice in one turn')
})
