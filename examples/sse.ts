// A server-sent events parser, per the WHATWG HTML standard's event-stream interpretation
// (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):
// UTF-8 with an optional leading BOM; lines end with \r\n, \n or \r (even when a \r\n is split
// across chunks); a line starting with ':' is a comment; `field: value` loses one leading space;
// `data` lines are joined with \n; an empty line dispatches the event, unless it has no data.

export interface SseEvent {
  /** The `event` field; 'message' when the event named none. */
  event: string
  /** The `data` lines joined with \n. */
  data: string
  /** The last event id seen so far in the stream ('' when none). */
  id: string
  /** A `retry` field of ASCII digits, in ms, if this event carried one. */
  retry?: number
}

export class SseParser {
  private readonly decoder = new TextDecoder('utf-8') // strips a leading BOM (ignoreBOM is false)
  private line = ''
  /** The last chunk ended with \r: a \n at the start of the next one belongs to that line end. */
  private afterCR = false
  private data: string[] = []
  private eventType = ''
  private lastEventId = ''
  private retry: number | undefined

  /** Feeds bytes (or text); returns the events they completed, in order. */
  push (chunk: Uint8Array | string): SseEvent[] {
    let text = typeof chunk === 'string' ? chunk : this.decoder.decode(chunk, { stream: true })
    if (text.length > 0 && this.afterCR) {
      this.afterCR = false
      if (text.startsWith('\n')) text = text.slice(1)
    }
    const events: SseEvent[] = []
    let start = 0
    for (let i = 0; i < text.length; i++) {
      const char = text.charCodeAt(i)
      if (char !== 10 && char !== 13) continue // \n, \r
      this.processLine(this.line + text.slice(start, i), events)
      this.line = ''
      if (char === 13) {
        if (i + 1 === text.length) this.afterCR = true
        else if (text.charCodeAt(i + 1) === 10) i++
      }
      start = i + 1
    }
    this.line += text.slice(start)
    return events
  }

  /** The stream ended. Per the standard, an event not yet dispatched by an empty line is discarded. */
  end (): SseEvent[] {
    this.decoder.decode()
    this.line = ''
    this.data = []
    this.eventType = ''
    this.retry = undefined
    return []
  }

  private processLine (line: string, events: SseEvent[]): void {
    if (line === '') {
      if (this.data.length > 0) {
        events.push({ event: this.eventType === '' ? 'message' : this.eventType, data: this.data.join('\n'), id: this.lastEventId, ...(this.retry === undefined ? {} : { retry: this.retry }) })
      }
      this.data = []
      this.eventType = ''
      this.retry = undefined
      return
    }
    if (line.startsWith(':')) return // a comment, such as `: keep-alive`
    const colon = line.indexOf(':')
    const field = colon === -1 ? line : line.slice(0, colon)
    let value = colon === -1 ? '' : line.slice(colon + 1)
    if (value.startsWith(' ')) value = value.slice(1)
    switch (field) {
      case 'data': this.data.push(value); break
      case 'event': this.eventType = value; break
      case 'id': if (!value.includes('\0')) this.lastEventId = value; break
      case 'retry': if (/^[0-9]+$/.test(value)) this.retry = Number(value); break
      default: // other fields are ignored
    }
  }
}
