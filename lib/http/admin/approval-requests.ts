// Admin routes for requests for approval (lib/approvals, docs/approvals.md): any principal whose area holds the
// budget files one; the principals its policy names decide it, a level at a time. Who may decide a level is the
// policy's to say, not the role's grant, so these routes need only read; the rules are checked per request.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { ApprovalDecisionInput, ApprovalRequestList, ApprovalRequestParams, ApprovalRequestQuery, ApprovalRequestRecord, BudgetIdParams, FileApprovalRequest } from '../../kernel/schemas.js'
import type { BudgetApprovals } from '../../approvals/index.js'
import { errorResponses } from './responses.js'
import { visibleBudgets } from './access.js'

export const approvalRequestRoutes: FastifyPluginAsyncTypebox<{ approvals: BudgetApprovals }> = async (app, { approvals }) => {
  app.post('/:id/approval-requests', {
    config: { access: 'read', budgetParam: true },
    schema: {
      summary: 'Ask for an approval',
      description: 'Files a request for `amount` more spend past require-approval, with a reason. The levels of the budget\'s approval policy decide it in order (without a policy, one level of approvers and admins); when every level it needs has approved, it becomes an approval as POST /{id}/approvals makes, for its amount. It waits the policy\'s requestTtlMinutes (default a day), and never past the approval\'s own expiresAt. Audited.',
      tags: ['approvals'],
      params: BudgetIdParams,
      body: FileApprovalRequest,
      response: { 201: ApprovalRequestRecord, ...errorResponses({ 400: [], 404: [], 409: ['BUDGET_ERR_NOT_ACTIVE'] }) }
    }
  }, async (request, reply) => await reply.code(201).send(await approvals.fileRequest(request.params.id, request.body, request.budgetPrincipal!, request.id)))

  app.get('/approval-requests', {
    config: { access: 'read' },
    schema: {
      summary: 'Requests for approval',
      description: 'Requests newest first, pending by default, of every budget you may see, each with its levels, their decisions, the next level and whether you may decide it (decidable=true: only those).',
      tags: ['approvals'],
      querystring: ApprovalRequestQuery,
      response: { 200: ApprovalRequestList, ...errorResponses({ 400: [] }) }
    }
  }, async (request) => ({ requests: await approvals.listRequests(request.query, request.budgetPrincipal!, visibleBudgets(request)) }))

  app.post('/:id/approval-requests/:requestId/decisions', {
    config: { access: 'read', budgetParam: true },
    schema: {
      summary: 'Decide a level of a request',
      description: 'Approves or rejects the request\'s next level (`level` names it: no level is skipped or decided twice), with a comment. Only a principal the level names decides it, never the one that filed the request, and nobody decides two levels of one request. A rejection closes the request; the last level it needs approving makes the approval. Audited.',
      tags: ['approvals'],
      params: ApprovalRequestParams,
      body: ApprovalDecisionInput,
      response: {
        200: ApprovalRequestRecord,
        ...errorResponses({ 400: [], 403: ['BUDGET_ERR_NOT_AN_APPROVER'], 404: ['BUDGET_ERR_APPROVAL_REQUEST_NOT_FOUND'], 409: ['BUDGET_ERR_APPROVAL_REQUEST_CLOSED', 'BUDGET_ERR_APPROVAL_LEVEL', 'BUDGET_ERR_NOT_ACTIVE'] })
      }
    }
  }, async (request) => await approvals.decide(request.params.id, request.params.requestId, request.body, request.budgetPrincipal!, request.id))
}
