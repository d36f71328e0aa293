// Anthropic's official client (@anthropic-ai/sdk) through the gate on the Messages API, over real HTTP:
// charged from the provider's usage at the catalog's rates (cache writes and reads included), refusals
// as the client's typed errors carrying the budget's reason, clamp, refused fields, clients that leave
// mid-stream, and upstreams that bill the most a request allows.
import Anthropic from '@anthropic-ai/sdk'
import type { Sql } from 'postgres'
import t from 'tap'
import { messagesApi } from '../lib/model-apis/messages.js'
import { fromUnits, normalizeMoney, toUnits } from '../lib/kernel/money.js'
import { createPriceBook } from '../lib/pricing/pricing.js'
import { buildGateway, spendTo, type GatewayOptions } from './fixtures/gateway.js'
import { checkInvariants } from './fixtures/invariants.js'
import { startMockMessagesUpstream, startWorstCaseMessagesUpstream } from './fixtures/messages-upstream.js'

type TestContext = Parameters<typeof buildGateway>[0]

const MODEL = 'claude-sonnet-4-5'
const catalog = createPriceBook({})

async function listening (t: TestContext, options: GatewayOptions = {}) {
  const gateway = await buildGateway(t, options)
  const address = await gateway.app.listen({ port: 0, host: '127.0.0.1' })
  // Runs before app.close: a connection a client aborted may stay open, and close would wait for it.
  t.teardown(() => { gateway.app.server.closeAllConnections() })
  return { ...gateway, address }
}

/** The SDK appends /v1/messages to its baseURL: the gateway's own address is the base. */
const client = (address: string, team = 'platform') =>
  new Anthropic({ baseURL: address, apiKey: 'unused-by-the-mock', maxRetries: 0, defaultHeaders: { 'x-relay-team-id': team } })

interface UsageRow {
  amount: string
  metadata: { [key: string]: unknown, costBasis: string, estimatedCost: string }
}

async function records (sql: Sql): Promise<UsageRow[]> {
  const rows = await sql<UsageRow[]>`select amount::text as amount, metadata from budget_usage_records where source = 'gateway' order by occurred_at, id`
  return rows.map((row) => ({ ...row, amount: normalizeMoney(row.amount) }))
}

async function held (sql: Sql): Promise<number> {
  const [row] = await sql<Array<{ n: number }>>`select count(*)::int as n from budget_reservations`
  return row!.n
}

/** What a Messages usage costs at the catalog's rates for claude-sonnet-4-5, exact in bigint, rounded up once as the gate rounds. */
interface BilledUsage {
  input_tokens: number | null
  output_tokens: number
  cache_read_input_tokens: number | null
  cache_creation_input_tokens: number | null
  cache_creation?: { ephemeral_5m_input_tokens: number, ephemeral_1h_input_tokens: number } | null
}

function expectedCost (usage: BilledUsage): string {
  const price = catalog.resolve(MODEL)!.price
  const rate = (value: string | undefined): bigint => {
    if (value === undefined) throw new Error('the catalog gives claude-sonnet-4-5 no such rate')
    return toUnits(value)
  }
  const written5m = BigInt(usage.cache_creation?.ephemeral_5m_input_tokens ?? 0)
  const written1h = BigInt(usage.cache_creation?.ephemeral_1h_input_tokens ?? 0)
  const perMillion = BigInt(usage.input_tokens ?? 0) * rate(price.input) +
    BigInt(usage.cache_read_input_tokens ?? 0) * rate(price.cachedInput) +
    written5m * rate(price.cacheWrite) + written1h * rate(price.cacheWrite1h) +
    BigInt(usage.output_tokens) * rate(price.output)
  return fromUnits((perMillion + 999_999n) / 1_000_000n)
}

// Long enough that the mock caches it (a prefix of 1024 tokens or more, at about four bytes a token).
const longSystem = (topic: string, ttl?: '1h'): Anthropic.TextBlockParam[] => [{
  type: 'text',
  text: `You answer questions about ${topic}. `.repeat(160),
  cache_control: ttl === undefined ? { type: 'ephemeral' } : { type: 'ephemeral', ttl }
}]

