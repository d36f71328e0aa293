// nearLimit 'clamp' (lib/http/gate/clamp.ts) without a database: when a refusal may be answered with fewer
// output tokens, how much room the call has across its budgets and currencies, and the search for the largest
// output limit that fits. test/near-limit.test.ts drives the same rules through a gateway.
import type { FastifyRequest } from 'fastify'
import t from 'tap'
import type { BudgetCheck, BudgetConstraintCheck } from '../lib/gate/decision.js'
import { costAtOutputLimit, largestAffordable, mayClamp, mayClampToCallerCap, roomFor } from '../lib/http/gate/clamp.js'
import { fromUnits } from '../lib/kernel/money.js'
import type { CostEstimate } from '../lib/pricing/estimate.js'

/** A decision as clamp reads it: whether it refused and why, and each budget's room (the other fields are not clamp's). */
type Room = Pick<BudgetCheck, 'fits' | 'enforcement' | 'nearLimit' | 'remaining' | 'estimatedCost' | 'maxCallCost' | 'overCap'>
const budget = (room: Partial<Room>): Room => ({ fits: true, enforcement: 'hard', nearLimit: null, remaining: '10', estimatedCost: '1', maxCallCost: null, overCap: false, ...room })
const check = (budgets: Room[], refusal: Partial<BudgetConstraintCheck> = { canProceed: false, code: 'budget_exceeded' }): BudgetConstraintCheck =>
  ({ canProceed: true, code: null, ...refusal, budgets }) as unknown as BudgetConstraintCheck

t.test('a refusal for want of room is clamped when every full hard budget clamps', async (t) => {
  const full = budget({ fits: false })
  t.equal(mayClamp(check([full]), 'clamp'), true, 'the gate\'s default')
  t.equal(mayClamp(check([full]), 'refuse'), false)
  t.equal(mayClamp(check([budget({ fits: false, nearLimit: 'clamp' })]), 'refuse'), true, 'the budget\'s own policy wins')
  t.equal(mayClamp(check([budget({ fits: false, nearLimit: 'refuse' })]), 'clamp'), false, 'either way')
  t.equal(mayClamp(check([budget({ fits: false, nearLimit: 'clamp' }), budget({ fits: false, nearLimit: 'refuse' })]), 'clamp'), false, 'one full budget that refuses is enough')
  t.equal(mayClamp(check([budget({ fits: false, nearLimit: 'clamp' }), budget({ nearLimit: 'refuse' })]), 'refuse'), true, 'a budget with room does not vote')
  t.equal(mayClamp(check([budget({ fits: false, nearLimit: 'clamp' }), budget({ fits: false, enforcement: 'soft', nearLimit: 'refuse' })]), 'refuse'), true, 'nor does a soft one')
  t.equal(mayClamp(check([budget({ fits: false, enforcement: 'soft' })]), 'clamp'), false, 'no full hard budget: nothing to clamp for')
  t.equal(mayClamp(check([full], { canProceed: true, code: null }), 'clamp'), false, 'a call that may proceed')
  for (const code of ['budget_blocked', 'approval_required', 'model_restricted', 'exchange_rate_missing', 'estimate_out_of_range'] as const) {
    t.equal(mayClamp(check([full], { canProceed: false, code }), 'clamp'), false, `${code}: fewer tokens would not help`)
  }
})

