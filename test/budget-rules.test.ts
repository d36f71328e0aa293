// The registry's pure rules (lib/budgets/budget-rules.ts) against hand-written cases, without a database:
// what a budget becomes when stored, what it is refused for (naming the field and why), and how a child
// must fit its parent. test/hierarchy.test.ts and test/budget-routes.test.ts drive the same rules through the API.
import t, { type Test } from 'tap'
import { checkChannels, checkChildFitsParent, checkFilterModels, normalizeBudget, periodLength } from '../lib/budgets/budget-rules.js'
import type { BudgetAlert, CreateBudgetRequest } from '../lib/kernel/schemas.js'

const DAY = 86_400_000
const minimal: CreateBudgetRequest = { name: 'team', scopeType: 'team', scopeId: 'eng', amount: '100', currency: 'USD', period: 'monthly', startDate: '2024-01-01' }
const refuses = (t: Test, request: Partial<CreateBudgetRequest>, field: string, message: RegExp, name: string): void => {
  t.throws(() => normalizeBudget({ ...minimal, ...request }), { code: 'BUDGET_ERR_VALIDATION', field, message }, name)
}

t.test('a minimal budget gets every default, in canonical form', async (t) => {
  t.same(normalizeBudget({ ...minimal, name: '  team  ', amount: 100.5 }), {
    name: 'team',
    description: null,
    scopeType: 'team',
    scopeId: 'eng',
    parentId: null,
    amount: '100.5',
    currency: 'USD',
    period: 'monthly',
    startDate: new Date('2024-01-01T00:00:00Z'),
    endDate: null,
    recurring: true,
    timezone: 'UTC',
    fiscalYearStartMonth: 1,
    periodAlignment: 'start',
    filters: {},
    rateLimits: {},
    metrics: false,
    alerts: [],
    enforcement: 'hard',
    digest: null,
    nearLimit: null,
    maxCallCost: null
  })
})

t.test('what is given is kept', async (t) => {
  const parentId = '00000000-0000-4000-8000-000000000001'
  const values = normalizeBudget({
    ...minimal,
    description: 'for the team',
    parentId,
    endDate: '2024-12-31T00:00:00Z',
    recurring: false,
    timezone: 'Europe/Berlin',
    fiscalYearStartMonth: 4,
    metrics: true,
    enforcement: 'soft',
    digest: { every: 'weekly', channels: ['ops'] },
    nearLimit: 'clamp',
    filters: { models: ['gpt-4o*'], tags: { team: 'eng' } },
    rateLimits: { requestsPerMinute: 60, tokensPerMinute: 1000 }
  })
  t.match(values, {
    description: 'for the team',
    parentId,
    endDate: new Date('2024-12-31T00:00:00Z'),
    recurring: false,
    timezone: 'Europe/Berlin',
    fiscalYearStartMonth: 4,
    periodAlignment: 'calendar',
    metrics: true,
    enforcement: 'soft',
    nearLimit: 'clamp'
  })
  t.same(values.digest, { every: 'weekly', channels: ['ops'] })
  t.same(values.filters, { models: ['gpt-4o*'], tags: { team: 'eng' } })
  t.same(values.rateLimits, { requestsPerMinute: 60, tokensPerMinute: 1000 })
})

t.test('filters and rate limits keep only what was given, copied', async (t) => {
  const models = ['gpt-4o']
  const tags = { team: 'eng' }
  const channels = ['ops']
  const values = normalizeBudget({ ...minimal, filters: { models, tags }, digest: { every: 'daily', channels } })
  models.push('later')
  tags.team = 'later'
  channels.push('later')
  t.same(values.filters, { models: ['gpt-4o'], tags: { team: 'eng' } }, 'a later change to the request does not reach the stored values')
  t.same(values.digest, { every: 'daily', channels: ['ops'] })
  t.same(normalizeBudget({ ...minimal, filters: { tags: {} } }).filters, {}, 'no tags is no tag filter')
  t.same(normalizeBudget({ ...minimal, filters: { models: [] } }).filters, { models: [] }, 'an empty model list is kept: it matches no model')
  // Compared by their keys: a limit that is not given is no key at all, not a key whose value is undefined.
  t.same(Object.entries(normalizeBudget({ ...minimal, rateLimits: { requestsPerMinute: 10 } }).rateLimits), [['requestsPerMinute', 10]])
  t.same(Object.entries(normalizeBudget({ ...minimal, rateLimits: { tokensPerMinute: 5 } }).rateLimits), [['tokensPerMinute', 5]])
  t.same(Object.keys(normalizeBudget(minimal).rateLimits), [])
})

