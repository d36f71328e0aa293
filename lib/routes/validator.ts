// The admin routes' validators. Fastify's default Ajv coerces body types ("12" becomes 12, "true" becomes true)
// and drops unknown fields; for budgets a wrong type or a misspelt field must be a 400 that names it.
import type { FastifySchemaCompiler } from 'fastify'
import { createAjv } from '../schema-check.js'

const bodyAjv = createAjv({ coerceTypes: false })
// Path and query strings are text by nature: coercing "50" to 50 there is the point.
const urlAjv = createAjv({ coerceTypes: 'array' })

export const compileValidator: FastifySchemaCompiler<any> = ({ schema, httpPart }) => {
  const validate = (httpPart === 'body' ? bodyAjv : urlAjv).compile(schema as object)
  return validate as ReturnType<FastifySchemaCompiler<any>>
}
