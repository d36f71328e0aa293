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

/** The words of one of the API's error bodies: a string it may hold, else undefined (a proxy's body is anything). */
const said = (body, key) => typeof body?.[key] === 'string' && body[key].trim() !== '' ? body[key] : undefined

/**
 * An answer the page cannot use: any status but 2xx and 401, or a 2xx without the JSON it should carry. Its
 * status, and the API's error body (code, message, field) when it sent one.
 */
export class ApiError extends Error {
  constructor (status, body, statusText) {
    const answered = `The budget API answered ${`${status} ${statusText ?? ''}`.trim()}` // HTTP/2 has no status text
    const detail = said(body, 'message') ?? (status >= 200 && status < 300 ? `${answered}, without the data the page asked for.` : `${answered}.`)
    super(`${status} ${said(body, 'code') ?? ''} ${detail}`.replace(/ +/g, ' '))
    this.status = status
    this.code = said(body, 'code')
    /**
     * The API's own words (Invalid 'amount': must be a plain decimal such as "25.50"), or, for an answer that is
     * not the API's (a proxy's HTML 502), its status.
     */
    this.detail = detail
    /** The request field at fault, as a dotted path (alerts.0.threshold), when the API named one. */
    this.field = said(body, 'field')
  }
}

/** The client of the admin API at `prefix` ('' when at the root), calling with `token()`. */
export function adminApi ({ prefix, token }) {
  let session = 0

  /**
   * `path` starts with '/' or '?' (the list, at the prefix itself, or at '/' for an empty prefix). Resolves
   * with the answer's JSON (a DELETE: null; `accept` other than JSON: a Blob); throws Stale, Unauthorized,
   * Unreachable or ApiError.
   */
  async function call (method, path, { body, accept = 'application/json' } = {}) {
    const asked = session
    const headers = { authorization: `Bearer ${token()}`, accept }
    // No content-type without a body: an empty application/json body is a 400 of its own.
    if (body !== undefined) headers['content-type'] = 'application/json'
    const unreachable = () => asked !== session
      ? new Stale('an answer for a token no longer signed in')
      : new Unreachable('The budget API did not answer: the connection or the gateway is down. Once it is back, reload to see what the API has.')
    const response = await fetch(`${prefix === '' && path.startsWith('?') ? '/' : prefix}${path}`, {
      method, headers, cache: 'no-store', ...(body === undefined ? {} : { body: JSON.stringify(body) })
    }).catch(() => null)
    if (response === null) throw unreachable()
    // Only a DELETE answers without a body (204); any other answer the page uses is a JSON object or list.
    const wanted = response.ok && method === 'DELETE' ? null : response.ok && accept !== 'application/json' ? 'blob' : 'json'
    let answer = null
    try {
      if (wanted === 'blob') answer = await response.blob()
      if (wanted === 'json') answer = await response.json().catch((error) => { if (error.name === 'SyntaxError') return undefined; throw error })
    } catch {
      throw unreachable() // the connection was cut while the answer came
    }
    if (asked !== session) throw new Stale('an answer for a token no longer signed in')
    if (response.status === 401) throw new Unauthorized('the token was refused')
    if (!response.ok || (wanted === 'json' && (answer === null || typeof answer !== 'object'))) throw new ApiError(response.status, answer, response.statusText)
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