t.test('create, create with stream: true and the stream() helper: charged from the provider\'s usage, cache writes and reads at their rates', async (t) => {
  const { address, createBudget, status, settled, sql } = await listening(t)
  const budget = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1', enforcement: 'hard' })
  const anthropic = client(address)
  const price = catalog.resolve(MODEL)!.price
  t.ok(toUnits(price.cacheWrite!) > toUnits(price.input) && toUnits(price.input) > toUnits(price.cachedInput!) && toUnits(price.cacheWrite1h!) > toUnits(price.cacheWrite!),
    `the catalog prices writes above the input rate and reads below it (${price.cachedInput} < ${price.input} < ${price.cacheWrite} < ${price.cacheWrite1h})`)

  const paris = longSystem('Paris')
  const question: Anthropic.MessageParam[] = [{ role: 'user', content: 'What is the best museum?' }]

  // Plain: the mock writes the system prompt to its cache (5 minutes).
  const { data: message, response } = await anthropic.messages.create({ model: MODEL, max_tokens: 40, system: paris, messages: question }).withResponse()
  t.equal(response.status, 200)
  t.equal(message.type, 'message')
  t.ok(message.content.length > 0 && message.content[0]!.type === 'text')
  t.ok((message.usage.cache_creation_input_tokens ?? 0) > 0, `the first call writes the cache (${message.usage.cache_creation_input_tokens} tokens)`)
  t.equal(message.usage.cache_read_input_tokens, 0)
  t.equal(response.headers.get('x-budget-id'), budget.id, 'x-budget-id')
  t.equal(response.headers.get('x-budget-currency'), 'USD', 'x-budget-currency')
  t.match(response.headers.get('x-budget-remaining'), /^\d+(\.\d+)?$/, 'x-budget-remaining')
  await settled()

  // stream: true, the same prompt: read from the cache.
  const { data: stream, response: streamResponse } = await anthropic.messages.create({ model: MODEL, max_tokens: 40, system: paris, messages: question, stream: true }).withResponse()
  t.equal(streamResponse.status, 200)
  t.equal(streamResponse.headers.get('x-budget-id'), budget.id, 'x-budget-* headers on a stream')
  t.ok(streamResponse.headers.get('x-budget-remaining') !== null)
  let started: Anthropic.Usage | undefined
  let final: Anthropic.MessageDeltaUsage | undefined
  let text = ''
  const types = new Set<string>()
  for await (const event of stream) {
    types.add(event.type)
    if (event.type === 'message_start') started = event.message.usage
    if (event.type === 'content_block_delta' && event.delta.type === 'text_delta') text += event.delta.text
    if (event.type === 'message_delta') final = event.usage
  }
  t.ok(text.length > 0, 'text arrived')
  t.ok(types.has('message_stop'), 'the stream ran to message_stop')
  t.ok((final!.cache_read_input_tokens ?? 0) > 0, `the second call reads the cache (${final!.cache_read_input_tokens} tokens)`)
  t.equal(final!.cache_creation_input_tokens, 0)
  await settled()

  // The stream() helper, another prompt with a 1-hour mark: written at the 1-hour rate.
  const helper = anthropic.messages.stream({ model: MODEL, max_tokens: 40, system: longSystem('Lyon', '1h'), messages: question })
  let helperEvents = 0
  helper.on('streamEvent', () => { helperEvents++ })
  const helped = await helper.finalMessage()
  t.ok(helperEvents > 3, `the helper read ${helperEvents} events`)
  t.ok((helped.usage.cache_creation?.ephemeral_1h_input_tokens ?? 0) > 0, 'a 1-hour write')
  t.equal(helped.usage.cache_creation?.ephemeral_5m_input_tokens, 0)
  await settled()

  const usages: Array<Parameters<typeof expectedCost>[0]> = [message.usage, { ...final!, cache_creation: started!.cache_creation }, helped.usage]
  const charged = await records(sql)
  t.equal(charged.length, 3, 'one record a call')
  for (const [index, usage] of usages.entries()) {
    const { amount, metadata } = charged[index]!
    const label = ['plain', 'stream: true', 'stream()'][index]!
    t.equal(metadata.costBasis, 'usage', `${label}: charged from the provider's usage`)
    t.equal(metadata.modelId, MODEL)
    const reads = usage.cache_read_input_tokens ?? 0
    const writes = usage.cache_creation_input_tokens ?? 0
    t.equal(metadata.inputTokens, (usage.input_tokens ?? 0) + reads + writes, `${label}: inputTokens = input + cache reads + cache writes`)
    t.equal(metadata.outputTokens, usage.output_tokens)
    t.equal(metadata.cachedInputTokens, reads > 0 ? reads : undefined, `${label}: the reads`)
    t.equal(metadata.cacheWriteTokens, (usage.cache_creation?.ephemeral_5m_input_tokens ?? 0) > 0 ? usage.cache_creation!.ephemeral_5m_input_tokens : undefined, `${label}: the 5-minute writes`)
    t.equal(metadata.cacheWrite1hTokens, (usage.cache_creation?.ephemeral_1h_input_tokens ?? 0) > 0 ? usage.cache_creation!.ephemeral_1h_input_tokens : undefined, `${label}: the 1-hour writes`)
    t.equal(amount, expectedCost(usage), `${label}: ${amount}, at the catalog's rates`)
    t.ok(toUnits(amount) <= toUnits(metadata.estimatedCost), `${label}: within its estimate ${metadata.estimatedCost}`)
  }
  // Each write dearer than a fresh token, each read cheaper: the exact amounts above differ from an all-input pricing.
  const asFreshInput = (usage: Parameters<typeof expectedCost>[0]) => expectedCost({ ...usage, input_tokens: (usage.input_tokens ?? 0) + (usage.cache_read_input_tokens ?? 0) + (usage.cache_creation_input_tokens ?? 0), cache_read_input_tokens: 0, cache_creation_input_tokens: 0, cache_creation: null })
  t.ok(toUnits(charged[0]!.amount) > toUnits(asFreshInput(usages[0]!)), 'a 5-minute write costs more than fresh input')
  t.ok(toUnits(charged[1]!.amount) < toUnits(asFreshInput(usages[1]!)), 'a read costs less than fresh input')
  t.ok(toUnits(charged[2]!.amount) > toUnits(charged[0]!.amount), 'a 1-hour write costs more than a 5-minute one')
  const total = charged.reduce((sum, record) => sum + toUnits(record.amount), 0n)
  t.equal((await status(budget.id)).currentAmount, fromUnits(total), 'the budget spent their sum')
  await checkInvariants(t, sql)
})

