// The price book and the worst-case estimate, without I/O: snapshot and alias names, the prototype
// chain, and every part of a chat request that the estimate must bound.
import Fastify from 'fastify'
import t from 'tap'
import { compareMoney } from '../lib/kernel/money.js'
import { costFromUsage, estimateChatCost, worstCaseTokens } from '../lib/pricing/estimate.js'
import { DEFAULT_PRICES, checkPriceTable, costOf, costOfTokens, createPriceBook, type ModelPrice } from '../lib/pricing/pricing.js'
import fc from 'fast-check'
import { requestedOutputTokens, withOutputLimit } from '../lib/model-apis/chat.js'
import { injectedPromptTokens } from '../lib/pricing/injected-tokens.js'
import { buildGateway } from './fixtures/gateway.js'

const book = createPriceBook({ ...DEFAULT_PRICES, 'claude-sonnet-4': { input: '3', output: '15', maxOutputTokens: 64_000, aliases: ['claude-sonnet-4-latest'] } })
const mini = DEFAULT_PRICES['gpt-4o-mini']!

t.test('dated snapshots and aliases resolve to their base entry; unknown names, and the prototype chain, to nothing', async (t) => {
  for (const [name, base] of <Array<[string, string]>>[
    ['gpt-4o-mini', 'gpt-4o-mini'],
    ['gpt-4o-mini-2024-07-18', 'gpt-4o-mini'],
    ['gpt-4o-2024-08-06', 'gpt-4o'],
    ['gpt-4.1-2025-04-14', 'gpt-4.1'],
    ['gpt-4o-2024-11-20', 'gpt-4o'],
    ['claude-sonnet-4-20250514', 'claude-sonnet-4'],
    ['claude-sonnet-4-latest', 'claude-sonnet-4']
  ]) {
    t.equal(book.resolve(name)?.model, base, `${name} is priced as ${base}`)
  }
  for (const name of ['gpt-9', 'gpt-4o-mini-2024-13-18', 'gpt-4o-mini-2024', 'gpt-4o-mini-1399', '__proto__', 'constructor', 'toString', 'hasOwnProperty', '']) {
    t.equal(book.resolve(name), null, `${JSON.stringify(name)} has no price`)
  }
})

t.test('the actual cost of a dated snapshot is its base model\'s; an unknown model or nonsense counts have none', async (t) => {
  t.equal(costFromUsage({ model: 'gpt-4o-mini-2024-07-18', inputTokens: 1_000_000, outputTokens: 1_000_000 }, book), '0.75')
  t.equal(costFromUsage({ model: 'gpt-4o-mini', inputTokens: 10, outputTokens: 3 }, book), '0.0000033')
  t.equal(costFromUsage({ model: '__proto__', inputTokens: 10, outputTokens: 3 }, book), null)
  t.equal(costFromUsage({ model: 'gpt-4o-mini', inputTokens: -1, outputTokens: 3 }, book), null)
  t.equal(costFromUsage({ model: 'gpt-4o-mini', inputTokens: 1.5, outputTokens: 3 }, book), null)
})

const chat = (extra: Record<string, unknown> = {}) => ({ model: 'gpt-4o', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 1000, ...extra })

t.test('the worst case covers every choice, both output limits, and the model\'s maximum when none is given', async (t) => {
  const one = (await worstCaseTokens(chat(), mini))
  t.equal(one.outputTokens, 1000)
  t.equal((await worstCaseTokens(chat({ n: 8 }), mini)).outputTokens, 8000, 'n: 8 is eight answers')
  t.equal((await worstCaseTokens(chat({ n: 8 }), mini)).inputTokens, one.inputTokens, 'and one prompt')
  t.equal((await worstCaseTokens(chat({ max_tokens: undefined, max_completion_tokens: 300 }), mini)).outputTokens, 300)
  t.equal((await worstCaseTokens(chat({ max_tokens: 200, max_completion_tokens: 700 }), mini)).outputTokens, 700, 'both given: the larger')
  t.equal((await worstCaseTokens(chat({ max_tokens: 10_000_000 }), mini)).outputTokens, mini.maxOutputTokens, 'capped at what the model gives')
  t.equal((await worstCaseTokens(chat({ max_tokens: undefined }), mini)).outputTokens, mini.maxOutputTokens)
  t.equal((await worstCaseTokens(chat({ n: null }), mini)).outputTokens, 1000)
})

