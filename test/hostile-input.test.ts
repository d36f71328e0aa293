// Hostile input, property-based: every admin route (as the app declares them) and the gated chat route get
// arbitrary and crafted bodies, query strings, path parameters and headers. For every request:
//   (a) no response is a 5xx;
//   (b) every 4xx has a JSON body with a stable code (admin API: BUDGET_ERR_* or FST_ERR_*; chat route:
//       OpenAI's { error: { type, code, message, param } });
//   (c) after a 4xx, every budget table is exactly as it was before the request;
//   (d) a write that was accepted does not break later reads: after every 2xx, and after every property,
//       the seeded budgets' status reads 200 (after every property, every GET route of the table too).
// Each property runs on a small world of its own (the budget tables are emptied, then an organization
// budget, a team budget under it with usage, an alert crossing and an approval). The admin app runs with
// statusCacheTtlMs: 0, so a refused request that refreshes the status cache on its way shows at once, not
// only after five minutes. HOSTILE_RUNS and HOSTILE_SEED change the number of runs and the seed (a failure
// prints the seed and path that replay it); HOSTILE_COLLECT=1 goes on past failures and lists every
// distinct one, each shrunk on its own.
import { Writable } from 'node:stream'
import { isDeepStrictEqual } from 'node:util'
import fc from 'fast-check'
import type { InjectOptions, LightMyRequestResponse } from 'fastify'
import t from 'tap'
import { ADMIN_TOKEN, PREFIX, buildApp, snapshotTables, type TestApp } from './fixtures/app.js'
import { buildGateway, spendTo } from './fixtures/gateway.js'
import { declaredRoutes, fillPath, type AdminRoute } from './fixtures/routes.js'

const RUNS = Number(process.env.HOSTILE_RUNS ?? 60)
// Every admin route meets four properties of RUNS inputs each: beside other files on two loaded CPUs the file took
// 276 s on 2026-12-06, near tap's 300 s a file (.taprc). Its own limit, told to the runner:
t.setTimeout(600_000)
/** x-budget-max-cost values that are near a rule's edge: zero, signs, exponents, spaces, two values, too many digits, the tiniest cap. */
const MAX_COSTS = ['0', '0.0', '-1', '+1', '1e-3', '1E2', ' 0.5', '0.5 ', '0.5, 0.6', '0x10', '.5', '5.', 'NaN', 'Infinity', '1'.repeat(19), '1'.repeat(18),
  '0.00000000001', '0.0000000001', '0.5', '1000', '\u0661']
const SEED = process.env.HOSTILE_SEED === undefined ? undefined : Number(process.env.HOSTILE_SEED)
/** After a failure, fast-check shrinks; past this many more requests it keeps the smallest failure found so far. */
const SHRINK_BUDGET = 120
const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }
/** The day the seeded cost bucket is of: a true-up takes only a day before today. */
const YESTERDAY = new Date(Date.now() - 86_400_000).toISOString().slice(0, 10)

// ---------------------------------------------------------------------------------------------------
// Hostile values

/** An object with an own property of this name, also for `__proto__` (which an object literal would not make). */
function withKey (target: Record<string, unknown>, key: string, value: unknown): Record<string, unknown> {
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true })
  return target
}

const AMOUNTS = [
  '999999999999999999', 999999999999999, '999999999999999999.9999999999', '1000000000000000000', '99999999999999999999999999999',
  '0.00000000001', '0.0000000001', '1e18', '1E3', '-0', '-1', '0', ' 1 ', '+1', '.5', '5.', '0x10', '1_000', '１２', 'Infinity', 'NaN',
  1e18, 1e21, 1e300, -1e-300, 5e-324, 0.1 + 0.2, 2 ** 53 + 2, Number.MAX_VALUE, -0
]
const THRESHOLDS = [1e-7, 1e-300, 0.0000001, 5e-324, 1000, 1000.0000000001, 999.9999999999999, 0.1 + 0.2, 33.333333333333336, 1e-10]
const TIMESTAMPS = [
  '2024-01-01T00:00:00+99:00', '9999-12-31T23:59:59-14:00', '9999-12-31T23:59:59+14:00', '9999-12-31', '2024-01-01T00:00:00-99:59',
  '0000-01-01', '1970-01-01', '1969-12-31T23:59:59Z', '2024-02-29', '2023-02-29', '2024-01-01T24:00:00Z', '2024-01-01T23:59:60Z',
  '2024-01-01T00:00:00.9999999999Z', '2024-01-01T00:00:00.123456789+05:30', '+275760-09-13T00:00:00Z', '2024-01-01T00:00Z',
  '2024-01-01T00:00:00-00:00', '2024-13-01', '2024-1-1', '2024-01-01 00:00:00Z', '2024-01-01T00:00:00z', '20240101', '２０２４-01-01'
]
const MODELS = ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf', 'prototype', 'gpt-4o\u0000', 'GPT-4O', ' gpt-4o', 'gpt-4o-2024-08-06', 'gpt-4o-mini-9999-99-99', '']
const STRINGS = [
  '', ' ', '   ', '\t', '\u00a0\u3000', '\u0000', 'a\u0000b', '\u0000'.repeat(3), '\ud800', 'x\udfffy', '\udc00\ud800', '\ufeff', '\u202e',
  '😀', '%00', '%ff', '\\u0000', "'; drop table budget_definitions; --", '$1', '${1}', '"', '\\', '__proto__', 'constructor', 'toString',
  'null', 'undefined', 'true', '[]', '{}', 'x'.repeat(201), 'é'.repeat(201), '😀'.repeat(101), 'x'.repeat(2001), 'x'.repeat(20000)
]

/** Any single UTF-16 unit worth sending, including lone surrogates and NUL. */
const hostileChar = fc.oneof(
  fc.constantFrom('\u0000', ' ', '\t', '\n', '\ud800', '\udfff', '%', '\\', '"', "'", '\u202e', '\ufeff', '\u00ff', '😀', 'a', '-', '.', '/'),
  fc.integer({ min: 0, max: 0xffff }).map((code) => String.fromCharCode(code))
)

const hostileString: fc.Arbitrary<string> = fc.oneof(
  { arbitrary: fc.constantFrom(...STRINGS, ...MODELS, ...TIMESTAMPS), weight: 4 },
  { arbitrary: fc.string({ unit: hostileChar, maxLength: 12 }), weight: 3 },
  { arbitrary: fc.string({ unit: 'binary', maxLength: 20 }), weight: 1 },
  { arbitrary: fc.tuple(fc.constantFrom('x', 'é', '😀', ' ', '\u0000', '\ud800'), fc.integer({ min: 190, max: 5000 })).map(([unit, count]) => unit.repeat(count)), weight: 1 }
)

const hostileNumber: fc.Arbitrary<number> = fc.oneof(
  fc.constantFrom(...AMOUNTS.filter((value): value is number => typeof value === 'number'), ...THRESHOLDS, 0, -1, 1.5, 2 ** 31, 2 ** 53, 1e308),
  fc.double({ noNaN: true, noDefaultInfinity: true }),
  fc.integer()
)

/** A value to put where the API expects something: any JSON, and the values that broke things before. */
const hostileValue: fc.Arbitrary<unknown> = fc.oneof(
  { arbitrary: fc.constantFrom<unknown>(...AMOUNTS, ...THRESHOLDS, true, false, null, [], {}, [null], [[]], { '': null }, JSON.parse('{"__proto__":{"x":1}}')), weight: 3 },
  { arbitrary: hostileString, weight: 4 },
  { arbitrary: hostileNumber, weight: 2 },
  { arbitrary: fc.jsonValue({ maxDepth: 2 }), weight: 2 },
  { arbitrary: fc.bigInt({ min: -(10n ** 30n), max: 10n ** 30n }).map(String), weight: 1 }
)

// ---------------------------------------------------------------------------------------------------
// Requests

/** A body: JSON of a value, JSON text written by hand, raw bytes, or a valid body with one field replaced. */
type BodySpec =
  | { json: unknown }
  | { text: string }
  | { bytes: number[] }
  | { replace: string, value: unknown }
  | { replace: string, jsonText: string }

const PLACEHOLDER = '__hostile_placeholder__'

/** JSON text a serializer would never write: lone surrogates and NUL as escapes, invalid UTF-8, deep nesting, duplicate keys. */
/** JSON nested 5000 deep: any recursive walk over a request body meets it. */
const DEEP_ARRAY = '['.repeat(5000) + ']'.repeat(5000)
const RAW_VALUES = ['"\\ud800"', '"a\\udfffb"', '"\\udc00\\ud800"', '"\\u0000"', '"a\\u0000b"', '"\\ud83d"', '1e999', '-1e999', '1' + '0'.repeat(400), '0.' + '0'.repeat(400) + '1', '-0.0', '[' .repeat(2000) + ']'.repeat(2000)]
const RAW_BODIES = [
  '', ' ', 'null', 'true', '0', '"x"', '[]', '{', '{"a":', '{"a":1,}', '{"a":1}{"b":2}', "{'a':1}", '{"\\ud800":1}', '{"\\u0000":1}',
  '{"__proto__":{"isAdmin":true}}', '{"constructor":{"prototype":{"x":1}}}', '{"a":1,"a":2}', '\ufeff{}', '[' .repeat(5000) + ']'.repeat(5000),
  '{"a":' .repeat(3000) + '1' + '}'.repeat(3000)
]
const RAW_BYTES = [[0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xed, 0xa0, 0x80, 0x22, 0x7d], [0xff, 0xfe, 0x7b, 0x00, 0x7d, 0x00], [0x7b, 0x22, 0xc0, 0x80, 0x22, 0x3a, 0x31, 0x7d], [0x00], [0x7b, 0x7d, 0x00]]

