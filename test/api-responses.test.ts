// The Responses API module, without I/O: the worst case of realistic bodies against the tokenizer's own
// counts, every refused field, usage from a JSON body and from a stream fed event by event, the error
// body, and properties over arbitrary input (nothing but the three field errors is ever thrown).
import fc from 'fast-check'
import t from 'tap'
import { countTokens as o200k } from 'gpt-tokenizer/encoding/o200k_base'
import { InvalidFieldError, ModelNotPricedError, UnboundedFieldError } from '../lib/kernel/errors.js'
import { responsesApi, worstCaseTokens } from '../lib/model-apis/responses.js'
import { compareMoney } from '../lib/kernel/money.js'
import { DEFAULT_PRICES, createPriceBook, type ModelPrice } from '../lib/pricing/pricing.js'
import { MAX_TOKENIZED_WORK } from '../lib/pricing/tokens.js'
import { openAIPromptTokens } from './fixtures/openai-tokens.js'

const ORDINARY = { disallowedSpecial: new Set<string>() }
const tokens = (text: string): number => o200k(text, ORDINARY)
const bytes = (text: string): number => Buffer.byteLength(text, 'utf8')

const custom: ModelPrice = { input: '1', output: '2', maxOutputTokens: 8192 }
const book = createPriceBook({ ...DEFAULT_PRICES, 'my-local-model': custom }, { catalogPrices: false })
const mini = DEFAULT_PRICES['gpt-4o-mini']!
const nano = DEFAULT_PRICES['gpt-4.1-nano']!

type Body = Record<string, unknown>

const instructions = 'You are a careful assistant. Answer in British English, briefly, and cite the tool results you use.'
const question = 'What is the weather in Paris and in Lyon today? Then tell me which city is warmer, and by how much — in °C.'
const args = { city: 'Paris', units: 'celsius', days: 1 }
const result = JSON.stringify({ temperature: 21.5, conditions: 'partly cloudy', humidity: 0.62, wind: { speed: 12, direction: 'SW' } })
const summary = 'The user wants two forecasts; I should call get_weather for each city, then compare the temperatures.'
const encrypted = 'gAAAAABn' + 'QmFzZTY0ZW5jcnlwdGVkcmVhc29uaW5n'.repeat(40)
const answer = 'Paris is 21.5 °C and partly cloudy; Lyon is 24 °C and sunny, so Lyon is 2.5 °C warmer.'
const schema = { type: 'object', properties: { city: { type: 'string', description: 'The city name' }, units: { type: 'string', enum: ['celsius', 'fahrenheit'] }, days: { type: 'integer' } }, required: ['city'], additionalProperties: false }
const tool = { type: 'function', name: 'get_weather', description: 'The forecast for a city', parameters: schema, strict: true }

/** A tool loop with every accepted item type: what a client sends on its third step. */
function realisticBody (model = 'gpt-4o-mini'): Body {
  return {
    model,
    instructions,
    input: [
      { role: 'user', content: question },
      { type: 'reasoning', id: 'rs_1', summary: [{ type: 'summary_text', text: summary }], encrypted_content: encrypted },
      { type: 'function_call', id: 'fc_1', call_id: 'call_1', name: 'get_weather', arguments: JSON.stringify(args), status: 'completed' },
      { type: 'function_call', id: 'fc_2', call_id: 'call_2', name: 'get_weather', arguments: JSON.stringify({ ...args, city: 'Lyon' }), status: 'completed' },
      { type: 'function_call_output', call_id: 'call_1', output: result },
      { type: 'function_call_output', call_id: 'call_2', output: [{ type: 'input_text', text: result }] },
      { type: 'message', id: 'msg_1', role: 'assistant', status: 'completed', content: [{ type: 'output_text', text: answer, annotations: [] }] },
      { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'Thanks. And tomorrow?' }] }
    ],
    tools: [tool],
    tool_choice: 'auto',
    parallel_tool_calls: true,
    max_tool_calls: 4,
    reasoning: { effort: 'low', summary: 'auto' },
    text: { format: { type: 'json_schema', name: 'forecast', schema, strict: true }, verbosity: 'low' },
    include: ['reasoning.encrypted_content'],
    store: false,
    stream: true,
    stream_options: { include_obfuscation: false },
    metadata: { team: 'weather' },
    temperature: 0.2,
    top_p: 1,
    top_logprobs: 0,
    truncation: 'disabled',
    user: 'u-1',
    service_tier: 'flex',
    prompt_cache_key: 'weather-v1',
    safety_identifier: 'hash-1',
    max_output_tokens: 800
  }
}

