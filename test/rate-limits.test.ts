// Request and token rate limits beside money: token buckets in PostgreSQL shared by every gateway
// process (sql/functions/rate-limits.sql), allowance held in process (lib/gate/rate-limits.ts). Over a limit the gate
// answers OpenAI's 429, which the official client reads and retries after retry-after.
import OpenAI from 'openai'
import t, { type Test } from 'tap'
import Fastify from 'fastify'
import type { BudgetTerms } from '../lib/gate/budget-terms.js'
import { createRateRepository } from '../lib/gate/rate-repository.js'
import { createRateLimits, isRateRefusal, type RateAdmission } from '../lib/gate/rate-limits.js'
import { ADMIN_TOKEN, PREFIX, budgetRequest, buildApp, snapshotTables } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'
import { checkInvariants } from './fixtures/invariants.js'
import { modeFromPrompt, modeMarker, startUpstream } from './fixtures/upstream.js'
import { holdBucketRow, noTokens, teamAChat } from './fixtures/rate-buckets.js'

type Gateway = Awaited<ReturnType<typeof buildGateway>>

t.test('rate limits are stored, read back, and refused with a 400 naming the field when malformed', async (t) => {
  const { app, admin, sql } = await buildApp(t)
  const created = await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ rateLimits: { requestsPerMinute: 600, tokensPerMinute: 2_000_000 } }) })
  t.equal(created.statusCode, 201)
  t.same(created.json().rateLimits, { requestsPerMinute: 600, tokensPerMinute: 2_000_000 })
  t.same((await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeId: 'plain' }) })).json().rateLimits, {}, 'no limits by default')
  const before = await snapshotTables(sql)
  const cases: Array<[unknown, string]> = [
    [{ requestsPerMinute: 0 }, 'rateLimits.requestsPerMinute'],
    [{ requestsPerMinute: -1 }, 'rateLimits.requestsPerMinute'],
    [{ requestsPerMinute: 1.5 }, 'rateLimits.requestsPerMinute'],
    [{ requestsPerMinute: '60' }, 'rateLimits.requestsPerMinute'],
    [{ tokensPerMinute: 1e13 }, 'rateLimits.tokensPerMinute'],
    [{ tokensPerMinute: null }, 'rateLimits.tokensPerMinute'],
    [{ requestsPerHour: 5 }, 'rateLimits'],
    [[], 'rateLimits']
  ]
  for (const [rateLimits, field] of cases) {
    const response = await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ scopeId: 'x', rateLimits }) })
    t.equal(response.statusCode, 400, JSON.stringify(rateLimits))
    t.match(response.json(), { code: 'BUDGET_ERR_VALIDATION', field: new RegExp(`^${field.replace('.', '\\.')}`) }, `names ${field}`)
    t.equal((await admin({ method: 'PUT', url: `${PREFIX}/${created.json().id}`, body: { rateLimits } })).statusCode, 400, 'as an update too')
  }
  const library = budgetRequest({ scopeId: 'lib' }) as Parameters<typeof app.budgetRegistry.createBudget>[0]
  const field = await app.budgetRegistry.createBudget({ ...library, rateLimits: { requestsPerMinute: 0.5 } }).then(() => null, (error: { field?: string }) => error.field)
  t.equal(field, 'rateLimits.requestsPerMinute', 'the library path checks the same')
  t.same(await snapshotTables(sql), before, 'nothing changed')
})

t.test('requests per minute: over the limit, OpenAI\'s 429 with its headers, nothing held or recorded', async (t) => {
  const gateway = await buildGateway(t)
  const budget = await gateway.createBudget({ scopeId: 'team-a', amount: '100', rateLimits: { requestsPerMinute: 5 } })
  const started = Date.now()
  const answers = await Promise.all(Array.from({ length: 8 }, async () => await teamAChat(gateway.app)))
  const elapsed = Date.now() - started
  const statuses = answers.map((answer) => answer.statusCode).sort()
  // The bucket refills 5 a minute: at most one more call's worth can come back in 12 s.
  t.ok(elapsed < 12_000, 'fast enough that the bucket refilled less than one call')
  t.same(statuses, [200, 200, 200, 200, 200, 429, 429, 429], 'five of eight within a minute')
  const refused = answers.find((answer) => answer.statusCode === 429)!
  t.match(refused.json(), { error: { type: 'requests', code: 'rate_limit_exceeded', param: null, message: /Rate limit reached .* requests per minute/, budget: { id: budget.id, requestsPerMinute: 5 } } })
  t.equal(refused.headers['x-ratelimit-limit-requests'], '5')
  t.equal(refused.headers['x-ratelimit-remaining-requests'], '0')
  t.match(refused.headers['x-ratelimit-reset-requests'], /^\d+(ms|s|m\d+s)$/)
  const retryMs = Number(refused.headers['retry-after-ms'])
  t.ok(retryMs > 0 && retryMs <= 12_000, `retry-after-ms ${retryMs}: one request comes back every 12 s`)
  t.equal(refused.headers['retry-after'], String(Math.ceil(retryMs / 1000)))
  t.notOk('x-ratelimit-limit-tokens' in refused.headers, 'no token headers for a budget that does not limit tokens')
  await gateway.settled()
  const [records] = await gateway.sql<Array<{ n: number }>>`select count(*)::int as n from budget_usage_records`
  t.equal(records!.n, 5, 'only the admitted calls are recorded')
  await checkInvariants(t, gateway.sql)
})