function bodyArbitrary (paths: string[], jsonValues: fc.Arbitrary<unknown> = hostileValue): fc.Arbitrary<BodySpec> {
  return fc.oneof(
    { arbitrary: fc.record({ replace: fc.constantFrom(...paths), value: jsonValues }), weight: 6 },
    { arbitrary: fc.record({ replace: fc.constantFrom(...paths), jsonText: fc.constantFrom(...RAW_VALUES) }), weight: 1 },
    { arbitrary: fc.record({ json: fc.oneof(fc.jsonValue({ maxDepth: 3 }), fc.anything({ maxDepth: 2, withObjectString: true, withNullPrototype: true })) }), weight: 2 },
    { arbitrary: fc.record({ text: fc.constantFrom(...RAW_BODIES) }), weight: 1 },
    { arbitrary: fc.record({ bytes: fc.constantFrom(...RAW_BYTES) }), weight: 1 }
  )
}

function setAt (base: unknown, path: string, value: unknown): unknown {
  const keys = path.split('.')
  const root = structuredClone(base) as Record<string, unknown>
  let node: Record<string, unknown> = root
  keys.forEach((key, index) => {
    if (index === keys.length - 1) {
      withKey(node, key, value)
      return
    }
    const next = node[key]
    const nextIsIndex = /^\d+$/.test(keys[index + 1]!)
    if (typeof next !== 'object' || next === null || Array.isArray(next) !== nextIsIndex) {
      withKey(node, key, nextIsIndex ? [{}] : {})
    }
    node = node[key] as Record<string, unknown>
  })
  return root
}

function payloadOf (spec: BodySpec, base: unknown): string | Buffer {
  if ('json' in spec) return JSON.stringify(spec.json) ?? 'null'
  if ('text' in spec) return spec.text
  if ('bytes' in spec) return Buffer.from(spec.bytes)
  if ('value' in spec) return JSON.stringify(setAt(base, spec.replace, spec.value)) ?? 'null'
  return JSON.stringify(setAt(base, spec.replace, PLACEHOLDER)).replace(JSON.stringify(PLACEHOLDER), spec.jsonText)
}

/** Percent-encodes any string, lone surrogates too (as their WTF-8 bytes, which are not UTF-8). */
function percentEncode (text: string): string {
  let out = ''
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i)
    if (code >= 0xd800 && code <= 0xdbff && i + 1 < text.length && text.charCodeAt(i + 1) >= 0xdc00 && text.charCodeAt(i + 1) <= 0xdfff) {
      out += encodeURIComponent(text.slice(i, i + 2))
      i++
    } else if (code >= 0xd800 && code <= 0xdfff) {
      out += [0xe0 | (code >> 12), 0x80 | ((code >> 6) & 0x3f), 0x80 | (code & 0x3f)].map((byte) => `%${byte.toString(16).toUpperCase()}`).join('')
    } else {
      out += encodeURIComponent(text[i]!)
    }
  }
  return out
}

const RAW_URL_PARTS = ['%00', '%ff', '%c0%80', '%ed%a0%80', '%', '%zz', '%2', '%25', '%2F', 'a%2Fb', '%5C', '+', '%20', '%09', '%0A', '%E2%80%AE', '%EF%BB%BF', 'x%00y']

/** Text for a URL: a hostile string percent-encoded, or percent sequences that decode to nothing valid. */
const urlText: fc.Arbitrary<string> = fc.oneof(
  { arbitrary: hostileString.map(percentEncode), weight: 3 },
  { arbitrary: fc.constantFrom(...RAW_URL_PARTS), weight: 2 },
  { arbitrary: fc.array(fc.constantFrom(...RAW_URL_PARTS, 'a', '1', '-'), { minLength: 2, maxLength: 6 }).map((parts) => parts.join('')), weight: 1 }
)

const base64url = (text: string) => Buffer.from(text).toString('base64url')
const validUuid = fc.uuid()
/** Usage cursors: base64url of JSON arrays such as the API writes ([occurredAt, id]), with what does not belong there. */
const cursor: fc.Arbitrary<string> = fc.oneof(
  fc.tuple(
    fc.oneof(
      fc.constantFrom<unknown>('9999-12-31T23:59:59-14:00', '2024-01-01T00:00:00+99:00', '+275760-09-13T00:00:00.000Z', '-271821-04-20T00:00:00.000Z', '0000-01-01', '2024-01-01', null, 0, -8.64e15, 8.64e15, 1e300, -1, true, [], {}),
      fc.date().map((date) => Number.isNaN(date.getTime()) ? 'Invalid Date' : date.toISOString()),
      fc.double(),
      hostileString
    ),
    fc.oneof(
      fc.constantFrom<unknown>('-'.repeat(36), 'f'.repeat(36), '0'.repeat(36), '00000000-0000-0000-0000-00000000000g', 'ffffffff-ffff-ffff-ffff-ffffffffffff', 12345, null, [], '__proto__'),
      validUuid,
      fc.stringMatching(/^[0-9a-f-]{36}$/),
      hostileString
    )
  ).map((pair) => base64url(JSON.stringify(pair))),
  fc.jsonValue({ maxDepth: 2 }).map((value) => base64url(JSON.stringify(value))),
  fc.array(fc.jsonValue({ maxDepth: 1 }), { maxLength: 4 }).map((value) => base64url(JSON.stringify(value))),
  hostileString,
  fc.constantFrom('', '=', '===', 'W10', 'WyJ4Il0', 'a'.repeat(500), 'a'.repeat(501), '%00')
)

/** Values for the query parameters the API knows, each in the way that matters to it. */
function queryValue (key: string): fc.Arbitrary<string> {
  const text = (values: fc.Arbitrary<string>) => fc.oneof({ arbitrary: values.map(percentEncode), weight: 3 }, { arbitrary: urlText, weight: 1 })
  switch (key) {
    case 'from': case 'to': return text(fc.oneof(fc.constantFrom(...TIMESTAMPS), hostileString))
    case 'cursor': return text(cursor)
    case 'limit': return text(fc.oneof(fc.constantFrom('0', '-1', '1', '500', '501', '1.5', '1e2', '1e400', 'NaN', '', ' 1', '0x10', '9007199254740993', '99999999999999999999'), hostileString))
    case 'cascade': return text(fc.oneof(fc.constantFrom('true', 'false', 'TRUE', '1', '0', 'yes', '', 'null'), hostileString))
    default: return urlText
  }
}

type QuerySpec = Array<[string, string]>

function queryArbitrary (route: AdminRoute): fc.Arbitrary<QuerySpec> {
  const known = Object.keys((route.schema.querystring as { properties?: object } | undefined)?.properties ?? {})
  const pair = fc.oneof(
    ...known.map((key) => fc.tuple(fc.constant(key), queryValue(key))),
    fc.tuple(fc.constantFrom('__proto__', 'constructor', 'toString', 'hasOwnProperty', 'a[b]', '', '%00', '%ff', 'limit%00', 'x'.repeat(1000)), urlText),
    fc.tuple(urlText, urlText)
  )
  return fc.array(pair, { minLength: 1, maxLength: 5 })
}

function withQuery (url: string, query: QuerySpec): string {
  return `${url}?${query.map(([key, value]) => `${key}=${value}`).join('&')}`
}

/** Header values as HTTP can carry them: visible ASCII, space, tab and obs-text, no leading or trailing space. */
const headerText: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom('', 'x'.repeat(201), 'x'.repeat(8000), 'é', '\u00ff\u00fe', '__proto__', 'constructor', '%00', '\\u0000', 'null', 'a, b', 'Bearer', 'ä'.repeat(199)),
  fc.string({ unit: fc.oneof(fc.integer({ min: 0x20, max: 0x7e }), fc.integer({ min: 0x80, max: 0xff }), fc.constant(0x09)).map((code) => String.fromCharCode(code)), maxLength: 40 })
).map((value) => value.replace(/^[ \t]+|[ \t]+$/g, ''))

