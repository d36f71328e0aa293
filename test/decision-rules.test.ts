// The gate's decision (lib/gate/decision.ts) on hand-written numbers, without a database: which refusal wins,
// what each one says, approvals, restrict-models, auto-downgrade and the binding budget. Its inputs are built
// in one place (`decideOn` below), so a change to the shape decide() takes changes that function alone;
// test/gate.test.ts and test/status-rules.test.ts reach the same rules through the plugin and the status.
import t from 'tap'
import { bindingBudget, decide, type ModelPolicy } from '../lib/gate/decision.js'
import type { AlertAction, BudgetAlert } from '../lib/kernel/schemas.js'
import { createPriceBook } from '../lib/pricing/pricing.js'
import type { BudgetNumbers, BudgetTerms } from '../lib/gate/budget-terms.js'

/** One budget as the decision sees it: its definition's side and the numbers SQL measured for the call. */
interface Numbers {
  id: string
  amount?: string
  alerts?: BudgetAlert[]
  enforcement?: 'hard' | 'soft' | 'shadow'
  /** A shadow budget's verdict on room and cap, as the hold decides it on its as-if ledger. */
  shadowFits?: boolean
  current?: string
  reserved?: string
  fits?: boolean
  approvedThrough?: string | null
  projectedActions?: AlertAction[]
  currency?: string
  /** The estimate in the budget's currency (null: no rate; absent: the call's). */
  estimate?: string | null
  outOfRange?: boolean
  /** The budget's cap on one call; the numbers then say whether the estimate is over it, as budget_within_cap does. */
  maxCallCost?: string
}

const termsOf = (b: Numbers): BudgetTerms => ({
  budgetId: b.id, rootId: b.id, name: b.id, alerts: b.alerts ?? [], currency: b.currency ?? 'USD', nearLimit: null, maxCallCost: b.maxCallCost ?? null, scopeMatched: true, scopeRank: 0,
  periodStart: new Date(0), periodEnd: new Date(1), requestsPerMinute: null, tokensPerMinute: null, enforcement: b.enforcement ?? 'hard'
})
const numbersOf = (b: Numbers, estimate: string): BudgetNumbers => ({
  budgetId: b.id,
  amount: b.amount ?? '100',
  enforcement: b.enforcement ?? 'hard',
  currentAmount: b.current ?? '0',
  reservedAmount: b.reserved ?? '0',
  fits: b.fits ?? true,
  approvedThrough: b.approvedThrough ?? null,
  projectedActions: b.projectedActions ?? [],
  estimate: b.estimate === undefined ? estimate : b.estimate,
  outOfRange: b.outOfRange ?? false,
  overCap: b.maxCallCost !== undefined && Number(b.estimate ?? estimate) > Number(b.maxCallCost),
  shadowFits: b.enforcement === 'shadow' ? b.shadowFits ?? true : null
})
const decideOn = (budgets: Numbers[], estimate: string, policy?: ModelPolicy) =>
  decide(budgets.map(termsOf), budgets.map((b) => numbersOf(b, estimate)), estimate, policy)

const alert = (threshold: number, actions: AlertAction[], more: Partial<BudgetAlert> = {}): BudgetAlert => ({ threshold, actions, notificationChannels: [], ...more })
const prices = createPriceBook({
  big: { input: '5', output: '15', maxOutputTokens: 1000, aliases: ['big-snapshot'] },
  small: { input: '0.1', output: '0.6', maxOutputTokens: 1000 },
  tiered: { input: '0.1', output: '1', maxOutputTokens: 1000, tiers: [{ aboveInputTokens: 1000, input: '1', output: '20' }] }
}, { catalogPrices: false })
const policy = (model: string, more: Partial<ModelPolicy> = {}): ModelPolicy => ({ model, prices, cheapModels: ['small'], downgrades: { big: 'small' }, ...more })

