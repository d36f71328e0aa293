// On the Citus cluster (`npm run test:citus`): settlements that cross an alert threshold (notify only), now that
// the settlement is delegated to its first tree's worker (2d6ae2f). A hold on a two-tree line (a user budget
// that is its own root, a team under an organization whose alert is at 10 %) settled as the gate sends it (the
// trees named, the first as p_root), as an older caller or the give-back sends it (no trees: p_root the nil
// root), and the sweeper counting an expired hold past the threshold. Each must commit, record the crossing, and
// leave the ledger consistent. (Two calls of one batch crossing between them take budget_record_spend's step-wise
// path, which does not run on Citus yet: docs/scaling.md lists it.)
import t, { type Test } from 'tap'
import { randomUUID } from 'node:crypto'
import { findViolations } from '../test/fixtures/invariants.js'
import { BOTH, LINE, ORG, distributedTwoTreeLine } from '../test/fixtures/two-tree-cluster.js'

const NIL = '00000000-0000-0000-0000-000000000000'
const TREES = BOTH // in root order

async function setUp (t: Test) {
  const { sql, win } = await distributedTwoTreeLine(t, '[{"threshold": 10, "actions": ["notify"]}, {"threshold": 30, "actions": ["notify"]}]')
  const [named] = await sql`select count(*)::int as n from pg_proc where proname = 'budget_settle_batch' and 'p_roots' = any (proargnames)`
  const namesTrees = named!.n > 0
  t.comment(`the functions ${namesTrees ? 'name' : 'do not name'} their trees`)
  const hold = async (ids: string[], estimate: string, ttl = '1 hour') => {
    const rows = ids.flatMap((_, c) => LINE.map((b, r) => ({ call: String(c + 1), b, r: String(r) })))
    const args = sql`${ids}::uuid[], ${ids.map(() => estimate)}::numeric[], ${ids.map((id) => `req-${id}`)}::text[], 'USD', ${ttl}::interval,
      ${rows.map((r) => r.call)}::text[]::integer[], ${rows.map((r) => r.b)}::uuid[], ${rows.map((r) => win(r.b).start.toISOString())}::timestamptz[],
      ${rows.map((r) => win(r.b).end.toISOString())}::timestamptz[], ${rows.map((r) => String(r.b !== ORG))}::text[]::boolean[], ${rows.map((r) => r.r)}::text[]::integer[],
      false, false`
    const held = namesTrees
      ? await sql`select bool_and(is_reserved) as ok from budget_hold_batch(${args}, ${TREES}::uuid[], ${TREES[0]!}::uuid)`
      : await sql`select bool_and(is_reserved) as ok from budget_hold_batch(${args})`
    return held[0]!.ok as boolean
  }
  const settle = async (ids: string[], actual: string, roots: string[] | null) => {
    const args = sql`${ids}::uuid[], ${ids.map(() => actual)}::numeric[], ${ids.map(() => 'gate')}::text[], ${ids.map(() => 'call')}::text[],
      array_fill('{}'::jsonb, array[${ids.length}::int]), ${ids.map(() => randomUUID())}::uuid[]`
    return namesTrees
      ? await sql`select reservation_id, usage_id from budget_settle_batch(${args}, ${roots}::uuid[], ${roots?.[0] ?? NIL}::uuid)`
      : await sql`select reservation_id, usage_id from budget_settle_batch(${args})`
  }
  const crossings = async () => (await sql`select threshold::int from budget_alert_history where budget_id = ${ORG} order by threshold`).map((r) => r.threshold as number)
  return { sql, hold, settle, crossings }
}

const attempt = async (fn: () => Promise<unknown>): Promise<string> => {
  try { await fn(); return 'ok' } catch (error: any) { return `${error.code as string}: ${error.message as string}` }
}

t.test('a settlement as the gate sends it (its trees named) crosses the threshold', async (t) => {
  const s = await setUp(t)
  const id = randomUUID()
  t.ok(await s.hold([id], '20'), 'held')
  t.equal(await attempt(async () => await s.settle([id], '15', TREES)), 'ok', 'the settlement commits')
  t.same(await s.crossings(), [10], 'the 10 % crossing recorded')
  t.same(await findViolations(s.sql), [], 'invariants')
})

t.test('a settlement that names no tree (an older caller, the give-back) crosses the threshold', async (t) => {
  const s = await setUp(t)
  const id = randomUUID()
  t.ok(await s.hold([id], '20'), 'held')
  t.equal(await attempt(async () => await s.settle([id], '15', null)), 'ok', 'the settlement commits')
  t.same(await s.crossings(), [10], 'the 10 % crossing recorded')
  t.same(await findViolations(s.sql), [], 'invariants')
})

t.test('the sweeper counts an expired hold past the threshold', async (t) => {
  const s = await setUp(t)
  t.ok(await s.hold([randomUUID()], '15', '-1 second'), 'held, expired')
  t.equal(await attempt(async () => await s.sql`select budget_sweep_expired(100)`), 'ok', 'the sweep commits')
  t.same(await s.crossings(), [10], 'the 10 % crossing recorded')
  t.same(await findViolations(s.sql), [], 'invariants')
})
