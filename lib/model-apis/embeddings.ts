// OpenAI's embeddings API (POST /v1/embeddings) for the gate: the worst case of a call is its input
// tokens at the input rate (an embedding call has no output, so no output cap and nothing to clamp),
// its usage is the JSON body's `usage`, and it answers refusals in OpenAI's error shape.
//
// Decisions where the design was left open:
// - Strings are counted by the model's tokenizer when tokens.ts knows it (tokenCounter), else a token a
//   UTF-8 byte of the string. OpenAI's embedding models (text-embedding-3-*, ada-002) count by their
//   own encoding, cl100k_base.
// - Each string input adds TOKENS_PER_INPUT: OpenAI adds no framing to an embedding input, but an
//   OpenAI-compatible provider's tokenizer may add its own (BERT's [CLS] and [SEP], SentencePiece's
//   leading space). Token arrays count exactly their length: they are the tokens billed.
// - OpenAI's limits (2048 inputs, 8192 tokens an input, 300,000 a request) are refused with
//   InvalidFieldError where the count is exact (token arrays; the number of inputs): OpenAI would answer
//   400, billing nothing. The 2048 is of inputs in a list; one token array is bounded by the 8192 alone. A string's count here is a bound, not its count, so a long string is never
//   refused for its length; the estimate just holds its bound, and the upstream judges it.
// - null for an optional field (dimensions, encoding_format, user) is taken as the field left out.
// - usage: prompt_tokens is the billed count; total_tokens, when it is a count too, must not be smaller
//   (a part larger than its whole is not trusted: null), and when larger it is what is charged, since an
//   embedding call's every token is input. A provider that reports only total_tokens is read by it.
import { InvalidFieldError, UnboundedFieldError } from '../kernel/errors.js'
import { fromUnits, toUnits } from '../kernel/money.js'
import { pricedCall, type CostEstimate } from '../pricing/index.js'
import { costOf, type PriceBook, type TokenUsage } from '../pricing/index.js'
import { tokenCounter } from '../pricing/index.js'
import type { ModelApi, StreamUsageReader } from './model-api.js'
import { openAIErrorBody } from './openai-error.js'

export interface EmbeddingRequestShape {
  model?: unknown
  input?: unknown
  dimensions?: unknown
  encoding_format?: unknown
  user?: unknown
  [field: string]: unknown
}

// The request's fields (openai's EmbeddingCreateParams). Anything else could be billed past the bound.
const BOUNDED_FIELDS = new Set(['model', 'input', 'dimensions', 'encoding_format', 'user'])
const ENCODING_FORMATS = new Set(['float', 'base64'])
/** OpenAI's limits (EmbeddingCreateParams.input): inputs a request, tokens an input, tokens a request. */
export const MAX_INPUTS = 2048
export const MAX_TOKENS_PER_INPUT = 8192
export const MAX_TOKENS_PER_REQUEST = 300_000
/** What a provider's tokenizer may add to one string input (see the header). */
const TOKENS_PER_INPUT = 4

const isTokenId = (value: unknown): boolean => Number.isSafeInteger(value) && (value as number) >= 0

/** Checks one token array (non-empty, token ids only, within the per-input limit) and returns its length. */
function tokenArrayLength (tokens: unknown[], field: string): number {
  if (tokens.length === 0) throw new InvalidFieldError(field, 'must not be an empty token array')
  if (tokens.length > MAX_TOKENS_PER_INPUT) throw new InvalidFieldError(field, `has ${tokens.length} tokens: an input may have at most ${MAX_TOKENS_PER_INPUT}`)
  for (let index = 0; index < tokens.length; index++) {
    if (!isTokenId(tokens[index])) throw new InvalidFieldError(`${field}.${index}`, 'must be a token id (a non-negative integer)')
  }
  return tokens.length
}

function checkOptionalFields (body: EmbeddingRequestShape): void {
  for (const field of Object.keys(body)) {
    if (!BOUNDED_FIELDS.has(field)) throw new UnboundedFieldError(field, 'is not a field whose cost the budget gate can bound')
  }
  const { dimensions, encoding_format: format, user } = body
  if (dimensions !== undefined && dimensions !== null && !(Number.isSafeInteger(dimensions) && (dimensions as number) >= 1)) {
    throw new InvalidFieldError('dimensions', 'must be a positive integer')
  }
  if (format !== undefined && format !== null && !(typeof format === 'string' && ENCODING_FORMATS.has(format))) {
    throw new InvalidFieldError('encoding_format', `must be one of ${[...ENCODING_FORMATS].join(', ')}`)
  }
  if (user !== undefined && user !== null && typeof user !== 'string') throw new InvalidFieldError('user', 'must be a string')
}