t.test('tokens per minute: reserved at the estimate, corrected from the usage at settlement', async (t) => {
  const gateway = await buildGateway(t)
  // The estimate of a call is its prompt's bytes plus the format's tokens plus max_tokens: about 60 + 2000 here.
  await gateway.createBudget({ scopeId: 'team-a', amount: '100', rateLimits: { tokensPerMinute: 4500 } })
  const big = await teamAChat(gateway.app, { max_tokens: 5000 })
  t.equal(big.statusCode, 429, 'a worst case over the whole minute\'s tokens')
  t.match(big.json().error, { type: 'tokens', code: 'rate_limit_exceeded' })
  t.equal(big.headers['x-ratelimit-limit-tokens'], '4500')
  // Two calls of about 2060 reserved tokens fit; a third does not, until the first two's unused tokens come back.
  const first = await teamAChat(gateway.app, { max_tokens: 2000 })
  const second = await teamAChat(gateway.app, { max_tokens: 2000 })
  t.same([first.statusCode, second.statusCode], [200, 200])
  await gateway.settled()
  const used = [first, second].reduce((sum, answer) => sum + (answer.json().usage.total_tokens as number), 0)
  t.ok(used < 200, `the mock used ${used} tokens of the ~4,120 reserved`)
  const third = await teamAChat(gateway.app, { max_tokens: 2000 })
  t.equal(third.statusCode, 200, 'the tokens the first calls did not use went back')
  await gateway.settled()
  await checkInvariants(t, gateway.sql)
})

t.test('an allowance given back is in its bucket before this process takes from it again', async (t) => {
  const { admin, sql } = await buildApp(t)
  const created = await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ rateLimits: { tokensPerMinute: 4500 } }) })
  const budget = created.json()
  const repository = createRateRepository(sql)
  // A give-back whose statement is slow to commit (a loaded database): the next take must not run before it.
  const slow = { ...repository, giveBackRate: async (returns: Parameters<typeof repository.giveBackRate>[0]) => {
    await new Promise((resolve) => setTimeout(resolve, 300))
    await repository.giveBackRate(returns)
  } }
  const rateLimits = createRateLimits(slow, Fastify().log)
  t.teardown(async () => await rateLimits.close())
  const line = [{ budgetId: budget.id, rootId: budget.rootId, name: budget.name, requestsPerMinute: null, tokensPerMinute: 4500 }] as unknown as BudgetTerms[]
  const first = await rateLimits.admit(line, 4000)
  t.notOk(isRateRefusal(first), 'the first call takes 4,000 of 4,500 tokens')
  rateLimits.end(first as RateAdmission, 10)
  rateLimits.forgetAll() // the allowance (3,990 tokens) goes back, slowly
  const second = await rateLimits.admit(line, 4000)
  t.notOk(isRateRefusal(second), 'the second call finds the 3,990 tokens the first did not use')
})

t.test('a call refused for money gives its request back; a call the client leaves early gives it back too', async (t) => {
  const gateway = await buildGateway(t)
  await gateway.createBudget({ scopeId: 'team-a', amount: '0.0001', rateLimits: { requestsPerMinute: 2 } })
  for (let i = 0; i < 4; i++) {
    const response = await teamAChat(gateway.app, { model: 'gpt-4o', max_tokens: 4000 })
    t.equal(response.statusCode, 402, 'refused for money, every time: the refusals did not use the two requests')
  }
  t.equal((await teamAChat(gateway.app, { max_tokens: 5 })).statusCode, 200, 'a call that fits the money still has its request')
  await gateway.settled()
  await checkInvariants(t, gateway.sql)
})

