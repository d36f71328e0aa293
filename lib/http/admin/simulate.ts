// Admin route for the what-if replay: POST /simulate. JSON by default; with Accept: application/x-ndjson, a
// progress line per slice of the range and the result as the last line. A client that hangs up cancels the
// replay's statement in PostgreSQL.
import { PassThrough } from 'node:stream'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { SimulateRequest, SimulateResult } from '../../kernel/schemas.js'
import { SIMULATE_STATEMENT_TIMEOUT_MS, type Simulator } from '../../simulate/index.js'
import { toErrorBody, type CodedError } from '../../kernel/error-body.js'
import { auditContext, errorResponses } from './responses.js'

export interface SimulateRoutesOptions {
  simulator: Simulator
}

const NDJSON = 'application/x-ndjson'

export const simulateRoutes: FastifyPluginAsyncTypebox<SimulateRoutesOptions> = async (app, { simulator }) => {
  app.post('/simulate', {
    config: { access: 'platform' },
    // The replay has its own bound (60 s, in PostgreSQL); Fastify's timer is its backstop.
    handlerTimeout: SIMULATE_STATEMENT_TIMEOUT_MS + 10_000,
    schema: {
      summary: 'What-if replay of past usage',
      description: 'Replays the recorded calls (and the gate\'s refusals) of a past range, in time order, through the gate\'s and the alerts\' rules, against the budgets as they are or as a proposal would make them (new budgets, changed amounts, periods, thresholds, actions, filters, parents). Answers per budget: spend per period, threshold crossings, the calls it would have refused or downgraded (count, cost, first instant) and the spend that would not have happened, with what the replay cannot know. Changes nothing: the proposal is applied in a transaction that is rolled back; the request itself is audited (simulate). With Accept: application/x-ndjson, progress lines ({"type":"progress"}) and then the result line; hanging up cancels the replay. Bounded at 60 s.',
      tags: ['simulate'],
      body: SimulateRequest,
      response: { 200: SimulateResult, ...errorResponses({ 400: ['BUDGET_ERR_PARENT_NOT_FOUND', 'BUDGET_ERR_CURRENCY_MISMATCH', 'BUDGET_ERR_EXCEEDS_PARENT'], 404: [], 409: ['BUDGET_ERR_HIERARCHY_CYCLE', 'BUDGET_ERR_MOVE_ACROSS_TREES', 'BUDGET_ERR_CURRENCY_LOCKED'] }) }
    }
  }, async (request, reply) => {
    const aborting = new AbortController()
    // the response closed before it was all sent: the client hung up
    const hangUp = () => { if (!reply.raw.writableFinished) aborting.abort() }
    reply.raw.once('close', hangUp)
    const who = auditContext(request)
    if (!(request.headers.accept ?? '').includes(NDJSON)) {
      try {
        return await simulator.simulate(request.body, who, { signal: aborting.signal })
      } finally {
        reply.raw.off('close', hangUp)
      }
    }
    // Streamed: the request is checked before the first line, so a bad one is still a 4xx with its error body.
    const lines = new PassThrough()
    let started = false
    const running = simulator.simulate(request.body, who, {
      signal: aborting.signal,
      onProgress: (progress) => {
        if (!started) { started = true; void reply.type(NDJSON).send(lines as never) }
        lines.write(JSON.stringify(progress) + '\n')
      }
    })
    try {
      const result = await running
      if (!started) { started = true; void reply.type(NDJSON).send(lines as never) }
      lines.end(JSON.stringify(result) + '\n')
    } catch (error) {
      // Before the first line the error handler answers; after it, the status is sent: the last line says what failed.
      if (!started) throw error
      lines.end(JSON.stringify({ type: 'error', ...toErrorBody(error as CodedError) }) + '\n')
    } finally {
      reply.raw.off('close', hangUp)
    }
    return await reply
  })
}
