// Review of a5cec52 (an estimate without tokens needs one token a call): the debt a call leaves behind
// (its use counted when it ends, past the one token it reserved) stays in the process's allowance until
// that process's next call or its idle give-back. The bucket that the other processes take from does not
// see it. docs/rate-limits.md: "While the bucket is in debt, no call is admitted"; the bound for calls made
// one after another is the limit + one call's overdraft + refill.
import t from 'tap'
import { noTokens, teamAChat } from './fixtures/rate-buckets.js'
import Fastify from 'fastify'
import { buildGateway } from './fixtures/gateway.js'
import { checkInvariants } from './fixtures/invariants.js'

t.test('two processes on one bucket, calls one after another, estimates without tokens: the limit, one overdraft and the refill at most', async (t) => {
  const one = await buildGateway(t, { gate: noTokens })
  const { default: budgets } = await import('../lib/index.js')
  const { chatCompletions } = await import('../examples/chat-completions.js')
  const two = Fastify()
  await two.register(budgets, { database: one.url, adminToken: 'another-admin-token-0123', gate: { routes: ['/v1/chat/completions'], ...noTokens }, notifications: { intervalMs: 0 } })
  await two.register(chatCompletions, { mockTokenDelayMs: 1 })
  await two.ready()
  t.teardown(async () => await two.close())
  // 80 a minute: the mock's calls use 26 tokens each, so 2 + 3 x 26 = 80 (the first call of each process
  // takes one token; each later call makes good its process's debt of 25 and takes one more).
  const LIMIT = 80
  await one.createBudget({ scopeId: 'team-a', amount: '100', rateLimits: { tokensPerMinute: LIMIT } })
  const started = Date.now()
  const used: number[] = []
  const by: string[] = []
  let refusals = 0
  // One call at a time, each process in turn, each call settled before the next is sent.
  for (let i = 0; i < 20 && refusals < 2; i++) {
    const app = i % 2 === 0 ? one.app : two
    const answer = await teamAChat(app)
    if (answer.statusCode === 429) refusals++
    else {
      t.equal(answer.statusCode, 200)
      used.push(answer.json().usage.total_tokens as number)
      by.push(i % 2 === 0 ? 'one' : 'two')
    }
    // Until the call's use is recorded (a debt it leaves is in the bucket before that): not one.settled(), which
    // can wait for a hot line's lease to go back (idle 2 s), and with it the allowances: calls come closer here.
    for (const deadline = Date.now() + 10_000; Date.now() < deadline;) {
      const [row] = await one.sql<Array<{ n: number }>>`select count(*)::int as n from budget_usage_records`
      if (row!.n >= used.length) break
      await new Promise((resolve) => setTimeout(resolve, 10))
    }
  }
  const refill = (Date.now() - started) / 60_000 * LIMIT
  const total = used.reduce((sum, tokens) => sum + tokens, 0)
  t.ok(refusals > 0, `refused after ${used.length} calls (${by.join(', ')})`)
  t.ok(total <= LIMIT + Math.max(...used) + refill,
    `${total} tokens admitted in ${used.length} calls of ${used.join(', ')} (${Date.now() - started} ms): the limit (${LIMIT}), one call's overdraft (${Math.max(...used)}) and ${refill.toFixed(1)} refilled at most`)
  await one.settled()
  await checkInvariants(t, one.sql)
})
