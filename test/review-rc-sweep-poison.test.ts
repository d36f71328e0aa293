// Review rc: one expired hold whose estimate no longer fits under 10^18 (its soft budget's spend grew through
// the usage API after the hold was taken) fails budget_sweep_expired for every expired hold it selects: the
// others, on other budgets, are never swept and pin their budgets' reserved amounts.
import t from 'tap'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'

t.test('an expired hold that overflows at its estimate blocks the sweep of every other expired hold', async (t) => {
  const gw = await buildGateway(t, { captureLogs: true, gate: { sweepIntervalMs: 0 } })
  const admin = { authorization: `Bearer ${ADMIN_TOKEN}` }
  const near = await gw.createBudget({ name: 'near', scopeId: 'team-near', amount: '999999999999999999', enforcement: 'soft' })
  const other = await gw.createBudget({ name: 'other', scopeId: 'team-other', amount: '1' })
  const integration = gw.app.budgetIntegration
  // a hold of 0.5 on the near budget (fits: 10^18 - 2 + 0.5), then three of 0.3 on another team's hard budget of 1
  let r = await gw.app.inject({ method: 'POST', url: `${PREFIX}/${near.id}/usage`, headers: admin, body: { amount: '999999999999999998', currency: 'USD' } })
  t.equal(r.statusCode, 201, r.body)
  const held = await integration.reserveCall({ team: 'team-near' }, '0.5')
  t.ok(held.check.canProceed, 'the near call is held')
  for (let i = 0; i < 3; i++) {
    await new Promise((resolve) => setTimeout(resolve, 150)) // cold line: a hold each, no lease
    const reserved = await integration.reserveCall({ team: 'team-other' }, '0.3')
    t.ok(reserved.check.canProceed, `other call ${i} held`)
  }
  // more usage on the near budget, through the admin API: accepted (it fits under 10^18 by itself)
  r = await gw.app.inject({ method: 'POST', url: `${PREFIX}/${near.id}/usage`, headers: admin, body: { amount: '1.9', currency: 'USD' } })
  t.equal(r.statusCode, 201, r.body)
  // every process that held these died: their holds expire
  await gw.sql`update budget_reservations set expires_at = now() - interval '1 second'`
  let sweepError: unknown = null
  for (let i = 0; i < 3; i++) await integration.sweepExpiredReservations().catch((error: unknown) => { sweepError = error })
  t.comment(`sweep: ${String((sweepError as { code?: string } | null)?.code)} ${String((sweepError as Error | null)?.message)}`)
  const left = await gw.sql`select b.name, r.amount::text from budget_reservations r join budget_definitions b on b.id = r.budget_id order by 1`
  t.comment(JSON.stringify(left))
  t.equal(left.filter((row) => row.name === 'other').length, 0, 'the other team\'s expired holds are swept')
  const refused = await gw.app.budgetIntegration.reserveCall({ team: 'team-other' }, '0.2')
  t.ok(refused.check.canProceed, 'the other team can call again (its expired holds no longer count)')
  t.ok(other.id)
})
