// OpenAI's embeddings API, POST /v1/embeddings: a mock provider that speaks it, or a forwarder to
// UPSTREAM_URL. The mock embeds each input as a deterministic unit vector of the requested dimensions
// (the model's own by default), as floats or as base64 (little-endian float32, which OpenAI's client
// asks for and decodes by default); its usage is the inputs' tokens: a string's as the model's
// tokenizer counts them, a token array's length.
import { createHash } from 'node:crypto'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type, type Static } from '@sinclair/typebox'
import type { FastifyRequest } from 'fastify'
import { answerErrorsAs, authenticating, countTokens, endpoint, forward, openAIFailure } from './common.js'

export interface EmbeddingsOptions {
  /** An OpenAI base URL (…/v1); unset: the mock provider. */
  upstreamUrl?: string
  upstreamApiKey?: string
  /** Runs in the route's onRequest, before the body is read and before any budget work. */
  authenticate?: (request: FastifyRequest) => unknown
}

const TokenArray = Type.Array(Type.Integer({ minimum: 0 }), { minItems: 1 })
const EmbeddingsBody = Type.Object({
  model: Type.String({ minLength: 1, maxLength: 200 }),
  input: Type.Union([
    Type.String({ minLength: 1 }),
    Type.Array(Type.String({ minLength: 1 }), { minItems: 1 }),
    TokenArray,
    Type.Array(TokenArray, { minItems: 1 })
  ]),
  dimensions: Type.Optional(Type.Integer({ minimum: 1, maximum: 8192 })),
  encoding_format: Type.Optional(Type.Union([Type.Literal('float'), Type.Literal('base64')])),
  user: Type.Optional(Type.String())
})
export type EmbeddingsRequest = Static<typeof EmbeddingsBody>

/** Each model's own dimensions; 1536 for a model the mock does not know. */
const MODEL_DIMENSIONS: Record<string, number> = { 'text-embedding-3-small': 1536, 'text-embedding-3-large': 3072, 'text-embedding-ada-002': 1536 }

/** The inputs, one each: a string, or one token array. */
function inputsOf (input: EmbeddingsRequest['input']): Array<string | number[]> {
  if (typeof input === 'string') return [input]
  if (input.every((item) => typeof item === 'number')) return [input as number[]]
  return input as Array<string | number[]>
}

/** A unit vector that depends only on the input: the same text always embeds the same. */
function embed (input: string | number[], dimensions: number): Float32Array {
  const vector = new Float32Array(dimensions)
  const seed = createHash('sha256').update(typeof input === 'string' ? input : JSON.stringify(input)).digest()
  let norm = 0
  for (let i = 0; i < dimensions; i += 8) {
    const block = createHash('sha256').update(seed).update(String(i)).digest()
    for (let j = 0; j < 8 && i + j < dimensions; j++) {
      const value = block.readInt32LE(j * 4) / 2 ** 31
      vector[i + j] = value
      norm += value * value
    }
  }
  const scale = norm === 0 ? 0 : 1 / Math.sqrt(norm)
  for (let i = 0; i < dimensions; i++) vector[i] = vector[i]! * scale
  return vector
}

export function mockEmbeddings (request: EmbeddingsRequest) {
  const dimensions = request.dimensions ?? MODEL_DIMENSIONS[request.model] ?? 1536
  const inputs = inputsOf(request.input)
  const tokens = inputs.reduce((sum, input) => sum + (typeof input === 'string' ? countTokens(request.model, input) : input.length), 0)
  return {
    object: 'list',
    data: inputs.map((input, index) => {
      const vector = embed(input, dimensions)
      return {
        object: 'embedding',
        index,
        embedding: request.encoding_format === 'base64' ? Buffer.from(vector.buffer, vector.byteOffset, vector.byteLength).toString('base64') : Array.from(vector)
      }
    }),
    model: request.model,
    usage: { prompt_tokens: tokens, total_tokens: tokens }
  }
}

export const embeddings: FastifyPluginAsyncTypebox<EmbeddingsOptions> = async (app, options) => {
  answerErrorsAs(app, 'embeddings', openAIFailure)
  app.post('/v1/embeddings', { schema: { body: EmbeddingsBody }, ...authenticating(options.authenticate) }, async (request, reply) => {
    // The model the gate chose (auto-downgrade); embeddings have no output cap to clamp.
    const body: EmbeddingsRequest = { ...request.body, model: request.budgetGate?.model ?? request.body.model }
    if (options.upstreamUrl !== undefined) {
      return await forward(request, reply, {
        url: endpoint(options.upstreamUrl, '/embeddings'),
        headers: options.upstreamApiKey === undefined ? {} : { authorization: `Bearer ${options.upstreamApiKey}` },
        body,
        stream: false
      })
    }
    return mockEmbeddings(body)
  })
}
