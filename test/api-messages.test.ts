// Anthropic's Messages API module (lib/model-apis/messages.ts), without I/O: the worst case of a call and
// every field it refuses, cache writes at their rates, usage from a body and from a stream fed event by
// event, the error shape the official client reads, and clamp's output cap.
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import Anthropic from '@anthropic-ai/sdk'
import fc from 'fast-check'
import t from 'tap'
import { InvalidFieldError, ModelNotPricedError, UnboundedFieldError } from '../lib/kernel/errors.js'
import { MIN_THINKING_BUDGET, TOKENS_PER_MESSAGE, TOKENS_PER_REQUEST, TOOL_USE_SYSTEM_PROMPT_TOKENS, messagesApi } from '../lib/model-apis/messages.js'
import type { Refusal } from '../lib/model-apis/model-api.js'
import { costFromUsage, type CostEstimate } from '../lib/pricing/estimate.js'
import { costOfTokens, createPriceBook, type ModelPrice } from '../lib/pricing/pricing.js'

const claude: ModelPrice = { input: '3', output: '15', maxOutputTokens: 64_000 }
// Claude models of versions before Opus 4.6 (4-5): their list prices wherever they run. US-only
// inference's 11/10 on the later ones: messages-billing-extras.test.ts.
const book = createPriceBook({
  'claude-test-4-5': claude,
  'claude-images-4-5': { ...claude, maxImageTokens: 1600 },
  'claude-own-writes-4-5': { ...claude, cacheWrite: '4', cacheWrite1h: '7' }
})
const estimate = async (body: unknown, model?: string): Promise<CostEstimate> => await messagesApi.estimate(body, book, model)
const base = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({ model: 'claude-test-4-5', max_tokens: 1000, messages: [{ role: 'user', content: 'Hello, Claude' }], ...extra })
const bytes = (value: unknown): number => Buffer.byteLength(JSON.stringify(value), 'utf8')
/** The estimate's input tokens: its tokens less the output it counts (max_tokens, capped by the model's maximum). */
type FieldError = typeof InvalidFieldError | typeof UnboundedFieldError | typeof ModelNotPricedError
/** Whether `run` throws that kind of field error (tap's throws compares shapes, not classes). */
const throwsKind = async (run: () => Promise<unknown>, kind: FieldError): Promise<boolean> => {
  try {
    await run()
    return false
  } catch (error) {
    return error instanceof kind
  }
}
const inputOf = async (body: Record<string, unknown>): Promise<number> => (await estimate(body)).tokens! - Math.min(body.max_tokens as number, 64_000)

t.test('the input is every byte of system, messages and tools, with the framing and the tool-use prompt', async (t) => {
  const system = [{ type: 'text', text: 'You are terse.' }]
  const messages = [
    { role: 'user', content: 'What is the weather in Paris?' },
    { role: 'assistant', content: [{ type: 'thinking', thinking: 'Use the tool.', signature: 'c2lnbmF0dXJl' }, { type: 'tool_use', id: 'toolu_1', name: 'weather', input: { city: 'Paris' } }] },
    { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_1', content: [{ type: 'text', text: '18°C, clear' }] }] }
  ]
  const tools = [{ name: 'weather', description: 'Current weather', input_schema: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } }]
  const body = base({ system, messages, tools, tool_choice: { type: 'auto' } })
  const parts = messages[1]!.content as unknown[]
  const result = messages[2]!.content[0] as { content: unknown[] }
  const expected = TOKENS_PER_REQUEST + bytes(system[0]) +
    3 * TOKENS_PER_MESSAGE + bytes(messages[0]!.content) + bytes(parts[0]) + bytes(parts[1]) +
    bytes({ type: 'tool_result', tool_use_id: 'toolu_1' }) + bytes(result.content[0]) +
    bytes(tools[0]) + TOOL_USE_SYSTEM_PROMPT_TOKENS + bytes({ type: 'auto' })
  t.equal((await inputOf(body)), expected, 'the sum, part by part')
  t.ok(TOOL_USE_SYSTEM_PROMPT_TOKENS >= 530, 'the tool-use prompt is above the largest Anthropic publishes (530, Claude 3 Opus)')
  t.equal((await inputOf(base({ tools: [] }))), (await inputOf(base())), 'no tools, no tool-use prompt')
  t.equal((await inputOf(base({ system: 'Be brief.' }))), (await inputOf(base())) + bytes('Be brief.'), 'a string system prompt: its bytes')
  // 12 UTF-8 bytes of four CJK characters: a byte-level tokenizer never makes fewer tokens than... bytes/4 at best; we count all 12.
  t.ok((await inputOf(base({ messages: [{ role: 'user', content: '日本語で' }] }))) >= 12, 'multi-byte text counts its UTF-8 bytes')
  const amount = (await estimate(body)).amount
  t.equal(amount, costOfTokens(claude, { inputTokens: expected, outputTokens: 1000 }), 'the amount: that input and max_tokens, at the model\'s rates')
})