t.test('the room: each hard budget\'s remaining in the call\'s currency, the least of them, rounded down', async (t) => {
  t.equal(roomFor(check([budget({ remaining: '10' }), budget({ remaining: '4' }), budget({ remaining: '7' })]), '1'), 40_000_000_000n, 'the least, in units')
  t.equal(roomFor(check([budget({ remaining: '10' }), budget({ remaining: '1', enforcement: 'soft' })]), '1'), 100_000_000_000n, 'a soft budget does not bound it')
  t.equal(roomFor(check([budget({ remaining: '1', enforcement: 'soft', estimatedCost: null })]), '1'), null, 'nor does a soft one without a rate; no hard budget: no bound')
  t.equal(roomFor(check([]), '1'), null)
  // The estimate is 2 in the call's currency and 4 in the budget's: 10 left there is 5 here.
  t.equal(roomFor(check([budget({ remaining: '10', estimatedCost: '4' })]), '2'), 50_000_000_000n, 'scaled back by the estimate\'s own conversion')
  t.equal(roomFor(check([budget({ remaining: '1', estimatedCost: '3' })]), '1'), 3_333_333_333n, 'rounded down, never up')
  t.equal(roomFor(check([budget({ remaining: '10', estimatedCost: '4' }), budget({ remaining: '6', estimatedCost: '1' })]), '1'), 25_000_000_000n, 'the least after conversion: 2.5, not 6')
  t.equal(roomFor(check([budget({ remaining: '3', estimatedCost: '0' })]), '5'), 30_000_000_000n, 'an estimate of 0 there: the remaining as it is')
  t.equal(roomFor(check([budget({ remaining: '3' }), budget({ estimatedCost: null })]), '1'), null, 'a hard budget whose conversion is unknown: no room can be said')
  t.equal(roomFor(check([budget({ remaining: '0' })]), '1'), 0n)
  t.equal(roomFor(check([budget({ remaining: '2' }), budget({ remaining: '2' })]), '1'), 20_000_000_000n, 'equal rooms')
})

t.test('caps on one call: a budget\'s cap clamps by its own policy, bounds the room in its currency; the caller\'s cap clamps by the gate\'s or its hard budgets\'', async (t) => {
  const capped = (more: Partial<Room> = {}) => budget({ fits: false, overCap: true, maxCallCost: '0.5', ...more })
  const overCap = { canProceed: false, code: 'call_cost_cap_exceeded' as const }
  t.equal(mayClamp(check([capped()], overCap), 'clamp'), true, 'the gate\'s default')
  t.equal(mayClamp(check([capped()], overCap), 'refuse'), false)
  t.equal(mayClamp(check([capped({ nearLimit: 'clamp' })], overCap), 'refuse'), true, 'the budget\'s own policy')
  t.equal(mayClamp(check([capped({ enforcement: 'soft', nearLimit: 'refuse' })], overCap), 'clamp'), false, 'a soft budget\'s cap votes too')
  t.equal(mayClamp(check([capped({ nearLimit: 'clamp' }), budget({ fits: false, nearLimit: 'refuse' })], overCap), 'clamp'), false, 'and so does a full hard budget beside it')
  t.equal(roomFor(check([budget({ remaining: '10', maxCallCost: '0.5' })]), '1'), 5_000_000_000n, 'the cap bounds the room')
  t.equal(roomFor(check([budget({ remaining: '0.2', maxCallCost: '0.5' })]), '1'), 2_000_000_000n, 'the room bounds it when less')
  t.equal(roomFor(check([budget({ enforcement: 'soft', remaining: '0', maxCallCost: '0.5' })]), '1'), 5_000_000_000n, 'a soft budget\'s cap, not its room')
  t.equal(roomFor(check([budget({ maxCallCost: '1', estimatedCost: '4' })]), '2'), 5_000_000_000n, 'in the budget\'s currency, scaled back: 1 there is 0.5 here')
  t.equal(mayClampToCallerCap(check([budget({})], { canProceed: true, code: null }), 'clamp'), true, 'the gate\'s clamp')
  t.equal(mayClampToCallerCap(check([budget({})], { canProceed: true, code: null }), 'refuse'), false, 'a hard budget that follows the gate\'s refuse')
  t.equal(mayClampToCallerCap(check([budget({ nearLimit: 'clamp' }), budget({ enforcement: 'soft' })], { canProceed: true, code: null }), 'refuse'), true, 'every hard budget clamps')
  t.equal(mayClampToCallerCap(check([budget({ enforcement: 'soft', nearLimit: 'clamp' })], { canProceed: true, code: null }), 'refuse'), false, 'no hard budget: the gate\'s refuse')
  t.equal(mayClampToCallerCap(null, 'refuse'), false, 'budgets unread: the gate\'s default')
})

