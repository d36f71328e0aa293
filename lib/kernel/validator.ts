// The validators of the API's schemas. Fastify's default Ajv coerces body types ("12" becomes 12, "true"
// becomes true) and drops unknown fields; for budgets a wrong type or a misspelt field must be a 400 that
// names it. The admin routes compile with these (lib/http/validator.ts), and so does the bulk collector for
// each record of a batch.
import Ajv, { type Options, type ValidateFunction } from 'ajv'
import addFormats from 'ajv-formats'

function createAjv (options: Options) {
  const ajv = new Ajv.default({ useDefaults: true, removeAdditional: false, allErrors: false, allowUnionTypes: true, ...options })
  addFormats.default(ajv)
  return ajv
}

const bodyAjv = createAjv({ coerceTypes: false })
// Path and query strings are text by nature: coercing "50" to 50 there is the point.
const urlAjv = createAjv({ coerceTypes: 'array' })

/** A body's validator (no coercion) or a path's or query's (strings coerced). */
export function compileSchema (schema: object, part: 'body' | 'url'): ValidateFunction {
  return (part === 'body' ? bodyAjv : urlAjv).compile(schema)
}