t.test('two gateway processes on one database share the limit', async (t) => {
  const one = await buildGateway(t)
  const { default: budgets } = await import('../lib/index.js')
  const { chatCompletions } = await import('../examples/chat-completions.js')
  const Fastify = (await import('fastify')).default
  const two = Fastify()
  await two.register(budgets, { database: one.url, adminToken: 'another-admin-token-0123', gate: { routes: ['/v1/chat/completions'] }, notifications: { intervalMs: 0 } })
  await two.register(chatCompletions, { mockTokenDelayMs: 1 })
  await two.ready()
  t.teardown(async () => await two.close())
  await one.createBudget({ scopeId: 'team-a', amount: '100', rateLimits: { requestsPerMinute: 10 } })
  const started = Date.now()
  const answers = await Promise.all(Array.from({ length: 30 }, async (_, i) => await teamAChat(i % 2 === 0 ? one.app : two)))
  t.ok(Date.now() - started < 6000, 'within the time the bucket refills less than one request')
  t.equal(answers.filter((answer) => answer.statusCode === 200).length, 10, 'ten of thirty, across both processes')
  t.equal(answers.filter((answer) => answer.statusCode === 429).length, 20)
  await one.settled()
  await two.close()
  await checkInvariants(t, one.sql)
})

t.test('the official openai client sees the 429 and retries after retry-after', async (t) => {
  const gateway = await buildGateway(t)
  const address = await gateway.app.listen({ port: 0, host: '127.0.0.1' })
  // 12 a minute: one request comes back every 5 s, so the calls below meet an empty bucket even on a
  // loaded machine (at 120 a minute, a refill landed between the drain and the call), and the retry waits a few seconds.
  await gateway.createBudget({ scopeId: 'team-a', amount: '100', rateLimits: { requestsPerMinute: 12 } })
  const statuses: number[] = []
  const retryAfterMs: number[] = []
  const openai = (maxRetries: number) => new OpenAI({
    baseURL: `${address}/v1`,
    apiKey: 'unused-by-the-mock',
    defaultHeaders: { 'x-relay-team-id': 'team-a' },
    maxRetries,
    fetch: async (url, init) => {
      const response = await fetch(url, init)
      statuses.push(response.status)
      if (response.status === 429) retryAfterMs.push(Number(response.headers.get('retry-after-ms')))
      return response
    }
  })
  // Drain the bucket.
  while ((await teamAChat(gateway.app)).statusCode === 200);
  const refused = await openai(0).chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 5 })
    .then(() => null, (caught: unknown) => caught)
  t.ok(refused instanceof OpenAI.RateLimitError, 'a RateLimitError')
  const error = refused as InstanceType<typeof OpenAI.RateLimitError>
  t.equal(error.status, 429)
  t.equal(error.code, 'rate_limit_exceeded')
  t.equal(error.type, 'requests')
  t.equal(error.headers.get('x-ratelimit-limit-requests'), '12')

  statuses.length = 0
  retryAfterMs.length = 0
  const started = Date.now()
  const completion = await openai(3).chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 5 })
  const waited = Date.now() - started
  t.ok(completion.usage!.completion_tokens > 0, 'served after retrying')
  t.equal(statuses[0], 429, 'first refused')
  t.equal(statuses[statuses.length - 1], 200, 'then served')
  t.ok(retryAfterMs[0]! > 0 && waited >= retryAfterMs[0]! - 5, `the client waited for the bucket (${waited} ms, told ${retryAfterMs[0]} ms) rather than retrying at once`)
  await gateway.settled()
  await checkInvariants(t, gateway.sql)
})