t.test('output: max_tokens (thinking included), capped by the model\'s maximum; 0 pre-warms the cache and has none', async (t) => {
  t.equal((await estimate(base({ max_tokens: 500 }))).tokens! - (await inputOf(base())), 500)
  t.equal((await estimate(base({ max_tokens: 1_000_000 }))).tokens! - (await inputOf(base())), 64_000, 'above the model\'s maximum: its maximum')
  t.equal((await estimate(base({ max_tokens: 0 }))).tokens, (await inputOf(base())), 'max_tokens 0: no output')
  t.equal((await estimate(base({ max_tokens: 4000, thinking: { type: 'enabled', budget_tokens: 2000 } }))).tokens! - (await inputOf(base())), 4000, 'the thinking budget is within max_tokens')
  const at = (await estimate(base({ max_tokens: 4000 }))).atOutputLimit!
  t.same(at(100), (await estimate(base({ max_tokens: 100 }))), 'atOutputLimit: the same call at another max_tokens, input counted once')
  for (const body of [base({ max_tokens: undefined }), base({ max_tokens: -1 }), base({ max_tokens: 1.5 }), base({ max_tokens: '100' })]) {
    t.ok(await throwsKind(async () => (await estimate(body)), InvalidFieldError), `max_tokens ${JSON.stringify(body.max_tokens)}: refused`)
  }
  t.ok(await throwsKind(async () => (await estimate(base({ thinking: { type: 'enabled', budget_tokens: 1000 } }))), InvalidFieldError), 'a budget not below max_tokens')
})

t.test('cache writes: every input token at the dearest write rate any mark asks for; no mark, the input rate', async (t) => {
  const input = (await inputOf(base()))
  const at = (tokens: Partial<Parameters<typeof costOfTokens>[1]>, price = claude) => costOfTokens(price, { inputTokens: input, outputTokens: 1000, ...tokens })
  t.equal((await estimate(base())).amount, at({}), 'no mark: no write')
  const text = (ttl?: string) => ({ role: 'user', content: [{ type: 'text', text: 'Hello, Claude', cache_control: ttl === undefined ? { type: 'ephemeral' } : { type: 'ephemeral', ttl } }] })
  const marked = (ttl?: string, extra: Record<string, unknown> = {}) => base({ messages: [text(ttl)], ...extra })
  const withMark = (await inputOf(marked()))
  const writes = async (model = 'claude-test-4-5'): Promise<string> => (await estimate({ ...marked(), model })).amount
  t.equal((await writes()), costOfTokens(claude, { inputTokens: withMark, outputTokens: 1000, cacheWriteTokens: withMark }), 'a 5-minute mark (the default ttl): all input at 5/4 the input rate')
  t.equal((await estimate(marked('1h'))).amount, costOfTokens(claude, { inputTokens: (await inputOf(marked('1h'))), outputTokens: 1000, cacheWrite1hTokens: (await inputOf(marked('1h'))) }), 'a 1-hour mark: all input at twice the input rate')
  const both = base({ system: [{ type: 'text', text: 'S', cache_control: { type: 'ephemeral', ttl: '5m' } }], messages: [text('1h')] })
  t.equal((await estimate(both)).amount, costOfTokens(claude, { inputTokens: (await inputOf(both)), outputTokens: 1000, cacheWrite1hTokens: (await inputOf(both)) }), 'marks of both ttls: the dearer')
  t.equal((await writes('claude-own-writes-4-5')), costOfTokens({ ...claude, cacheWrite: '4' }, { inputTokens: withMark, outputTokens: 1000, cacheWriteTokens: withMark }), 'the price\'s own write rate')

  for (const [where, body] of <Array<[string, Record<string, unknown>]>>[
    ['top-level', base({ cache_control: { type: 'ephemeral', ttl: '1h' } })],
    ['on a tool', base({ tools: [{ name: 'f', input_schema: { type: 'object' }, cache_control: { type: 'ephemeral', ttl: '1h' } }] })],
    ['on a system block', base({ system: [{ type: 'text', text: 'S', cache_control: { type: 'ephemeral', ttl: '1h' } }] })],
    ['on a tool result', base({ messages: [{ role: 'user', content: [{ type: 'tool_result', tool_use_id: 't', content: 'x', cache_control: { type: 'ephemeral', ttl: '1h' } }] }] })],
    ['inside a tool result', base({ messages: [{ role: 'user', content: [{ type: 'tool_result', tool_use_id: 't', content: [{ type: 'text', text: 'x', cache_control: { type: 'ephemeral', ttl: '1h' } }] }] }] })]
  ]) {
    const tokens = (await inputOf(body))
    t.equal((await estimate(body)).amount, costOfTokens(claude, { inputTokens: tokens, outputTokens: 1000, cacheWrite1hTokens: tokens }), `a 1-hour mark ${where}`)
  }
  // The catalog's own rates for a Claude model: 3.75 and 6 per 1M for claude-sonnet-4-5 (its input is 3).
  const catalog = createPriceBook({})
  const sonnet = (await messagesApi.estimate(base({ model: 'claude-sonnet-4-5', max_tokens: 0, cache_control: { type: 'ephemeral', ttl: '1h' } }), catalog))
  const sonnetPlain = (await messagesApi.estimate(base({ model: 'claude-sonnet-4-5', max_tokens: 0 }), catalog))
  t.equal(sonnet.tokens, sonnetPlain.tokens, 'a top-level mark adds no input of its own')
  t.equal(sonnet.amount, costOfTokens({ input: '3', output: '15', maxOutputTokens: 1 }, { inputTokens: sonnet.tokens!, outputTokens: 0, cacheWrite1hTokens: sonnet.tokens! }), 'the catalog\'s 1-hour rate (6 = 2x 3)')
  for (const mark of [{ type: 'persistent' }, { type: 'ephemeral', ttl: '24h' }, 'ephemeral', { type: 'ephemeral', scope: 'org' }]) {
    t.ok(await throwsKind(async () => (await estimate(base({ cache_control: mark }))), InvalidFieldError), `cache_control ${JSON.stringify(mark)}: refused`)
  }
})