const CONTENT_TYPES = [
  'application/json', 'application/json; charset=utf-8', 'application/json; charset=latin1', 'application/json; charset=utf-16le',
  'application/json;charset=bogus', 'APPLICATION/JSON', 'application/json ; x=y', 'application/vnd.api+json', 'application/merge-patch+json',
  'application/jsonx', 'application/json, text/plain', 'text/plain', 'text/plain; charset=utf-8', 'text/json', 'application/x-www-form-urlencoded',
  'multipart/form-data; boundary=x', 'application/octet-stream', '*/*', 'application/*', ';', 'application/json; boundary=', 'application/json\u00ff'
]
const AUTHORIZATIONS = [
  `Bearer ${ADMIN_TOKEN}`, `bearer ${ADMIN_TOKEN}`, `BEARER ${ADMIN_TOKEN}`, `Bearer  ${ADMIN_TOKEN}`, `Bearer\t${ADMIN_TOKEN}`, `Bearer ${ADMIN_TOKEN} `,
  `Bearer ${ADMIN_TOKEN}, Bearer x`, `Bearer ${ADMIN_TOKEN.toUpperCase()}`, `Bearer ${ADMIN_TOKEN.slice(0, -1)}`, `Bearer ${ADMIN_TOKEN}\u00ff`,
  `Bearer ${'x'.repeat(8000)}`, `Basic ${base64url(`admin:${ADMIN_TOKEN}`)}`, ADMIN_TOKEN, 'Bearer', 'Bearer ', '', 'Bearer \u00e9'
]

interface HeaderSpec { authorization?: string, 'idempotency-key'?: string, 'content-type'?: string, 'content-length'?: string, accept?: string }

const headersArbitrary: fc.Arbitrary<HeaderSpec> = fc.record({
  authorization: fc.oneof({ arbitrary: fc.constant(`Bearer ${ADMIN_TOKEN}`), weight: 3 }, { arbitrary: fc.constantFrom(...AUTHORIZATIONS), weight: 1 }, { arbitrary: headerText.map((text) => `Bearer ${text}`), weight: 1 }),
  'idempotency-key': fc.oneof(headerText, fc.uuid()),
  'content-type': fc.oneof(fc.constantFrom(...CONTENT_TYPES), headerText),
  'content-length': fc.constantFrom('0', '1', '-1', 'abc', '99999999999999999999', '1, 1'),
  accept: fc.oneof(fc.constantFrom('application/xml', 'text/html', '*/*;q=0', ''), headerText)
}, { requiredKeys: [] })

// ---------------------------------------------------------------------------------------------------
// The admin API's world, checks and properties

interface World {
  tag: string
  org: { id: string }
  team: { id: string, scopeId: string }
  alertId: string
  /** The team's cost mapping (openai project `${tag}-proj`, trueUp), and a bucket of it yesterday, so a true-up can be accepted. */
  mappingId: string
  /** Budgets created by accepted requests: their status must read too. */
  created: string[]
}

interface Harness extends TestApp {
  logs: string[]
  /** The tables after the last 4xx (unchanged since), or null when they must be read again. */
  snapshot: unknown
}

async function expectStatus (harness: Harness, method: 'GET' | 'POST', url: string, body: unknown, expected: number[]): Promise<LightMyRequestResponse> {
  harness.snapshot = null
  const response = await harness.app.inject({ method, url, headers: AUTH, ...(body === undefined ? {} : { body: body as object }) })
  if (!expected.includes(response.statusCode)) throw new Error(`setup: ${method} ${url} answered ${response.statusCode}: ${response.body}`)
  return response
}

let worlds = 0
async function seedWorld (harness: Harness): Promise<World> {
  const tag = `w${++worlds}`
  const budget = async (body: Record<string, unknown>) =>
    (await expectStatus(harness, 'POST', PREFIX, { currency: 'USD', startDate: '2024-01-01', ...body }, [201])).json<{ id: string }>()
  const org = await budget({ name: `${tag} org`, scopeType: 'organization', scopeId: `${tag}-org`, amount: '100000', period: 'annual' })
  const team = await budget({
    name: `${tag} team`,
    scopeType: 'team',
    scopeId: `${tag}-team`,
    parentId: org.id,
    amount: '1000',
    period: 'monthly',
    alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['email'] }, { threshold: 90, actions: ['require-approval'] }]
  })
  await expectStatus(harness, 'POST', `${PREFIX}/${team.id}/usage`, { amount: '600', currency: 'USD', metadata: { requestId: `${tag}-seed`, modelId: 'gpt-4o', userId: 'alice' } }, [201])
  await expectStatus(harness, 'POST', `${PREFIX}/${team.id}/approvals`, { amount: '100', reason: 'seed' }, [201])
  const alerts = (await expectStatus(harness, 'GET', `${PREFIX}/${team.id}/alerts`, undefined, [200])).json<{ alerts: Array<{ id: string }> }>().alerts
  if (alerts[0] === undefined) throw new Error('setup: the seeded usage crossed no alert')
  await expectStatus(harness, 'GET', `${PREFIX}/${org.id}/status`, undefined, [200])
  const mapping = (await expectStatus(harness, 'POST', `${PREFIX}/provider-costs/mappings`, { provider: 'openai', kind: 'project', value: `${tag}-proj`, budgetId: team.id, trueUp: true }, [201])).json<{ id: string }>()
  const imported = await harness.app.inject({ method: 'POST', url: `${PREFIX}/provider-costs/import`, headers: { ...AUTH, 'content-type': 'text/csv' },
    payload: `date,provider,account,project,amount,currency\n${YESTERDAY},openai,acme,${tag}-proj,12.5,USD\n` })
  if (imported.statusCode !== 200) throw new Error(`setup: the cost import answered ${imported.statusCode}: ${imported.body}`)
  return { tag, org, team: { id: team.id, scopeId: `${tag}-team` }, alertId: alerts[0].id, mappingId: mapping.id, created: [] }
}

let mappings = 0
/** The path parameters that reach the seeded world: DELETE aims at a fresh leaf budget (or cost mapping), so it can succeed every run. */
async function targetParams (harness: Harness, route: AdminRoute, world: World): Promise<Record<string, string>> {
  if (route.params.includes('type')) return { type: 'team', id: encodeURIComponent(world.team.scopeId) }
  if (route.url.startsWith(`${PREFIX}/provider-costs/mappings/`)) {
    if (route.method !== 'DELETE') return { id: world.mappingId }
    const victim = await expectStatus(harness, 'POST', `${PREFIX}/provider-costs/mappings`, { provider: 'openai', kind: 'project', value: `${world.tag}-victim-${++mappings}`, budgetId: world.team.id }, [201])
    return { id: victim.json<{ id: string }>().id }
  }
  if (route.method !== 'DELETE') return { id: world.team.id, alertId: world.alertId }
  const victim = await expectStatus(harness, 'POST', PREFIX, {
    name: `${world.tag} victim`, scopeType: 'user', scopeId: `${world.tag}-victim`, parentId: world.team.id, amount: '1', currency: 'USD', period: 'daily', startDate: '2024-01-01'
  }, [201])
  return { id: victim.json<{ id: string }>().id }
}

/** A broken property; `signature` names the failure without the input's details, to tell distinct failures apart. */
class PropertyFailure extends Error {
  constructor (readonly signature: string, message: string) {
    super(message)
    this.stack = `${message}\n` // the request and response say it all; the test's own stack would not
  }
}

/** The error lines the app logged for the last request: message, error type, code, and where in lib/ it was thrown. */
function loggedErrors (logs: string[]): string[] {
  return logs.map((line) => {
    try {
      const entry = JSON.parse(line) as { msg?: string, err?: { type?: string, message?: string, code?: string, stack?: string } }
      const where = entry.err?.stack?.split('\n').find((frame) => frame.includes('/lib/'))?.trim().replace(/^at /, '').replace(/\(.*\/(lib\/[^)]*)\)/, '($1)')
      return `log: ${entry.msg ?? ''}: ${entry.err?.type ?? ''} ${entry.err?.code ?? ''} ${entry.err?.message ?? ''}${where === undefined ? '' : ` at ${where}`}`
    } catch {
      return `log: ${line.slice(0, 300)}`
    }
  })
}

function failure (check: string, request: string, response: LightMyRequestResponse, logs: string[], detail = ''): PropertyFailure {
  let code: unknown
  try {
    const body = response.json() as { code?: unknown, error?: { code?: unknown } }
    code = body.code ?? body.error?.code
  } catch {
    code = 'not JSON'
  }
  const logged = loggedErrors(logs)
  // The cause without the input's own text: ids, quoted values and numbers in the logged message are left out.
  const cause = `${logged[0]?.replace(/ at .*$/, '') ?? ''} ${detail.split('\n')[0]?.replace(/: .*$/, '') ?? ''}`
    .replace(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/gi, '<uuid>').replace(/"[^"]*"|'[^']*'/g, '"…"').replace(/\b\d[\d.e-]*\b/g, 'N')
  const signature = `${check}: ${response.statusCode} ${String(code)} ${cause}`.trim()
  return new PropertyFailure(signature, [`${check}: ${request}`, `${response.statusCode} ${response.body.slice(0, 600)}`, ...logged, detail].filter(Boolean).join('\n'))
}

function changedTables (before: unknown, after: unknown): string {
  const a = before as Record<string, string[]>
  const b = after as Record<string, string[]>
  return Object.keys({ ...a, ...b }).filter((table) => !isDeepStrictEqual(a[table], b[table])).map((table) => {
    const added = (b[table] ?? []).filter((row) => !(a[table] ?? []).includes(row))
    const removed = (a[table] ?? []).filter((row) => !(b[table] ?? []).includes(row))
    return [`${table}: ${removed.length} row(s) went, ${added.length} came`, ...(removed[0] === undefined ? [] : [`- ${removed[0].slice(0, 500)}`]), ...(added[0] === undefined ? [] : [`+ ${added[0].slice(0, 500)}`])].join('\n')
  }).join('\n')
}

