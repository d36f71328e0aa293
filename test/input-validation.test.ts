// Each input that once answered 500 (or was accepted and broke later reads) now answers a 4xx that
// names the problem, and changes nothing. test/hostile-input.test.ts throws generated input at every
// route; these are the cases that were observed, one by one.
import fc from 'fast-check'
import t from 'tap'
import { ADMIN_TOKEN, PREFIX, budgetRequest, buildApp, snapshotTables } from './fixtures/app.js'
import { isDeepStrictEqual } from 'node:util'
import { buildGateway } from './fixtures/gateway.js'
import { checkInvariants } from './fixtures/invariants.js'

const cursor = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url')

t.test('inputs that answered 500 answer 400 (or 404) and change nothing', async (t) => {
  const { admin, sql } = await buildApp(t)
  const budget = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeId: 'platform', alerts: [{ threshold: 50, actions: ['notify'] }] }) })).json()
  await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: { amount: '999999999999999999', currency: 'USD' } })
  const raw = (text: string) => ({ payload: text, headers: { 'content-type': 'application/json' } })
  const cases: Array<[string, Parameters<typeof admin>[0], number, string | undefined]> = [
    ['a NUL in a name', { method: 'POST', url: PREFIX, body: budgetRequest({ name: 'a\u0000b' }) }, 400, 'name'],
    ['a NUL in a description', { method: 'PUT', url: `${PREFIX}/${budget.id}`, body: { description: '\u0000' } }, 400, 'description'],
    ['a NUL in a scope id', { method: 'POST', url: PREFIX, body: budgetRequest({ scopeId: 'x\u0000' }) }, 400, 'scopeId'],
    ['a NUL in a usage source', { method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: { amount: '1', currency: 'USD', source: '\u0000' } }, 400, 'source'],
    ['a NUL in a metadata key', { method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: { amount: '1', currency: 'USD', metadata: { 'a\u0000': 1 } } }, 400, 'metadata'],
    ['a NUL in an approval reason', { method: 'POST', url: `${PREFIX}/${budget.id}/approvals`, body: { amount: '1', reason: '\u0000' } }, 400, 'reason'],
    ['a NUL in a channel name', { method: 'PUT', url: `${PREFIX}/${budget.id}`, body: { alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['slack\u0000'] }] } }, 400, 'alerts.0.notificationChannels.0'],
    ['a lone surrogate in a name', { method: 'POST', url: PREFIX, ...raw(JSON.stringify(budgetRequest({ name: 'X' })).replace('"X"', '"\\ud800"')) }, 400, 'name'],
    ['a lone surrogate in metadata', { method: 'POST', url: `${PREFIX}/${budget.id}/usage`, ...raw('{"amount":"1","currency":"USD","metadata":{"note":"\\udfff"}}') }, 400, 'metadata.note'],
    ['a name of only spaces', { method: 'POST', url: PREFIX, body: budgetRequest({ name: '    ' }) }, 400, 'name'],
    ['an offset of +99:00', { method: 'POST', url: PREFIX, body: budgetRequest({ startDate: '2024-01-01T00:00:00+99:00' }) }, 400, 'startDate'],
    ['a year past 9999 once the offset applies', { method: 'POST', url: PREFIX, body: budgetRequest({ period: 'custom', startDate: '2024-01-01', endDate: '9999-12-31T23:59:59-14:00' }) }, 400, 'endDate'],
    ['a cursor with a non-uuid id', { method: 'GET', url: `${PREFIX}/${budget.id}/usage?cursor=${cursor(['2024-01-01T00:00:00Z', '-'.repeat(36)])}` }, 400, 'cursor'],
    ['a cursor with a date PostgreSQL cannot hold', { method: 'GET', url: `${PREFIX}/${budget.id}/usage?cursor=${cursor(['+275760-09-13T00:00:00Z', '00000000-0000-0000-0000-000000000000'])}` }, 400, 'cursor'],
    ['a cursor that is a number', { method: 'GET', url: `${PREFIX}/${budget.id}/usage?cursor=${cursor(42)}` }, 400, 'cursor'],
    ['%00 in a scope path', { method: 'GET', url: `${PREFIX}/scope/team/a%00b` }, 400, 'id'],
    ['%00 in a hierarchy path', { method: 'GET', url: `${PREFIX}/hierarchy/team/%00` }, 400, 'id'],
    ['a non-uuid budget id on acknowledge', { method: 'POST', url: `${PREFIX}/not-a-uuid/alerts/00000000-0000-0000-0000-000000000000/acknowledge` }, 404, undefined],
    ['usage whose sum overflows the column', { method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: { amount: '999999999999999999', currency: 'USD' } }, 400, 'amount'],
    ['a threshold of 1e-7', { method: 'PUT', url: `${PREFIX}/${budget.id}`, body: { alerts: [{ threshold: 1e-7, actions: ['notify'] }] } }, 400, 'alerts.0.threshold'],
    ['an approval that expires at an unparseable instant', { method: 'POST', url: `${PREFIX}/${budget.id}/approvals`, body: { amount: '1', expiresAt: '2030-01-01T00:00:00+99:00' } }, 400, 'expiresAt']
  ]
  for (const [name, request, statusCode, field] of cases) {
    const before = await snapshotTables(sql)
    const response = await admin(request)
    t.equal(response.statusCode, statusCode, `${name}: ${response.body}`)
    if (field !== undefined) t.equal(response.json().field, field, `${name}: names ${field}`)
    t.same(await snapshotTables(sql), before, `${name}: nothing changed`)
  }
  t.equal((await admin({ url: `${PREFIX}/${budget.id}/status` })).statusCode, 200, 'and the budget still reads')
})

