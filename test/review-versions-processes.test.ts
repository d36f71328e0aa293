// Review of the definitions' versions: a change or an action crossing made in one process is in
// force in another within VERSION_FRESH_MS, leases included.
import t, { type Test } from 'tap'
import { VERSION_FRESH_MS } from '../lib/gate/budget-lines.js'
import { buildGateway } from './fixtures/gateway.js'
import { hotLine, secondProcess, type Call } from './fixtures/second-process.js'
import { checkInvariants } from './fixtures/invariants.js'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }
const pastTheFreshnessBound = async () => await new Promise((resolve) => setTimeout(resolve, VERSION_FRESH_MS * 3))
type Gateway = Awaited<ReturnType<typeof buildGateway>>

/** Past the freshness bound, the other process refuses the caller's next call (402); the invariants hold after. */
async function refusedThere (t: Test, gateway: Gateway, call: Call, caller: Record<string, string>): Promise<void> {
  await pastTheFreshnessBound()
  const response = await call(caller)
  t.equal(response.statusCode, 402, `refused: ${response.body}`)
  await gateway.settled()
  await checkInvariants(t, gateway.sql)
}

async function setup (t: Test) {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const other = await secondProcess(t, gateway.url)
  return { gateway, other }
}

t.test('a caller with no line: a new budget in a new tree, made in another process, refuses within the bound', async (t) => {
  const { gateway, other } = await setup(t)
  const caller = { team: 'nobudget' }
  for (let i = 0; i < 5; i++) t.equal((await other.call(caller)).statusCode, 200, 'unbudgeted calls go through')
  await gateway.createBudget({ name: 'new', scopeId: 'nobudget', amount: '0.000001' })
  await refusedThere(t, gateway, other.call, caller)
})

t.test('a caller with a hot line: a new budget in a new tree (its user), made in another process, refuses within the bound', async (t) => {
  const { gateway, other } = await setup(t)
  await gateway.createBudget({ name: 'team', scopeId: 'platform', amount: '100' })
  const caller = { team: 'platform', user: 'u1' }
  await hotLine(t, gateway.sql, other.call, caller)
  await gateway.createBudget({ name: 'user', scopeType: 'user', scopeId: 'u1', amount: '0.000001' })
  await refusedThere(t, gateway, other.call, caller)
})

t.test('a budget deleted in another process: the hot line\'s calls are no longer counted against it', async (t) => {
  const { gateway, other } = await setup(t)
  const team = await gateway.createBudget({ name: 'team', scopeId: 'platform', amount: '100' })
  const caller = { team: 'platform' }
  await hotLine(t, gateway.sql, other.call, caller)
  const deleted = await gateway.app.inject({ method: 'DELETE', url: `${PREFIX}/${team.id}`, headers: AUTH })
  t.ok(deleted.statusCode < 300, deleted.body)
  await pastTheFreshnessBound()
  const since = new Date()
  t.equal((await other.call(caller)).statusCode, 200)
  await gateway.settled()
  const [row] = await gateway.sql`select count(*)::int as n from budget_usage_allocations where budget_id = ${team.id} and occurred_at >= ${since}`
  t.equal(row!.n, 0, 'nothing allocated to the deleted budget')
  await checkInvariants(t, gateway.sql)
})

t.test('a block-all crossing through the usage API of another process ends the hot line\'s lease', async (t) => {
  const { gateway, other } = await setup(t)
  const team = await gateway.createBudget({ name: 'team', scopeId: 'platform', amount: '100', alerts: [{ threshold: 50, actions: ['block-all'] }] })
  const caller = { team: 'platform' }
  await hotLine(t, gateway.sql, other.call, caller)
  const recorded = await gateway.app.inject({ method: 'POST', url: `${PREFIX}/${team.id}/usage`, headers: AUTH, body: { amount: '60', currency: 'USD', source: 'api' } })
  t.equal(recorded.statusCode, 201, recorded.body)
  await refusedThere(t, gateway, other.call, caller)
})

t.test('a line spanning two trees: a crossing in the second tree ends the lease', async (t) => {
  const { gateway, other } = await setup(t)
  await gateway.createBudget({ name: 'team', scopeId: 'platform', amount: '100' })
  const user = await gateway.createBudget({ name: 'user', scopeType: 'user', scopeId: 'u1', amount: '100', alerts: [{ threshold: 50, actions: ['block-all'] }] })
  const caller = { team: 'platform', user: 'u1' }
  await hotLine(t, gateway.sql, other.call, caller)
  await gateway.app.budgetTracker.recordUsage({ budgetId: user.id, amount: '60', currency: 'USD', source: 'test' })
  await refusedThere(t, gateway, other.call, caller)
})

t.test('a line spanning two trees: a change by hand in SQL to the second tree is in force within the bound', async (t) => {
  const { gateway, other } = await setup(t)
  await gateway.createBudget({ name: 'team', scopeId: 'platform', amount: '100' })
  const user = await gateway.createBudget({ name: 'user', scopeType: 'user', scopeId: 'u1', amount: '100' })
  const caller = { team: 'platform', user: 'u1' }
  await hotLine(t, gateway.sql, other.call, caller)
  await gateway.sql`update budget_definitions set amount = 0.000001 where id = ${user.id}`
  await pastTheFreshnessBound()
  const response = await other.call(caller)
  t.equal(response.statusCode, 402, response.body)
})
