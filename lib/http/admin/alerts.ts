// Admin routes for alerts: the crossing history, acknowledgements, and approvals that lift require-approval.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { AlertList, AlertParams, AlertRecord, Approval, ApprovalList, ApprovalRequest, BudgetIdParams, RecentAlertsQuery } from '../../kernel/schemas.js'
import { errorResponses } from './responses.js'
import { visibleBudgets } from './access.js'
import type { BudgetAlerts } from '../../alerts/index.js'

export interface AlertRoutesOptions {
  alerts: BudgetAlerts
}

export const alertRoutes: FastifyPluginAsyncTypebox<AlertRoutesOptions> = async (app, { alerts }) => {
  app.get('/alerts', {
    config: { access: 'read' },
    schema: {
      summary: 'Recent alerts',
      description: 'The latest threshold crossings of every live budget (a scoped principal: of its area), newest first.',
      tags: ['alerts'],
      querystring: RecentAlertsQuery,
      response: { 200: AlertList, ...errorResponses({ 400: [] }) }
    }
  }, async (request) => ({ alerts: await alerts.listRecentAlerts(request.query.limit, visibleBudgets(request)) }))

  app.get('/:id/alerts', {
    config: { access: 'read', budgetParam: true },
    schema: {
      summary: 'Alert history',
      description: 'Every threshold crossing of the budget, newest first: once per period and threshold, with its actions, deliveries and acknowledgement.',
      tags: ['alerts'],
      params: BudgetIdParams,
      response: { 200: AlertList, ...errorResponses({ 404: [] }) }
    }
  }, async (request) => ({ alerts: await alerts.listAlerts(request.params.id) }))

  app.post('/:id/alerts/:alertId/acknowledge', {
    config: { access: 'write', budgetParam: true },
    schema: {
      summary: 'Acknowledge a crossing',
      description: 'Records who acknowledged it and when; the first acknowledgement stands.',
      tags: ['alerts'],
      params: AlertParams,
      response: { 200: AlertRecord, ...errorResponses({ 404: ['BUDGET_ERR_ALERT_NOT_FOUND'] }) }
    }
  }, async (request) => await alerts.acknowledgeAlert(request.params.id, request.params.alertId, request.budgetActor ?? 'admin', request.id))

  app.post('/:id/approvals', {
    config: { access: 'approve', budgetParam: true },
    schema: {
      summary: 'Approve further spend',
      description: 'Lets calls past require-approval for `amount` more spend (beyond settled and reserved spend now) until `expiresAt` (default one hour, at most the end of the period). Recorded with the approver.',
      tags: ['alerts'],
      params: BudgetIdParams,
      body: ApprovalRequest,
      response: { 201: Approval, ...errorResponses({ 400: [], 404: [], 409: ['BUDGET_ERR_NOT_ACTIVE'] }) }
    }
  }, async (request, reply) => await reply.code(201).send(await alerts.approve(request.params.id, request.body, request.budgetActor ?? 'admin', request.id)))

  app.get('/:id/approvals', {
    config: { access: 'read', budgetParam: true },
    schema: {
      summary: 'Approvals of the budget',
      description: 'Every approval, newest first, with who approved, how much, and until when.',
      tags: ['alerts'],
      params: BudgetIdParams,
      response: { 200: ApprovalList, ...errorResponses({ 404: [] }) }
    }
  }, async (request) => ({ approvals: await alerts.listApprovals(request.params.id) }))
}