t.test('model names that live on Object.prototype are unknown models at the gate, not 500s', async (t) => {
  const { call, createBudget, sql } = await buildGateway(t)
  await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1' })
  for (const model of ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf']) {
    const response = await call({ team: 'platform' }, { model })
    t.equal(response.statusCode, 400, model)
    t.match(response.json(), { error: { type: 'invalid_request_error', code: 'model_not_priced', param: 'model' } })
  }
  const [row] = await sql<Array<{ held: number }>>`select count(*)::int as held from budget_reservations`
  t.equal(row!.held, 0, 'and nothing is held')
})

t.test('a budget the route refuses, the library refuses too, with the same code and field, and stores nothing (issue 22: one owner for shape)', async (t) => {
  const { app, admin, sql } = await buildApp(t)
  const existing = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeId: 'existing' }) })).json()
  const before = await snapshotTables(sql)
  const answer = (error: { code?: string, field?: string }) => ({ code: error.code, field: error.field })
  const creates: Array<[string, Record<string, unknown>]> = [
    ['a threshold past 1000%', { alerts: [{ threshold: 2000, actions: ['notify'] }] }],
    ['an alert action that is none of the five', { alerts: [{ threshold: 50, actions: ['email'] }] }],
    ['a name of 201 characters', { name: 'x'.repeat(201) }],
    ['a scope type that is not one', { scopeType: 'planet' }],
    ['a model filter of 201 characters', { filters: { models: [`${'x'.repeat(200)}*`] } }],
    ['a field the API does not know', { colour: 'red' }],
    ['a NUL in a channel of a digest', { digest: { every: 'daily', channels: ['ops\u0000'] } }],
    ['a cap on one call of 0', { maxCallCost: '0' }],
    ['a cap on one call with an exponent', { maxCallCost: '1e-3' }],
    ['a cap on one call past 10 decimals', { maxCallCost: '0.00000000001' }],
    ['a cap on one call that is an object', { maxCallCost: {} }]
  ]
  for (const [name, fields] of creates) {
    const route = await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeId: 'lib', ...fields }) })
    t.equal(route.statusCode, 400, `${name}: the route answers 400`)
    const library = await app.budgetRegistry.createBudget(budgetRequest({ scopeId: 'lib', ...fields }) as never).then(() => 'stored', answer)
    t.same(library, answer(route.json()), `${name}: the library answers as the route`)
  }
  for (const [name, fields] of [['no field at all', {}], ['a period that is not one', { period: 'hourly' }]] as Array<[string, Record<string, unknown>]>) {
    const route = await admin({ method: 'PUT', url: `${PREFIX}/${existing.id as string}`, body: fields })
    t.equal(route.statusCode, 400, `update, ${name}: the route answers 400`)
    t.same(await app.budgetRegistry.updateBudget(existing.id, fields as never).then(() => 'stored', answer), answer(route.json()), `update, ${name}: the library answers as the route`)
  }
  t.same(await snapshotTables(sql), before, 'nothing changed')
})

