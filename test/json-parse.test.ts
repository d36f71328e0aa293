// The JSON body parser that yields (lib/kernel/json-parse.ts, lib/http/json-body.ts) answers as Fastify's
// default parser does: secure-json-parse's parse with both poisoning actions 'error' gives the same value
// or throws where it throws, on any JSON value and on any text; and a route answers the same with it as
// with the default. Its limits are made tiny here, so that every value is walked member by member.
import t from 'tap'
import fc from 'fast-check'
import Fastify from 'fastify'
import { isDeepStrictEqual } from 'node:util'
import secureJson from 'secure-json-parse'
import { parseJsonInSlices } from '../lib/kernel/json-parse.js'
import { slices } from '../lib/kernel/loop-slices.js'
import { budgetJsonParser } from '../lib/index.js'

const reference = (text: string): { value: unknown } | 'throws' => {
  try { return { value: secureJson.parse(text, undefined, { protoAction: 'error', constructorAction: 'error' }) } } catch { return 'throws' }
}
const sliced = async (text: string, group: number): Promise<{ value: unknown } | 'throws'> => {
  try { return { value: await parseJsonInSlices(text, slices({ ms: 0, work: 0 }), { native: 0, group }) } } catch { return 'throws' }
}
/** Equal values, keys in the same order, -0 told from 0, prototypes compared (a "__proto__" key never sets one). */
function same (a: unknown, b: unknown): boolean {
  if (!isDeepStrictEqual(a, b)) return false
  if (a === null || typeof a !== 'object') return true
  const keysA = Object.keys(a)
  const keysB = Object.keys(b as object)
  return keysA.join('\u0000') === keysB.join('\u0000') && keysA.every((key) => same((a as Record<string, unknown>)[key], (b as Record<string, unknown>)[key]))
}
const agree = async (text: string, group: number): Promise<boolean> => {
  const [expected, actual] = [reference(text), await sliced(text, group)]
  return expected === 'throws' || actual === 'throws' ? expected === actual : same(expected.value, actual.value)
}

const group = fc.integer({ min: 1, max: 64 })
const space = fc.constantFrom('', ' ', '\n', '\t\r\n ', '  ')
// Keys that poison, in the spellings JSON allows, and keys near them.
const key = fc.oneof(fc.string({ maxLength: 6 }), fc.constantFrom('__proto__', 'constructor', 'prototype', '__proto', 'a', '1', '-0', '__proto__ '))
const value = fc.letrec((tie) => ({
  value: fc.oneof({ depthSize: 'small' }, fc.jsonValue({ maxDepth: 2 }), tie('object'), tie('array'), fc.string({ unit: 'binary', maxLength: 8 }), fc.constant(-0), fc.double()),
  object: fc.array(fc.tuple(key, tie('value')), { maxLength: 6 }),
  array: fc.array(tie('value'), { maxLength: 6 })
})).value
/** Writes a value as JSON with spaces anywhere JSON allows them, keys in any spelling, duplicate keys kept. */
function write (node: unknown, spaces: string[], escapeKeys: boolean): string {
  let n = 0
  const pad = () => spaces[n++ % spaces.length] ?? ''
  const spell = (text: string) => escapeKeys ? JSON.stringify(text).replace(/[_pc]/g, (c) => `\\u00${c.charCodeAt(0).toString(16)}`) : JSON.stringify(text)
  const go = (inner: unknown, kind: 'object' | 'other'): string => {
    if (Array.isArray(inner) && kind === 'object') return `{${pad()}${(inner as Array<[string, unknown]>).map(([k, v]) => `${spell(k)}${pad()}:${pad()}${go(v, Array.isArray(v) && v.every((e) => Array.isArray(e) && e.length === 2 && typeof e[0] === 'string') ? 'object' : 'other')}`).join(`${pad()},${pad()}`)}${pad()}}`
    if (Array.isArray(inner)) return `[${pad()}${inner.map((e) => go(e, 'other')).join(`${pad()},${pad()}`)}${pad()}]`
    return Object.is(inner, -0) ? '-0' : (JSON.stringify(inner) ?? 'null')
  }
  return go(node, Array.isArray(node) && node.every((e) => Array.isArray(e) && e.length === 2 && typeof e[0] === 'string') ? 'object' : 'other')
}

t.test('fast-check: any JSON text, spaced anywhere, with poisoning keys and duplicates: the same value or both throw', async () => {
  await fc.assert(fc.asyncProperty(value, fc.array(space, { minLength: 1, maxLength: 5 }), fc.boolean(), group, async (node, spaces, escapeKeys, size) =>
    await agree(write(node, spaces, escapeKeys), size)), { numRuns: 3000 })
})

t.test('fast-check: any JSON value as JSON.stringify writes it', async () => {
  await fc.assert(fc.asyncProperty(fc.jsonValue(), group, async (node, size) => await agree(JSON.stringify(node), size)), { numRuns: 2000 })
})

