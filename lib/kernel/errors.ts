// Every error the plugin raises, each with a stable code; clients and tests match on `code`, never on the message.
import createError from '@fastify/error'

// Registration
export const OptionsError = createError('BUDGET_ERR_OPTIONS', 'Invalid budgets plugin option: %s', 500, TypeError)
export const MigrationError = createError('BUDGET_ERR_MIGRATION', 'Migration %s failed: %s', 500)

// Requests
const ValidationError = createError('BUDGET_ERR_VALIDATION', "Invalid '%s': %s", 400)
/** Bad input, naming the field at fault (a dotted path into the request, such as `alerts.0.threshold`). */
export class InvalidFieldError extends ValidationError {
  readonly field: string
  constructor (field: string, reason: string) {
    super(field, reason)
    this.field = field
  }
}

// @fastify/error's instanceof matches by code, so these say what they are in `gateCode`: the code of
// the gate's OpenAI-style 400.
/** A model the price table does not know under any of its names (the gate answers 400 model_not_priced). */
/** A caller's value (a type field) quoted in a refusal; never its String(), which a value like { toString: false } makes throw. */
export function quoted (value: unknown): string {
  return typeof value === 'string' ? `'${value.slice(0, 64)}'` : `a value of type ${value === null ? 'null' : Array.isArray(value) ? 'array' : typeof value}`
}

export class ModelNotPricedError extends InvalidFieldError {
  readonly gateCode = 'model_not_priced'
}
/** A request field whose cost the estimate cannot bound: refused rather than let through unbounded (400 unbounded_field). */
export class UnboundedFieldError extends InvalidFieldError {
  readonly gateCode = 'unbounded_field'
}

export const UnauthorizedError = createError('BUDGET_ERR_UNAUTHORIZED', 'Missing or invalid admin credentials', 401)
// Scoped admin access (lib/access): the same answer for a budget that exists outside the caller's area and
// for one that does not exist, so a refusal tells nothing of another team's budgets.
export const ForbiddenError = createError('BUDGET_ERR_FORBIDDEN', "The role '%s' may not %s", 403)
export class OutOfScopeError extends createError('BUDGET_ERR_OUT_OF_SCOPE', '%s', 403) {
  readonly field: string | undefined
  constructor (message: string, field?: string) {
    super(message)
    this.field = field
  }
}
export const RouteNotFoundError = createError('BUDGET_ERR_ROUTE_NOT_FOUND', 'No route %s %s in the budgets API', 404)
export const BudgetNotFoundError = createError('BUDGET_ERR_NOT_FOUND', "Budget '%s' not found", 404)

// The hierarchy
export class ParentNotFoundError extends createError('BUDGET_ERR_PARENT_NOT_FOUND', "Invalid 'parentId': budget '%s' not found", 400) {
  readonly field = 'parentId'
}
export class CurrencyMismatchError extends createError('BUDGET_ERR_CURRENCY_MISMATCH', '%s', 400) {
  readonly field = 'currency'
}
/** No exchange rate in force converts one currency into the other (budget_require_rate raises RB001 with the pair as detail). */
export class ExchangeRateMissingError extends createError('BUDGET_ERR_EXCHANGE_RATE_MISSING', 'No exchange rate from %s to %s is in force (%s): an admin sets one with PUT {prefix}/exchange-rates/{from}/{to}', 400) {
  readonly field = 'currency'
  constructor (readonly from: string, readonly to: string) {
    super(from, to, `${from}/${to}`)
  }
}

/** The database's RB001 (budget_require_rate) as the API's error; anything else as it was. */
export function exchangeRateError (error: unknown): unknown {
  const { code, detail } = error as { code?: unknown, detail?: unknown }
  if (code !== 'RB001' || typeof detail !== 'string') return error
  const [from = '?', to = '?'] = detail.split('/')
  return new ExchangeRateMissingError(from, to)
}

export class ExceedsParentError extends createError('BUDGET_ERR_EXCEEDS_PARENT', '%s', 400) {
  readonly field: string
  constructor (field: 'amount' | 'period', reason: string) {
    super(reason)
    this.field = field
  }
}
// A shadow budget admits calls a hard one would refuse: made hard with more spent and held than its amount, it would be over its limit.
export const EnforcementOverLimitError = createError('BUDGET_ERR_ENFORCEMENT_OVER_LIMIT', '%s', 409)
export const HierarchyCycleError = createError('BUDGET_ERR_HIERARCHY_CYCLE', "Budget '%s' cannot have '%s' as parent: that would make a cycle", 409)
export class CurrencyLockedError extends createError('BUDGET_ERR_CURRENCY_LOCKED', "Budget '%s' has usage in %s; its currency cannot change", 409) {
  readonly field = 'currency'
}
export class HierarchyTooDeepError extends createError('BUDGET_ERR_HIERARCHY_TOO_DEEP', "Invalid 'parentId': the budget tree would be %s budgets deep, more than the maximum of %s", 400) {
  readonly field = 'parentId'
}
/**
 * A move that would change the root of the budget's tree: under a parent in another tree, a root under
 * another tree, a child made a root. A budget stays in the tree it was created in (its root_id is the
 * key the tables are to be distributed by); to move one, create it anew in the other tree and archive it.
 */
export class MoveAcrossTreesError extends createError('BUDGET_ERR_MOVE_ACROSS_TREES', "Invalid 'parentId': budget '%s' is in the tree of '%s' and %s; a budget stays in the tree it was created in (create it anew there and archive this one)", 409) {
  readonly field = 'parentId'
}
export const HasChildrenError = createError('BUDGET_ERR_HAS_CHILDREN', "Budget '%s' has %s child budget(s); delete them first or pass cascade=true", 409)