t.test('images at the model\'s worst case where the price gives one; refused otherwise', async (t) => {
  const image = { type: 'image', source: { type: 'base64', media_type: 'image/png', data: 'A'.repeat(100_000) } }
  const body = base({ model: 'claude-images-4-5', messages: [{ role: 'user', content: [image, { type: 'text', text: 'What is this?' }] }] })
  const plain = base({ model: 'claude-images-4-5', messages: [{ role: 'user', content: [{ type: 'text', text: 'What is this?' }] }] })
  t.equal((await inputOf(body)), (await inputOf(plain)) + 1600, 'an image: maxImageTokens, not the bytes of its data')
  t.ok(await throwsKind(async () => (await estimate({ ...body, model: 'claude-test-4-5' })), UnboundedFieldError), 'no image bound: refused')
  t.ok(await throwsKind(async () => (await estimate(base({ model: 'claude-images-4-5', messages: [{ role: 'user', content: [{ type: 'image', source: { type: 'pdf' } }] }] }))), InvalidFieldError), 'an image source of no known type')
})

const refusedBodies: Array<[string, Record<string, unknown>, FieldError, string]> = [
  ['container', base({ container: 'container_1' }), UnboundedFieldError, 'container'],
  ['mcp_servers', base({ mcp_servers: [{ type: 'url', url: 'https://example.com', name: 'x' }] }), UnboundedFieldError, 'mcp_servers'],
  ['context_management', base({ context_management: { edits: [] } }), UnboundedFieldError, 'context_management'],
  ['an unknown field', base({ frobnicate: true }), UnboundedFieldError, 'frobnicate'],
  ['fast mode', base({ speed: 'fast' }), UnboundedFieldError, 'speed'],
  ['inference_geo on a model before Claude Opus 4.6 (Anthropic answers a 400; messages-billing-extras.test.ts has the newer ones)', base({ inference_geo: 'us' }), InvalidFieldError, 'inference_geo'],
  ['a geography without a known price', base({ model: 'claude-opus-4-6', inference_geo: 'eu' }), UnboundedFieldError, 'inference_geo'],
  ['structured output', base({ output_config: { format: { type: 'json_schema', schema: {} } } }), UnboundedFieldError, 'output_config.format'],
  ['a document', base({ messages: [{ role: 'user', content: [{ type: 'document', source: { type: 'url', url: 'https://x/a.pdf' } }] }] }), UnboundedFieldError, 'messages.0.content.0.type'],
  ['a server tool\'s result block', base({ messages: [{ role: 'assistant', content: [{ type: 'web_search_tool_result', tool_use_id: 's', content: [] }] }] }), UnboundedFieldError, 'messages.0.content.0.type'],
  ['a document in a tool result', base({ messages: [{ role: 'user', content: [{ type: 'tool_result', tool_use_id: 't', content: [{ type: 'document', source: {} }] }] }] }), UnboundedFieldError, 'messages.0.content.0.content.0.type'],
  ['an unknown block field', base({ messages: [{ role: 'user', content: [{ type: 'text', text: 'x', extra: 1 }] }] }), UnboundedFieldError, 'messages.0.content.0.extra'],
  ['an unknown message field', base({ messages: [{ role: 'user', content: 'x', name: 'n' }] }), UnboundedFieldError, 'messages.0.name'],
  ['web search', base({ tools: [{ type: 'web_search_20250305', name: 'web_search', max_uses: 1 }] }), UnboundedFieldError, 'tools.0.type'],
  ['web fetch', base({ tools: [{ type: 'web_fetch_20250910', name: 'web_fetch' }] }), UnboundedFieldError, 'tools.0.type'],
  ['code execution', base({ tools: [{ type: 'code_execution_20250825', name: 'code_execution' }] }), UnboundedFieldError, 'tools.0.type'],
  ['the bash tool', base({ tools: [{ type: 'bash_20250124', name: 'bash' }] }), UnboundedFieldError, 'tools.0.type'],
  ['the text editor', base({ tools: [{ type: 'text_editor_20250728', name: 'str_replace_based_edit_tool' }] }), UnboundedFieldError, 'tools.0.type'],
  ['computer use', base({ tools: [{ type: 'computer_20250124', name: 'computer', display_width_px: 1, display_height_px: 1 }] }), UnboundedFieldError, 'tools.0.type'],
  ['a custom tool\'s unknown field', base({ tools: [{ name: 'f', input_schema: {}, allowed_callers: ['direct'] }] }), UnboundedFieldError, 'tools.0.allowed_callers'],
  ['citations on a search result', base({ messages: [{ role: 'user', content: [{ type: 'search_result', source: 's', title: 't', content: [{ type: 'text', text: 'x' }], citations: { enabled: true } }] }] }), UnboundedFieldError, 'messages.0.content.0.citations'],
  ['thinking of an unknown type', base({ thinking: { type: 'between_tools' } }), UnboundedFieldError, 'thinking.type'],
  // Found by the property below: a type whose String() throws ({ toString: false }).
  ['a thinking type that is no string', base({ thinking: { type: { toString: false } } }), UnboundedFieldError, 'thinking.type'],
  ['a block type that is no string', base({ messages: [{ role: 'user', content: [{ type: { toString: false } }] }] }), UnboundedFieldError, 'messages.0.content.0.type'],
  ['a tool type that is no string', base({ tools: [{ type: { toString: false }, name: 'f' }] }), UnboundedFieldError, 'tools.0.type'],
  ['no max_tokens', base({ max_tokens: undefined }), InvalidFieldError, 'max_tokens'],
  ['a priority tier by another name', base({ service_tier: 'priority' }), InvalidFieldError, 'service_tier'],
  ['messages not a list', base({ messages: 'hi' }), InvalidFieldError, 'messages'],
  ['a role of neither', base({ messages: [{ role: 'system', content: 'x' }] }), InvalidFieldError, 'messages.0.role'],
  ['a body nested too deep', base({ metadata: JSON.parse('['.repeat(100) + ']'.repeat(100)) }), InvalidFieldError, 'body'],
  ['a model with no price', base({ model: 'claude-unknown-9' }), ModelNotPricedError, 'model']
]

