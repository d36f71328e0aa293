// Adversarial review of df4fb76 (sweeper by tree) and 2b62b3c (line load by tree) on the Citus cluster
// (`npm run test:citus -- test-citus/review-sweepline-cluster.ts`). The line: test/fixtures/two-tree-cluster.ts
// (a user budget that is its own root, a team under an organization), each test on its own database.
import t from 'tap'
import postgres from 'postgres'
import { randomUUID } from 'node:crypto'
import { createLineRepository } from '../lib/gate/line-repository.js'
import { createSweeperRepository } from '../lib/gate/sweeper-repository.js'
import { ORG, USER, BOTH, twoTreeStatements as setUp } from '../test/fixtures/two-tree-cluster.js'

const expire = async (sql: postgres.Sql) => { await sql`update budget_reservations set expires_at = now() - interval '1 second'` }
const recorded = async (sql: postgres.Sql, id: string) =>
  (await sql<Array<{ n: number }>>`select count(*)::int as n from budget_usage_records where idempotency_key = ${`req-${id}`}`)[0]!.n

t.test('a two-tree hold expired, swept from each of its trees alone (the sweep delegated to that tree\'s node)', async (t) => {
  for (const from of [USER, ORG]) {
    const s = await setUp(t)
    const id = randomUUID()
    t.ok(await s.hold(id, '2'), 'held 2 across both trees')
    await expire(s.sql)
    const swept = await createSweeperRepository(s.sql).sweepTree(from, 100)
    t.equal(swept, 1, `swept once from ${from === USER ? 'the user' : 'the organization'}'s tree`)
    t.equal(await recorded(s.sql, id), 1, 'recorded once')
    t.same(await s.spent(), { user: '2', team: '2', org: '2' }, 'its estimate on every budget')
    t.same(await s.broken(), [], 'invariants')
    t.equal((await s.sql`select count(*)::int as n from budget_reservations`)[0]!.n, 0, 'no row left')
  }
})

t.test('a two-tree hold from before migration 012 (trees null), swept by tree', async (t) => {
  const s = await setUp(t)
  const id = randomUUID()
  t.ok(await s.hold(id, '2'), 'held')
  await s.sql`update budget_reservations set trees = null, expires_at = now() - interval '1 second'`
  t.equal(await createSweeperRepository(s.sql).sweepExpired(100, { byTree: true }), 1, 'swept once')
  t.equal(await recorded(s.sql, id), 1, 'recorded once')
  t.same(await s.broken(), [], 'invariants')
  t.equal((await s.sql`select count(*)::int as n from budget_reservations`)[0]!.n, 0, 'no row left')
})

t.test('two sweepers by tree on the two trees of the same reservations, at once; then a late settlement racing a sweep', async (t) => {
  const s = await setUp(t)
  const o = (s.sql as any).options
  const url = `postgres://${o.user as string}@${o.host[0] as string}:${o.port[0] as number}/${o.database as string}`
  const a = postgres(url, { max: 1, onnotice: () => {} })
  const b = postgres(url, { max: 1, onnotice: () => {} })
  t.teardown(async () => { await a.end({ timeout: 1 }); await b.end({ timeout: 1 }) })
  const ids: string[] = []
  const errors: string[] = []
  for (let round = 0; round < 6; round++) {
    const batch = Array.from({ length: 3 }, () => randomUUID())
    for (const id of batch) { t.ok(await s.hold(id, '1'), 'held'); ids.push(id) }
    await expire(s.sql)
    const results = await Promise.allSettled([createSweeperRepository(a).sweepTree(ORG, 100), createSweeperRepository(b).sweepTree(USER, 100)])
    for (const r of results) if (r.status === 'rejected') errors.push(String(r.reason))
  }
  for (let i = 0; i < 5; i++) await createSweeperRepository(s.sql).sweepExpired(100, { byTree: true })
  t.same(errors, [], 'no sweep failed')
  for (const id of ids) t.equal(await recorded(s.sql, id), 1, `${id} recorded once`)
  t.same(await s.broken(), [], 'invariants')

  // a late settlement racing the sweep of the same reservation
  const late: string[] = []
  for (let i = 0; i < 6; i++) {
    const id = randomUUID()
    t.ok(await s.hold(id, '1'), 'held')
    late.push(id)
    await expire(s.sql)
    const results = await Promise.allSettled([
      a`select reservation_id from budget_settle_batch(array[${id}]::uuid[], array['0.5']::numeric[], array['gate'], array['call'], array['{}'::jsonb], null, ${BOTH}::uuid[], ${BOTH[0]!}::uuid)`,
      createSweeperRepository(b).sweepTree(i % 2 === 0 ? USER : ORG, 100)])
    for (const r of results) if (r.status === 'rejected') errors.push(String(r.reason))
  }
  await createSweeperRepository(s.sql).sweepExpired(100, { byTree: true })
  t.same(errors, [], 'no statement failed')
  for (const id of late) t.equal(await recorded(s.sql, id), 1, `${id} recorded once`)
  t.same(await s.broken(), [], 'invariants')
})