/** The text the model reads of realisticBody, whole: a floor that any true count stays above. */
const texts = [instructions, question, summary, 'get_weather', JSON.stringify(args), 'get_weather', JSON.stringify({ ...args, city: 'Lyon' }), result, result, answer, 'Thanks. And tomorrow?', JSON.stringify(tool), JSON.stringify(schema)]

t.test('a realistic tool loop: above every token the model reads, and not wildly above', async (t) => {
  const body = realisticBody()
  const { inputTokens, outputTokens } = (await worstCaseTokens(body, mini))
  // Each of 9 items (instructions included) framed by at least 3 tokens, as chat's messages are.
  const floor = texts.reduce((sum, text) => sum + tokens(text), 0) + bytes(encrypted) + 9 * 3
  t.ok(inputTokens >= floor, `${inputTokens} >= ${floor}`)
  t.ok(inputTokens <= 2 * floor, `${inputTokens} is within twice the text's own count (${floor})`)
  t.equal(outputTokens, 800)
  const estimate = (await responsesApi.estimate(body, book))
  t.equal(estimate.model, 'gpt-4o-mini')
  t.equal(estimate.tokens, inputTokens + outputTokens)
})

t.test('above what OpenAI bills for the same conversation in chat form (the chat oracle), plus the encrypted reasoning', async (t) => {
  const { inputTokens } = (await worstCaseTokens(realisticBody(), mini))
  const call = (id: string, city: string) => ({ id, type: 'function', function: { name: 'get_weather', arguments: JSON.stringify({ ...args, city }) } })
  const chat = {
    model: 'gpt-4o-mini',
    messages: [
      { role: 'developer', content: instructions },
      { role: 'user', content: question },
      { role: 'assistant', content: summary },
      { role: 'assistant', content: null, tool_calls: [call('call_1', 'Paris'), call('call_2', 'Lyon')] },
      { role: 'tool', tool_call_id: 'call_1', content: result },
      { role: 'tool', tool_call_id: 'call_2', content: result },
      { role: 'assistant', content: answer },
      { role: 'user', content: 'Thanks. And tomorrow?' }
    ],
    tools: [{ type: 'function', function: { name: tool.name, description: tool.description, parameters: schema, strict: true } }],
    response_format: { type: 'json_schema', json_schema: { name: 'forecast', schema, strict: true } }
  }
  const oracle = openAIPromptTokens(chat, 0)! + bytes(encrypted)
  t.ok(inputTokens >= oracle, `${inputTokens} >= ${oracle}`)
  t.ok(inputTokens <= 1.5 * oracle, `${inputTokens} within 1.5 times ${oracle}`)
})

t.test('past the tokenizer work budget, text counts a token a byte: still a bound', async (t) => {
  let seed = 7
  const letter = (): string => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return String.fromCharCode(97 + (seed % 26)) }
  const words = Array.from({ length: 30_000 }, () => Array.from({ length: 6 }, letter).join('')).join(' ')
  t.ok(bytes(words) * 4 > MAX_TOKENIZED_WORK, 'the text is past the work budget')
  const body = { model: 'gpt-4o-mini', instructions: words.slice(0, 50_000), input: [{ role: 'user', content: words }, { type: 'function_call_output', call_id: 'c', output: words }] }
  const { inputTokens } = (await worstCaseTokens(body, mini))
  const floor = tokens(words.slice(0, 50_000)) + 2 * tokens(words)
  t.ok(inputTokens >= floor, `${inputTokens} >= ${floor}`)
})

