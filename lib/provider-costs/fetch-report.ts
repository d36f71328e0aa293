// One page of a provider's report over HTTP, with the retries a rate-limited, sometimes failing API needs:
// a 429 waits what its retry-after says (up to a bound), a 5xx or a broken connection is tried again after a
// pause that doubles, anything else is the run's failure. A stop aborts the wait and the request.
// A redirect is never followed: the request carries an admin key (OpenAI's in authorization, Anthropic's in
// x-api-key), and fetch, following it, would send x-api-key to whatever host the Location names.
import { setTimeout as sleep } from 'node:timers/promises'
import { storableText } from '../kernel/json-limits.js'

export interface FetchPolicy {
  /** Tries after the first, for a 5xx or a broken connection. */
  serverErrorRetries: number
  /** Tries after the first, for a 429. */
  rateLimitRetries: number
  /** The first pause after a 5xx (or a 429 without retry-after); each next one doubles. */
  backoffMs: number
  /** The longest retry-after honoured: a 429 asking for more ends the run (the next one asks again). */
  maxRetryAfterMs: number
  /** One request's limit, headers and body. */
  timeoutMs: number
  /** The largest page read. */
  maxPageBytes: number
}

export const FETCH_DEFAULTS: FetchPolicy = { serverErrorRetries: 3, rateLimitRetries: 5, backoffMs: 1000, maxRetryAfterMs: 120_000, timeoutMs: 60_000, maxPageBytes: 32 * 1024 * 1024 }

/** A page the provider did not give: the status (0 without an answer) and what it said. */
export class ReportFetchError extends Error {
  constructor (readonly status: number, message: string) {
    super(message)
    this.name = 'ReportFetchError'
  }
}

/** retry-after in ms: delta-seconds, or an HTTP date; null when absent or unreadable. */
export function retryAfterMs (header: string | null, now = Date.now()): number | null {
  if (header === null) return null
  const text = header.trim()
  if (/^\d{1,9}$/.test(text)) return Number(text) * 1000
  const at = Date.parse(text)
  return Number.isNaN(at) ? null : Math.max(0, at - now)
}

/** The most of an error's body read, for the message (which keeps its first 300 characters). */
const ERROR_BODY_BYTES = 4096

/**
 * A response's body, read a chunk at a time up to `limit` bytes: past it the body is cancelled (the connection
 * closes) and `cut` is true. content-length alone does not bound a body: a chunked one has none.
 */
async function readAtMost (response: Response, limit: number): Promise<{ cut: boolean, text: () => string }> {
  const chunks: Uint8Array[] = []
  const text = (): string => Buffer.concat(chunks).toString('utf8')
  if (response.body === null) return { cut: false, text }
  const reader = response.body.getReader()
  let bytes = 0
  for (;;) {
    const { done, value } = await reader.read()
    if (done) return { cut: false, text }
    bytes += value.byteLength
    if (bytes > limit) {
      await reader.cancel()
      chunks.push(value.subarray(0, value.byteLength - (bytes - limit)))
      return { cut: true, text }
    }
    chunks.push(value)
  }
}

/** Where a redirect points, as an origin only (its path and query may hold anything): for the message. */
function redirectTarget (location: string | null, from: string): string {
  if (location === null) return 'nowhere (no location)'
  try {
    return new URL(location, from).origin
  } catch {
    return 'an unreadable location'
  }
}

export async function fetchReport (request: { url: string, headers: Record<string, string> }, policy: FetchPolicy, signal: AbortSignal): Promise<string> {
  let serverErrors = 0
  let rateLimits = 0
  for (;;) {
    signal.throwIfAborted()
    let response: Response
    try {
      response = await fetch(request.url, {
        headers: { accept: 'application/json', ...request.headers },
        redirect: 'manual',
        signal: AbortSignal.any([signal, AbortSignal.timeout(policy.timeoutMs)])
      })
    } catch (error) {
      if (signal.aborted) throw error
      if (serverErrors >= policy.serverErrorRetries) throw new ReportFetchError(0, `no answer after ${serverErrors + 1} tries: ${(error as Error).message}`)
      await sleep(policy.backoffMs * 2 ** serverErrors++, undefined, { signal })
      continue
    }
    if (response.status === 200) {
      const length = Number(response.headers.get('content-length') ?? 0)
      if (length > policy.maxPageBytes) {
        await response.body?.cancel()
        throw new ReportFetchError(200, `a page of ${length} bytes, more than ${policy.maxPageBytes}`)
      }
      const page = await readAtMost(response, policy.maxPageBytes)
      if (page.cut) throw new ReportFetchError(200, `a page of more than ${policy.maxPageBytes} bytes`)
      return page.text()
    }
    if (response.status >= 300 && response.status < 400) {
      await response.body?.cancel()
      throw new ReportFetchError(response.status, `${response.status}: the provider redirects to ${storableText(redirectTarget(response.headers.get('location'), request.url))}; ` +
        'a redirect is not followed (the admin key would go with it): set baseUrl to the API\'s own origin')
    }
    const said = storableText((await readAtMost(response, ERROR_BODY_BYTES).then((body) => body.text(), () => '')).slice(0, 300))
    if (response.status === 429) {
      const asked = retryAfterMs(response.headers.get('retry-after'))
      const wait = asked ?? policy.backoffMs * 2 ** rateLimits
      if (rateLimits >= policy.rateLimitRetries) throw new ReportFetchError(429, `rate limited ${rateLimits + 1} times in a row: ${said}`)
      if (wait > policy.maxRetryAfterMs) throw new ReportFetchError(429, `rate limited; retry-after asks for ${wait} ms, more than the ${policy.maxRetryAfterMs} ms waited`)
      rateLimits++
      await sleep(wait, undefined, { signal })
      continue
    }
    if (response.status >= 500) {
      if (serverErrors >= policy.serverErrorRetries) throw new ReportFetchError(response.status, `${response.status} after ${serverErrors + 1} tries: ${said}`)
      await sleep(policy.backoffMs * 2 ** serverErrors++, undefined, { signal })
      continue
    }
    throw new ReportFetchError(response.status, `${response.status}: ${said}`)
  }
}
