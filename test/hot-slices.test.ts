// How large a slice of a shared limit a process takes (lib/gate/hot-slices.ts): at least 64 calls' worth,
// more when calls come fast (what 200 ms of them would use, at most twice the last take), never past 4096;
// topped up at a quarter, and trimmed to its pace's need when a trickle keeps a burst's slice alive.
// A lease sized for 64 calls ran dry under 16 connections while its top-up waited on a busy window row,
// and a quarter of the calls then held one by one, each a statement of its own.
import t from 'tap'
import fc from 'fast-check'
import { LOW_WATER_CALLS, MOST_SLICE_CALLS, SLICE_CALLS, SLICE_MS, TRIM_AFTER_MS, lowWaterCalls, sliceCalls, trimmedCalls } from '../lib/gate/hot-slices.js'
import { buildGateway } from './fixtures/gateway.js'

t.test('a slice is sized from the pace of its calls, within its bounds, and trimmed to it when a trickle follows a burst', async (t) => {
  const pace = (callsSinceTake: number, tookAt: number, lastAsk = MOST_SLICE_CALLS) => ({ callsSinceTake, tookAt, lastAsk })
  t.equal(sliceCalls(pace(0, 0), 1000), SLICE_CALLS, 'no calls seen: the least slice')
  t.equal(sliceCalls(pace(10, 0), 1000), SLICE_CALLS, '10 calls a second: the least slice')
  t.equal(sliceCalls(pace(300, 0), 100), 300 * SLICE_MS / 100, '3 calls a millisecond: 200 ms of them')
  t.equal(sliceCalls(pace(50, 1000), 1000), Math.ceil(50 * SLICE_MS / 20), 'calls at one instant count as 20 ms of them')
  t.equal(sliceCalls(pace(1e6, 0), 1), MOST_SLICE_CALLS, 'never past the most')
  t.equal(sliceCalls(pace(1000, 0, 0), 1), SLICE_CALLS, 'a first take asks for the least slice, whatever came at once')
  t.equal(sliceCalls(pace(1000, 0, 64), 1), 128, 'and each take at most twice the last: a burst is not a pace until it lasts')
  t.equal(trimmedCalls(pace(1000, 0), 5000, TRIM_AFTER_MS - 1), null, 'a slice is not trimmed within a second of its take')
  t.equal(trimmedCalls(pace(1003, 0), 4000, 3000), Math.ceil(1003 * SLICE_MS / 3000), 'a burst then a trickle: 3 s after the take, 200 ms of its pace')
  t.equal(trimmedCalls(pace(1003, 0), 130, 3000), null, 'a slice within twice its need is kept whole')
  fc.assert(fc.property(fc.nat(1e7), fc.nat(1e6), fc.nat(1e6), fc.nat(MOST_SLICE_CALLS), fc.nat(1e5), (calls, tookAt, elapsed, lastAsk, held) => {
    const slice = sliceCalls(pace(calls, tookAt, lastAsk), tookAt + elapsed)
    const low = lowWaterCalls(slice)
    const trimmed = trimmedCalls(pace(calls, tookAt, lastAsk), held, tookAt + elapsed)
    return Number.isInteger(slice) && slice >= SLICE_CALLS && slice <= MOST_SLICE_CALLS && slice <= Math.max(SLICE_CALLS, 2 * lastAsk) &&
      low >= LOW_WATER_CALLS && low < slice && sliceCalls(pace(calls + 1, tookAt, lastAsk), tookAt + elapsed) >= slice &&
      (trimmed === null || (trimmed >= SLICE_CALLS && trimmed * 2 < held))
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