t.test('each part of the input adds to the bound', async (t) => {
  const base = (await worstCaseTokens(realisticBody(), mini)).inputTokens
  const longer = async (change: (body: Body) => void): Promise<number> => {
    const body = realisticBody()
    change(body)
    return (await worstCaseTokens(body, mini)).inputTokens
  }
  const extra = ' and one more sentence that the model reads as input.'.repeat(20)
  // Less a few tokens where the added text merges with what it joins (in a tool, both of its renderings).
  const atLeast = tokens(extra) - 4
  const items = (body: Body): Body[] => body.input as Body[]
  t.ok(await longer((body) => { body.instructions = instructions + extra }) >= base + atLeast, 'instructions')
  t.ok(await longer((body) => { items(body)[0]!.content = question + extra }) >= base + atLeast, 'a message')
  t.ok(await longer((body) => { (items(body)[1]!.summary as Body[])[0]!.text = summary + extra }) >= base + atLeast, 'a reasoning summary')
  t.ok(await longer((body) => { items(body)[1]!.content = [{ type: 'reasoning_text', text: extra }] }) >= base + atLeast, 'reasoning text')
  t.equal(await longer((body) => { items(body)[1]!.encrypted_content = encrypted + 'x'.repeat(1000) }), base + 1000, 'encrypted reasoning, a token a byte')
  t.ok(await longer((body) => { items(body)[2]!.arguments = JSON.stringify({ ...args, note: extra }) }) >= base + atLeast, 'function-call arguments')
  t.ok(await longer((body) => { items(body)[4]!.output = JSON.stringify({ ...JSON.parse(result) as Body, note: extra }) }) >= base + atLeast, 'a function-call output')
  t.ok(await longer((body) => { ((items(body)[6]!.content as Body[])[0]!).text = answer + extra }) >= base + atLeast, 'an output_text part')
  const tooled = await longer((body) => { (body.tools as Body[])[0]!.description = 'The forecast' + extra })
  t.ok(tooled >= base + atLeast, `a function tool: ${tooled} >= ${base} + ${atLeast}`)
  t.ok(await longer((body) => { ((body.text as Body).format as Body).description = extra }) >= base + atLeast, 'the text format')
  t.ok(await longer((body) => { body.tool_choice = { type: 'function', name: 'get_weather' } }) > base, 'a forced tool choice')
  t.ok(await longer((body) => { items(body).push({ role: 'user', content: '' }) }) >= base + 4, 'an empty message still has its framing')
})

t.test('a model whose tokenizer is unknown: every byte of the text, JSON-encoded', async (t) => {
  const body = realisticBody('my-local-model')
  const { inputTokens, outputTokens } = (await worstCaseTokens(body, custom))
  const floor = texts.reduce((sum, text) => sum + bytes(JSON.stringify(text)), 0) + bytes(encrypted)
  t.ok(inputTokens >= floor, `${inputTokens} >= ${floor}`)
  t.equal(outputTokens, 800)
  // Multi-byte text counts its bytes, not its characters.
  const cjk = '東京の天気はどうですか'.repeat(50)
  const plain = (await worstCaseTokens({ model: 'my-local-model', input: cjk }, custom)).inputTokens
  t.ok(plain >= bytes(cjk), `${plain} >= ${bytes(cjk)} bytes`)
  t.equal((await responsesApi.estimate(body, book)).model, 'my-local-model')
})

t.test('a string input, and none', async (t) => {
  const text = 'Write a haiku about budgets.'
  const { inputTokens, outputTokens } = (await worstCaseTokens({ model: 'gpt-4o-mini', input: text }, mini))
  t.ok(inputTokens >= tokens(text) + 3)
  t.equal(outputTokens, mini.maxOutputTokens, 'no cap: the model maximum')
  const empty = (await worstCaseTokens({ model: 'gpt-4o-mini', instructions: null, input: null }, mini))
  t.ok(empty.inputTokens > 0)
})

t.test('images: each at the model worst case, refused without one, and at original detail', async (t) => {
  const image = (detail: string): Body => ({ type: 'input_image', detail, image_url: 'data:image/png;base64,' + 'A'.repeat(50_000) })
  const one = { model: 'gpt-4.1-nano', input: [{ role: 'user', content: [{ type: 'input_text', text: 'What is this?' }, image('high')] }] }
  const two = { model: 'gpt-4.1-nano', input: [{ role: 'user', content: [{ type: 'input_text', text: 'What is this?' }, image('high'), image('low')] }] }
  const a = (await worstCaseTokens(one, nano)).inputTokens
  const b = (await worstCaseTokens(two, nano)).inputTokens
  t.ok(a >= nano.maxImageTokens!, 'an image counts its worst case')
  t.ok(a < nano.maxImageTokens! + 100, 'not the bytes of its URL')
  t.ok(b - a >= nano.maxImageTokens!, 'each image counts')
  const output = { model: 'gpt-4.1-nano', input: [{ type: 'function_call_output', call_id: 'c', output: [image('auto')] }] }
  t.ok((await worstCaseTokens(output, nano)).inputTokens >= nano.maxImageTokens!, 'an image in a function-call output too')
  t.match(await thrownBy(async () => (await worstCaseTokens({ ...one, model: 'my-local-model' }, custom))), { gateCode: 'unbounded_field', field: 'input.0.content.1' }, 'no image bound: refused')
  t.match(await thrownBy(async () => (await worstCaseTokens({ model: 'gpt-4.1-nano', input: [{ role: 'user', content: [image('original')] }] }, nano))), { gateCode: 'unbounded_field', field: 'input.0.content.0.detail' }, 'original detail: refused')
})