t.test('a budget too small: PaymentRequiredError (402), Anthropic\'s billing_error carrying the budget\'s reason; nothing charged, nothing held', async (t) => {
  const { address, createBudget, status, sql } = await listening(t)
  const budget = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '0.001', enforcement: 'hard' })
  const anthropic = client(address)
  const body = { model: MODEL, max_tokens: 4000, messages: [{ role: 'user' as const, content: 'Write a novel' }] }
  for (const [label, call] of [
    ['create', async () => await anthropic.messages.create(body)],
    ['create with stream: true', async () => await anthropic.messages.create({ ...body, stream: true })],
    ['stream()', async () => await anthropic.messages.stream(body).finalMessage()]
  ] as const) {
    const error = await call().then(() => null, (caught: unknown) => caught)
    t.ok(error instanceof Anthropic.PaymentRequiredError, `${label}: PaymentRequiredError`)
    const apiError = error as InstanceType<typeof Anthropic.PaymentRequiredError>
    t.equal(apiError.status, 402)
    t.equal(apiError.type, 'billing_error', 'Anthropic\'s error type')
    t.equal(apiError.errorCode, 'budget_exceeded', 'the gate\'s code, as the client reads it')
    t.ok(typeof apiError.apiMessage === 'string' && apiError.apiMessage.length > 0, `the budget's reason: ${apiError.apiMessage}`)
    t.match(apiError.error, {
      type: 'error',
      error: { type: 'billing_error', code: 'budget_exceeded', message: apiError.apiMessage, budget: { id: budget.id, limit: '0.001', currency: 'USD', estimatedCost: /^\d/ } }
    }, 'Anthropic\'s shape, with the budget\'s figures')
    t.equal(apiError.headers?.get('x-budget-id'), budget.id, 'x-budget-id on the refusal')
    t.equal(apiError.headers?.get('x-budget-remaining'), '0.001')
  }
  t.equal((await records(sql)).length, 0, 'nothing charged')
  t.equal(await held(sql), 0, 'nothing held')
  t.equal((await status(budget.id)).currentAmount, '0')
  await checkInvariants(t, sql)
})

