// Budget roots attacked (root_id, the trigger budget_definitions_root, 004_budget_roots.sql, the registry's
// BUDGET_ERR_MOVE_ACROSS_TREES): hostile input, concurrent moves from two app instances, old databases with
// odd data (a live budget under an archived root becomes a root), rows that name their roots, concurrent start-ups.
import Fastify from 'fastify'
import postgres from 'postgres'
import t from 'tap'
import budgets from '../lib/index.js'
import { migrate } from '../lib/kernel/database/migrate.js'
import { ADMIN_TOKEN, PREFIX, TEST_CHANNELS, budgetRequest, buildApp, snapshotTables } from './fixtures/app.js'
import { createTestSql } from './fixtures/database.js'
import { checkInvariants } from './fixtures/invariants.js'
import { misrooted, sqlBeforeRoots } from './fixtures/budget-roots.js'

const QUIET = { notifications: { intervalMs: 0 } }

t.test('hostile rootId and parentId on POST and PUT: each a stable 4xx that changes nothing, never a 5xx', async (t) => {
  const { admin, sql, app } = await buildApp(t, QUIET)
  const create = async (body: Record<string, unknown>) => {
    const response = await admin({ method: 'POST', url: PREFIX, body: budgetRequest(body) })
    t.equal(response.statusCode, 201, response.body)
    return response.json() as { id: string, rootId: string }
  }
  const org = await create({ scopeType: 'organization', scopeId: 'acme' })
  const a = await create({ scopeId: 'a', parentId: org.id })
  const leaf = await create({ scopeType: 'user', scopeId: 'alice', parentId: a.id, amount: '10' })
  const gone = await create({ scopeId: 'gone', parentId: org.id })
  const goneChild = await create({ scopeType: 'user', scopeId: 'g', parentId: gone.id, amount: '1' })
  t.equal((await admin({ method: 'DELETE', url: `${PREFIX}/${gone.id}?cascade=true` })).statusCode, 204)
  const other = await create({ scopeType: 'organization', scopeId: 'other' })
  const before = await snapshotTables(sql)

  const cases: Array<[string, 'POST' | 'PUT', string, Record<string, unknown>, number, string]> = []
  for (const rootId of [org.id, a.id, null, 1, true, {}, [], 'x', a.id.toUpperCase()]) {
    cases.push([`PUT rootId ${JSON.stringify(rootId)}`, 'PUT', a.id, { rootId }, 400, 'BUDGET_ERR_VALIDATION'])
    cases.push([`POST rootId ${JSON.stringify(rootId)}`, 'POST', '', budgetRequest({ rootId, parentId: org.id }), 400, 'BUDGET_ERR_VALIDATION'])
  }
  const none = '00000000-0000-4000-8000-000000000000'
  cases.push(
    ['PUT under itself', 'PUT', a.id, { parentId: a.id }, 409, 'BUDGET_ERR_HIERARCHY_CYCLE'],
    ['PUT under itself, upper case', 'PUT', a.id, { parentId: a.id.toUpperCase() }, 409, 'BUDGET_ERR_HIERARCHY_CYCLE'],
    ['PUT root under itself', 'PUT', org.id, { parentId: org.id }, 409, 'BUDGET_ERR_HIERARCHY_CYCLE'],
    ['PUT under its descendant', 'PUT', a.id, { parentId: leaf.id }, 409, 'BUDGET_ERR_HIERARCHY_CYCLE'],
    ['PUT under an archived budget of its tree', 'PUT', leaf.id, { parentId: gone.id }, 400, 'BUDGET_ERR_PARENT_NOT_FOUND'],
    ['PUT an archived budget', 'PUT', goneChild.id, { parentId: a.id }, 404, 'BUDGET_ERR_NOT_FOUND'],
    ['PUT under another tree', 'PUT', leaf.id, { parentId: other.id }, 409, 'BUDGET_ERR_MOVE_ACROSS_TREES'],
    ['PUT child made a root', 'PUT', leaf.id, { parentId: null }, 409, 'BUDGET_ERR_MOVE_ACROSS_TREES'],
    ['PUT non-uuid parent', 'PUT', leaf.id, { parentId: 'nope' }, 400, 'BUDGET_ERR_PARENT_NOT_FOUND'],
    ['PUT parent as number', 'PUT', leaf.id, { parentId: 7 }, 400, 'BUDGET_ERR_VALIDATION'],
    ['PUT unknown parent', 'PUT', leaf.id, { parentId: none }, 400, 'BUDGET_ERR_PARENT_NOT_FOUND'],
    ['POST under an archived budget', 'POST', '', budgetRequest({ parentId: gone.id, amount: '1' }), 400, 'BUDGET_ERR_PARENT_NOT_FOUND'],
    ['POST under unknown', 'POST', '', budgetRequest({ parentId: none }), 400, 'BUDGET_ERR_PARENT_NOT_FOUND'],
    ['POST non-uuid parent', 'POST', '', budgetRequest({ parentId: '' }), 400, 'BUDGET_ERR_PARENT_NOT_FOUND']
  )
  for (const [label, method, id, body, status, code] of cases) {
    const response = await admin({ method, url: id === '' ? PREFIX : `${PREFIX}/${id}`, body })
    t.equal(response.statusCode, status, `${label}: ${response.body}`)
    t.equal(response.json().code, code, label)
  }
  await t.rejects(app.budgetRegistry.updateBudget(leaf.id, { rootId: org.id } as never), { code: 'BUDGET_ERR_VALIDATION' }, 'library refuses rootId')
  await t.rejects(app.budgetRegistry.createBudget({ ...budgetRequest({ parentId: org.id }), rootId: org.id } as never), { code: 'BUDGET_ERR_VALIDATION' })
  t.same(await snapshotTables(sql), before, 'no refusal changed anything')
  t.same(await misrooted(sql), [])
  await checkInvariants(t, sql)
})