t.test('output: max_output_tokens, the model maximum, the clamp', async (t) => {
  const body = { model: 'gpt-4o-mini', input: 'hi', max_output_tokens: 100 }
  const estimate = (await responsesApi.estimate(body, book))
  const uncapped = (await responsesApi.estimate({ model: 'gpt-4o-mini', input: 'hi' }, book))
  t.equal(compareMoney(uncapped.amount, estimate.amount), 1, 'no cap costs more')
  const at = estimate.atOutputLimit!(mini.maxOutputTokens)
  t.same(at.amount, uncapped.amount, 'atOutputLimit at the maximum is the uncapped call')
  t.equal(estimate.atOutputLimit!(100).amount, estimate.amount)
  t.equal((await worstCaseTokens({ ...body, max_output_tokens: 10_000_000 }, mini)).outputTokens, mini.maxOutputTokens, 'above the maximum: the maximum')
  const limit = responsesApi.outputLimit!
  t.equal(limit.requested(body, mini), 100)
  t.equal(limit.requested({ model: 'gpt-4o-mini' }, mini), mini.maxOutputTokens)
  t.equal(limit.requested({ model: 'gpt-4o-mini', max_output_tokens: null }, mini), mini.maxOutputTokens)
  t.equal(limit.requested({ model: 'gpt-4o-mini', max_output_tokens: 'x' }, mini), null)
  const lowered = limit.withLimit(body, 40, mini)
  t.equal(lowered.max_output_tokens, 40)
  t.equal(body.max_output_tokens, 100, 'the body itself is left as it was')
  t.same((await responsesApi.estimate(lowered, book)).amount, estimate.atOutputLimit!(40).amount, 'a clamped body costs what atOutputLimit said')
  const beyond: ModelPrice = { ...custom, reasoningBeyondLimitTokens: 500, perRequest: '0.01' }
  t.equal((await worstCaseTokens({ model: 'x', input: 'hi', max_output_tokens: 100 }, beyond)).outputTokens, 600, 'what the provider bills past the cap')
  const fee = createPriceBook({ fee: beyond }, { catalogPrices: false })
  const withFee = (await responsesApi.estimate({ model: 'fee', input: 'hi', max_output_tokens: 100 }, fee))
  t.equal(compareMoney(withFee.amount, '0.01'), 1, 'the per-request fee is held')
})

