// Two ways Anthropic bills a Messages call above the model's list price, each bounded by the gate (issue 20,
// review rb's findings 2 and 3): US-only inference (1.1x on Claude Opus 4.6 and later, which the
// workspace's default_inference_geo can choose without the request saying so), and the 1M-context beta's
// long-context rates on Claude Sonnet 4 (past 200K input tokens), which the catalog leaves out.
import t from 'tap'
import { findProvider } from '@pydantic/genai-prices'
import { InvalidFieldError, UnboundedFieldError } from '../lib/kernel/errors.js'
import { billsUsOnlyInference, messagesApi } from '../lib/model-apis/messages.js'
import { fromUnits, toUnits } from '../lib/kernel/money.js'
import { costFromUsage } from '../lib/pricing/estimate.js'
import { assessCatalogModel } from '../lib/pricing/price-catalog.js'
import { costOfTokens, createPriceBook, DEFAULT_PRICES } from '../lib/pricing/pricing.js'

// The gate's default book: the operator's table over the catalog.
const book = createPriceBook(DEFAULT_PRICES)
/** Dollars (a decimal per 1M tokens) times tokens, in money units, exact. */
const billUnits = (perMillion: string, tokens: number): bigint => toUnits(perMillion) * BigInt(tokens) / 1_000_000n
const ask = (extra: Record<string, unknown> = {}) => ({ model: 'claude-opus-4-6', max_tokens: 1000, messages: [{ role: 'user', content: 'Say hello' }], ...extra })
const answer = (usage: Record<string, unknown>, model = 'claude-opus-4-6') =>
  JSON.stringify({ id: 'msg_1', type: 'message', role: 'assistant', model, content: [{ type: 'text', text: 'Hello' }], stop_reason: 'max_tokens', usage: { input_tokens: 20, output_tokens: 1000, cache_creation_input_tokens: 0, cache_read_input_tokens: 0, service_tier: 'standard', ...usage } })
const settle = (payload: string, model = 'claude-opus-4-6') => toUnits(costFromUsage(messagesApi.usageFromBody(payload, model)!, book)!)
/** Whether `run` throws that kind of field error (tap's throws compares shapes, not classes). */
const throwsKind = async (run: () => Promise<unknown>, kind: typeof InvalidFieldError): Promise<boolean> => {
  try {
    await run()
    return false
  } catch (error) {
    return error instanceof kind
  }
}

t.test('a Messages call on Claude Opus 4.6 without inference_geo, run US-only by the workspace default, is reserved and charged at least its 1.1x bill', async (t) => {
  // Anthropic (SDK MessageCreateParams.inference_geo): "If not specified, the workspace's
  // default_inference_geo is used." The response's usage.inference_geo says where inference ran;
  // US-only inference bills 1.1x on Claude Opus 4.6 and later.
  const body = ask()
  const estimate = (await messagesApi.estimate(body, book))
  const usage = messagesApi.usageFromBody(answer({ inference_geo: 'us' }), 'claude-opus-4-6')
  const charged = usage === null ? toUnits(estimate.amount) : toUnits(costFromUsage(usage, book)!)
  // claude-opus-4-6 lists $5 / $25; US-only: 1.1x each.
  const usOnlyBill = billUnits('5.5', 20) + billUnits('27.5', 1000)
  t.ok(charged >= usOnlyBill, `charged ${fromUnits(charged)} USD for a call Anthropic bills ${fromUnits(usOnlyBill)} USD with US-only inference (estimate ${estimate.amount})`)
  const input = estimate.tokens! - 1000
  t.ok(toUnits(estimate.amount) >= billUnits('5.5', input) + billUnits('27.5', 1000), 'the reservation holds the surcharge too: the workspace default is unknown')
})

