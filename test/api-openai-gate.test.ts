// The official openai client (openai 6) through the gate, over real HTTP, on the Responses and
// embeddings APIs: what is served is charged from the provider's usage at the catalog's rates, to the
// unit; a refusal (budget, rate limit, unbounded field) is the client's own typed error and leaves
// nothing recorded or held; a clamp budget lowers max_output_tokens on its way to the upstream; a
// client that hangs up mid-stream is charged no more than its estimate.
import Fastify from 'fastify'
import OpenAI from 'openai'
import t, { type Test } from 'tap'
import { embeddings } from '../examples/apis/embeddings.js'
import { responses } from '../examples/apis/responses.js'
import { fromUnits, toUnits } from '../lib/kernel/money.js'
import { createPriceBook, DEFAULT_PRICES } from '../lib/pricing/pricing.js'
import { buildGateway, spendTo, type GatewayOptions } from './fixtures/gateway.js'
import { checkInvariants } from './fixtures/invariants.js'

type TestContext = Parameters<typeof buildGateway>[0]
type Gateway = Awaited<ReturnType<typeof listening>>

async function listening (t: TestContext, options: GatewayOptions = {}) {
  const gateway = await buildGateway(t, options)
  const address = await gateway.app.listen({ port: 0, host: '127.0.0.1' })
  return { ...gateway, address }
}

const client = (address: string, team: string) =>
  new OpenAI({ baseURL: `${address}/v1`, apiKey: 'unused-by-the-mock', defaultHeaders: { 'x-relay-team-id': team }, maxRetries: 0, timeout: 10_000 })

const book = createPriceBook(DEFAULT_PRICES)

/**
 * What the tokens cost at the catalog's rates (per million tokens), rounded up to the last stored
 * decimal: worked out here in bigint units from the rates alone, not by the library's own costOf.
 */
function expectedCost (model: string, inputTokens: number, outputTokens: number, cachedInputTokens = 0): bigint {
  const { price } = book.resolve(model)!
  t.notOk(price.tiers !== undefined && price.tiers.length > 0, `${model} has one set of rates`)
  const scaled = BigInt(inputTokens - cachedInputTokens) * toUnits(price.input) +
    BigInt(cachedInputTokens) * toUnits(price.cachedInput ?? price.input) + BigInt(outputTokens) * toUnits(price.output)
  return (scaled + 999_999n) / 1_000_000n
}

interface UsageRecord { id: string, amount: string, metadata: Record<string, unknown> }

/** The gateway's usage records not seen before: each call's own, once it has settled. */
function recordReader (gateway: Gateway) {
  const seen = new Set<string>()
  return async (): Promise<UsageRecord[]> => {
    await gateway.settled()
    const rows = await gateway.sql<UsageRecord[]>`select id::text as id, amount::text as amount, metadata from budget_usage_records where source = 'gateway' order by occurred_at, id`
    const fresh = rows.filter((row) => !seen.has(row.id))
    for (const row of fresh) seen.add(row.id)
    return fresh
  }
}

/** The one new record is charged from the usage, exactly the tokens' cost at the catalog's rates. */
function checkCharged (t: Test, records: UsageRecord[], model: string, usage: { input: number, output: number, cached?: number }, label: string): void {
  t.equal(records.length, 1, `${label}: one usage record`)
  const record = records[0]!
  t.match(record.metadata, { costBasis: 'usage', modelId: model, inputTokens: usage.input, outputTokens: usage.output }, `${label}: charged from the usage the response carried`)
  t.equal(record.metadata.cachedInputTokens ?? 0, usage.cached ?? 0, `${label}: cached tokens as the response said`)
  const expected = expectedCost(model, usage.input, usage.output, usage.cached)
  t.ok(expected > 0n, `${label}: the call costs something`)
  t.equal(toUnits(record.amount), expected, `${label}: ${record.amount} is the tokens at the catalog's rates, ${fromUnits(expected)}`)
}

