import t from 'tap'
import { decide } from '../lib/gate/decision.js'
import type { BudgetNumbers, BudgetTerms } from '../lib/gate/budget-terms.js'
import { budgetHealth, computeStatus, percentReached, remainingUnits } from '../lib/usage/status-rules.js'
import type { BudgetAlert } from '../lib/kernel/schemas.js'

const alert = (threshold: number, ...actions: BudgetAlert['actions']): BudgetAlert => ({ threshold, actions, notificationChannels: [] })
const budget = { id: 'b1', name: 'team', amount: '1000', currency: 'USD', startDate: '2024-01-01T00:00:00.000Z', timezone: 'UTC', enforcement: 'hard' as const, alerts: [alert(50, 'notify'), alert(80, 'restrict-models'), alert(95, 'require-approval')] }
const periodStart = new Date('2024-04-01T00:00:00Z')
const periodEnd = new Date('2024-05-01T00:00:00Z') // 30 days

/** A budget as decide() reads it: its terms (as a line caches them) and the numbers SQL measured for the call's estimate. */
function measured (id: string, { amount = '1000', alerts = [] as BudgetAlert[], current, reserved = '0', fits = true, enforcement = 'hard' as 'hard' | 'soft', estimate }:
  { amount?: string, alerts?: BudgetAlert[], current: string, reserved?: string, fits?: boolean, enforcement?: 'hard' | 'soft', estimate: string }): { terms: BudgetTerms, numbers: BudgetNumbers } {
  return {
    terms: { budgetId: id, rootId: id, name: id, alerts, currency: 'USD', nearLimit: null, maxCallCost: null, scopeMatched: true, scopeRank: 0, periodStart, periodEnd, requestsPerMinute: null, tokensPerMinute: null, enforcement },
    numbers: { budgetId: id, amount, enforcement, currentAmount: current, reservedAmount: reserved, approvedThrough: null, projectedActions: [], fits, estimate, outOfRange: false, overCap: false }
  }
}
const decideOn = (budgets: Array<{ terms: BudgetTerms, numbers: BudgetNumbers }>, estimate: string) =>
  decide(budgets.map((b) => b.terms), budgets.map((b) => b.numbers), estimate)

t.test('status fields against hand-computed values', async (t) => {
  // 10 days into a 30-day period, 250 spent, 40 reserved.
  const status = computeStatus({
    budget, periodStart, periodEnd, state: 'active', currentAmount: '250', reservedAmount: '40',
    lastUpdated: new Date('2024-04-11T00:00:00Z'), now: new Date('2024-04-11T00:00:00Z'), crossings: [], projectedTotal: '750.0000000000', burnRate: '25.0000000000'
  })
  t.same(status, {
    budgetId: 'b1',
    currentAmount: '250',
    limit: '1000',
    currency: 'USD',
    percentUsed: 25,
    remaining: '710', // 1000 - 250 - 40
    daysRemaining: 20,
    burnRate: '25', // SQL's (budget_burn_rate, test/forecast.test.ts), in canonical form
    projectedTotal: '750', // SQL's forecast (test/forecast.test.ts), taken as it is, in canonical form
    status: 'normal',
    activeAlerts: [],
    lastUpdated: '2024-04-11T00:00:00.000Z',
    reservedAmount: '40',
    periodStart: '2024-04-01T00:00:00.000Z',
    periodEnd: '2024-05-01T00:00:00.000Z',
    timezone: 'UTC',
    state: 'active',
    enforcement: 'hard'
  })
})

t.test('exact decimals: thirds, cents, tiny amounts', async (t) => {
  const at = (days: number) => new Date(periodStart.getTime() + days * 86_400_000)
  const third = computeStatus({ budget, periodStart, periodEnd, state: 'active', currentAmount: '100', reservedAmount: '0', lastUpdated: at(3), now: at(3), crossings: [], projectedTotal: '1000', burnRate: '33.3333333333' })
  t.equal(third.percentUsed, 10)
  const tiny = computeStatus({ budget, periodStart, periodEnd, state: 'active', currentAmount: '0.0001', reservedAmount: '0', lastUpdated: at(1), now: at(1), crossings: [], projectedTotal: '0.003', burnRate: '0.0001' })
  t.equal(tiny.percentUsed, 0, 'rounded down')
  const over = computeStatus({ budget, periodStart, periodEnd, state: 'active', currentAmount: '1000.01', reservedAmount: '5', lastUpdated: at(29), now: at(29), crossings: [], projectedTotal: '1034.4931034483', burnRate: '34.4831034483' })
  t.equal(over.remaining, '0', 'never below zero')
  t.equal(over.percentUsed, 100)
  t.equal(over.status, 'exceeded')
})