t.test('inference_geo on a model that bills US-only inference: "global" at list price, "us" and none at 11/10 of it, exact and rounded up', async (t) => {
  const price = book.resolve('claude-opus-4-6')!.price
  const listed = (await messagesApi.estimate(ask({ inference_geo: 'global' }), book))
  const tokens = { inputTokens: listed.tokens! - 1000, outputTokens: 1000 }
  t.equal(listed.amount, costOfTokens(price, tokens), '"global": the list price')
  const surcharged = costOfTokens(price, { ...tokens, priceMultiplier: { numerator: 11, denominator: 10 } })
  t.equal(toUnits(surcharged), (toUnits(listed.amount) * 11n + 9n) / 10n, '11/10 of the list price')
  t.equal((await messagesApi.estimate(ask({ inference_geo: 'us' }), book)).amount, surcharged, '"us"')
  t.equal((await messagesApi.estimate(ask(), book)).amount, surcharged, 'none: the workspace default may be US-only')
  t.equal((await messagesApi.estimate(ask({ inference_geo: null }), book)).amount, surcharged, 'null is none')
  t.equal((await messagesApi.estimate(ask({ inference_geo: 'us' }), book)).atOutputLimit!(1000).amount, surcharged, 'clamp\'s estimates keep it')
  // Rounded up once, from the exact product: 1 input token at $5.5 per 1M is 0.0000055 USD.
  t.equal(costOfTokens({ input: '5', output: '25', maxOutputTokens: 10 }, { inputTokens: 1, outputTokens: 0, priceMultiplier: { numerator: 11, denominator: 10 } }), '0.0000055')
  t.equal(costOfTokens({ input: '0.0000001', output: '25', maxOutputTokens: 10 }, { inputTokens: 1, outputTokens: 0, priceMultiplier: { numerator: 11, denominator: 10 } }), '0.0000000001', 'a fraction of a unit is a unit')

  t.ok(await throwsKind(async () => (await messagesApi.estimate(ask({ inference_geo: 'eu' }), book)), UnboundedFieldError), 'a geography without a known price')
  t.ok(await throwsKind(async () => (await messagesApi.estimate(ask({ inference_geo: 1 }), book)), InvalidFieldError), 'a number')
  t.ok(await throwsKind(async () => (await messagesApi.estimate(ask({ inference_geo: { toString: false } }), book)), InvalidFieldError), 'an object')
})

t.test('the settlement reads where inference ran: "global" at list price; "us", none or anything else at 11/10', async (t) => {
  const list = billUnits('5', 20) + billUnits('25', 1000)
  const surcharged = (list * 11n + 9n) / 10n
  t.equal(settle(answer({ inference_geo: 'global' })), list)
  t.equal(settle(answer({ inference_geo: 'us' })), surcharged)
  t.equal(settle(answer({})), surcharged, 'a response that does not say where it ran: the bound-safe reading')
  t.equal(settle(answer({ inference_geo: null })), surcharged)
  t.equal(settle(answer({ inference_geo: 'moon' })), surcharged)
  t.same(messagesApi.usageFromBody(answer({ inference_geo: 'global' }), 'claude-opus-4-6')!.priceMultiplier, undefined, 'no multiplier at list price')

  // Streamed: message_start carries the usage with inference_geo; message_delta the final counts.
  const stream = (geo: string) => {
    const reader = messagesApi.streamUsage('claude-opus-4-6')
    reader.event('message_start', JSON.stringify({ type: 'message_start', message: { model: 'claude-opus-4-6', usage: { input_tokens: 20, output_tokens: 1, inference_geo: geo } } }))
    reader.event('message_delta', JSON.stringify({ type: 'message_delta', usage: { output_tokens: 1000, inference_geo: null } }))
    return toUnits(costFromUsage(reader.usage()!, book)!)
  }
  t.equal(stream('us'), surcharged, 'a stream run US-only')
  t.equal(stream('global'), list, 'a stream run globally')
  // Cache reads and writes are part of the multiplied bill too.
  const cached = messagesApi.usageFromBody(answer({ inference_geo: 'us', cache_read_input_tokens: 1000, cache_creation_input_tokens: 1000 }), 'claude-opus-4-6')!
  t.equal(toUnits(costFromUsage(cached, book)!), (11n * (list + billUnits('0.5', 1000) + billUnits('6.25', 1000)) + 9n) / 10n)
  t.equal(costFromUsage({ ...cached, priceMultiplier: { numerator: 0, denominator: 10 } }, book), null, 'a multiplier that is not a fraction of positive integers cannot be priced')
  t.equal(costFromUsage({ ...cached, priceMultiplier: { numerator: 11, denominator: 1.5 } }, book), null)
})

