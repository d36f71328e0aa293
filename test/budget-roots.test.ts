// Every budget carries the id of its tree's root (budget_definitions.root_id, rootId in the API): set when
// it is created, kept by every move within its tree; a move that would change it is refused (409
// BUDGET_ERR_MOVE_ACROSS_TREES naming parentId) and changes nothing. The database's constraints hold the
// same rule against any other writer, and the migration fills the column on an existing database.
import { readFile } from 'node:fs/promises'
import fc from 'fast-check'
import t from 'tap'
import { migrate } from '../lib/kernel/database/migrate.js'
import type { CreateBudgetInput } from '../lib/budgets/registry.js'
import { PREFIX, budgetRequest, buildApp, snapshotTables } from './fixtures/app.js'
import { createTestSql } from './fixtures/database.js'
import { misrooted, sqlBeforeRoots, walkedRoots } from './fixtures/budget-roots.js'

const QUIET = { notifications: { intervalMs: 0 } }

t.test('a budget without a parent is its own root; a child takes its parent\'s root; rootId is read-only', async (t) => {
  const { admin, sql } = await buildApp(t, QUIET)
  const create = async (body: Record<string, unknown>) => {
    const response = await admin({ method: 'POST', url: PREFIX, body: budgetRequest(body) })
    t.equal(response.statusCode, 201)
    return response.json() as { id: string, rootId: string, parentId: string | null }
  }
  const org = await create({ scopeType: 'organization', scopeId: 'acme' })
  const team = await create({ scopeId: 'platform', parentId: org.id })
  const user = await create({ scopeType: 'user', scopeId: 'alice', parentId: team.id, amount: '10' })
  t.equal(org.rootId, org.id, 'a root')
  t.equal(team.rootId, org.id, 'a child')
  t.equal(user.rootId, org.id, 'a grandchild')
  t.same((await admin({ method: 'GET', url: `${PREFIX}/${user.id}` })).json().rootId, org.id, 'read back')
  const tree = (await admin({ method: 'GET', url: `${PREFIX}/hierarchy/user/alice` })).json()
  t.equal(tree.roots[0].rootId, org.id, 'in the hierarchy view too')
  t.same(await misrooted(sql), [], 'the column agrees with the walk')

  const before = await snapshotTables(sql)
  for (const body of [{ rootId: team.id }, { rootId: org.id, name: 'x' }]) {
    const response = await admin({ method: 'PUT', url: `${PREFIX}/${team.id}`, body })
    t.equal(response.statusCode, 400, 'rootId cannot be written')
    t.match(response.json(), { code: 'BUDGET_ERR_VALIDATION', field: 'rootId' })
  }
  const created = await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ rootId: org.id }) })
  t.match({ statusCode: created.statusCode, ...created.json() }, { statusCode: 400, code: 'BUDGET_ERR_VALIDATION', field: 'rootId' })
  t.same(await snapshotTables(sql), before, 'nothing changed')
})

t.test('moves within a tree keep the root of the moved subtree; moves across trees are refused and change nothing', async (t) => {
  const { app, admin, sql } = await buildApp(t, QUIET)
  const create = async (body: Record<string, unknown>) => (await admin({ method: 'POST', url: PREFIX, body: budgetRequest(body) })).json() as { id: string, rootId: string }
  const org = await create({ scopeType: 'organization', scopeId: 'acme' })
  const a = await create({ scopeId: 'a', parentId: org.id })
  const b = await create({ scopeId: 'b', parentId: org.id })
  const leaf = await create({ scopeType: 'user', scopeId: 'alice', parentId: a.id, amount: '10' })
  const other = await create({ scopeType: 'organization', scopeId: 'other' })
  const otherTeam = await create({ scopeId: 'c', parentId: other.id })
  const lone = await create({ scopeId: 'lone' })
  const move = async (id: string, parentId: string | null) => await admin({ method: 'PUT', url: `${PREFIX}/${id}`, body: { parentId } })

  const moved = await move(a.id, b.id)
  t.equal(moved.statusCode, 200, 'a subtree moved under its sibling')
  t.equal(moved.json().rootId, org.id)
  t.equal((await move(leaf.id, org.id)).json().rootId, org.id, 'a leaf moved up to the root')
  t.equal((await move(leaf.id, a.id)).json().rootId, org.id, 'and down again')
  t.same(await misrooted(sql), [])

  const before = await snapshotTables(sql)
  const refused: Array<[string, string, string | null]> = [
    ['a child under a budget of another tree', leaf.id, other.id],
    ['a subtree under a child of another tree', a.id, otherTeam.id],
    ['a root under a budget of another tree', lone.id, org.id],
    ['a root with children under another tree', other.id, b.id],
    ['a child made a root of its own', a.id, null]
  ]
  for (const [label, id, parentId] of refused) {
    const response = await move(id, parentId)
    t.equal(response.statusCode, 409, label)
    t.match(response.json(), { code: 'BUDGET_ERR_MOVE_ACROSS_TREES', field: 'parentId', message: /stays in the tree it was created in/ }, label)
  }
  await t.rejects(app.budgetRegistry.updateBudget(leaf.id, { parentId: other.id }), { code: 'BUDGET_ERR_MOVE_ACROSS_TREES', statusCode: 409, field: 'parentId' }, 'the library refuses it alike')
  t.match((await admin({ method: 'PUT', url: `${PREFIX}/${a.id}`, body: { parentId: '00000000-0000-4000-8000-000000000000' } })).json(),
    { code: 'BUDGET_ERR_PARENT_NOT_FOUND', field: 'parentId' }, 'an unknown parent is still a 400 naming parentId')
  t.match((await move(org.id, leaf.id)).json(), { code: 'BUDGET_ERR_HIERARCHY_CYCLE' }, 'a root under its own descendant is a cycle, within its tree')
  t.same(await snapshotTables(sql), before, 'no refusal changed anything')
  t.equal((await move(lone.id, null)).json().rootId, lone.id, 'a root that stays a root is no move')
})