t.test('the strictest refusal wins, whichever budget holds it', async (t) => {
  const ladder: Array<[string, Numbers]> = [
    ['exchange_rate_missing', { id: 'norate', currency: 'EUR', estimate: null }],
    ['estimate_out_of_range', { id: 'huge', currency: 'JPY', estimate: null, outOfRange: true }],
    ['budget_blocked', { id: 'blocked', current: '50', alerts: [alert(50, ['block-all'])] }],
    ['approval_required', { id: 'approval', current: '50', alerts: [alert(50, ['require-approval'])] }],
    ['model_restricted', { id: 'restricted', current: '50', alerts: [alert(50, ['restrict-models'])] }],
    ['call_cost_cap_exceeded', { id: 'capped', maxCallCost: '0.5', fits: false }],
    ['budget_exceeded', { id: 'full', fits: false }]
  ]
  for (let first = 0; first < ladder.length; first++) {
    const rest = ladder.slice(first)
    // The strictest is put last: the order of the budgets does not matter, the order of the refusals does.
    const decided = decideOn([...rest.slice(1).map(([, b]) => b), rest[0]![1], { id: 'roomy' }], '1', policy('big'))
    t.match(decided, { canProceed: false, code: rest[0]![0], bindingBudgetId: rest[0]![1].id }, `${rest[0]![0]} outranks ${rest.slice(1).map(([code]) => code).join(', ') || 'nothing'}`)
    t.equal(decided.suggestedActions.length, 1)
  }
  t.match(decideOn([{ id: 'roomy' }], '1', policy('big')), { canProceed: true, code: null, reason: 'Within every applicable budget', suggestedActions: [], downgradeTo: null })
})

t.test('what each refusal says', async (t) => {
  const refusal = (b: Numbers, estimate = '1', p?: ModelPolicy) => {
    const { reason, suggestedActions } = decideOn([b], estimate, p)
    return { reason, suggestion: suggestedActions[0] }
  }
  t.same(refusal({ id: 'team', currency: 'EUR', estimate: null }), { reason: "No exchange rate into EUR is in force for budget 'team'", suggestion: 'ask an admin to set the exchange rate (PUT {prefix}/exchange-rates/{from}/{to})' })
  t.same(refusal({ id: 'team', currency: 'JPY', estimate: null, outOfRange: true }), { reason: "The estimated cost converted into JPY is past the largest amount budget 'team' can hold (10^18)", suggestion: 'use a cheaper model or fewer tokens, or ask an admin to check the exchange rate' })
  t.same(refusal({ id: 'team', current: '10', alerts: [alert(10, ['block-all'])] }), { reason: "Budget 'team' blocks all calls for the rest of its period", suggestion: 'ask an admin to raise or reset the budget, or wait for the next period' })
  t.same(refusal({ id: 'team', current: '10', alerts: [alert(10, ['require-approval'])] }), { reason: "Budget 'team' requires an admin's approval for further calls", suggestion: 'ask for an approval of further spend (POST {prefix}/{budgetId}/approval-requests with the amount and a reason)' })
  t.same(refusal({ id: 'team', current: '10', alerts: [alert(10, ['restrict-models'], { allowedModels: ['b', 'a'] })] }, '1', policy('big')), { reason: "Budget 'team' allows only these models now: a, b", suggestion: 'call one of the allowed models' })
  t.same(refusal({ id: 'team', current: '95', reserved: '1', fits: false }, '7'), { reason: "Budget 'team' has 4 left, less than the estimated cost 7 USD", suggestion: 'use a cheaper model or fewer tokens, or ask an admin to raise the budget' })
  t.match(refusal({ id: 'team', current: '95', fits: false, currency: 'EUR', estimate: '6.5' }, '7'), { reason: "Budget 'team' has 5 left, less than the estimated cost 6.5 EUR" })
  t.match(decideOn([{ id: 'team', fits: false, enforcement: 'soft' }], '1'), { canProceed: true }, 'a soft budget that does not fit only alerts')
  t.match(decideOn([{ id: 'team', fits: false, enforcement: 'hard' }], '1'), { canProceed: false, code: 'budget_exceeded' })
})

