// Review of a5cec52: concurrent calls whose estimate leaves tokens out each take one token when admitted, so
// as many can be in flight as the bucket holds tokens; their use is counted when they end. Whatever path the
// counting takes (slices of a hot budget, trim, the idle give-back, a definitions change while they are in
// flight), the whole use must reach the bucket: its level after = the limit - what was used + the refill.
import t from 'tap'
import { noTokens, bucketTokens } from './fixtures/rate-buckets.js'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'
import { checkInvariants } from './fixtures/invariants.js'

for (const change of [false, true]) {
  t.test(`30 concurrent calls without token estimates${change ? ', a budget changed while they are in flight' : ''}: every token they used reaches the bucket`, async (t) => {
    const gateway = await buildGateway(t, { gate: noTokens, mockTokenDelayMs: 20 })
    const LIMIT = 100
    const budget = await gateway.createBudget({ scopeId: 'team-a', amount: '100', rateLimits: { tokensPerMinute: LIMIT } })
    const other = await gateway.createBudget({ scopeId: 'team-other', amount: '100' })
    const started = Date.now()
    const calls = Array.from({ length: 30 }, async (_, i) => await gateway.app.inject({
      method: 'POST',
      url: '/v1/chat/completions',
      headers: { 'x-relay-team-id': 'team-a' },
      body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: `Say hello ${i}` }], max_tokens: 20, ...(i % 2 === 0 ? { stream: true, stream_options: { include_usage: true } } : {}) }
    }))
    if (change) {
      await new Promise((resolve) => setTimeout(resolve, 150))
      const renamed = await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/${other.id}`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body: { name: 'renamed' } })
      t.equal(renamed.statusCode, 200)
    }
    const answers = await Promise.all(calls)
    await gateway.settled()
    const used = (await gateway.sql<Array<{ tokens: number }>>`
      select coalesce(sum((metadata ->> 'inputTokens')::int + (metadata ->> 'outputTokens')::int), 0)::int as tokens from budget_usage_records`)[0]!.tokens
    const admitted = answers.filter((answer) => answer.statusCode === 200).length
    t.equal(answers.filter((answer) => answer.statusCode !== 200 && answer.statusCode !== 429).length, 0, 'every call served or refused with a 429')
    // Past the idle give-back: what the process holds (its debt included) is in the bucket.
    await new Promise((resolve) => setTimeout(resolve, 3000))
    const level = await bucketTokens(gateway.sql, budget.id)
    const refill = (Date.now() - started) / 60_000 * LIMIT
    t.ok(level <= LIMIT - used + refill + 0.01 && level >= LIMIT - used - 0.01,
      `${admitted} of 30 admitted at once, ${used} tokens used: the bucket holds ${level.toFixed(1)}, ${LIMIT} - ${used} + at most ${refill.toFixed(1)} refilled`)
    t.equal((await gateway.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { 'x-relay-team-id': 'team-a' }, body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 20 } })).statusCode, 429, 'the bucket in debt admits no call')
    await checkInvariants(t, gateway.sql)
  })
}