t.test('scheduled and ended periods', async (t) => {
  const before = computeStatus({ budget, periodStart, periodEnd, state: 'scheduled', currentAmount: '0', reservedAmount: '0', lastUpdated: periodStart, now: new Date('2024-03-01T00:00:00Z'), crossings: [], projectedTotal: '0', burnRate: '0' })
  t.match(before, { burnRate: '0', projectedTotal: '0', daysRemaining: 0, state: 'scheduled' })
  const after = computeStatus({ budget, periodStart, periodEnd, state: 'ended', currentAmount: '300', reservedAmount: '0', lastUpdated: periodEnd, now: new Date('2024-06-01T00:00:00Z'), crossings: [], projectedTotal: '300', burnRate: '10' })
  t.match(after, { burnRate: '10', projectedTotal: '300', daysRemaining: 0, state: 'ended' }, 'nothing left to project')
})

t.test('the status rule, from the budget\'s alert thresholds or the defaults', async (t) => {
  const ladder = [alert(50, 'notify'), alert(80, 'restrict-models'), alert(95, 'require-approval')]
  t.equal(budgetHealth('499.99', '1000', ladder), 'normal')
  t.equal(budgetHealth('500', '1000', ladder), 'warning', 'the lowest threshold')
  t.equal(budgetHealth('949.9999999999', '1000', ladder), 'warning')
  t.equal(budgetHealth('950', '1000', ladder), 'critical', 'the highest threshold below 100')
  t.equal(budgetHealth('1000', '1000', ladder), 'exceeded', 'at 100%')
  t.equal(budgetHealth('749', '1000', []), 'normal')
  t.equal(budgetHealth('750', '1000', []), 'warning', 'default 75')
  t.equal(budgetHealth('900', '1000', []), 'critical', 'default 90')
  t.equal(budgetHealth('600', '1000', [alert(60, 'notify')]), 'warning', 'one threshold: warning there')
  t.equal(budgetHealth('900', '1000', [alert(60, 'notify')]), 'critical', 'and critical at the default 90')
  t.equal(budgetHealth('940', '1000', [alert(95, 'notify')]), 'normal', 'a single high threshold is both')
  t.equal(budgetHealth('950', '1000', [alert(95, 'notify')]), 'critical')
  t.equal(budgetHealth('999', '1000', [alert(100, 'block-all')]), 'critical', 'a 100% alert does not move warning or critical')
})

t.test('blocked: a block-all alert in force, as the gate decides it', async (t) => {
  const ladder = [alert(50, 'notify'), alert(90, 'block-all')]
  // The gate finds the crossings on the numbers it holds under the lock, and its status says what it decided.
  const decided = (spent: string, alerts = ladder) => decideOn([measured('b1', { alerts, current: spent, estimate: '1' })], '1').budgets[0]!.status
  t.equal(decided('899.9999999999'), 'warning', 'under the block-all threshold')
  t.equal(decided('900'), 'blocked', 'at it: blocked, not critical')
  t.equal(decided('1000'), 'blocked', 'and past 100%: blocked, not exceeded (every call is refused)')
  t.equal(decided('1000', [alert(100, 'block-all')]), 'blocked', 'a 100% block-all reached')
  t.equal(budgetHealth('900', '1000', ladder), 'critical', 'the status rule measures no crossing itself: the actions in force say what blocks')
  t.equal(budgetHealth('900', '1000', ladder, ['notify', 'block-all']), 'blocked')
  const projected: BudgetAlert[] = [{ ...alert(95, 'block-all'), basis: 'projected' }]
  t.equal(budgetHealth('200', '1000', projected), 'normal', 'a projected alert is not measured here: its crossing is')
  t.equal(budgetHealth('200', '1000', projected, ['block-all']), 'blocked', 'an active projected block-all crossing')
  t.equal(budgetHealth('200', '1000', projected, ['notify']), 'normal')
  const crossing = { id: '00000000-0000-4000-8000-000000000001', threshold: 95, basis: 'projected' as const, actions: ['block-all' as const], crossedAt: '2024-04-01T00:00:00.000Z', acknowledged: false }
  const now = new Date('2024-04-10T00:00:00Z')
  const status = computeStatus({ budget: { ...budget, alerts: projected }, periodStart, periodEnd, state: 'active', currentAmount: '200', reservedAmount: '0', lastUpdated: now, now, crossings: [crossing], projectedTotal: '2000', burnRate: '22.2222222222' })
  t.equal(status.status, 'blocked', 'the status reads projected block-all from its active crossings')
  const current = { ...crossing, threshold: 90, basis: 'current' as const }
  const spent = computeStatus({ budget: { ...budget, alerts: ladder }, periodStart, periodEnd, state: 'active', currentAmount: '900', reservedAmount: '0', lastUpdated: now, now, crossings: [current], projectedTotal: '2000', burnRate: '100' })
  t.equal(spent.status, 'blocked', 'and a block-all crossing on the spend from the same place: SQL recorded it under the lock')
})

t.test('percentReached compares exactly', async (t) => {
  t.ok(percentReached('333.33', '1000', 33.333))
  t.notOk(percentReached('333.32', '1000', 33.333))
  t.ok(percentReached('0.0000000001', '0.0000000001', 100))
})