t.test('the models that bill US-only inference: Claude Opus 4.6, every Claude model released after it, and Claude names the rule cannot date', async (t) => {
  for (const model of ['claude-opus-4-6', 'claude-opus-4-6-20260205', 'claude-opus-4.6', 'claude-sonnet-4-6', 'claude-opus-4-7', 'claude-opus-4-10', 'claude-opus-5', 'claude-opus-5-5',
    'claude-sonnet-5', 'claude-haiku-5', 'claude-fable-5-1', 'claude-mythos-preview', 'claude-5-opus', 'claude-opus-6@20270101', 'anthropic/claude-opus-4.6']) {
    t.ok(billsUsOnlyInference(model), model)
  }
  for (const model of ['claude-opus-4-5', 'claude-opus-4-5-20251101', 'claude-sonnet-4-5', 'claude-haiku-4-5-20251001', 'claude-sonnet-4-20250514', 'claude-sonnet-4', 'claude-sonnet-4@20250514',
    'claude-opus-4-1', 'claude-opus-4-0', 'claude-4-sonnet', 'claude-3-7-sonnet-latest', 'claude-3-5-sonnet-20241022', 'claude-3-opus-latest', 'claude-2.1', 'claude-instant-1.2', 'claude-v1',
    'gpt-4o', 'deepseek-chat', 'my-claude']) {
    t.notOk(billsUsOnlyInference(model), model)
  }
  // Older models: Anthropic refuses inference_geo (a 400) and bills list price wherever they ran.
  t.ok(await throwsKind(async () => (await messagesApi.estimate(ask({ model: 'claude-sonnet-4-5', inference_geo: 'us' }), book)), InvalidFieldError), 'inference_geo refused on Sonnet 4.5')
  t.ok(await throwsKind(async () => (await messagesApi.estimate(ask({ model: 'claude-sonnet-4-5', inference_geo: 'global' }), book)), InvalidFieldError), '"global" too')
  t.ok(await throwsKind(async () => (await messagesApi.estimate(ask({ model: 'gpt-4o', inference_geo: 'us' }), book)), InvalidFieldError), 'and on a model that is no Claude')
  const old = (await messagesApi.estimate(ask({ model: 'claude-sonnet-4-5' }), book))
  t.equal(old.amount, costOfTokens(book.resolve('claude-sonnet-4-5')!.price, { inputTokens: old.tokens! - 1000, outputTokens: 1000 }), 'no surcharge reserved')
  t.equal(settle(answer({ inference_geo: 'us' }, 'claude-sonnet-4-5'), 'claude-sonnet-4-5'), billUnits('3', 20) + billUnits('15', 1000), 'nor charged')
  // An operator's own entry for a newer model, called by a name of its own, is surcharged by its alias.
  const own = createPriceBook({ opus: { input: '5', output: '25', maxOutputTokens: 128_000, aliases: ['claude-opus-4-7'] } })
  const aliased = (await messagesApi.estimate(ask({ model: 'opus' }), own))
  t.equal(aliased.amount, costOfTokens(own.resolve('opus')!.price, { inputTokens: aliased.tokens! - 1000, outputTokens: 1000, priceMultiplier: { numerator: 11, denominator: 10 } }))
})

t.test('Claude Sonnet 4 past 200K input tokens (the 1M context beta, anthropic-beta: context-1m-2025-08-07) is settled and estimated at its long-context rates', async (t) => {
  // Anthropic pricing, "Long context pricing": with the 1M context window, a Sonnet 4 (and 4.5) request
  // over 200K input tokens bills all its tokens at $6 input / $22.50 output per 1M (cache multipliers on
  // top). The beta header is a header, which no estimate sees, and examples/apis/messages.ts forwards it.
  const price = book.resolve('claude-sonnet-4-20250514')!.price
  t.same(book.resolve('claude-sonnet-4-5')!.price.tiers?.[0]?.aboveInputTokens, 200_000, 'Sonnet 4.5 has the long-context tier')
  t.same(price.tiers, [{ aboveInputTokens: 200_000, input: '6', output: '22.5', cachedInput: '0.6', cacheWrite: '7.5', cacheWrite1h: '12' }], 'Sonnet 4 has it too, every rate')
  t.same(price.tiers, book.resolve('claude-sonnet-4-5')!.price.tiers, 'the same as Sonnet 4.5\'s, which the catalog gives')
  const text = 'x '.repeat(150_000) // 300,000 bytes
  const body = { model: 'claude-sonnet-4-20250514', max_tokens: 64_000, messages: [{ role: 'user', content: text }] }
  const estimate = (await messagesApi.estimate(body, book))
  // A bill within the estimate's own premise (no more input tokens than bytes): 250,000 input tokens.
  const usage = { model: 'claude-sonnet-4-20250514', inputTokens: 250_000, outputTokens: 64_000 }
  const longContextBill = billUnits('6', 250_000) + billUnits('22.5', 64_000)
  t.ok(toUnits(costFromUsage(usage, book)!) >= longContextBill, `settled ${costFromUsage(usage, book)} USD for a call Anthropic bills ${fromUnits(longContextBill)} USD at long-context rates (tiers: ${JSON.stringify(price.tiers)})`)
  t.ok(toUnits(estimate.amount) >= longContextBill, `estimate ${estimate.amount} under that bill`)
  // The cache rates above 200K: reads 0.6, 5-minute writes 7.5, 1-hour writes 12 per 1M.
  const cached = messagesApi.usageFromBody(JSON.stringify({ model: 'claude-sonnet-4-20250514', usage: { input_tokens: 100_000, output_tokens: 0, cache_read_input_tokens: 100_000, cache_creation_input_tokens: 20_000, cache_creation: { ephemeral_5m_input_tokens: 10_000, ephemeral_1h_input_tokens: 10_000 } } }), 'x')!
  t.equal(toUnits(costFromUsage(cached, book)!), billUnits('6', 100_000) + billUnits('0.6', 100_000) + billUnits('7.5', 10_000) + billUnits('12', 10_000))
  const under = { model: 'claude-sonnet-4-0', inputTokens: 200_000, outputTokens: 1000 }
  t.equal(toUnits(costFromUsage(under, book)!), billUnits('3', 200_000) + billUnits('15', 1000), 'at 200,000 input tokens, the base rates')
})

