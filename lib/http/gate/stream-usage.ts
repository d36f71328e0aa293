// What a streamed response used: its event stream read on its way to the client, chunk by chunk, by the
// route's model API's usage reader.
import { pipeline, Readable, Transform } from 'node:stream'
import { createParser } from 'eventsource-parser'
import type { FastifyRequest } from 'fastify'
import type { ModelApi, StreamUsageReader } from '../../model-apis/index.js'
import type { TokenUsage } from '../../pricing/index.js'
import type { BudgetGateState } from './gate-options.js'

/** A response's event stream, fed chunk by chunk; `finish` when it has ended. */
export type StreamFeed = ((chunk: Uint8Array | string) => void) & { finish: () => void }

/**
 * Feeds a response's event stream to its API's usage reader (WHATWG event-stream rules, bytes decoded
 * as UTF-8 across chunk boundaries): one decoder and one parser per response. Text reaches the parser
 * only once a line end has arrived: the parser searches all it holds at every feed, so a long line fed
 * chunk by chunk (a Responses `response.completed` of megabytes, on one line) would cost the square of
 * its length. At the end, a last event closed by a lone CR is dispatched (the parser holds a CR back in
 * case a LF follows).
 */
export function streamFeeder (reader: StreamUsageReader, onUsage: (usage: TokenUsage) => void): StreamFeed {
  const decoder = new TextDecoder()
  const parser = createParser({
    onEvent: (event) => {
      reader.event(event.event, event.data)
      const usage = reader.usage()
      if (usage !== null) onUsage(usage)
    }
  })
  let unended: string[] = [] // text since the last line end
  let endsWithCR = false
  const push = (text: string) => {
    if (text === '') return
    unended.push(text)
    // The parser holds a CR it was fed last until it sees what follows it: then this text goes at once.
    const heldCR = endsWithCR
    endsWithCR = text.endsWith('\r')
    if (!heldCR && !/[\r\n]/.test(text)) return
    parser.feed(unended.length === 1 ? text : unended.join(''))
    unended = []
  }
  // A string after bytes first flushes what the decoder holds (an incomplete character: U+FFFD).
  const feed = (chunk: Uint8Array | string) => { push(typeof chunk === 'string' ? decoder.decode() + chunk : decoder.decode(chunk, { stream: true })) }
  let finished = false
  return Object.assign(feed, {
    finish: () => {
      if (finished) return
      finished = true
      push(decoder.decode())
      if (endsWithCR) parser.feed('\n')
    }
  })
}

/** The route's stream, byte for byte, with every chunk fed to the gate on its way to the client. */
export function readThrough (source: Readable, feed: StreamFeed): Readable {
  const tap = new Transform({
    transform (chunk: Uint8Array | string, _encoding, done) {
      feed(chunk)
      done(null, chunk)
    },
    flush (done) {
      feed.finish()
      done()
    }
  })
  // An error or a cut on either side destroys both: Fastify sees it on the tap, the route's stream is closed.
  pipeline(source, tap, () => {})
  return tap
}

/**
 * The request's `streamed()`: the response's events read by its API's reader, the state's usage
 * following the reader's whenever it has one. A reader that fails stops being read, and the call is
 * charged its estimate (never a partial count).
 */
export function readStreamUsage (request: FastifyRequest, api: ModelApi, state: () => BudgetGateState): StreamFeed {
  // Built at the first chunk, when the model the call uses (maybe the cheaper one) is settled.
  let feed: StreamFeed | undefined
  let failed = false
  const guarded = (read: (feed: StreamFeed) => void) => {
    if (failed) return
    try {
      read(feed ??= streamFeeder(api.streamUsage(state().model), (usage) => { state().usage = usage }))
    } catch (error) {
      failed = true
      state().usage = null
      request.log.warn({ err: error, requestId: state().requestId }, 'reading a streamed response\'s usage failed: the call is charged its estimate')
    }
  }
  return Object.assign((chunk: Uint8Array | string) => { guarded((feed) => { feed(chunk) }) }, {
    // Only a stream that began: a response that streamed nothing has nothing to finish.
    finish: () => { if (feed !== undefined) guarded((feed) => { feed.finish() }) }
  })
}
