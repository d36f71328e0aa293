// Turns whatever a budget route throws into the API's error body: a stable code, a clear message, the field at fault.
import { STATUS_CODES } from 'node:http'
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import { DatabaseUnavailableError, exchangeRateError, InternalError, InvalidFieldError, isDatabaseUnavailable } from '../errors.js'
import { fieldAtFault } from '../schema-check.js'

export interface ErrorBody {
  statusCode: number
  code: string
  error: string
  message: string
  field?: string
}

export function toErrorBody (error: FastifyError & { field?: string }): ErrorBody {
  if (error.validation !== undefined) return validationErrorBody(error)
  // A conversion with no rate in force, wherever it was met (sql/012): a 400 that names the pair.
  if (error.code === 'RB001') return toErrorBody(exchangeRateError(error) as FastifyError)
  if (error.code !== 'BUDGET_ERR_DATABASE_UNAVAILABLE' && (isDatabaseUnavailable(error) || error.code === 'FST_ERR_HANDLER_TIMEOUT')) {
    return toErrorBody(new DatabaseUnavailableError())
  }
  // The last line: PostgreSQL's data exceptions (class 22) come from a value the checks above let
  // through; it is still the request's value, so a 400, and the transaction it failed in rolled back.
  if (typeof error.code === 'string' && /^22[0-9A-Z]{3}$/.test(error.code) && (error as { severity?: unknown }).severity !== undefined) {
    return toErrorBody(new InvalidFieldError('request', 'holds a value the database cannot store'))
  }
  const statusCode = error.statusCode ?? 500
  if (statusCode >= 500 && !error.code?.startsWith('BUDGET_ERR_')) return toErrorBody(new InternalError())
  return {
    statusCode,
    code: error.code ?? 'BUDGET_ERR_INTERNAL',
    error: httpReason(statusCode),
    message: error.message,
    ...(error.field === undefined ? {} : { field: error.field })
  }
}

export function handleError (this: unknown, error: FastifyError, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const body = toErrorBody(error)
  if (body.statusCode >= 500) request.log.error({ err: error }, 'budget request failed')
  if (body.statusCode === 401) void reply.header('www-authenticate', 'Bearer realm="relaycore-budgets"')
  return reply.code(body.statusCode).send(body)
}

/** A schema's refusal (fieldAtFault names the field as the library's callers see it too). */
function validationErrorBody (error: FastifyError): ErrorBody {
  const { field, reason } = fieldAtFault(error.validation![0], error.validationContext ?? 'request')
  return {
    statusCode: 400,
    code: 'BUDGET_ERR_VALIDATION',
    error: httpReason(400),
    message: `Invalid '${field}': ${reason}`,
    field
  }
}

function httpReason (statusCode: number): string {
  return STATUS_CODES[statusCode] ?? 'Error'
}
