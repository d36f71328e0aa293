// Admin routes for the audit log: read only (no route edits or deletes an entry; the database refuses to).
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { AuditPage, AuditQuery, BudgetIdParams } from '../../kernel/schemas.js'
import { errorResponses } from './responses.js'
import { visibleBudgets } from './access.js'
import type { BudgetAudit } from '../../audit/index.js'

export interface AuditRoutesOptions {
  audit: BudgetAudit
}

export const auditRoutes: FastifyPluginAsyncTypebox<AuditRoutesOptions> = async (app, { audit }) => {
  app.get('/audit', {
    config: { access: 'read' },
    schema: {
      summary: 'The audit feed',
      description: 'Every change to every budget (a scoped principal: to the budgets of its area), newest first, a page at a time: create, update (before and after), delete, approval, acknowledgement, cache refresh, with the actor, the time and the request id.',
      tags: ['audit'],
      querystring: AuditQuery,
      response: { 200: AuditPage, ...errorResponses({ 400: [] }) }
    }
  }, async (request) => await audit.auditFeed(request.query, visibleBudgets(request)))

  app.get('/:id/audit', {
    config: { access: 'read', budgetParam: true },
    schema: {
      summary: 'A budget\'s audit log',
      description: 'Every change to the budget, newest first, a page at a time; a deleted budget\'s log stays readable.',
      tags: ['audit'],
      params: BudgetIdParams,
      querystring: AuditQuery,
      response: { 200: AuditPage, ...errorResponses({ 400: [], 404: [] }) }
    }
  }, async (request) => await audit.budgetAudit(request.params.id, request.query))
}