/** A Fastify 404 for a URL no route matches: the admin API's only if that URL lies under its prefix. */
function outsideAdminApi (body: unknown): boolean {
  const match = /^Route [A-Z]+:(\S*) not found$/.exec((body as { message?: string } | null)?.message ?? '')
  return match !== null && match[1] !== PREFIX && !match[1]!.startsWith(`${PREFIX}/`)
}

const ADMIN_CODE = /^(BUDGET_ERR_|FST_ERR_)[A-Z0-9_]+$/

/** How often each status answered in the current property (printed with HOSTILE_COLLECT=1, to see what the inputs reach). */
const answered = new Map<number, number>()

/** Empties every budget table (as snapshotTables finds them), so each property starts from its own small world. */
async function emptyTables (harness: Harness): Promise<void> {
  const tables = Object.keys(await snapshotTables(harness.sql) as Record<string, unknown>)
  // The audit log refuses a truncate (append-only); a test's own reset goes around its trigger.
  await harness.sql.begin(async (tx) => {
    await tx`set local session_replication_role = replica`
    await tx.unsafe(`truncate ${tables.map((name) => `"${name.replaceAll('"', '""')}"`).join(', ')} cascade`)
  })
  harness.snapshot = null
}

/** Sends one request and checks (a), (b), (c), and (d) after an accepted write. */
async function probe (harness: Harness, world: World, request: InjectOptions): Promise<LightMyRequestResponse> {
  // A 4xx left the tables as they were: its snapshot is the next request's "before".
  const before = harness.snapshot ?? await snapshotTables(harness.sql)
  harness.snapshot = null
  harness.logs.length = 0
  const response = await harness.app.inject(request)
  answered.set(response.statusCode, (answered.get(response.statusCode) ?? 0) + 1)
  const label = `${String(request.method)} ${request.url as string}`
  if (response.statusCode >= 500) throw failure('(a) a 5xx', label, response, harness.logs)
  if (response.statusCode >= 400) {
    let body: unknown
    try {
      body = response.json()
    } catch {
      throw failure('(b) a 4xx whose body is not JSON', label, response, harness.logs)
    }
    const { code, statusCode } = (body ?? {}) as { code?: unknown, statusCode?: unknown }
    if (!(response.statusCode === 404 && outsideAdminApi(body))) {
      if (typeof code !== 'string' || !ADMIN_CODE.test(code)) throw failure('(b) a 4xx without a stable code', label, response, harness.logs)
      if (statusCode !== response.statusCode) throw failure('(b) a 4xx whose body has another statusCode', label, response, harness.logs)
    }
    const after = await snapshotTables(harness.sql)
    if (!isDeepStrictEqual(before, after)) throw failure('(c) a 4xx that changed the tables', label, response, harness.logs, changedTables(before, after))
    harness.snapshot = after
  } else if (request.method !== 'GET' && request.method !== 'HEAD') {
    const createdId = request.method === 'POST' && request.url === PREFIX ? (response.json() as { id?: unknown }).id : undefined
    if (typeof createdId === 'string') world.created.push(createdId)
    await statusReads(harness, world, `${label}\n${response.statusCode} ${response.body.slice(0, 600)}`)
  }
  return response
}

/** (d): the seeded budgets' status (and that of budgets accepted requests made) reads 200. */
async function statusReads (harness: Harness, world: World, accepted: string): Promise<void> {
  for (const id of [world.org.id, world.team.id, ...world.created]) {
    harness.logs.length = 0
    const response = await harness.app.inject({ method: 'GET', url: `${PREFIX}/${id}/status`, headers: AUTH })
    if (response.statusCode !== 200) throw failure('(d) status unreadable after an accepted write', `GET ${PREFIX}/${id}/status`, response, harness.logs, `after the accepted: ${accepted}`)
  }
}

/** (d) after a property: every GET route of the table still reads 200 for the seeded budgets, and every status. */
async function everyReadReads (harness: Harness, world: World): Promise<string[]> {
  const failures: string[] = []
  const urls = declaredRoutes(harness.routes).filter((route) => route.method === 'GET')
    .map((route) => fillPath(route, route.params.includes('type') ? { type: 'team', id: encodeURIComponent(world.team.scopeId) } : { id: world.team.id }))
  for (const url of [...urls, ...[world.org.id, ...world.created].map((id) => `${PREFIX}/${id}/status`)]) {
    harness.logs.length = 0
    const response = await harness.app.inject({ method: 'GET', url, headers: AUTH })
    if (response.statusCode !== 200) failures.push(failure('(d) unreadable after the property', `GET ${url}`, response, harness.logs).message)
  }
  harness.snapshot = null
  return failures
}

/** Long runs of one character (or one surrogate pair) shown as ⟨x ×5000⟩, so a counterexample stays readable. */
function compact (text: string): string {
  return text.replace(/(.{1,2}?)\1{31,}/gs, (run: string, unit: string) => `⟨${unit} ×${run.length / unit.length}⟩`)
}

interface Reporter {
  pass: (message: string) => unknown
  fail: (message: string, extra: { diagnostic: true, counterexample: string }) => unknown
  comment: (...message: unknown[]) => unknown
}

/**
 * Runs a property and reports it through tap (a failing property does not stop the next one). fast-check
 * shrinks a failure, for at most SHRINK_BUDGET more requests. With HOSTILE_COLLECT=1 the property goes on
 * past failures instead: it lists every distinct failure (by signature), then shrinks each one on its own.
 */
async function runProperty<T> (t: Reporter, name: string, arbitrary: fc.Arbitrary<T>, check: (value: T) => Promise<void>,
  { runs = RUNS, examples = [] as T[] } = {}): Promise<void> {
  const parameters = { numRuns: runs, seed: SEED, includeErrorInReport: true, examples: examples.map((example) => [example] as [T]) }
  const shrinking = (only?: string) => {
    let failed = false
    let budget = SHRINK_BUDGET
    return fc.asyncProperty(arbitrary, async (value) => {
      if (failed && --budget < 0) return true // out of shrinking budget: keep the smallest failure so far
      try {
        await check(value)
      } catch (error) {
        if (only !== undefined && !(error instanceof PropertyFailure && error.signature === only)) return true
        failed = true
        throw error
      }
    })
  }
  if (process.env.HOSTILE_COLLECT !== '1') {
    try {
      await fc.assert(shrinking(), parameters)
      t.pass(name)
    } catch (error) {
      t.fail(name, { diagnostic: true, counterexample: compact((error as Error).message) })
    }
    return
  }
  const seen = new Map<string, { value: T, message: string, example: boolean }>()
  let run = 0
  answered.clear()
  await fc.assert(fc.asyncProperty(arbitrary, async (value) => {
    run++
    try {
      await check(value)
    } catch (error) {
      const signature = error instanceof PropertyFailure ? error.signature : `thrown: ${String(error)}`
      if (!seen.has(signature)) seen.set(signature, { value, message: (error as Error).message, example: run <= examples.length })
    }
  }), { ...parameters, numRuns: runs * 3 })
  t.comment(`${name}: answered ${[...answered].sort(([a], [b]) => a - b).map(([status, count]) => `${status} x${count}`).join(', ')}`)
  if (seen.size === 0) t.pass(name)
  for (const [signature, first] of seen) {
    let report = `first input: ${fc.stringify(first.value)}\n${first.message}`
    if (!first.example) {
      try {
        await fc.assert(shrinking(signature), { ...parameters, numRuns: runs * 3, examples: [] })
      } catch (error) {
        report = (error as Error).message
      }
    }
    t.fail(`${name}: ${signature}`, { diagnostic: true, counterexample: compact(report) })
  }
}

/** A valid body per route, from its schema's example where it has one; the mutations start from it. */
function validBody (route: AdminRoute, world: World): unknown {
  const path = route.url.slice(PREFIX.length)
  const example = structuredClone((route.schema.body as { examples?: unknown[] } | undefined)?.examples?.[0] ?? {}) as Record<string, unknown>
  if (route.method === 'POST' && path === '') return { ...example, scopeId: world.team.scopeId, parentId: world.org.id }
  if (route.method === 'POST' && path === '/provider-costs/mappings') return { ...example, value: `${world.tag}-new-${++mappings}`, budgetId: world.team.id }
  if (route.method === 'PUT' && path.startsWith('/provider-costs/mappings/')) return { trueUp: true }
  if (path === '/reconciliation/true-up') return { provider: 'openai', day: YESTERDAY, budgetId: world.team.id }
  if (route.method === 'PUT') return { ...example, alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['email'] }] }
  if (path.endsWith('/usage')) {
    const { requestId: _requestId, ...metadata } = (example.metadata ?? {}) as Record<string, unknown>
    return { ...example, metadata }
  }
  if (path.endsWith('/approvals')) return { amount: '50', reason: 'hostile battery' }
  // a replay whose proposal changes a seeded budget and adds one under it (the replay rolls both back)
  if (path === '/simulate') {
    return { ...example, proposal: { update: [{ id: world.team.id, changes: { amount: '500' } }], create: [{ name: 'proposed', scopeType: 'user', scopeId: 'u-1', parentId: world.team.id, amount: '100', currency: 'USD', period: 'monthly', startDate: '2024-01-01' }] } }
  }
  return example
}