t.test('alerts in force: crossed on the spend, or projected ones as recorded', async (t) => {
  const decided = decideOn([
    { id: 'a', current: '60', reserved: '30', alerts: [alert(50, ['notify']), alert(60, ['notify', 'auto-downgrade']), alert(70, ['block-all']), alert(10, ['block-all'], { basis: 'projected' })] },
    { id: 'b', projectedActions: ['notify', 'restrict-models'] }
  ], '1')
  t.same(decided.budgets.map((check) => check.activeActions), [['notify', 'auto-downgrade'], ['notify', 'restrict-models']], 'reserved spend crosses nothing; a projected alert only as recorded')
  t.same(decided.activeActions, ['notify', 'auto-downgrade', 'restrict-models'], 'each action once')
  t.same(decided.suggestedActions, ['prefer a cheaper model: a budget is past a threshold that restricts or downgrades models'])
  t.same(decideOn([{ id: 'b', projectedActions: ['restrict-models'] }], '1').suggestedActions, ['prefer a cheaper model: a budget is past a threshold that restricts or downgrades models'], 'restrict-models alone')
  t.same(decideOn([{ id: 'b', projectedActions: ['notify'] }], '1').suggestedActions, [], 'notify suggests nothing')
  t.match(decideOn([{ id: 'b', projectedActions: ['block-all'] }], '1'), { code: 'budget_blocked' }, 'a projected block-all refuses')
})

t.test('an approval lifts require-approval up to what it covers', async (t) => {
  const approval = (approvedThrough: string | null, estimate: string | null | undefined = undefined) => decideOn([{
    id: 'team', current: '80', reserved: '5', alerts: [alert(80, ['require-approval'])], approvedThrough, ...(estimate === undefined ? {} : { estimate, currency: 'EUR' })
  }], '10')
  t.match(approval('95'), { canProceed: true, budgets: [{ approved: true }] }, '80 + 5 + 10 is exactly 95')
  t.match(approval('94.9999999999'), { code: 'approval_required', budgets: [{ approved: false }] }, 'a unit short')
  t.match(approval(null), { code: 'approval_required', budgets: [{ approved: false }] })
  t.match(approval('95', '11'), { code: 'approval_required' }, 'the estimate in the budget\'s currency is what counts')
  t.match(approval('95', '9'), { canProceed: true })
  t.match(approval('1000', null), { code: 'exchange_rate_missing', budgets: [{ approved: false }] }, 'no rate: nothing is covered')
})

t.test('restrict-models: the listed models, the cheap ones, or those under a price cap', async (t) => {
  const restricting = (more: Partial<BudgetAlert>, p: ModelPolicy) => decideOn([{ id: 'team', current: '50', alerts: [alert(50, ['restrict-models'], more), alert(40, ['notify'], { allowedModels: ['ignored'] })] }], '1', p)
  t.match(restricting({}, policy('big')), { code: 'model_restricted', budgets: [{ allowedModels: ['small'] }] }, 'the gate\'s cheap models')
  t.match(restricting({}, policy('small')), { canProceed: true, budgets: [{ allowedModels: null }] })
  t.match(restricting({ allowedModels: ['big'] }, policy('big-snapshot')), { canProceed: true }, 'a model allowed under its price-table name')
  t.match(restricting({ allowedModels: ['big-snapshot'] }, policy('big-snapshot')), { canProceed: true }, 'or as called')
  t.match(restricting({ maxPricePerMillion: '1', allowedModels: ['x'] }, policy('big')), { budgets: [{ allowedModels: ['small', 'x'] }] },
    'the listed models and the table\'s under the cap (tiered\'s output reaches 20 above its first tier)')
  t.match(restricting({ maxPricePerMillion: '15' }, policy('big')), { canProceed: true }, 'the model called costs no more than the cap')
  t.match(restricting({ maxPricePerMillion: '14.9999999999' }, policy('big')), { code: 'model_restricted' }, 'a unit more than the cap')
  t.match(restricting({ maxPricePerMillion: '19.9999999999', allowedModels: ['x'] }, policy('tiered')), { budgets: [{ allowedModels: ['big', 'small', 'x'] }] }, 'a model is priced at its highest tier')
  t.match(restricting({ maxPricePerMillion: '20' }, policy('tiered')), { canProceed: true })
  t.match(restricting({ maxPricePerMillion: '0.6', allowedModels: ['x'] }, policy('big')), { budgets: [{ allowedModels: ['small', 'x'] }] }, 'a model priced at the cap is under it')
  // A model the operator's table does not list (the catalog's): allowed when its own price is under the cap.
  const withCatalog = { ...prices, resolve: (model: string) => model === 'catalog' ? { model, price: { input: '0.1', output: '0.5', maxOutputTokens: 1000 } } : prices.resolve(model) }
  t.match(restricting({ maxPricePerMillion: '0.5', allowedModels: ['x'] }, policy('catalog', { prices: withCatalog })), { canProceed: true }, 'a catalog model at the cap')
  t.match(restricting({ maxPricePerMillion: '0.4999999999', allowedModels: ['x'] }, policy('catalog', { prices: withCatalog })), { code: 'model_restricted', budgets: [{ allowedModels: ['x'] }] }, 'and a unit over it')
  t.match(restricting({ maxPricePerMillion: '100' }, policy('unknown')), { budgets: [{ allowedModels: ['big', 'small', 'tiered'] }] }, 'a model with no price is under no cap')
  t.match(decideOn([{ id: 'team', current: '50', alerts: [alert(50, ['restrict-models'])] }], '1'), { canProceed: true, budgets: [{ allowedModels: null }] }, 'no model named (a check without a policy): nothing to restrict')
})

