// The rules a usage record meets before it is stored (lib/usage/usage-rules.ts), without a database: what is
// read from a request, when a budget refuses it, which PostgreSQL faults are the caller's, and when a retry
// is the same request. test/usage.test.ts and test/usage-exactly-once.test.ts drive the same rules through the API.
import { createHash } from 'node:crypto'
import t from 'tap'
import { checkActive, checkMatches, hasFilters, readUsage, recordFault, replayOf, requestFingerprint, storageError, type UsageInput } from '../lib/usage/usage-rules.js'
import type { BudgetDefinition } from '../lib/kernel/schemas.js'
import type { UsageRecord } from '../lib/usage/usage-repository.js'

const now = new Date('2024-04-10T12:00:00.000Z')
const options = { now: () => now }
const budget = { id: 'b1', name: 'team', filters: {} } as unknown as BudgetDefinition

t.test('reads the amount, the time and the key', async (t) => {
  t.same(readUsage({ amount: 12.5, currency: 'USD' }, undefined, options), { amount: '12.5', metadata: {}, occurredAt: now, idempotencyKey: null }, 'no time: now; no key: none')
  t.same(readUsage({ amount: '0.0100', currency: 'USD', occurredAt: '2024-04-01' }, 'key-1', options),
    { amount: '0.01', metadata: {}, occurredAt: new Date('2024-04-01T00:00:00Z'), idempotencyKey: 'key-1' })
  t.equal(readUsage({ amount: '1', currency: 'USD', metadata: { requestId: 'req-1' } }, undefined, options).idempotencyKey, 'req-1', 'metadata.requestId is the key when no header gives one')
  t.equal(readUsage({ amount: '1', currency: 'USD', metadata: { requestId: 'req-1' } }, 'key-1', options).idempotencyKey, 'key-1', 'the header\'s key wins')
  t.equal(readUsage({ amount: '1', currency: 'USD', metadata: { requestId: 7 } }, undefined, options).idempotencyKey, null, 'a requestId that is no string is no key')
  t.throws(() => readUsage({ amount: '0', currency: 'USD' }, undefined, options), { code: 'BUDGET_ERR_VALIDATION', field: 'amount' })
  t.throws(() => readUsage({ amount: '1', currency: 'USD', occurredAt: 'soon' }, undefined, options), { field: 'occurredAt', message: /ISO 8601/ })
})

t.test('a clock up to five minutes ahead is not the future', async (t) => {
  const at = (offset: number): UsageInput => ({ amount: '1', currency: 'USD', occurredAt: new Date(now.getTime() + offset) })
  t.equal(readUsage(at(5 * 60_000), undefined, options).occurredAt.getTime(), now.getTime() + 5 * 60_000, 'five minutes ahead')
  t.throws(() => readUsage(at(5 * 60_000 + 1), undefined, options), { code: 'BUDGET_ERR_VALIDATION', field: 'occurredAt', message: /is in the future/ }, 'a millisecond more')
})

t.test('tags in the metadata are checked', async (t) => {
  t.same(readUsage({ amount: '1', currency: 'USD', metadata: { tags: { team: 'eng' } } }, undefined, options).metadata, { tags: { team: 'eng' } })
  t.throws(() => readUsage({ amount: '1', currency: 'USD', metadata: { tags: 'team=eng' } }, undefined, options), { code: 'BUDGET_ERR_VALIDATION', field: 'metadata.tags' })
  t.throws(() => readUsage({ amount: '1', currency: 'USD', metadata: { tags: { 'bad key': 'x' } } }, undefined, options), { code: 'BUDGET_ERR_VALIDATION', field: 'metadata.tags' })
})

t.test('the model is stored under its price-table name, the name given kept beside it', async (t) => {
  const modelName = (name: string): string => name === 'gpt-4o-2024-08-06' ? 'gpt-4o' : name
  const read = (metadata: Record<string, unknown>, names = modelName) => readUsage({ amount: '1', currency: 'USD', metadata }, undefined, { ...options, modelName: names }).metadata
  t.same(read({ modelId: 'gpt-4o-2024-08-06', feature: 'x' }), { modelId: 'gpt-4o', upstreamModel: 'gpt-4o-2024-08-06', feature: 'x' })
  t.same(read({ modelId: 'gpt-4o-2024-08-06', upstreamModel: 'azure/gpt-4o' }), { modelId: 'gpt-4o', upstreamModel: 'azure/gpt-4o' }, 'an upstream model given is kept')
  const plain = { modelId: 'gpt-4o' }
  t.equal(read(plain), plain, 'a price-table name: the metadata as given')
  t.same(read({ modelId: 7 }, (name) => `priced-${name}`), { modelId: 7 }, 'a modelId that is no string is not renamed')
  t.same(readUsage({ amount: '1', currency: 'USD', metadata: { modelId: 'gpt-4o-2024-08-06' } }, undefined, options).metadata, { modelId: 'gpt-4o-2024-08-06' }, 'no price table: as given')
})

