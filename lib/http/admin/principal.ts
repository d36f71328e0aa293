// GET {prefix}/access: who the caller is to the admin API and what it may do, so a client (the dashboard)
// offers only the actions the principal may take. It names the area's roots, never its size: every
// budget of the area is in the list route's answer.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import { permissionsOf, ROLES, type Principal } from '../../access/index.js'
import { SCOPE_TYPES } from '../../kernel/schemas.js'
import { errorResponses } from './responses.js'

const Permission = Type.Union(['read', 'write', 'approve', 'platform'].map((name) => Type.Literal(name)))
const AccessSummary = Type.Object({
  actor: Type.String({ description: 'The name the audit log records for this principal.' }),
  role: Type.Union(ROLES.map((role) => Type.Literal(role))),
  permissions: Type.Array(Permission, { description: 'What the role allows here: read budgets, change budgets and usage (write), decide approvals (approve), change what every tree shares (platform: an admin without scopes).' }),
  scopes: Type.Union([
    Type.Array(Type.Union([
      Type.Object({ budgetId: Type.String() }),
      Type.Object({ scopeType: Type.Union(SCOPE_TYPES.map((type) => Type.Literal(type))), scopeId: Type.String() })
    ])),
    Type.Null()
  ], { description: 'The subtrees the principal may touch, as it was granted them; null: every tree.' }),
  roots: Type.Union([Type.Array(Type.String({ format: 'uuid' })), Type.Null()], { description: 'The budgets at the top of its area (named by a scope and below no other named one), sorted; null for every tree.' })
}, { additionalProperties: false })

export const principalRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/access', {
    config: { access: 'read' },
    schema: {
      summary: 'Who you are',
      description: 'The caller\'s principal: its actor, role and permissions, its scopes as granted, and the roots of its area (null for every tree). A client shows only the actions these allow.',
      tags: ['access'],
      response: { 200: AccessSummary, ...errorResponses({}) }
    }
  }, async (request) => {
    const principal: Principal = request.budgetPrincipal!
    const area = request.budgetArea
    return { actor: principal.actor, role: principal.role, permissions: permissionsOf(principal), scopes: principal.scopes === null ? null : [...principal.scopes], roots: area === null ? null : [...area.roots].sort() }
  })
}
