// The OpenAI error shape, which OpenAI clients read into their APIError: the gate answers in it.
import type { FastifyReply } from 'fastify'

export function sendOpenAIError (reply: FastifyReply, statusCode: number, type: string, code: string, message: string,
  param: string | null = null, extra: Record<string, unknown> = {}): FastifyReply {
  return reply.code(statusCode).send({ error: { message, type, code, param, ...extra } })
}