t.test('filters and windows', async (t) => {
  t.equal(hasFilters(budget), false)
  t.equal(hasFilters({ ...budget, filters: { models: [] } }), true)
  t.equal(hasFilters({ ...budget, filters: { tags: { team: 'eng' } } }), true)
  t.doesNotThrow(() => { checkMatches(budget, true) })
  t.throws(() => { checkMatches({ ...budget, filters: { models: ['gpt-4o'] } }, false) },
    { code: 'BUDGET_ERR_VALIDATION', field: 'metadata', message: /does not match the filters of budget 'team' \(\{"models":\["gpt-4o"\]\}\)/ })
  const window = { periodStart: new Date('2024-04-01T00:00:00Z'), periodEnd: new Date('2024-05-01T00:00:00Z'), state: 'active' as const }
  t.doesNotThrow(() => { checkActive(budget, window.periodStart, window) }, 'at the window\'s first instant')
  t.throws(() => { checkActive(budget, new Date(window.periodStart.getTime() - 1), window) },
    { code: 'BUDGET_ERR_NOT_ACTIVE', message: "Budget 'b1' has no active period at 2024-03-31T23:59:59.999Z (active)" }, 'a millisecond before it')
  t.throws(() => { checkActive(budget, now, { ...window, state: 'ended' }) }, { code: 'BUDGET_ERR_NOT_ACTIVE', message: /\(ended\)$/ })
  t.throws(() => { checkActive(budget, now, null) }, { code: 'BUDGET_ERR_NOT_ACTIVE', message: /at 2024-04-10T12:00:00.000Z \(unknown\)$/ }, 'no window at all')
})

t.test('faults that are the caller\'s: no exchange rate, an amount past what a total can hold', async (t) => {
  t.match(recordFault('RB001', 'EUR/USD'), { code: 'BUDGET_ERR_EXCHANGE_RATE_MISSING', from: 'EUR', to: 'USD' })
  t.match(recordFault('22003', null), { code: 'BUDGET_ERR_VALIDATION', field: 'amount', message: /past the largest amount that can be stored/ })
  t.equal(recordFault('23505', 'x'), null)
  t.equal(recordFault(null, null), null)
  const other = Object.assign(new Error('deadlock'), { code: '40P01' })
  t.equal(storageError(other), other, 'anything else is the fault it was')
  t.match(storageError(Object.assign(new Error('no rate'), { code: 'RB001', detail: 'GBP/USD' })), { code: 'BUDGET_ERR_EXCHANGE_RATE_MISSING', from: 'GBP', to: 'USD' })
  t.match(storageError(Object.assign(new Error('too large'), { code: '22003' })), { field: 'amount' })
})

