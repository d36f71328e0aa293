// The default price source, @pydantic/genai-prices' catalog: exact rates for dated snapshots and other
// providers' models, the operator's table over it, cached input at its own rate, prices by the call's
// instant, tiers, and a model neither knows refused at the gate.
import { calcPrice, waitForUpdate } from '@pydantic/genai-prices'
import Fastify from 'fastify'
import t from 'tap'
import { compareMoney, normalizeMoney } from '../lib/kernel/money.js'
import { costFromUsage, estimateChatCost } from '../lib/pricing/estimate.js'
import { UNBOUNDED_OUTPUT_TOKENS, assessCatalogModel } from '../lib/pricing/price-catalog.js'
import { DEFAULT_PRICES, checkPriceTable, costOf, createPriceBook, pricesAt } from '../lib/pricing/pricing.js'
import { buildGateway } from './fixtures/gateway.js'

const catalog = createPriceBook({})

/** The catalog's published rate per 1M tokens, as its data writes it. */
function published (model: string, key: string, at = new Date()): string {
  const rate = calcPrice({}, model, { timestamp: at })!.model_price[key]
  if (typeof rate !== 'number') throw new Error(`${model} has no flat ${key}`)
  return normalizeMoney(String(rate))
}

t.test('the default catalog prices a dated OpenAI snapshot as its model, at the published rates, exactly', async (t) => {
  const priced = catalog.resolve('gpt-4o-mini-2024-07-18')!
  t.equal(priced.model, 'gpt-4o-mini', 'the snapshot is gpt-4o-mini')
  t.match(priced.price, { input: published('gpt-4o-mini', 'input_mtok'), output: published('gpt-4o-mini', 'output_mtok'), cachedInput: published('gpt-4o-mini', 'cache_read_mtok') })
  t.match(priced.price, { input: '0.15', output: '0.6', cachedInput: '0.075' }, 'OpenAI\'s list prices')
  t.equal(costFromUsage({ model: 'gpt-4o-mini-2024-07-18', inputTokens: 1_000_000, outputTokens: 1_000_000 }, catalog), '0.75')
  // 1234 x 0.15 + 567 x 0.6 = 525.3 per 1M: the float product would be 0.0005252999999999999.
  t.equal(costFromUsage({ model: 'gpt-4o-mini-2024-07-18', inputTokens: 1234, outputTokens: 567 }, catalog), '0.0005253')
  t.equal(costFromUsage({ model: 'gpt-4o-mini', inputTokens: 10, outputTokens: 3 }, catalog), '0.0000033', 'rounded up to the tenth decimal')
  for (const model of ['gpt-4o', 'gpt-4o-mini', 'gpt-4.1', 'gpt-4.1-mini', 'gpt-4.1-nano']) {
    const { price } = catalog.resolve(model)!
    const table = DEFAULT_PRICES[model]!
    t.same([price.input, price.output, price.maxOutputTokens, price.maxImageTokens], [table.input, table.output, table.maxOutputTokens, table.maxImageTokens],
      `${model}: the catalog agrees with DEFAULT_PRICES, limits included`)
  }
  t.same(catalog.resolve('gpt-4o-2024-05-13')?.price, { input: '5', output: '15', maxOutputTokens: 4096, maxImageTokens: 1445 }, 'the first gpt-4o snapshot is its own, dearer model')
})

t.test('the default catalog prices Anthropic models exactly, under the catalog\'s names', async (t) => {
  const sonnet = catalog.resolve('claude-3-5-sonnet-20241022')!
  t.equal(sonnet.model, 'claude-3-5-sonnet')
  t.match(sonnet.price, { input: published('claude-3-5-sonnet', 'input_mtok'), output: published('claude-3-5-sonnet', 'output_mtok'), cachedInput: published('claude-3-5-sonnet', 'cache_read_mtok') })
  t.match(sonnet.price, { input: '3', output: '15', cachedInput: '0.3', maxOutputTokens: 8192 })
  t.equal(sonnet.price.maxImageTokens, undefined, 'no image bound is known: image parts are refused')
  const four = catalog.resolve('claude-sonnet-4-20250514')!
  t.match(four, { model: 'claude-sonnet-4-0', price: { input: '3', output: '15', maxOutputTokens: 64_000 } })
  t.equal(catalog.resolve('claude-sonnet-4')?.model, 'claude-sonnet-4-0', 'the undated name too')
  t.equal(costFromUsage({ model: 'claude-3-5-sonnet-latest', inputTokens: 2000, outputTokens: 300 }, catalog), '0.0105', '2000 x 3 + 300 x 15 per 1M')
})