t.test('tools, functions and response_format schemas are prompt tokens; images cost their worst case, not their URL', async (t) => {
  // A model without a known tokenizer counts bytes; an OpenAI model its tokens (test/estimate-tightness.test.ts).
  const bytes = async (extra: Record<string, unknown> = {}): Promise<number> => (await worstCaseTokens(chat(extra), mini, 'claude-sonnet-4')).inputTokens
  const base = (await bytes())
  const tools = [{ type: 'function', function: { name: 'lookup', description: 'Finds a customer', parameters: { type: 'object', properties: { id: { type: 'string' } } } } }]
  const schema = { type: 'json_schema', json_schema: { name: 'answer', schema: { type: 'object', properties: { text: { type: 'string' } } } } }
  // With tools, a Claude model also bills Anthropic's tool-use system prompt (injected-tokens.ts; at most 530).
  t.equal((await bytes({ tools })), base + Buffer.byteLength(JSON.stringify(tools)) + 530)
  t.equal((await bytes({ functions: tools })), base + Buffer.byteLength(JSON.stringify(tools)) + 530)
  t.equal((await bytes({ response_format: schema })), base + Buffer.byteLength(JSON.stringify(schema)))
  const tokens = (await worstCaseTokens(chat(), mini)).inputTokens
  for (const extra of [{ tools }, { functions: tools }, { response_format: schema }]) {
    t.ok((await worstCaseTokens(chat(extra), mini)).inputTokens > tokens + 20, `${Object.keys(extra)[0]} counted in tokens too`)
  }
  const image = { type: 'image_url', image_url: { url: `data:image/png;base64,${'A'.repeat(100_000)}`, detail: 'high' } }
  const withImages = (await worstCaseTokens(chat({ messages: [{ role: 'user', content: [{ type: 'text', text: 'Hello' }, image, image] }] }), mini)).inputTokens
  t.ok(withImages >= 2 * mini.maxImageTokens!, 'two images at the model\'s worst case each')
  t.ok(withImages < 2 * mini.maxImageTokens! + 200, 'and not the 100 KB of each URL')
})

