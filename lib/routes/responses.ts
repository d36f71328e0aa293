// Documented error responses: each route lists the statuses it can send and the codes behind each,
// so the OpenAPI document tells a client every error it must handle.
import { ErrorResponse } from '../schemas.js'

const CODES = {
  400: ['BUDGET_ERR_VALIDATION'],
  401: ['BUDGET_ERR_UNAUTHORIZED'],
  404: ['BUDGET_ERR_NOT_FOUND'],
  409: [] as string[],
  503: ['BUDGET_ERR_DATABASE_UNAVAILABLE']
}

type ErrorStatus = keyof typeof CODES

/** Error responses for the statuses given, each naming its codes; 401 and 503 come with every admin route. */
export function errorResponses (extra: Partial<Record<ErrorStatus, string[]>>) {
  const statuses = [...new Set<ErrorStatus>([401, 503, ...Object.keys(extra).map(Number) as ErrorStatus[]])].sort()
  return Object.fromEntries(statuses.map((status) => {
    const codes = [...CODES[status], ...(extra[status] ?? [])]
    return [status, { ...ErrorResponse, description: `Error codes: ${codes.join(', ')}` }]
  })) as Record<ErrorStatus, typeof ErrorResponse>
}
