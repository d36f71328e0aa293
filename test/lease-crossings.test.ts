// A crossing whose alert does more than notify is in force for a hot line's lease too, however the spend
// that crossed it was recorded (review finding: a lease admitted calls after a block-all crossing recorded
// through the admin API). It bumps its tree's version at commit (sql/functions/alerts.sql), so every
// process with a line in the tree forgets its leases within the versions' freshness bound, as for a
// definition change.
import t, { type Test } from 'tap'
import Fastify from 'fastify'
import budgets from '../lib/index.js'
import { VERSION_FRESH_MS } from '../lib/gate/budget-lines.js'
import { buildGateway } from './fixtures/gateway.js'
import { onCitus } from './fixtures/database.js'
import { checkInvariants } from './fixtures/invariants.js'
import { hotLine } from './fixtures/second-process.js'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'


const pastTheFreshnessBound = async () => await new Promise((resolve) => setTimeout(resolve, VERSION_FRESH_MS * 3))
const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }
type Sql = Awaited<ReturnType<typeof buildGateway>>['sql']
const globalVersion = async (sql: Sql) => Number((await sql`select version from budget_definitions_version`)[0]!.version)
const treeVersion = async (sql: Sql, rootId: string) => Number((await sql`select coalesce(max(version), 0) as version from budget_tree_versions where root_id = ${rootId}`)[0]!.version)

/** Past the freshness bound, the line's next call is refused with `code`; the invariants hold after. */
async function nextCallRefused (t: Test, gateway: Awaited<ReturnType<typeof buildGateway>>, caller: Record<string, string>, code: string, label: string): Promise<void> {
  await pastTheFreshnessBound()
  const response = await gateway.call(caller)
  t.equal(response.statusCode, 402, label)
  t.equal(response.json().error?.code, code)
  await gateway.settled()
  await checkInvariants(t, gateway.sql)
}

t.test('a block-all crossing recorded through the admin API refuses the hot line\'s next call within the freshness bound', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const team = await gateway.createBudget({ name: 'team', scopeId: 'platform', amount: '100', alerts: [{ threshold: 50, actions: ['block-all'] }] })
  const caller = { team: 'platform' }
  await hotLine(t, gateway.sql, gateway.call, caller)
  const before = await treeVersion(gateway.sql, team.id)
  await gateway.app.budgetTracker.recordUsage({ budgetId: team.id, amount: '60', currency: 'USD', source: 'test' })
  t.equal(await treeVersion(gateway.sql, team.id), before + 1, 'the crossing bumped its tree\'s version')
  await nextCallRefused(t, gateway, caller, 'budget_blocked', 'the next call is refused')
})

t.test('spend recorded by another process: its crossing ends this process\'s lease too', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const team = await gateway.createBudget({ name: 'team', scopeId: 'platform', amount: '100', alerts: [{ threshold: 50, actions: ['restrict-models'], allowedModels: ['gpt-4o'] }] })
  const caller = { team: 'platform' }
  await hotLine(t, gateway.sql, gateway.call, caller)
  const other = Fastify()
  await other.register(budgets, { database: gateway.url, adminToken: 'another-process-token' })
  await other.ready()
  t.teardown(async () => await other.close())
  await other.budgetTracker.recordUsage({ budgetId: team.id, amount: '51', currency: 'USD', source: 'other-process' })
  // gpt-4o-mini, the fixture's model, is not among the allowed models now
  await nextCallRefused(t, gateway, caller, 'model_restricted', 'refused: restrict-models is in force')
})

t.test('a crossing that only notifies leaves the version (and every lease) alone', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const team = await gateway.createBudget({ name: 'team', scopeId: 'platform', amount: '100', alerts: [{ threshold: 10, actions: ['notify'] }] })
  const before = { global: await globalVersion(gateway.sql), tree: await treeVersion(gateway.sql, team.id) }
  await gateway.app.budgetTracker.recordUsage({ budgetId: team.id, amount: '20', currency: 'USD', source: 'test' })
  const [crossing] = await gateway.sql`select threshold from budget_alert_history where budget_id = ${team.id}`
  t.ok(crossing, 'the crossing is recorded')
  t.same({ global: await globalVersion(gateway.sql), tree: await treeVersion(gateway.sql, team.id) }, before, 'no bump')
})

t.test('a tree\'s version moves only when the change commits: a rolled-back crossing or definition change bumps nothing', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const team = await gateway.createBudget({ name: 'team', scopeId: 'platform', amount: '100', alerts: [{ threshold: 50, actions: ['block-all'] }] })
  const before = await treeVersion(gateway.sql, team.id)
  await gateway.sql.begin(async (tx) => {
    await tx`update budget_definitions set name = 'renamed' where id = ${team.id}`
    await tx`insert into budget_alert_history (budget_id, root_id, period_start, threshold, basis, actions, spent, limit_amount)
             values (${team.id}, ${team.id}, now(), 50, 'current', array['block-all'], 60, 100)`
    t.equal(await treeVersion(tx as unknown as Sql, team.id), before, 'not inside the transaction either: the bump waits for the commit')
    throw new Error('roll back')
  }).catch((error: Error) => { t.equal(error.message, 'roll back') })
  t.equal(await treeVersion(gateway.sql, team.id), before, 'nothing bumped')
  const global = await globalVersion(gateway.sql)
  await gateway.sql`update budget_definitions set name = 'renamed' where id = ${team.id}`
  t.equal(await treeVersion(gateway.sql, team.id), before + 1, 'a change made by hand in SQL bumps its tree\'s version once')
  t.equal(await globalVersion(gateway.sql), global, 'and not the global one, which the registry bumps')
})

t.test('every change through the registry bumps the global version once, and its tree\'s; one that fails bumps neither', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  // on Citus the registry bumps it once more after the commit (bumpAfterCommit, lib/budgets/registry.ts says why)
  const perChange = await onCitus(gateway.sql) ? 2 : 1
  const global = await globalVersion(gateway.sql)
  const bumps = (changes: number) => global + changes * perChange
  const org = await gateway.createBudget({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '100' })
  t.equal(await globalVersion(gateway.sql), bumps(1), 'a create')
  t.equal(await treeVersion(gateway.sql, org.id), 1, 'the new tree\'s version')
  const team = await gateway.createBudget({ name: 'team', scopeId: 'platform', amount: '50', parentId: org.id })
  t.equal(await globalVersion(gateway.sql), bumps(2), 'a child\'s create')
  t.equal(await treeVersion(gateway.sql, org.id), 2, 'counted in its root\'s tree')
  const refused = await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/${team.id}`, headers: AUTH, body: { amount: '-1' } })
  t.equal(refused.statusCode, 400, refused.body)
  t.same([await globalVersion(gateway.sql), await treeVersion(gateway.sql, org.id)], [bumps(2), 2], 'a refused change bumps nothing')
  const updated = await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/${team.id}`, headers: AUTH, body: { amount: '60' } })
  t.equal(updated.statusCode, 200, updated.body)
  t.same([await globalVersion(gateway.sql), await treeVersion(gateway.sql, org.id)], [bumps(3), 3], 'an update')
  const deleted = await gateway.app.inject({ method: 'DELETE', url: `${PREFIX}/${team.id}`, headers: AUTH })
  t.ok(deleted.statusCode < 300, deleted.body)
  t.same([await globalVersion(gateway.sql), await treeVersion(gateway.sql, org.id)], [bumps(4), 4], 'a delete')
})