t.test('what the estimate cannot bound is refused, naming the field', async (t) => {
  for (const [what, body, kind, field] of refusedBodies) {
    try {
      (await estimate(JSON.parse(JSON.stringify(body))))
      t.fail(`${what}: not refused`)
    } catch (error) {
      t.ok(error instanceof kind, `${what}: ${kind.name}`)
      t.match((error as Error).message, field, `${what}: names ${field}`)
    }
  }
})

t.test('accepted: both service tiers, custom tools, adaptive thinking, search results, redacted thinking, effort', async (t) => {
  for (const body of [
    base({ service_tier: 'auto' }), base({ service_tier: 'standard_only' }), base({ speed: 'standard' }), base({ inference_geo: null }),
    base({ thinking: { type: 'adaptive' } }), base({ thinking: { type: 'disabled' } }), base({ output_config: { effort: 'low' } }),
    base({ tools: [{ type: 'custom', name: 'f', description: 'd', input_schema: { type: 'object' }, strict: true }], tool_choice: { type: 'tool', name: 'f' } }),
    base({ messages: [{ role: 'user', content: [{ type: 'search_result', source: 's', title: 't', content: [{ type: 'text', text: 'x' }] }] }] }),
    base({ messages: [{ role: 'assistant', content: [{ type: 'redacted_thinking', data: 'ZW5jcnlwdGVk' }] }] }),
    base({ metadata: { user_id: 'u' }, stop_sequences: ['\n'], stream: true, temperature: 0.5, top_k: 5, top_p: 0.9 })
  ]) {
    await t.resolves(async () => await estimate(body), JSON.stringify(body).slice(0, 120))
  }
})