t.test('auto-downgrade: the cheaper model, when a budget is past its threshold', async (t) => {
  const downgrading = { id: 'team', current: '50', alerts: [alert(50, ['auto-downgrade'])] }
  t.match(decideOn([downgrading], '1', policy('big')), { canProceed: true, downgradeTo: 'small' })
  t.match(decideOn([downgrading], '1', policy('big-snapshot')), { downgradeTo: 'small' }, 'a model under its price-table name')
  t.match(decideOn([downgrading], '1', policy('big-snapshot', { downgrades: { 'big-snapshot': 'tiered', big: 'small' } })), { downgradeTo: 'tiered' }, 'the name as called first')
  t.equal(decideOn([downgrading], '1', policy('small')).downgradeTo, null, 'no cheaper model')
  t.match(decideOn([downgrading], '1', policy('big', { downgrades: { big: 'big' } })), { downgradeTo: null }, 'the same model is no downgrade')
  t.match(decideOn([downgrading], '1', policy('constructor')), { downgradeTo: null }, 'own keys only')
  t.match(decideOn([downgrading], '1'), { downgradeTo: null }, 'no policy')
  t.match(decideOn([{ ...downgrading, alerts: [alert(50, ['notify'])] }], '1', policy('big')), { downgradeTo: null }, 'not in force')
  const refusedWith = (b: Numbers) => decideOn([downgrading, b], '1', policy('big'))
  t.match(refusedWith({ id: 'full', fits: false }), { code: 'budget_exceeded', downgradeTo: 'small' }, 'a full budget may take the cheaper model')
  t.match(refusedWith({ id: 'huge', estimate: null, outOfRange: true }), { code: 'estimate_out_of_range', downgradeTo: 'small' })
  t.match(refusedWith({ id: 'restricted', current: '50', alerts: [alert(50, ['restrict-models'])] }), { code: 'model_restricted', downgradeTo: 'small' })
  t.match(refusedWith({ id: 'blocked', current: '50', alerts: [alert(50, ['block-all'])] }), { code: 'budget_blocked', downgradeTo: null }, 'a block is no matter of price')
  t.match(refusedWith({ id: 'approval', current: '50', alerts: [alert(50, ['require-approval'])] }), { code: 'approval_required', downgradeTo: null })
  t.match(refusedWith({ id: 'norate', estimate: null }), { code: 'exchange_rate_missing', downgradeTo: null })
})