t.test('the operator\'s table wins over the catalog, model by model', async (t) => {
  const book = createPriceBook({ 'gpt-4o-mini': { input: '0.1', output: '0.5', maxOutputTokens: 1000 }, 'claude-sonnet-4': { input: '2', output: '10', maxOutputTokens: 5000 } })
  t.match(book.resolve('gpt-4o-mini'), { model: 'gpt-4o-mini', price: { input: '0.1', output: '0.5' } })
  t.match(book.resolve('gpt-4o-mini-2024-07-18'), { model: 'gpt-4o-mini', price: { input: '0.1' } }, 'and the snapshots the catalog knows for it')
  t.match(book.resolve('claude-sonnet-4-20250514'), { model: 'claude-sonnet-4', price: { input: '2' } }, 'an entry named otherwise than the catalog takes the model its name resolves to')
  t.match(book.resolve('gpt-4o'), { model: 'gpt-4o', price: { input: '2.5' } }, 'a model the table does not name: the catalog')
  t.same(book.models().map(({ model }) => model), ['gpt-4o-mini', 'claude-sonnet-4'], 'models() lists the table, not the catalog')
  t.equal(costFromUsage({ model: 'gpt-4o-mini-2024-07-18', inputTokens: 1_000_000, outputTokens: 1_000_000 }, book), '0.6')
})

t.test('cached input tokens cost the cache-read rate; nonsense counts are not priced', async (t) => {
  // 600k fresh at 0.15 and 400k cached at 0.075 per 1M.
  t.equal(costFromUsage({ model: 'gpt-4o-mini', inputTokens: 1_000_000, cachedInputTokens: 400_000, outputTokens: 0 }, catalog), '0.12')
  t.equal(costFromUsage({ model: 'claude-3-5-sonnet', inputTokens: 1000, cachedInputTokens: 1000, outputTokens: 0 }, catalog), '0.0003', 'all cached: 0.3 per 1M')
  const noCacheRate = createPriceBook({ local: { input: '1', output: '2', maxOutputTokens: 10 } })
  t.equal(costFromUsage({ model: 'local', inputTokens: 1_000_000, cachedInputTokens: 400_000, outputTokens: 0 }, noCacheRate), '1', 'a price without a cache rate: cached tokens at the input rate')
  t.equal(costFromUsage({ model: 'gpt-4o-mini', inputTokens: 10, cachedInputTokens: 11, outputTokens: 0 }, catalog), null, 'more cached than input')
  t.equal(costFromUsage({ model: 'gpt-4o-mini', inputTokens: 10, cachedInputTokens: -1, outputTokens: 0 }, catalog), null)
  t.equal(checkPriceTable({ x: { input: '1', output: '2', cachedInput: '1.5', maxOutputTokens: 10 } }), "prices['x'].cachedInput must not be more than input")
  t.equal(checkPriceTable({ x: { input: '1', output: '2', cachedInput: '0.1', maxOutputTokens: 10 } }), null)
})

t.test('a call is priced at the rates in force at its instant', async (t) => {
  // OpenAI cut o3's prices on 2025-06-10: 10 and 40 per 1M before, 2 and 8 from then on.
  const before = new Date('2025-06-09T23:59:59.999Z')
  const after = new Date('2025-06-10T00:00:00Z')
  t.match(catalog.resolve('o3', before)?.price, { input: published('o3', 'input_mtok', before), output: '40' })
  t.match(catalog.resolve('o3-2025-04-16', after)?.price, { input: published('o3', 'input_mtok', after), output: '8' })
  const usage = { model: 'o3', inputTokens: 1_000_000, outputTokens: 1_000_000 }
  t.equal(costFromUsage(usage, catalog, before), '50')
  t.equal(costFromUsage(usage, catalog, after), '10')
  t.equal(costFromUsage(usage, pricesAt(catalog, before)), '50', 'a book fixed at the call\'s instant, as the gate keeps it until settlement')
  // DeepSeek's off-peak window (16:30 to 00:30 UTC) halves its rates: a time-of-day constraint.
  t.match(catalog.resolve('deepseek-chat', new Date('2026-01-01T12:00:00Z'))?.price, { input: '0.27', output: '1.1' })
  t.match(catalog.resolve('deepseek-chat', new Date('2026-01-01T20:00:00Z'))?.price, { input: '0.135', output: '0.55' })
})

