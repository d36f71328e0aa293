// The admin API from the page: one client for every read and write, with this tab's token, and the session
// counter that drops an answer asked for under a token since signed out or replaced (it never lands on the
// page of the next token). The API is the validator: a refusal comes back as an ApiError with its own code,
// message and field, for the form to show beside that field.

/** 401: the token was refused (the page signs out and forgets it). */
export class Unauthorized extends Error {}

/** An answer that came after its token was signed out or replaced: dropped, whatever it holds. */
export class Stale extends Error {}

/**
 * No answer at all: the network is down or nothing listens. The browser's own words for it ("Failed to fetch",
 * "NetworkError when attempting to fetch resource") name no cause a reader can act on.
 */
export class Unreachable extends Error {}

/** Any other answer than 2xx or 401: its status, and the API's error body (code, message, field) when it sent one. */
export class ApiError extends Error {
  constructor (status, body, statusText) {
    super(`${status} ${body.code ?? ''} ${body.message ?? statusText}`.trim())
    this.status = status
    this.code = body.code
    /**
     * The API's own words (Invalid 'amount': must be a plain decimal such as "25.50"), or, for an answer that is
     * not the API's (a proxy's HTML 502), its status.
     */
    this.detail = body.message ?? `The budget API answered ${`${status} ${statusText ?? ''}`.trim()}.` // HTTP/2 has no status text
    /** The request field at fault, as a dotted path (alerts.0.threshold), when the API named one. */
    this.field = body.field
  }
}

/** The client of the admin API at `prefix` ('' when at the root), calling with `token()`. */
export function adminApi ({ prefix, token }) {
  let session = 0

  /** `path` starts with '/' or '?' (the list, at the prefix itself, or at '/' for an empty prefix). */
  async function call (method, path, { body, accept = 'application/json' } = {}) {
    const asked = session
    const headers = { authorization: `Bearer ${token()}`, accept }
    // No content-type without a body: an empty application/json body is a 400 of its own.
    if (body !== undefined) headers['content-type'] = 'application/json'
    const response = await fetch(`${prefix === '' && path.startsWith('?') ? '/' : prefix}${path}`, {
      method, headers, cache: 'no-store', ...(body === undefined ? {} : { body: JSON.stringify(body) })
    }).catch(() => null)
    if (response === null) {
      if (asked !== session) throw new Stale('an answer for a token no longer signed in')
      throw new Unreachable('The budget API did not answer: the connection or the gateway is down. Once it is back, reload to see what the API has.')
    }
    const answer = response.status === 204
      ? null
      : response.ok && accept !== 'application/json' ? await response.blob() : await response.json().catch(() => ({}))
    if (asked !== session) throw new Stale('an answer for a token no longer signed in')
    if (response.status === 401) throw new Unauthorized('the token was refused')
    if (!response.ok) throw new ApiError(response.status, answer, response.statusText)
    return answer
  }

  return {
    get: async (path, options) => await call('GET', path, options),
    /** A write: POST, PUT or DELETE with a JSON body (none for undefined). */
    send: async (method, path, body) => await call(method, path, { body }),
    /** A sign-in or sign-out: whatever was asked before is dropped when it answers. */
    renew () { session++ }
  }
}