const JSONISH = ['{', '}', '[', ']', ',', ':', '"', '\\', 'u', '0', '1', '-', '.', 'e', '+', 't', 'r', 'n', 'l', 'f', 'a', ' ', '\n', '\u0000', '\u001f', '\ud800', '\ufeff', 'x']
const mutation = fc.tuple(fc.nat(), fc.constantFrom('insert', 'delete', 'replace'), fc.constantFrom(...JSONISH))
t.test('fast-check: any text, and any mutation of a JSON text: the same value or both throw', async () => {
  await fc.assert(fc.asyncProperty(fc.string({ unit: fc.constantFrom(...JSONISH), maxLength: 40 }), group, async (text, size) => await agree(text, size)), { numRuns: 3000 })
  await fc.assert(fc.asyncProperty(value, fc.array(mutation, { minLength: 1, maxLength: 3 }), group, async (node, edits, size) => {
    let text = write(node, [' '], false)
    for (const [at, edit, char] of edits) {
      const i = text.length === 0 ? 0 : at % (text.length + 1)
      text = edit === 'insert' ? text.slice(0, i) + char + text.slice(i) : edit === 'delete' ? text.slice(0, i) + text.slice(i + 1) : text.slice(0, i) + char + text.slice(i + 1)
    }
    return await agree(text, size)
  }), { numRuns: 3000 })
})

t.test('poisoning: refused as secure-json-parse refuses it, wherever it is and however it is spelled', async (t) => {
  const cases = [
    '{"__proto__":{"x":1}}', '{"a":[{"__proto__":1}]}', '{"\\u005f_proto__":1}', '{"a":{"constructor":{"prototype":{}}}}',
    '{"constructor":{"prototype":1},"constructor":1}', '{"a":{"__proto__":1},"a":2}', '{"constructor":1}', '{"a":"\\"__proto__\\":1"}',
    '[{"x":1},{"constructor":{"prototype":null}}]', '{"constructor":{"prototype":1}}'
  ]
  for (const text of cases) {
    for (const size of [1, 4, 16, 1000]) t.ok(await agree(text, size), `${text} (groups of ${size})`)
  }
  t.equal(await sliced('{"__proto__":{"x":1}}', 1), 'throws')
  t.not(reference('{"a":{"__proto__":1},"a":2}'), 'throws')
  t.not(await sliced('{"a":{"__proto__":1},"a":2}', 1), 'throws', 'a poisoned member replaced by a duplicate key is no poison, as for secure-json-parse')
})

t.test('large bodies at the default limits: the same value as JSON.parse, deep nesting too, and the loop gets turns', async (t) => {
  const wide = JSON.stringify({ model: 'gpt-4o', response_format: { type: 'json_schema', json_schema: { schema: { type: 'object', properties: Object.fromEntries(Array.from({ length: 35_000 }, (_, i) => [`p${i}`, { type: 'string' }])) } } } })
  const messages = JSON.stringify({ messages: Array.from({ length: 20_000 }, (_, i) => ({ role: 'user', name: `u${i}`, content: `m${i}` })) })
  const deep = '['.repeat(300) + '{"a":'.repeat(300) + '[' + '1,'.repeat(50_000) + '1]' + '}'.repeat(300) + ']'.repeat(300)
  const longString = JSON.stringify({ content: 'x\\"'.repeat(400_000), n: [1e300, -0, 0.1] })
  for (const [name, text] of Object.entries({ wide, messages, deep, longString })) {
    let turns = 0
    let running = true
    const probe = () => { if (running) { turns++; setImmediate(probe) } }
    setImmediate(probe)
    const parsed = await parseJsonInSlices(text)
    running = false
    t.ok(same(parsed, JSON.parse(text)), `${name}: the same value`)
    if (text.length > 500_000) t.ok(turns > 0, `${name}: the loop had ${turns} turns`)
  }
  // Nesting far past any recursion: JSON.parse takes it, and so does the walk (which keeps no call stack).
  let nested = await parseJsonInSlices('['.repeat(200_000) + ']'.repeat(200_000))
  let depth = 0
  while (Array.isArray(nested) && nested.length === 1) { nested = nested[0]; depth++ }
  t.equal(depth, 199_999, '200,000 arrays nested')
  t.ok(same(await parseJsonInSlices(`\ufeff${wide}`), JSON.parse(wide)), 'a byte order mark is dropped, as secure-json-parse drops it')
  await t.rejects(parseJsonInSlices(wide.slice(0, -1)), SyntaxError)
  await t.rejects(parseJsonInSlices(wide + ','), SyntaxError)
  await t.rejects(parseJsonInSlices(wide.replace('"p7"', '"__proto__"')), SyntaxError)
})

t.test('a route answers the same with budgetJsonParser as with Fastify\'s default parser', async (t) => {
  const build = (ours: boolean) => {
    const app = Fastify()
    if (ours) app.addContentTypeParser('application/json', { parseAs: 'string' }, budgetJsonParser)
    app.post('/echo', async (request) => ({ body: request.body, proto: Object.getPrototypeOf(request.body) === Object.prototype }))
    return app
  }
  const [theirs, ours] = [build(false), build(true)]
  const large = JSON.stringify({ rows: Array.from({ length: 30_000 }, (_, i) => ({ i, s: `r${i}` })) })
  const bodies = ['{"a":1}', '', ' ', '{"__proto__":{"admin":true}}', '{"a":{"constructor":{"prototype":{}}}}', '{"a":', '[1,2]', '"x"', large,
    large.replace('"s":"r5"', '"__proto__":"r5"'), large.slice(0, -2), '\ufeff{"a":1}']
  for (const payload of bodies) {
    const [expected, actual] = await Promise.all([theirs, ours].map(async (app) => await app.inject({ method: 'POST', url: '/echo', headers: { 'content-type': 'application/json' }, payload })))
    t.equal(actual!.statusCode, expected!.statusCode, `${payload.slice(0, 40)}: status`)
    t.same(JSON.parse(actual!.body), JSON.parse(expected!.body), `${payload.slice(0, 40)}: body`)
  }
  await theirs.close()
  await ours.close()
})