t.test('dates: endDate after startDate, and required for a custom period', async (t) => {
  refuses(t, { period: 'custom' }, 'endDate', /required when period is 'custom'/, 'custom without endDate')
  refuses(t, { period: 'custom', endDate: null as unknown as string }, 'endDate', /required when period is 'custom'/, 'custom with a null endDate')
  refuses(t, { endDate: '2024-01-01' }, 'endDate', /must be after startDate/, 'ending as it starts')
  refuses(t, { endDate: '2023-12-31' }, 'endDate', /must be after startDate/, 'ending before it starts')
  refuses(t, { startDate: 'yesterday' }, 'startDate', /ISO 8601/, 'an unreadable startDate')
  refuses(t, { endDate: 'tomorrow' }, 'endDate', /ISO 8601/, 'an unreadable endDate')
  t.equal(normalizeBudget({ ...minimal, endDate: '2024-01-01T00:00:00.001Z' }).endDate?.toISOString(), '2024-01-01T00:00:00.001Z', 'a millisecond after is after')
  t.equal(normalizeBudget({ ...minimal, period: 'custom', endDate: '2024-02-01' }).periodAlignment, 'start')
})

t.test('the calendar: named zones and fiscal years want calendar windows, custom periods never', async (t) => {
  const alignment = (request: Partial<CreateBudgetRequest>): string => normalizeBudget({ ...minimal, ...request }).periodAlignment
  t.equal(alignment({}), 'start', 'naming neither: windows step from startDate')
  t.equal(alignment({ timezone: 'Asia/Tokyo' }), 'calendar', 'a named zone')
  t.equal(alignment({ fiscalYearStartMonth: 1 }), 'calendar', 'a named fiscal year, even January')
  t.equal(alignment({ timezone: 'Asia/Tokyo', periodAlignment: 'start' }), 'start', 'unless it says otherwise')
  t.equal(alignment({ period: 'custom', endDate: '2024-03-01', timezone: 'Asia/Tokyo' }), 'start', 'a custom period is a length of time')
  t.equal(normalizeBudget({ ...minimal, timezone: 'Asia/Tokyo' }).timezone, 'Asia/Tokyo')
  refuses(t, { timezone: '  ' }, 'timezone', /IANA time zone/, 'a blank zone')
  refuses(t, { timezone: '' }, 'timezone', /IANA time zone/, 'an empty zone')
  refuses(t, { period: 'custom', endDate: '2024-03-01', periodAlignment: 'calendar' }, 'periodAlignment', /must be 'start' for a custom period/, 'a calendar custom period')
  refuses(t, { fiscalYearStartMonth: 4, periodAlignment: 'start' }, 'fiscalYearStartMonth', /applies to calendar windows/, 'a fiscal year on stepped windows')
  t.equal(normalizeBudget({ ...minimal, fiscalYearStartMonth: 1, periodAlignment: 'start' }).fiscalYearStartMonth, 1, 'January is every stepped window\'s year')
  t.equal(normalizeBudget({ ...minimal, fiscalYearStartMonth: 7, periodAlignment: 'calendar' }).fiscalYearStartMonth, 7)
})

t.test('names and amounts', async (t) => {
  refuses(t, { name: '   ' }, 'name', /must not be empty or only spaces/, 'a name of spaces')
  refuses(t, { amount: '0' }, 'amount', /greater than 0/, 'a zero amount')
  refuses(t, { amount: '1.5e3' }, 'amount', /plain decimal/, 'an amount with an exponent')
})