t.test('the database refuses a root change from any writer: a root is its own root, a child has its parent\'s', async (t) => {
  const { admin, sql } = await buildApp(t, QUIET)
  const create = async (body: Record<string, unknown>) => (await admin({ method: 'POST', url: PREFIX, body: budgetRequest(body) })).json() as { id: string }
  const org = await create({ scopeType: 'organization', scopeId: 'acme' })
  const team = await create({ scopeId: 'a', parentId: org.id })
  const user = await create({ scopeType: 'user', scopeId: 'alice', parentId: team.id, amount: '10' })
  const other = await create({ scopeType: 'organization', scopeId: 'other' })
  const [inserted] = await sql`insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date, parent_id)
    values ('direct', 'user', 'bob', 5, 'USD', 'monthly', '2024-01-01', ${team.id}) returning id, root_id`
  t.equal(inserted!.root_id, org.id, 'an insert from elsewhere gets its root from the trigger')
  const before = await snapshotTables(sql)
  const attempts: Array<[string, () => Promise<unknown>, string]> = [
    ['a subtree moved to another tree', async () => await sql`update budget_definitions set parent_id = ${other.id} where id = ${team.id}`, '23503'],
    ['a leaf moved to another tree', async () => await sql`update budget_definitions set parent_id = ${other.id} where id = ${user.id}`, '23503'],
    ['a child made a root', async () => await sql`update budget_definitions set parent_id = null where id = ${user.id}`, '23514'],
    ['a root made a child', async () => await sql`update budget_definitions set parent_id = ${org.id} where id = ${other.id}`, '23514'],
    ['root_id written', async () => await sql`update budget_definitions set root_id = ${other.id} where id = ${user.id}`, '23503'],
    ['an insert under no budget', async () => await sql`insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date, parent_id)
      values ('x', 'user', 'x', 5, 'USD', 'monthly', '2024-01-01', gen_random_uuid())`, '23503']
  ]
  for (const [label, attempt, code] of attempts) await t.rejects(attempt(), { code }, label)
  t.same(await snapshotTables(sql), before, 'nothing changed')
})

t.test('property: after random trees and random moves, every budget\'s root_id is the root its parent_id walk reaches', async (t) => {
  const { app, sql } = await buildApp(t, QUIET)
  const registry = app.budgetRegistry
  let run = 0
  const outcomes = new Map<string, number>()
  await fc.assert(fc.asyncProperty(
    fc.integer({ min: 2, max: 8 }).chain((size) => fc.record({
      parents: fc.tuple(...Array.from({ length: size }, (_, i) => fc.integer({ min: -1, max: i - 1 }))),
      moves: fc.array(fc.record({ who: fc.nat({ max: size - 1 }), to: fc.integer({ min: -1, max: size - 1 }) }), { minLength: 1, maxLength: 6 })
    })),
    async ({ parents, moves }) => {
      run++
      const ids: string[] = []
      const parentOf: Array<number> = []
      for (const [i, parent] of parents.entries()) {
        const budget = await registry.createBudget(budgetRequest({ name: `b${i}`, scopeId: `r${run}-${i}`, parentId: parent < 0 ? null : ids[parent] }) as CreateBudgetInput)
        ids.push(budget.id)
        parentOf.push(parent)
      }
      const rootOf = (i: number): number => parentOf[i]! < 0 ? i : rootOf(parentOf[i]!)
      const isAncestorOrSelf = (a: number, i: number): boolean => i === a || (parentOf[i]! >= 0 && isAncestorOrSelf(a, parentOf[i]!))
      for (const { who, to } of moves) {
        const expected = to < 0
          ? (parentOf[who]! < 0 ? 'ok' : 'BUDGET_ERR_MOVE_ACROSS_TREES')
          : rootOf(to) !== rootOf(who) ? 'BUDGET_ERR_MOVE_ACROSS_TREES' : isAncestorOrSelf(who, to) ? 'BUDGET_ERR_HIERARCHY_CYCLE' : 'ok'
        const outcome = await registry.updateBudget(ids[who]!, { parentId: to < 0 ? null : ids[to]! })
          .then((budget) => { t.equal(budget.rootId, ids[rootOf(who)]); return 'ok' }, (error: { code?: string }) => error.code ?? String(error))
        if (outcome !== expected) throw new Error(`move of b${who} under ${to < 0 ? 'nothing' : `b${to}`}: ${outcome}, expected ${expected}`)
        outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1)
        if (outcome === 'ok') parentOf[who] = to
      }
      const rows = await walkedRoots(sql)
      const wrong = rows.filter((row) => row.root_id !== row.walked)
      if (wrong.length > 0) throw new Error(`root_id differs from the walk: ${JSON.stringify(wrong)}`)
      const stored = new Map(rows.map((row) => [row.id, row.root_id]))
      ids.forEach((id, i) => { if (stored.get(id) !== ids[rootOf(i)]) throw new Error(`b${i}: root ${stored.get(id)}, expected b${rootOf(i)}`) })
    }), { numRuns: 25, seed: 4 })
  t.ok((outcomes.get('ok') ?? 0) > 0 && (outcomes.get('BUDGET_ERR_MOVE_ACROSS_TREES') ?? 0) > 0 && (outcomes.get('BUDGET_ERR_HIERARCHY_CYCLE') ?? 0) > 0,
    `moves made and refused both ways: ${JSON.stringify(Object.fromEntries(outcomes))}`)
})