t.test('every field the bound cannot cover is refused, naming it', async (t) => {
  const base = { model: 'gpt-4o-mini', input: 'hi' }
  const refused: Array<[string, Body, string]> = [
    ['previous_response_id', { ...base, previous_response_id: 'resp_1' }, 'previous_response_id'],
    ['conversation (id)', { ...base, conversation: 'conv_1' }, 'conversation'],
    ['conversation (object)', { ...base, conversation: { id: 'conv_1' } }, 'conversation'],
    ['a stored prompt', { ...base, prompt: { id: 'pmpt_1', variables: {} } }, 'prompt'],
    ['background', { ...base, background: true }, 'background'],
    ['priority tier', { ...base, service_tier: 'priority' }, 'service_tier'],
    ['scale tier', { ...base, service_tier: 'scale' }, 'service_tier'],
    ['an unknown field', { ...base, modalities: ['audio'] }, 'modalities'],
    ['context_management', { ...base, context_management: [{ type: 'compaction' }] }, 'context_management'],
    ['prompt_cache_retention', { ...base, prompt_cache_retention: '24h' }, 'prompt_cache_retention'],
    ['an input file', { ...base, input: [{ role: 'user', content: [{ type: 'input_file', file_id: 'file_1' }] }] }, 'input.0.content.0'],
    ['an input file in a function output', { ...base, input: [{ type: 'function_call_output', call_id: 'c', output: [{ type: 'input_file', file_data: 'x' }] }] }, 'input.0.output.0'],
    ['an unknown part', { ...base, input: [{ role: 'user', content: [{ type: 'input_audio', data: 'x' }] }] }, 'input.0.content.0.type'],
    ['an unknown item type', { ...base, input: [{ type: 'web_search_call', id: 'ws_1', status: 'completed' }] }, 'input.0.type'],
    ['an item type that String() cannot print', { ...base, input: [{ type: [{ toString: 0 }] }] }, 'input.0.type'],
    ['an item reference', { ...base, input: [{ type: 'item_reference', id: 'msg_1' }] }, 'input.0'],
    ['an unknown message field', { ...base, input: [{ role: 'user', content: 'hi', cache: true }] }, 'input.0.cache'],
    ['an unknown call field', { ...base, input: [{ type: 'function_call', call_id: 'c', name: 'f', arguments: '{}', extra: 1 }] }, 'input.0.extra'],
    ['an unknown reasoning field', { ...base, input: [{ type: 'reasoning', id: 'r', summary: [], tokens: 1 }] }, 'input.0.tokens'],
    ['an unknown part field', { ...base, input: [{ role: 'user', content: [{ type: 'input_text', text: 'hi', cache_control: {} }] }] }, 'input.0.content.0.cache_control'],
    ['an unknown function-tool field', { ...base, tools: [{ ...tool, defer_loading: true }] }, 'tools.0.defer_loading'],
    ['a hosted tool choice', { ...base, tool_choice: { type: 'web_search_preview' } }, 'tool_choice.type']
  ]
  for (const [what, body, field] of refused) {
    t.match(await thrownBy(async () => (await responsesApi.estimate(body, book))), { field, gateCode: 'unbounded_field' }, what)
  }
  for (const type of ['web_search', 'web_search_preview', 'web_search_2025_08_26', 'file_search', 'code_interpreter', 'image_generation', 'computer_use_preview', 'computer', 'mcp', 'local_shell', 'shell', 'custom', 'apply_patch', 'namespace', 'tool_search']) {
    t.match(await thrownBy(async () => (await responsesApi.estimate({ ...base, tools: [tool, { type }], max_tool_calls: 1 }, book))), { field: 'tools.1.type', gateCode: 'unbounded_field', message: /results are input of later steps/ }, `${type} tools`)
  }
  t.match((await thrownBy(async () => (await responsesApi.estimate({ ...base, previous_response_id: 'r' }, book))) as Error).message, /cannot see/)
  // Absent, null and false are the same as not asking.
  for (const body of [{ ...base, previous_response_id: null }, { ...base, conversation: null }, { ...base, prompt: null }, { ...base, background: false }, { ...base, service_tier: 'auto' }, { ...base, service_tier: 'default' }, { ...base, service_tier: null }]) {
    await t.resolves(async () => (await responsesApi.estimate(body, book)), JSON.stringify(body))
  }
})