/**
 * The worst case of an embeddings call, in input tokens (it has no output): token arrays their length,
 * strings by `model`'s tokenizer when tokens.ts knows it (the body's own model by default), else a
 * token a UTF-8 byte, each string with TOKENS_PER_INPUT more. Throws InvalidFieldError for an input
 * OpenAI refuses (empty, malformed, past its limits where the count is exact) and UnboundedFieldError
 * for a field it does not know.
 */
export async function worstCaseEmbeddingTokens (body: EmbeddingRequestShape, model: unknown = body.model): Promise<number> {
  checkOptionalFields(body)
  const { input } = body
  if (typeof input === 'string') return await stringTokens([input], model)
  if (!Array.isArray(input)) throw new InvalidFieldError('input', 'must be a string, a list of strings, a token array or a list of token arrays')
  if (input.length === 0) throw new InvalidFieldError('input', 'must not be empty')
  // One token array: the API reads a list of numbers as the tokens of one input.
  if (typeof input[0] === 'number') return tokenArrayLength(input, 'input')
  if (input.length > MAX_INPUTS) throw new InvalidFieldError('input', `has ${input.length} inputs: a request may have at most ${MAX_INPUTS}`)
  if (typeof input[0] === 'string') {
    for (let index = 0; index < input.length; index++) {
      if (typeof input[index] !== 'string') throw new InvalidFieldError(`input.${index}`, 'must be a string, as input.0 is')
    }
    return await stringTokens(input as string[], model)
  }
  let tokens = 0
  for (let index = 0; index < input.length; index++) {
    const tokenArray: unknown = input[index]
    if (!Array.isArray(tokenArray)) throw new InvalidFieldError(`input.${index}`, 'must be a token array (a list of token ids) or, with all the others, a string')
    tokens += tokenArrayLength(tokenArray, `input.${index}`)
  }
  if (tokens > MAX_TOKENS_PER_REQUEST) throw new InvalidFieldError('input', `has ${tokens} tokens: a request may have at most ${MAX_TOKENS_PER_REQUEST}`)
  return tokens
}

async function stringTokens (inputs: string[], model: unknown): Promise<number> {
  const count = typeof model === 'string' ? tokenCounter(model) : null
  let tokens = 0
  for (let index = 0; index < inputs.length; index++) {
    const text = inputs[index]!
    if (text === '') throw new InvalidFieldError(inputs.length === 1 ? 'input' : `input.${index}`, 'must not be an empty string')
    tokens += (count === null ? Buffer.byteLength(text, 'utf8') : await count(text)) + TOKENS_PER_INPUT
  }
  return tokens
}

/** The gate's estimate of an embeddings call: its worst-case input tokens at the input rate, and the per-request fee. */
export async function estimateEmbeddingCost (body: unknown, prices: PriceBook, model?: string): Promise<CostEstimate> {
  const { chosen, priced } = pricedCall(body, prices, model)
  // The price table's name picks the tokenizer: an alias (an Azure deployment's name) is that model.
  const inputTokens = await worstCaseEmbeddingTokens(body as EmbeddingRequestShape, priced.model)
  const tokens = costOf(priced.price, inputTokens, 0)
  const amount = priced.price.perRequest === undefined ? tokens : fromUnits(toUnits(tokens) + toUnits(priced.price.perRequest))
  return { model: chosen, amount, tokens: inputTokens }
}

const isCount = (value: unknown): value is number => Number.isSafeInteger(value) && (value as number) >= 0

/** The usage of an embeddings response body (see the header for prompt_tokens against total_tokens); null when there is none to trust. */
export function embeddingUsageFromBody (payload: string, requestedModel: string): TokenUsage | null {
  if (typeof payload !== 'string' || !payload.includes('"usage"')) return null
  let body: unknown
  try {
    body = JSON.parse(payload)
  } catch {
    return null
  }
  if (typeof body !== 'object' || body === null) return null
  const { model, usage } = body as { model?: unknown, usage?: unknown }
  if (typeof usage !== 'object' || usage === null) return null
  const { prompt_tokens: prompt, total_tokens: total } = usage as { prompt_tokens?: unknown, total_tokens?: unknown }
  let inputTokens: number
  if (isCount(prompt)) {
    if (isCount(total) && total < prompt) return null
    inputTokens = isCount(total) ? total : prompt
  } else if (prompt === undefined && isCount(total)) {
    inputTokens = total
  } else {
    return null
  }
  return { model: typeof model === 'string' && model !== '' ? model : requestedModel, inputTokens, outputTokens: 0 }
}

/** Embeddings never stream: a reader that has nothing to read, so a call is charged by its body or its estimate. */
function noStreamUsage (): StreamUsageReader {
  return { event: () => {}, usage: () => null }
}

export const embeddingsApi: ModelApi = {
  name: 'embeddings',
  estimate: estimateEmbeddingCost,
  outputLimit: null,
  usageFromBody: embeddingUsageFromBody,
  streamUsage: noStreamUsage,
  errorBody: openAIErrorBody
}
