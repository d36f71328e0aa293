// The OpenAPI document is generated from the same TypeBox schemas that validate the routes; it must be
// valid OpenAPI 3.1, and every admin route must document itself fully.
import SwaggerParser from '@apidevtools/swagger-parser'
import swagger from '@fastify/swagger'
import Fastify from 'fastify'
import t from 'tap'
import { chatCompletions } from '../examples/chat-completions.js'
import budgets from '../lib/index.js'
import { ADMIN_TOKEN } from './fixtures/app.js'
import { createTestSql } from './fixtures/database.js'

type Operation = {
  summary?: string
  description?: string
  tags?: string[]
  parameters?: Array<{ in: string }>
  requestBody?: { content: Record<string, { schema: { examples?: unknown[] }, example?: unknown, examples?: Record<string, unknown> }> }
  responses?: Record<string, { description?: string }>
}
type Document = { paths: Record<string, Record<string, Operation>> }

/** What an admin operation must document; returns the problems found (none for a complete one). */
function problems (path: string, method: string, operation: Operation): string[] {
  const found: string[] = []
  const where = `${method.toUpperCase()} ${path}`
  if ((operation.summary ?? '') === '') found.push(`${where}: no summary`)
  if ((operation.description ?? '') === '') found.push(`${where}: no description`)
  if ((operation.tags ?? []).length === 0) found.push(`${where}: no tags`)
  const responses = operation.responses ?? {}
  if (!Object.keys(responses).some((status) => status.startsWith('2'))) found.push(`${where}: no success response`)
  const mustSend = ['401', '500', '503']
  if (path.startsWith('/api/v1/budgets/{id}')) mustSend.push('404')
  if (operation.requestBody !== undefined || (operation.parameters ?? []).some((p) => p.in === 'query')) mustSend.push('400')
  for (const status of mustSend) if (responses[status] === undefined) found.push(`${where}: does not document ${status}`)
  for (const [status, response] of Object.entries(responses)) {
    if (Number(status) >= 400 && !/^Error codes: (BUDGET|FST)_ERR_/.test(response.description ?? '')) found.push(`${where}: ${status} names no error codes`)
  }
  const body = operation.requestBody?.content['application/json']
  const hasExample = body !== undefined && (body.example !== undefined || Object.keys(body.examples ?? {}).length > 0 || (body.schema.examples ?? []).length > 0)
  if (body !== undefined && !hasExample) found.push(`${where}: no example body`)
  return found
}

t.test('the OpenAPI document is valid and every admin route documents itself fully', async (t) => {
  const { sql } = await createTestSql(t)
  const app = Fastify()
  await app.register(swagger, { openapi: { openapi: '3.1.0', info: { title: 'RelayCore Budgets', version: '0.1.0' } } })
  await app.register(budgets, { database: sql, adminToken: ADMIN_TOKEN, gate: { routes: ['/v1/chat/completions'] } })
  await app.register(chatCompletions, {})
  await app.ready()
  t.teardown(async () => await app.close())

  const document = app.swagger() as unknown as Document
  await t.resolves(SwaggerParser.validate(structuredClone(document) as never), 'a valid OpenAPI 3.1 document')

  const admin = Object.entries(document.paths).filter(([path]) => path.startsWith('/api/v1/budgets'))
  const operations = admin.flatMap(([path, methods]) => Object.entries(methods).map(([method, operation]) => ({ path, method, operation })))
  t.equal(operations.length, 43, 'every admin route is in the document') // 38: the cost mappings (4), the reconciliation report, its evaluate and true-up; the what-if replay; GET /access; the three of approval requests
  t.same(operations.flatMap(({ path, method, operation }) => problems(path, method, operation)), [], 'and documents itself fully')

  t.equal(document.paths['/api/v1/budgets/'], undefined, 'no trailing-slash twin of the create route')
  const create = document.paths['/api/v1/budgets']!.post!
  t.match(create.responses!['400']!.description, /BUDGET_ERR_PARENT_NOT_FOUND/, 'the codes a route can return are listed')
})

t.test('the completeness check fails for a route that lacks a documented response', async (t) => {
  const lacking: Operation = {
    summary: 'Read a budget',
    description: 'The budget',
    tags: ['budgets'],
    responses: {
      200: { description: 'ok' },
      401: { description: 'Error codes: BUDGET_ERR_UNAUTHORIZED' },
      500: { description: 'Error codes: BUDGET_ERR_INTERNAL' },
      503: { description: 'Error codes: BUDGET_ERR_DATABASE_UNAVAILABLE' }
    }
  }
  t.same(problems('/api/v1/budgets/{id}', 'get', lacking), ['GET /api/v1/budgets/{id}: does not document 404'])
})
