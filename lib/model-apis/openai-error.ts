// OpenAI's error shape, { error: { message, type, code, param } }, which OpenAI's clients read into
// their typed APIError (RateLimitError, BadRequestError, ...): chat completions, Responses and
// embeddings answer refusals in it.
import type { Refusal, RefusalKind } from './model-api.js'

// OpenAI's own `type` for each kind: a 429 names the limited dimension, as OpenAI's does.
const OPENAI_TYPES: Record<RefusalKind, string> = {
  invalid_request: 'invalid_request_error',
  insufficient_quota: 'insufficient_quota',
  rate_limit_requests: 'requests',
  rate_limit_tokens: 'tokens',
  unavailable: 'service_unavailable',
  server_error: 'server_error'
}

export function openAIErrorBody (refusal: Refusal): { error: Record<string, unknown> } {
  return { error: { message: refusal.message, type: OPENAI_TYPES[refusal.kind], code: refusal.code, param: refusal.param, ...refusal.details } }
}
