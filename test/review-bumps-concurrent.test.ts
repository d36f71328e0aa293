// Review of the trees' versions: usage batches crossing block-all thresholds in two trees in both orders,
// single usage records crossing them, and admin changes in the same trees, all at once: no deadlock
// (pg_stat_database.deadlocks), every request served, each tree bumped by every transaction that touched it.
import t from 'tap'
import { buildGateway } from './fixtures/gateway.js'
import { checkInvariants } from './fixtures/invariants.js'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }

t.test('batches in opposite orders, single records and admin changes in two trees at once', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const blocking = { amount: '100', alerts: [{ threshold: 50, actions: ['block-all'] }] }
  const r1 = (await gateway.createBudget({ name: 'r1', scopeId: 'r1', amount: '100000' })).id
  const r2 = (await gateway.createBudget({ name: 'r2', scopeId: 'r2', amount: '100000' })).id
  const kids = async (root: string, prefix: string, n: number) => {
    const ids: string[] = []
    for (let i = 0; i < n; i++) ids.push((await gateway.createBudget({ name: `${prefix}${i}`, scopeType: 'project', scopeId: `${prefix}${i}`, parentId: root, ...blocking })).id)
    return ids
  }
  const k1 = await kids(r1, 'a', 10)
  const k2 = await kids(r2, 'b', 10)
  const version = async (root: string) => Number((await gateway.sql`select coalesce(max(version), 0) as v from budget_tree_versions where root_id = ${root}`)[0]!.v)
  const deadlocks = async () => Number((await gateway.sql`select deadlocks from pg_stat_database where datname = current_database()`)[0]!.deadlocks)
  const before = { r1: await version(r1), r2: await version(r2), deadlocks: await deadlocks() }
  const record = (budgetId: string) => ({ budgetId, amount: '60', currency: 'USD', source: 'batch' })
  const requests = []
  // four batches, each crossing in both trees, two in each order
  for (let i = 0; i < 4; i++) {
    const records = i % 2 === 0 ? [record(k1[i]!), record(k2[i]!)] : [record(k2[i]!), record(k1[i]!)]
    requests.push(gateway.app.inject({ method: 'POST', url: `${PREFIX}/usage/batch`, headers: AUTH, body: { records } }))
  }
  // two single records crossing, one in each tree
  requests.push(gateway.app.inject({ method: 'POST', url: `${PREFIX}/${k1[4]!}/usage`, headers: AUTH, body: { amount: '60', currency: 'USD', source: 'single' } }))
  requests.push(gateway.app.inject({ method: 'POST', url: `${PREFIX}/${k2[4]!}/usage`, headers: AUTH, body: { amount: '60', currency: 'USD', source: 'single' } }))
  // admin changes to budgets the batches cross on, in both trees
  for (const id of [k1[0]!, k2[1]!, k1[2]!, k2[3]!]) requests.push(gateway.app.inject({ method: 'PUT', url: `${PREFIX}/${id}`, headers: AUTH, body: { amount: '110' } }))
  const answers = await Promise.all(requests)
  t.same(answers.map((a) => a.statusCode).filter((s) => s >= 300), [], `every request served: ${answers.filter((a) => a.statusCode >= 300).map((a) => a.body).join(' | ')}`)
  await new Promise((resolve) => setTimeout(resolve, 700)) // the statistics are reported with a delay
  t.equal(await deadlocks() - before.deadlocks, 0, 'no deadlock (pg_stat_database.deadlocks)')
  // each tree: 4 batches + 1 single record + 2 admin changes, each its own transaction
  t.ok(await version(r1) - before.r1 >= 7, `r1 bumped by each transaction (${before.r1} -> ${await version(r1)})`)
  t.ok(await version(r2) - before.r2 >= 7, `r2 bumped by each transaction (${before.r2} -> ${await version(r2)})`)
  const [crossings] = await gateway.sql`select count(*)::int as n from budget_alert_history where 'block-all' = any(actions)`
  t.equal(crossings!.n, 10, 'ten block-all crossings recorded')
  await checkInvariants(t, gateway.sql)
})
