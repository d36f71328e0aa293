// Adversarial review of df4fb76 (the sweeper by tree) on plain PostgreSQL: budget_sweep_expired told odd tree
// lists and limits, rows from before migration 012, and sweepers by tree racing each other and late settlements
// on two-tree reservations (a user tree, a team under an organization: test/fixtures/two-tree-calls.ts).
import t from 'tap'
import { randomUUID } from 'node:crypto'
import postgres from 'postgres'
import { twoTreeCalls } from './fixtures/two-tree-calls.js'
import { createSweeperRepository } from '../lib/gate/sweeper-repository.js'

const recorded = async (sql: postgres.Sql, id: string) =>
  (await sql<Array<{ n: number }>>`select count(*)::int as n from budget_usage_records where idempotency_key = ${`req-${id}`}`)[0]!.n
const expire = async (sql: postgres.Sql) => { await sql`update budget_reservations set expires_at = now() - interval '1 second'` }
// the sweep naming its trees: budget_sweep_expired(limit, roots) at df4fb76, budget_sweep_trees(limit, roots, root) once renamed
const sweep = async (sql: postgres.Sql, limit: number | null, roots: Array<string | null> | null) => {
  const [probe] = await sql<Array<{ renamed: boolean }>>`select to_regproc('budget_sweep_trees') is not null as renamed`
  return probe!.renamed
    ? (await sql<Array<{ n: number }>>`select budget_sweep_trees(${limit}::integer, ${roots}::text[]::uuid[], '00000000-0000-0000-0000-000000000000'::uuid) as n`)[0]!.n
    : (await sql<Array<{ n: number }>>`select budget_sweep_expired(${limit}::integer, ${roots}::text[]::uuid[]) as n`)[0]!.n
}

t.test('odd tree lists and limits: nothing swept that should not be, a two-tree reservation swept once from either tree', async (t) => {
  const s = await twoTreeCalls(t)
  const id = randomUUID()
  t.ok((await s.hold(id, '2'))[0]!.fits, 'held 2 on the user, team and organization')
  await expire(s.sql)
  t.equal(await sweep(s.sql, 100, []), 0, 'an empty list: nothing')
  t.equal(await sweep(s.sql, 100, [null]), 0, 'a list of null: nothing')
  t.equal(await sweep(s.sql, 100, [randomUUID()]), 0, 'another tree: nothing')
  t.equal(await sweep(s.sql, 0, [s.U]), 0, 'limit 0: nothing')
  t.equal(await sweep(s.sql, -5, [s.U]), 0, 'a negative limit: nothing')
  t.equal(await sweep(s.sql, -5, null), 0, 'a negative limit, every tree: nothing')
  t.equal(await recorded(s.sql, id), 0, 'not recorded yet')
  t.equal(await sweep(s.sql, 1, [null, s.U, s.U, s.U]), 1, 'limit 1, the user tree named thrice with a null: swept once')
  t.equal(await recorded(s.sql, id), 1, 'recorded once')
  t.same(await s.numbers(), { user: { current: '2', reserved: '0' }, team: { current: '2', reserved: '0' }, org: { current: '2', reserved: '0' } }, 'its estimate on every budget, nothing held')
  t.same(await s.broken(), [], 'invariants')
  t.equal(await sweep(s.sql, 100, [s.U, s.O]), 0, 'nothing left')
})

t.test('the repository by tree: a limit of 0 or below sweeps nothing, as the sweep of every tree does', async (t) => {
  const s = await twoTreeCalls(t)
  t.ok((await s.hold(randomUUID(), '1'))[0]!.fits, 'held')
  await expire(s.sql)
  const sweeper = createSweeperRepository(s.sql)
  t.equal(await sweeper.sweepExpired(-1), 0, 'every tree, limit -1: 0')
  t.equal(await sweeper.sweepExpired(0, { byTree: true }), 0, 'by tree, limit 0: 0')
  t.equal(await sweeper.sweepExpired(-1, { byTree: true }), 0, 'by tree, limit -1: 0 (not an error)')
})

t.test('rows from before migration 012 (trees null), swept from the organization\'s tree and from the user\'s', async (t) => {
  for (const from of ['O', 'U'] as const) {
    const s = await twoTreeCalls(t)
    const ids = [randomUUID(), randomUUID()]
    for (const id of ids) t.ok((await s.hold(id, '1'))[0]!.fits, 'held')
    await s.sql`update budget_reservations set trees = null, expires_at = now() - interval '1 second'`
    t.equal(await createSweeperRepository(s.sql).sweepTree(s[from], 100), 2, `both swept from ${from}`)
    for (const id of ids) t.equal(await recorded(s.sql, id), 1, 'recorded once')
    t.same(await s.broken(), [], 'invariants')
    t.equal((await s.sql`select count(*)::int as n from budget_reservations`)[0]!.n, 0, 'no row left')
  }
})

t.test('sweepers by tree (small limits) racing each other and late settlements on two-tree reservations', async (t) => {
  const s = await twoTreeCalls(t)
  const clients = Array.from({ length: 4 }, () => postgres(s.url, { max: 1, onnotice: () => {} }))
  t.teardown(async () => { for (const c of clients) await c.end({ timeout: 1 }) })
  const errors: string[] = []
  const ids: string[] = []
  for (let round = 0; round < 25; round++) {
    const batch = Array.from({ length: 4 }, () => randomUUID())
    // a hold on all three, on the team and organization only, or on the user only
    for (const [i, id] of batch.entries()) {
      const on = i % 3 === 0 ? [s.team, s.org] : i % 3 === 1 ? [s.user] : [s.user, s.team, s.org]
      if ((await s.hold(id, '0.5', on))[0]!.fits) ids.push(id)
    }
    await expire(s.sql)
    const work = [
      createSweeperRepository(clients[0]!).sweepTree(s.U, 1 + (round % 3)),
      createSweeperRepository(clients[1]!).sweepTree(s.O, 1 + (round % 2)),
      createSweeperRepository(clients[2]!).sweepExpired(2, { byTree: true }),
      clients[3]!`select reservation_id from budget_settle_batch(${batch}::uuid[], ${batch.map(() => '0.25')}::numeric[], ${batch.map(() => 'gate')}::text[],
        ${batch.map(() => 'call')}::text[], array_fill('{}'::jsonb, array[${batch.length}::int]), null, ${round % 2 === 0 ? [s.U, s.O] : null}::text[]::uuid[])`
    ]
    for (const r of await Promise.allSettled(work)) if (r.status === 'rejected') errors.push(String(r.reason))
  }
  for (let i = 0; i < 20; i++) if (await createSweeperRepository(s.sql).sweepExpired(100, { byTree: true }) === 0) break
  t.same(errors, [], 'no statement failed')
  const twice = (await s.sql`select idempotency_key from budget_usage_records group by idempotency_key having count(*) > 1`).map((r) => r.idempotency_key)
  t.same(twice, [], 'no call recorded twice')
  const missing = []
  for (const id of ids) if (await recorded(s.sql, id) !== 1) missing.push(id)
  t.same(missing, [], 'every call recorded once')
  t.same(await s.broken(), [], 'invariants')
  t.equal((await s.sql`select count(*)::int as n from budget_reservations`)[0]!.n, 0, 'no row left')
})
