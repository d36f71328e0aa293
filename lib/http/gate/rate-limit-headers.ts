// OpenAI's wire format for a rate-limit refusal (429): the headers its clients read to wait and retry.
import type { RateRefusal } from '../../gate/index.js'

/**
 * OpenAI's rate-limit headers for a 429: each limited dimension's limit, what is left, and when it is
 * full again (OpenAI's duration form, 1s or 6m0s), and retry-after when the call's need is back (in
 * seconds, and in milliseconds as retry-after-ms, which OpenAI's clients read first); for a call too
 * large ever to fit, x-should-retry: false instead.
 */
export function rateLimitHeaders (refusal: RateRefusal): Record<string, string> {
  // A call too large for the limit never fits: say so (OpenAI's clients read x-should-retry) rather than name a wait.
  const headers: Record<string, string> = refusal.tooLarge
    ? { 'x-should-retry': 'false' }
    : { 'retry-after': String(Math.ceil(refusal.retryAfterMs / 1000)), 'retry-after-ms': String(refusal.retryAfterMs) }
  const dimensions = [
    ['requests', refusal.requestsPerMinute, refusal.requestsLeft, refusal.requestsResetMs],
    ['tokens', refusal.tokensPerMinute, refusal.tokensLeft, refusal.tokensResetMs]
  ] as const
  for (const [name, limit, left, resetMs] of dimensions) {
    if (limit === null) continue
    headers[`x-ratelimit-limit-${name}`] = String(limit)
    headers[`x-ratelimit-remaining-${name}`] = String(left ?? 0)
    headers[`x-ratelimit-reset-${name}`] = openAIDuration(resetMs ?? 0)
  }
  return headers
}

/** 20ms, 1s, 6m0s: the form of OpenAI's x-ratelimit-reset-* headers. */
function openAIDuration (ms: number): string {
  if (ms < 1000) return `${Math.ceil(ms)}ms`
  const seconds = Math.ceil(ms / 1000)
  return seconds < 60 ? `${seconds}s` : `${Math.floor(seconds / 60)}m${seconds % 60}s`
}
