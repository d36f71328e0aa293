// Review of d4156a1 on the Citus cluster: a shadow budget's as-if ledger at every depth of a tree (not only a
// root, whose id is its tree's), after a move within the tree and a switch to shadow, read by the status route
// and by the wrapper the versions before call (budget_shadow_status), which must still answer on the cluster.
import t from 'tap'
import { distributedApp } from '../test/fixtures/citus-app.js'
import { PREFIX } from '../test/fixtures/app.js'

t.test('shadow budgets at every depth on the cluster: the status and the wrapper read each one\'s own ledger', async (t) => {
  const { sql, createBudget, admin } = await distributedApp(t)
  const root = await createBudget({ name: 'root', scopeType: 'organization', scopeId: 'org-sr', amount: '1000', enforcement: 'shadow' })
  const child = await createBudget({ name: 'child', scopeType: 'team', scopeId: 'team-sr', amount: '500', parentId: root.id, enforcement: 'shadow' })
  const leaf = await createBudget({ name: 'leaf', scopeType: 'user', scopeId: 'user-sr', amount: '100', parentId: child.id })
  const other = await createBudget({ name: 'other', scopeType: 'organization', scopeId: 'org-other', amount: '1000' })
  const otherChild = await createBudget({ name: 'other-child', scopeType: 'team', scopeId: 'team-other', amount: '10', parentId: other.id, enforcement: 'shadow' })
  t.equal((await admin({ method: 'PUT', url: `${PREFIX}/${leaf.id}`, body: { enforcement: 'shadow' } })).statusCode, 200, 'the leaf switched to shadow')
  const amounts = new Map([[root.id, '12345678901234567.8901234567'], [child.id, '0.0000000001'], [leaf.id, '7.5'], [otherChild.id, '3']])
  const starts = new Map<string, string>()
  for (const budget of [root, child, leaf, otherChild]) {
    const status = await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/status` })
    t.equal(status.statusCode, 200, `status of ${budget.id} before any ledger row`)
    t.match(status.json(), { shadow: { excludedAmount: '0', counts: [] } }, 'a window with no ledger row: nothing excluded')
    starts.set(budget.id, status.json().periodStart)
    await sql`insert into budget_shadow_windows (budget_id, root_id, period_start, excluded_amount) values (${budget.id}, ${budget.rootId}, ${starts.get(budget.id)!}, ${amounts.get(budget.id)!}::numeric)`
    await sql`insert into budget_shadow_counts (budget_id, root_id, period_start, code, outcome, calls) values (${budget.id}, ${budget.rootId}, ${starts.get(budget.id)!}, 'BUDGET_EXCEEDED', 'refused', 3)`
  }
  await sql.unsafe(`create function review_shadow_status_before(p_budget_id uuid, p_period_start timestamptz)
    returns table (excluded_amount numeric, counts jsonb) language sql stable as $$
      select coalesce((select s.excluded_amount from budget_shadow_windows s where s.budget_id = p_budget_id and s.period_start = p_period_start), 0),
             coalesce((select jsonb_agg(jsonb_build_object('code', c.code, 'outcome', c.outcome, 'calls', c.calls) order by c.code, c.outcome)
                       from budget_shadow_counts c where c.budget_id = p_budget_id and c.period_start = p_period_start), '[]'::jsonb)
    $$`)
  const check = async (label: string) => {
    for (const budget of [root, child, leaf, otherChild]) {
      const status = await admin({ method: 'GET', url: `${PREFIX}/${budget.id}/status` })
      t.equal(status.statusCode, 200, `${label}: status answered`)
      t.match(status.json(), { shadow: { excludedAmount: amounts.get(budget.id), counts: [{ code: 'BUDGET_EXCEEDED', outcome: 'refused', calls: 3 }] } }, `${label}: its own ledger`)
      // the previous version's statement, as it ran it (lib/usage/status-repository.ts before d4156a1): its first row
      const wrapped = await sql`select excluded_amount::text as excluded, counts from budget_shadow_status(${budget.id}, ${starts.get(budget.id)!})`.catch((error: Error) => error)
      t.notOk(wrapped instanceof Error, `${label}: the wrapper answers on the cluster ${wrapped instanceof Error ? wrapped.message : ''}`)
      if (!(wrapped instanceof Error)) {
        t.equal(wrapped.length, 1, `${label}: the wrapper answers one row, as the function before did (${wrapped.length} rows: ${wrapped.map((row) => row.excluded as string).join(', ')})`)
        t.equal(Number(wrapped[0]?.excluded), Number(amounts.get(budget.id)), `${label}: the previous version's read (its first row) is the budget's ledger`)
        t.same(wrapped[0]?.counts, [{ code: 'BUDGET_EXCEEDED', outcome: 'refused', calls: 3 }], `${label}: the previous version's counts`)
      }
      // the function before d4156a1, its body as it was, on the same cluster: one row, the ledger
      const before = await sql`select * from review_shadow_status_before(${budget.id}, ${starts.get(budget.id)!})`.catch((error: Error) => error)
      t.comment(`${label}: the function before answered ${before instanceof Error ? before.message : JSON.stringify(before.map((row) => [String(row.excluded_amount), row.counts]))}`)
    }
  }
  await check('as created')
  t.equal((await admin({ method: 'PUT', url: `${PREFIX}/${leaf.id}`, body: { parentId: root.id } })).statusCode, 200, 'the leaf moved under the root')
  await check('after a move within the tree')
})
