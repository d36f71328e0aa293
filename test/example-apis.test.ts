// The example gateway's mock providers for the Responses, Messages and embeddings APIs, read by the
// official clients (openai 6, @anthropic-ai/sdk), plain and streamed; their usage, which follows from the
// request and never exceeds its output cap; their errors in each API's shape; and the forwarders, which
// pass an upstream's answer through. The routes run here without the budgets plugin: the gate's own
// reading of these APIs is tested with the gate.
import Anthropic from '@anthropic-ai/sdk'
import fc from 'fast-check'
import Fastify, { type FastifyInstance } from 'fastify'
import OpenAI from 'openai'
import t from 'tap'
import { embeddings } from '../examples/apis/embeddings.js'
import { ANTHROPIC_VERSION, messages, planMessage, type MessagesRequest } from '../examples/apis/messages.js'
import { mockWords, PromptCache } from '../examples/apis/common.js'
import { planResponse, responses, type ResponsesRequest } from '../examples/apis/responses.js'
import { countTokens as cl100kTokens } from 'gpt-tokenizer/encoding/cl100k_base'
import { providerTokens } from '../lib/pricing/tokens.js'

interface TestContext {
  teardown: (fn: () => unknown) => void
}

interface Upstreams { openai?: string, anthropic?: string, anthropicKey?: string }

/** The three routes in a listening app, answering from their mocks or forwarding to `upstreams`. */
async function serve (t: TestContext, upstreams: Upstreams = {}, setup?: (app: FastifyInstance) => void): Promise<string> {
  const app = Fastify()
  setup?.(app)
  await app.register(responses, { upstreamUrl: upstreams.openai, upstreamApiKey: 'sk-upstream', mockTokenDelayMs: 1 })
  await app.register(embeddings, { upstreamUrl: upstreams.openai, upstreamApiKey: 'sk-upstream' })
  await app.register(messages, { upstreamUrl: upstreams.anthropic, upstreamApiKey: upstreams.anthropicKey, mockTokenDelayMs: 1 })
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(async () => await app.close())
  return address
}