t.test('usage from a JSON body: input is Anthropic\'s input_tokens plus cache reads and writes', async (t) => {
  const body = (usage: Record<string, unknown>, extra: Record<string, unknown> = {}) => JSON.stringify({ id: 'msg_1', type: 'message', role: 'assistant', model: 'claude-test-4-5-20250101', content: [], usage, ...extra })
  t.same(messagesApi.usageFromBody(body({ input_tokens: 12, output_tokens: 30 }), 'claude-test-4-5'), { model: 'claude-test-4-5-20250101', inputTokens: 12, outputTokens: 30 })
  t.same(messagesApi.usageFromBody(body({ input_tokens: 12, output_tokens: 30, cache_read_input_tokens: 100, cache_creation_input_tokens: 50, cache_creation: { ephemeral_5m_input_tokens: 20, ephemeral_1h_input_tokens: 30 } }), 'claude-test-4-5'),
    { model: 'claude-test-4-5-20250101', inputTokens: 162, outputTokens: 30, cachedInputTokens: 100, cacheWriteTokens: 20, cacheWrite1hTokens: 30 }, 'reads and the written breakdown')
  t.same(messagesApi.usageFromBody(body({ input_tokens: 1, output_tokens: 2, cache_creation_input_tokens: 50, cache_read_input_tokens: null, cache_creation: null }), 'm'),
    { model: 'claude-test-4-5-20250101', inputTokens: 51, outputTokens: 2, cacheWriteTokens: 50 }, 'no breakdown: 5-minute writes')
  t.same(messagesApi.usageFromBody(body({ input_tokens: 1, output_tokens: 2, cache_creation_input_tokens: 10, cache_creation: { ephemeral_5m_input_tokens: 0, ephemeral_1h_input_tokens: 40 } }), 'm')?.inputTokens, 41,
    'a breakdown above its total: the breakdown (reconciled upward)')
  t.equal(messagesApi.usageFromBody(body({ input_tokens: 1, output_tokens: 2 }, { model: 7 }), 'claude-test-4-5')?.model, 'claude-test-4-5', 'no model named: the one asked for')
  for (const usage of [{ output_tokens: 2 }, { input_tokens: -1, output_tokens: 2 }, { input_tokens: 1, output_tokens: 2.5 }, { input_tokens: 1, output_tokens: 2, cache_read_input_tokens: -5 },
    { input_tokens: 1, output_tokens: 2, cache_creation_input_tokens: '9' }, { input_tokens: 1, output_tokens: 2, cache_creation: { ephemeral_1h_input_tokens: 1e300 } },
    { input_tokens: Number.MAX_SAFE_INTEGER, output_tokens: 2, cache_read_input_tokens: 10 }, { input_tokens: 1, output_tokens: 2, cache_creation: 'lots' }]) {
    t.equal(messagesApi.usageFromBody(body(usage), 'm'), null, `untrusted: ${JSON.stringify(usage)}`)
  }
  for (const payload of ['', 'null', '[]', '{"usage":null}', '{"usage":[1]}', 'not json', '{"type":"error","error":{}}']) {
    t.equal(messagesApi.usageFromBody(payload, 'm'), null, `no usage in ${JSON.stringify(payload)}`)
  }
})

t.test('the cost of a usage: reads at the read rate, writes at the write rates', async (t) => {
  const catalog = createPriceBook({})
  const usage = messagesApi.usageFromBody(JSON.stringify({ model: 'claude-sonnet-4-5', usage: { input_tokens: 1_000_000, output_tokens: 0, cache_read_input_tokens: 1_000_000, cache_creation_input_tokens: 2_000_000, cache_creation: { ephemeral_5m_input_tokens: 1_000_000, ephemeral_1h_input_tokens: 1_000_000 } } }), 'x')!
  // 4M input tokens in all: the long-context tier (6, 0.6 reads, 7.5 and 12 writes per 1M).
  t.equal(costFromUsage(usage, catalog), String(6 + 0.6 + 7.5 + 12), 'each part at its rate of the tier')
  const small = messagesApi.usageFromBody(JSON.stringify({ model: 'claude-test-4-5', usage: { input_tokens: 0, output_tokens: 0, cache_creation: { ephemeral_5m_input_tokens: 1_000_000, ephemeral_1h_input_tokens: 1_000_000 } } }), 'x')!
  t.equal(costFromUsage(small, book), '9.75', 'no write rates in the table: 5/4 and 2x of 3')
})

