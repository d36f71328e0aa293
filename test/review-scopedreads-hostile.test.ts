// Review of scoped reads (11485a1): hostile queries and batches on the four routes, as a scoped principal.
// No 5xx; a 4xx, and a batch whose every record is refused, change nothing.
import t from 'tap'
import fc from 'fast-check'
import { randomUUID } from 'node:crypto'
import { PREFIX, snapshotTables } from './fixtures/app.js'
import { accessApp, create } from './fixtures/access-app.js'

t.test('hostile queries and batches from scoped principals', async (t) => {
  const { admin, as, sql } = await accessApp(t)
  const org = await create(admin, { name: 'acme', scopeType: 'organization', scopeId: 'acme', amount: '1000', metrics: true })
  const teamA = await create(admin, { name: 'team a', scopeType: 'team', scopeId: 'team-a', parentId: org.id, amount: '100', metrics: true })
  const teamB = await create(admin, { name: 'team b', scopeType: 'team', scopeId: 'team-b', parentId: org.id, amount: '100' })
  const alice = await create(admin, { name: 'alice', scopeType: 'user', scopeId: 'alice', parentId: teamA.id, amount: '10' })
  await admin({ method: 'POST', url: `${PREFIX}/${alice.id}/usage`, body: { amount: '1', currency: 'USD', metadata: { requestId: 'held', tags: { f: 'x' } } } })
  const principals = [
    as({ actor: 'a', role: 'editor', scopes: [{ scopeType: 'team', scopeId: 'team-a' }] }),
    as({ actor: 'b', role: 'admin', scopes: [{ budgetId: alice.id.toUpperCase() }] }),
    as({ actor: 'c', role: 'editor', scopes: [] }),
    as({ actor: 'd', role: 'viewer', scopes: [{ scopeType: 'team', scopeId: 'team-a' }, { budgetId: alice.id }, { scopeType: 'team', scopeId: "x'; --" }] })
  ]
  const ids = [alice.id, teamA.id, teamB.id, org.id, alice.id.toUpperCase(), randomUUID(), `{${alice.id}}`, alice.id.replaceAll('-', ''), ` ${alice.id}`, '', 'x', '00000000-0000-0000-0000-000000000000']
  const strings = fc.oneof(fc.constantFrom('', ' ', '\u0000', '%00', '__proto__', 'team', 'team-a', 'USD', 'usd', 'EUR', '-1', '0', '1001', '1e3', 'tag', 'scope', 'day', 'Europe/Paris', 'x'.repeat(300), '2024-01-01', '9999-12-31T23:59:59Z', 'this-week', 'total', 'key', 'f', 'eyJ4IjoxfQ', 'AAAA'), fc.constantFrom(...ids), fc.string({ maxLength: 8 }))
  const keys = fc.constantFrom('groupBy', 'tagKey', 'scopeType', 'scopeId', 'currency', 'limit', 'sort', 'from', 'to', 'preset', 'timeZone', 'budgetId', 'cursor', 'code', 'outcome', 'x')
  const query = fc.array(fc.tuple(keys, strings), { maxLength: 5 }).map((pairs) => pairs.map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join('&'))
  const record = fc.record({
    budgetId: fc.option(fc.constantFrom(...ids), { nil: undefined }),
    scopes: fc.option(fc.constantFrom({ team: 'team-a' }, { user: 'alice' }, {}, { team: 'team-b', user: 'alice' }), { nil: undefined }),
    amount: fc.constantFrom('1', '-1', '0', '1e3', 'x', '0.00000000001', '99999999999999999999999999999'),
    currency: fc.constantFrom('USD', 'EUR', 'usd', ''),
    metadata: fc.option(fc.record({ requestId: fc.constantFrom('held', 'k1', 'k1', '', 'x'.repeat(300)) }), { nil: undefined })
  }, { requiredKeys: ['amount', 'currency'] })
  let runs = 0
  await fc.assert(fc.asyncProperty(fc.nat(principals.length - 1), fc.constantFrom('reports/spend', 'metrics', 'decisions', 'usage/batch', 'reports/spend#csv'), query, fc.array(record, { minLength: 0, maxLength: 4 }), async (who, route, q, records) => {
    runs++
    const before = await snapshotTables(sql)
    const call = principals[who]!
    const response = route === 'usage/batch'
      ? await call({ method: 'POST', url: `${PREFIX}/usage/batch`, body: { records } })
      : await call({ method: 'GET', url: `${PREFIX}/${route.replace('#csv', '')}?${q}`, ...(route.endsWith('#csv') ? { headers: { accept: 'text/csv' } } : {}) })
    if (response.statusCode >= 500) throw new Error(`${route} ${q} ${JSON.stringify(records)}: ${response.statusCode} ${response.body}`)
    const untouched = response.statusCode >= 400 || route !== 'usage/batch' || response.json().created === 0
    if (untouched) {
      const after = await snapshotTables(sql)
      if (JSON.stringify(after) !== JSON.stringify(before)) throw new Error(`${route} ${response.statusCode} changed tables: ${JSON.stringify(records)} ${response.body.slice(0, 400)}`)
    }
    if (response.statusCode === 200 && route !== 'usage/batch' && !q.includes(teamB.id) && (response.body.includes(teamB.id) || response.body.includes('team-b'))) {
      throw new Error(`${route} ${q}: another tree named: ${response.body.slice(0, 400)}`)
    }
  }), { numRuns: Number(process.env.REVIEW_RUNS ?? 80), seed: 4242 })
  t.ok(runs > 0, `${runs} requests`)
})