t.test('battery: misbehaving upstreams and clients that leave take from a rate limit what was served, within the refill', async (t) => {
  const upstream = await startUpstream(t, { mode: modeFromPrompt() })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const address = await gateway.app.listen({ port: 0, host: '127.0.0.1' })
  // 100 a minute, 1.67 a second back: the test's few seconds refill a handful, and it checks within that,
  // so an allowance left behind (a slice is up to an eighth of the bucket, 12 here) or given back twice shows.
  const budget = await gateway.createBudget({ scopeId: 'team-a', amount: '100', rateLimits: { requestsPerMinute: 100 } })
  const modes = ['json', 'json-no-usage', 'error-500', 'error-429', 'sse', 'sse-cut', 'json-unpriced'] as const
  const started = Date.now()
  const outcomes = await Promise.all(Array.from({ length: 60 }, async (_, i) => {
    const leaves = i % 5 === 4
    const abort = new AbortController()
    const mode = leaves ? 'hang' : modes[i % modes.length]!
    const stream = mode.startsWith('sse')
    const response = fetch(`${address}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-relay-team-id': 'team-a' },
      body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: `call ${i} ${modeMarker(mode)}` }], max_tokens: 20, stream, ...(stream ? { stream_options: { include_usage: true } } : {}) }),
      signal: abort.signal
    })
    if (leaves) setTimeout(() => { abort.abort() }, 100)
    try {
      const answer = await response
      await answer.text()
      return answer.status
    } catch {
      return 'left'
    }
  }))
  await gateway.settled()
  await gateway.app.close() // gives back what this process holds of the allowance
  const elapsedSeconds = (Date.now() - started) / 1000
  const served = await gateway.sql<Array<{ n: number }>>`select count(*)::int as n from budget_usage_records`
  const [bucket] = await gateway.sql<Array<{ level: number }>>`
    select (budget_rate_level(k.requests, k.tokens, k.refilled_at, 100, null, k.refilled_at)).requests::float8 as level
    from budget_rate_buckets k where k.budget_id = ${budget.id}`
  const charged = served[0]!.n
  t.ok(charged > 0 && outcomes.filter((outcome) => outcome === 'left').length > 0, `some calls served (${charged}), some clients left`)
  const upstream429 = Array.from({ length: 60 }, (_, i) => i % 5 !== 4 && modes[i % modes.length] === 'error-429').filter(Boolean).length
  t.equal(outcomes.filter((outcome) => outcome === 429).length, upstream429, 'the only 429s are the upstream\'s own: no call was over the limit')
  // What the bucket holds = 100 - the calls charged (each took one request) + what refilled meanwhile.
  const refill = elapsedSeconds * 100 / 60
  t.ok(bucket!.level >= 100 - charged - 0.001 && bucket!.level <= Math.min(100, 100 - charged + refill + 0.001),
    `bucket at ${bucket!.level.toFixed(2)}: 100 - ${charged} charged, + at most ${refill.toFixed(1)} refilled; the calls released gave their request back`)
  await checkInvariants(t, gateway.sql)
})

/**
 * Calls one after another (each settled, then `between(i)`) until one is refused, on a budget of 100 tokens a
 * minute: the tokens admitted stay within the limit, one call's overdraft and the refill.
 */
async function callsUntilRefusedWithin100Tokens (t: Test, gateway: Gateway, between: (i: number) => Promise<void> = async () => {}) {
  const started = Date.now()
  const used: number[] = []
  let refused = false
  for (let i = 0; i < 20 && !refused; i++) {
    const answer = await teamAChat(gateway.app)
    if (answer.statusCode === 429) refused = true
    else used.push(answer.json().usage.total_tokens as number)
    await gateway.settled()
    await between(i)
  }
  t.ok(refused, `refused after ${used.length} calls`)
  const refill = (Date.now() - started) / 60_000 * 100
  const total = used.reduce((sum, tokens) => sum + tokens, 0)
  t.ok(total <= 100 + Math.max(...used) + refill, `${total} tokens admitted: the limit, one call's overdraft and ${refill.toFixed(1)} refilled at most`)
}

t.test('tokens per minute hold with an estimate that leaves tokens out: counted from the usage, and made good before the next call', async (t) => {
  const gateway = await buildGateway(t, { gate: noTokens })
  await gateway.createBudget({ scopeId: 'team-a', amount: '100', rateLimits: { tokensPerMinute: 100 } })
  await callsUntilRefusedWithin100Tokens(t, gateway)
})

t.test('a call that reserves no tokens is refused while the tokens bucket is in debt, also after its process gave its allowance back', async (t) => {
  // An estimate without tokens reserves none; each call's use is counted when it ends, so the bucket runs into
  // debt. Between calls another budget changes: the process gives its allowances back (the debt with them)
  // and starts afresh, as it does when they idle. A fresh allowance must still ask the bucket, not admit for free.
  const gateway = await buildGateway(t, { gate: noTokens })
  await gateway.createBudget({ scopeId: 'team-a', amount: '100', rateLimits: { tokensPerMinute: 100 } })
  const other = await gateway.createBudget({ scopeId: 'team-other', amount: '100' })
  await callsUntilRefusedWithin100Tokens(t, gateway, async (i) => {
    const renamed = await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/${other.id}`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body: { name: `other ${i}` } })
    t.equal(renamed.statusCode, 200)
  })
})

t.test('a limit lowered in this process applies to the very next call, even on a hot budget', async (t) => {
  const gateway = await buildGateway(t)
  const budget = await gateway.createBudget({ scopeId: 'team-a', amount: '100', rateLimits: { requestsPerMinute: 60000 } })
  for (let wave = 0; wave < 5; wave++) await Promise.all(Array.from({ length: 10 }, async () => await teamAChat(gateway.app))) // hot: slices held in process
  const lowered = await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body: { rateLimits: { requestsPerMinute: 2 } } })
  t.equal(lowered.statusCode, 200)
  const started = Date.now()
  const answers: number[] = []
  for (let wave = 0; wave < 10; wave++) answers.push(...(await Promise.all(Array.from({ length: 5 }, async () => (await teamAChat(gateway.app)).statusCode))))
  const refill = (Date.now() - started) / 60_000 * 2
  t.ok(answers.filter((status) => status === 200).length <= 2 + Math.ceil(refill), `${answers.filter((status) => status === 200).length} of 50 admitted after the limit became 2 a minute`)
  await gateway.settled()
  await checkInvariants(t, gateway.sql)
})

t.test('a top-up in flight when the limit is lowered brings nothing of the old limit back: its grant goes to the bucket', async (t) => {
  const gateway = await buildGateway(t)
  const budget = await gateway.createBudget({ scopeId: 'team-a', amount: '100', rateLimits: { requestsPerMinute: 60000 } })
  for (let wave = 0; wave < 5; wave++) await Promise.all(Array.from({ length: 10 }, async () => await teamAChat(gateway.app))) // hot: a slice held in process
  // Another session holds the bucket's row: the next top-up waits on it, taking under the old limit.
  const holder = await holdBucketRow(gateway.sql, budget.id)
  const waitingTakes = async () => Number((await gateway.sql`select count(*)::int as n from pg_stat_activity where wait_event_type = 'Lock' and query like '%budget_rate_take%'`)[0]!.n)
  let calls = 0
  while (await waitingTakes() === 0 && calls < 200) { t.equal((await teamAChat(gateway.app)).statusCode, 200); calls++ }
  t.equal(await waitingTakes(), 1, `a top-up waits on the bucket after ${calls} calls`)
  const lowered = await gateway.app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body: { rateLimits: { requestsPerMinute: 2 } } })
  t.equal(lowered.statusCode, 200)
  const started = Date.now()
  const answers: number[] = []
  // What the process held when the limit changed is given back, though a top-up is in flight...
  for (let call = 0; call < 5; call++) answers.push((await teamAChat(gateway.app)).statusCode)
  await holder.release()
  // ...and what that top-up took under the old limit goes back to the bucket, not to the process.
  while (await waitingTakes() > 0) await new Promise((resolve) => setTimeout(resolve, 1))
  for (let call = 0; call < 15; call++) answers.push((await teamAChat(gateway.app)).statusCode)
  const refill = (Date.now() - started) / 60_000 * 2
  const admitted = answers.filter((status) => status === 200).length
  t.ok(admitted <= 2 + Math.ceil(refill), `${admitted} of 20 admitted after the limit became 2 a minute`)
  await gateway.settled()
  await checkInvariants(t, gateway.sql)
})

t.test('a call whose worst case is more tokens than the budget allows in a minute is told not to retry', async (t) => {
  const gateway = await buildGateway(t)
  const address = await gateway.app.listen({ port: 0, host: '127.0.0.1' })
  await gateway.createBudget({ scopeId: 'team-a', amount: '100', rateLimits: { tokensPerMinute: 1000 } })
  const refused = await teamAChat(gateway.app, { max_tokens: 4000 })
  t.equal(refused.statusCode, 429)
  t.equal(refused.headers['x-should-retry'], 'false')
  t.notOk('retry-after' in refused.headers, 'no wait is named: none would make it fit')
  t.match(refused.json().error, { type: 'tokens', code: 'rate_limit_exceeded', message: /Request too large/ })
  let requests = 0
  const openai = new OpenAI({
    baseURL: `${address}/v1`, apiKey: 'unused-by-the-mock', defaultHeaders: { 'x-relay-team-id': 'team-a' }, maxRetries: 2,
    fetch: async (url, init) => { requests++; return await fetch(url, init) }
  })
  const started = Date.now()
  const error = await openai.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 4000 }).then(() => null, (caught: unknown) => caught)
  t.ok(error instanceof OpenAI.RateLimitError)
  t.equal(requests, 1, 'the official client did not retry')
  t.ok(Date.now() - started < 2000, 'and did not wait')
})
