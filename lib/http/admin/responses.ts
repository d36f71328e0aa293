// Documented error responses: each route lists the statuses it can send and the codes behind each,
// so the OpenAPI document tells a client every error it must handle.
import type { FastifyRequest } from 'fastify'
import type { AuditContext } from '../../audit/index.js'
import { ErrorResponse } from '../../kernel/schemas.js'

const CODES = {
  400: ['BUDGET_ERR_VALIDATION'],
  401: ['BUDGET_ERR_UNAUTHORIZED'],
  // a principal whose role or area does not reach the route or the budget (lib/http/admin/access.ts)
  403: ['BUDGET_ERR_FORBIDDEN', 'BUDGET_ERR_OUT_OF_SCOPE'],
  404: ['BUDGET_ERR_NOT_FOUND'],
  409: [] as string[],
  // Fastify's own, for a body that is not JSON
  415: ['FST_ERR_CTP_INVALID_MEDIA_TYPE'],
  500: ['BUDGET_ERR_INTERNAL'],
  503: ['BUDGET_ERR_DATABASE_UNAVAILABLE', 'BUDGET_ERR_TIMEOUT']
}

type ErrorStatus = keyof typeof CODES

/**
 * Error responses for the statuses given, each naming its codes. 401, 403, 500 and 503 come with every
 * admin route; a route with a body (a 400 for bad input) can also meet Fastify's 415.
 */
export function errorResponses (extra: Partial<Record<ErrorStatus, string[]>>) {
  const always: ErrorStatus[] = [401, 403, 500, 503, ...(extra[400] === undefined ? [] : [415 as const])]
  const statuses = [...new Set<ErrorStatus>([...always, ...Object.keys(extra).map(Number) as ErrorStatus[]])].sort()
  return Object.fromEntries(statuses.map((status) => {
    const codes = [...CODES[status], ...(extra[status] ?? []), ...(status === 400 ? ['FST_ERR_CTP_INVALID_JSON_BODY'] : [])]
    return [status, { ...ErrorResponse, description: `Error codes: ${codes.join(', ')}` }]
  })) as Record<ErrorStatus, typeof ErrorResponse>
}

/** Who made a change through the admin API, and in which request: what the audit log records. */
export function auditContext (request: FastifyRequest): AuditContext {
  return { actor: request.budgetActor ?? 'admin', requestId: request.id }
}