t.test('the long-context table covers each Claude model the catalog prices without the 1M beta\'s tier, and never lowers a catalog rate', async (t) => {
  // Claude on Vertex AI offered the same beta at the same rates; the catalog's Vertex entry lacks it too.
  const vertex = findProvider({ providerId: 'google' })!.models.find((model) => model.id === 'claude-4-sonnet')!
  const assessed = assessCatalogModel('google', vertex.id, vertex.prices as never, vertex.context_window)
  t.same(assessed.price?.tiers, [{ aboveInputTokens: 200_000, input: '6', output: '22.5', cachedInput: '0.6', cacheWrite: '7.5' }], 'Vertex\'s Sonnet 4 (its 1-hour writes at twice the tier\'s input)')
  // Every Claude model Anthropic ran the 1M beta on (Sonnet 4, Sonnet 4.5; Opus 4.6 and Sonnet 4.6 before
  // their 1M window became standard pricing on 13 March 2026) has the tier, at the instants it applied.
  const before = new Date('2026-03-01T00:00:00Z')
  for (const model of ['claude-sonnet-4-0', 'claude-sonnet-4-5', 'claude-opus-4-6', 'claude-sonnet-4-6']) {
    t.equal(book.resolve(model, before)!.price.tiers?.[0]?.aboveInputTokens, 200_000, `${model} on 1 March 2026`)
  }
  t.same(book.resolve('claude-opus-4-6')!.price.tiers, undefined, 'Opus 4.6 now: flat across its 1M window')
  // A catalog rate above the table's at that start is kept (the table only adds what is missing).
  const dearer = assessCatalogModel('anthropic', 'claude-sonnet-4-0', { input_mtok: { base: 3, tiers: [{ start: 200_000, price: 7 }] }, output_mtok: 15 }, 200_000)
  t.match(dearer.price?.tiers, [{ aboveInputTokens: 200_000, input: '7', output: '22.5' }])
})

t.test('the gateway settles a Sonnet 4 call over 200K input tokens, with the anthropic-beta context-1m header forwarded, at its long-context rates', async (t) => {
  const Fastify = (await import('fastify')).default
  const { buildGateway } = await import('./fixtures/gateway.js')
  const { checkInvariants } = await import('./fixtures/invariants.js')
  const seen: Array<string | undefined> = []
  const upstream = Fastify({ bodyLimit: 8 * 1024 * 1024 })
  upstream.post('/v1/messages', async (request) => {
    seen.push(request.headers['anthropic-beta'] as string | undefined)
    // What Anthropic answers a Sonnet 4 call with 250,000 input tokens and max_tokens reached.
    return { id: 'msg_1', type: 'message', role: 'assistant', model: 'claude-sonnet-4-20250514', content: [{ type: 'text', text: 'ok' }], stop_reason: 'max_tokens', stop_sequence: null, usage: { input_tokens: 250_000, output_tokens: 64_000, cache_creation_input_tokens: 0, cache_read_input_tokens: 0 } }
  })
  const upstreamUrl = `${await upstream.listen({ port: 0, host: '127.0.0.1' })}/v1`
  t.teardown(async () => await upstream.close())
  const gateway = await buildGateway(t, { anthropicUpstreamServer: upstreamUrl })
  const budget = await gateway.createBudget({ amount: '100' })
  const response = await gateway.app.inject({
    method: 'POST',
    url: '/v1/messages',
    headers: { 'x-relay-team-id': 'team-a', 'anthropic-beta': 'context-1m-2025-08-07', 'anthropic-version': '2023-06-01' },
    body: { model: 'claude-sonnet-4-20250514', max_tokens: 64_000, messages: [{ role: 'user', content: 'x '.repeat(150_000) }] }
  })
  t.equal(response.statusCode, 200, 'served')
  t.same(seen, ['context-1m-2025-08-07'], 'the beta header reached the upstream')
  await gateway.settled()
  const spent = toUnits((await gateway.status(budget.id)).currentAmount)
  const longContextBill = billUnits('6', 250_000) + billUnits('22.5', 64_000)
  t.ok(spent >= longContextBill, `budget charged ${fromUnits(spent)} USD for a call Anthropic bills ${fromUnits(longContextBill)} USD`)
  await checkInvariants(t, gateway.sql)
})
