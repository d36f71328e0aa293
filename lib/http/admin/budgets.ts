// Admin routes for budget definitions: create, read, update, delete, and the scope and hierarchy views.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import {
  BudgetDefinition, BudgetHierarchy, BudgetIdParams, BudgetList, BudgetListQuery, BudgetPage, CreateBudgetRequest,
  DeleteBudgetQuery, ScopeParams, UpdateBudgetRequest
} from '../../kernel/schemas.js'
import type { BudgetRegistry } from '../../budgets/index.js'
import { Type } from '@sinclair/typebox'
import type { FastifyRequest } from 'fastify'
import { auditContext, errorResponses } from './responses.js'
import { requireBelowRoots, requireInArea, visibleBudgets } from './access.js'
import { OutOfScopeError } from '../../kernel/errors.js'

export interface BudgetRoutesOptions {
  registry: BudgetRegistry
}

export const budgetRoutes: FastifyPluginAsyncTypebox<BudgetRoutesOptions> = async (app, { registry }) => {
  // POST {prefix} as the seed's contract has it, with no trailing-slash twin in the document.
  app.post('/', {
    prefixTrailingSlash: 'no-slash',
    config: { access: 'write' },
    schema: {
      summary: 'Create a budget',
      description: 'Creates a budget for one scope, optionally under a parent budget (same currency, an amount no larger, a period no longer). Answers 201 with the budget and its location.',
      tags: ['budgets'],
      body: CreateBudgetRequest,
      response: { 201: BudgetDefinition, ...errorResponses({ 400: ['BUDGET_ERR_PARENT_NOT_FOUND', 'BUDGET_ERR_CURRENCY_MISMATCH', 'BUDGET_ERR_EXCEEDS_PARENT'] }) }
    }
  }, async (request, reply) => {
    requireParentInArea(request, request.body.parentId)
    const budget = await registry.createBudget(request.body, request.budgetActor, request.id)
    return await reply.code(201).header('location', `${request.url.split('?')[0]!}/${budget.id}`).send(budget)
  })

  app.get('/', {
    prefixTrailingSlash: 'no-slash',
    config: { access: 'read' },
    schema: {
      summary: 'List budgets',
      description: 'Every live budget, a page at a time in id order (nextCursor links the pages); the dashboard builds its tree from this.',
      tags: ['budgets'],
      querystring: BudgetListQuery,
      response: { 200: BudgetPage, ...errorResponses({ 400: [] }) }
    }
  }, async (request) => await registry.listBudgets(request.query, visibleBudgets(request)))

  app.get('/:id', {
    config: { access: 'read', budgetParam: true },
    schema: {
      summary: 'Read a budget',
      description: 'The budget as defined; 404 for an unknown or deleted budget, and for an id that is not a uuid.',
      tags: ['budgets'],
      params: BudgetIdParams,
      response: { 200: BudgetDefinition, ...errorResponses({ 404: [] }) }
    }
  }, async (request) => await registry.getBudget(request.params.id))

  app.put('/:id', {
    config: { access: 'write', budgetParam: true },
    schema: {
      summary: 'Update a budget (the fields given)',
      description: 'Changes the fields given; the budget as it would become must pass every create rule, and still hold its children. A new parentId must be in the budget\'s own tree: a move that would change its root (rootId) is refused, 409 BUDGET_ERR_MOVE_ACROSS_TREES.',
      tags: ['budgets'],
      params: BudgetIdParams,
      body: UpdateBudgetRequest,
      response: {
        200: BudgetDefinition,
        ...errorResponses({ 400: ['BUDGET_ERR_PARENT_NOT_FOUND', 'BUDGET_ERR_CURRENCY_MISMATCH', 'BUDGET_ERR_EXCEEDS_PARENT'], 404: [], 409: ['BUDGET_ERR_HIERARCHY_CYCLE', 'BUDGET_ERR_MOVE_ACROSS_TREES', 'BUDGET_ERR_CURRENCY_LOCKED'] })
      }
    }
  }, async (request) => {
    requireBelowRoots(request, request.params.id)
    if (request.body.parentId !== undefined) requireParentInArea(request, request.body.parentId)
    return await registry.updateBudget(request.params.id, request.body, auditContext(request))
  })

  app.delete('/:id', {
    config: { access: 'write', budgetParam: true },
    schema: {
      summary: 'Delete (archive) a budget',
      description: 'Archives the budget: it leaves every read and the gate, its usage history stays. A budget with children needs cascade=true.',
      tags: ['budgets'],
      params: BudgetIdParams,
      querystring: DeleteBudgetQuery,
      response: { 204: Type.Null({ description: 'Deleted.' }), ...errorResponses({ 400: [], 404: [], 409: ['BUDGET_ERR_HAS_CHILDREN'] }) }
    }
  }, async (request, reply) => {
    requireBelowRoots(request, request.params.id)
    await registry.deleteBudget(request.params.id, { cascade: request.query.cascade }, auditContext(request))
    return await reply.code(204).send(null)
  })

  app.get('/scope/:type/:id', {
    config: { access: 'read' },
    schema: {
      summary: 'List the budgets of one scope',
      description: 'Every live budget of the scope, oldest first.',
      tags: ['budgets'],
      params: ScopeParams,
      response: { 200: BudgetList, ...errorResponses({ 400: [] }) }
    }
  }, async (request) => ({ budgets: await registry.getBudgetsByScope(request.params.type, request.params.id, visibleBudgets(request)) }))

  app.get('/hierarchy/:type/:id', {
    config: { access: 'read' },
    schema: {
      summary: 'The budget tree around one scope',
      description: 'The scope\'s budgets with all their ancestors and descendants, as trees from the topmost ancestors down.',
      tags: ['budgets'],
      params: ScopeParams,
      response: { 200: BudgetHierarchy, ...errorResponses({ 400: [] }) }
    }
  }, async (request) => await registry.getHierarchy(request.params.type, request.params.id, visibleBudgets(request)))
}

/** A scoped principal's budget goes under a parent in its area: a root (no parent) would be outside it. */
function requireParentInArea (request: FastifyRequest, parentId: string | null | undefined): void {
  if (request.budgetArea === null) return
  if (parentId === null || parentId === undefined) throw new OutOfScopeError("Invalid 'parentId': a budget you make or move must go under one of the budgets you may touch", 'parentId')
  requireInArea(request, parentId, 'parentId')
}