t.test('tiered prices: the tier of all the call\'s input tokens, exactly; the estimate at the worst case\'s tier', async (t) => {
  const { model, price } = catalog.resolve('claude-sonnet-4-5')!
  t.equal(model, 'claude-sonnet-4-5')
  t.same(price.tiers, [{ aboveInputTokens: 200_000, input: '6', output: '22.5', cachedInput: '0.6', cacheWrite: '7.5', cacheWrite1h: '12' }])
  t.equal(price.cacheWrite, '3.75', 'the catalog\'s 5-minute cache-write rate, for the calls that ask for writes')
  t.equal(price.cacheWrite1h, '6', 'and its 1-hour rate')
  t.equal(costOf(price, 200_000, 1000), '0.615', 'at 200k input: 3 and 15 per 1M')
  t.equal(costOf(price, 200_001, 1000), '1.222506', 'above it, every token at 6 and 22.5')
  t.equal(costOf(price, 200_001, 0, 100_001), '0.6600006', 'cached tokens at the tier\'s cache rate')
  // The estimate prices its worst-case input at that input's tier: never under a smaller call at a lower one.
  for (const actual of [199_999, 200_000, 200_001, 250_000]) {
    t.ok(compareMoney(costOf(price, 250_000, 10), costOf(price, actual, 10)) >= 0, `a worst case of 250k input tokens bounds ${actual}`)
  }
  t.equal(checkPriceTable({ x: { input: '1', output: '2', maxOutputTokens: 10, tiers: [{ aboveInputTokens: 100, input: '0.5', output: '2' }] } }), "prices['x'].tiers.0 must not be cheaper than the rates before it")
})

t.test('what the catalog cannot bound is not priced from it; limits it does not give are bounded soundly', async (t) => {
  t.equal(catalog.resolve('sonar'), null, 'a fee per request (Perplexity) is not in a token usage')
  t.equal(catalog.resolve('gpt-4o-mini-search-preview'), null, 'a search model bills a search on every call')
  t.equal(catalog.resolve('gpt-4')?.price.maxOutputTokens, 8192, 'no known output limit: the context window')
  t.equal(catalog.resolve('mistral-large-latest')?.price.maxOutputTokens, UNBOUNDED_OUTPUT_TOKENS, 'no context window either: only max_tokens bounds a call')
  for (const name of ['gpt-9', '__proto__', 'constructor', 'toString', ' gpt-4o', 'gpt-4o-mini-2024-13-18', '']) {
    t.equal(catalog.resolve(name), null, `${JSON.stringify(name)} has no price`)
  }
  const euro = createPriceBook({ 'gpt-4o-mini': { input: '0.14', output: '0.55', maxOutputTokens: 16_384 } }, { catalogPrices: false })
  t.equal(euro.resolve('gpt-4o'), null, 'catalog prices off (another currency): only the table prices')
  t.match(euro.resolve('gpt-4o-mini-2024-07-18'), { model: 'gpt-4o-mini', price: { input: '0.14' } }, 'and the catalog still names the snapshots')
})

/** An OpenAI-compatible upstream that answers with a dated snapshot and cached prompt tokens, as JSON or as a stream. */
async function cachingUpstream (t: { teardown: (fn: () => unknown) => void }) {
  const upstream = Fastify()
  const usage = { prompt_tokens: 1000, completion_tokens: 10, total_tokens: 1010, prompt_tokens_details: { cached_tokens: 600 } }
  upstream.post('/v1/chat/completions', async (request, reply) => {
    const base = { id: 'chatcmpl-1', created: 0, model: 'gpt-4o-mini-2024-07-18' }
    if ((request.body as { stream?: boolean }).stream !== true) {
      return { ...base, object: 'chat.completion', choices: [{ index: 0, message: { role: 'assistant', content: 'hi' }, finish_reason: 'stop' }], usage }
    }
    reply.raw.writeHead(200, { 'content-type': 'text/event-stream' })
    reply.raw.write(`data: ${JSON.stringify({ ...base, object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content: 'hi' }, finish_reason: null }] })}\n\n`)
    reply.raw.write(`data: ${JSON.stringify({ ...base, object: 'chat.completion.chunk', choices: [], usage })}\n\n`)
    reply.raw.end('data: [DONE]\n\n')
    return reply
  })
  const url = `${await upstream.listen({ port: 0, host: '127.0.0.1' })}/v1`
  t.teardown(async () => await upstream.close())
  return url
}