/** An event stream as Anthropic sends it, one [event, data] pair at a time. */
function anthropicStream (final: Record<string, unknown>): Array<[string, string]> {
  return [
    ['message_start', JSON.stringify({ type: 'message_start', message: { id: 'msg_1', type: 'message', role: 'assistant', model: 'claude-test-4-5-20250101', content: [], usage: { input_tokens: 25, output_tokens: 1, cache_creation_input_tokens: 0, cache_read_input_tokens: 400, cache_creation: { ephemeral_5m_input_tokens: 0, ephemeral_1h_input_tokens: 0 } } } })],
    ['content_block_start', JSON.stringify({ type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } })],
    ['ping', JSON.stringify({ type: 'ping' })],
    ['content_block_delta', JSON.stringify({ type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'Hello' } })],
    ['content_block_stop', JSON.stringify({ type: 'content_block_stop', index: 0 })],
    ['message_delta', JSON.stringify({ type: 'message_delta', delta: { stop_reason: 'end_turn', stop_sequence: null }, usage: final })],
    ['message_stop', JSON.stringify({ type: 'message_stop' })]
  ]
}

t.test('usage from a stream: message_start\'s input, the last message_delta\'s cumulative counts; none before a message_delta', async (t) => {
  const events = anthropicStream({ output_tokens: 15 })
  const reader = messagesApi.streamUsage('claude-test-4-5')
  for (const [index, [name, data]] of events.entries()) {
    reader.event(name, data)
    if (index < 5) t.equal(reader.usage(), null, `after ${name}: none yet (message_start's output_tokens would undercharge)`)
  }
  t.same(reader.usage(), { model: 'claude-test-4-5-20250101', inputTokens: 425, outputTokens: 15, cachedInputTokens: 400 })

  const cut = messagesApi.streamUsage('claude-test-4-5')
  for (const [name, data] of events.slice(0, 5)) cut.event(name, data)
  t.equal(cut.usage(), null, 'a stream cut before message_delta: null, the estimate is charged')

  const updated = messagesApi.streamUsage('claude-test-4-5')
  for (const [, data] of anthropicStream({ output_tokens: 40, input_tokens: 30, cache_creation_input_tokens: 100, cache_read_input_tokens: null })) updated.event(undefined, data)
  t.same(updated.usage(), { model: 'claude-test-4-5-20250101', inputTokens: 530, outputTokens: 40, cachedInputTokens: 400, cacheWriteTokens: 100 }, 'counts the delta gives replace message_start\'s (events named by their data alone)')

  const two = messagesApi.streamUsage('claude-test-4-5')
  for (const [name, data] of anthropicStream({ output_tokens: 10 })) two.event(name, data)
  two.event('message_delta', JSON.stringify({ type: 'message_delta', delta: {}, usage: { output_tokens: 22 } }))
  t.equal(two.usage()?.outputTokens, 22, 'cumulative: the last delta\'s count, not a sum')
  two.event('message_delta', JSON.stringify({ type: 'message_delta', delta: {}, usage: { output_tokens: -3 } }))
  t.equal(two.usage(), null, 'a count that is no count: untrusted, the estimate is charged')

  const proto = messagesApi.streamUsage('claude-test-4-5')
  proto.event('message_start', '{"type":"message_start","message":{"usage":{"__proto__":{"input_tokens":5},"output_tokens":1}}}')
  proto.event('message_delta', '{"type":"message_delta","usage":{"output_tokens":3}}')
  t.equal(proto.usage(), null, 'a count under __proto__ is not an input count')

  const noStart = messagesApi.streamUsage('claude-test-4-5')
  noStart.event('message_delta', JSON.stringify({ type: 'message_delta', usage: { output_tokens: 5 } }))
  t.equal(noStart.usage(), null, 'a delta without any input count: no usage')
  for (const junk of ['', 'not json', '[]', 'null', '{"type":"message_delta","usage":7}']) noStart.event('message_delta', junk)
  t.equal(noStart.usage(), null, 'junk events are ignored')
})

