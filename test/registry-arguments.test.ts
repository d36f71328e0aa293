// The library's registry (app.budgetRegistry) takes its arguments as its routes take theirs: a field set to
// undefined is a field left out (as in a JSON body), in create and update alike, and what a route refuses the
// library refuses with the same code and field, changing nothing. The review's own cases are in
// test/issue22-rules-review.test.ts; here are the other methods and random patches and requests.
import t from 'tap'
import fc from 'fast-check'
import { buildApp, budgetRequest, snapshotTables } from './fixtures/app.js'
import type { CreateBudgetInput, UpdateBudgetInput } from '../lib/budgets/registry.js'
import type { AuditContext } from '../lib/audit/index.js'
import type { BudgetDefinition } from '../lib/kernel/schemas.js'

type Outcome = { threw: false, value: unknown } | { threw: true, code: unknown, statusCode: unknown, field: unknown, text: string }

async function outcomeOf (work: () => Promise<unknown>): Promise<Outcome> {
  try {
    return { threw: false, value: await work() }
  } catch (error) {
    const { code, statusCode, field, name, message } = error as { code?: unknown, statusCode?: unknown, field?: unknown, name: string, message: string }
    return { threw: true, code, statusCode, field, text: `${name} ${String(code)}: ${message}` }
  }
}

/** Bad input is a 4xx with a stable BUDGET_ERR_ code; anything else (a TypeError, a driver or PostgreSQL error, a 5xx) is a defect. */
function assertCodedRefusal (outcome: Outcome & { threw: true }, what: string): void {
  const { code, statusCode } = outcome
  if (typeof statusCode !== 'number' || statusCode < 400 || statusCode > 499 || typeof code !== 'string' || !code.startsWith('BUDGET_ERR_')) {
    throw new Error(`${what}: threw what is not a coded 4xx: ${outcome.text} (statusCode ${String(statusCode)})`)
  }
}

/** The tables whose rows differ between two snapshots (snapshotTables), to say what a refusal changed. */
function changedTables (before: unknown, after: unknown): string[] {
  const [was, is] = [before, after] as Array<Record<string, string[]>>
  return Object.keys({ ...was, ...is }).filter((table) => JSON.stringify(was![table]) !== JSON.stringify(is![table]))
}

/** A budget as two calls should agree on it: without what tells two budgets apart (id, times). */
function definitionOf (budget: unknown): unknown {
  const { id, createdAt, updatedAt, rootId, ...rest } = budget as BudgetDefinition
  // A root's rootId is its own id, which differs between twins: compared as what it names.
  return { ...rest, rootId: rootId === id ? 'itself' : rootId }
}

/** How one call ended, as the other call's twin must end too. */
function verdict (outcome: Outcome): unknown {
  return outcome.threw ? { code: outcome.code, field: outcome.field ?? null } : definitionOf(outcome.value)
}