/** Where a hostile value can go: every field of the body schema, one level into its arrays of objects and objects, and fields it does not know. */
function bodyPaths (route: AdminRoute): string[] {
  const schema = route.schema.body as { properties?: Record<string, { type?: unknown, items?: { properties?: object }, properties?: object }> } | undefined
  const paths: string[] = []
  for (const [key, property] of Object.entries(schema?.properties ?? {})) {
    paths.push(key)
    if (property.items?.properties !== undefined) paths.push(...Object.keys(property.items.properties).map((inner) => `${key}.0.${inner}`), `${key}.0`, `${key}.0.unknownField`)
    if (property.properties !== undefined) paths.push(...Object.keys(property.properties).map((inner) => `${key}.${inner}`), `${key}.__proto__`, `${key}.constructor`)
  }
  return [...paths, '__proto__', 'constructor', 'toString', 'unknownField', '']
}

/** The seed corpus: the inputs that broke things before, always run first (a few per route). */
function bodyExamples (route: AdminRoute): BodySpec[] {
  const fields = Object.keys((route.schema.body as { properties?: object } | undefined)?.properties ?? {})
  const has = (field: string) => fields.includes(field)
  const text = ['name', 'source', 'reason', 'description'].find(has) ?? fields[0] ?? 'unknownField'
  const examples: BodySpec[] = [
    { replace: text, value: 'a\u0000b' }, { replace: text, jsonText: '"a\\ud800b"' }, { text: '{"\\ud800":"\\u0000"}' },
    { text: DEEP_ARRAY }, { replace: has('metadata') ? 'metadata.deep' : text, jsonText: DEEP_ARRAY }
  ]
  if (has('name')) examples.push({ replace: 'name', value: '   ' })
  const timestamp = ['startDate', 'occurredAt', 'expiresAt'].find(has)
  if (timestamp !== undefined) examples.push({ replace: timestamp, value: '2024-01-01T00:00:00+99:00' }, { replace: timestamp, value: '9999-12-31T23:59:59-14:00' })
  if (has('expiresAt')) examples.push({ replace: 'expiresAt', value: 'not a date' }, { replace: 'expiresAt', value: '2024-02-30' })
  const money = ['amount', 'estimatedCost'].find(has)
  if (money !== undefined) examples.push({ replace: money, value: '999999999999999999.9999999999' }, { replace: money, value: '1000000000000000000' })
  if (has('alerts')) for (const threshold of [1e-7, 1e-300, 0.0000001]) examples.push({ replace: 'alerts.0.threshold', value: threshold })
  if (has('metadata')) {
    examples.push({ replace: 'metadata.modelId', value: '__proto__' }, { replace: 'metadata.modelId', jsonText: '"\\u0000"' },
      { replace: 'metadata', value: JSON.parse('{"__proto__":{"requestId":"x"},"constructor":"toString"}') })
  }
  if (has('parentId')) examples.push({ replace: 'parentId', value: '-'.repeat(36) })
  if (has('enforcement')) {
    // the enum's newest value at its edges: case, spaces, NUL, a prefix, a list
    for (const enforcement of ['Shadow', 'SHADOW', ' shadow', 'shadow\u0000', 'shado', 'shadows', ['shadow'], { shadow: true }]) {
      examples.push({ replace: 'enforcement', value: enforcement })
    }
  }
  if (has('maxCallCost')) {
    for (const cap of ['0', '-0.5', 0, -1, '1e-3', ' 0.5', '0.00000000001', '1000000000000000000', '999999999999999999.9999999999', 1e-11, 1e300, '0.5\u0000']) {
      examples.push({ replace: 'maxCallCost', value: cap })
    }
  }
  if (has('timezone')) {
    for (const zone of ['america/new_york', '+05:00', 'EST5EDT,M3.2.0,M11.1.0', 'Mars/Olympus_Mons', '../../../etc/passwd', 'UTC\u0000', 'Asia/Tokyo']) {
      examples.push({ replace: 'timezone', value: zone })
    }
    examples.push({ replace: 'fiscalYearStartMonth', value: 4 }, { replace: 'periodAlignment', value: 'calendar' })
  }
  return examples
}

function queryExamples (route: AdminRoute): QuerySpec[] {
  const known = Object.keys((route.schema.querystring as { properties?: object } | undefined)?.properties ?? {})
  const examples: QuerySpec[] = [[['x', '%00'], ['__proto__', '%ff']]]
  for (const key of known) examples.push([[key, 'a%00b']])
  if (known.includes('from')) examples.push([['from', percentEncode('2024-01-01T00:00:00+99:00')]], [['to', percentEncode('9999-12-31T23:59:59-14:00')]])
  if (known.includes('cursor')) {
    for (const pair of [['2024-01-01T00:00:00Z', '-'.repeat(36)], [0, 1], [-8.64e15, '00000000-0000-4000-8000-000000000000'], ['9999-12-31T23:59:59-14:00', '00000000-0000-4000-8000-000000000000']]) {
      examples.push([['cursor', base64url(JSON.stringify(pair))]])
    }
  }
  if (known.includes('modelId')) examples.push([['modelId', '__proto__']])
  return examples
}

/** A path parameter: hostile text as it goes into the URL, or a variant of the id the request aims at (upper case, braces, …). */
type PathSpec = Partial<Record<string, string | { variant: keyof typeof ID_VARIANTS }>>

const ID_VARIANTS = {
  upperCase: (id: string) => id.toUpperCase(),
  braces: (id: string) => `%7B${id}%7D`,
  noHyphens: (id: string) => id.replace(/-/g, ''),
  trailingNul: (id: string) => `${id}%00`,
  leadingSpace: (id: string) => `%20${id}`,
  urn: (id: string) => `urn:uuid:${id}`,
  longer: (id: string) => `${id}0`,
  shorter: (id: string) => id.slice(0, -1),
  encodedSlash: (id: string) => `${id}%2F..`,
  extension: (id: string) => `${id}.json`
}

function resolvePath (spec: PathSpec, target: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(spec).flatMap(([name, value]) => value === undefined
    ? []
    : [[name, typeof value === 'string' ? value : ID_VARIANTS[value.variant](decodeURIComponent(target[name] ?? 'x'))]]))
}

/** Hostile values for each path parameter: text that stays one segment (so the request still reaches the route). */
function pathArbitrary (route: AdminRoute): fc.Arbitrary<PathSpec> {
  const segment = fc.oneof(
    { arbitrary: urlText.filter((text) => text !== '' && !/^(\.|%2e){1,2}$/i.test(text)), weight: 4 },
    { arbitrary: fc.constantFrom('-'.repeat(36), 'f'.repeat(36), '0', '-1', '1e400', 'null', 'undefined', '__proto__', 'constructor', 'x'.repeat(10000), 'a..b', '...', '%2e%2e%2e'), weight: 2 },
    { arbitrary: fc.uuid(), weight: 1 }
  )
  const variant = fc.constantFrom(...Object.keys(ID_VARIANTS) as Array<keyof typeof ID_VARIANTS>).map((name) => ({ variant: name }))
  return fc.record(Object.fromEntries(route.params.map((name) => [name, name === 'type' ? segment : fc.oneof({ arbitrary: segment, weight: 3 }, { arbitrary: variant, weight: 1 })])) as Record<string, fc.Arbitrary<string | { variant: keyof typeof ID_VARIANTS }>>, { requiredKeys: [] })
}

function pathExamples (route: AdminRoute): PathSpec[] {
  const values = ['%00', '%ff', '%c0%80', percentEncode('\ud800'), 'x'.repeat(10000), 'not-a-uuid', '-'.repeat(36)]
  return route.params.flatMap((name) => values.map((value) => ({ [name]: value })))
}

