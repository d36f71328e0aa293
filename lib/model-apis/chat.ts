// OpenAI's chat completions (POST /v1/chat/completions), as the gate knows it: bounded by the prompt and
// max_tokens / max_completion_tokens (lib/pricing/estimate.ts), usage read from the body's `usage` or
// from the stream's `chat.completion.chunk` that carries one (stream_options.include_usage), refusals
// in OpenAI's error shape.
import { estimateChatCost } from '../pricing/index.js'
import type { TokenUsage } from '../pricing/index.js'
import type { ModelApi, StreamUsageReader } from './model-api.js'
import { openAIErrorBody } from './openai-error.js'
import { atListPriceTier } from './service-tier.js'
import { encodingFor } from '../pricing/index.js'

const OUTPUT_LIMITS = ['max_tokens', 'max_completion_tokens'] as const

/** The output tokens the request asks for at most: its max_tokens or max_completion_tokens, else the model's maximum. */
export function requestedOutputTokens (body: Record<string, unknown>, modelMaximum: number | undefined, obeyed?: 'max_tokens'): number | null {
  const named = (obeyed === undefined ? OUTPUT_LIMITS : [obeyed]).map((field) => body[field]).filter((value): value is number => Number.isInteger(value) && (value as number) > 0)
  return named.length > 0 ? Math.max(...named) : modelMaximum ?? null
}

/**
 * The body with its output limit lowered to `tokens`: each of max_tokens and max_completion_tokens it
 * names, or max_completion_tokens (OpenAI's current name, which every OpenAI chat model takes) when it
 * names neither; and always the field the model's provider obeys when it takes one alone (`obeyed`:
 * DeepSeek's and Mistral's max_tokens), which would otherwise leave the call uncapped there.
 */
export function withOutputLimit (body: Record<string, unknown>, tokens: number, obeyed?: 'max_tokens'): Record<string, unknown> {
  const named: string[] = OUTPUT_LIMITS.filter((field) => body[field] !== undefined && body[field] !== null)
  if (obeyed !== undefined && !named.includes(obeyed)) named.push(obeyed)
  return { ...body, ...Object.fromEntries((named.length > 0 ? named : ['max_completion_tokens']).map((field) => [field, tokens])) }
}

interface OpenAIUsage { prompt_tokens?: unknown, completion_tokens?: unknown, prompt_tokens_details?: { cached_tokens?: unknown } | null }

/**
 * The prompt tokens read from the provider's cache (`prompt_tokens_details.cached_tokens`, OpenAI's
 * shape, which OpenAI-compatible providers report too), priced at the cache-read rate. A count that is
 * no count, or more than the prompt, is left out: the whole prompt at the input rate, never under.
 */
export function cachedTokensOf (usage: OpenAIUsage): { cachedInputTokens?: number } {
  const cached = usage.prompt_tokens_details?.cached_tokens
  return Number.isSafeInteger(cached) && (cached as number) > 0 && (cached as number) <= (usage.prompt_tokens as number) ? { cachedInputTokens: cached as number } : {}
}

/**
 * The usage of a parsed completion or chunk, with its model as the upstream named it (maybe a dated
 * snapshot) else the requested one; null when it carries no whole count.
 */
const isTokenCount = (value: unknown): boolean => Number.isSafeInteger(value) && (value as number) >= 0

function usageOf (parsed: unknown, fallbackModel: string): TokenUsage | null {
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return null
  const { model, usage } = parsed as { model?: unknown, usage?: OpenAIUsage | null }
  if (typeof usage !== 'object' || usage === null) return null
  const { prompt_tokens: inputTokens, completion_tokens: outputTokens } = usage
  if (!isTokenCount(inputTokens) || !isTokenCount(outputTokens)) return null
  return { model: typeof model === 'string' && model !== '' ? model : fallbackModel, inputTokens: inputTokens as number, outputTokens: outputTokens as number, ...cachedTokensOf(usage) }
}

function parsedOrNull (text: string): unknown {
  try {
    return JSON.parse(text)
  } catch {
    return null
  }
}

/** Reads `usage` from a chat completion's JSON body, as the provider returned it. */
export function usageFromChatBody (payload: string, requestedModel: string): TokenUsage | null {
  // Most bodies that reach here are refusals and errors: no parse for a body that cannot hold usage.
  if (!payload.includes('"usage"')) return null
  return usageOf(parsedOrNull(payload), requestedModel)
}

/**
 * Only the provider's own count: the chunk with `usage` (the final one, asked for with
 * stream_options.include_usage). `[DONE]` and events that are not JSON are passed on and not counted;
 * a stream that ends without a usage chunk, complete or cut, is charged its estimate: the chunks say
 * nothing of how many tokens they held, nor of what the provider generated after a cut.
 */
function chatStreamUsage (requestedModel: string): StreamUsageReader {
  let usage: TokenUsage | null = null
  return {
    event: (_name, data) => {
      if (data === '[DONE]' || !data.includes('"usage"')) return
      usage = usageOf(parsedOrNull(data), requestedModel) ?? usage
    },
    usage: () => usage
  }
}

export const chatApi: ModelApi = {
  name: 'chat',
  estimate: estimateChatCost,
  outputLimit: {
    requested: (body, price) => requestedOutputTokens(body, price.maxOutputTokens, price.outputLimitField),
    withLimit: (body, tokens, price) => withOutputLimit(body, tokens, price.outputLimitField)
  },
  usageFromBody: usageFromChatBody,
  streamUsage: chatStreamUsage,
  errorBody: openAIErrorBody,
  // Only to OpenAI's own models: an OpenAI-compatible provider may refuse a field it does not know.
  forwarded: (body, model) => encodingFor(model) === null ? body : atListPriceTier(body)
}