// Each field with values a caller may send: good ones (of the right shape; some may still break a rule with
// the parent or another field), and bad ones (wrong type, enum, range, text PostgreSQL cannot store, a rule broken).
function fieldValues (parentId: string): Record<string, { good: unknown[], bad: unknown[] }> {
  return {
    name: { good: ['renamed'], bad: ['   ', null, 5] },
    description: { good: ['changed', null], bad: [7] },
    scopeType: { good: ['user'], bad: ['planet', null] },
    scopeId: { good: ['other-team'], bad: ['', 'a\u0000b'] },
    parentId: { good: [null, parentId], bad: ['not-a-uuid'] },
    amount: { good: ['500', 250.5], bad: [0, '-1', '200000', 'abc'] },
    currency: { good: ['USD', 'EUR'], bad: ['usd', null] },
    period: { good: ['weekly', 'annual'], bad: ['custom', 'decade'] },
    startDate: { good: ['2025-01-01', new Date('2025-02-01T00:00:00Z')], bad: ['yesterday', new Date(Number.NaN)] },
    endDate: { good: [null, '2031-01-01'], bad: ['2020-01-01'] },
    recurring: { good: [true, false], bad: ['yes'] },
    timezone: { good: ['UTC', 'America/New_York'], bad: ['Mars/Olympus_Mons', ''] },
    fiscalYearStartMonth: { good: [1, 4], bad: [13] },
    periodAlignment: { good: ['start', 'calendar'], bad: ['never'] },
    filters: { good: [{}, { models: ['gpt-4o*'] }], bad: [{ models: [] }] },
    rateLimits: { good: [{}, { tokensPerMinute: 1000 }], bad: [{ requestsPerMinute: 0 }] },
    metrics: { good: [false, true], bad: [1] },
    alerts: { good: [[], [{ threshold: 80, actions: ['block-all'] }]], bad: [[{ threshold: -1, actions: ['notify'] }]] },
    enforcement: { good: ['hard', 'soft'], bad: ['medium'] },
    digest: { good: [null, { every: 'weekly', channels: ['slack'] }], bad: [{ every: 'daily', channels: ['nowhere'] }] },
    nearLimit: { good: [null, 'refuse'], bad: ['always'] }
  }
}

const ABSENT = Symbol('absent')

// No background round: the digests and deliveries it makes for the budgets here would show in a snapshot as
// changes no call made (snapshotTables shows that a refused call changed nothing).
const QUIET = { notifications: { intervalMs: 0 } }

interface Weights { absent: number, undefined: number, good: number, bad: number }

/**
 * A patch or request over `fields`: each field absent, set to undefined, or one of its good or bad values.
 * Returns it as a caller would write it (undefined fields in it) and as JSON would carry it (they left out).
 */
function argumentArbitrary (fields: Record<string, { good: unknown[], bad: unknown[] }>, weightsOf: (field: string) => Weights) {
  return fc.record(Object.fromEntries(Object.entries(fields).map(([field, { good, bad }]) => [field, fc.oneof(
    { arbitrary: fc.constant<unknown>(ABSENT), weight: weightsOf(field).absent },
    { arbitrary: fc.constant<unknown>(undefined), weight: weightsOf(field).undefined },
    { arbitrary: fc.constantFrom(...good), weight: weightsOf(field).good },
    { arbitrary: fc.constantFrom(...bad), weight: weightsOf(field).bad }
  )]))).map((chosen) => {
    const withUndefined = Object.fromEntries(Object.entries(chosen).filter(([, value]) => value !== ABSENT))
    const leftOut = Object.fromEntries(Object.entries(withUndefined).filter(([, value]) => value !== undefined))
    return { withUndefined, leftOut }
  })
}

// Fields a patch changes only by naming them (the period, zone and dates also move the calendar's fields).
const INDEPENDENT = ['name', 'description', 'scopeType', 'scopeId', 'parentId', 'amount', 'currency', 'recurring', 'filters', 'rateLimits', 'metrics', 'alerts', 'enforcement', 'digest', 'nearLimit'] as const