t.test('the line\'s terms read beside the numbers SQL measured, by budget id', async (t) => {
  const terms: BudgetTerms[] = [
    { budgetId: 'team', rootId: 'team', name: 'Team', alerts: [alert(50, ['notify'])], scopeMatched: true, scopeRank: 0, periodStart: new Date(0), periodEnd: new Date(1), requestsPerMinute: null, tokensPerMinute: null, currency: 'EUR', nearLimit: 'clamp', maxCallCost: null, enforcement: 'hard' },
    { budgetId: 'gone', rootId: 'gone', name: 'Gone', alerts: [], scopeMatched: true, scopeRank: 1, periodStart: new Date(0), periodEnd: new Date(1), requestsPerMinute: null, tokensPerMinute: null, currency: 'USD', nearLimit: null, maxCallCost: null, enforcement: 'hard' }
  ]
  const numbers: BudgetNumbers[] = [
    { budgetId: 'team', amount: '100', enforcement: 'soft', currentAmount: '60', reservedAmount: '5', fits: false, approvedThrough: '90', projectedActions: ['restrict-models'], estimate: '2', outOfRange: false, overCap: false }
  ]
  t.match(decide(terms, numbers, '3').budgets, [{
    budgetId: 'team', name: 'Team', limit: '100', currentAmount: '60', reservedAmount: '5', remaining: '35', enforcement: 'soft', fits: false,
    approved: true, activeActions: ['notify', 'restrict-models'], currency: 'EUR', estimatedCost: '2', outOfRange: false, nearLimit: 'clamp'
  }], 'the names, alerts, currency and policy from the terms; the amounts, fit and approval from the numbers')
  t.equal(decide(terms, numbers, '3').budgets.length, 1, 'a budget without numbers (its window had no row) is left out')
  const held: BudgetNumbers = { budgetId: 'team', amount: '100', enforcement: 'hard', currentAmount: '60', reservedAmount: '5', fits: true, approvedThrough: null, projectedActions: ['block-all'], estimate: null, outOfRange: true, overCap: false }
  t.match(decide(terms, [held], '3'), {
    code: 'estimate_out_of_range',
    budgets: [{ budgetId: 'team', name: 'Team', limit: '100', enforcement: 'hard', fits: true, approved: false, activeActions: ['notify', 'block-all'], currency: 'EUR', estimatedCost: null, outOfRange: true, nearLimit: 'clamp' }]
  })
})

t.test('numbers pair with terms by budget id, in the line\'s order or not, with budgets missing', async (t) => {
  const line = ['a', 'b', 'c', 'd'].map((id) => termsOf({ id }))
  const measured = (id: string, current: string) => numbersOf({ id, current }, '1')
  const read = (numbers: BudgetNumbers[]) => decide(line, numbers, '1').budgets.map((check) => `${check.budgetId}:${check.currentAmount}`)
  t.same(read([measured('a', '1'), measured('b', '2'), measured('c', '3'), measured('d', '4')]), ['a:1', 'b:2', 'c:3', 'd:4'], 'in order')
  t.same(read([measured('d', '4'), measured('b', '2'), measured('a', '1'), measured('c', '3')]), ['a:1', 'b:2', 'c:3', 'd:4'], 'out of order: each still its own, in the line\'s order')
  t.same(read([measured('a', '1'), measured('c', '3'), measured('d', '4')]), ['a:1', 'c:3', 'd:4'], 'a budget without numbers is left out, and the rest still pair')
  t.same(read([measured('c', '3'), measured('a', '1')]), ['a:1', 'c:3'], 'out of order and missing')
  t.same(read([measured('x', '9'), measured('b', '2')]), ['b:2'], 'numbers of a budget not on the line are not read')
})