t.test('admin API: hostile input', async (t) => {
  const logs: string[] = []
  const stream = new Writable({ write (chunk, _encoding, done) { logs.push(String(chunk)); done() } })
  const app = await buildApp(t, { notifications: { intervalMs: 0 }, statusCacheTtlMs: 0 }, { logger: { level: 'error', stream } })
  const harness: Harness = { ...app, logs, snapshot: null }
  const routes = declaredRoutes(harness.routes)
  t.ok(routes.length >= 16, `the route table has every admin route (${routes.length})`)

  for (const route of routes) {
    const name = `${route.method} ${route.url}`
    const send = async (world: World, params: Record<string, string>, extra: Partial<InjectOptions> = {}, body?: BodySpec, query?: QuerySpec) => {
      const hasBody = route.method !== 'GET' && route.method !== 'HEAD'
      const url = query === undefined ? fillPath(route, params) : withQuery(fillPath(route, params), query)
      const payload = body !== undefined
        ? payloadOf(body, validBody(route, world))
        : hasBody && route.schema.body !== undefined ? JSON.stringify(validBody(route, world)) : undefined
      await probe(harness, world, {
        method: route.method as 'GET',
        url,
        ...(payload === undefined ? {} : { payload }),
        ...extra,
        headers: { ...AUTH, ...(payload === undefined ? {} : { 'content-type': 'application/json' }), ...extra.headers }
      })
    }
    const property = async <T>(kind: string, arbitrary: fc.Arbitrary<T>, check: (world: World, value: T) => Promise<void>, examples: T[]) => {
      await t.test(`${name}: ${kind}`, async (t) => {
        await emptyTables(harness)
        const world = await seedWorld(harness)
        await runProperty(t, `${name}: ${kind}: (a) no 5xx, (b) coded 4xx, (c) a 4xx writes nothing, (d) accepted writes keep status readable`,
          arbitrary, async (value) => { await check(world, value) }, { examples })
        const unreadable = await everyReadReads(harness, world)
        t.same(unreadable, [], `${name}: ${kind}: (d) every read of the seeded budgets still answers 200`)
      })
    }

    if (route.method !== 'GET' && route.method !== 'HEAD') {
      await property('hostile bodies', bodyArbitrary(bodyPaths(route)), async (world, body) => {
        await send(world, await targetParams(harness, route, world), {}, body)
      }, bodyExamples(route))
    }
    await property('hostile query strings', queryArbitrary(route), async (world, query) => {
      await send(world, await targetParams(harness, route, world), {}, undefined, query)
    }, queryExamples(route))
    if (route.params.length > 0) {
      await property('hostile path parameters', pathArbitrary(route), async (world, params) => {
        const target = await targetParams(harness, route, world)
        await send(world, { ...target, ...resolvePath(params, target) })
      }, pathExamples(route))
    }
    await property('hostile headers', headersArbitrary, async (world, headers) => {
      await send(world, await targetParams(harness, route, world), { headers: { ...headers } })
    }, [
      { 'idempotency-key': '' }, { 'idempotency-key': 'x'.repeat(201) }, { 'idempotency-key': '\u00ff' }, { 'content-type': 'text/plain' },
      { 'content-type': 'application/json; charset=utf-16le' }, { 'content-type': '' }, { authorization: `Bearer ${ADMIN_TOKEN}\u00ff` }, { authorization: `bearer ${ADMIN_TOKEN}` }
    ])
  }

  await t.test('URLs under the prefix that reach no route', async (t) => {
    await emptyTables(harness)
    const world = await seedWorld(harness)
    const byName = new Map(routes.map((route) => [`${route.method} ${route.url}`, route]))
    const dotted = fc.record({
      route: fc.constantFrom(...byName.keys()),
      segment: fc.constantFrom('', '.', '..', '%2e', '%2e%2e', '%2E%2E', '.%2e', './x', '../x', '..%2f', '..%5c', ';', '%3B'),
      param: fc.nat({ max: 3 }),
      extra: fc.constantFrom('', '/', '/x', '//', '/..', '/%00', '?', '#x')
    })
    await runProperty(t, 'dot segments, empty segments and extra segments: (a) no 5xx, (b) a coded 4xx, (c) nothing written', dotted, async ({ route: name, segment, param, extra }) => {
      const route = byName.get(name)!
      const params: Record<string, string> = route.params.length === 0 ? {} : { [route.params[param % route.params.length]!]: segment }
      await probe(harness, world, { method: route.method as 'GET', url: `${fillPath(route, { id: world.team.id, ...params })}${extra}`, headers: AUTH })
    }, { examples: routes.filter((route) => route.params.includes('id')).map((route) => ({ route: `${route.method} ${route.url}`, segment: '..', param: route.params.indexOf('id'), extra: '' })) })
    t.same(await everyReadReads(harness, world), [], '(d) every read of the seeded budgets still answers 200')
  })

  await t.test('two usage amounts of 999999999999999999 on one budget (numeric(28,10) overflows when summed)', async (t) => {
    await emptyTables(harness)
    const world = await seedWorld(harness)
    const leaf = (await expectStatus(harness, 'POST', PREFIX, {
      name: 'huge', scopeType: 'project', scopeId: `${world.tag}-huge`, amount: '999999999999999999', currency: 'USD', period: 'annual', startDate: '2024-01-01'
    }, [201])).json<{ id: string }>()
    world.created.push(leaf.id)
    const failures: string[] = []
    for (const requestId of ['huge-1', 'huge-2', 'huge-3']) {
      try {
        await probe(harness, world, { method: 'POST', url: `${PREFIX}/${leaf.id}/usage`, headers: AUTH, body: { amount: '999999999999999999', currency: 'USD', metadata: { requestId } } })
      } catch (error) {
        failures.push((error as Error).message)
      }
    }
    for (const url of [`${PREFIX}/${leaf.id}/usage/summary`, `${PREFIX}/${leaf.id}/usage`, `${PREFIX}/${leaf.id}/refresh-cache`]) {
      try {
        await probe(harness, world, { method: url.endsWith('refresh-cache') ? 'POST' : 'GET', url, headers: AUTH })
      } catch (error) {
        failures.push((error as Error).message)
      }
    }
    for (const estimatedCost of ['999999999999999999', '999999999999999999.9999999999']) {
      try {
        await probe(harness, world, { method: 'POST', url: `${PREFIX}/${leaf.id}/check-constraints`, headers: AUTH, body: { estimatedCost } })
      } catch (error) {
        failures.push((error as Error).message)
      }
    }
    failures.push(...await everyReadReads(harness, world))
    t.same(failures, [], 'no 5xx, coded 4xx that write nothing, and the budget\'s status still reads')
  })
})

// ---------------------------------------------------------------------------------------------------
// The gated chat route