/** The budget headers of a served call, naming the binding budget. */
function checkBudgetHeaders (t: Test, headers: Headers, budgetId: string, label: string): void {
  t.equal(headers.get('x-budget-id'), budgetId, `${label}: x-budget-id`)
  t.match(headers.get('x-budget-remaining'), /^\d+(\.\d+)?$/, `${label}: x-budget-remaining`)
  t.equal(headers.get('x-budget-currency'), 'USD', `${label}: x-budget-currency`)
}

/** The error a call rejects with (the test fails if it resolves). */
async function rejection (t: Test, call: () => Promise<unknown>, label: string): Promise<unknown> {
  try {
    await call()
  } catch (error) {
    return error
  }
  t.fail(`${label}: served, not refused`)
  return null
}

/** The text of a response's message items (the stream helper's final response has no output_text). */
const textOf = (response: OpenAI.Responses.Response) => response.output.flatMap((item) => item.type === 'message' ? item.content : []).map((part) => part.type === 'output_text' ? part.text : '').join('')

const responsesUsage = (usage: OpenAI.Responses.ResponseUsage | undefined) =>
  ({ input: usage!.input_tokens, output: usage!.output_tokens, cached: usage!.input_tokens_details.cached_tokens })

async function nothingRecordedOrHeld (t: Test, gateway: Gateway, label: string): Promise<void> {
  await gateway.settled()
  const [row] = await gateway.sql<Array<{ records: number, held: number }>>`
    select (select count(*)::int from budget_usage_records where source = 'gateway') as records,
           (select count(*)::int from budget_reservations) as held`
  t.same(row, { records: 0, held: 0 }, `${label}: no record charged, nothing held`)
  await checkInvariants(t, gateway.sql)
}

t.test('Responses, plain and streamed (stream: true and the stream helper): charged from the usage, to the unit, with the budget headers', async (t) => {
  const gateway = await listening(t)
  const budget = await gateway.createBudget({ scopeId: 'platform', amount: '1' })
  const openai = client(gateway.address, 'platform')
  const nextRecords = recordReader(gateway)

  const { data: plain, response: plainResponse } = await openai.responses.create({ model: 'gpt-4o-mini', instructions: 'Be brief.', input: 'Hello there', max_output_tokens: 200 }).withResponse()
  t.equal(plainResponse.status, 200)
  t.equal(plain.status, 'completed')
  t.ok(plain.output_text.length > 0)
  checkBudgetHeaders(t, plainResponse.headers, budget.id, 'plain')
  checkCharged(t, await nextRecords(), 'gpt-4o-mini', responsesUsage(plain.usage), 'plain')

  const { data: events, response: streamResponse } = await openai.responses.create({ model: 'gpt-4o-mini', input: 'Tell me about budgets', max_output_tokens: 12, stream: true }).withResponse()
  t.equal(streamResponse.status, 200)
  t.equal(streamResponse.headers.get('content-type'), 'text/event-stream')
  checkBudgetHeaders(t, streamResponse.headers, budget.id, 'stream: true')
  let text = ''
  let final: OpenAI.Responses.Response | undefined
  for await (const event of events) {
    if (event.type === 'response.output_text.delta') text += event.delta
    if (event.type === 'response.completed' || event.type === 'response.incomplete') final = event.response
  }
  t.ok(text.length > 0)
  t.equal(final?.usage?.output_tokens, 12, 'cut at max_output_tokens')
  checkCharged(t, await nextRecords(), 'gpt-4o-mini', responsesUsage(final?.usage), 'stream: true')

  const helper = openai.responses.stream({ model: 'gpt-4o-mini', input: [{ role: 'user', content: 'Hello again' }], max_output_tokens: 100 })
  let deltas = ''
  helper.on('response.output_text.delta', (event) => { deltas += event.delta })
  const helped = await helper.finalResponse()
  t.ok(deltas.length > 0)
  t.equal(textOf(helped), deltas, "the helper's response holds every delta")
  checkCharged(t, await nextRecords(), 'gpt-4o-mini', responsesUsage(helped.usage), 'the stream helper')

  const status = await gateway.status(budget.id)
  const [sum] = await gateway.sql<Array<{ total: string }>>`select sum(amount)::text as total from budget_usage_records where source = 'gateway'`
  t.equal(toUnits(status.currentAmount), toUnits(sum!.total), "the budget's spend is the three records")
  await checkInvariants(t, gateway.sql)
})