t.test('refusals in Anthropic\'s error shape, read by the official client as its typed errors', async (t) => {
  const refusal = (status: number, kind: Refusal['kind'], code: string): Refusal => ({ status, kind, code, message: `refused: ${code}`, param: kind === 'invalid_request' ? 'tools.0.type' : null, details: { budget: { id: 'b1', remaining: '0.10' } } })
  t.same(messagesApi.errorBody(refusal(402, 'insufficient_quota', 'budget_exceeded')), {
    type: 'error',
    error: { type: 'billing_error', message: 'refused: budget_exceeded', code: 'budget_exceeded', param: null, budget: { id: 'b1', remaining: '0.10' }, details: { error_code: 'budget_exceeded' } },
    request_id: null
  })
  const clash = messagesApi.errorBody({ ...refusal(429, 'rate_limit_tokens', 'rate_limit_exceeded'), details: { type: 'x', message: 'y' } }) as { error: Record<string, unknown> }
  t.equal(clash.error.type, 'rate_limit_error', 'details never override the type')
  t.equal(clash.error.message, 'refused: rate_limit_exceeded', 'nor the message')

  const cases: Array<[Refusal, new (...args: never[]) => unknown, string]> = [
    [refusal(400, 'invalid_request', 'unbounded_field'), Anthropic.BadRequestError, 'invalid_request_error'],
    [refusal(402, 'insufficient_quota', 'budget_exceeded'), Anthropic.PaymentRequiredError, 'billing_error'],
    [refusal(429, 'rate_limit_requests', 'rate_limit_exceeded'), Anthropic.RateLimitError, 'rate_limit_error'],
    [refusal(429, 'rate_limit_tokens', 'rate_limit_exceeded'), Anthropic.RateLimitError, 'rate_limit_error'],
    [refusal(503, 'unavailable', 'budget_unavailable'), Anthropic.ServiceUnavailableError, 'overloaded_error'],
    [refusal(503, 'server_error', 'exchange_rate_missing'), Anthropic.ServiceUnavailableError, 'api_error']
  ]
  let answer: Refusal = cases[0]![0]
  const server = createServer((request, response) => {
    request.resume()
    response.writeHead(answer.status, { 'content-type': 'application/json', 'x-should-retry': 'false' }).end(JSON.stringify(messagesApi.errorBody(answer)))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.close() })
  const client = new Anthropic({ apiKey: 'test', baseURL: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, maxRetries: 0 })
  for (const [sent, errorClass, type] of cases) {
    answer = sent
    const error = await client.messages.create({ model: 'claude-test-4-5', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] }).then(() => null, (caught: unknown) => caught)
    t.ok(error instanceof errorClass, `${sent.status} ${sent.kind}: ${errorClass.name}`)
    const apiError = error as InstanceType<typeof Anthropic.APIError>
    t.equal(apiError.type, type, `its type: ${type}`)
    t.equal(apiError.errorCode, sent.code, 'the gate\'s code as errorCode')
    t.equal(apiError.apiMessage, sent.message, 'the budget\'s reason as its message')
    t.same((apiError.error as { error: { budget: unknown } }).error.budget, sent.details.budget, 'the budget\'s figures in the body')
  }
})

t.test('clamp: max_tokens is the cap; a thinking budget is lowered below it, or thinking turned off under Anthropic\'s minimum', async (t) => {
  const limit = messagesApi.outputLimit!
  t.equal(limit.requested(base({ max_tokens: 800 }), claude), 800)
  t.equal(limit.requested(base({ max_tokens: 'x' }), claude), null)
  t.same(limit.withLimit(base(), 300, claude), base({ max_tokens: 300 }))
  const thinking = base({ max_tokens: 10_000, thinking: { type: 'enabled', budget_tokens: 8000, display: 'summarized' } })
  t.same(limit.withLimit(thinking, 9000, claude).thinking, { type: 'enabled', budget_tokens: 8000, display: 'summarized' }, 'a budget already below the new cap stays')
  t.same(limit.withLimit(thinking, 5000, claude), { ...thinking, max_tokens: 5000, thinking: { type: 'enabled', budget_tokens: 4999, display: 'summarized' } }, 'lowered below the new cap')
  t.same(limit.withLimit(thinking, MIN_THINKING_BUDGET, claude).thinking, { type: 'disabled' }, 'under the minimum budget: thinking off')
  // Every clamped body is one the estimate takes (a valid request at Anthropic), at what the clamp asked for.
  await fc.assert(fc.asyncProperty(fc.integer({ min: 0, max: 10_000 }), async (tokens) => {
    const clamped = limit.withLimit(thinking, tokens, claude)
    const clampedEstimate = (await estimate(clamped))
    return clamped.max_tokens === tokens && clampedEstimate.amount === (await estimate(thinking)).atOutputLimit!(tokens).amount
  }))
})