t.test('through the gateway: cached tokens in the usage, JSON or streamed, are charged at the cache rate', async (t) => {
  const { call, createBudget, settled, sql } = await buildGateway(t, { upstreamServer: await cachingUpstream(t) })
  await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1' })
  for (const stream of [false, true]) {
    t.equal((await call({ team: 'platform' }, { stream })).statusCode, 200)
  }
  await settled()
  const records = await sql<Array<{ amount: string, metadata: Record<string, unknown> }>>`select amount::text, metadata from budget_usage_records order by metadata ->> 'requestId'`
  // 400 fresh x 0.15 + 600 cached x 0.075 + 10 out x 0.6 = 111 per 1M.
  t.same(records.map((record) => normalizeMoney(record.amount)), ['0.000111', '0.000111'], 'JSON and stream alike')
  for (const record of records) {
    t.match(record.metadata, { modelId: 'gpt-4o-mini', upstreamModel: 'gpt-4o-mini-2024-07-18', inputTokens: 1000, cachedInputTokens: 600, outputTokens: 10, costBasis: 'usage' })
  }
})

t.test('through the gateway: a model neither the table nor the catalog knows is refused with 400 model_not_priced', async (t) => {
  const { call, createBudget, upstreamCalls } = await buildGateway(t, { upstream: true })
  await createBudget({ scopeType: 'team', scopeId: 'platform' })
  for (const model of ['no-such-model-anywhere', 'sonar', 'gpt-4o-mini-2024-13-18']) {
    const response = await call({ team: 'platform' }, { model })
    t.equal(response.statusCode, 400, model)
    t.match(response.json(), { error: { type: 'invalid_request_error', code: 'model_not_priced', param: 'model' } }, `${model}: model_not_priced`)
  }
  t.equal((await call({ team: 'platform' }, { model: 'claude-3-5-sonnet-20241022' })).statusCode, 200, 'a catalog model the table does not name goes through')
  t.equal(upstreamCalls(), 1, 'only the priced call reached the provider')
})

t.test('search models bill a search on every call: refused by the catalog, and no override of their base model prices them', async (t) => {
  for (const name of ['gpt-4o-search-preview', 'gpt-4o-search-preview-2025-03-11', 'gpt-4o-mini-search-preview', 'gpt-4o-mini-search-preview-2025-03-11']) {
    t.equal(catalog.resolve(name), null, `${name}: not priced from the catalog`)
    t.match(catalog.refusal?.(name), /web search/, `${name}: refused with the reason`)
  }
  // DEFAULT_PRICES names gpt-4o-mini, the catalog model gpt-4o-mini-search-preview is found under.
  const table = createPriceBook(DEFAULT_PRICES)
  t.equal(table.resolve('gpt-4o-mini-search-preview'), null, 'an entry for gpt-4o-mini does not price its search model')
  t.equal(table.resolve('gpt-4o-mini-search-preview-2025-03-11'), null, 'nor its dated name')
  t.match(table.resolve('gpt-4o-mini-2024-07-18'), { model: 'gpt-4o-mini' }, 'the entry still takes gpt-4o-mini\'s snapshots')
  await t.rejects(async () => (await estimateChatCost({ model: 'gpt-4o-mini-search-preview', messages: [{ role: 'user', content: 'news?' }] }, table)),
    { code: 'BUDGET_ERR_VALIDATION', gateCode: 'model_not_priced', field: 'model', message: /web search/ })

  // An entry naming the search model exactly prices it, and must give the fee of each call.
  const search = { input: '2.5', output: '10', maxOutputTokens: 16_384 }
  t.match(checkPriceTable({ 'gpt-4o-search-preview': search }), /needs perRequest/, 'an entry without the fee is refused at registration')
  t.match(checkPriceTable({ mine: { ...search, aliases: ['gpt-4o-mini-search-preview'] } }), /needs perRequest/, 'by alias too')
  t.equal(checkPriceTable({ 'gpt-4o-search-preview': { ...search, perRequest: '0.035' } }), null)
  const priced = createPriceBook({ 'gpt-4o-search-preview': { ...search, perRequest: '0.035' } })
  const estimate = (await estimateChatCost({ model: 'gpt-4o-search-preview', messages: [{ role: 'user', content: 'news?' }], max_tokens: 100, n: 2 }, priced))
  t.ok(compareMoney(estimate.amount, '0.07') > 0, `the estimate holds the fee for each choice: ${estimate.amount}`)
  t.equal(costFromUsage({ model: 'gpt-4o-search-preview', inputTokens: 1_000_000, outputTokens: 0 }, priced), '2.535', 'a settled call pays its fee once')
})