t.test('embeddings (a string, a list, token arrays): charged from the usage, to the unit, with the budget headers', async (t) => {
  const gateway = await listening(t)
  const budget = await gateway.createBudget({ scopeId: 'platform', amount: '1' })
  const openai = client(gateway.address, 'platform')
  const nextRecords = recordReader(gateway)
  const inputs: Array<[string, OpenAI.Embeddings.EmbeddingCreateParams['input']]> = [
    ['a string', 'Hello there'],
    ['a list', ['Hello there', 'General Kenobi', 'You are a bold one']],
    ['token arrays', [[1, 2, 3], [4, 5]]],
    ['one token array', [1, 2, 3, 4, 5, 6, 7]]
  ]
  for (const [label, input] of inputs) {
    const { data, response } = await openai.embeddings.create({ model: 'text-embedding-3-small', input, dimensions: 8 }).withResponse()
    t.equal(response.status, 200, label)
    t.equal(data.data.length, typeof input === 'string' || typeof input[0] === 'number' ? 1 : input.length, `${label}: a vector an input`)
    t.ok(data.usage.prompt_tokens > 0)
    checkBudgetHeaders(t, response.headers, budget.id, label)
    checkCharged(t, await nextRecords(), 'text-embedding-3-small', { input: data.usage.prompt_tokens, output: 0 }, label)
  }
  await checkInvariants(t, gateway.sql)
})

t.test('a budget without room: every call is the client\'s APIError 402 (no subclass for 402), code budget_exceeded, naming the budget and its remaining', async (t) => {
  const gateway = await listening(t)
  const budget = await gateway.createBudget({ scopeId: 'platform', amount: '0.001' })
  await spendTo(gateway.app, budget.id, '0.001')
  const openai = client(gateway.address, 'platform')
  const calls: Array<[string, () => Promise<unknown>]> = [
    ['Responses', async () => await openai.responses.create({ model: 'gpt-4o-mini', input: 'Hello there', max_output_tokens: 50 })],
    ['Responses, stream: true', async () => {
      for await (const event of await openai.responses.create({ model: 'gpt-4o-mini', input: 'Hello there', max_output_tokens: 50, stream: true })) void event
    }],
    ['the Responses stream helper', async () => await openai.responses.stream({ model: 'gpt-4o-mini', input: 'Hello there', max_output_tokens: 50 }).finalResponse()],
    ['embeddings', async () => await openai.embeddings.create({ model: 'text-embedding-3-small', input: 'Hello there' })],
    ['embeddings, token arrays', async () => await openai.embeddings.create({ model: 'text-embedding-3-small', input: [[1, 2, 3]] })]
  ]
  for (const [label, call] of calls) {
    const error = await rejection(t, call, label)
    t.ok(error instanceof OpenAI.APIError, `${label}: an APIError`)
    t.equal((error as object).constructor, OpenAI.APIError, `${label}: the SDK has no subclass for 402, so the APIError itself`)
    const apiError = error as InstanceType<typeof OpenAI.APIError>
    t.equal(apiError.status, 402, label)
    t.equal(apiError.code, 'budget_exceeded', label)
    t.equal(apiError.type, 'insufficient_quota', label)
    t.match(apiError.message, /^402 Budget 'budget' has 0 left, less than the estimated cost \d+(\.\d+)? USD$/, `${label}: the budget's reason in the message (${apiError.message})`)
    const body = apiError.error as { budget: { id: string, remaining: string, currency: string, estimatedCost: string } }
    t.equal(body.budget.id, budget.id, `${label}: the error body names the budget`)
    t.equal(toUnits(body.budget.remaining), 0n, `${label}: and its remaining`)
    t.equal(body.budget.currency, 'USD')
    t.ok(toUnits(body.budget.estimatedCost) > 0n, `${label}: and the call's estimate`)
    t.equal(apiError.headers?.get('x-budget-id'), budget.id, `${label}: x-budget-id on the refusal`)
    t.equal(apiError.headers?.get('x-budget-remaining'), '0', `${label}: x-budget-remaining on the refusal`)
  }
  await nothingRecordedOrHeld(t, gateway, 'refused')
})