const estimateOf = (amount: string): CostEstimate => ({ model: 'm', amount })

t.test('pricing at another output limit: the estimate\'s own arithmetic, else the estimator on a changed body', async (t) => {
  const own = (tokens: number): CostEstimate => estimateOf(String(tokens))
  const request = { body: { model: 'm', max_tokens: 100, messages: [] }, headers: { 'x-a': '1' } } as unknown as FastifyRequest
  t.equal(costAtOutputLimit(request, { ...estimateOf('1'), atOutputLimit: own }, async () => { throw new Error('not asked') }), own)
  const seen: unknown[] = []
  const estimateAt = async (asked: FastifyRequest): Promise<CostEstimate> => {
    seen.push({ body: asked.body, headers: asked.headers })
    return estimateOf('2')
  }
  const at = costAtOutputLimit(request, estimateOf('1'), estimateAt)
  t.same(await at(7), estimateOf('2'))
  t.same(seen, [{ body: { model: 'm', max_tokens: 7, messages: [] }, headers: { 'x-a': '1' } }], 'the same request, its output limit changed (chat completions\' field by default)')
  t.same(request.body, { model: 'm', max_tokens: 100, messages: [] }, 'the request itself is left as it was')
  const messages = costAtOutputLimit(request, estimateOf('1'), estimateAt, (body, tokens) => ({ ...body, max_output_tokens: tokens }))
  await messages(9)
  t.same(seen[1], { body: { model: 'm', max_tokens: 100, messages: [], max_output_tokens: 9 }, headers: { 'x-a': '1' } }, 'another API\'s field')
})

t.test('the largest output limit that fits: a binary search over [floor, below)', async (t) => {
  // One unit per token, plus 10 for the prompt.
  const asked: number[] = []
  const units = (tokens: number): bigint => BigInt(10 + tokens)
  const costAt = (tokens: number): CostEstimate => { asked.push(tokens); return estimateOf(fromUnits(units(tokens))) }
  t.equal(costAt(5).amount, '0.0000000015', 'the cost model: 10 + tokens units')
  asked.length = 0
  t.same(await largestAffordable(costAt, 1, 1000, units(400)), { tokens: 400, estimate: estimateOf('0.000000041') }, 'exactly the room')
  t.ok(asked.length <= 12, `a binary search, not a scan: ${asked.length} estimates`)
  t.equal((await largestAffordable(costAt, 1, 1000, units(999)))?.tokens, 999, 'everything below `below` fits')
  t.equal((await largestAffordable(costAt, 1, 1000, units(5000)))?.tokens, 999, 'never `below` itself')
  t.equal((await largestAffordable(costAt, 16, 1000, units(16)))?.tokens, 16, 'the floor, exactly')
  t.equal(await largestAffordable(costAt, 16, 1000, units(15)), null, 'not even the floor')
  t.same(await largestAffordable(costAt, 16, 17, units(100)), { tokens: 16, estimate: estimateOf('0.0000000026') }, 'only the floor to try')
  t.equal(await largestAffordable(costAt, 16, 16, units(100)), null, 'nothing below `below`')
  t.equal(await largestAffordable(costAt, 16, 10, units(100)), null)
  for (let room = 11; room <= 40; room++) {
    t.equal((await largestAffordable(costAt, 1, 31, BigInt(room)))?.tokens, Math.min(room - 10, 30), `room ${room}`)
  }
  const atLeast16 = (tokens: number): CostEstimate => {
    if (tokens < 16) throw new Error(`asked about ${tokens} tokens, below the floor`)
    return costAt(tokens)
  }
  for (const below of [17, 18, 40]) t.equal((await largestAffordable(atLeast16, 16, below, units(100)))?.tokens, below - 1, `never a limit below the floor (up to ${below})`)
  const awaited = async (tokens: number): Promise<CostEstimate> => costAt(tokens)
  t.equal((await largestAffordable(awaited, 1, 100, units(50)))?.tokens, 50, 'an estimator that answers later')
})