t.test('malformed fields are 400s that name the field; an unpriced model is model_not_priced', async (t) => {
  const base = { model: 'gpt-4o-mini', input: 'hi' }
  const invalid: Array<[Body | unknown, string]> = [
    [null, 'body'], [[], 'body'], ['text', 'body'],
    [{ input: 'hi' }, 'model'], [{ model: '', input: 'hi' }, 'model'], [{ model: 3, input: 'hi' }, 'model'],
    [{ ...base, input: 3 }, 'input'], [{ ...base, input: [3] }, 'input.0'],
    [{ ...base, input: [{ role: 'tool', content: 'x' }] }, 'input.0.role'],
    [{ ...base, input: [{ role: 'user', content: 3 }] }, 'input.0.content'],
    [{ ...base, input: [{ role: 'user', content: [{ type: 'input_text', text: 3 }] }] }, 'input.0.content.0.text'],
    [{ ...base, input: [{ type: 'function_call', call_id: 'c', name: 'f', arguments: {} }] }, 'input.0.arguments'],
    [{ ...base, input: [{ type: 'reasoning', summary: [{ type: 'text', text: 'x' }] }] }, 'input.0.summary.0'],
    [{ ...base, input: [{ type: 'reasoning', summary: [], encrypted_content: 5 }] }, 'input.0.encrypted_content'],
    [{ ...base, instructions: ['x'] }, 'instructions'],
    [{ ...base, max_output_tokens: 0 }, 'max_output_tokens'], [{ ...base, max_output_tokens: 1.5 }, 'max_output_tokens'],
    [{ ...base, max_tool_calls: -1 }, 'max_tool_calls'],
    [{ ...base, tools: {} }, 'tools'], [{ ...base, tools: [tool, 'x'] }, 'tools.1'], [{ ...base, tools: [{ type: 'function' }] }, 'tools.0.name'],
    [{ ...base, tool_choice: 'sometimes' }, 'tool_choice'],
    [{ ...base, text: 'json' }, 'text'], [{ ...base, reasoning: 'high' }, 'reasoning'],
    [{ ...base, input: [{ role: 'user', content: JSON.parse('['.repeat(100) + ']'.repeat(100)) as unknown }] }, 'body']
  ]
  for (const [body, field] of invalid) {
    const thrown = await thrownBy(async () => (await responsesApi.estimate(body, book)))
    t.ok(thrown instanceof InvalidFieldError && !('gateCode' in thrown) && thrown.field === field, `${field}: ${JSON.stringify(body)?.slice(0, 80)}`)
  }
  await t.rejects(async () => (await responsesApi.estimate({ model: 'gpt-9', input: 'hi' }, book)), { gateCode: 'model_not_priced', message: /gpt-9/ })
  // The model the gate chose (auto-downgrade) is the one priced.
  t.equal((await responsesApi.estimate({ model: 'gpt-9', input: 'hi' }, book, 'gpt-4o-mini')).model, 'gpt-4o-mini')
})

const responseBody = (usage: unknown, model: unknown = 'gpt-4o-mini-2024-07-18'): Body => ({
  id: 'resp_1', object: 'response', created_at: 1, status: 'completed', model, output: [{ type: 'message', role: 'assistant', content: [{ type: 'output_text', text: 'hi', annotations: [] }] }], usage
})
const goodUsage = { input_tokens: 120, input_tokens_details: { cached_tokens: 64 }, output_tokens: 30, output_tokens_details: { reasoning_tokens: 10 }, total_tokens: 150 }

t.test('usage from a JSON body', async (t) => {
  t.same(responsesApi.usageFromBody(JSON.stringify(responseBody(goodUsage)), 'gpt-4o-mini'), { model: 'gpt-4o-mini-2024-07-18', inputTokens: 120, outputTokens: 30, cachedInputTokens: 64 }, 'the upstream model, cached tokens')
  t.same(responsesApi.usageFromBody(JSON.stringify(responseBody({ input_tokens: 5, output_tokens: 0 }, null)), 'gpt-4o-mini'), { model: 'gpt-4o-mini', inputTokens: 5, outputTokens: 0 }, 'no model named: the requested one')
  t.same(responsesApi.usageFromBody(JSON.stringify(responseBody({ ...goodUsage, input_tokens_details: { cached_tokens: 121 } })), 'm'), { model: 'gpt-4o-mini-2024-07-18', inputTokens: 120, outputTokens: 30 }, 'a part larger than its whole is left out')
  t.same(responsesApi.usageFromBody(JSON.stringify(responseBody({ ...goodUsage, input_tokens_details: { cached_tokens: -1 } })), 'm')?.cachedInputTokens, undefined)
  for (const usage of [null, {}, { input_tokens: -1, output_tokens: 1 }, { input_tokens: 1.5, output_tokens: 1 }, { input_tokens: 1, output_tokens: 2 ** 53 }, { input_tokens: '1', output_tokens: 1 }, { input_tokens: 1 }]) {
    t.equal(responsesApi.usageFromBody(JSON.stringify(responseBody(usage)), 'm'), null, `untrusted: ${JSON.stringify(usage)}`)
  }
  for (const payload of ['', 'null', '[]', '{', '"usage"', '{"usage":{"input_tokens":1,"output_tokens":1}', '\ud800']) {
    t.equal(responsesApi.usageFromBody(payload, 'm'), null, `not a response: ${JSON.stringify(payload)}`)
  }
})