t.test('a request\'s fingerprint: what it says, in canonical form, not how it is written', async (t) => {
  const fingerprint = (request: UsageInput, target: Parameters<typeof requestFingerprint>[0] = { budgetId: 'B1' }): string =>
    requestFingerprint(target, request, readUsage(request, undefined, options))
  const base: UsageInput = { amount: '1.50', currency: 'USD', source: 'gw', description: 'call', metadata: { a: 1, b: [1, 2] } }
  const same = fingerprint(base)
  t.match(same, /^[\w-]{43}$/, 'a sha-256, base64url')
  t.equal(fingerprint({ ...base, amount: 1.5 }), same, 'the amount as money')
  t.equal(fingerprint({ ...base, metadata: { b: [1, 2], a: 1, c: undefined } }), same, 'keys in any order, undefined left out')
  t.equal(fingerprint(base, { budgetId: 'b1' }), same, 'a budget id in either case')
  const different: Array<[string, UsageInput, Parameters<typeof requestFingerprint>[0]?]> = [
    ['another budget', base, { budgetId: 'b2' }],
    ['scopes instead of a budget', base, { scopes: { team: 'b1' } }],
    ['another amount', { ...base, amount: '1.5000000001' }],
    ['another currency', { ...base, currency: 'EUR' }],
    ['no source', { ...base, source: undefined }],
    ['no description', { ...base, description: undefined }],
    ['another description', { ...base, description: 'gw' }],
    ['source and description swapped', { ...base, source: 'call', description: 'gw' }],
    ['other metadata', { ...base, metadata: { a: 1, b: [12] } }],
    ['a nested value changed', { ...base, metadata: { a: 2, b: [1, 2] } }],
    ['a key renamed', { ...base, metadata: { a: 1, c: [1, 2] } }],
    ['no metadata', { ...base, metadata: undefined }],
    ['a time given', { ...base, occurredAt: now.toISOString() }]
  ]
  const seen = new Map([[same, 'the base']])
  for (const [name, request, target] of different) {
    const print = fingerprint(request, target)
    t.notOk(seen.has(print), `${name}: its own fingerprint${seen.has(print) ? `, not ${seen.get(print)!}'s` : ''}`)
    seen.set(print, name)
  }
  t.equal(fingerprint({ ...base, occurredAt: '2024-04-01T02:00:00+02:00' }), fingerprint({ ...base, occurredAt: '2024-04-01T00:00:00Z' }), 'a time as the instant it names')
  t.equal(fingerprint({ ...base, metadata: {} }), fingerprint({ ...base, metadata: undefined }), 'no metadata is empty metadata')
  const later = { now: () => new Date(now.getTime() + 60_000) }
  t.equal(requestFingerprint({ budgetId: 'b1' }, base, readUsage(base, undefined, later)), same, 'the time a request without one is read at is not part of it')
  t.equal(fingerprint({ ...base, metadata: { x: [undefined] } }), fingerprint({ ...base, metadata: { x: [null] } }), 'undefined in a list is null, as in JSON')
  t.not(fingerprint({ ...base, metadata: { x: '[1,2]' } }), fingerprint({ ...base, metadata: { x: [1, 2] } }), 'a string is not the list it spells')
  t.not(fingerprint({ ...base, metadata: { x: { y: 1 } } }), fingerprint({ ...base, metadata: { x: 'y:1' } }))
  t.not(fingerprint({ ...base, metadata: { x: null } }), fingerprint({ ...base, metadata: {} }), 'a key given as null is given')
  t.not(fingerprint({ ...base, metadata: { b: 1, a: 2 } }), fingerprint({ ...base, metadata: { a: 1, b: 2 } }), 'the values stay with their keys')
  t.not(fingerprint({ ...base, metadata: { ab: 1 } }), fingerprint({ ...base, metadata: { a: 1, b: 1 } }))
})

t.test('a fingerprint is stored with its record: the same request gives the same one from release to release', async (t) => {
  // A retry after an upgrade must still match its first attempt, so these are pinned: a change to the canonical
  // form (its labels, key order, separators, the budget id's case, which fields count) shows here first.
  const request: UsageInput = { amount: '1.50', currency: 'USD', source: 'gw', metadata: { b: [1, 2], a: { y: null, x: 'z' } }, occurredAt: '2024-04-01T00:00:00Z' }
  const read = readUsage(request, undefined, options)
  const sha256 = (canonical: string): string => createHash('sha256').update(canonical).digest('base64url')
  t.equal(requestFingerprint({ budgetId: 'B1' }, request, read),
    sha256('[["budget","b1"],"1.5","USD","gw",null,{"a":{"x":"z","y":null},"b":[1,2]},"2024-04-01T00:00:00.000Z"]'))
  t.equal(requestFingerprint({ scopes: { team: 'eng', org: 'acme' } }, request, read),
    sha256('[["scopes",{"org":"acme","team":"eng"}],"1.5","USD","gw",null,{"a":{"x":"z","y":null},"b":[1,2]},"2024-04-01T00:00:00.000Z"]'))
  const minimal: UsageInput = { amount: 2, currency: 'EUR' }
  t.equal(requestFingerprint({ budgetId: 'b1' }, minimal, readUsage(minimal, undefined, options)), sha256('[["budget","b1"],"2","EUR",null,null,{},null]'))
  t.equal(requestFingerprint({ budgetId: 'b1' }, minimal, readUsage(minimal, undefined, options)), 'BSczSgHvxxlr00xphK_YW4LglOicxqWPSD_ausu0zjk', 'and its digest, as stored')
})

t.test('a retry under the same key: the first record, or a 409', async (t) => {
  const record: UsageRecord = {
    id: 'r1', budgetId: 'b1', amount: '1.5', currency: 'USD', source: null, description: null, metadata: {},
    occurredAt: '2024-04-10T12:00:00.000Z', recordedAt: '2024-04-10T12:00:00.000Z'
  }
  t.equal(replayOf({ record, fingerprint: 'f1' }, '9', 'EUR', 'key', 'f1'), record, 'the same request: the first record, whatever else is passed')
  t.throws(() => replayOf({ record, fingerprint: 'f1' }, '1.5', 'USD', 'key', 'f2'),
    { code: 'BUDGET_ERR_IDEMPOTENCY_CONFLICT', field: 'metadata.requestId', message: /'key'.*it recorded 1.5 USD on budget b1 for a request with other parameters/ })
  for (const fingerprint of [null, 'legacy']) {
    const first = { record, fingerprint }
    t.equal(replayOf(first, '1.50', 'USD', 'key', 'f2'), record, `${String(fingerprint)}: the same amount and currency`)
    t.throws(() => replayOf(first, '1.5000000001', 'USD', 'key', 'f2'), { code: 'BUDGET_ERR_IDEMPOTENCY_CONFLICT', message: /\(it recorded 1.5 USD\)$/ }, `${String(fingerprint)}: another amount`)
    t.throws(() => replayOf(first, '1.5', 'EUR', 'key', 'f2'), { code: 'BUDGET_ERR_IDEMPOTENCY_CONFLICT' }, `${String(fingerprint)}: another currency`)
  }
})
