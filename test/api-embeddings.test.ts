// The embeddings API module, without I/O: its worst case against what OpenAI bills (cl100k_base, the
// encoding of text-embedding-3-* and ada-002), every field it refuses, usage from a body, no usage from
// a stream, OpenAI's error shape, and any JSON at all refused only with the estimate's own errors.
import fc from 'fast-check'
import t from 'tap'
import { countTokens as cl100k } from 'gpt-tokenizer/encoding/cl100k_base'
import {
  MAX_INPUTS, MAX_TOKENS_PER_INPUT, MAX_TOKENS_PER_REQUEST, embeddingsApi, estimateEmbeddingCost, worstCaseEmbeddingTokens
} from '../lib/model-apis/embeddings.js'
import { InvalidFieldError, ModelNotPricedError, UnboundedFieldError } from '../lib/kernel/errors.js'
import { checkPriceTable, createPriceBook, DEFAULT_PRICES, type PriceTable } from '../lib/pricing/pricing.js'
import { tokenCounter } from '../lib/pricing/tokens.js'

const ORDINARY = { disallowedSpecial: new Set<string>() }
/** What OpenAI bills for an embedding input: its cl100k_base tokens, and nothing added (OpenAI's cookbook). */
const openAITokens = (text: string): number => cl100k(text, ORDINARY)

// OpenAI's list prices; an embedding model has no output, so its output rate is 0.
const EMBEDDING_PRICES: PriceTable = {
  'text-embedding-3-small': { input: '0.02', output: '0', maxOutputTokens: 1 },
  'text-embedding-3-large': { input: '0.13', output: '0', maxOutputTokens: 1 },
  'text-embedding-ada-002': { input: '0.1', output: '0', maxOutputTokens: 1 },
  'fee-embed': { input: '1', output: '0', maxOutputTokens: 1, perRequest: '0.001' }
}
const book = createPriceBook({ ...DEFAULT_PRICES, ...EMBEDDING_PRICES })
const small = 'text-embedding-3-small'
const embed = (extra: Record<string, unknown> = {}) => ({ model: small, input: 'The quick brown fox jumped over the lazy dog', ...extra })

const PROSE = [
  'The quick brown fox jumped over the lazy dog',
  'Retrieval-augmented generation splits documents into chunks, embeds each chunk, and stores the vectors.',
  'Der schnelle braune Fuchs springt über den faulen Hund.',
  '東京は日本の首都であり、世界最大の都市圏の一つです。',
  'function add(a, b) {\n  return a + b\n}\n',
  '{"id": 42, "tags": ["a", "b"], "nested": {"ok": true}}',
  'Emoji 😀🎉 and combining marks: é ñ ü, and <|endoftext|> as plain text.',
  '     leading and trailing spaces     ',
  'x'.repeat(5000),
  'Lorem ipsum dolor sit amet, consectetur adipiscing elit. '.repeat(100)
]

t.test('the catalog prices OpenAI\'s embedding models (input only, output 0); a price-table entry with output "0" does too', async (t) => {
  // genai-prices finds OpenAI models by name only if they start gpt-, o1/o3/o4 or are whisper-1: the
  // catalog looks embedding models up under their provider, and gives them an output rate of 0.
  const catalogOnly = createPriceBook({})
  t.same(catalogOnly.resolve(small)?.price.input, '0.02')
  t.same(catalogOnly.resolve(small)?.price.output, '0')
  t.same((await estimateEmbeddingCost({ model: small, input: Array.from({ length: 1000 }, (_, i) => i) }, catalogOnly)), { model: small, amount: '0.00002', tokens: 1000 })
  t.equal(catalogOnly.resolve('text-embedding-4-imaginary'), null, 'a name the catalog does not know stays unpriced')
  t.equal(checkPriceTable(EMBEDDING_PRICES), null, 'an embedding entry: input rate, output 0')
  t.same(book.resolve(small)?.price, EMBEDDING_PRICES[small])
  // 1000 tokens at $0.02 per 1M.
  t.same((await estimateEmbeddingCost({ model: small, input: Array.from({ length: 1000 }, (_, i) => i) }, book)), { model: small, amount: '0.00002', tokens: 1000 })
  t.same((await estimateEmbeddingCost({ model: 'text-embedding-3-large', input: [[1, 2, 3], [4]] }, book)), { model: 'text-embedding-3-large', amount: '0.00000052', tokens: 4 })
})