t.test('what the estimate cannot bound is refused, naming the field', async (t) => {
  const noImages: ModelPrice = { input: '1', output: '1', maxOutputTokens: 100 }
  const cases: Array<[string, Record<string, unknown>, ModelPrice, string]> = [
    ['audio output', chat({ modalities: ['text', 'audio'], audio: { voice: 'alloy', format: 'wav' } }), mini, 'modalities'],
    ['predicted outputs', chat({ prediction: { type: 'content', content: 'x' } }), mini, 'prediction'],
    ['web search', chat({ web_search_options: {} }), mini, 'web_search_options'],
    ['a field from the future', chat({ reasoning: { effort: 'high' } }), mini, 'reasoning'],
    ['a priority tier', chat({ service_tier: 'priority' }), mini, 'service_tier'],
    ['an audio part', chat({ messages: [{ role: 'user', content: [{ type: 'input_audio', input_audio: { data: 'x', format: 'wav' } }] }] }), mini, 'messages.0.content.0.type'],
    ['a file part', chat({ messages: [{ role: 'user', content: [{ type: 'file', file: { file_id: 'f' } }] }] }), mini, 'messages.0.content.0.type'],
    ['an image for a model with no image bound', chat({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'https://x' } }] }] }), noImages, 'messages.0.content.0'],
    ['n of 0', chat({ n: 0 }), mini, 'n'],
    ['n as text', chat({ n: '8' }), mini, 'n'],
    ['n of a thousand', chat({ n: 1000 }), mini, 'n'],
    ['max_tokens as text', chat({ max_tokens: '20' }), mini, 'max_tokens'],
    ['max_completion_tokens of 0', chat({ max_completion_tokens: 0 }), mini, 'max_completion_tokens'],
    ['messages that are not a list', chat({ messages: 'hello' }), mini, 'messages'],
    ['a message that is not an object', chat({ messages: ['hello'] }), mini, 'messages.0'],
    // Server-side tools run at the provider, billed per search and for their results as input.
    ['Anthropic\'s web search tool', chat({ tools: [{ type: 'web_search_20250305', name: 'web_search', max_uses: 50 }] }), mini, 'tools.0.type'],
    ['Gemini\'s Google Search grounding', chat({ tools: [{ type: 'function', function: { name: 'f' } }, { googleSearch: {} }] }), mini, 'tools.1.type'],
    ['a typed entry among legacy functions', chat({ functions: [{ type: 'code_execution' }] }), mini, 'functions.0.type'],
    // A cache write bills 1.25x to 2x the input rate: the mark is refused wherever it is.
    ['cache_control on a part', chat({ messages: [{ role: 'user', content: [{ type: 'text', text: 'hi', cache_control: { type: 'ephemeral', ttl: '1h' } }] }] }), mini, 'messages.0.content.0.cache_control'],
    ['cache_control on a tool', chat({ tools: [{ type: 'function', function: { name: 'f' }, cache_control: { type: 'ephemeral' } }] }), mini, 'tools.0.cache_control'],
    ['cache_control at the top', chat({ cache_control: { type: 'ephemeral' } }), mini, 'cache_control']
  ]
  for (const [name, body, price, field] of cases) {
    await t.rejects(async () => (await worstCaseTokens(body, price)), { code: 'BUDGET_ERR_VALIDATION', field }, name)
  }
  for (const body of [chat({ tools: [{ googleSearch: {} }] }), chat({ cache_control: { type: 'ephemeral' } })]) {
    t.match(await (async () => { try { await worstCaseTokens(body, mini) } catch (error) { return error } })(), { gateCode: 'unbounded_field' }, 'a server tool and a cache mark are unbounded_field')
  }
  await t.resolves(async () => (await worstCaseTokens(chat({ functions: [{ name: 'f', parameters: { type: 'object', properties: {} } }] }), mini)), 'legacy functions are still accepted')
  const unpriced = await (async () => { try { (await estimateChatCost(chat({ model: '__proto__' }), book)) } catch (error) { return error } })()
  t.match(unpriced, { gateCode: 'model_not_priced', field: 'model' }, '__proto__ is a model without a price')
  await t.rejects(async () => (await estimateChatCost(chat({ model: 'constructor' }), book)), { code: 'BUDGET_ERR_VALIDATION', field: 'model' }, 'constructor has no price either')
  await t.rejects(async () => (await estimateChatCost('not an object', book)), { code: 'BUDGET_ERR_VALIDATION', field: 'body' }, 'a body that is not an object')
})

t.test('the n: 8 call that overspent a budget of 0.02 is estimated at eight answers', async (t) => {
  // gpt-4o: 10 per 1M output tokens. The old estimate counted one answer, 0.01 plus the prompt.
  const { amount } = (await estimateChatCost(chat({ n: 8 }), book))
  t.equal(compareMoney(amount, '0.08'), 1, `estimate ${amount} covers the 0.08 that eight answers of 1000 tokens cost, and the prompt`)
})