t.test('library updateBudget: a field set to undefined is a field left out; a patch either applies or is refused with a coded 4xx that changes nothing', async (t) => {
  const { app, sql } = await buildApp(t, QUIET)
  const registry = app.budgetRegistry
  const parent = await registry.createBudget(budgetRequest({ name: 'parent', scopeType: 'organization', scopeId: 'acme', amount: '100000', period: 'annual' }) as CreateBudgetInput)
  // Every optional field away from its default, so a default filled in over a stored value shows.
  const twin = budgetRequest({
    name: 'twin', description: 'as created', parentId: parent.id, enforcement: 'soft', endDate: '2030-01-01', recurring: false,
    timezone: 'Europe/Berlin', fiscalYearStartMonth: 4, alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['ops'] }],
    filters: { models: ['gpt-4o-mini'], tags: { feature: 'chat' } }, rateLimits: { requestsPerMinute: 5 }, metrics: true,
    digest: { every: 'daily', channels: ['ops'] }, nearLimit: 'clamp'
  }) as CreateBudgetInput
  let applied = 0
  let refused = 0
  await fc.assert(fc.asyncProperty(argumentArbitrary(fieldValues(parent.id), () => ({ absent: 8, undefined: 8, good: 2, bad: 1 })), async ({ withUndefined, leftOut }) => {
    // Twins: one is sent the patch with its undefined fields, the other the same patch as JSON carries it.
    const a = await registry.createBudget(twin)
    const b = await registry.createBudget(twin)
    const label = JSON.stringify(withUndefined, (_key, value: unknown) => value === undefined ? '<undefined>' : value)

    const before = await snapshotTables(sql)
    const outcomeA = await outcomeOf(async () => await registry.updateBudget(a.id, withUndefined as UpdateBudgetInput))
    if (outcomeA.threw) {
      assertCodedRefusal(outcomeA, label)
      const changed = changedTables(before, await snapshotTables(sql))
      if (changed.length > 0) throw new Error(`${label}: refused (${outcomeA.text}) but ${changed.join(', ')} changed`)
    }
    const outcomeB = await outcomeOf(async () => await registry.updateBudget(b.id, leftOut as UpdateBudgetInput))
    if (outcomeB.threw) assertCodedRefusal(outcomeB, `${label} without its undefined fields`)

    t.same(verdict(outcomeA), verdict(outcomeB), `${label}: ends as the same patch without its undefined fields`)
    if (outcomeA.threw) {
      refused++
    } else {
      applied++
      for (const field of INDEPENDENT) {
        if (!(field in leftOut) && JSON.stringify((outcomeA.value as BudgetDefinition)[field]) !== JSON.stringify(a[field])) {
          throw new Error(`${label}: ${field} was not given a value but changed from ${JSON.stringify(a[field])} to ${JSON.stringify((outcomeA.value as BudgetDefinition)[field])}`)
        }
      }
    }
  }), { numRuns: 60, seed: 22 })
  // Both kinds happened, so the property was held on applied patches and on refused ones.
  t.ok(applied > 0 && refused > 0, `patches applied (${applied}) and refused (${refused})`)
})

t.test('library createBudget: a field set to undefined is a field left out; a request either creates or is refused with a coded 4xx that changes nothing', async (t) => {
  const { app, sql } = await buildApp(t, QUIET)
  const registry = app.budgetRegistry
  const parent = await registry.createBudget(budgetRequest({ name: 'parent', scopeType: 'organization', scopeId: 'acme', amount: '100000', period: 'annual' }) as CreateBudgetInput)
  const required = ['name', 'scopeType', 'scopeId', 'amount', 'currency', 'period', 'startDate']
  // A required field mostly has a good value (left out or undefined, it is refused as missing), so that some
  // requests pass every rule and create; an optional one is as often absent or undefined, now and then set.
  const weights = (field: string): Weights => required.includes(field) ? { absent: 1, undefined: 1, good: 40, bad: 2 } : { absent: 4, undefined: 4, good: 2, bad: 1 }
  let created = 0
  let refused = 0
  await fc.assert(fc.asyncProperty(
    argumentArbitrary(fieldValues(parent.id), weights),
    async ({ withUndefined, leftOut }) => {
      const label = JSON.stringify(withUndefined, (_key, value: unknown) => value === undefined ? '<undefined>' : value)

      const before = await snapshotTables(sql)
      const outcomeA = await outcomeOf(async () => await registry.createBudget(withUndefined as unknown as CreateBudgetInput))
      if (outcomeA.threw) {
        assertCodedRefusal(outcomeA, label)
        const changed = changedTables(before, await snapshotTables(sql))
        if (changed.length > 0) throw new Error(`${label}: refused (${outcomeA.text}) but ${changed.join(', ')} changed`)
      }
      const outcomeB = await outcomeOf(async () => await registry.createBudget(leftOut as unknown as CreateBudgetInput))
      if (outcomeB.threw) assertCodedRefusal(outcomeB, `${label} without its undefined fields`)
      t.same(verdict(outcomeA), verdict(outcomeB), `${label}: ends as the same request without its undefined fields`)
      if (outcomeA.threw) refused++
      else created++
    }), { numRuns: 60, seed: 22 })
  t.ok(created > 0 && refused > 0, `requests created (${created}) and refused (${refused})`)
})