t.test('rate limits: past requestsPerMinute, every call is the client\'s RateLimitError 429 with retry-after', async (t) => {
  const gateway = await listening(t)
  // Two requests a minute, one back every 30 s: the third call in this test is refused however slow the machine.
  const limits = { rateLimits: { requestsPerMinute: 2 } }
  const responsesBudget = await gateway.createBudget({ scopeId: 'responses', amount: '10', ...limits })
  const embeddingsBudget = await gateway.createBudget({ scopeId: 'embeddings', amount: '10', ...limits })
  const forResponses = client(gateway.address, 'responses')
  const forEmbeddings = client(gateway.address, 'embeddings')
  const nextRecords = recordReader(gateway)

  await forResponses.responses.create({ model: 'gpt-4o-mini', input: 'Hello there', max_output_tokens: 20 })
  for await (const event of await forResponses.responses.create({ model: 'gpt-4o-mini', input: 'Hello there', max_output_tokens: 20, stream: true })) void event
  await forEmbeddings.embeddings.create({ model: 'text-embedding-3-small', input: 'Hello there' })
  await forEmbeddings.embeddings.create({ model: 'text-embedding-3-small', input: [[1, 2, 3]] })
  t.equal((await nextRecords()).length, 4, 'the calls within the limit are served and charged')

  const refused: Array<[string, string, () => Promise<unknown>]> = [
    ['Responses', responsesBudget.id, async () => await forResponses.responses.create({ model: 'gpt-4o-mini', input: 'Hello there', max_output_tokens: 20 })],
    ['Responses, stream: true', responsesBudget.id, async () => {
      for await (const event of await forResponses.responses.create({ model: 'gpt-4o-mini', input: 'Hello there', max_output_tokens: 20, stream: true })) void event
    }],
    ['the Responses stream helper', responsesBudget.id, async () => await forResponses.responses.stream({ model: 'gpt-4o-mini', input: 'Hello there', max_output_tokens: 20 }).finalResponse()],
    ['embeddings', embeddingsBudget.id, async () => await forEmbeddings.embeddings.create({ model: 'text-embedding-3-small', input: 'Hello there' })]
  ]
  for (const [label, budgetId, call] of refused) {
    const error = await rejection(t, call, label)
    t.ok(error instanceof OpenAI.RateLimitError, `${label}: a RateLimitError`)
    const limited = error as InstanceType<typeof OpenAI.RateLimitError>
    t.equal(limited.status, 429, label)
    t.equal(limited.code, 'rate_limit_exceeded', label)
    t.equal(limited.type, 'requests', `${label}: the limited dimension, as OpenAI names it`)
    t.match(limited.error, { budget: { id: budgetId, requestsPerMinute: 2 } }, `${label}: the body names the budget and its limit`)
    const retryMs = Number(limited.headers?.get('retry-after-ms'))
    t.ok(retryMs > 0 && retryMs <= 30_000, `${label}: retry-after-ms ${retryMs}, within the 30 s one request takes to come back`)
    t.equal(limited.headers?.get('retry-after'), String(Math.ceil(retryMs / 1000)), `${label}: retry-after in seconds`)
    t.equal(limited.headers?.get('x-ratelimit-limit-requests'), '2', label)
    t.equal(limited.headers?.get('x-ratelimit-remaining-requests'), '0', label)
  }
  t.same(await nextRecords(), [], 'the refused calls: no record')
  await checkInvariants(t, gateway.sql)
})

/** The example's mock providers served as an upstream, keeping the body of every call they get. */
async function recordingUpstream (t: TestContext) {
  const seen: Array<{ url: string, body: Record<string, unknown> }> = []
  const upstream = Fastify()
  upstream.addHook('preHandler', async (request) => { seen.push({ url: request.url, body: request.body as Record<string, unknown> }) })
  await upstream.register(responses, { mockTokenDelayMs: 1 })
  await upstream.register(embeddings, {})
  const address = await upstream.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(async () => await upstream.close())
  return { url: `${address}/v1`, seen }
}

