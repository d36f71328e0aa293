// How large a slice of a shared limit a process takes (lib/gate/hot-slices.ts): at least 64 calls' worth,
// more when calls come fast (what 200 ms of them would use), never past 4096; topped up at a quarter.
// A lease sized for 64 calls ran dry under 16 connections while its top-up waited on a busy window row,
// and a quarter of the calls then held one by one, each a statement of its own.
import t from 'tap'
import fc from 'fast-check'
import { LOW_WATER_CALLS, MOST_SLICE_CALLS, SLICE_CALLS, SLICE_MS, lowWaterCalls, sliceCalls } from '../lib/gate/hot-slices.js'
import { buildGateway } from './fixtures/gateway.js'

t.test('a slice is sized from the pace of its calls, within its bounds', async (t) => {
  t.equal(sliceCalls({ callsSinceTake: 0, tookAt: 0 }, 1000), SLICE_CALLS, 'no calls seen: the least slice')
  t.equal(sliceCalls({ callsSinceTake: 10, tookAt: 0 }, 1000), SLICE_CALLS, '10 calls a second: the least slice')
  t.equal(sliceCalls({ callsSinceTake: 300, tookAt: 0 }, 100), 300 * SLICE_MS / 100, '3 calls a millisecond: 200 ms of them')
  t.equal(sliceCalls({ callsSinceTake: 50, tookAt: 1000 }, 1000), Math.ceil(50 * SLICE_MS / 20), 'a burst at one instant counts as 20 ms of calls')
  t.equal(sliceCalls({ callsSinceTake: 1e6, tookAt: 0 }, 1), MOST_SLICE_CALLS, 'never past the most')
  fc.assert(fc.property(fc.nat(1e7), fc.nat(1e6), fc.nat(1e6), (calls, tookAt, elapsed) => {
    const slice = sliceCalls({ callsSinceTake: calls, tookAt }, tookAt + elapsed)
    const low = lowWaterCalls(slice)
    return Number.isInteger(slice) && slice >= SLICE_CALLS && slice <= MOST_SLICE_CALLS && low >= LOW_WATER_CALLS && low < slice &&
      sliceCalls({ callsSinceTake: calls + 1, tookAt }, tookAt + elapsed) >= slice
  }))
})

t.test('a lease whose calls come fast asks for more than 64 calls at its next take, and the escrow rule holds', async (t) => {
  const gateway = await buildGateway(t)
  const { app, sql } = gateway
  await gateway.createBudget({ name: 'team', amount: '1000' })
  const caller = { team: 'team-a' }
  const estimate = '0.001'
  const admitted: string[] = []
  // 200 calls admitted in a few milliseconds, none settled yet: the lease's takes hold all of them and what
  // the next calls may take. Sized for 64 calls, a take would add room for 64 at most.
  for (let call = 0; call < 200; call++) {
    const reserved = await app.budgetIntegration.reserveCall(caller, estimate)
    t.ok(reserved.check.canProceed)
    admitted.push(reserved.reservationId!)
    if (call === 199) await new Promise((resolve) => setTimeout(resolve, 100)) // the last top-up lands
  }
  const [lease] = await sql<Array<{ amount: string }>>`select sum(amount)::text as amount from budget_reservations where lease`
  const heldCalls = Number(lease!.amount) / Number(estimate)
  t.ok(heldCalls > 200 + SLICE_CALLS, `the lease holds ${heldCalls} calls' worth for 200 calls admitted: a take asked for more than ${SLICE_CALLS}`)
  for (const id of admitted) await app.budgetIntegration.settleCall(id, estimate)
  await gateway.settled()
  const [window] = await sql<Array<{ spent: string }>>`select current_amount::text as spent from budget_status_cache`
  t.equal(Number(window!.spent), 0.2, 'the 200 calls are charged exactly')
})