t.test('Anthropic\'s tool-use system prompt is in the estimate, by model and tool_choice', async (t) => {
  const tiny = [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: {} } } }]
  const claude = async (extra: Record<string, unknown>): Promise<number> => (await worstCaseTokens({ model: 'claude-3-5-sonnet', messages: [{ role: 'user', content: 'hi' }], ...extra }, mini)).inputTokens
  const bare = (await claude({}))
  const tools = Buffer.byteLength(JSON.stringify(tiny))
  // Anthropic's published counts: 346 (auto, none) and 313 (any, tool) for Claude 3.5 and 4 models.
  t.ok((await claude({ tools: tiny })) >= bare + tools + 346, `with a tool: ${(await claude({ tools: tiny }))} >= ${bare} + ${tools} + 346`)
  t.ok((await claude({ tools: tiny, tool_choice: 'required' })) >= bare + tools + 313, 'tool_choice any: its own count')
  const opus3 = async (extra: Record<string, unknown>): Promise<number> => (await worstCaseTokens({ model: 'claude-3-opus-20240229', messages: [{ role: 'user', content: 'hi' }], tools: tiny, ...extra }, mini)).inputTokens
  t.equal((await opus3({})) - (await opus3({ tool_choice: { type: 'function', function: { name: 'f' } } })), 530 - 281, 'Claude 3 Opus: 530 for auto, 281 for a named tool')
  // Anthropic's own tool_choice objects: {type:'auto'} and {type:'none'} get the auto prompt (530 on Claude 3 Opus),
  // {type:'any'} and {type:'tool'} the forced one; a shape of neither kind gets the larger.
  for (const choice of [{ type: 'auto' }, { type: 'none' }, 'none', { type: 'something-new' }, { nonsense: true }]) {
    t.equal(injectedPromptTokens({ tools: tiny, tool_choice: choice }, ['claude-3-opus-20240229']), 530, `${JSON.stringify(choice)}: the auto prompt (530), never the forced 281`)
  }
  for (const choice of [{ type: 'any' }, { type: 'tool', name: 'f' }, 'required', { type: 'function', function: { name: 'f' } }]) {
    t.equal(injectedPromptTokens({ tools: tiny, tool_choice: choice }, ['claude-3-sonnet-20240229']), 235, `${JSON.stringify(choice)} on Claude 3 Sonnet: the forced prompt (235, not auto's 159)`)
  }
  t.equal((await claude({ tools: [] })), bare + 2, 'no tools, no tool prompt (the empty list\'s bytes only)')
  const gpt = async (extra: Record<string, unknown>): Promise<number> => (await worstCaseTokens({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }], ...extra }, mini)).inputTokens
  t.ok((await gpt({ tools: tiny })) - (await gpt({})) < 100, 'OpenAI models: their own tool rendering only')
})

t.test('through the gateway: a hard budget sized to the estimate of a Claude call with one tiny tool holds', async (t) => {
  // An upstream that bills as Anthropic does: every byte of the text and tools a token at most, and the
  // tool-use system prompt (346 tokens with tool_choice auto), and all of max_tokens.
  const upstream = Fastify()
  upstream.post('/v1/chat/completions', async (request) => {
    const body = request.body as { model: string, messages: Array<{ content: string }>, tools?: unknown, max_tokens: number }
    const prompt = 3 + body.messages.reduce((sum, message) => sum + 4 + Buffer.byteLength(message.content), 0) +
      (body.tools === undefined ? 0 : Buffer.byteLength(JSON.stringify(body.tools)) + 346)
    return { id: 'msg_1', object: 'chat.completion', created: 0, model: body.model, choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }], usage: { prompt_tokens: prompt, completion_tokens: body.max_tokens, total_tokens: prompt + body.max_tokens } }
  })
  const url = `${await upstream.listen({ port: 0, host: '127.0.0.1' })}/v1`
  t.teardown(async () => await upstream.close())
  const { call, createBudget, settled, status } = await buildGateway(t, { upstreamServer: url, gate: { sweepIntervalMs: 0 } })
  const body = { model: 'claude-3-5-sonnet', messages: [{ role: 'user', content: 'Say hello' }], tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: {} } } }], max_tokens: 20 }
  const amount = (await estimateChatCost(body, createPriceBook({}))).amount
  const budget = await createBudget({ amount })
  t.equal((await call({ team: 'team-a' }, body)).statusCode, 200)
  await settled()
  const { currentAmount } = await status(budget.id)
  t.ok(compareMoney(currentAmount, amount) <= 0, `spent ${currentAmount} of a limit of ${amount}`)
})