t.test('through the gateway: a search model is refused, with DEFAULT_PRICES or the catalog alone', async (t) => {
  for (const prices of [{}, DEFAULT_PRICES]) {
    const { call, createBudget, upstreamCalls } = await buildGateway(t, { upstream: true, gate: { prices } })
    await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '0.01' })
    for (const model of ['gpt-4o-search-preview', 'gpt-4o-mini-search-preview']) {
      const response = await call({ team: 'platform' }, { model })
      t.equal(response.statusCode, 400, `${model}, ${Object.keys(prices).length} table entries`)
      t.match(response.json(), { error: { code: 'model_not_priced', param: 'model' } })
    }
    t.equal(upstreamCalls(), 0, 'nothing reached the provider')
  }
})

t.test('every catalog model is priced with a rule that bounds its output, or refused with a reason', async (t) => {
  const providers = (await waitForUpdate())!
  let priced = 0
  let refused = 0
  for (const provider of providers) {
    for (const model of provider.models) {
      // Every set of rates the model has had or will have (a change on a date, an off-peak window).
      const variants = Array.isArray(model.prices) ? model.prices.map((conditional) => conditional.prices) : [model.prices]
      for (const rates of variants) {
        const verdict = assessCatalogModel(provider.id, model.id, rates, model.context_window)
        const name = `${provider.id}/${model.id}`
        if (verdict.price === null) {
          refused++
          if (!(typeof verdict.refused === 'string' && verdict.refused.length > 10)) t.fail(`${name}: refused without a reason`)
          continue
        }
        priced++
        if (!(typeof verdict.outputBound === 'string' && verdict.outputBound.length > 10)) t.fail(`${name}: priced without an output rule`)
        if (!(Number.isSafeInteger(verdict.price.maxOutputTokens) && verdict.price.maxOutputTokens > 0)) t.fail(`${name}: no output cap`)
        if (checkPriceTable({ [model.id]: verdict.price }) !== null && !/needs perRequest|reasoningBeyondLimitTokens/.test(checkPriceTable({ [model.id]: verdict.price })!)) {
          t.fail(`${name}: a price the table check refuses: ${checkPriceTable({ [model.id]: verdict.price })}`)
        }
      }
    }
  }
  t.ok(priced > 100 && refused > 100, `${priced} prices with an output rule, ${refused} refusals with a reason`)
  // The cases that made the rule: a chain of thought past max_tokens, and search on every call.
  t.match(catalog.resolve('deepseek-reasoner')?.price, { reasoningBeyondLimitTokens: 32_768 })
  t.equal(catalog.resolve('deepseek-chat')?.price.reasoningBeyondLimitTokens, undefined, 'deepseek-chat does not think')
  t.match(catalog.refusal?.('grok-4-0709'), /not established/, 'a provider whose output rule is not checked: refused')
})

t.test('deepseek-reasoner: the estimate holds the chain of thought billed past max_tokens', async (t) => {
  const body = { model: 'deepseek-reasoner', messages: [{ role: 'user', content: 'Prove it' }], max_tokens: 10 }
  const { amount } = (await estimateChatCost(body, catalog))
  // What the R1-era API billed for such a call: 10 tokens of answer and a 32K chain of thought.
  const billed = costFromUsage({ model: 'deepseek-reasoner', inputTokens: 20, outputTokens: 10 + 32_000 }, catalog)!
  t.ok(compareMoney(amount, billed) >= 0, `estimate ${amount} >= billed ${billed}`)
  t.equal(checkPriceTable({ 'deepseek-reasoner': { input: '0.55', output: '2.19', maxOutputTokens: 8192 } }), "prices['deepseek-reasoner'].reasoningBeyondLimitTokens must be at least 32768: deepseek-reasoner bills reasoning past max_tokens")

  const { call, createBudget, upstreamCalls } = await buildGateway(t, { upstream: true })
  await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '0.0001' })
  const response = await call({ team: 'platform' }, { model: 'deepseek-reasoner', max_tokens: 10 })
  t.equal(response.statusCode, 402, 'a $0.0001 hard budget cannot hold a call that may bill 32K tokens of reasoning')
  t.equal(upstreamCalls(), 0)
})
