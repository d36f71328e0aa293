// Adversarial review: closing the app while gated calls are in flight (hot and cold lines, JSON and streamed).
// The first test fails before the CPU-per-call changes too (912de3b): calls that have not reached the gate's
// preHandler when close() starts are not waited for. The second is new with them: with a request in flight and
// no settlement pending, the stop loop races an already settled Promise.allSettled([]) and spins in microtasks.
import t from 'tap'
import { buildGateway } from './fixtures/gateway.js'
import { findViolations } from './fixtures/invariants.js'

t.test('app.close() with calls in flight waits for them: every served call is recorded once, no hold is left', async (t) => {
  const gateway = await buildGateway(t, { mockTokenDelayMs: 5, gate: { sweepIntervalMs: 0 } })
  const { app, sql, createBudget } = gateway
  await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '100' })
  // Make the line hot first, so some of the calls in flight are admitted from a lease.
  for (let i = 0; i < 15; i++) await gateway.call({ team: 'platform' })
  await gateway.settled()
  const [before] = await sql`select count(*)::int as n from budget_usage_records`
  const calls = Array.from({ length: 24 }, async (_, i) => await app.inject({
    method: 'POST',
    url: '/v1/chat/completions',
    headers: { 'x-relay-team-id': 'platform' },
    body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: `Say hello ${i}` }], max_tokens: 20, stream: i % 2 === 0, ...(i % 2 === 0 ? { stream_options: { include_usage: true } } : {}) }
  }))
  await new Promise((resolve) => setImmediate(resolve))
  const closing = app.close()
  const responses = await Promise.all(calls)
  await closing
  const served = responses.filter((response) => response.statusCode === 200).length
  const [after] = await sql`select count(*)::int as n from budget_usage_records`
  t.equal(after!.n - before!.n, served, `each of the ${served} served calls is recorded once, by the time close() returns`)
  t.same(await findViolations(sql), [], 'no hold left once close() returned (the lease given back); every window consistent')
})

t.test('app.close() while a call is inside its handler lets the handler finish and settles it before the plugin lets go of its database', async (t) => {
  // The plugin owns its pool (given a URL), as a deployment does: what it has not settled when close() returns is lost.
  let entered = 0
  let release!: () => void
  const released = new Promise<void>((resolve) => { release = resolve })
  const gateway = await buildGateway(t, {
    gate: { sweepIntervalMs: 0 },
    gatewayDatabase: async (url) => url,
    routes: (app) => {
      app.post('/review/held/v1/chat/completions', { config: { budgetGate: 'chat' } }, async () => {
        entered++
        await released
        return { id: 'chatcmpl-held', object: 'chat.completion', model: 'gpt-4o-mini', choices: [], usage: { prompt_tokens: 10, completion_tokens: 10, total_tokens: 20 } }
      })
    }
  })
  const { app, sql, createBudget } = gateway
  await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '100' })
  const call = app.inject({
    method: 'POST', url: '/review/held/v1/chat/completions', headers: { 'x-relay-team-id': 'platform' },
    body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: 20 }
  })
  while (entered < 1) await new Promise((resolve) => setTimeout(resolve, 5))
  // The handler is let go by a timer, as an upstream's answer would arrive: closing must leave the event loop free for it.
  let releasedBeforeClosed = false
  setTimeout(() => { releasedBeforeClosed = true; release() }, 20)
  let timerTurns = 0
  const turns = setInterval(() => { timerTurns++ }, 1)
  await app.close()
  clearInterval(turns)
  t.ok(releasedBeforeClosed, 'the timer that ends the handler ran while close() waited')
  t.ok(timerTurns > 0, `timers ran while close() waited (${timerTurns} turns of a 1 ms interval)`)
  t.equal((await call).statusCode, 200)
  const [records] = await sql`select count(*)::int as n from budget_usage_records`
  t.equal(records!.n, 1, 'the served call is recorded')
  t.same(await findViolations(sql), [], 'no hold left')
})
