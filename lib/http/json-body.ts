// A JSON body parser for the host's routes that gives the event loop turns while it parses a large body
// (lib/kernel/json-parse.ts): Fastify's own parser runs JSON.parse on the whole body in one stretch, 32 ms
// for 1 MiB of many short keys, which no slicing in the gate can win back. Its answers are Fastify's
// default parser's: the value, 400 FST_ERR_CTP_EMPTY_JSON_BODY for an empty body, and 400
// FST_ERR_CTP_INVALID_JSON_BODY for a text that is not JSON or that poisons a prototype (Fastify's
// onProtoPoisoning and onConstructorPoisoning defaults, 'error'). The host opts in by registering it in
// place of the default, in the context whose routes should use it (a plugin cannot scope a parser to the
// routes of its parent's context, so the plugin never registers it itself):
//   app.addContentTypeParser('application/json', { parseAs: 'string' }, budgetJsonParser)
import { errorCodes, type FastifyRequest } from 'fastify'
import { parseJsonInSlices } from '../kernel/json-parse.js'

/** Fastify's content-type parser for application/json (parseAs: 'string'), parsing in slices. */
export async function budgetJsonParser (_request: FastifyRequest, body: string | Buffer): Promise<unknown> {
  const text = typeof body === 'string' ? body : body.toString('utf8')
  if (text.length === 0) throw new errorCodes.FST_ERR_CTP_EMPTY_JSON_BODY()
  try {
    return await parseJsonInSlices(text)
  } catch {
    throw new errorCodes.FST_ERR_CTP_INVALID_JSON_BODY()
  }
}