t.test('concurrent moves and creates from two app instances on one database: no cycle, no cross-tree row, no 5xx', async (t) => {
  const first = await buildApp(t, QUIET)
  const second = Fastify({ logger: false })
  await second.register(budgets, { database: first.sql, adminToken: ADMIN_TOKEN, ...QUIET, notifications: { ...QUIET.notifications, channels: TEST_CHANNELS } })
  await second.ready()
  t.teardown(async () => await second.close())
  const apps = [first.app, second]
  const call = async (n: number, method: 'POST' | 'PUT', url: string, body: unknown) =>
    await apps[n % 2]!.inject({ method, url, body: body as never, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
  const create = async (body: Record<string, unknown>) => (await call(0, 'POST', PREFIX, budgetRequest(body))).json() as { id: string }
  const org = await create({ scopeType: 'organization', scopeId: 'acme' })
  const x = await create({ scopeId: 'x', parentId: org.id })
  const y = await create({ scopeId: 'y', parentId: org.id })
  const other = await create({ scopeType: 'organization', scopeId: 'other' })
  const lone = await create({ scopeId: 'lone' })
  const statuses: number[] = []
  for (let round = 0; round < 4; round++) {
    const responses = await Promise.all([
      call(0, 'PUT', `${PREFIX}/${x.id}`, { parentId: y.id }), // x under y ...
      call(1, 'PUT', `${PREFIX}/${y.id}`, { parentId: x.id }), // ... and y under x: a cycle if both pass
      call(0, 'POST', PREFIX, budgetRequest({ scopeType: 'user', scopeId: `u${round}`, parentId: x.id, amount: '1' })), // a child while x moves
      call(1, 'PUT', `${PREFIX}/${lone.id}`, { parentId: other.id }),
      call(0, 'PUT', `${PREFIX}/${other.id}`, { parentId: lone.id }),
      call(1, 'PUT', `${PREFIX}/${x.id}`, { parentId: null }),
      call(0, 'PUT', `${PREFIX}/${x.id}`, { parentId: org.id }),
      call(1, 'PUT', `${PREFIX}/${y.id}`, { parentId: org.id })
    ])
    statuses.push(...responses.map((r) => r.statusCode))
  }
  t.notOk(statuses.some((s) => s >= 500), `no 5xx: ${statuses.join(',')}`)
  t.same(await misrooted(first.sql), [], 'every root_id is its walk\'s root, and no cycle')
  await checkInvariants(t, first.sql)
})

t.test('an old database with a live budget under an archived root: the migration makes it a root, so it can still be edited', async (t) => {
  const { sql } = await createTestSql(t)
  await migrate(sql, await sqlBeforeRoots(t))
  const insert = async (name: string, parent: string | null, archived = false) => (await sql`
    insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date, parent_id, deleted_at)
    values (${name}, 'team', ${name}, 100, 'USD', 'monthly', '2024-01-01', ${parent}, ${archived ? new Date() : null}) returning id`)[0]!.id as string
  const root = await insert('root', null, true)
  const orphan = await insert('orphan', root) // live, its parent (its root) archived
  await sql`insert into budget_usage_records (budget_id, amount, currency, idempotency_key) values (${orphan}, 2, 'USD', 'k')`
  // many other trees, and a deep one, to show the backfill walks them all
  for (let i = 0; i < 30; i++) { const r = await insert(`t${i}`, null); await insert(`t${i}c`, r) }
  let parent: string | null = null
  for (let level = 0; level < 40; level++) parent = await insert(`deep${level}`, parent)

  const { admin } = await (async () => {
    const app = Fastify({ logger: false })
    await app.register(budgets, { database: sql, adminToken: ADMIN_TOKEN, ...QUIET, notifications: { ...QUIET.notifications, channels: TEST_CHANNELS } })
    await app.ready()
    t.teardown(async () => await app.close())
    return { admin: async (body: unknown) => await app.inject({ method: 'PUT', url: `${PREFIX}/${orphan}`, body: body as never, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } }) }
  })()
  t.same(await misrooted(sql), [], 'the backfill: 40 deep, 31 trees, archived root')
  const rename = await admin({ name: 'renamed' })
  const detach = await admin({ parentId: null })
  t.comment(`rename: ${rename.statusCode} ${rename.json().code}; detach: ${detach.statusCode} ${detach.json().code}`)
  // The migration made it a root, with its spend: it is edited as any root is.
  t.equal(rename.statusCode, 200, 'the live budget under an archived root is edited after the migration')
  t.equal(detach.statusCode, 200, 'it is a root already: parentId null changes nothing')
  t.equal((await sql`select sum(amount)::text as spent from budget_usage_records where budget_id = ${orphan}`)[0]!.spent, '2.0000000000', 'its usage stays its own')
})

t.test('one INSERT with a child before its parent: taken when the rows name their roots (a restore), refused naming the parent when they do not', async (t) => {
  const { sql } = await buildApp(t, QUIET)
  // What a data-only restore (COPY in heap order, where a parent updated after its child moved under it
  // comes later) does: the rows of one statement in any order, each with its root_id.
  const rows = (withRoots: boolean) => `
    insert into budget_definitions (id, name, scope_type, scope_id, amount, currency, period, start_date, parent_id${withRoots ? ', root_id' : ''})
    values ('11111111-1111-4111-8111-111111111112', 'child', 'user', 'c', 5, 'USD', 'monthly', '2024-01-01', '11111111-1111-4111-8111-111111111111'${withRoots ? ", '11111111-1111-4111-8111-111111111111'" : ''}),
           ('11111111-1111-4111-8111-111111111111', 'root', 'team', 'r', 10, 'USD', 'monthly', '2024-01-01', null${withRoots ? ", '11111111-1111-4111-8111-111111111111'" : ''})`
  await t.rejects(sql.unsafe(rows(false)), { code: '23503', message: /names parent 11111111-1111-4111-8111-111111111111, which does not exist/ }, 'without roots, the child is refused naming its parent')
  t.equal((await sql`select count(*)::int as n from budget_definitions`)[0]!.n, 0, 'and nothing was written')
  await t.resolves(sql.unsafe(rows(true)), 'with their roots, the same rows in the same order are taken')
  t.same(await misrooted(sql), [], 'every root_id is the root its parent walk reaches')
  await t.rejects(sql`insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date, parent_id, root_id)
    values ('wrong', 'user', 'w', 1, 'USD', 'monthly', '2024-01-01', '11111111-1111-4111-8111-111111111112', '11111111-1111-4111-8111-111111111112')`, { code: '23503' }, 'a root named wrong is refused by the key')
})

t.test('two plugin instances start at once on one fresh database: both migrate, both serve', async (t) => {
  const { url } = await createTestSql(t)
  const start = async () => {
    const sql = postgres(url, { onnotice: () => {} })
    t.teardown(async () => await sql.end({ timeout: 1 }))
    const app = Fastify({ logger: false })
    await app.register(budgets, { database: sql, adminToken: ADMIN_TOKEN, ...QUIET, notifications: { ...QUIET.notifications, channels: TEST_CHANNELS } })
    await app.ready()
    t.teardown(async () => await app.close())
    return app
  }
  const [one, two] = await Promise.all([start(), start()])
  const created = await one!.inject({ method: 'POST', url: PREFIX, body: budgetRequest(), headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
  t.equal(created.statusCode, 201)
  const read = await two!.inject({ method: 'GET', url: `${PREFIX}/${created.json().id}`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
  t.equal(read.json().rootId, created.json().id)
})