t.test('a two-tree line loaded by tree on Citus: the same line as by every tree, windows made in both trees', async (t) => {
  const s = await setUp(t)
  const lines = createLineRepository(s.sql)
  const call = { scopes: [{ type: 'user' as const, id: 'ada' }, { type: 'team' as const, id: 'platform' }, { type: 'organization' as const, id: 'acme' }], model: 'gpt-4o-mini' }
  const plain = await lines.loadLine(call, 'USD')
  await s.sql`delete from budget_status_cache`
  const byTree = await lines.loadLine(call, 'USD', { byTree: true })
  t.same(byTree.line, plain.line, 'the same line')
  t.same(byTree.trees.map((x) => x.rootId).sort(), [...BOTH].sort(), 'both trees')
  const nodes = await s.sql`select distinct nodeport from citus_shards where table_name = 'budget_definitions'::regclass and shardid in (get_shard_id_for_distribution_column('budget_definitions', ${ORG}::uuid), get_shard_id_for_distribution_column('budget_definitions', ${USER}::uuid))`
  t.equal(nodes.length, 2, 'the two trees sit on different workers')
  const n = (await s.sql`select count(*)::int as n from budget_status_cache`)[0]!.n
  t.equal(n, 3, 'each window row made again, in both trees')
  // the user scope only, whose tree is the second
  const userOnly = await lines.loadLine({ scopes: [{ type: 'user' as const, id: 'ada' }], model: null }, 'USD', { byTree: true })
  t.same(userOnly.line.map((b) => b.budgetId), [USER], 'the user line')
})

t.test('a caller whose scopes name budgets in three trees, and one whose scopes name only archived budgets, loaded by tree', async (t) => {
  const s = await setUp(t)
  const PROJECT = randomUUID()
  await s.sql`insert into budget_definitions (id, root_id, name, scope_type, scope_id, amount, currency, period, start_date, enforcement, filter_models)
              values (${PROJECT}, ${PROJECT}, 'project', 'project', 'p1', 50, 'USD', 'weekly', '2024-01-01', 'soft', array['gpt-4o*'])`
  const ARCHIVED = randomUUID()
  await s.sql`insert into budget_definitions (id, root_id, name, scope_type, scope_id, amount, currency, period, start_date, enforcement, deleted_at)
              values (${ARCHIVED}, ${ARCHIVED}, 'gone', 'user', 'ghost', 50, 'USD', 'weekly', '2024-01-01', 'hard', now())`
  const lines = createLineRepository(s.sql)
  const call = { scopes: [{ type: 'project' as const, id: 'p1' }, { type: 'user' as const, id: 'ada' }, { type: 'team' as const, id: 'platform' }, { type: 'organization' as const, id: 'acme' }, { type: 'user' as const, id: 'ghost' }], model: 'gpt-4o-mini' }
  await s.sql`delete from budget_status_cache`
  const byTree = await lines.loadLine(call, 'USD', { byTree: true })
  const plain = await lines.loadLine(call, 'USD')
  t.same(byTree.line, plain.line, 'the same line')
  t.equal(byTree.line.length, 4, 'four budgets in three trees')
  t.equal((await s.sql`select count(*)::int as n from budget_status_cache`)[0]!.n, 4, 'four windows made')
  const other = await lines.loadLine({ ...call, model: 'claude-3' }, 'USD', { byTree: true })
  t.same(other.line.map((b) => b.budgetId).sort(), [...plain.line.map((b) => b.budgetId).filter((b) => b !== PROJECT)].sort(), 'the project filtered out for another model')
  const ghost = await lines.loadLine({ scopes: [{ type: 'user' as const, id: 'ghost' }], model: null }, 'USD', { byTree: true })
  t.same(ghost.line, [], 'archived only: an empty line')
})