t.test('library getBudget, updateBudget, deleteBudget and listBudgets refuse what their routes refuse, with the same code and field, changing nothing', async (t) => {
  const { app, sql, admin } = await buildApp(t, QUIET)
  const registry = app.budgetRegistry
  const parent = await registry.createBudget(budgetRequest({ name: 'parent', scopeType: 'organization', scopeId: 'acme', amount: '5000' }) as CreateBudgetInput)
  const child = await registry.createBudget(budgetRequest({ parentId: parent.id }) as CreateBudgetInput)
  const cases: Array<{ label: string, route: { method: 'GET' | 'PUT' | 'DELETE', url: string, payload?: object }, library: () => Promise<unknown>, field: string }> = [
    { label: 'getBudget, an id with a NUL', route: { method: 'GET', url: '/api/v1/budgets/a%00b' }, library: async () => await registry.getBudget('a\u0000b'), field: 'id' },
    { label: 'updateBudget, an id with a NUL', route: { method: 'PUT', url: '/api/v1/budgets/a%00b', payload: { description: 'x' } }, library: async () => await registry.updateBudget('a\u0000b', { description: 'x' }), field: 'id' },
    { label: 'deleteBudget, an id with a NUL', route: { method: 'DELETE', url: '/api/v1/budgets/a%00b' }, library: async () => await registry.deleteBudget('a\u0000b'), field: 'id' },
    { label: 'listBudgets, an unknown field', route: { method: 'GET', url: '/api/v1/budgets?limit=10&offset=5' }, library: async () => await registry.listBudgets({ limit: 10, offset: 5 } as { limit: number }), field: 'offset' },
    { label: 'listBudgets, a limit over 500', route: { method: 'GET', url: '/api/v1/budgets?limit=501' }, library: async () => await registry.listBudgets({ limit: 501 }), field: 'limit' },
    { label: 'getHierarchy, an unknown scope type', route: { method: 'GET', url: '/api/v1/budgets/hierarchy/planet/earth' }, library: async () => await registry.getHierarchy('planet' as 'team', 'earth'), field: 'type' }
  ]
  for (const { label, route, library, field } of cases) {
    const before = await snapshotTables(sql)
    const response = await admin(route)
    t.match({ statusCode: response.statusCode, ...response.json() }, { statusCode: 400, code: 'BUDGET_ERR_VALIDATION', field }, `${label}: the route answers 400 naming ${field}`)
    t.match(await outcomeOf(library), { threw: true, statusCode: 400, code: 'BUDGET_ERR_VALIDATION', field }, `${label}: the library refuses it alike`)
    t.same(await snapshotTables(sql), before, `${label}: nothing changed`)
  }

  // cascade as the route's query takes it: a boolean; the string 'false' was truthy and deleted the tree.
  const before = await snapshotTables(sql)
  t.match(await outcomeOf(async () => await registry.deleteBudget(parent.id, { cascade: 'false' as unknown as boolean })),
    { threw: true, statusCode: 400, code: 'BUDGET_ERR_VALIDATION', field: 'cascade' }, "deleteBudget: cascade 'false' (a string) is refused")
  t.match(await outcomeOf(async () => await registry.deleteBudget(parent.id, { cascade: undefined })),
    { threw: true, statusCode: 409, code: 'BUDGET_ERR_HAS_CHILDREN' }, 'deleteBudget: cascade set to undefined is cascade left out (false): a budget with children stays')
  t.same(await snapshotTables(sql), before, 'deleteBudget: nothing deleted')
  t.same((await registry.listBudgets({ limit: undefined })).budgets.map((budget) => budget.id).sort(), [parent.id, child.id].sort(), 'listBudgets: a limit set to undefined is the default')
  t.equal((await registry.getBudget(child.id)).id, child.id, 'getBudget reads a live budget')
  // The route's schema says at most 200 (Fastify's own maxParamLength, 100 unless the host raises it, answers 414 first).
  t.match(await outcomeOf(async () => await registry.getBudgetsByScope('team', 'x'.repeat(201))),
    { threw: true, statusCode: 400, code: 'BUDGET_ERR_VALIDATION', field: 'id' }, 'getBudgetsByScope: a scope id over 200 characters is refused as ScopeParams says')
  t.match(await outcomeOf(async () => await registry.getBudget('nope')), { threw: true, statusCode: 404, code: 'BUDGET_ERR_NOT_FOUND' }, 'an id that is no uuid is still not found (404), as at the route')
})

