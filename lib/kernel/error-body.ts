// The API's error body for whatever a budget operation throws: a stable code, a clear message, the field at
// fault. The admin routes answer with it, and the bulk collector answers each refused record with it.
import { STATUS_CODES } from 'node:http'
import { DatabaseUnavailableError, exchangeRateError, InternalError, InvalidFieldError, isDatabaseUnavailable } from './errors.js'
import { fieldAtFault } from './validator.js'

/** What is read off a thrown error: the project's coded errors, PostgreSQL's and Fastify's alike. */
export interface CodedError {
  message: string
  code?: string
  statusCode?: number
  field?: string
  validation?: Array<{ instancePath?: string, message?: string, params?: unknown }>
  validationContext?: string
}

export interface ErrorBody {
  statusCode: number
  code: string
  error: string
  message: string
  field?: string
}

export function toErrorBody (error: CodedError): ErrorBody {
  if (error.validation !== undefined) return validationErrorBody(error)
  // A conversion with no rate in force, wherever it was met (budget_require_rate): a 400 that names the pair.
  if (error.code === 'RB001') return toErrorBody(exchangeRateError(error) as CodedError)
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

/** A schema's refusal (fieldAtFault names the field as the library's callers see it too). */
function validationErrorBody (error: CodedError): ErrorBody {
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