t.test('alerts: sorted, one per threshold and basis, thresholds with at most 4 decimals', async (t) => {
  const alerts = normalizeBudget({
    ...minimal,
    alerts: [
      { threshold: 90, actions: ['notify'], notificationChannels: ['ops'] },
      { threshold: 50, actions: ['notify'] } as BudgetAlert, // no channels, as a library caller may leave them out
      { threshold: 90, actions: ['block-all'], basis: 'projected', notificationChannels: [] },
      { threshold: 0.0001, actions: ['notify'], maxPricePerMillion: '2.5', notificationChannels: [] }
    ]
  }).alerts
  t.same(alerts.map((alert) => [alert.threshold, alert.basis ?? 'current']), [[0.0001, 'current'], [50, 'current'], [90, 'current'], [90, 'projected']], 'by threshold; a current and a projected alert may share one')
  t.same(alerts[1]!.notificationChannels, [], 'no channels: an empty list')
  t.same(alerts[2]!.notificationChannels, ['ops'])
  t.equal(normalizeBudget({ ...minimal, alerts: [{ threshold: 12.3456, actions: ['notify'], notificationChannels: [] }] }).alerts[0]!.threshold, 12.3456, 'four decimals')
  t.equal(normalizeBudget({ ...minimal, alerts: [{ threshold: 1000, actions: ['notify'], notificationChannels: [] }] }).alerts[0]!.threshold, 1000)
  refuses(t, { alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: [] }, { threshold: 12.34567, actions: ['notify'], notificationChannels: [] }] }, 'alerts.1.threshold', /at most 4 decimal places/, 'five decimals, named by its index')
  refuses(t, { alerts: [{ threshold: 0.00001, actions: ['notify'], notificationChannels: [] }] }, 'alerts.0.threshold', /from 0.0001 to 1000/, 'below 0.0001')
  refuses(t, { alerts: [{ threshold: 0, actions: ['notify'], notificationChannels: [] }] }, 'alerts.0.threshold', /from 0.0001 to 1000/, 'zero')
  refuses(t, { alerts: [{ threshold: 1e-7, actions: ['notify'], notificationChannels: [] }] }, 'alerts.0.threshold', /from 0.0001/, 'an exponent\'s tiny threshold')
  refuses(t, { alerts: [{ threshold: 80, actions: ['notify'], notificationChannels: [] }, { threshold: 80, actions: ['block-all'], notificationChannels: [] }] }, 'alerts', /has two current alerts at threshold 80/, 'two current alerts at 80')
  refuses(t, { alerts: [{ threshold: 80, actions: ['notify'], basis: 'projected', notificationChannels: [] }, { threshold: 80, actions: ['block-all'], basis: 'projected', notificationChannels: [] }] }, 'alerts', /has two projected alerts at threshold 80/, 'two projected alerts at 80')
  refuses(t, { alerts: [{ threshold: 80, actions: ['notify'], notificationChannels: [] }, { threshold: 80, actions: ['block-all'], basis: 'current', notificationChannels: [] }] }, 'alerts', /has two current alerts at threshold 80/, 'no basis is the current basis')
  refuses(t, { alerts: [{ threshold: 80, actions: ['restrict-models'], maxPricePerMillion: '1e3', notificationChannels: [] }] }, 'alerts.maxPricePerMillion', /plain decimal/, 'a price cap that is no decimal')
})

t.test('a period\'s length: the longest each kind can be, a custom one as its dates say', async (t) => {
  const start = new Date('2024-01-01T00:00:00Z')
  const length = (period: CreateBudgetRequest['period'], endDate: Date | null = null): number => periodLength({ period, startDate: start, endDate })
  t.equal(length('daily'), DAY)
  t.equal(length('weekly'), 7 * DAY)
  t.equal(length('monthly'), 31 * DAY)
  t.equal(length('quarterly'), 92 * DAY)
  t.equal(length('annual'), 366 * DAY)
  t.equal(length('custom', new Date('2024-01-11T00:00:00Z')), 10 * DAY)
})

