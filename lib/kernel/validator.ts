// The API's schemas (lib/kernel/schemas.ts) own the shape of what comes in, whichever door it comes through: the
// admin routes validate with them, and the library's callers, who come in without a route, meet the same
// checks here, with the same field and reason as the route's 400. Rules a schema cannot say (cross-field,
// exact money, thresholds) are budget-rules' (lib/budgets/budget-rules.ts).
import Ajv, { type Options, type ValidateFunction } from 'ajv'
import addFormats from 'ajv-formats'
import type { Static, TSchema } from '@sinclair/typebox'
import { InvalidFieldError } from './errors.js'
import { checkStorable } from './json-limits.js'

/** An Ajv with the routes' settings: defaults filled in, unknown fields kept (so refused), one error at a time. */
export function createAjv (options: Options) {
  const ajv = new Ajv.default({ useDefaults: true, removeAdditional: false, allErrors: false, allowUnionTypes: true, ...options })
  addFormats.default(ajv)
  return ajv
}

/** What Fastify and Ajv say about the first error. */
export interface SchemaError {
  instancePath?: string
  params?: unknown
  message?: string
}

/** The field an error names, as the API names it (Ajv's `/alerts/0/threshold` is `alerts.0.threshold`), and why. */
export function fieldAtFault (first: SchemaError | undefined, context: string): { field: string, reason: string } {
  const params = (first?.params ?? {}) as Record<string, unknown>
  const path = (first?.instancePath ?? '').split('/').filter(Boolean)
  const leaf = params.missingProperty ?? params.additionalProperty
  if (typeof leaf === 'string') path.push(leaf)
  const field = path.join('.') || context
  let reason = first?.message ?? 'is invalid'
  if (params.additionalProperty !== undefined) reason = 'is not a known field'
  if (Array.isArray(params.allowedValues)) reason += `: ${params.allowedValues.join(', ')}`
  return { field, reason }
}

// A body is JSON: no types coerced (the routes' body validator too). Path and query strings are text by
// nature: coercing "50" to 50 there is the point.
const strict = createAjv({ coerceTypes: false })
const urlAjv = createAjv({ coerceTypes: 'array' })

/** A body's validator (no coercion) or a path's or query's (strings coerced): the admin routes compile with these (lib/http/validator.ts), and the bulk collector for each record. */
export function compileSchema (schema: object, part: 'body' | 'url'): ValidateFunction {
  return (part === 'body' ? strict : urlAjv).compile(schema)
}

/**
 * A check of values against `schema`, as a route checks its body: text PostgreSQL cannot store first (the
 * routes' preValidation hook), then the schema. Throws InvalidFieldError naming the field. Returns what it
 * checked, a copy: the value as a JSON body (a Date as its ISO string, a field set to undefined left out, the
 * schema's defaults filled in, as a route's body is). The caller goes on with that copy, never the value it
 * was given, so what is applied is what was checked: `{ ...stored, ...given }` with a field set to undefined
 * would put back the undefined the check left out, and defaults would then fill it in over the stored value.
 */
export function shapeCheck<S extends TSchema> (schema: S): (value: unknown) => Static<S> {
  const validate = strict.compile(schema)
  return (value) => {
    checkStorable(value, '')
    const copy = asJson(value)
    if (!validate(copy)) {
      // The request as a whole is named as the routes name it: 'body'.
      const { field, reason } = fieldAtFault(validate.errors?.[0], 'body')
      throw new InvalidFieldError(field, reason)
    }
    return copy as Static<S>
  }
}

/** What the library's value would be as a JSON body: a Date as its ISO string, a field set to undefined left out. Copied, never changed. */
function asJson (value: unknown): unknown {
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? value : value.toISOString()
  if (Array.isArray(value)) return value.map(asJson)
  if (typeof value !== 'object' || value === null) return value
  const copy: Record<string, unknown> = {}
  for (const [key, field] of Object.entries(value)) {
    if (field !== undefined) Object.defineProperty(copy, key, { value: asJson(field), enumerable: true, writable: true, configurable: true })
  }
  return copy
}