t.test('DeepSeek and Mistral obey max_tokens alone: max_completion_tokens does not cap them, and clamp writes max_tokens', async (t) => {
  const catalog = createPriceBook({})
  for (const model of ['deepseek-chat', 'mistral-large-latest']) {
    const priced = catalog.resolve(model)
    t.equal(priced?.price.outputLimitField, 'max_tokens', `${model}: the catalog says which field caps it`)
    const body = { model, messages: [{ role: 'user', content: 'hi' }] }
    const uncapped = (await worstCaseTokens(body, priced!.price)).outputTokens
    t.equal((await worstCaseTokens({ ...body, max_completion_tokens: 10 }, priced!.price)).outputTokens, uncapped, `${model}: only max_completion_tokens is estimated uncapped (${uncapped})`)
    t.equal((await worstCaseTokens({ ...body, max_tokens: 10, max_completion_tokens: 5000 }, priced!.price)).outputTokens, 10 + (priced!.price.reasoningBeyondLimitTokens ?? 0), `${model}: max_tokens bounds it`)
    t.equal(requestedOutputTokens({ max_completion_tokens: 10 }, priced!.price.maxOutputTokens, priced!.price.outputLimitField), priced!.price.maxOutputTokens, 'clamp reads the field obeyed')
  }
  t.same(withOutputLimit({ max_completion_tokens: 900 }, 50, 'max_tokens'), { max_completion_tokens: 50, max_tokens: 50 }, 'clamp writes max_tokens for such a model')
  t.same(withOutputLimit({}, 50), { max_completion_tokens: 50 }, 'and max_completion_tokens for OpenAI\'s')
  const refused = await (async () => { try { (await estimateChatCost({ model: 'grok-4', messages: [] }, catalog)) } catch (error) { return (error as Error).message } })()
  t.notMatch(String(refused), /it how/, `a provider not checked reads as a sentence: ${String(refused)}`)
})

t.test('cache writes: the price\'s own write rates, else 5/4 and 2x the input rate, rounded up once (never under)', async (t) => {
  const own: ModelPrice = { input: '3', output: '15', cachedInput: '0.3', cacheWrite: '3.75', cacheWrite1h: '6', maxOutputTokens: 64_000 }
  t.equal(costOfTokens(own, { inputTokens: 1_000_000, outputTokens: 0, cacheWriteTokens: 1_000_000 }), '3.75')
  t.equal(costOfTokens(own, { inputTokens: 1_000_000, outputTokens: 0, cacheWrite1hTokens: 1_000_000 }), '6')
  t.equal(costOfTokens(own, { inputTokens: 4_000_000, outputTokens: 1_000_000, cachedInputTokens: 1_000_000, cacheWriteTokens: 1_000_000, cacheWrite1hTokens: 1_000_000 }), '28.05', 'each part at its rate: 3 + 0.3 + 3.75 + 6 + 15')
  const derived: ModelPrice = { input: '3', output: '15', maxOutputTokens: 64_000 }
  t.equal(costOfTokens(derived, { inputTokens: 2_000_000, outputTokens: 0, cacheWriteTokens: 1_000_000, cacheWrite1hTokens: 1_000_000 }), '9.75', 'no write rates: 5/4 of 3 and 2x 3')
  // The smallest stored unit (1e-10) per 1M input tokens: 5/4 of it is not a stored rate; the cost is exact, then rounded up once.
  const tiny: ModelPrice = { input: '0.0000000001', output: '0', maxOutputTokens: 1 }
  t.equal(costOfTokens(tiny, { inputTokens: 1_000_000, outputTokens: 0, cacheWriteTokens: 1_000_000 }), '0.0000000002', '1.25 units: rounded up to 2, never down to 1')
  t.equal(costOfTokens(tiny, { inputTokens: 4_000_000, outputTokens: 0, cacheWriteTokens: 4_000_000 }), '0.0000000005', '4M writes at 1.25 units per 1M: exactly 5')
  const tiered: ModelPrice = { ...derived, tiers: [{ aboveInputTokens: 200_000, input: '6', output: '22.5', cacheWrite1h: '12.5' }] }
  t.equal(costOfTokens(tiered, { inputTokens: 1_000_000, outputTokens: 0, cacheWriteTokens: 500_000, cacheWrite1hTokens: 500_000 }), String(7.5 / 2 + 12.5 / 2), 'the tier of all input: its own 1-hour rate, 5/4 of its input for 5 minutes')
  fc.assert(fc.property(fc.nat(10_000_000), fc.nat(10_000_000), fc.nat(10_000_000), (input, output, cached) => {
    const inputTokens = input + cached
    return costOfTokens(own, { inputTokens, outputTokens: output, cachedInputTokens: cached }) === costOf(own, inputTokens, output, cached)
  }), { numRuns: 300 })
  t.pass('without writes, costOfTokens is costOf')
})