/** A stream as OpenAI sends it: each event named, its data the event object. */
function streamEvents (final: string | null, usage: unknown = goodUsage): Array<[string, string]> {
  const response = (status: string, withUsage: boolean): Body => ({ id: 'resp_1', object: 'response', status, model: 'gpt-4o-mini-2024-07-18', output: [], usage: withUsage ? usage : null })
  const events: Array<[string, Body]> = [
    ['response.created', { type: 'response.created', sequence_number: 0, response: response('in_progress', false) }],
    ['response.in_progress', { type: 'response.in_progress', sequence_number: 1, response: response('in_progress', false) }],
    ['response.output_item.added', { type: 'response.output_item.added', sequence_number: 2, output_index: 0, item: { type: 'message', id: 'msg_1', role: 'assistant', status: 'in_progress', content: [] } }],
    ...['Hel', 'lo ', 'response.completed'].map((delta, index): [string, Body] => ['response.output_text.delta', { type: 'response.output_text.delta', sequence_number: 3 + index, item_id: 'msg_1', output_index: 0, content_index: 0, delta }]),
    ['response.output_text.done', { type: 'response.output_text.done', sequence_number: 6, item_id: 'msg_1', output_index: 0, content_index: 0, text: 'Hello response.completed' }]
  ]
  if (final !== null) events.push([final, { type: final, sequence_number: 7, response: response(final.slice('response.'.length), true) }])
  return events.map(([name, data]) => [name, JSON.stringify(data)])
}

t.test('usage from a stream, event by event: only the final event counts', async (t) => {
  const expected = { model: 'gpt-4o-mini-2024-07-18', inputTokens: 120, outputTokens: 30, cachedInputTokens: 64 }
  for (const final of ['response.completed', 'response.incomplete', 'response.failed']) {
    const reader = responsesApi.streamUsage('gpt-4o-mini')
    const events = streamEvents(final)
    for (const [name, data] of events.slice(0, -1)) {
      reader.event(name, data)
      t.equal(reader.usage(), null, `nothing before ${final}`)
    }
    reader.event(...events.at(-1)!)
    t.same(reader.usage(), expected, final)
    // The same stream with no event names (the reader looks at the data's own type).
    const unnamed = responsesApi.streamUsage('gpt-4o-mini')
    for (const [, data] of events) unnamed.event(undefined, data)
    t.same(unnamed.usage(), expected, `${final}, unnamed`)
  }
  const cut = responsesApi.streamUsage('gpt-4o-mini')
  for (const [name, data] of streamEvents(null)) cut.event(name, data)
  t.equal(cut.usage(), null, 'a stream cut before its final event reports nothing')
  const untrusted = responsesApi.streamUsage('gpt-4o-mini')
  for (const [name, data] of streamEvents('response.completed', { input_tokens: -5, output_tokens: 3 })) untrusted.event(name, data)
  t.equal(untrusted.usage(), null, 'an untrusted count is no count')
  const odd = responsesApi.streamUsage('gpt-4o-mini')
  odd.event('response.completed', '{not json')
  odd.event('response.completed', JSON.stringify({ type: 'response.output_text.delta', response: { usage: goodUsage } }))
  odd.event('message', JSON.stringify({ type: 'response.completed', response: { usage: goodUsage } }))
  odd.event(undefined, '[DONE]')
  t.equal(odd.usage(), null, 'a final event is one by name and by type')
})

t.test('errors in OpenAI error shape', async (t) => {
  const refusal = { status: 402, kind: 'insufficient_quota' as const, code: 'budget_exceeded', message: 'Budget exceeded', param: null, details: { budget: { id: 'b1', remaining: '0' } } }
  t.same(responsesApi.errorBody(refusal), { error: { message: 'Budget exceeded', type: 'insufficient_quota', code: 'budget_exceeded', param: null, budget: { id: 'b1', remaining: '0' } } })
  t.same(responsesApi.errorBody({ ...refusal, status: 400, kind: 'invalid_request', code: 'unbounded_field', param: 'tools.0.type', details: {} }), { error: { message: 'Budget exceeded', type: 'invalid_request_error', code: 'unbounded_field', param: 'tools.0.type' } })
  t.equal(responsesApi.name, 'responses')
})