t.test("nearLimit 'clamp': a Responses call is served with a lower max_output_tokens, which the upstream gets; embeddings are refused, never clamped", async (t) => {
  const upstream = await recordingUpstream(t)
  const gateway = await listening(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const budget = await gateway.createBudget({ scopeId: 'platform', amount: '0.001', nearLimit: 'clamp' })
  // 0.0001 left: 4000 output tokens of gpt-4o-mini cost 0.0024, about 160 fit.
  await spendTo(gateway.app, budget.id, '0.0009')
  const openai = client(gateway.address, 'platform')
  const nextRecords = recordReader(gateway)

  const { data, response } = await openai.responses.create({ model: 'gpt-4o-mini', input: 'Write a long story', max_output_tokens: 4000 }).withResponse()
  t.equal(response.status, 200, 'served, not refused')
  const clamped = Number(response.headers.get('x-budget-clamped-max-tokens'))
  t.ok(Number.isInteger(clamped) && clamped >= 16 && clamped < 4000, `clamped to ${clamped}`)
  t.equal(upstream.seen.length, 1)
  t.match(upstream.seen[0], { url: '/v1/responses', body: { model: 'gpt-4o-mini', input: 'Write a long story', max_output_tokens: clamped } }, 'the upstream was asked for the clamped max_output_tokens')
  t.ok(data.usage!.output_tokens <= clamped, `${data.usage!.output_tokens} output tokens, within the clamp`)
  const [record] = await nextRecords()
  t.match(record?.metadata, { costBasis: 'usage', clampedMaxTokens: clamped })
  t.equal(toUnits(record!.amount), expectedCost('gpt-4o-mini', data.usage!.input_tokens, data.usage!.output_tokens, data.usage!.input_tokens_details.cached_tokens))

  // Streamed, the same: the clamp is in the headers, before the first event.
  const { data: events, response: streamed } = await openai.responses.create({ model: 'gpt-4o-mini', input: 'Write another long story', max_output_tokens: 4000, stream: true }).withResponse()
  const streamClamp = Number(streamed.headers.get('x-budget-clamped-max-tokens'))
  t.ok(Number.isInteger(streamClamp) && streamClamp >= 16 && streamClamp < 4000, `the stream clamped to ${streamClamp}`)
  for await (const event of events) void event
  t.equal(upstream.seen.at(-1)?.body.max_output_tokens, streamClamp, 'the upstream was asked for it')
  await nextRecords()
  const after = await gateway.status(budget.id)
  t.ok(toUnits(after.currentAmount) <= toUnits('0.001'), `within the limit (${after.currentAmount})`)

  // Embeddings have no output to lower: an input larger than the room is refused (thousands of tokens at 0.02 per million, over what is left).
  const room = toUnits('0.001') - toUnits(after.currentAmount)
  const longInput = Array.from({ length: 4000 }, (_, i) => `budget${i % 10}`).join(' ')
  t.ok(expectedCost('text-embedding-3-small', Buffer.byteLength(longInput), 0) > room, 'a token a byte, the input is over the room')
  const seenBefore = upstream.seen.length
  const error = await rejection(t, async () => await openai.embeddings.create({ model: 'text-embedding-3-small', input: longInput }), 'embeddings over the room')
  t.equal((error as object | null)?.constructor, OpenAI.APIError)
  t.match(error, { status: 402, code: 'budget_exceeded' })
  t.equal((error as InstanceType<typeof OpenAI.APIError>).headers?.get('x-budget-clamped-max-tokens') ?? null, null, 'not clamped')
  t.equal(upstream.seen.length, seenBefore, 'the upstream never saw it')
  t.same(await nextRecords(), [], 'no record for the refused embeddings call')
  await checkInvariants(t, gateway.sql)
})

t.test('refused fields: a web_search tool and previous_response_id are the client\'s BadRequestError, unbounded_field, naming the field', async (t) => {
  const gateway = await listening(t)
  await gateway.createBudget({ scopeId: 'platform', amount: '1' })
  const openai = client(gateway.address, 'platform')
  const calls: Array<[string, RegExp, () => Promise<unknown>]> = [
    ['a web_search tool', /^tools\.0\.type$/, async () => await openai.responses.create({ model: 'gpt-4o-mini', input: 'What happened today?', max_output_tokens: 50, tools: [{ type: 'web_search' }] })],
    ['a web_search tool, streamed', /^tools\.0\.type$/, async () => {
      for await (const event of await openai.responses.create({ model: 'gpt-4o-mini', input: 'What happened today?', max_output_tokens: 50, tools: [{ type: 'web_search' }], stream: true })) void event
    }],
    ['previous_response_id', /^previous_response_id$/, async () => await openai.responses.create({ model: 'gpt-4o-mini', input: 'And then?', max_output_tokens: 50, previous_response_id: 'resp_123' })],
    ['previous_response_id, in the stream helper', /^previous_response_id$/, async () => await openai.responses.stream({ model: 'gpt-4o-mini', input: 'And then?', max_output_tokens: 50, previous_response_id: 'resp_123' }).finalResponse()]
  ]
  for (const [label, param, call] of calls) {
    const error = await rejection(t, call, label)
    t.ok(error instanceof OpenAI.BadRequestError, `${label}: a BadRequestError`)
    const bad = error as InstanceType<typeof OpenAI.BadRequestError>
    t.equal(bad.status, 400, label)
    t.equal(bad.code, 'unbounded_field', label)
    t.equal(bad.type, 'invalid_request_error', label)
    t.match(bad.param, param, `${label}: param ${String(bad.param)}`)
  }
  await nothingRecordedOrHeld(t, gateway, 'refused fields')
})

t.test('a client that aborts a streamed Responses call mid-stream: charged no more than its estimate, nothing held', async (t) => {
  const gateway = await listening(t, { mockTokenDelayMs: 30 })
  const budget = await gateway.createBudget({ scopeId: 'platform', amount: '1' })
  const openai = client(gateway.address, 'platform')
  const abort = new AbortController()
  const events = await openai.responses.create({ model: 'gpt-4o-mini', input: 'Tell me everything about budgets', max_output_tokens: 400, stream: true }, { signal: abort.signal })
  let deltas = 0
  const ended = await (async () => {
    for await (const event of events) {
      if (event.type === 'response.output_text.delta' && ++deltas === 3) abort.abort()
      if (event.type === 'response.completed' || event.type === 'response.incomplete') return 'finished'
    }
    return 'ended'
  })().catch((error: unknown) => error)
  // The client's stream ends quietly when its own signal aborts it (openai 6 swallows the AbortError), before the last event.
  t.equal(ended, 'ended', 'the stream ended at the abort, without its final event')
  t.ok(abort.signal.aborted)
  t.ok(deltas >= 3 && deltas < 400, `aborted after ${deltas} deltas of 400`)

  await gateway.settled()
  const records = await gateway.sql<UsageRecord[]>`select id::text as id, amount::text as amount, metadata from budget_usage_records where source = 'gateway'`
  t.equal(records.length, 1, 'the call is charged once')
  const record = records[0]!
  const estimate = toUnits(record.metadata.estimatedCost as string)
  t.ok(toUnits(record.amount) > 0n, `charged ${record.amount}`)
  t.ok(toUnits(record.amount) <= estimate, `${record.amount} is no more than the estimate ${record.metadata.estimatedCost as string}`)
  if (record.metadata.costBasis === 'usage') {
    const usage = record.metadata as { inputTokens: number, outputTokens: number }
    t.ok(usage.outputTokens < 400, `charged for ${usage.outputTokens} output tokens produced, not the 400 asked for`)
    t.equal(toUnits(record.amount), expectedCost('gpt-4o-mini', usage.inputTokens, usage.outputTokens), 'at the catalog\'s rates')
  } else {
    t.equal(record.metadata.costBasis, 'estimate', 'no usage: charged its estimate')
    t.equal(toUnits(record.amount), estimate)
  }
  t.equal(toUnits((await gateway.status(budget.id)).currentAmount), toUnits(record.amount), "the budget's spend is that charge")
  await checkInvariants(t, gateway.sql)
})