t.test('the decision: strictest refusal wins, and the binding budget is named', async (t) => {
  // Whether an estimate fits is SQL's to say (budget_fits); the decision reads it.
  const team = (estimate: string, more: Partial<Parameters<typeof measured>[1]> = {}) => measured('team', { current: '900', reserved: '50', estimate, ...more })
  const org = (estimate: string, more: Partial<Parameters<typeof measured>[1]> = {}) => measured('org', { amount: '10000', current: '1000', estimate, ...more })
  const fits = decideOn([team('50'), org('50')], '50')
  t.match(fits, { canProceed: true, code: null, bindingBudgetId: 'team', remaining: '50', limit: '1000', currentAmount: '900', reservedAmount: '50' })
  const tooMuch = decideOn([team('50.0000000001', { fits: false }), org('50.0000000001')], '50.0000000001')
  t.match(tooMuch, { canProceed: false, code: 'budget_exceeded', bindingBudgetId: 'team', reason: /team.*50 left/ })
  t.same(tooMuch.budgets.map((b) => b.fits), [false, true])
  t.match(decideOn([team('60', { fits: false, enforcement: 'soft' }), org('60')], '60'), { canProceed: true }, 'a soft budget that does not fit only alerts')

  const orgBlocked = org('500', { fits: false, alerts: [alert(10, 'block-all')] })
  t.match(decideOn([team('500'), orgBlocked], '500'), { canProceed: false, code: 'budget_blocked', bindingBudgetId: 'org' }, 'block-all outranks an exceeded limit')
  t.match(decideOn([team('1', { alerts: [alert(80, 'require-approval')] }), org('1')], '1'), { canProceed: false, code: 'approval_required', bindingBudgetId: 'team' })
  const advice = decideOn([team('1', { alerts: [alert(50, 'auto-downgrade', 'notify')] })], '1')
  t.match(advice, { canProceed: true, activeActions: ['auto-downgrade', 'notify'] })
  t.match(advice.suggestedActions, [/cheaper model/])
  t.match(decide([], [], '1'), { canProceed: true, bindingBudgetId: null, reason: 'No budget applies' })
})

t.test('the decision reads each budget\'s terms beside its own numbers: by budget id, in the line\'s order', async (t) => {
  const team = measured('team', { current: '900', reserved: '50', estimate: '60', fits: false })
  const org = measured('org', { amount: '10000', current: '1000', estimate: '60' })
  // The numbers in another order than the line: each budget still reads its own.
  const check = decide([team.terms, org.terms], [org.numbers, team.numbers], '60')
  t.same(check.budgets.map((b) => [b.budgetId, b.limit, b.currentAmount, b.fits]), [['team', '1000', '900', false], ['org', '10000', '1000', true]])
  t.match(check, { canProceed: false, code: 'budget_exceeded', bindingBudgetId: 'team' })
  // A budget of the line whose window had no row under the hold has no numbers: it is left out, not decided on made-up ones.
  const without = decide([team.terms, org.terms], [org.numbers], '60')
  t.same(without.budgets.map((b) => b.budgetId), ['org'])
  t.match(without, { canProceed: true, bindingBudgetId: 'org' })
  // Terms give the name, alerts, currency and near-limit policy; the numbers give the limit and enforcement the fit was measured against.
  const changed = decide([{ ...team.terms, name: 'renamed', nearLimit: 'clamp', currency: 'EUR' }], [{ ...team.numbers, amount: '2000', enforcement: 'soft' }], '60')
  t.match(changed.budgets[0], { name: 'renamed', nearLimit: 'clamp', currency: 'EUR', limit: '2000', enforcement: 'soft', remaining: '1050', estimatedCost: '60' })
})

t.test('remaining: amount - spend - reserved, never below 0 (the one rule the status, the decision and the gauge read)', async (t) => {
  t.equal(remainingUnits(100n, 30n, 20n), 50n)
  t.equal(remainingUnits(100n, 60n, 40n), 0n, 'exactly full')
  t.equal(remainingUnits(100n, 155n, 0n), 0n, 'spent past the amount: 0, not -55')
  t.equal(remainingUnits(100n, 90n, 20n), 0n, 'reserved past the amount')
})

t.test('the status rule reads thresholds in any order, and two of them make warning and critical', async (t) => {
  t.equal(budgetHealth('600', '1000', [alert(80, 'notify'), alert(50, 'notify')]), 'warning', 'the lowest threshold, wherever it is listed')
  t.equal(budgetHealth('850', '1000', [alert(80, 'notify'), alert(50, 'notify')]), 'critical', 'two thresholds: critical at the higher, 80, not the default 90')
  t.equal(budgetHealth('790', '1000', [alert(80, 'notify'), alert(10, 'notify'), alert(50, 'notify')]), 'warning')
})

t.test('time left counts from the budget\'s start when its first window began before it', async (t) => {
  // A calendar window from April 1; the budget starts on April 11; it is April 5.
  const status = computeStatus({ budget: { ...budget, startDate: '2024-04-11T00:00:00.000Z' }, periodStart, periodEnd, state: 'active', currentAmount: '0', reservedAmount: '0', lastUpdated: periodStart, now: new Date('2024-04-05T00:00:00Z'), crossings: [], projectedTotal: '0', burnRate: '0' })
  t.equal(status.daysRemaining, 20, 'April 11 to May 1')
})
