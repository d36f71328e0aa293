// Review of 14647b9 (p_limit): (the sweeper settles only reservations whose every row it locked, SKIP LOCKED, tree by
// tree): a reservation one of whose trees another transaction holds (a renewal or a return of a lease half
// way through its tree-by-tree locks; a stuck transaction), and what p_limit and the return value mean then.
import t from 'tap'
import { findViolations } from './fixtures/invariants.js'
import { twoTreeLine } from './fixtures/two-trees.js'

const HOLD = '22222222-2222-4222-8222-222222222222'

t.test('a reservation a stuck transaction holds in one tree: the others are still swept, under the gateway\'s limit of 100', async (t) => {
  const { sql, budgets, expiredHold, roots } = await twoTreeLine(t, 3)
  const [, team, org] = budgets as [string, string, string]
  // 50 calls on the two-tree line, each with two rows in the organization's tree: the gateway's limit of 100 rows
  const stuckIds = Array.from({ length: 50 }, (_, i) => `0aaaaaaa-0000-4000-8000-${String(i).padStart(12, '0')}`)
  for (const id of stuckIds) t.ok((await expiredHold(id))[0]!.fits)
  const stuckId = stuckIds[0]!
  // another expired hold in the organization's tree alone, after the stuck one in id order
  t.ok((await expiredHold(HOLD, '1', [team, org]))[0]!.fits)
  const [first, second] = await roots(stuckId) as [string, string]
  const stuckTree = (await sql`select root_id from budget_reservations where id = ${HOLD} limit 1`)[0]!.root_id as string
  const lockedTree = stuckTree === first ? second : first
  const reserve = await sql.reserve()
  t.teardown(() => { reserve.release() })
  await reserve`begin`
  // a stuck transaction holds their rows in the user's tree (the other tree)
  await reserve`select 1 from budget_reservations where id = any (${stuckIds}::uuid[]) and root_id = ${lockedTree} for update`
  // the gateway's sweep (lib/gate/integration.ts: limit 100), run every interval
  let swept = 0
  for (let i = 0; i < 3; i++) swept += (await sql`select budget_sweep_expired(100) as n`)[0]!.n as number
  const left = (await sql`select count(*)::int as n from budget_reservations where id = ${HOLD}`)[0]!.n as number
  await reserve`rollback`
  t.equal(swept, 1, `the free expired hold swept while the stuck one is held (swept ${swept}, its rows left: ${left})`)
  let rest = 0
  for (let n = -1; n !== 0;) { n = (await sql`select budget_sweep_expired(100) as n`)[0]!.n as number; rest += n }
  t.equal(swept + rest, 51, 'all swept once free, each once')
  t.same(await findViolations(sql), [], 'invariants')
})