// Faults
export const DatabaseUnavailableError = createError('BUDGET_ERR_DATABASE_UNAVAILABLE', 'The budget database cannot be reached', 503)
export const InternalError = createError('BUDGET_ERR_INTERNAL', 'Internal error', 500)
/** An admin write cut at its bound (lib/kernel/database/bounded.ts): it was rolled back, nothing changed; it may be sent again. */
export const AdminTimeoutError = createError('BUDGET_ERR_TIMEOUT', 'The request did not finish within %s ms and changed nothing; send it again', 503)

// What says the database cannot serve now, as opposed to a bug or bad input: postgres.js's own
// connection failures and the socket's; PostgreSQL's classes 08 (connection), 53 (insufficient
// resources: too many connections, out of memory, disk full), 57P (shutdown, crash recovery, starting
// up, database dropped), 58 (system I/O); 25006 (a read-only server, as after a failover); and 55000,
// which is how a database that does not accept connections (ALTER DATABASE ... ALLOW_CONNECTIONS
// false) refuses one. None of the plugin's statements can raise 55000 otherwise.
const UNAVAILABLE = /^(BUDGET_ERR_DATABASE_UNAVAILABLE|CONNECT_TIMEOUT|CONNECTION_CLOSED|CONNECTION_ENDED|CONNECTION_DESTROYED|ECONNREFUSED|ECONNRESET|EPIPE|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH|ETIMEDOUT|08\w{3}|53\w{3}|57P0[1-4]|58\w{3}|25006|55000)$/

/** True for an error that says the database cannot be reached now, as opposed to a bug or bad input. */
export function isDatabaseUnavailable (error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code
  return typeof code === 'string' && UNAVAILABLE.test(code)
}

// Usage
export const BudgetNotActiveError = createError('BUDGET_ERR_NOT_ACTIVE', "Budget '%s' has no active period at %s (%s)", 409)
export class IdempotencyConflictError extends createError('BUDGET_ERR_IDEMPOTENCY_CONFLICT', "Idempotency key '%s' was used for a different usage record (%s)", 409) {
  readonly field = 'metadata.requestId'
}
/** A batch record given by scopes that reach no budget (for its model and tags): there is nowhere to count it. */
export class NoApplicableBudgetError extends createError('BUDGET_ERR_NO_APPLICABLE_BUDGET', 'No budget applies to %s', 404) {
  readonly field = 'scopes'
}

// Requests for approval (lib/approvals)
export const ApprovalRequestNotFoundError = createError('BUDGET_ERR_APPROVAL_REQUEST_NOT_FOUND', "Approval request '%s' not found on budget '%s'", 404)
/** A decision on a request already decided, rejected or expired. */
export const ApprovalRequestClosedError = createError('BUDGET_ERR_APPROVAL_REQUEST_CLOSED', "Approval request '%s' is %s: it takes no more decisions", 409)
/** A decision that names another level than the request's next: no level is skipped or decided twice. */
export class ApprovalLevelError extends createError('BUDGET_ERR_APPROVAL_LEVEL', 'Level %d is not the one to decide now: level %d is', 409) {
  readonly field = 'level'
}
/** A principal the level does not name, or one that filed the request or decided an earlier level of it. */
export const NotAnApproverError = createError('BUDGET_ERR_NOT_AN_APPROVER', '%s', 403)

// Alerts
export const AlertNotFoundError = createError('BUDGET_ERR_ALERT_NOT_FOUND', "Alert '%s' not found on budget '%s'", 404)

// Notification channels
/** A budget names a channel the plugin's notifications.channels does not configure: its alerts would go nowhere. */
export class UnknownChannelError extends createError('BUDGET_ERR_UNKNOWN_CHANNEL', "Invalid '%s': no notification channel '%s' is configured (configured: %s)", 400) {
  readonly field: string
  constructor (field: string, readonly channel: string, configured: string[]) {
    super(field, channel, configured.length === 0 ? 'none' : configured.map((name) => `'${name}'`).join(', '))
    this.field = field
  }
}
export const ChannelNotFoundError = createError('BUDGET_ERR_CHANNEL_NOT_FOUND', "No notification channel '%s' is configured", 404)

// Provider cost reports
/** A CSV import that is not the documented format: the line (1 is the header) and what is wrong; nothing of the file is stored. */
export class CostCsvInvalidError extends createError('BUDGET_ERR_COST_CSV_INVALID', 'Invalid cost CSV, line %s: %s', 400) {
  readonly field: string
  constructor (line: number, reason: string) {
    super(line, reason)
    this.field = `line ${line}`
  }
}
/**
 * A cost CSV over the import's body limit: Fastify's own code, kept so that clients match it as before, with
 * a message that says what to do (a file of parts, each imported on its own).
 */
export const CostCsvTooLargeError = createError('FST_ERR_CTP_BODY_TOO_LARGE', 'The cost CSV is larger than %s: split the file into parts of at most %s; each part is imported on its own, and importing a part again changes nothing', 413)

// Reconciliation with the provider's bill
export const CostMappingNotFoundError = createError('BUDGET_ERR_COST_MAPPING_NOT_FOUND', "Cost mapping '%s' not found", 404)
/** A dimension mapped already, or a budget mapped to another provider (one provider per budget). */
export const CostMappingConflictError = createError('BUDGET_ERR_COST_MAPPING_CONFLICT', '%s', 409)
/** A true-up on a budget whose mapping does not allow it, or whose model or tag filters the invoice cannot follow. */
export const TrueUpRefusedError = createError('BUDGET_ERR_TRUE_UP_REFUSED', '%s', 409)
export const CostReportMissingError = createError('BUDGET_ERR_COST_REPORT_MISSING', "No %s cost report for %s is stored", 404)