t.test('a per-request fee is added once; the model argument (a downgrade) prices the call', async (t) => {
  t.same((await estimateEmbeddingCost({ model: 'fee-embed', input: [1, 2] }, book)), { model: 'fee-embed', amount: '0.001002', tokens: 2 })
  const downgraded = (await estimateEmbeddingCost({ model: 'text-embedding-3-large', input: [[1, 2, 3], [4]] }, book, small))
  t.same(downgraded, { model: small, amount: '0.00000008', tokens: 4 })
  t.equal(embeddingsApi.estimate, estimateEmbeddingCost)
  t.equal(embeddingsApi.outputLimit, null, 'nothing to clamp')
  t.equal(embeddingsApi.name, 'embeddings')
})

t.test('strings: never under OpenAI\'s count, by bytes for models without a known tokenizer', async (t) => {
  const other = 'mistral-embed'
  t.equal(tokenCounter(other), null, 'a model whose tokenizer tokens.ts does not know')
  for (const text of PROSE) {
    const bound = (await worstCaseEmbeddingTokens({ model: other, input: text }))
    t.ok(bound >= openAITokens(text), `${JSON.stringify(text.slice(0, 30))}: ${bound} >= ${openAITokens(text)}`)
    t.equal(bound, Buffer.byteLength(text, 'utf8') + 4, 'a token a byte, and the input\'s allowance')
  }
  const all = (await worstCaseEmbeddingTokens({ model: other, input: PROSE }))
  t.ok(all >= PROSE.reduce((sum, text) => sum + openAITokens(text), 0))
  t.equal(all, PROSE.reduce((sum, text) => sum + Buffer.byteLength(text, 'utf8') + 4, 0))
})

t.test('strings: OpenAI\'s embedding models count by cl100k_base, their own encoding', async (t) => {
  t.not(tokenCounter(small), null)
  for (const text of PROSE) {
    const bound = (await worstCaseEmbeddingTokens({ model: small, input: text }))
    t.ok(bound >= openAITokens(text), `${JSON.stringify(text.slice(0, 30))}: ${bound} >= ${openAITokens(text)}`)
    t.ok(bound <= openAITokens(text) + 4 || text.length > 1000, 'tight for short text')
  }
  t.equal((await estimateEmbeddingCost({ model: small, input: PROSE[0] }, book)).tokens, openAITokens(PROSE[0]!) + 4)
})

t.test('strings: by the tokenizer, for a model whose tokenizer tokens.ts knows (a table entry named for it)', async (t) => {
  // gpt-4 is cl100k_base in tokens.ts: the same encoding as the embedding models, so the oracle applies.
  for (const text of PROSE) {
    const bound = (await worstCaseEmbeddingTokens({ model: 'gpt-4', input: text }))
    t.ok(bound >= openAITokens(text), `${JSON.stringify(text.slice(0, 30))}: ${bound} >= ${openAITokens(text)}`)
    t.ok(bound <= openAITokens(text) + 4 || text.length > 1000, 'tight for short text')
    // A piece of more than 192 bytes (5000 x's) counts its bytes in tokens.ts, by design.
    t.ok(bound < Buffer.byteLength(text, 'utf8') + 4 || text.length < 20 || text.startsWith('xxxx'), 'tighter than the bytes')
  }
  // The price table's name picks the tokenizer, as for chat.
  const pricedAsGpt4 = createPriceBook({ 'gpt-4': { input: '30', output: '60', maxOutputTokens: 8192 } })
  t.equal((await estimateEmbeddingCost({ model: 'gpt-4', input: PROSE[0] }, pricedAsGpt4)).tokens, openAITokens(PROSE[0]!) + 4)
})

t.test('token arrays count exactly their length', async (t) => {
  t.equal((await worstCaseEmbeddingTokens({ model: small, input: [0, 1, 2, 100_000] })), 4)
  t.equal((await worstCaseEmbeddingTokens({ model: small, input: [[1], [2, 3], [4, 5, 6]] })), 6)
  t.equal((await worstCaseEmbeddingTokens({ model: small, input: Array.from({ length: MAX_TOKENS_PER_INPUT }, () => 7) })), MAX_TOKENS_PER_INPUT)
  // 36 inputs of 8192 tokens: 294,912, within the request's 300,000.
  t.equal((await worstCaseEmbeddingTokens({ model: small, input: Array.from({ length: 36 }, () => new Array(MAX_TOKENS_PER_INPUT).fill(1)) })), 36 * MAX_TOKENS_PER_INPUT)
  t.equal((await worstCaseEmbeddingTokens({ model: small, input: Array.from({ length: MAX_INPUTS }, () => [1]) })), MAX_INPUTS)
})

