// Admin routes for a budget's money: record usage, read status, history and summary, check a cost, refresh the cache.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import {
  BudgetConstraintCheck, BudgetIdParams, BudgetStatusInfo, CheckConstraintsBody, RecordUsageBody,
  UsageHistoryQuery, UsagePage, UsageRecord, UsageSummary, UsageSummaryQuery
} from '../../kernel/schemas.js'
import type { BudgetTracker } from '../../gate/index.js'
import type { UsageCollector } from '../../usage/index.js'
import { usageBatchRoutes } from './usage-batch.js'
import { auditContext, errorResponses } from './responses.js'
import { checkWithinArea, keyConflictsWithinArea, recordWithinArea, usageWithinArea } from './access.js'

/** The tracker's record, run in a bounded transaction of its own (lib/index.ts, lib/kernel/database/bounded.ts). */
export type RecordUsage = BudgetTracker['record']

export interface UsageRoutesOptions {
  tracker: BudgetTracker
  collector: UsageCollector
  recordUsage: RecordUsage
}

const IdempotencyHeaders = Type.Object({
  'idempotency-key': Type.Optional(Type.String({ minLength: 1, maxLength: 200, description: 'Takes the place of metadata.requestId as the idempotency key.' }))
})

export const usageRoutes: FastifyPluginAsyncTypebox<UsageRoutesOptions> = async (app, { tracker, collector, recordUsage }) => {
  await app.register(usageBatchRoutes, { collector })

  app.post('/:id/usage', {
    config: { access: 'write', budgetParam: true },
    schema: {
      summary: 'Record usage',
      description: 'Stores one usage record per idempotency key (metadata.requestId or the Idempotency-Key header), across budgets: the same request again answers 200 with the first record, another request under the key 409 BUDGET_ERR_IDEMPOTENCY_CONFLICT.',
      tags: ['usage'],
      params: BudgetIdParams,
      headers: IdempotencyHeaders,
      body: RecordUsageBody,
      response: {
        200: { ...UsageRecord, description: 'A repeat of a recorded request id: the first record.' },
        201: UsageRecord,
        ...errorResponses({ 400: ['BUDGET_ERR_EXCHANGE_RATE_MISSING'], 404: [], 409: ['BUDGET_ERR_NOT_ACTIVE', 'BUDGET_ERR_IDEMPOTENCY_CONFLICT'] })
      }
    }
  }, async (request, reply) => {
    const idempotencyKey = request.headers['idempotency-key']
    const { record, replayed } = await keyConflictsWithinArea(request, idempotencyKey ?? String(request.body.metadata?.requestId), async () => await recordUsage(
      { ...request.body, budgetId: request.params.id },
      { idempotencyKey }
    ))
    return await reply.code(replayed ? 200 : 201).header('idempotent-replayed', String(replayed)).send(recordWithinArea(request, record))
  })

  app.get('/:id/usage', {
    config: { access: 'read', budgetParam: true },
    schema: {
      summary: 'Usage history',
      description: 'Records that count toward the budget (its own and its descendants\'), newest first, in pages linked by nextCursor. from and to default to the current period.',
      tags: ['usage'],
      params: BudgetIdParams,
      querystring: UsageHistoryQuery,
      response: { 200: UsagePage, ...errorResponses({ 400: [], 404: [] }) }
    }
  }, async (request) => usageWithinArea(request, await tracker.getUsageHistory(request.params.id, request.query)))

  app.get('/:id/usage/summary', {
    config: { access: 'read', budgetParam: true },
    schema: {
      summary: 'Usage totals by model, user and day',
      description: 'Totals and counts of the usage that counts toward the budget, by model, by user and by UTC day; from and to default to the current period.',
      tags: ['usage'],
      params: BudgetIdParams,
      querystring: UsageSummaryQuery,
      response: { 200: UsageSummary, ...errorResponses({ 400: [], 404: [] }) }
    }
  }, async (request) => await tracker.getUsageSummary(request.params.id, request.query))

  app.get('/:id/status', {
    config: { access: 'read', budgetParam: true },
    schema: {
      summary: 'Live status of the current period',
      description: 'Spend, reserved amount, burn rate, projection and status of the current period, from the status cache (recomputed when older than five minutes).',
      tags: ['status'],
      params: BudgetIdParams,
      response: { 200: BudgetStatusInfo, ...errorResponses({ 404: [] }) }
    }
  }, async (request) => await tracker.getBudgetStatus(request.params.id))

  app.post('/:id/refresh-cache', {
    // it writes an audit entry: a change, if a harmless one
    config: { access: 'write', budgetParam: true },
    schema: {
      summary: 'Recompute the status cache from the usage rows',
      description: 'Sums the current period\'s usage again, whatever the cache row\'s age, and answers the status.',
      tags: ['status'],
      params: BudgetIdParams,
      response: { 200: BudgetStatusInfo, ...errorResponses({ 404: [] }) }
    }
  }, async (request) => await tracker.refreshCache(request.params.id, auditContext(request)))

  app.post('/:id/check-constraints', {
    config: { access: 'read', budgetParam: true },
    schema: {
      summary: 'Would this cost go ahead?',
      description: 'Checks the budget and every ancestor against the estimated cost; reserves nothing.',
      tags: ['status'],
      params: BudgetIdParams,
      body: CheckConstraintsBody,
      response: { 200: BudgetConstraintCheck, ...errorResponses({ 400: [], 404: [] }) }
    }
  }, async (request) => checkWithinArea(request, await tracker.checkBudgetConstraints(request.params.id, request.body.estimatedCost)))
}