t.test('over a rate limit: RateLimitError (429), rate_limit_error with the budget\'s limit', async (t) => {
  const { address, createBudget, settled, sql } = await listening(t)
  // One request a minute: the second call, seconds later, finds the bucket empty however slow the machine.
  const budget = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '100', rateLimits: { requestsPerMinute: 1 } })
  const anthropic = client(address)
  const body = { model: MODEL, max_tokens: 20, messages: [{ role: 'user' as const, content: 'Hello' }] }
  t.equal((await anthropic.messages.create(body)).type, 'message', 'the first call goes through')
  for (const [label, call] of [
    ['create', async () => await anthropic.messages.create(body)],
    ['create with stream: true', async () => await anthropic.messages.create({ ...body, stream: true })]
  ] as const) {
    const error = await call().then(() => null, (caught: unknown) => caught)
    t.ok(error instanceof Anthropic.RateLimitError, `${label}: RateLimitError`)
    const apiError = error as InstanceType<typeof Anthropic.RateLimitError>
    t.equal(apiError.status, 429)
    t.equal(apiError.type, 'rate_limit_error')
    t.equal(apiError.errorCode, 'rate_limit_exceeded')
    t.match(apiError.error, { type: 'error', error: { type: 'rate_limit_error', code: 'rate_limit_exceeded', budget: { id: budget.id, requestsPerMinute: 1 } } })
    t.ok(Number(apiError.headers?.get('retry-after')) > 0, `retry-after ${apiError.headers?.get('retry-after')}`)
    t.equal(apiError.headers?.get('x-ratelimit-limit-requests'), '1')
  }
  await settled()
  t.equal((await records(sql)).length, 1, 'only the admitted call is recorded')
  await checkInvariants(t, sql)
})

t.test('nearLimit clamp: the upstream gets a lower max_tokens, and a thinking budget Anthropic takes', async (t) => {
  const upstream = await startMockMessagesUpstream(t)
  const { address, createBudget, settled, sql, app } = await listening(t, { anthropicUpstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const budget = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1', nearLimit: 'clamp', enforcement: 'hard' })
  const anthropic = client(address)
  const body: Anthropic.MessageCreateParamsNonStreaming = {
    model: MODEL, max_tokens: 16_000, thinking: { type: 'enabled', budget_tokens: 12_000 }, messages: [{ role: 'user', content: 'Write a long story' }]
  }
  const fits = async (sent: Record<string, unknown>, room: string): Promise<boolean> => toUnits((await messagesApi.estimate(sent, catalog)).amount) <= toUnits(room)

  for (const [spent, room, thinkingStays] of [['0.95', '0.05', true], ['0.985', '0.015', false]] as const) {
    await spendTo(app, budget.id, spent)
    t.notOk(await fits({ ...body }, room), `${room} left: the call as asked does not fit`)
    const { data: message, response } = await anthropic.messages.create(body).withResponse()
    t.equal(message.type, 'message', 'answered, not refused')
    const clamped = Number(response.headers.get('x-budget-clamped-max-tokens'))
    t.ok(clamped >= 16 && clamped < 16_000, `x-budget-clamped-max-tokens: ${clamped}`)
    const sent = upstream.bodies.at(-1)!
    t.equal(sent.max_tokens, clamped, 'the upstream was asked for the clamped max_tokens')
    t.ok(await fits(sent, room), 'the body sent upstream fits the room')
    t.notOk(await fits({ ...sent, max_tokens: clamped + 1, ...(thinkingStays ? {} : { thinking: { type: 'disabled' } }) }, room), 'one token more would not: the largest that fits')
    const thinking = sent.thinking as { type: string, budget_tokens?: number }
    if (thinkingStays) {
      t.equal(thinking.type, 'enabled', `${clamped} tokens leave room to think`)
      t.ok(thinking.budget_tokens! < clamped && thinking.budget_tokens! >= 1024, `budget_tokens ${thinking.budget_tokens}: below max_tokens, at least Anthropic's 1,024`)
    } else {
      t.ok(clamped <= 1024, `${clamped} tokens: no room for Anthropic's smallest thinking budget`)
      t.same(thinking, { type: 'disabled' }, 'thinking turned off')
    }
    await t.resolves(async () => (await messagesApi.estimate(sent, catalog)), 'a body the Messages API takes')
    await settled()
  }
  const charged = await records(sql)
  t.same(charged.map((record) => record.metadata.clampedMaxTokens), upstream.bodies.map((sent) => sent.max_tokens), 'each record says it was clamped')
  t.ok(charged.every((record) => record.metadata.costBasis === 'usage'))
  await checkInvariants(t, sql)
})

t.test('fields whose cost cannot be bounded: BadRequestError, invalid_request_error, the gate\'s code unbounded_field', async (t) => {
  const { address, createBudget, sql } = await listening(t)
  await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '10' })
  const anthropic = client(address)
  const cases: Array<[string, Anthropic.MessageCreateParamsNonStreaming, string]> = [
    ['a server tool (web search)', {
      model: MODEL, max_tokens: 100, messages: [{ role: 'user', content: 'Search the news' }], tools: [{ type: 'web_search_20250305', name: 'web_search', max_uses: 2 }]
    }, 'tools.0.type'],
    ['a document block', {
      model: MODEL, max_tokens: 100, messages: [{ role: 'user', content: [{ type: 'document', source: { type: 'text', media_type: 'text/plain', data: 'A contract.' } }, { type: 'text', text: 'Summarize it' }] }]
    }, 'messages.0.content.0.type']
  ]
  for (const [label, body, param] of cases) {
    const error = await anthropic.messages.create(body).then(() => null, (caught: unknown) => caught)
    t.ok(error instanceof Anthropic.BadRequestError, `${label}: BadRequestError`)
    const apiError = error as InstanceType<typeof Anthropic.BadRequestError>
    t.equal(apiError.status, 400)
    t.equal(apiError.type, 'invalid_request_error')
    t.equal(apiError.errorCode, 'unbounded_field', `${label}: the gate's code as errorCode`)
    t.match(apiError.error, { type: 'error', error: { type: 'invalid_request_error', code: 'unbounded_field', param } }, `${label}: names ${param}`)
  }
  t.equal((await records(sql)).length, 0, 'nothing charged')
  t.equal(await held(sql), 0, 'nothing held')
  await checkInvariants(t, sql)
})