t.test('optional fields are accepted, null as absent', async (t) => {
  for (const extra of [
    { dimensions: 256 }, { dimensions: null }, { encoding_format: 'float' }, { encoding_format: 'base64' }, { encoding_format: null },
    { user: 'user-1' }, { user: null }, { dimensions: 1024, encoding_format: 'base64', user: '' }
  ]) {
    t.equal((await worstCaseEmbeddingTokens(embed(extra))), (await worstCaseEmbeddingTokens(embed())), JSON.stringify(extra))
  }
})

/** The error a body is refused with: its class, code and field. */
async function refusal (body: unknown, prices = book, model?: string): Promise<{ kind: string, field: string } | null> {
  try {
    (await estimateEmbeddingCost(body, prices, model))
    return null
  } catch (error) {
    // @fastify/error's instanceof matches by code, which the three share: gateCode tells them apart.
    const kind = !(error instanceof InvalidFieldError) ? 'other' : (error as Partial<ModelNotPricedError | UnboundedFieldError>).gateCode ?? 'invalid'
    return { kind, field: (error as InvalidFieldError).field }
  }
}

t.test('every field the estimate cannot bound is refused as unbounded_field', async (t) => {
  for (const field of ['stream', 'max_tokens', 'n', 'priority', 'service_tier', 'input_type', 'truncate', '__proto__', 'constructor', 'Input']) {
    t.same(await refusal(JSON.parse(JSON.stringify({ ...embed(), [field]: 1 }))), { kind: 'unbounded_field', field }, field)
  }
  t.same(await refusal(JSON.parse('{"model":"text-embedding-3-small","input":"a","__proto__":{"x":1}}')), { kind: 'unbounded_field', field: '__proto__' })
})

t.test('malformed and over-limit inputs are refused as invalid (OpenAI would answer 400), naming the field', async (t) => {
  const bigArray = (length: number) => new Array(length).fill(1)
  const cases: Array<[unknown, string]> = [
    [null, 'body'], [[], 'body'], ['text', 'body'], [42, 'body'],
    [{ input: 'a' }, 'model'], [{ model: '', input: 'a' }, 'model'], [{ model: 7, input: 'a' }, 'model'],
    [{ model: small }, 'input'], [{ model: small, input: null }, 'input'], [{ model: small, input: 5 }, 'input'], [{ model: small, input: { text: 'a' } }, 'input'],
    [{ model: small, input: '' }, 'input'], [{ model: small, input: [] }, 'input'],
    [{ model: small, input: [''] }, 'input'], [{ model: small, input: ['a', ''] }, 'input.1'],
    [{ model: small, input: [[]] }, 'input.0'], [{ model: small, input: [[1], []] }, 'input.1'],
    [{ model: small, input: ['a', [1]] }, 'input.1'], [{ model: small, input: [[1], 'a'] }, 'input.1'],
    [{ model: small, input: [1, 'a'] }, 'input.1'], [{ model: small, input: [1, -1] }, 'input.1'], [{ model: small, input: [1.5] }, 'input.0'],
    [{ model: small, input: [[1, 2], [3, 2 ** 53]] }, 'input.1.1'], [{ model: small, input: [[1, null]] }, 'input.0.1'], [{ model: small, input: [[1, '2']] }, 'input.0.1'],
    [{ model: small, input: [null] }, 'input.0'], [{ model: small, input: [{ text: 'a' }] }, 'input.0'], [{ model: small, input: [[[1]]] }, 'input.0.0'],
    [{ model: small, input: bigArray(MAX_TOKENS_PER_INPUT + 1) }, 'input'],
    [{ model: small, input: [[1], bigArray(MAX_TOKENS_PER_INPUT + 1)] }, 'input.1'],
    [{ model: small, input: Array.from({ length: 37 }, () => bigArray(MAX_TOKENS_PER_INPUT)) }, 'input'],
    [{ model: small, input: new Array(MAX_INPUTS + 1).fill('a') }, 'input'],
    [{ model: small, input: new Array(MAX_INPUTS + 1).fill([1]) }, 'input'],
    [embed({ dimensions: 0 }), 'dimensions'], [embed({ dimensions: 1.5 }), 'dimensions'], [embed({ dimensions: '256' }), 'dimensions'], [embed({ dimensions: -3 }), 'dimensions'],
    [embed({ encoding_format: 'int8' }), 'encoding_format'], [embed({ encoding_format: 1 }), 'encoding_format'], [embed({ encoding_format: ['float'] }), 'encoding_format'],
    [embed({ user: 5 }), 'user'], [embed({ user: { id: 1 } }), 'user']
  ]
  for (const [body, field] of cases) {
    t.same(await refusal(body), { kind: 'invalid', field }, JSON.stringify(body).slice(0, 80))
  }
  t.ok(MAX_TOKENS_PER_REQUEST < 37 * MAX_TOKENS_PER_INPUT, 'the request limit case is past it')
})

