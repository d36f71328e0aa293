// Adversarial review (rinput) of the JSON body parser that yields (lib/kernel/json-parse.ts): a body of
// deeply nested brackets under the 1 MiB body limit held the loop for 110 to 260 ms in one stretch,
// because closing a level went back to the top of the walk before the slice check, so half a million
// closing brackets were walked in one turn. Time is the bench's business (bench/estimate-stall.ts); here
// the rule is pinned by counting: with every slice check due, each level opened and each level closed
// reaches a check, so the loop could get a turn at each.
import t from 'tap'
import Fastify from 'fastify'
import { parseJsonInSlices } from '../lib/kernel/json-parse.js'
import type { Slices } from '../lib/kernel/loop-slices.js'
import { budgetJsonParser } from '../lib/index.js'

/** Slices whose every check is due, counting the turns the parser asks for. */
function everyCheckDue (): Slices & { turns: number } {
  const counter = { turns: 0, spend: () => {}, due: () => true, pause: async () => { counter.turns++ }, get yields () { return counter.turns } }
  return counter
}

/** How deep a value nests, walked without recursion. */
function depthOf (value: unknown): number {
  let depth = 0
  let at: unknown = value
  while (Array.isArray(at) || (typeof at === 'object' && at !== null)) {
    depth++
    at = Array.isArray(at) ? at[0] : Object.values(at as object).at(-1)
  }
  return depth
}

const LEVELS = 200_000
const bodies: Record<string, { text: string, depth: number }> = {
  'arrays nested 200,000 deep': { text: '['.repeat(LEVELS) + ']'.repeat(LEVELS), depth: LEVELS },
  'objects nested 200,000 deep': { text: '{"a":'.repeat(LEVELS) + '1' + '}'.repeat(LEVELS), depth: LEVELS },
  'a "constructor" key beside arrays nested 200,000 deep': { text: '{"constructor":0,"a":' + '['.repeat(LEVELS) + ']'.repeat(LEVELS) + '}', depth: LEVELS + 1 }
}

for (const [name, { text, depth }] of Object.entries(bodies)) {
  t.test(`${name}: every level closed reaches a slice check, and the value is JSON.parse's`, async (t) => {
    const slices = everyCheckDue()
    const value = await parseJsonInSlices(text, slices, { native: 0, group: 16 })
    // opening and closing each level reach a check (before the fix: only the openings, about LEVELS)
    t.ok(slices.turns >= 2 * LEVELS - 64, `${slices.turns} turns for ${LEVELS} levels`)
    t.equal(depthOf(value), depth)
    t.equal(depthOf(JSON.parse(text)), depth)
  })
}

t.test('through a route with budgetJsonParser registered, arrays nested 500,000 deep (0.95 MiB) parse as Fastify\'s default would', async (t) => {
  const app = Fastify()
  app.addContentTypeParser('application/json', { parseAs: 'string' }, budgetJsonParser)
  app.post('/depth', async (request) => ({ depth: depthOf(request.body) }))
  const reply = await app.inject({ method: 'POST', url: '/depth', headers: { 'content-type': 'application/json' }, payload: '['.repeat(500_000) + ']'.repeat(500_000) })
  t.equal(reply.statusCode, 200)
  t.same(reply.json(), { depth: 500_000 })
  await app.close()
})