t.test('any JSON value, anywhere, is refused with a field error or bounded, never thrown otherwise', async (t) => {
  const allowed = (error: unknown) => error instanceof InvalidFieldError || error instanceof UnboundedFieldError || error instanceof ModelNotPricedError
  const tryEstimate = async (body: unknown): Promise<boolean> => {
    try {
      const result = (await estimate(body))
      return typeof result.amount === 'string' && Number.isSafeInteger(result.tokens)
    } catch (error) {
      return allowed(error)
    }
  }
  await fc.assert(fc.asyncProperty(fc.anything(), tryEstimate), { numRuns: 2000 })
  await fc.assert(fc.asyncProperty(fc.jsonValue(), tryEstimate), { numRuns: 1000 })
  // Mutations of a valid body: any field, any block field, replaced by any JSON value.
  const valid = base({
    system: [{ type: 'text', text: 'S', cache_control: { type: 'ephemeral' } }],
    messages: [
      { role: 'user', content: [{ type: 'text', text: 'hi' }, { type: 'image', source: { type: 'url', url: 'https://x/y.png' } }] },
      { role: 'assistant', content: [{ type: 'tool_use', id: 't', name: 'f', input: {} }] },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 't', content: [{ type: 'text', text: 'r' }] }] }
    ],
    tools: [{ name: 'f', input_schema: { type: 'object' } }],
    thinking: { type: 'enabled', budget_tokens: 500 },
    model: 'claude-images-4-5'
  })
  t.ok(await tryEstimate(valid) && await (async () => { try { await estimate(valid); return true } catch { return false } })(), 'the valid body is bounded')
  const paths: string[][] = []
  const collect = (value: unknown, path: string[]): void => {
    paths.push(path)
    if (typeof value === 'object' && value !== null) for (const [key, child] of Object.entries(value)) collect(child, [...path, key])
  }
  collect(valid, [])
  await fc.assert(fc.asyncProperty(fc.constantFrom(...paths.slice(1)), fc.jsonValue(), async (path, replacement) => {
    const mutated = structuredClone(valid) as Record<string, unknown>
    let node = mutated as Record<string, unknown>
    for (const key of path.slice(0, -1)) node = node[key] as Record<string, unknown>
    node[path[path.length - 1]!] = replacement
    return await tryEstimate(mutated)
  }), { numRuns: 3000 })
})

t.test('usage readers never throw, and never report a part larger than its whole', async (t) => {
  const sound = (usage: ReturnType<typeof messagesApi.usageFromBody>): boolean => usage === null ||
    ((usage.cachedInputTokens ?? 0) + (usage.cacheWriteTokens ?? 0) + (usage.cacheWrite1hTokens ?? 0) <= usage.inputTokens && Number.isSafeInteger(usage.inputTokens) && Number.isSafeInteger(usage.outputTokens))
  fc.assert(fc.property(fc.string(), (payload) => sound(messagesApi.usageFromBody(payload, 'm'))), { numRuns: 1000 })
  const count = fc.oneof(fc.nat(), fc.integer(), fc.double(), fc.constant(null), fc.string(), fc.constant(Number.MAX_SAFE_INTEGER))
  const usage = fc.record({ input_tokens: count, output_tokens: count, cache_read_input_tokens: count, cache_creation_input_tokens: count, cache_creation: fc.oneof(fc.constant(null), fc.record({ ephemeral_5m_input_tokens: count, ephemeral_1h_input_tokens: count })) }, { requiredKeys: [] })
  fc.assert(fc.property(usage, fc.jsonValue(), (counts, model) => sound(messagesApi.usageFromBody(JSON.stringify({ model, usage: counts }), 'm'))), { numRuns: 2000 })
  fc.assert(fc.property(fc.array(fc.tuple(fc.option(fc.constantFrom('message_start', 'message_delta', 'ping'), { nil: undefined }), fc.oneof(fc.string(), usage.map((counts) => JSON.stringify({ type: 'message_delta', usage: counts })), usage.map((counts) => JSON.stringify({ type: 'message_start', message: { model: 'x', usage: counts } }))))), (events) => {
    const reader = messagesApi.streamUsage('m')
    for (const [name, data] of events) reader.event(name, data)
    return sound(reader.usage())
  }), { numRuns: 1000 })
  t.pass('no throw, no part above its whole')
})
