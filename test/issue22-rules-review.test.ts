// Adversarial review of issue 22's landed rule owners: validation at both doors, the library's registry side
// (findings 1, 2 and 5; the gate's findings 3 and 4 are tested with the gate's fix). Each subtest reproduces
// one defect the review found and asserts the correct behaviour. What the review tried that held is in its report.
import t from 'tap'
import { buildApp, budgetRequest } from './fixtures/app.js'
import type { CreateBudgetInput, UpdateBudgetInput } from '../lib/budgets/registry.js'

/** What a library call threw, as a client would branch on it (or that it did not throw). */
async function outcomeOf (work: () => Promise<unknown>): Promise<{ threw: false } | { threw: true, code: unknown, statusCode: unknown, name: string, message: string }> {
  try {
    await work()
    return { threw: false }
  } catch (error) {
    const { code, statusCode, name, message } = error as { code?: unknown, statusCode?: unknown, name: string, message: string }
    return { threw: true, code, statusCode, name, message }
  }
}

// docs/design-decisions.md: the schemas own a request's shape "at both doors", so both refuse the same input
// with BUDGET_ERR_VALIDATION; lib/kernel/validator.ts checks the library's value "as a JSON body: ... a field
// set to undefined left out". updateBudget checks the patch with the undefined field left out, then merges
// the patch as it is ({ ...current, ...patch }), so the undefined field overwrites the stored value: what was
// checked is not what is applied.
t.test('library updateBudget: a field set to undefined beside a real change leaves the stored field as it is (a soft budget stayed soft, its alerts, end, filters and rate limits stayed)', async (t) => {
  const { app, sql } = await buildApp(t)
  const parent = await app.budgetRegistry.createBudget(budgetRequest({ name: 'parent', scopeType: 'organization', scopeId: 'acme', amount: '5000' }) as CreateBudgetInput)
  const budget = await app.budgetRegistry.createBudget(budgetRequest({
    parentId: parent.id,
    enforcement: 'soft',
    endDate: '2030-01-01',
    alerts: [{ threshold: 50, actions: ['notify'] }],
    filters: { models: ['gpt-4o-mini'] },
    rateLimits: { requestsPerMinute: 5 },
    nearLimit: 'clamp'
  }) as CreateBudgetInput)
  const stored = async () => (await sql`
    select enforcement, end_date is not null as "hasEnd", jsonb_array_length(alerts) as alerts, filter_models as models,
           rate_requests_per_minute as rpm, near_limit as "nearLimit", parent_id as "parentId"
    from budget_definitions where id = ${budget.id}`)[0]
  const before = await stored()
  t.same(before, { enforcement: 'soft', hasEnd: true, alerts: 1, models: ['gpt-4o-mini'], rpm: 5, nearLimit: 'clamp', parentId: parent.id }, 'the budget as created')

  // A caller spreading optional form fields: { name, enforcement: form.enforcement, ... } with those left unset.
  const outcome = await outcomeOf(async () => await app.budgetRegistry.updateBudget(budget.id, {
    name: 'renamed', enforcement: undefined, endDate: undefined, alerts: undefined, filters: undefined, rateLimits: undefined, nearLimit: undefined, parentId: undefined
  } as UpdateBudgetInput))
  // Either reading is right (a JSON body leaves the field out; or the library refuses it as a 400), never a silent rewrite.
  if (outcome.threw) t.equal(outcome.code, 'BUDGET_ERR_VALIDATION', `refused as bad input: ${outcome.message}`)
  t.same(await stored(), before, 'enforcement, endDate, alerts, filters, rate limits, nearLimit and parent are as they were (it became a hard root budget for every model, with no end, alert or rate limit)')
})

// The same merge, for a required field: bad input gets a 4xx with a stable code (common rules; docs/design-decisions.md
// "Bad input is a 4xx that names the field and changes nothing"). Here it is a TypeError from budget-rules'
// requireText, or postgres.js's UNDEFINED_VALUE from the driver: neither a 4xx nor BUDGET_ERR_VALIDATION.
t.test('library updateBudget: a required field set to undefined beside a real change is refused with BUDGET_ERR_VALIDATION (or left as it is), never a TypeError or a driver error', async (t) => {
  const { app, sql } = await buildApp(t)
  const budget = await app.budgetRegistry.createBudget(budgetRequest() as CreateBudgetInput)
  const [before] = await sql`select name, scope_type, scope_id, period, currency from budget_definitions where id = ${budget.id}`
  for (const field of ['name', 'scopeType', 'scopeId', 'period', 'currency'] as const) {
    const outcome = await outcomeOf(async () => await app.budgetRegistry.updateBudget(budget.id, { description: `changed beside ${field}`, [field]: undefined } as UpdateBudgetInput))
    if (outcome.threw) {
      t.match(outcome, { code: 'BUDGET_ERR_VALIDATION', statusCode: 400 }, `${field}: undefined is refused as bad input (threw ${outcome.name} ${String(outcome.code)}: ${outcome.message})`)
    } else {
      t.pass(`${field}: undefined was left out`)
    }
    const [after] = await sql`select name, scope_type, scope_id, period, currency from budget_definitions where id = ${budget.id}`
    t.same(after, before, `${field}: the stored fields are as they were`)
  }
})

// docs/design-decisions.md: the admin routes validate with the API's schemas "and so does the library
// (app.budgetRegistry, through lib/kernel/validator.ts, after the same check for text PostgreSQL cannot store),
// so both doors refuse the same input with the same BUDGET_ERR_VALIDATION and field". Only createBudget and
// updateBudget do: the registry's scope and hierarchy reads hand a NUL to PostgreSQL (22021, no statusCode: a
// host mapping errors by statusCode answers 500), and take an unknown scope type the route refuses.
t.test('library registry reads refuse what their admin routes refuse, with the same BUDGET_ERR_VALIDATION', async (t) => {
  const { app, admin } = await buildApp(t)
  const cases: Array<{ label: string, url: string, library: () => Promise<unknown> }> = [
    { label: 'getHierarchy, a scope id with a NUL', url: '/api/v1/budgets/hierarchy/team/a%00b', library: async () => await app.budgetRegistry.getHierarchy('team', 'a\u0000b') },
    { label: 'getBudgetsByScope, a scope id with a NUL', url: '/api/v1/budgets/scope/team/a%00b', library: async () => await app.budgetRegistry.getBudgetsByScope('team', 'a\u0000b') },
    { label: 'getBudgetsByScope, an unknown scope type', url: '/api/v1/budgets/scope/planet/earth', library: async () => await app.budgetRegistry.getBudgetsByScope('planet' as 'team', 'earth') }
  ]
  for (const { label, url, library } of cases) {
    const route = await admin({ url })
    t.match({ statusCode: route.statusCode, code: route.json().code }, { statusCode: 400, code: 'BUDGET_ERR_VALIDATION' }, `${label}: the route answers 400 BUDGET_ERR_VALIDATION`)
    const outcome = await outcomeOf(library)
    t.match(outcome, { threw: true, code: 'BUDGET_ERR_VALIDATION', statusCode: 400 }, `${label}: the library refuses it alike (${JSON.stringify(outcome)})`)
  }
})
