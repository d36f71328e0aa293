// Rate limits' eras attacked (lib/gate/rate-limits.ts): a changed budget starts a new era, top-ups in
// flight give their grant back, close() waits for them and for those returns, and a call whose grants went
// back because of changes is not refused for them.
import t from 'tap'
import Fastify from 'fastify'
import type { BudgetTerms } from '../lib/gate/budget-terms.js'
import { createRateRepository, type RateAsk } from '../lib/gate/rate-repository.js'
import { createRateLimits, isRateRefusal } from '../lib/gate/rate-limits.js'
import { PREFIX, budgetRequest, buildApp } from './fixtures/app.js'

/** A repository whose takes wait, one by one, until the test lets each go; `ended` models the plugin's pool after close (sql.end). */
function gatedRepository (sql: Parameters<typeof createRateRepository>[0]) {
  const real = createRateRepository(sql)
  const waiting: Array<() => void> = []
  const state = { ended: false, takes: 0 }
  const repository = {
    ...real,
    async takeRate (asks: RateAsk[]) {
      state.takes++
      if (state.ended) throw new Error('write CONNECTION_ENDED')
      const sent = real.takeRate(asks) // sent now (before the pool ends); its answer is held back
      await new Promise<void>((resolve) => { waiting.push(resolve) })
      return await sent
    },
    async giveBackRate (returns: Parameters<typeof real.giveBackRate>[0]) {
      if (state.ended) throw new Error('write CONNECTION_ENDED')
      await real.giveBackRate(returns)
    }
  }
  const untilWaiting = async (n: number) => { while (waiting.length < n) await new Promise((resolve) => setTimeout(resolve, 1)) }
  return { repository, state, release: () => { waiting.shift()!() }, untilWaiting }
}

async function level (sql: any, budgetId: string): Promise<number> {
  const [row] = await sql`select (budget_rate_level(k.requests, k.tokens, k.refilled_at, b.rate_requests_per_minute, b.rate_tokens_per_minute, clock_timestamp())).requests::float8 as requests
    from budget_rate_buckets k join budget_definitions b on b.id = k.budget_id where k.budget_id = ${budgetId}`
  return row.requests
}

t.test('close() after a change, with a top-up in flight: close waits for it, and its grant goes back to the bucket', async (t) => {
  const { admin, sql } = await buildApp(t)
  const budget = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ rateLimits: { requestsPerMinute: 600 } }) })).json()
  const gated = gatedRepository(sql)
  const rateLimits = createRateLimits(gated.repository, Fastify().log)
  const line = [{ budgetId: budget.id, rootId: budget.rootId, name: budget.name, requestsPerMinute: 600, tokensPerMinute: null }] as unknown as BudgetTerms[]
  const first = rateLimits.admit(line, 0)
  await gated.untilWaiting(1)
  gated.release()
  t.notOk(isRateRefusal(await first), 'the first call takes its one request (the allowance is empty after)')
  const second = rateLimits.admit(line, 0).catch((error: unknown) => error) // hot: asks a slice (64)
  await gated.untilWaiting(1)
  rateLimits.forgetAll() // a budget changed while that top-up is in flight
  let closed = false
  const closing = rateLimits.close().then(() => { closed = true })
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.notOk(closed, 'close() is still waiting for the top-up in flight')
  gated.release() // the top-up lands (it was committed by PostgreSQL all along)
  await closing
  gated.state.ended = true // as the plugin does after the gate stops: the pool is ended
  t.ok(await second instanceof Error, 'the call whose grant went back is not admitted by a closed gate: it takes nothing more')
  await new Promise((resolve) => setTimeout(resolve, 100))
  const left = await level(sql, budget.id)
  t.ok(left >= 599, `the bucket holds ${left.toFixed(1)} of 600 after close: only the first call's request is used`)
})

t.test('two changes while one call takes: the call is admitted, not refused with a 429 while its bucket is nearly full', async (t) => {
  const { admin, sql } = await buildApp(t)
  const budget = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ rateLimits: { requestsPerMinute: 600 } }) })).json()
  const gated = gatedRepository(sql)
  const rateLimits = createRateLimits(gated.repository, Fastify().log)
  t.teardown(async () => await rateLimits.close())
  const line = [{ budgetId: budget.id, rootId: budget.rootId, name: budget.name, requestsPerMinute: 600, tokensPerMinute: null }] as unknown as BudgetTerms[]
  const call = rateLimits.admit(line, 0)
  await gated.untilWaiting(1)
  rateLimits.forgetAll() // a change (any budget's, anywhere) heard while the call's take is in flight
  gated.release()
  await gated.untilWaiting(1) // the grant went back; the call takes again
  rateLimits.forgetAll() // another change heard
  gated.release()
  await gated.untilWaiting(1) // that grant went back too: the call takes under the definitions as they are now
  gated.release()
  const result = await call
  t.equal(gated.state.takes, 3, 'three takes: the two whose grants went back did not count against the call')
  t.notOk(isRateRefusal(result), `the call is admitted (bucket ${(await level(sql, budget.id)).toFixed(1)} of 600): ${JSON.stringify(result)}`)
})

t.test('a limit lowered in one process: the other, hot on a leased line, admits no more than the new limit once it has heard', async (t) => {
  const { buildGateway } = await import('./fixtures/gateway.js')
  const { checkInvariants } = await import('./fixtures/invariants.js')
  const { ADMIN_TOKEN } = await import('./fixtures/app.js')
  const one = await buildGateway(t)
  const { default: budgets } = await import('../lib/index.js')
  const { chatCompletions } = await import('../examples/chat-completions.js')
  const two = Fastify()
  await two.register(budgets, { database: one.url, adminToken: 'another-admin-token-0123', gate: { routes: ['/v1/chat/completions'] }, notifications: { intervalMs: 0 } })
  await two.register(chatCompletions, { mockTokenDelayMs: 1 })
  await two.ready()
  t.teardown(async () => await two.close())
  const chat = async (app: typeof two) => (await app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': 'team-a' }, body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 20 } })).statusCode
  const budget = await one.createBudget({ scopeId: 'team-a', amount: '100', rateLimits: { requestsPerMinute: 60000 } })
  for (let wave = 0; wave < 5; wave++) await Promise.all(Array.from({ length: 10 }, async () => await chat(two))) // hot in process two
  const lowered = await one.app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body: { rateLimits: { requestsPerMinute: 2 } } })
  t.equal(lowered.statusCode, 200)
  const started = Date.now()
  await new Promise((resolve) => setTimeout(resolve, 200)) // past 80 ms and a take
  const answers: number[] = []
  for (let wave = 0; wave < 4; wave++) answers.push(...await Promise.all(Array.from({ length: 5 }, async () => await chat(two))))
  const refill = (Date.now() - started) / 60_000 * 2
  const admitted = answers.filter((status) => status === 200).length
  t.ok(admitted <= 2 + Math.ceil(refill), `${admitted} of 20 admitted in the other process after the limit became 2 a minute`)
  await one.settled()
  await checkInvariants(t, one.sql)
})