t.test('a child fits its parent: same currency, no larger amount, no longer period', async (t) => {
  const parent = { name: 'org', amount: '1000', currency: 'USD', period: 'monthly' as const, startDate: new Date('2024-01-01T00:00:00Z'), endDate: null }
  const child = { ...parent, name: 'team' }
  t.doesNotThrow(() => { checkChildFitsParent(child, parent) }, 'as large and as long')
  t.doesNotThrow(() => { checkChildFitsParent({ ...child, amount: '999.9999999999', period: 'daily' }, parent) })
  t.throws(() => { checkChildFitsParent({ ...child, currency: 'EUR' }, parent) }, { code: 'BUDGET_ERR_CURRENCY_MISMATCH', field: 'currency', message: "Budget 'team' is in EUR but its parent 'org' is in USD" })
  t.throws(() => { checkChildFitsParent({ ...child, amount: '1000.0000000001' }, parent) }, { code: 'BUDGET_ERR_EXCEEDS_PARENT', field: 'amount', message: "Budget 'team' amount 1000.0000000001 exceeds its parent 'org' amount 1000" })
  t.throws(() => { checkChildFitsParent({ ...child, period: 'quarterly' }, parent) }, { code: 'BUDGET_ERR_EXCEEDS_PARENT', field: 'period', message: "Budget 'team' has a quarterly period, longer than its parent 'org' monthly period" })
  const custom = { ...parent, period: 'custom' as const, endDate: new Date('2024-01-08T00:00:00Z') }
  t.doesNotThrow(() => { checkChildFitsParent({ ...child, period: 'weekly' }, custom) }, 'a week in a custom week')
  t.throws(() => { checkChildFitsParent({ ...custom, name: 'team', endDate: new Date('2024-01-08T00:00:00.001Z') }, custom) }, { code: 'BUDGET_ERR_EXCEEDS_PARENT', field: 'period' }, 'a millisecond longer')
})

t.test('model filters name the price table\'s names', async (t) => {
  // Snapshots named by their date: the price table names the model without it.
  const modelName = (name: string): string => name.replace(/-\d{4}-\d{2}-\d{2}/, '')
  t.doesNotThrow(() => { checkFilterModels({ models: ['gpt-4o', 'gpt-4o-2024-08-06*'] }, modelName) }, 'names, and patterns as written')
  t.doesNotThrow(() => { checkFilterModels({}, () => 'renamed') }, 'no model filter: nothing to check')
  t.throws(() => { checkFilterModels({ models: ['gpt-4o', 'gpt-4o-2024-08-06'] }, modelName) }, {
    code: 'BUDGET_ERR_VALIDATION', field: 'filters.models', message: /names 'gpt-4o-2024-08-06', which calls are counted as: 'gpt-4o'.*filter on 'gpt-4o'/
  })
})

t.test('every channel a request names is configured', async (t) => {
  const configured = ['ops', 'email']
  t.doesNotThrow(() => { checkChannels({ alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['ops', 'email'] }], digest: { every: 'daily', channels: ['email'] } }, configured) })
  t.doesNotThrow(() => { checkChannels({}, []) }, 'naming none needs none')
  t.doesNotThrow(() => { checkChannels({ alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: [] }], digest: null }, []) }, 'an alert without channels, no digest')
  t.throws(() => { checkChannels({ alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['ops'] }, { threshold: 60, actions: ['notify'], notificationChannels: ['ops', 'pager'] }] }, configured) },
    { code: 'BUDGET_ERR_UNKNOWN_CHANNEL', field: 'alerts.1.notificationChannels.1', channel: 'pager', message: /no notification channel 'pager' is configured \(configured: 'ops', 'email'\)/ })
  t.throws(() => { checkChannels({ digest: { every: 'weekly', channels: ['ops', 'slack'] } }, configured) }, { code: 'BUDGET_ERR_UNKNOWN_CHANNEL', field: 'digest.channels.1', channel: 'slack' })
  t.throws(() => { checkChannels({ digest: { every: 'weekly', channels: ['slack'] } }, []) }, { code: 'BUDGET_ERR_UNKNOWN_CHANNEL', message: /\(configured: none\)/ })
  // A request whose shape is wrong is the schema's to refuse; this check neither throws a TypeError nor guesses.
  const malformed = { alerts: [null, { notificationChannels: 'ops' }, { notificationChannels: [7] }], digest: { channels: 'ops' } } as unknown as CreateBudgetRequest
  t.doesNotThrow(() => { checkChannels(malformed, []) })
  t.doesNotThrow(() => { checkChannels({ alerts: 'ops' } as unknown as CreateBudgetRequest, []) })
})
