// What the gate needs to know of one model API (chat completions, Responses, Anthropic's Messages,
// embeddings) to guard its calls: how to bound a request, how to read usage from a JSON body or from
// the API's own event stream, and how to say no in the API's own error shape. The gate runs the same
// hold, settle, lease, clamp and rate-limit path for every API; nothing else in it knows a wire format.
import type { CostEstimate } from '../pricing/index.js'
import type { ModelPrice, PriceBook, TokenUsage } from '../pricing/index.js'

export type ApiName = 'chat' | 'responses' | 'messages' | 'embeddings'

/** Why the gate says no, independent of any wire format; each API words it in its own shape. */
export type RefusalKind =
  | 'invalid_request' // 400: the request cannot be bounded or read
  | 'insufficient_quota' // 402: a budget refuses
  | 'rate_limit_requests' // 429: a requests-per-minute limit
  | 'rate_limit_tokens' // 429: a tokens-per-minute limit
  | 'unavailable' // 503: the budget database cannot be reached
  | 'server_error' // 503: the operator's configuration (an exchange rate is missing)

export interface Refusal {
  status: number
  kind: RefusalKind
  /** The gate's stable code: budget_exceeded, rate_limit_exceeded, unbounded_field, invalid_scope, ... */
  code: string
  message: string
  /** The request field at fault, when there is one. */
  param: string | null
  /** The budget's figures and what else the refusal names ({ budget: { id, remaining, ... } }). */
  details: Record<string, unknown>
}

/** Reads one streamed response's usage, event by event, as the gate parses the stream (WHATWG event-stream rules). */
export interface StreamUsageReader {
  /** One dispatched event: its `event` field (undefined when it named none) and its data lines joined. */
  event: (name: string | undefined, data: string) => void
  /**
   * The usage the provider itself has reported so far; null when it reported none, and the call is
   * then charged its estimate. Never a count made from the chunks passed on.
   */
  usage: () => TokenUsage | null
}

/** The output cap of an API that has one, for nearLimit 'clamp'. */
export interface OutputLimit {
  /** The output tokens the body asks for at most (its own field, else the model's maximum); null when unknown. */
  requested: (body: Record<string, unknown>, price: ModelPrice) => number | null
  /** The body with its output cap lowered to `tokens`, in the field(s) the provider obeys. */
  withLimit: (body: Record<string, unknown>, tokens: number, price: ModelPrice) => Record<string, unknown>
}

export interface ModelApi {
  name: ApiName
  /**
   * The worst case of the call to `model` (the requested one unless auto-downgrade chose another): a
   * true upper bound on what the provider can bill, with `atOutputLimit` when the API has an output
   * cap. Throws InvalidFieldError, UnboundedFieldError or ModelNotPricedError (lib/kernel/errors.ts) for what
   * it cannot bound (as a rejected promise); the gate answers those with a 400. Asynchronous: work that
   * grows with the body runs in slices that give the event loop a turn (lib/kernel/loop-slices.ts).
   */
  estimate: (body: unknown, prices: PriceBook, model?: string) => Promise<CostEstimate>
  /** Null for an API without an output cap (embeddings): clamp never applies there. */
  outputLimit: OutputLimit | null
  /** The usage in a JSON response body, as the provider returned it; null when there is none. */
  usageFromBody: (payload: string, requestedModel: string) => TokenUsage | null
  /** A reader for one streamed response. */
  streamUsage: (requestedModel: string) => StreamUsageReader
  /** The response body of a refusal, in the API's error shape (the gate sets the status and the x-budget-* headers). */
  errorBody: (refusal: Refusal) => unknown
  /**
   * The body an admitted call is forwarded with, when the estimate assumed something the provider
   * would otherwise decide by the account's settings (OpenAI's service tier): that assumption named.
   */
  forwarded?: (body: Record<string, unknown>, model: string) => Record<string, unknown>
}
