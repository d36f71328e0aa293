// When a gated request's client is gone: its response and its socket watched from the first hook on.
import type { Socket } from 'node:net'
import type { FastifyReply, FastifyRequest } from 'fastify'

/** What the gate knows of a request's connection, from its first hook on. */
export interface ConnectionWatch {
  /** Calls `then` once when the response has closed (finished or cut off) or its socket has: at once if it already has. Callbacks run in the order given. */
  onClosed: (then: () => void) => void
  /** The client is gone and the response did not finish. */
  gone: () => boolean
}

// A keep-alive socket carries many requests: it gets one 'close' listener, which tells the watches of its
// requests still open, instead of a listener added and removed per request (each a copy of its listener list).
const WATCHES = Symbol('relaycore.budgetSocketWatches')
type WatchedSocket = Socket & { [WATCHES]?: Set<() => void> }

function watchesOf (socket: WatchedSocket): Set<() => void> {
  let watches = socket[WATCHES]
  if (watches === undefined) {
    const all = new Set<() => void>()
    watches = all
    socket[WATCHES] = all
    socket.once('close', () => { for (const onClose of all) onClose() })
  }
  return watches
}

/**
 * Watches the response and its socket from onRequest, before anything is awaited: a client that
 * leaves while the body arrives, its scopes are resolved or its hold is taken is seen, also when
 * its request was pipelined behind another and its response never got a 'close' of its own.
 * A callback, not a promise: one less allocation and turn on every gated call.
 */
export function watchConnection (request: FastifyRequest, reply: FastifyReply): ConnectionWatch {
  const socket = request.raw.socket as WatchedSocket | null | undefined
  const watches = socket === null || socket === undefined ? null : watchesOf(socket)
  let fired = false
  const thens: Array<() => void> = []
  const onClose = (): void => {
    if (fired) return
    fired = true
    watches?.delete(onClose)
    reply.raw.off('close', onClose)
    for (const then of thens) then()
  }
  reply.raw.on('close', onClose)
  watches?.add(onClose)
  if (socket?.destroyed === true || reply.raw.destroyed) onClose()
  return {
    onClosed: (callback) => {
      if (fired) callback()
      else thens.push(callback)
    },
    gone: () => !reply.raw.writableFinished && (fired || socket?.destroyed === true || reply.raw.destroyed)
  }
}