t.test('library writes refuse who makes the change when PostgreSQL could not store it (actor, requestId, createdBy), changing nothing', async (t) => {
  const { app, sql } = await buildApp(t, QUIET)
  const registry = app.budgetRegistry
  const budget = await registry.createBudget(budgetRequest() as CreateBudgetInput)
  const refusals: Array<{ label: string, work: () => Promise<unknown>, field: string }> = [
    { label: 'updateBudget, an actor with a NUL', work: async () => await registry.updateBudget(budget.id, { description: 'x' }, { actor: 'a\u0000b', requestId: null }), field: 'actor' },
    { label: 'updateBudget, no actor', work: async () => await registry.updateBudget(budget.id, { description: 'x' }, { requestId: 'r1' } as unknown as AuditContext), field: 'actor' },
    { label: 'updateBudget, a request id with an unpaired surrogate', work: async () => await registry.updateBudget(budget.id, { description: 'x' }, { actor: 'ops', requestId: '\ud800' }), field: 'requestId' },
    { label: 'updateBudget, a context that is null', work: async () => await registry.updateBudget(budget.id, { description: 'x' }, null as unknown as AuditContext), field: 'context' },
    { label: 'deleteBudget, an actor that is a number', work: async () => await registry.deleteBudget(budget.id, {}, { actor: 7, requestId: null } as unknown as AuditContext), field: 'actor' },
    { label: 'createBudget, a createdBy with a NUL', work: async () => await registry.createBudget(budgetRequest({ scopeId: 'other' }) as CreateBudgetInput, 'a\u0000b'), field: 'createdBy' },
    { label: 'createBudget, a request id that is a number', work: async () => await registry.createBudget(budgetRequest({ scopeId: 'other' }) as CreateBudgetInput, 'ops', 42 as unknown as string), field: 'requestId' }
  ]
  for (const { label, work, field } of refusals) {
    const before = await snapshotTables(sql)
    t.match(await outcomeOf(work), { threw: true, statusCode: 400, code: 'BUDGET_ERR_VALIDATION', field }, `${label}: refused naming ${field}`)
    t.same(await snapshotTables(sql), before, `${label}: nothing changed`)
  }
  // A request id left out is none, as the type's null; createdBy is recorded as given.
  await registry.updateBudget(budget.id, { description: 'x' }, { actor: 'ops' } as AuditContext)
  const created = await registry.createBudget(budgetRequest({ scopeId: 'other' }) as CreateBudgetInput, 'alice', 'req-7')
  t.equal(created.createdBy, 'alice', 'createdBy is recorded')
  const log = await sql<Array<{ budgetId: string, action: string, actor: string, requestId: string | null }>>`
    select budget_id as "budgetId", action, actor, request_id as "requestId" from budget_audit_log where action in ('update', 'create') order by id`
  t.same(log.slice(-2), [
    { budgetId: budget.id, action: 'update', actor: 'ops', requestId: null },
    { budgetId: created.id, action: 'create', actor: 'alice', requestId: 'req-7' }
  ], 'the audit log names who, and no request id where none was given')
})