const openai = (address: string) => new OpenAI({ baseURL: `${address}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 8000 })
const anthropic = (address: string) => new Anthropic({ baseURL: address, apiKey: 'unused', maxRetries: 0, timeout: 8000 })

const count = (text: string) => providerTokens('gpt-4o-mini', text)!
/** 'Hello there' sent as the input string: a user message, as OpenAI counts it. */
const HELLO_TOKENS = 3 + 3 + count('user') + count('Hello there')
/** The text of a response's message items, as the client's output_text joins it. */
const textOf = (response: OpenAI.Responses.Response) => response.output.flatMap((item) => item.type === 'message' ? item.content : []).map((part) => part.type === 'output_text' ? part.text : '').join('')
/** Text of about `tokens` tokens, each word its own. */
const longText = (tokens: number, word = 'budget') => Array.from({ length: tokens }, (_, i) => `${word}${i % 10}`).join(' ')

t.test('Responses: the JSON response, read by the openai client', async (t) => {
  const client = openai(await serve(t))
  const response = await client.responses.create({ model: 'gpt-4o-mini', instructions: 'Be brief.', input: 'Hello there', max_output_tokens: 200 })
  const inputTokens = 3 + (3 + count('developer') + count('Be brief.')) + (3 + count('user') + count('Hello there'))
  t.equal(response.object, 'response')
  t.equal(response.status, 'completed')
  t.equal(response.model, 'gpt-4o-mini')
  t.equal(response.output_text, mockWords(8 + inputTokens).join(''),
    "output_text, the client's own joining of the output items")
  t.same(response.usage, {
    input_tokens: inputTokens,
    input_tokens_details: { cached_tokens: 0 },
    output_tokens: 8 + inputTokens,
    output_tokens_details: { reasoning_tokens: 0 },
    total_tokens: 2 * inputTokens + 8
  }, 'the prompt counted as OpenAI counts it; the reply 8 tokens longer')

  const cut = await client.responses.create({ model: 'gpt-4o-mini', input: [{ role: 'user', content: 'Tell me everything about budgets' }], max_output_tokens: 16 })
  t.equal(cut.status, 'incomplete')
  t.same(cut.incomplete_details, { reason: 'max_output_tokens' })
  t.equal(cut.usage?.output_tokens, 16, 'cut at max_output_tokens, not over it')

  const reasoning = await client.responses.create({ model: 'o4-mini', input: 'Why?', max_output_tokens: 40, reasoning: { effort: 'high' } })
  t.same(reasoning.output.map((item) => item.type), ['reasoning', 'message'])
  t.equal(reasoning.usage?.output_tokens_details.reasoning_tokens, 20, 'a reasoning model thinks with at most half the cap')
  t.ok(reasoning.usage!.output_tokens <= 40, `${reasoning.usage?.output_tokens} output tokens, reasoning included, within max_output_tokens`)
})

t.test('Responses: the event stream, read by the openai client (raw events and the stream helper)', async (t) => {
  const client = openai(await serve(t))
  const events = await client.responses.create({ model: 'gpt-4o-mini', input: 'Hello there', max_output_tokens: 12, stream: true })
  const types: string[] = []
  const sequence: number[] = []
  let text = ''
  let completed: OpenAI.Responses.Response | undefined
  for await (const event of events) {
    types.push(event.type)
    sequence.push(event.sequence_number)
    if (event.type === 'response.output_text.delta') text += event.delta
    if (event.type === 'response.completed' || event.type === 'response.incomplete') completed = event.response
  }
  t.same([...new Set(types)], [
    'response.created', 'response.in_progress', 'response.output_item.added', 'response.content_part.added', 'response.output_text.delta',
    'response.output_text.done', 'response.content_part.done', 'response.output_item.done', 'response.incomplete'
  ], 'the events in the order OpenAI sends them; cut at max_output_tokens, the last is response.incomplete')
  t.same(sequence, sequence.map((_, i) => i), 'sequence numbers from 0, one apart')
  t.equal(types.filter((type) => type === 'response.output_text.delta').length, 12, 'one delta a token')
  t.equal(textOf(completed!), text, 'the final response holds the deltas')
  t.same(completed?.usage, { input_tokens: HELLO_TOKENS, input_tokens_details: { cached_tokens: 0 }, output_tokens: 12, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: HELLO_TOKENS + 12 },
    'response.incomplete carries the usage')
  t.same(completed?.incomplete_details, { reason: 'max_output_tokens' })

  const helper = client.responses.stream({ model: 'o4-mini', input: 'Hello there', max_output_tokens: 40, reasoning: { effort: 'low' } })
  let deltas = ''
  helper.on('response.output_text.delta', (event) => { deltas += event.delta })
  const final = await helper.finalResponse()
  t.equal(textOf(final), deltas, "the helper's accumulated response holds every delta")
  t.same(final.output.map((item) => item.type), ['reasoning', 'message'])
  t.equal(final.status, 'completed', 'the whole reply fits: response.completed')
  t.same(final.usage, { input_tokens: HELLO_TOKENS, input_tokens_details: { cached_tokens: 0 }, output_tokens: 16 + 8 + HELLO_TOKENS, output_tokens_details: { reasoning_tokens: 16 }, total_tokens: 24 + 2 * HELLO_TOKENS },
    'the reasoning tokens within the output tokens, all within max_output_tokens')
})

t.test('Responses: a long prompt sent again is read from the prompt cache, in 128-token steps', async (t) => {
  const client = openai(await serve(t))
  const input = longText(1500)
  const first = await client.responses.create({ model: 'gpt-4o-mini', input, max_output_tokens: 16 })
  const second = await client.responses.create({ model: 'gpt-4o-mini', input: [{ role: 'user', content: input }, { role: 'user', content: 'And one more thing' }], max_output_tokens: 16 })
  t.equal(first.usage?.input_tokens_details.cached_tokens, 0, 'the first call computes it all')
  const cached = second.usage!.input_tokens_details.cached_tokens
  t.ok(cached >= 1024 && (cached - 1024) % 128 === 0 && cached <= first.usage!.input_tokens, `then ${cached} of ${second.usage!.input_tokens} read from the cache`)
  const short = await client.responses.create({ model: 'gpt-4o-mini', input: 'short', max_output_tokens: 16 })
  const again = await client.responses.create({ model: 'gpt-4o-mini', input: 'short', max_output_tokens: 16 })
  t.equal(short.usage?.input_tokens_details.cached_tokens, 0)
  t.equal(again.usage?.input_tokens_details.cached_tokens, 0, 'under 1024 tokens nothing is cached')
})

t.test('embeddings: floats and base64 of the requested dimensions, read by the openai client', async (t) => {
  const client = openai(await serve(t))
  // The client asks for base64 unless told otherwise, and decodes it.
  const decoded = await client.embeddings.create({ model: 'text-embedding-3-small', input: ['Hello there', 'General Kenobi'], dimensions: 8 })
  const floats = await client.embeddings.create({ model: 'text-embedding-3-small', input: ['Hello there', 'General Kenobi'], dimensions: 8, encoding_format: 'float' })
  t.equal(decoded.object, 'list')
  t.same(decoded.data.map((item) => item.embedding.length), [8, 8], 'the requested dimensions')
  t.same(decoded.data.map((item) => item.embedding), floats.data.map((item) => item.embedding), 'base64 decodes to the same vectors as floats')
  t.not(decoded.data[0]!.embedding.join(), decoded.data[1]!.embedding.join(), 'each input its own vector')
  for (const item of floats.data) t.ok(Math.abs(Math.hypot(...item.embedding) - 1) < 1e-6, 'a unit vector')
  // OpenAI's embedding models count by cl100k_base, their own encoding.
  const embeddingTokens = (text: string) => cl100kTokens(text)
  const inputTokens = embeddingTokens('Hello there') + embeddingTokens('General Kenobi')
  t.same(floats.usage, { prompt_tokens: inputTokens, total_tokens: inputTokens }, "the inputs' tokens, as the model's tokenizer counts them")

  const full = await client.embeddings.create({ model: 'text-embedding-3-large', input: 'Hello there', encoding_format: 'float' })
  t.equal(full.data[0]!.embedding.length, 3072, "the model's own dimensions by default")
  const tokens = await client.embeddings.create({ model: 'text-embedding-3-small', input: [[1, 2, 3], [4, 5]], dimensions: 4 })
  t.same(tokens.usage, { prompt_tokens: 5, total_tokens: 5 }, 'token arrays: their length')
  t.same((await client.embeddings.create({ model: 'text-embedding-3-small', input: [1, 2, 3], dimensions: 4 })).usage.prompt_tokens, 3, 'one token array')
})

t.test('Messages: the JSON message, read by the Anthropic client', async (t) => {
  const client = anthropic(await serve(t))
  const message = await client.messages.create({ model: 'claude-sonnet-4-5', max_tokens: 5, system: 'Be brief.', messages: [{ role: 'user', content: 'Hello there' }] })
  t.equal(message.type, 'message')
  t.equal(message.role, 'assistant')
  t.equal(message.model, 'claude-sonnet-4-5')
  t.equal(message.stop_reason, 'max_tokens', 'cut at max_tokens')
  t.same(message.content, [{ type: 'text', text: 'budget gateway token model relay' }])
  t.match(message.usage, { output_tokens: 5, cache_creation_input_tokens: 0, cache_read_input_tokens: 0 })
  t.ok(message.usage.input_tokens > 0)

  const whole = await client.messages.create({ model: 'claude-sonnet-4-5', max_tokens: 1000, messages: [{ role: 'user', content: 'Hi' }] })
  t.equal(whole.stop_reason, 'end_turn')
  t.equal(whole.usage.output_tokens, 8 + whole.usage.input_tokens)
})

t.test('Messages: the event stream, read by the Anthropic client (stream: true and the stream helper)', async (t) => {
  const client = anthropic(await serve(t))
  const stream = await client.messages.create({ model: 'claude-sonnet-4-5', max_tokens: 6, messages: [{ role: 'user', content: 'Hello there' }], stream: true })
  const types: string[] = []
  let text = ''
  let inputTokens = 0
  let final: Anthropic.MessageDeltaUsage | undefined
  for await (const event of stream) {
    types.push(event.type)
    if (event.type === 'message_start') inputTokens = event.message.usage.input_tokens
    if (event.type === 'content_block_delta' && event.delta.type === 'text_delta') text += event.delta.text
    if (event.type === 'message_delta') final = event.usage
  }
  t.same(types, ['message_start', 'content_block_start', 'content_block_delta', 'content_block_delta', 'content_block_delta', 'content_block_delta',
    'content_block_delta', 'content_block_delta', 'content_block_stop', 'message_delta', 'message_stop'], "Anthropic's events, the ping aside")
  t.equal(text, 'budget gateway token model relay cost')
  t.match(final, { output_tokens: 6, input_tokens: inputTokens, cache_creation_input_tokens: 0, cache_read_input_tokens: 0 }, 'message_delta carries the cumulative usage')

  const helper = client.messages.stream({ model: 'claude-sonnet-4-5', max_tokens: 100, messages: [{ role: 'user', content: 'Hello there' }] })
  let deltas = ''
  helper.on('text', (delta) => { deltas += delta })
  const message = await helper.finalMessage()
  t.same(message.content, [{ type: 'text', text: deltas }], "the helper's accumulated message holds every delta")
  t.equal(message.stop_reason, 'end_turn')
  t.equal(message.usage.output_tokens, 8 + message.usage.input_tokens)
})

t.test('Messages: the prefix up to a cache_control breakpoint is written once (5 minutes or an hour), then read', async (t) => {
  const client = anthropic(await serve(t))
  const system = longText(1500, 'policy') // well over 1024 tokens at four bytes a token
  const ask = async (ttl: '5m' | '1h', question: string) => await client.messages.create({
    model: 'claude-sonnet-4-5',
    max_tokens: 10,
    system: [{ type: 'text', text: system + ttl, cache_control: { type: 'ephemeral', ttl } }],
    messages: [{ role: 'user', content: question }]
  })
  const first = await ask('5m', 'First question')
  const second = await ask('5m', 'Second question, a little longer')
  t.ok(first.usage.cache_creation_input_tokens! > 1024, `${first.usage.cache_creation_input_tokens} tokens written`)
  t.same(first.usage.cache_creation, { ephemeral_5m_input_tokens: first.usage.cache_creation_input_tokens, ephemeral_1h_input_tokens: 0 })
  t.equal(first.usage.cache_read_input_tokens, 0)
  t.equal(second.usage.cache_read_input_tokens, first.usage.cache_creation_input_tokens, 'the second call reads what the first wrote')
  t.equal(second.usage.cache_creation_input_tokens, 0)
  t.ok(second.usage.input_tokens > first.usage.input_tokens, 'input_tokens: only what comes after the breakpoint')
  t.ok(first.usage.input_tokens < 20)
  const hour = await ask('1h', 'First question')
  t.same(hour.usage.cache_creation, { ephemeral_5m_input_tokens: 0, ephemeral_1h_input_tokens: hour.usage.cache_creation_input_tokens })
  const short = await client.messages.create({ model: 'claude-sonnet-4-5', max_tokens: 10, system: [{ type: 'text', text: 'short', cache_control: { type: 'ephemeral' } }], messages: [{ role: 'user', content: 'Hi' }] })
  t.match(short.usage, { cache_creation_input_tokens: 0, cache_read_input_tokens: 0 }, 'a prefix under 1024 tokens is not cached')
})

t.test("the mocks never bill more output than the request's cap", async (t) => {
  const cache = new PromptCache()
  fc.assert(fc.property(
    fc.integer({ min: 1, max: 600 }), fc.string({ maxLength: 400 }), fc.constantFrom('gpt-4o-mini', 'o4-mini', 'gpt-5', 'unknown-model'), fc.constantFrom(undefined, 'minimal', 'low', 'medium', 'high'),
    (cap, text, model, effort) => {
      const response = planResponse({ model, input: text, max_output_tokens: cap, ...(effort === undefined ? {} : { reasoning: { effort } }) } as ResponsesRequest, cache)
      const message = planMessage({ model: 'claude-haiku-4-5', max_tokens: cap, messages: [{ role: 'user', content: text }] } as MessagesRequest, cache)
      return response.usage.output_tokens <= cap && response.usage.output_tokens >= 1 && response.words.length + response.usage.output_tokens_details.reasoning_tokens === response.usage.output_tokens &&
        message.usage.output_tokens <= cap && message.words.length === message.usage.output_tokens
    }), { numRuns: 300 })
  t.pass('300 requests: output within max_output_tokens / max_tokens, and the words sent are the tokens billed')
})

t.test("errors in each API's own shape, as each client raises them", async (t) => {
  const address = await serve(t)
  const refused = await anthropic(address).messages.create({ model: 'claude-sonnet-4-5', messages: [{ role: 'user', content: 'Hi' }] } as unknown as Anthropic.MessageCreateParamsNonStreaming)
    .then(() => null, (error: unknown) => error)
  t.ok(refused instanceof Anthropic.BadRequestError, 'Anthropic: a BadRequestError')
  t.match((refused as InstanceType<typeof Anthropic.BadRequestError>).error, { type: 'error', error: { type: 'invalid_request_error', message: /max_tokens/ } })
  const raw = await fetch(`${address}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"model":' })
  t.equal(raw.status, 400)
  t.match(await raw.json(), { type: 'error', error: { type: 'invalid_request_error', message: String } }, 'a body that is not JSON')

  const badResponses = await openai(address).responses.create({ model: 'gpt-4o-mini', input: 'Hi', max_output_tokens: '20' as unknown as number }).then(() => null, (error: unknown) => error)
  t.ok(badResponses instanceof OpenAI.BadRequestError, 'OpenAI: a BadRequestError')
  t.match(badResponses, { code: 'invalid_request', param: 'max_output_tokens', type: 'invalid_request_error' }, 'a string is not coerced to a number')
  const badEmbeddings = await openai(address).embeddings.create({ model: 'text-embedding-3-small', input: '' }).then(() => null, (error: unknown) => error)
  t.ok(badEmbeddings instanceof OpenAI.BadRequestError)
  t.match(badEmbeddings, { code: 'invalid_request', param: 'input', type: 'invalid_request_error' })
})