t.test('x-budget-max-cost and maxCallCost meet generated input: no 5xx; a 4xx holds and stores nothing; what is accepted is exactly a plain decimal above 0', async (t) => {
  const gateway = await buildGateway(t)
  const budget = await gateway.createBudget({ scopeType: 'team', scopeId: 'platform', amount: '100' })
  const plain = /^\d{1,18}(\.\d{1,10})?$/
  const capText = fc.oneof(fc.string({ maxLength: 30 }), fc.stringMatching(/^[-+ ]?\d{0,20}(\.\d{0,12})?([eE][-+]?\d{1,3})?[ ,]?$/),
    fc.constantFrom('0', '0.0', '-0', '1e2', '0.5, 0.5', '\t0.5', '0.0000000001', '0.00000000001', '1'.repeat(18), '1'.repeat(19)))
  await fc.assert(fc.asyncProperty(capText, async (cap) => {
    const before = await snapshotTables(gateway.sql)
    const response = await gateway.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': 'platform', 'x-budget-max-cost': cap }, body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 20 } })
      .catch((error: Error) => ({ statusCode: 0, error }))
    if ('error' in response) return // a header Node itself cannot send (a control character): never reaches the gate
    if (response.statusCode >= 500) throw new Error(`${JSON.stringify(cap)}: ${response.statusCode} ${response.body}`)
    const valid = plain.test(cap) && /[1-9]/.test(cap)
    if (!valid) {
      if (response.statusCode !== 400 || response.json().error.code !== 'invalid_max_cost') throw new Error(`${JSON.stringify(cap)}: ${response.statusCode} ${response.body}`)
    } else if (response.statusCode !== 200 && response.json().error.code !== 'call_cost_cap_exceeded') throw new Error(`${JSON.stringify(cap)}: ${response.statusCode} ${response.body}`)
    await gateway.settled()
    if (response.statusCode >= 400 && !isDeepStrictEqual(await snapshotTables(gateway.sql), before)) throw new Error(`${JSON.stringify(cap)}: a ${response.statusCode} changed the tables`)
  }), { numRuns: 150 })
  t.pass('the header: 150 generated values')

  const capValue = fc.oneof(capText, fc.double(), fc.integer(), fc.constantFrom(null, true, [], {}))
  await fc.assert(fc.asyncProperty(capValue, async (cap) => {
    const before = await snapshotTables(gateway.sql)
    const response = await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body: { maxCallCost: cap } })
    if (response.statusCode >= 500) throw new Error(`${JSON.stringify(cap)}: ${response.statusCode} ${response.body}`)
    if (response.statusCode >= 400) {
      if (response.json().field !== 'maxCallCost') throw new Error(`${JSON.stringify(cap)}: ${response.body}`)
      if (!isDeepStrictEqual(await snapshotTables(gateway.sql), before)) throw new Error(`${JSON.stringify(cap)}: a ${response.statusCode} changed the tables`)
      return
    }
    const stored = response.json().maxCallCost as string | null
    // what was sent: JSON has no infinity or NaN, so such a double goes as null
    const sent: unknown = JSON.parse(JSON.stringify({ cap })).cap ?? null
    if (sent === null ? stored !== null : stored === null || !/^\d+(\.\d+)?$/.test(stored) || !/[1-9]/.test(stored)) throw new Error(`${JSON.stringify(cap)}: stored ${JSON.stringify(stored)}`)
  }), { numRuns: 150 })
  t.pass('the budget field: 150 generated values')
  await checkInvariants(t, gateway.sql)
})
