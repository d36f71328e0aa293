// Adversarial review 2: closing the app after gated requests that never reach the gate's preHandler.
import t from 'tap'
import { buildGateway } from './fixtures/gateway.js'
import { findViolations } from './fixtures/invariants.js'

const BODY = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: 20 }

t.test('close() does not wait for gated requests refused before the preHandler', async (t) => {
  const gateway = await buildGateway(t, {
    gate: { sweepIntervalMs: 0 },
    routes: (app) => {
      app.post('/review/onrequest/v1/chat/completions', { config: { budgetGate: 'chat' }, onRequest: async () => { throw new Error('host onRequest') } }, async () => ({}))
      app.post('/review/prevalidation/v1/chat/completions', { config: { budgetGate: 'chat' }, preValidation: async () => { throw new Error('host preValidation') } }, async () => ({}))
      app.post('/review/small/v1/chat/completions', { config: { budgetGate: 'chat' }, bodyLimit: 10 }, async () => ({}))
    }
  })
  const { app, sql, createBudget } = gateway
  await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '100' })
  const headers = { 'x-relay-team-id': 'platform' }
  const statuses: number[] = []
  statuses.push((await app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { ...headers, 'content-type': 'application/json' }, payload: '{"model":' })).statusCode)
  statuses.push((await app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { ...headers, 'content-type': 'text/xml' }, payload: '<a/>' })).statusCode)
  statuses.push((await app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { ...headers, 'content-type': 'application/json' }, payload: JSON.stringify({ ...BODY, pad: 'x'.repeat(2 * 1024 * 1024) }) })).statusCode)
  statuses.push((await app.inject({ method: 'POST', url: '/review/small/v1/chat/completions', headers, body: BODY })).statusCode)
  statuses.push((await app.inject({ method: 'POST', url: '/review/onrequest/v1/chat/completions', headers, body: BODY })).statusCode)
  statuses.push((await app.inject({ method: 'POST', url: '/review/prevalidation/v1/chat/completions', headers, body: BODY })).statusCode)
  statuses.push((await app.inject({ method: 'POST', url: '/v1/nothing-here', headers, body: BODY })).statusCode)
  t.same(statuses, [400, 415, 413, 413, 500, 500, 404], 'each refused before the gate')
  const started = Date.now()
  await app.close()
  const took = Date.now() - started
  t.ok(took < 3000, `close() returned in ${took} ms (it must not wait out its 10 s for requests that ended)`)
  t.same(await findViolations(sql), [], 'no hold left')
})
