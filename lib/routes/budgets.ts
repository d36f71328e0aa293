// Admin routes for budget definitions: create, read, update, delete, and the scope and hierarchy views.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import {
  BudgetDefinition, BudgetHierarchy, BudgetIdParams, BudgetList, CreateBudgetRequest,
  DeleteBudgetQuery, ErrorResponse, ScopeParams, UpdateBudgetRequest
} from '../schemas.js'
import type { BudgetRegistry } from '../services/registry.js'
import { Type } from '@sinclair/typebox'

export interface BudgetRoutesOptions {
  registry: BudgetRegistry
}

export const budgetRoutes: FastifyPluginAsyncTypebox<BudgetRoutesOptions> = async (app, { registry }) => {
  app.post('/', {
    schema: {
      summary: 'Create a budget',
      tags: ['budgets'],
      body: CreateBudgetRequest,
      response: { 201: BudgetDefinition, 400: ErrorResponse, 401: ErrorResponse, 409: ErrorResponse }
    }
  }, async (request, reply) => {
    const budget = await registry.createBudget(request.body, request.budgetActor)
    return await reply.code(201).header('location', `${request.url.replace(/\/$/, '')}/${budget.id}`).send(budget)
  })

  app.get('/:id', {
    schema: {
      summary: 'Read a budget',
      tags: ['budgets'],
      params: BudgetIdParams,
      response: { 200: BudgetDefinition, 401: ErrorResponse, 404: ErrorResponse }
    }
  }, async (request) => await registry.getBudget(request.params.id))

  app.put('/:id', {
    schema: {
      summary: 'Update a budget (the fields given)',
      tags: ['budgets'],
      params: BudgetIdParams,
      body: UpdateBudgetRequest,
      response: { 200: BudgetDefinition, 400: ErrorResponse, 401: ErrorResponse, 404: ErrorResponse, 409: ErrorResponse }
    }
  }, async (request) => await registry.updateBudget(request.params.id, request.body))

  app.delete('/:id', {
    schema: {
      summary: 'Delete (archive) a budget',
      tags: ['budgets'],
      params: BudgetIdParams,
      querystring: DeleteBudgetQuery,
      response: { 204: Type.Null(), 400: ErrorResponse, 401: ErrorResponse, 404: ErrorResponse, 409: ErrorResponse }
    }
  }, async (request, reply) => {
    await registry.deleteBudget(request.params.id, { cascade: request.query.cascade })
    return await reply.code(204).send(null)
  })

  app.get('/scope/:type/:id', {
    schema: {
      summary: 'List the budgets of one scope',
      tags: ['budgets'],
      params: ScopeParams,
      response: { 200: BudgetList, 400: ErrorResponse, 401: ErrorResponse }
    }
  }, async (request) => ({ budgets: await registry.getBudgetsByScope(request.params.type, request.params.id) }))

  app.get('/hierarchy/:type/:id', {
    schema: {
      summary: 'The budget tree around one scope',
      tags: ['budgets'],
      params: ScopeParams,
      response: { 200: BudgetHierarchy, 400: ErrorResponse, 401: ErrorResponse }
    }
  }, async (request) => await registry.getHierarchy(request.params.type, request.params.id))
}
