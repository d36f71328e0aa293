// The admin routes' validator compiler: the kernel's validators (lib/kernel/validator.ts), by the request's part.
import type { FastifySchemaCompiler } from 'fastify'
import { compileSchema } from '../kernel/validator.js'

export const compileValidator: FastifySchemaCompiler<any> = ({ schema, httpPart }) =>
  compileSchema(schema as object, httpPart === 'body' ? 'body' : 'url') as ReturnType<FastifySchemaCompiler<any>>
