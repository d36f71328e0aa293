// Admin routes for exchange rates: set a pair's rate from an instant on, and list them.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { ExchangeRate, ExchangeRateList, ExchangeRateParams, ExchangeRateQuery, SetExchangeRateBody } from '../../kernel/schemas.js'
import type { ExchangeRates } from '../../currencies/index.js'
import { auditContext, errorResponses } from './responses.js'

export interface ExchangeRateRoutesOptions {
  rates: ExchangeRates
}

export const exchangeRateRoutes: FastifyPluginAsyncTypebox<ExchangeRateRoutesOptions> = async (app, { rates }) => {
  app.put('/exchange-rates/:from/:to', {
    config: { access: 'platform' },
    schema: {
      summary: 'Set an exchange rate',
      description: 'One unit of `from` is `rate` units of `to` from `effectiveFrom` (default now) on, until a later rate of the pair. Usage and gated calls in `from` count toward budgets in `to` at the rate in force when they are recorded (rounded up; the rate is stored with the allocation). 201 for a new rate, 200 when it replaces the rate of the same pair and instant (the replaced one stays in the list, marked replaced). Each change is in the audit log (set-exchange-rate).',
      tags: ['currencies'],
      params: ExchangeRateParams,
      body: SetExchangeRateBody,
      response: { 200: ExchangeRate, 201: ExchangeRate, ...errorResponses({ 400: [] }) }
    }
  }, async (request, reply) => {
    const { rate, created } = await rates.setRate(request.params.from, request.params.to, request.body, auditContext(request))
    return await reply.code(created ? 201 : 200).send(rate)
  })

  app.get('/exchange-rates', {
    config: { access: 'read' },
    schema: {
      summary: 'List exchange rates',
      description: 'Every rate, replaced ones included, by pair and newest first, a page at a time (`limit`, `cursor`); `from` and `to` keep one currency\'s.',
      tags: ['currencies'],
      querystring: ExchangeRateQuery,
      response: { 200: ExchangeRateList, ...errorResponses({ 400: [] }) }
    }
  }, async (request) => await rates.listRates(request.query))
}