t.test('an unknown model, or one the catalog refuses, is model_not_priced with the catalog\'s reason', async (t) => {
  t.same(await refusal(embed({ model: 'no-such-embedder' })), { kind: 'model_not_priced', field: 'model' })
  t.same(await refusal(embed({ model: '__proto__' })), { kind: 'model_not_priced', field: 'model' })
  try {
    (await estimateEmbeddingCost(embed({ model: 'voyage-3' }), book))
    t.fail('voyage-3 is not priced')
  } catch (error) {
    t.match((error as Error).message, /voyage-3 is not priced: it is a voyageai model/)
  }
})

const response = (usage: unknown, extra: Record<string, unknown> = {}) => JSON.stringify({
  object: 'list',
  data: [{ object: 'embedding', index: 0, embedding: [0.0023064255, -0.009327292, 0.015797347] }],
  model: 'text-embedding-3-small',
  usage,
  ...extra
})

t.test('usage from a JSON body: prompt_tokens at the model the response names', async (t) => {
  const read = embeddingsApi.usageFromBody
  t.same(read(response({ prompt_tokens: 8, total_tokens: 8 }), 'alias'), { model: 'text-embedding-3-small', inputTokens: 8, outputTokens: 0 })
  t.same(read(response({ prompt_tokens: 8, total_tokens: 8 }, { model: undefined }), 'alias'), { model: 'alias', inputTokens: 8, outputTokens: 0 })
  t.same(read(response({ prompt_tokens: 8, total_tokens: 8 }, { model: '' }), 'alias'), { model: 'alias', inputTokens: 8, outputTokens: 0 })
  t.same(read(response({ prompt_tokens: 8 }), 'm'), { model: 'text-embedding-3-small', inputTokens: 8, outputTokens: 0 })
  t.same(read(response({ prompt_tokens: 0, total_tokens: 0 }), 'm'), { model: 'text-embedding-3-small', inputTokens: 0, outputTokens: 0 })
  t.same(read(response({ total_tokens: 9 }), 'm'), { model: 'text-embedding-3-small', inputTokens: 9, outputTokens: 0 }, 'a provider that reports only the total')
  t.same(read(response({ prompt_tokens: 8, total_tokens: 10 }), 'm'), { model: 'text-embedding-3-small', inputTokens: 10, outputTokens: 0 }, 'every token of an embedding call is input: the larger count')
  // Not trusted: charged the estimate.
  for (const usage of [
    { prompt_tokens: 9, total_tokens: 8 }, { prompt_tokens: -1, total_tokens: 8 }, { prompt_tokens: 1.5 }, { prompt_tokens: '8' },
    { prompt_tokens: 2 ** 53 }, { prompt_tokens: null, total_tokens: 8 }, {}, null, 8, 'usage', [8]
  ]) {
    t.equal(read(response(usage), 'm'), null, JSON.stringify(usage))
  }
  t.equal(read(response(undefined), 'm'), null, 'no usage')
  for (const payload of ['', 'not json', '{"usage"', '"usage"', '[{"usage":{"prompt_tokens":1}}]', 'null', '{"usage":{"prompt_tokens":1e400}}']) {
    t.equal(read(payload, 'm'), null, payload)
  }
})

t.test('embeddings never stream: a stream\'s reader reports null, whatever it is fed and wherever it is cut', async (t) => {
  const reader = embeddingsApi.streamUsage(small)
  t.equal(reader.usage(), null, 'before any event')
  reader.event(undefined, response({ prompt_tokens: 8, total_tokens: 8 }))
  t.equal(reader.usage(), null, 'a chunk is never counted')
  reader.event('message', '[DONE]')
  t.equal(reader.usage(), null, 'nor a final event')
})

t.test('refusals in OpenAI\'s error shape', async (t) => {
  t.same(embeddingsApi.errorBody({ status: 402, kind: 'insufficient_quota', code: 'budget_exceeded', message: 'Budget exceeded', param: null, details: { budget: { id: 'b1', remaining: '0' } } }), {
    error: { message: 'Budget exceeded', type: 'insufficient_quota', code: 'budget_exceeded', param: null, budget: { id: 'b1', remaining: '0' } }
  })
  t.same(embeddingsApi.errorBody({ status: 400, kind: 'invalid_request', code: 'unbounded_field', message: "Invalid 'truncate'", param: 'truncate', details: {} }), {
    error: { message: "Invalid 'truncate'", type: 'invalid_request_error', code: 'unbounded_field', param: 'truncate' }
  })
  t.equal((embeddingsApi.errorBody({ status: 429, kind: 'rate_limit_tokens', code: 'rate_limit_exceeded', message: 'Slow down', param: null, details: {} }) as { error: { type: string } }).error.type, 'tokens')
})