async function thrownBy (run: () => Promise<unknown>): Promise<unknown> {
  try {
    await run()
  } catch (error) {
    return error
  }
  return undefined
}

const fieldErrors = (error: unknown): boolean => error instanceof InvalidFieldError || error instanceof UnboundedFieldError || error instanceof ModelNotPricedError

async function estimateOrFieldError (body: unknown, model?: string): Promise<void> {
  try {
    const estimate = (await responsesApi.estimate(body, book, model))
    if (!(estimate.tokens! >= 0) || compareMoney(estimate.amount, '0') < 0) throw new Error(`a bad estimate: ${JSON.stringify(estimate)}`)
  } catch (error) {
    if (!fieldErrors(error)) throw error
  }
}

t.test('any JSON value as the body, or in any field of a valid one, is an estimate or a field error', async (t) => {
  await fc.assert(fc.asyncProperty(fc.anything(), async (body) => { await estimateOrFieldError(body) }), { numRuns: 2000 })
  const fields = Object.keys(realisticBody())
  await fc.assert(fc.asyncProperty(fc.constantFrom(...fields, 'previous_response_id', 'prompt', 'conversation', 'background', 'other'), fc.anything(), fc.constantFrom('gpt-4o-mini', 'my-local-model', 'gpt-4.1-nano'), async (field, value, model) => {
    await estimateOrFieldError({ ...realisticBody(model), [field]: value })
  }), { numRuns: 2000 })
  // Inside the input items and their parts.
  await fc.assert(fc.asyncProperty(fc.nat(7), fc.string({ maxLength: 20 }), fc.anything(), async (index, key, value) => {
    const body = realisticBody()
    const item = (body.input as Body[])[index]!
    item[['type', 'role', 'content', 'call_id', 'name', 'arguments', 'output', 'summary', 'encrypted_content'][key.length % 9]!] = value
    await estimateOrFieldError(body)
    item[key] = value
    await estimateOrFieldError(body)
  }), { numRuns: 2000 })
  t.pass('6,000 bodies: each an estimate or a field error')
})

t.test('the bound holds for random text: never below the tokenizer count of the text alone', async (t) => {
  await fc.assert(fc.asyncProperty(fc.array(fc.string({ unit: 'grapheme', maxLength: 200 }), { minLength: 1, maxLength: 6 }), async (parts) => {
    const body = { model: 'gpt-4o-mini', input: parts.map((text, index) => index % 2 === 0 ? { role: 'user', content: text } : { type: 'function_call_output', call_id: 'c', output: text }) }
    const { inputTokens } = (await worstCaseTokens(body, mini))
    const floor = parts.reduce((sum, text) => sum + tokens(text) + 3, 0)
    if (inputTokens < floor) throw new Error(`${inputTokens} < ${floor}`)
    const local = (await worstCaseTokens({ ...body, model: 'my-local-model' }, custom)).inputTokens
    const byteFloor = parts.reduce((sum, text) => sum + bytes(text), 0)
    if (local < byteFloor) throw new Error(`${local} < ${byteFloor} bytes`)
  }), { numRuns: 500 })
  t.pass('500 random inputs bounded')
})

t.test('usage readers never throw, whatever they are given', async (t) => {
  fc.assert(fc.property(fc.oneof(fc.string(), fc.anything().map((value) => JSON.stringify(value) ?? '')), (payload) => {
    responsesApi.usageFromBody(payload, 'gpt-4o-mini')
  }), { numRuns: 2000 })
  fc.assert(fc.property(fc.array(fc.tuple(fc.option(fc.constantFrom('response.completed', 'response.failed', 'response.incomplete', 'x'), { nil: undefined }), fc.oneof(fc.string(), fc.anything().map((value) => JSON.stringify({ type: 'response.completed', response: { model: 'm', usage: value } }))))), (events) => {
    const reader = responsesApi.streamUsage('m')
    for (const [name, data] of events) reader.event(name, data)
    const usage = reader.usage()
    if (usage !== null && (!Number.isSafeInteger(usage.inputTokens) || usage.inputTokens < 0 || !Number.isSafeInteger(usage.outputTokens))) throw new Error(JSON.stringify(usage))
  }), { numRuns: 1000 })
  t.pass('3,000 payloads and streams read without a throw')
})