t.test('the forwarders: the upstream gets the body, the API key and the version; its answers and streams pass through as sent', async (t) => {
  const seen: Array<{ url: string, headers: Record<string, unknown>, body: Record<string, unknown> }> = []
  const streamed = new Map<string, string>()
  // The mocks, served as the upstream; their streams are kept as sent, to compare with what the client gets.
  const upstream = await serve(t, {}, (app) => {
    app.addHook('preHandler', async (request) => { seen.push({ url: request.url, headers: request.headers, body: request.body as Record<string, unknown> }) })
    app.addHook('onRequest', async (request, reply) => {
      const write = reply.raw.write.bind(reply.raw)
      let text = ''
      reply.raw.write = ((chunk: string, ...rest: never[]) => { text += chunk; return write(chunk, ...rest) }) as typeof reply.raw.write
      reply.raw.once('finish', () => { streamed.set(request.url, text) })
    })
  })
  const address = await serve(t, { openai: `${upstream}/v1/`, anthropic: `${upstream}/v1`, anthropicKey: 'sk-ant-upstream' })

  const response = await openai(address).responses.create({ model: 'gpt-4o-mini', input: 'Hello there', max_output_tokens: 20, metadata: { kept: 'yes' } })
  t.equal(response.usage?.output_tokens, 8 + HELLO_TOKENS, "the upstream's answer")
  t.match(seen.at(-1), { url: '/v1/responses', headers: { authorization: 'Bearer sk-upstream' }, body: { model: 'gpt-4o-mini', input: 'Hello there', max_output_tokens: 20, metadata: { kept: 'yes' } } })

  const events = await fetch(`${address}/v1/responses`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'gpt-4o-mini', input: 'Hi', max_output_tokens: 5, stream: true }) })
  t.equal(events.headers.get('content-type'), 'text/event-stream')
  t.equal(await events.text(), streamed.get('/v1/responses'), 'the Responses stream, byte for byte')

  const embedded = await openai(address).embeddings.create({ model: 'text-embedding-3-small', input: 'Hello there', dimensions: 4 })
  t.equal(embedded.data[0]!.embedding.length, 4)
  t.match(seen.at(-1), { url: '/v1/embeddings', body: { model: 'text-embedding-3-small', input: 'Hello there', dimensions: 4, encoding_format: 'base64' } })

  const message = await anthropic(address).messages.create({ model: 'claude-sonnet-4-5', max_tokens: 4, messages: [{ role: 'user', content: 'Hi' }] })
  t.equal(message.usage.output_tokens, 4)
  t.match(seen.at(-1), { url: '/v1/messages', headers: { 'x-api-key': 'sk-ant-upstream', 'anthropic-version': String } })
  const unversioned = await fetch(`${address}/v1/messages`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'claude-sonnet-4-5', max_tokens: 3, messages: [{ role: 'user', content: 'Hi' }] })
  })
  t.equal(unversioned.status, 200)
  t.equal(seen.at(-1)?.headers['anthropic-version'], ANTHROPIC_VERSION, 'a client that names no version: 2023-06-01')
  t.equal(ANTHROPIC_VERSION, '2023-06-01')
  const sent = await fetch(`${address}/v1/messages`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'anthropic-version': '2099-01-01', 'anthropic-beta': 'some-beta', 'x-api-key': 'the-callers-key' },
    body: JSON.stringify({ model: 'claude-sonnet-4-5', max_tokens: 3, messages: [{ role: 'user', content: 'Hi' }], stream: true })
  })
  t.equal(await sent.text(), streamed.get('/v1/messages'), 'the Messages stream, byte for byte')
  t.match(seen.at(-1), { headers: { 'x-api-key': 'sk-ant-upstream', 'anthropic-version': '2099-01-01', 'anthropic-beta': 'some-beta' } }, "the client's version and beta passed on; the gateway's key, never the caller's")

  const refused = await fetch(`${address}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'claude-sonnet-4-5', max_tokens: 3, messages: [] }) })
  t.equal(refused.status, 400, 'the gateway refuses what its schema refuses, before the upstream')
  t.match(await refused.json(), { type: 'error', error: { type: 'invalid_request_error' } })
})