/** Refused only with the estimate's own errors, never anything else. */
async function throwsOnlyOwnErrors (body: unknown, model?: string): Promise<boolean> {
  try {
    const estimate = (await estimateEmbeddingCost(body, book, model))
    return typeof estimate.amount === 'string' && Number.isSafeInteger(estimate.tokens)
  } catch (error) {
    return error instanceof InvalidFieldError
  }
}

t.test('fast-check: any JSON value, and any mutation of a valid body, is estimated or refused with the estimate\'s errors', async () => {
  await fc.assert(fc.asyncProperty(fc.anything(), async (body) => await throwsOnlyOwnErrors(body)), { numRuns: 2000 })
  await fc.assert(fc.asyncProperty(fc.anything(), fc.option(fc.string()), async (body, model) => await throwsOnlyOwnErrors(body, model ?? undefined)), { numRuns: 500 })
  const valid = fc.record({
    model: fc.constantFrom(small, 'text-embedding-3-large', 'gpt-4', 'fee-embed'),
    input: fc.oneof(fc.string({ minLength: 1 }), fc.array(fc.string({ minLength: 1 }), { minLength: 1, maxLength: 5 }), fc.array(fc.nat(), { minLength: 1, maxLength: 20 }), fc.array(fc.array(fc.nat(), { minLength: 1, maxLength: 5 }), { minLength: 1, maxLength: 5 })),
    dimensions: fc.option(fc.integer({ min: 1, max: 3072 }), { nil: undefined }),
    encoding_format: fc.option(fc.constantFrom('float', 'base64'), { nil: undefined })
  }, { requiredKeys: ['model', 'input'] })
  await fc.assert(fc.asyncProperty(valid, async (body) => {
    const estimate = (await estimateEmbeddingCost(body, book))
    return estimate.model === body.model && (estimate.tokens ?? 0) > 0
  }), { numRuns: 500 })
  const fields = ['model', 'input', 'dimensions', 'encoding_format', 'user', 'stream', 'extra']
  await fc.assert(fc.asyncProperty(valid, fc.constantFrom(...fields), fc.anything(), async (body, field, value) => await throwsOnlyOwnErrors({ ...body, [field]: value })), { numRuns: 2000 })
  await fc.assert(fc.asyncProperty(valid, fc.nat(), fc.anything(), async (body, at, value) => {
    if (!Array.isArray(body.input)) return true
    const input: unknown[] = [...body.input]
    input[at % input.length] = value
    return await throwsOnlyOwnErrors({ ...body, input })
  }), { numRuns: 1000 })
})

t.test('fast-check: the bound is never under OpenAI\'s count, for any text, by bytes and by the tokenizer', async () => {
  const text = fc.oneof(fc.string({ minLength: 1, unit: 'grapheme' }), fc.string({ minLength: 1, unit: 'binary' }), fc.string({ minLength: 1 }))
  await fc.assert(fc.asyncProperty(fc.array(text, { minLength: 1, maxLength: 8 }), async (inputs) => {
    const actual = inputs.reduce((sum, input) => sum + openAITokens(input), 0)
    return (await worstCaseEmbeddingTokens({ model: small, input: inputs })) >= actual && (await worstCaseEmbeddingTokens({ model: 'gpt-4', input: inputs })) >= actual
  }), { numRuns: 1000 })
})

t.test('fast-check: usage from any string is a usage or null, never a throw', async () => {
  fc.assert(fc.property(fc.string(), (payload) => {
    const usage = embeddingsApi.usageFromBody(payload, 'm')
    return usage === null || (Number.isSafeInteger(usage.inputTokens) && usage.outputTokens === 0)
  }), { numRuns: 2000 })
  fc.assert(fc.property(fc.jsonValue(), fc.jsonValue(), (usage, model) => {
    const read = embeddingsApi.usageFromBody(JSON.stringify({ model, usage }), 'm')
    return read === null || (Number.isSafeInteger(read.inputTokens) && read.inputTokens >= 0 && typeof read.model === 'string')
  }), { numRuns: 2000 })
})
