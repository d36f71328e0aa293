// Adversarial review of the usage read from a route's returned object before it is serialized (the
// preSerialization hook): what the gate charges must follow the usage the client is sent.
import t from 'tap'
import { fromUnits, toUnits } from '../lib/kernel/money.js'
import { buildGateway } from './fixtures/gateway.js'

/** gpt-4o-mini: 0.15 per 1M input, 0.6 per 1M output, rounded up to 10 decimals. */
const miniCost = (input: number, output: number): string =>
  fromUnits((BigInt(input) * toUnits('0.15') + BigInt(output) * toUnits('0.6') + 999_999n) / 1_000_000n)

const request = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 20 }

t.test('a route whose usage object has its own toJSON is charged the usage its client is sent', async (t) => {
  const { app, createBudget, status, settled, sql } = await buildGateway(t, {
    routes: (app) => {
      app.post('/review/nested/v1/chat/completions', { config: { budgetGate: 'chat' } }, async () => ({
        id: 'chatcmpl-nested',
        object: 'chat.completion',
        model: 'gpt-4o-mini',
        choices: [{ index: 0, message: { role: 'assistant', content: 'hello' }, finish_reason: 'stop' }],
        // An object whose serialized form is its toJSON's, as JSON.stringify makes it: the client reads 50/40.
        usage: { prompt_tokens: 1, completion_tokens: 1, toJSON: () => ({ prompt_tokens: 50, completion_tokens: 40, total_tokens: 90 }) }
      }))
    }
  })
  const team = await createBudget({ scopeType: 'team', scopeId: 'nested', amount: '1' })
  const response = await app.inject({ method: 'POST', url: '/review/nested/v1/chat/completions', headers: { 'x-relay-team-id': 'nested' }, body: request })
  t.equal(response.statusCode, 200)
  t.same(response.json().usage, { prompt_tokens: 50, completion_tokens: 40, total_tokens: 90 }, 'the client is sent 50 in, 40 out')
  await settled()
  t.equal((await status(team.id)).currentAmount, miniCost(50, 40), 'charged the usage in the body sent, not the object\'s own fields')
  const [record] = await sql`select metadata from budget_usage_records`
  t.match(record!.metadata, { inputTokens: 50, outputTokens: 40 })
})

t.test('a route with its own reply serializer is charged the usage its client is sent', async (t) => {
  const { app, createBudget, status, settled } = await buildGateway(t, {
    routes: (app) => {
      app.post('/review/serializer/v1/chat/completions', { config: { budgetGate: 'chat' } }, async (_request, reply) => {
        // The route keeps provider-neutral counts and renders them in the chat shape when serializing.
        reply.serializer((body: { usage: { input: number, output: number }, prompt_tokens?: number }) =>
          JSON.stringify({ ...body, usage: { prompt_tokens: body.usage.input, completion_tokens: body.usage.output, total_tokens: body.usage.input + body.usage.output } }))
        return {
          id: 'chatcmpl-serializer',
          object: 'chat.completion',
          model: 'gpt-4o-mini',
          choices: [{ index: 0, message: { role: 'assistant', content: 'hello' }, finish_reason: 'stop' }],
          usage: { input: 70, output: 30, prompt_tokens: 1, completion_tokens: 1 }
        }
      })
    }
  })
  const team = await createBudget({ scopeType: 'team', scopeId: 'serializer', amount: '1' })
  const response = await app.inject({ method: 'POST', url: '/review/serializer/v1/chat/completions', headers: { 'x-relay-team-id': 'serializer' }, body: request })
  t.equal(response.statusCode, 200)
  t.match(response.json().usage, { prompt_tokens: 70, completion_tokens: 30 })
  await settled()
  t.equal((await status(team.id)).currentAmount, miniCost(70, 30), 'charged the usage in the body sent')
})

t.test('a gated route that returns null is answered as before (the JSON null), not with a 500', async (t) => {
  const { app, createBudget, status, settled, sql } = await buildGateway(t, {
    routes: (app) => {
      app.post('/review/null/v1/chat/completions', { config: { budgetGate: 'chat' } }, async () => null)
    }
  })
  const team = await createBudget({ scopeType: 'team', scopeId: 'null', amount: '1' })
  const response = await app.inject({ method: 'POST', url: '/review/null/v1/chat/completions', headers: { 'x-relay-team-id': 'null' }, body: request })
  t.equal(response.statusCode, 200, `answered ${response.statusCode} ${response.body}`)
  t.equal(response.body, 'null')
  await settled()
  const [row] = await sql`select count(*)::int as count from budget_reservations`
  t.equal(row!.count, 0, 'no hold left')
  t.equal((await status(team.id)).reservedAmount, '0')
})