t.test('chat completions behind the gate: hostile input', async (t) => {
  // The gateway logs nothing; its errors are caught here, as log lines, for the failure reports.
  const logs: string[] = []
  const gateway = await buildGateway(t, {
    routes: (app) => {
      app.addHook('onError', async (_request, _reply, error) => {
        logs.push(JSON.stringify({ msg: 'chat completion failed', err: { type: error.name, code: error.code, message: error.message, stack: error.stack } }))
      })
    }
  })
  const admin = async (method: 'GET' | 'POST', url: string) => await gateway.app.inject({ method, url, headers: AUTH })
  const org = await gateway.createBudget({ name: 'acme', scopeType: 'organization', scopeId: 'acme', amount: '100000', period: 'annual' })
  const team = await gateway.createBudget({
    name: 'team a', scopeType: 'team', scopeId: 'team-a', parentId: org.id, amount: '1000',
    alerts: [{ threshold: 50, actions: ['restrict-models'], allowedModels: ['gpt-4o-mini'] }]
  })
  const tiny = await gateway.createBudget({ name: 'tiny', scopeType: 'project', scopeId: 'tiny', amount: '0.000001' })
  const user = await gateway.createBudget({ name: 'alice', scopeType: 'user', scopeId: 'alice', parentId: team.id, amount: '10', period: 'daily' })
  await spendTo(gateway.app, team.id, '600')
  const seeded = [org.id, team.id, tiny.id, user.id]
  for (const id of seeded) if ((await admin('GET', `${PREFIX}/${id}/status`)).statusCode !== 200) throw new Error('setup: status')

  const baseBody = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 20 }
  const baseHeaders = { 'x-relay-team-id': 'team-a', 'x-relay-user-id': 'alice' }

  let snapshot: unknown = null
  async function chatProbe (payload: string | Buffer, headers: Record<string, string>): Promise<void> {
    const before = snapshot ?? await snapshotTables(gateway.sql)
    snapshot = null
    logs.length = 0
    const response = await gateway.app.inject({ method: 'POST', url: '/v1/chat/completions', payload, headers: { 'content-type': 'application/json', ...headers } })
    answered.set(response.statusCode, (answered.get(response.statusCode) ?? 0) + 1)
    const label = `POST /v1/chat/completions ${fc.stringify(headers)}`
    if (response.statusCode >= 500) throw failure('(a) a 5xx', label, response, logs)
    if (response.statusCode >= 400) {
      let error: { type?: unknown, code?: unknown, message?: unknown, param?: unknown } | undefined
      try {
        error = (response.json() as { error?: typeof error }).error
      } catch {
        throw failure('(b) a 4xx whose body is not JSON', label, response, logs)
      }
      if (typeof error !== 'object' || error === null || typeof error.type !== 'string' || typeof error.code !== 'string' || error.code === '' ||
        typeof error.message !== 'string' || !(error.param === null || typeof error.param === 'string')) {
        throw failure('(b) a 4xx not in OpenAI\'s error shape with a code', label, response, logs)
      }
      await gateway.settled()
      const after = await snapshotTables(gateway.sql)
      if (!isDeepStrictEqual(before, after)) throw failure('(c) a 4xx that changed the tables', label, response, logs, changedTables(before, after))
      snapshot = after
    } else {
      await gateway.settled()
      for (const id of seeded) {
        logs.length = 0
        const status = await admin('GET', `${PREFIX}/${id}/status`)
        if (status.statusCode !== 200) throw failure('(d) status unreadable after an accepted call', `GET ${PREFIX}/${id}/status`, status, logs, `after the accepted: ${label}: ${response.statusCode} ${response.body.slice(0, 300)}`)
      }
    }
  }

  const chatPaths = [
    'model', 'messages', 'messages.0', 'messages.0.role', 'messages.0.content', 'messages.0.content.0', 'messages.0.content.0.type',
    'messages.0.content.0.text', 'messages.0.content.0.image_url', 'messages.0.name', 'messages.0.unknownField', 'messages.1',
    'max_tokens', 'max_completion_tokens', 'n', 'stream', 'stream_options', 'temperature', 'user', 'tools', 'response_format', 'logit_bias',
    '__proto__', 'constructor', 'unknownField'
  ]
  const chatValues = fc.oneof(
    { arbitrary: hostileValue, weight: 4 },
    { arbitrary: fc.constantFrom(...MODELS, 'gpt-4o', 'gpt-4.1', 'gpt-4.1-mini', 'gpt-4.1-nano', 'gpt-4o-mini'), weight: 2 },
    { arbitrary: fc.constantFrom<unknown>(0, -1, 1, 1.5, '20', null, true, [], {}, 2 ** 31, 2 ** 53, 1e21, 1e300, 1e308, Number.MAX_SAFE_INTEGER), weight: 2 },
    { arbitrary: fc.constantFrom<unknown>(
      [{ type: 'text', text: '\u0000' }], [{ type: 'image_url', image_url: { url: 'data:,x' } }], [{ type: '\u0000' }], [{ type: 'text' }], [{}], [null], ['x'],
      [{ type: 'text', text: 'x'.repeat(100000) }], { role: 'user', content: '\ud800' }, { role: '__proto__', content: 'x' }
    ), weight: 2 }
  )
  const chatExamples: BodySpec[] = [
    ...MODELS.map((model) => ({ replace: 'model', value: model })),
    ...[0, -1, 1.5, '20', null, true, [], {}, 1e21, 1e300, 1e308, 2 ** 53].map((value) => ({ replace: 'max_tokens', value })),
    ...[1e21, 1e308, '20'].map((value) => ({ replace: 'max_completion_tokens', value })),
    ...[0, -1, 1e9, 1e300, '2', null].map((value) => ({ replace: 'n', value })),
    { replace: 'messages.0.content', value: [{ type: 'text', text: 'a\u0000b' }] },
    { replace: 'messages.0.content', jsonText: '"\\ud800"' },
    { replace: 'messages.0.content', value: [{ type: 'image_url', image_url: { url: 'https://example.com/x.png' } }] },
    { text: '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"\\ud800"}],"max_tokens":20}' },
    { text: DEEP_ARRAY }, { replace: 'messages.0.content', jsonText: DEEP_ARRAY }, { replace: 'unknownField', jsonText: DEEP_ARRAY },
    { replace: '__proto__', value: { model: 'gpt-4o' } }
  ]

  await t.test('hostile bodies', async (t) => {
    await runProperty(t, 'chat route: hostile bodies: (a) no 5xx, (b) OpenAI-shaped coded 4xx, (c) a 4xx writes nothing, (d) status still reads',
      bodyArbitrary(chatPaths, chatValues), async (body) => { await chatProbe(payloadOf(body, baseBody), baseHeaders) },
      { runs: RUNS * 2, examples: chatExamples })
  })

  await t.test('hostile headers', async (t) => {
    const scopeValue = fc.oneof(headerText, fc.constantFrom('team-a', 'alice', 'acme', 'tiny', '__proto__', 'constructor', 'x'.repeat(200), 'x'.repeat(201)))
    const chatHeaders = fc.record({
      'x-relay-user-id': scopeValue,
      'x-relay-team-id': scopeValue,
      'x-relay-project-id': scopeValue,
      'x-relay-organization-id': scopeValue,
      'content-type': fc.oneof(fc.constantFrom(...CONTENT_TYPES), headerText),
      // The caller's cap on one call: malformed is 400 invalid_max_cost, too small a 402; neither holds anything.
      'x-budget-max-cost': fc.oneof(headerText, fc.constantFrom(...MAX_COSTS),
        fc.tuple(fc.bigInt({ min: 0n, max: 10n ** 20n }), fc.bigInt({ min: 0n, max: 10n ** 12n })).map(([whole, fraction]) => `${whole}.${fraction}`))
    }, { requiredKeys: [] })
    await runProperty(t, 'chat route: hostile x-relay-*-id and content-type headers: (a), (b), (c), (d)', chatHeaders, async (headers) => {
      await chatProbe(JSON.stringify(baseBody), headers)
    }, {
      runs: RUNS * 2,
      examples: [
        { 'x-relay-team-id': '' }, { 'x-relay-team-id': 'x'.repeat(201) }, { 'x-relay-team-id': '__proto__' }, { 'x-relay-user-id': '\u00ff' },
        { 'x-relay-project-id': 'tiny' }, { 'x-relay-organization-id': 'acme', 'x-relay-team-id': 'team-a', 'x-relay-user-id': 'alice', 'x-relay-project-id': 'tiny' },
        { 'content-type': 'text/plain' }, { 'content-type': 'application/json; charset=utf-16le' },
        ...MAX_COSTS.map((cap) => ({ 'x-relay-team-id': 'team-a', 'x-relay-user-id': 'alice', 'x-budget-max-cost': cap }))
      ]
    })
  })
})

// ---------------------------------------------------------------------------------------------------
// The other gated model routes: Responses, Messages and embeddings

/** The error shape each API answers in: OpenAI's { error: { type, code, message, param } }, Anthropic's { type: 'error', error: { type, message } }. */
function inApiShape (api: 'responses' | 'messages' | 'embeddings', body: unknown): boolean {
  if (typeof body !== 'object' || body === null) return false
  const error = (body as { error?: unknown }).error as { type?: unknown, code?: unknown, message?: unknown, param?: unknown } | undefined
  if (typeof error !== 'object' || error === null || typeof error.type !== 'string' || error.type === '' || typeof error.message !== 'string') return false
  if (api === 'messages') return (body as { type?: unknown }).type === 'error'
  return typeof error.code === 'string' && error.code !== '' && (error.param === null || typeof error.param === 'string')
}

interface GatedApi {
  api: 'responses' | 'messages' | 'embeddings'
  url: string
  baseBody: Record<string, unknown>
  paths: string[]
  values: unknown[]
  examples: BodySpec[]
}

const NOT_A_STRING = { toString: false } // String() of it throws a TypeError: chat's estimate did, before errors.quoted

