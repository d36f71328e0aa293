// Review of budget_standings through the public readers: checkCaller, getCallerSummary and the
// check-constraints route with hostile callers, estimates, models and tags (fast-check). No 5xx, no
// database error, nothing written.
import t from 'tap'
import fc from 'fast-check'
import { buildApp, postBudget, snapshotTables, PREFIX } from './fixtures/app.js'

t.test('hostile input to the standings readers: no 5xx, nothing written', async (t) => {
  const { app, sql, admin } = await buildApp(t)
  const org = await postBudget(admin, { name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '100', currency: 'USD', period: 'monthly', startDate: '2024-01-01' })
  const team = await postBudget(admin, { name: 'team', scopeType: 'team', scopeId: 'platform', parentId: org.id, amount: '50', currency: 'USD', period: 'monthly', startDate: '2024-01-01', maxCallCost: '5', filters: { models: ['gpt-*'] } })
  await postBudget(admin, { name: 'euro', scopeType: 'user', scopeId: 'ada', amount: '40', currency: 'EUR', period: 'daily', startDate: '2024-01-01', enforcement: 'soft' })
  await app.budgetTracker.record({ budgetId: team.id, amount: '3', currency: 'USD', metadata: { requestId: 'call-1', modelId: 'gpt-4o' } })
  // the status read caches a forecast profile by design: every other table is compared
  const tables = async () => { const all = await snapshotTables(sql) as Record<string, unknown>; delete all.budget_forecast_profiles; return all }
  // the status read (getCallerSummary) makes sure of a window's row, by design: done once before the snapshot
  await app.budgetIntegration.getCallerSummary({ organization: 'acme', team: 'platform', user: 'ada' })
  const before = await tables()

  // a NUL anywhere PostgreSQL reads text is the subtest below's
  const noNul = (s: string) => !s.includes('\u0000')
  const scopeId = fc.oneof(fc.constantFrom('acme', 'platform', 'ada', '', ' ', 'a'.repeat(300), "x'; drop table budget_definitions; --"), fc.string({ maxLength: 20 }), fc.string({ unit: 'grapheme', maxLength: 10 })).filter(noNul)
  const caller = fc.record({ organization: scopeId, team: scopeId, user: scopeId, project: scopeId, tags: fc.dictionary(fc.string({ maxLength: 5 }).filter(noNul), fc.string({ maxLength: 5 }).filter(noNul), { maxKeys: 3 }) }, { requiredKeys: [] })
  const estimate = fc.oneof(
    fc.constantFrom('0', '1', '0.0000000001', '0.00000000001', '999999999999999999', '999999999999999999.9999999999', '1000000000000000000', '1e3', '-0', ' 1', '1.', '.5', 'NaN', 'Infinity', '\u0000'),
    fc.double(), fc.integer(), fc.string({ maxLength: 12 }))
  // a NUL in the model is the subtest below's
  const model = fc.constantFrom(undefined, 'gpt-4o', 'gpt-4o-mini', 'claude-3', '', 'x'.repeat(500))
  let answered = 0
  await fc.assert(fc.asyncProperty(caller, estimate, model, async (who, cost, name) => {
    for (const read of [
      async () => await app.budgetIntegration.checkCaller(who as any, cost as any, name),
      async () => await app.budgetIntegration.getCallerSummary(who as any, name)
    ]) {
      try {
        await read()
        answered++
      } catch (error) {
        const e = error as { name?: string, statusCode?: number, code?: string }
        if (e.name === 'PostgresError' || e.statusCode === undefined || e.statusCode >= 500) throw new Error(`${JSON.stringify(who)} ${String(cost)} ${String(name)}: ${e.name} ${e.code} ${String(error)}`)
      }
    }
    for (const id of [org.id, team.id, '00000000-0000-0000-0000-000000000000']) {
      const response = await app.inject({ method: 'POST', url: `${PREFIX}/${id}/check-constraints`, headers: { authorization: 'Bearer test-admin-token-0123456789' }, body: { estimatedCost: cost } as any })
      if (response.statusCode >= 500) throw new Error(`check-constraints ${id} ${String(cost)}: ${response.statusCode} ${response.body}`)
    }
  }), { numRuns: 250, interruptAfterTimeLimit: 35000 })
  t.ok(answered > 100, `${answered} reads answered`)
  t.same(await tables(), before, 'nothing written (but the forecast profile the status read caches)')
})

// A NUL in a library caller's model or scope id reached PostgreSQL, which refuses it as text (22021): a database
// error rather than the caller's 400. The integration now checks them first (callOf, lib/gate/integration.ts).
t.test('a model or scope id with a NUL: an error of the caller, not of the database', async (t) => {
  const { app, admin } = await buildApp(t)
  await postBudget(admin, { name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '100', currency: 'USD', period: 'monthly', startDate: '2024-01-01' })
  for (const [name, read] of [
    ['checkCaller', async () => await app.budgetIntegration.checkCaller({ organization: 'acme' }, '1', 'gpt\u00004o')],
    ['getCallerSummary', async () => await app.budgetIntegration.getCallerSummary({ organization: 'acme' }, 'gpt\u00004o')],
    ['getCallerSummary, a scope id', async () => await app.budgetIntegration.getCallerSummary({ organization: '\u0000' })],
    ['checkCaller, a scope id', async () => await app.budgetIntegration.checkCaller({ organization: 'ac\u0000me' }, '1')]
  ] as const) {
    const outcome = await read().then(() => 'answered', (error: { name?: string, code?: string, statusCode?: number }) => `${error.name ?? ''} ${error.code ?? ''} ${error.statusCode ?? ''}`)
    t.match(outcome, /^\S*Error BUDGET_ERR_VALIDATION 400$/, `${name}: ${outcome}`)
  }
})