t.test('the actual cost of a usage prices its cache writes; parts that do not fit in the input have none', async (t) => {
  const table = createPriceBook({ 'claude-test': { input: '3', output: '15', cachedInput: '0.3', maxOutputTokens: 64_000 } })
  // Before cache writes were priced, these 2M input tokens cost 6 (all at the input rate).
  t.equal(costFromUsage({ model: 'claude-test', inputTokens: 2_000_000, outputTokens: 0, cacheWriteTokens: 1_000_000, cacheWrite1hTokens: 1_000_000 }, table), '9.75')
  t.equal(costFromUsage({ model: 'claude-test', inputTokens: 3_000_000, outputTokens: 0, cachedInputTokens: 1_000_000, cacheWriteTokens: 1_000_000 }, table), '7.05', '3 + 0.3 + 3.75')
  t.equal(costFromUsage({ model: 'claude-test', inputTokens: 10, outputTokens: 0, cachedInputTokens: 5, cacheWriteTokens: 6 }, table), null, 'reads and writes above the input')
  t.equal(costFromUsage({ model: 'claude-test', inputTokens: 10, outputTokens: 0, cacheWrite1hTokens: -1 }, table), null)
  t.equal(costFromUsage({ model: 'claude-test', inputTokens: 10, outputTokens: 0, cacheWriteTokens: 1.5 }, table), null)
})

t.test('a price table\'s write rates are decimal strings', async (t) => {
  t.equal(checkPriceTable({ m: { input: '3', output: '15', maxOutputTokens: 10, cacheWrite: '3.75', cacheWrite1h: '6' } }), null)
  t.match(checkPriceTable({ m: { input: '3', output: '15', maxOutputTokens: 10, cacheWrite: 3.75 as unknown as string } }), /cacheWrite must be a decimal string/)
  t.match(checkPriceTable({ m: { input: '3', output: '15', maxOutputTokens: 10, tiers: [{ aboveInputTokens: 5, input: '6', output: '20', cacheWrite1h: '-1' }] } }), /tiers\.0\.cacheWrite1h must be a decimal string/)
  // A write rate that fell with more input would make the worst case's tier no bound of a smaller call's writes.
  t.match(checkPriceTable({ m: { input: '3', output: '15', maxOutputTokens: 10, cacheWrite: '10', tiers: [{ aboveInputTokens: 5, input: '6', output: '20' }] } }), /tiers\.0 must not be cheaper/)
  t.equal(checkPriceTable({ m: { input: '3', output: '15', maxOutputTokens: 10, cacheWrite: '3.75', tiers: [{ aboveInputTokens: 5, input: '6', output: '20' }] } }), null, 'the tier\'s own 5/4 of 6 is dearer')
})
