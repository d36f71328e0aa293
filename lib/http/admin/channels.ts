// Admin routes for the notification channels: which are configured (no secrets), and a test through one.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { ChannelList, ChannelParams, ChannelTestResult } from '../../kernel/schemas.js'
import type { ChannelTests } from '../../alerts/index.js'
import { auditContext, errorResponses } from './responses.js'

export interface ChannelRoutesOptions {
  channels: ChannelTests
}

export const channelRoutes: FastifyPluginAsyncTypebox<ChannelRoutesOptions> = async (app, { channels }) => {
  app.get('/channels', {
    config: { access: 'platform' },
    schema: {
      summary: 'List notification channels',
      description: 'The channels the plugin\'s notifications.channels configures, by the names budgets use: each one\'s kind and where it goes (a webhook\'s scheme and host, an SMTP server\'s host and how many recipients), never a secret (no URL path, query or credentials). A budget may name only these.',
      tags: ['channels'],
      response: { 200: ChannelList, ...errorResponses({}) }
    }
  }, async () => ({ channels: channels.list() }))

  app.post('/channels/:name/test', {
    config: { access: 'platform' },
    schema: {
      summary: 'Send a test notification',
      description: 'Sends a `budget.test` event through the channel now and answers with the outcome: 200 `{ delivered: true }`, or 200 `{ delivered: false, error }` when the channel refused it or did not answer within its timeout (a webhook\'s timeoutMs; at most the admin request bound). No outbox row is written and nothing is retried. Each test is in the audit log (test-channel).',
      tags: ['channels'],
      params: ChannelParams,
      response: { 200: ChannelTestResult, ...errorResponses({ 400: [], 404: ['BUDGET_ERR_CHANNEL_NOT_FOUND'] }) }
    }
  }, async (request) => await channels.test(request.params.name, auditContext(request)))
}
