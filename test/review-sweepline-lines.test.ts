// Adversarial review of 2b62b3c on plain PostgreSQL: the line loaded by tree (scopeTrees, then loadLineIn naming
// the trees read) through the registry's own changes: a budget made in a new tree for the caller between the two
// reads stamps the line older than the version after it (so a cached line is not kept current); archived-only
// scopes, empty scopes, duplicates, and a caller in three trees give the line by every tree.
import t from 'tap'
import { buildApp, PREFIX } from './fixtures/app.js'
import { createLineRepository } from '../lib/gate/line-repository.js'

const create = async (admin: Awaited<ReturnType<typeof buildApp>>['admin'], body: Record<string, unknown>) => {
  const res = await admin({ method: 'POST', url: PREFIX, body: { currency: 'USD', period: 'monthly', startDate: '2024-01-01', enforcement: 'hard', amount: '100', ...body } })
  if (res.statusCode !== 201) throw new Error(res.body)
  return res.json().id as string
}

t.test('a budget made in a new tree between the trees\' read and the line\'s: the line is stamped older than the version after', async (t) => {
  const { sql, admin } = await buildApp(t)
  const org = await create(admin, { name: 'org', scopeType: 'organization', scopeId: 'acme' })
  await create(admin, { name: 'team', scopeType: 'team', scopeId: 'platform', parentId: org })
  const lines = createLineRepository(sql)
  const call = { scopes: [{ type: 'user' as const, id: 'ada' }, { type: 'team' as const, id: 'platform' }, { type: 'organization' as const, id: 'acme' }], model: 'gpt-4o-mini' }
  const named = await lines.scopeTrees(call.scopes)
  t.same(named.roots, [org], 'one tree')
  const user = await create(admin, { name: 'user', scopeType: 'user', scopeId: 'ada' })
  const loaded = await lines.loadLineIn(call, 'USD', named)
  t.notOk(loaded.line.some((b) => b.budgetId === user), 'the line read misses it')
  const { version } = await lines.versions([])
  t.ok(loaded.definitionsVersion < version, `stamped older (${loaded.definitionsVersion} < ${version})`)
  const again = await lines.loadLine(call, 'USD', { byTree: true })
  t.ok(again.line.some((b) => b.budgetId === user), 'loaded again: it is there')
  t.equal(again.definitionsVersion, version, 'at the version now')

  // archived in the named tree between the reads: gone from the line
  const named2 = await lines.scopeTrees(call.scopes)
  const team = again.line.find((b) => b.name === 'team')!.budgetId
  t.equal((await admin({ method: 'DELETE', url: `${PREFIX}/${team}` })).statusCode, 204, 'team archived')
  const loaded2 = await lines.loadLineIn(call, 'USD', named2)
  t.notOk(loaded2.line.some((b) => b.budgetId === team), 'the archived team not in the line')
  t.ok(loaded2.definitionsVersion < (await lines.versions([])).version, 'and the line stamped older')

  // empty and duplicate scopes, archived only
  t.same((await lines.loadLine({ scopes: [], model: null }, 'USD', { byTree: true })).line, [], 'no scopes: empty')
  const dup = { scopes: [...call.scopes, ...call.scopes], model: 'gpt-4o-mini' }
  t.same((await lines.loadLine(dup, 'USD', { byTree: true })).line, (await lines.loadLine(dup, 'USD')).line, 'duplicates: the same line')
  const onlyTeam = { scopes: [{ type: 'team' as const, id: 'platform' }], model: null }
  const archivedOnly = await lines.loadLine(onlyTeam, 'USD', { byTree: true })
  t.same(archivedOnly.line, [], 'archived only: empty')
  t.equal(archivedOnly.definitionsVersion, (await lines.versions([])).version, 'at the version now')
})
