// Turns whatever a budget route throws into the API's error body (lib/kernel/error-body.ts), and logs a fault.
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import { toErrorBody } from '../kernel/error-body.js'

export function handleError (this: unknown, error: FastifyError, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const body = toErrorBody(error)
  if (body.statusCode >= 500) request.log.error({ err: error }, 'budget request failed')
  if (body.statusCode === 401) void reply.header('www-authenticate', 'Bearer realm="relaycore-budgets"')
  return reply.code(body.statusCode).send(body)
}