t.test('the migration fills root_id in place on a database with trees, archived budgets too, and runs again harmlessly', async (t) => {
  const { sql } = await createTestSql(t, { max: 1 })
  await migrate(sql, await sqlBeforeRoots(t))
  const insert = async (name: string, parent: string | null, archived = false) => (await sql`
    insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date, parent_id, deleted_at)
    values (${name}, 'team', ${name}, 100, 'USD', 'monthly', '2024-01-01', ${parent}, ${archived ? new Date() : null}) returning id`)[0]!.id as string
  const org = await insert('org', null)
  const team = await insert('team', org)
  const user = await insert('user', team)
  const gone = await insert('gone', team, true)
  const lone = await insert('lone', null)
  let parent = await insert('deep-0', null)
  const deep = [parent]
  for (let level = 1; level < 16; level++) deep.push(parent = await insert(`deep-${level}`, parent))

  t.same((await migrate(sql)).versions.filter((version) => version <= 4), [4], 'the roots migration runs (and the later ones after it)')
  const roots = new Map((await sql`select id, root_id from budget_definitions`).map((row) => [row.id as string, row.root_id as string]))
  t.same([team, user, gone, org].map((id) => roots.get(id)), [org, org, org, org], 'a tree, an archived budget in it')
  t.equal(roots.get(lone), lone, 'a lone root')
  t.same(deep.map((id) => roots.get(id)), deep.map(() => deep[0]), 'a tree 16 deep')
  const [column] = await sql`select is_nullable from information_schema.columns where table_name = 'budget_definitions' and column_name = 'root_id'`
  t.equal(column!.is_nullable, 'NO')

  const before = await snapshotTables(sql)
  const text = await readFile(new URL('../sql/migrations/004_budget_roots.sql', import.meta.url), 'utf8')
  await sql.begin(async (tx) => { await tx.unsafe(text) })
  t.same(await snapshotTables(sql), before, 'run again, it changes nothing')
  const [{ count }] = await sql`select count(*)::int from pg_constraint where conrelid = 'budget_definitions'::regclass and conname like 'budget_definitions_root%'` as unknown as [{ count: number }]
  t.equal(count, 2, 'and adds no constraint twice')
})

t.test('a database whose parent_id make a cycle is refused by the migration, naming the budgets, and left as it was', async (t) => {
  const { sql } = await createTestSql(t, { max: 1 })
  await migrate(sql, await sqlBeforeRoots(t))
  const [a] = await sql`insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date) values ('a', 'team', 'a', 1, 'USD', 'monthly', '2024-01-01') returning id`
  const [b] = await sql`insert into budget_definitions (name, scope_type, scope_id, amount, currency, period, start_date, parent_id) values ('b', 'team', 'b', 1, 'USD', 'monthly', '2024-01-01', ${a!.id}) returning id`
  await sql`update budget_definitions set parent_id = ${b!.id} where id = ${a!.id}`
  const ids = [a!.id as string, b!.id as string].sort()
  await t.rejects(migrate(sql), { code: 'BUDGET_ERR_MIGRATION', message: new RegExp(`004_budget_roots\\.sql.*no root reaches.*${ids[0]!}, ${ids[1]!}`) })
  const [column] = await sql`select count(*)::int as count from information_schema.columns where table_name = 'budget_definitions' and column_name = 'root_id'`
  t.equal(column!.count, 0, 'no column added')
})