t.test('the binding budget: the least room for the call', async (t) => {
  const room = (id: string, remaining: string, currency: string | null = null, estimatedCost: string | null = '1') => ({ id, remaining, currency, estimatedCost })
  t.equal(bindingBudget([]), undefined)
  t.equal(bindingBudget([room('a', '5'), room('b', '3'), room('c', '4')])?.id, 'b', 'in one currency, the least remaining')
  t.equal(bindingBudget([room('a', '3'), room('b', '3')])?.id, 'a', 'the first of equals')
  t.equal(bindingBudget([room('usd', '10', null, '2'), room('jpy', '1000', 'JPY', '300')])?.id, 'jpy', '1000 JPY is 3 calls of 300, 10 USD is 5 of 2')
  t.equal(bindingBudget([room('usd', '10', null, '2'), room('jpy', '1000', 'JPY', '150')])?.id, 'usd', '1000 JPY is 6 calls of 150')
  t.equal(bindingBudget([room('usd', '10', null, '2'), room('jpy', '1500', 'JPY', '300')])?.id, 'usd', 'five calls each: the first')
  t.equal(bindingBudget([room('usd', '10', null, '2'), room('jpy', '5', 'JPY', null)])?.id, 'jpy', 'no estimate there: the smaller remaining')
  t.equal(bindingBudget([room('usd', '10', null, '0'), room('jpy', '1000', 'JPY', '300')])?.id, 'usd', 'a zero estimate: the smaller remaining')
  t.equal(bindingBudget([room('jpy', '1000', 'JPY', '300'), room('usd', '10', null, '0')])?.id, 'usd')
  const decided = decideOn([{ id: 'org', amount: '1000', current: '100' }, { id: 'team', current: '90', reserved: '2', alerts: [alert(90, ['notify'])] }], '1')
  t.match(decided, { bindingBudgetId: 'team', limit: '100', currentAmount: '90', reservedAmount: '2', remaining: '8', currency: 'USD', bindingEstimate: '1', status: 'critical', estimatedCost: '1' }, 'decide names it, with its numbers')
  t.match(decideOn([{ id: 'eur', currency: 'EUR', estimate: '0.9', current: '99' }], '1'), { bindingBudgetId: 'eur', currency: 'EUR', bindingEstimate: '0.9', remaining: '1' })
  t.match(decideOn([], '1'), { canProceed: true, reason: 'No budget applies', bindingBudgetId: null, limit: null, currentAmount: null, reservedAmount: null, remaining: null, currency: null, bindingEstimate: null, status: null, budgets: [] })
})

t.test('a shadow budget never decides: it is judged alone as a hard one, and only its verdict says what that would have done', async (t) => {
  const full = decideOn([{ id: 'shadow', enforcement: 'shadow', shadowFits: false, current: '99.5' }], '1')
  t.match(full, { canProceed: true, code: null, bindingBudgetId: null, budgets: [] }, 'let through, and not the binding budget')
  t.match(full.shadow, [{ budgetId: 'shadow', code: 'budget_exceeded', outcome: 'refused', clampable: true, remaining: '0.5', limit: '100' }])

  const beside = decideOn([{ id: 'hard', current: '10' }, { id: 'shadow', enforcement: 'shadow', current: '60', alerts: [alert(50, ['block-all'])] }], '1')
  t.match(beside, { canProceed: true, bindingBudgetId: 'hard', activeActions: [] }, 'its actions are not in force')
  t.match(beside.shadow, [{ budgetId: 'shadow', code: 'budget_blocked', outcome: 'refused', clampable: false }])

  const downgrading = decideOn([{ id: 'shadow', enforcement: 'shadow', current: '60', alerts: [alert(50, ['auto-downgrade'])] }], '1', policy('big'))
  t.equal(downgrading.downgradeTo, null, 'never downgrades')
  t.match(downgrading.shadow, [{ code: 'auto_downgrade', outcome: 'downgraded', downgradeTo: 'small' }])

  const capped = decideOn([{ id: 'shadow', enforcement: 'shadow', maxCallCost: '0.5', shadowFits: false }], '1')
  t.match(capped, { canProceed: true, code: null })
  t.match(capped.shadow, [{ code: 'call_cost_cap_exceeded', outcome: 'refused' }], 'over its cap: counted, not refused')

  t.same(decideOn([{ id: 'shadow', enforcement: 'shadow', current: '1' }], '1').shadow, [], 'a call a hard twin would take: no verdict')
  const unrated = decideOn([{ id: 'hard', current: '10' }, { id: 'shadow', enforcement: 'shadow', currency: 'EUR', estimate: null }], '1')
  t.match(unrated, { canProceed: true, code: null, bindingBudgetId: 'hard' }, 'without a rate into its currency it does not refuse: the other budgets decide')
  t.match(unrated.shadow, [{ budgetId: 'shadow', code: 'exchange_rate_missing', outcome: 'refused', clampable: false }], 'and its verdict is counted')
  const outOfRange = decideOn([{ id: 'shadow', enforcement: 'shadow', currency: 'EUR', estimate: null, outOfRange: true }], '1')
  t.match(outOfRange, { canProceed: true, code: null, budgets: [] }, 'past what it can hold: not refused either')
  t.match(outOfRange.shadow, [{ budgetId: 'shadow', code: 'estimate_out_of_range', outcome: 'refused' }])
})