const GATED_APIS: GatedApi[] = [
  {
    api: 'responses',
    url: '/v1/responses',
    baseBody: { model: 'gpt-4o-mini', input: [{ role: 'user', content: [{ type: 'input_text', text: 'Say hello' }] }], max_output_tokens: 20 },
    paths: [
      'model', 'input', 'input.0', 'input.0.role', 'input.0.type', 'input.0.content', 'input.0.content.0', 'input.0.content.0.type', 'input.0.content.0.text',
      'input.0.content.0.image_url', 'input.0.content.0.detail', 'input.0.call_id', 'input.0.arguments', 'input.0.output', 'input.1', 'instructions',
      'max_output_tokens', 'max_tool_calls', 'stream', 'stream_options', 'tools', 'tools.0', 'tools.0.type', 'tools.0.name', 'tools.0.parameters', 'tool_choice',
      'tool_choice.type', 'text', 'text.format', 'text.format.type', 'text.format.schema', 'reasoning', 'reasoning.effort', 'service_tier', 'previous_response_id',
      'conversation', 'background', 'include', 'metadata', 'store', 'user', '__proto__', 'constructor', 'unknownField'
    ],
    values: [
      [{ role: 'user', content: [{ type: 'input_text', text: '\u0000' }] }], [{ type: 'function_call_output', call_id: 'x', output: 'x' }],
      [{ type: 'input_image', image_url: 'data:,x', detail: 'original' }], [{ type: 'item_reference', id: 'x' }], [{ type: '\u0000' }], [{}], [null], ['x'],
      [{ type: 'function', name: 'f', parameters: { type: 'object' } }], [{ type: 'web_search' }], { type: 'json_schema', name: 'x', schema: {} }
    ],
    examples: [
      ...MODELS.map((model) => ({ replace: 'model', value: model })),
      ...[0, -1, 1.5, '20', null, true, [], {}, 1e21, 1e300, 2 ** 53].map((value) => ({ replace: 'max_output_tokens', value })),
      { replace: 'input.0.content.0.type', value: NOT_A_STRING }, { replace: 'input.0.type', value: NOT_A_STRING }, { replace: 'tools.0.type', value: NOT_A_STRING },
      { replace: 'text.format.type', value: NOT_A_STRING }, { replace: 'tool_choice.type', value: NOT_A_STRING }, { replace: 'service_tier', value: NOT_A_STRING },
      { replace: 'input', jsonText: '"\\ud800"' }, { replace: 'input', jsonText: DEEP_ARRAY }, { replace: 'previous_response_id', value: 'resp_1' },
      { replace: '__proto__', value: { model: 'gpt-4o' } }
    ]
  },
  {
    api: 'messages',
    url: '/v1/messages',
    baseBody: { model: 'claude-sonnet-4-5', max_tokens: 20, messages: [{ role: 'user', content: 'Say hello' }] },
    paths: [
      'model', 'max_tokens', 'messages', 'messages.0', 'messages.0.role', 'messages.0.content', 'messages.0.content.0', 'messages.0.content.0.type',
      'messages.0.content.0.text', 'messages.0.content.0.source', 'messages.0.content.0.cache_control', 'messages.0.content.0.cache_control.ttl', 'messages.1',
      'system', 'system.0.type', 'system.0.text', 'tools', 'tools.0', 'tools.0.type', 'tools.0.name', 'tools.0.input_schema', 'tool_choice', 'tool_choice.type',
      'thinking', 'thinking.type', 'thinking.budget_tokens', 'cache_control', 'cache_control.ttl', 'service_tier', 'speed', 'inference_geo', 'output_config',
      'stream', 'metadata', 'stop_sequences', 'mcp_servers', 'container', '__proto__', 'constructor', 'unknownField'
    ],
    values: [
      [{ type: 'text', text: '\u0000' }], [{ type: 'image', source: { type: 'base64', media_type: 'image/png', data: 'x' } }], [{ type: 'document' }],
      [{ type: 'text', text: 'x', cache_control: { type: 'ephemeral', ttl: '24h' } }], [{ type: '\u0000' }], [{}], [null], ['x'],
      [{ name: 'f', input_schema: { type: 'object' } }], [{ type: 'web_search_20250305', name: 'web_search' }], { type: 'enabled', budget_tokens: 1e9 }
    ],
    examples: [
      ...MODELS.map((model) => ({ replace: 'model', value: model })),
      ...[0, -1, 1.5, '20', null, true, [], {}, 1e21, 1e300, 2 ** 53].map((value) => ({ replace: 'max_tokens', value })),
      { replace: 'messages.0.content.0.type', value: NOT_A_STRING }, { replace: 'system.0.type', value: NOT_A_STRING }, { replace: 'tools.0.type', value: NOT_A_STRING },
      { replace: 'thinking.type', value: NOT_A_STRING }, { replace: 'tool_choice.type', value: NOT_A_STRING }, { replace: 'cache_control.ttl', value: NOT_A_STRING },
      { replace: 'messages.0.content', jsonText: '"\\ud800"' }, { replace: 'messages.0.content', jsonText: DEEP_ARRAY }, { replace: 'mcp_servers', value: [] },
      { replace: '__proto__', value: { model: 'claude-opus-4-1' } }
    ]
  },
  {
    api: 'embeddings',
    url: '/v1/embeddings',
    baseBody: { model: 'text-embedding-3-small', input: 'Say hello' },
    paths: ['model', 'input', 'input.0', 'input.1', 'input.0.0', 'dimensions', 'encoding_format', 'user', '__proto__', 'constructor', 'unknownField'],
    values: [[''], [[]], [[1, 2], 'x'], ['x', 1], [1.5], [-1], Array.from({ length: 2049 }, () => 'x'), 'x'.repeat(100000), [2 ** 53], [[null]]],
    examples: [
      ...MODELS.map((model) => ({ replace: 'model', value: model })),
      ...[0, -1, 1.5, '20', null, true, [], {}, 1e21, 2 ** 53].map((value) => ({ replace: 'dimensions', value })),
      { replace: 'encoding_format', value: NOT_A_STRING }, { replace: 'input', value: NOT_A_STRING }, { replace: 'input.0', value: NOT_A_STRING },
      { replace: 'user', value: NOT_A_STRING }, { replace: 'input', jsonText: '"\\ud800"' }, { replace: 'input', jsonText: DEEP_ARRAY },
      { replace: '__proto__', value: { model: 'text-embedding-3-large' } }
    ]
  }
]

t.test('Responses, Messages and embeddings behind the gate: hostile input', async (t) => {
  const logs: string[] = []
  const gateway = await buildGateway(t, {
    routes: (app) => {
      app.addHook('onError', async (_request, _reply, error) => {
        logs.push(JSON.stringify({ msg: 'model call failed', err: { type: error.name, code: error.code, message: error.message, stack: error.stack } }))
      })
    }
  })
  const admin = async (method: 'GET' | 'POST', url: string) => await gateway.app.inject({ method, url, headers: AUTH })
  const org = await gateway.createBudget({ name: 'acme', scopeType: 'organization', scopeId: 'acme', amount: '100000', period: 'annual' })
  const team = await gateway.createBudget({
    name: 'team a', scopeType: 'team', scopeId: 'team-a', parentId: org.id, amount: '1000',
    alerts: [{ threshold: 50, actions: ['restrict-models'], allowedModels: ['gpt-4o-mini', 'claude-sonnet-4-5', 'text-embedding-3-small'] }]
  })
  const tiny = await gateway.createBudget({ name: 'tiny', scopeType: 'project', scopeId: 'tiny', amount: '0.000001' })
  const user = await gateway.createBudget({ name: 'alice', scopeType: 'user', scopeId: 'alice', parentId: team.id, amount: '10', period: 'daily' })
  await spendTo(gateway.app, team.id, '600')
  const seeded = [org.id, team.id, tiny.id, user.id]
  for (const id of seeded) if ((await admin('GET', `${PREFIX}/${id}/status`)).statusCode !== 200) throw new Error('setup: status')
  const baseHeaders = { 'x-relay-team-id': 'team-a', 'x-relay-user-id': 'alice' }

  let snapshot: unknown = null
  async function apiProbe (gated: GatedApi, payload: string | Buffer, headers: Record<string, string>): Promise<void> {
    const before = snapshot ?? await snapshotTables(gateway.sql)
    snapshot = null
    logs.length = 0
    const response = await gateway.app.inject({
      method: 'POST', url: gated.url, payload, headers: { 'content-type': 'application/json', ...(gated.api === 'messages' ? { 'anthropic-version': '2023-06-01' } : {}), ...headers }
    })
    answered.set(response.statusCode, (answered.get(response.statusCode) ?? 0) + 1)
    const label = `POST ${gated.url} ${fc.stringify(headers)}`
    if (response.statusCode >= 500) throw failure('(a) a 5xx', label, response, logs)
    if (response.statusCode >= 400) {
      let body: unknown
      try {
        body = response.json()
      } catch {
        throw failure('(b) a 4xx whose body is not JSON', label, response, logs)
      }
      if (!inApiShape(gated.api, body)) throw failure(`(b) a 4xx not in ${gated.api === 'messages' ? 'Anthropic' : 'OpenAI'}'s error shape`, label, response, logs)
      await gateway.settled()
      const after = await snapshotTables(gateway.sql)
      if (!isDeepStrictEqual(before, after)) throw failure('(c) a 4xx that changed the tables', label, response, logs, changedTables(before, after))
      snapshot = after
    } else {
      await gateway.settled()
      for (const id of seeded) {
        logs.length = 0
        const status = await admin('GET', `${PREFIX}/${id}/status`)
        if (status.statusCode !== 200) throw failure('(d) status unreadable after an accepted call', `GET ${PREFIX}/${id}/status`, status, logs, `after the accepted: ${label}: ${response.statusCode} ${response.body.slice(0, 300)}`)
      }
    }
  }

  for (const gated of GATED_APIS) {
    const values = fc.oneof(
      { arbitrary: hostileValue, weight: 4 },
      { arbitrary: fc.constantFrom(...MODELS, 'gpt-4o-mini', 'claude-sonnet-4-5', 'claude-opus-4-1', 'text-embedding-3-small', 'text-embedding-3-large'), weight: 2 },
      { arbitrary: fc.constantFrom<unknown>(0, -1, 1, 1.5, '20', null, true, [], {}, NOT_A_STRING, 2 ** 31, 2 ** 53, 1e21, 1e300, Number.MAX_SAFE_INTEGER), weight: 2 },
      { arbitrary: fc.constantFrom<unknown>(...gated.values), weight: 2 }
    )
    await t.test(`${gated.api}: hostile bodies`, async (t) => {
      await runProperty(t, `${gated.api} route: hostile bodies: (a) no 5xx, (b) coded 4xx in the API's error shape, (c) a 4xx writes nothing, (d) status still reads`,
        bodyArbitrary(gated.paths, values), async (body) => { await apiProbe(gated, payloadOf(body, gated.baseBody), baseHeaders) },
        { examples: gated.examples })
    })
    await t.test(`${gated.api}: hostile headers`, async (t) => {
      const scopeValue = fc.oneof(headerText, fc.constantFrom('team-a', 'alice', 'acme', 'tiny', '__proto__', 'constructor', 'x'.repeat(200), 'x'.repeat(201)))
      const headers = fc.record({
        'x-relay-user-id': scopeValue,
        'x-relay-team-id': scopeValue,
        'x-relay-project-id': scopeValue,
        'x-relay-organization-id': scopeValue,
        'content-type': fc.oneof(fc.constantFrom(...CONTENT_TYPES), headerText)
      }, { requiredKeys: [] })
      await runProperty(t, `${gated.api} route: hostile x-relay-*-id and content-type headers: (a), (b), (c), (d)`, headers, async (headers) => {
        await apiProbe(gated, JSON.stringify(gated.baseBody), headers)
      }, {
        examples: [
          { 'x-relay-team-id': '' }, { 'x-relay-team-id': 'x'.repeat(201) }, { 'x-relay-team-id': '__proto__' }, { 'x-relay-user-id': '\u00ff' },
          { 'x-relay-project-id': 'tiny' }, { 'content-type': 'text/plain' }, { 'content-type': 'application/json; charset=utf-16le' }
        ]
      })
    })
  }
})
