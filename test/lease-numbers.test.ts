// A call admitted from a lease reports the numbers of the windows now, as far as this process knows them:
// not those of the take that gave the lease its slice. Before, a leased admission named the binding budget
// (x-budget-id) and its remaining (x-budget-remaining) as they were at the take, after calls had settled
// since, and could name another budget than getCallerSummary and checkCaller at the same moment.
import t from 'tap'
import { buildGateway } from './fixtures/gateway.js'
import { stillClock } from './fixtures/still-clock.js'

t.test('a leased admission names the binding budget and its remaining as a read of the windows now does, after calls settled', async (t) => {
  const gateway = await buildGateway(t)
  const { app, sql } = gateway
  const integration = app.budgetIntegration
  const team = await gateway.createBudget({ name: 'team', amount: '10' })
  const project = await gateway.createBudget({ name: 'project', scopeType: 'project', scopeId: 'apollo', amount: '10' })
  await app.budgetTracker.recordUsage({ budgetId: project.id, amount: '5', currency: 'USD', source: 'test' })
  // The project has less room (5 against 10): it binds, until the team's own calls (a caller without the project) spend 6 of the team's.
  const caller = { team: 'team-a', project: 'apollo' }
  const teamOnly = { team: 'team-a' }
  const estimate = '0.01'
  const leaseRows = async () => (await sql`select count(distinct id)::int as count from budget_reservations where lease`)[0]!.count as number
  const holdRows = async () => (await sql`select count(*)::int as count from budget_reservations where not lease`)[0]!.count as number

  // Two calls close together make the line hot: the second is admitted from a lease.
  // The clock stands still from the first call's admission to the second's: its hold and settlement may take
  // longer than 100 ms on a loaded machine.
  const still = stillClock(t)
  await still(async () => {
    const first = await integration.reserveCall(caller, estimate)
    t.equal(await holdRows(), 2, 'the first call holds on both budgets')
    t.match(await integration.settleCall(first.reservationId!, '0.004'), { outcome: 'recorded', usageId: String })
    const second = await integration.reserveCall(caller, estimate)
    t.ok(second.check.canProceed)
    t.equal(await leaseRows(), 1, 'the second call took a lease')
    t.equal(await holdRows(), 0, 'and holds nothing of its own')
    t.match(await integration.settleCall(second.reservationId!, '0.007'), { outcome: 'recorded' })
  })

  // The lease's own call settled: its admissions report it.
  await still(async () => {
    const expectOwn = await integration.checkCaller(caller, estimate)
    const third = await integration.reserveCall(caller, estimate)
    t.equal(await holdRows(), 0, 'the third call is leased too')
    t.equal(third.check.bindingBudgetId, project.id, 'the project binds')
    t.equal(third.check.bindingBudgetId, expectOwn.bindingBudgetId)
    t.equal(third.check.remaining, expectOwn.remaining, 'remaining before the estimate: what checkCaller read just before (its header is that less the estimate)')
    t.equal(third.check.currentAmount, expectOwn.currentAmount, 'the settled spend, the lease\'s call included')
    t.equal(third.check.reservedAmount, expectOwn.reservedAmount, 'the whole slice reserved, as PostgreSQL has it')
    t.match(await integration.settleCall(third.reservationId!, '0.009'), { outcome: 'recorded' })
  })

  // The team's own calls (another line, held call by call: too large to lease) spend 6 of it: now the team binds.
  const expected = await still(async () => {
    for (let i = 0; i < 2; i++) {
      const call = await integration.reserveCall(teamOnly, '3')
      t.ok(call.check.canProceed)
      t.match(await integration.settleCall(call.reservationId!, '3'), { outcome: 'recorded' })
    }
    const expected = await integration.checkCaller(caller, estimate)
    const summary = await integration.getCallerSummary(caller)
    t.equal(expected.bindingBudgetId, team.id, 'the team binds now')
    t.equal(summary.bindingBudgetId, team.id, 'the summary says so too')
    return expected
  })
  const leased = await still(async () => await integration.reserveCall(caller, estimate))
  t.equal(await leaseRows(), 1, 'still the one lease')
  t.equal(await holdRows(), 0, 'the call is leased')
  t.equal(leased.check.bindingBudgetId, team.id, 'the leased admission names the team, as the summary does')
  t.equal(leased.check.remaining, expected.remaining, 'and its remaining as checkCaller read it just before')
  t.equal(leased.check.currentAmount, expected.currentAmount)
  t.equal(leased.check.reservedAmount, expected.reservedAmount)
  t.match(await integration.settleCall(leased.reservationId!, '0.01'), { outcome: 'recorded' })
})