t.test('a client that leaves a stream before message_delta is charged its estimate; nothing stays held', async (t) => {
  // Slow enough that the reply (8 + the prompt's ~500 tokens) is far from done when the client leaves.
  const upstream = await startMockMessagesUpstream(t, { mockTokenDelayMs: 50 })
  const { address, createBudget, status, settled, sql } = await listening(t, { anthropicUpstreamServer: upstream.url })
  const budget = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1', enforcement: 'hard' })
  const body: Anthropic.MessageCreateParamsStreaming = { model: MODEL, max_tokens: 2000, messages: [{ role: 'user', content: 'Tell me everything. '.repeat(100) }], stream: true }
  const stream = await client(address).messages.create(body)
  const seen: string[] = []
  let deltas = 0
  for await (const event of stream) {
    seen.push(event.type)
    if (event.type === 'content_block_delta' && ++deltas === 3) break // leaving the loop aborts the request
  }
  t.ok(seen.includes('message_start'), 'the stream had begun')
  t.notOk(seen.includes('message_delta'), 'the client left before message_delta')
  await settled()
  const [record, ...more] = await records(sql)
  t.equal(more.length, 0, 'one record')
  t.equal(record!.metadata.costBasis, 'estimate', 'no final usage: charged its estimate')
  t.equal(record!.amount, normalizeMoney(record!.metadata.estimatedCost), 'the amount is the estimate')
  t.equal(record!.amount, (await messagesApi.estimate(body, catalog)).amount, 'the request\'s worst case at the catalog\'s rates')
  t.equal((await status(budget.id)).currentAmount, record!.amount)
  t.equal(await held(sql), 0, 'nothing held')
  await checkInvariants(t, sql)
})

t.test('an upstream billing the most a request allows: the charge never exceeds the estimate; a hard budget holds under 20 concurrent calls', async (t) => {
  const upstream = await startWorstCaseMessagesUpstream(t)
  const { address, createBudget, status, settled, sql } = await listening(t, { anthropicUpstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const anthropic = client(address)
  const tools: Anthropic.Tool[] = [{ name: 'weather', description: 'Current weather for a city', input_schema: { type: 'object', properties: { city: { type: 'string' } } }, cache_control: { type: 'ephemeral' } }]
  const bodies: Anthropic.MessageCreateParamsNonStreaming[] = [
    { model: MODEL, max_tokens: 300, messages: [{ role: 'user', content: 'Hello' }] },
    { model: MODEL, max_tokens: 500, system: 'Be brief. 日本語でも.', messages: [{ role: 'user', content: [{ type: 'text', text: 'What is the weather?', cache_control: { type: 'ephemeral', ttl: '1h' } }] }], tools },
    { model: MODEL, max_tokens: 3000, thinking: { type: 'enabled', budget_tokens: 2000 }, cache_control: { type: 'ephemeral' }, messages: [{ role: 'user', content: 'Think it over. '.repeat(50) }, { role: 'assistant', content: 'Done.' }, { role: 'user', content: 'And?' }] }
  ]
  const solo = await createBudget({ scopeType: 'team', scopeId: 'solo', amount: '10', enforcement: 'hard' })
  const soloClient = client(address, 'solo')
  // One at a time, each settled before the next, so the records come in the upstream's order.
  for (const body of bodies) {
    await soloClient.messages.create(body)
    await settled()
    const stream = await soloClient.messages.create({ ...body, stream: true })
    for await (const event of stream) void event
    await settled()
  }
  const single = await records(sql)
  t.equal(single.length, 6, 'every call charged')
  for (const [index, { amount, metadata }] of single.entries()) {
    const usage = upstream.calls[index]!.usage
    t.equal(metadata.costBasis, 'usage', `call ${index}: from the worst-case usage`)
    t.equal(metadata.outputTokens, usage.output_tokens, `call ${index}: all of max_tokens billed`)
    t.equal(amount, expectedCost(usage), `call ${index}: ${amount} at the catalog's rates`)
    t.ok(toUnits(amount) <= toUnits(metadata.estimatedCost), `call ${index}: ${amount} <= its estimate ${metadata.estimatedCost}`)
  }
  t.ok(single.some((record) => (record.metadata.cacheWrite1hTokens as number) > 0) && single.some((record) => (record.metadata.cacheWriteTokens as number) > 0), 'writes at both ttls were billed')
  t.ok(toUnits((await status(solo.id)).currentAmount) <= toUnits('10'))

  // 20 at once against room for eight and a half estimates.
  const body = bodies[1]!
  const estimate = toUnits((await messagesApi.estimate(body, catalog)).amount)
  const limit = fromUnits(estimate * 17n / 2n)
  const budget = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: limit, enforcement: 'hard' })
  const results = await Promise.all(Array.from({ length: 20 }, async (_, index) => {
    try {
      if (index % 2 === 0) return (await anthropic.messages.create(body)).type
      const stream = await anthropic.messages.create({ ...body, stream: true })
      let stopped = false
      for await (const event of stream) stopped ||= event.type === 'message_stop'
      return stopped ? 'message' : 'cut'
    } catch (error) {
      return error instanceof Anthropic.PaymentRequiredError ? 'refused' : `unexpected: ${String(error)}`
    }
  }))
  const served = results.filter((result) => result === 'message').length
  const refused = results.filter((result) => result === 'refused').length
  t.equal(served + refused, 20, `served or refused, nothing else: ${JSON.stringify(results)}`)
  // Each is held at its estimate and billed its worst case: however the calls interleave, the last one
  // admitted found an estimate's room after the others' bills.
  const billed = toUnits(expectedCost(upstream.calls[2]!.usage))
  const mostServed = Number((toUnits(limit) - estimate) / billed) + 1
  t.ok(served >= 1 && served <= mostServed, `${served} served (at most ${mostServed} can be)`)
  t.ok(refused >= 20 - mostServed, `${refused} refused`)
  await settled()
  const concurrent = (await records(sql)).slice(single.length)
  t.equal(concurrent.length, served, 'a record for each call served')
  t.ok(concurrent.every((record) => record.metadata.costBasis === 'usage' && toUnits(record.amount) <= toUnits(record.metadata.estimatedCost)), 'each charged its worst-case usage, within its estimate')
  const spent = toUnits((await status(budget.id)).currentAmount)
  t.ok(spent <= toUnits(limit), `spent ${fromUnits(spent)} of ${limit}`)
  t.equal(spent, concurrent.reduce((sum, record) => sum + toUnits(record.amount), 0n), 'the budget spent what was recorded')
  await checkInvariants(t, sql)
})
