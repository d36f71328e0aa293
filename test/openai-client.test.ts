// The official openai npm client against the gateway, over real HTTP.
import OpenAI from 'openai'
import t from 'tap'
import { buildGateway } from './fixtures/gateway.js'

async function listening (t: Parameters<typeof buildGateway>[0], options: Parameters<typeof buildGateway>[1] = {}) {
  const gateway = await buildGateway(t, options)
  const address = await gateway.app.listen({ port: 0, host: '127.0.0.1' })
  return { ...gateway, address }
}

const client = (address: string, headers: Record<string, string>) =>
  new OpenAI({ baseURL: `${address}/v1`, apiKey: 'unused-by-the-mock', defaultHeaders: headers, maxRetries: 0 })

t.test('a call within budget succeeds; a call over budget is an APIError 402 whose code names the reason', async (t) => {
  const { address, createBudget, status, settled } = await listening(t)
  const team = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '0.001' })
  const openai = client(address, { 'x-relay-team-id': 'platform' })

  const completion = await openai.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 20 })
  t.equal(completion.model, 'gpt-4o-mini')
  t.ok(completion.usage!.completion_tokens > 0)
  await settled()
  t.not((await status(team.id)).currentAmount, '0')

  const error = await openai.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'Write a novel' }], max_tokens: 4000 })
    .then(() => null, (caught: unknown) => caught)
  t.ok(error instanceof OpenAI.APIError, 'an APIError')
  const apiError = error as InstanceType<typeof OpenAI.APIError>
  t.equal(apiError.status, 402)
  t.equal(apiError.code, 'budget_exceeded')
  t.equal(apiError.type, 'insufficient_quota')
  t.match(apiError.error, { budget: { id: team.id, currency: 'USD' } })
})

t.test('a stream is settled from its final usage', async (t) => {
  const { address, createBudget, status, settled } = await listening(t)
  const team = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1' })
  const openai = client(address, { 'x-relay-team-id': 'platform' })
  const stream = await openai.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Hello there' }], max_tokens: 5, stream: true })
  let text = ''
  let usage: OpenAI.CompletionUsage | undefined
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta.content ?? ''
    usage = chunk.usage ?? usage
  }
  t.ok(text.length > 0)
  t.equal(usage!.completion_tokens, 5, 'as many as max_tokens allows')
  await settled()
  // prompt tokens x 0.15 + completion tokens x 0.6, per 1M tokens
  const expected = ((BigInt(usage!.prompt_tokens) * 150n + BigInt(usage!.completion_tokens) * 600n) * 10n ** 10n / 1_000_000_000n)
  t.equal((await status(team.id)).currentAmount, `0.${expected.toString().padStart(10, '0')}`.replace(/0+$/, ''))
})

t.test('a stream cut off by the client is settled for what was produced', async (t) => {
  const { address, createBudget, settled, sql } = await listening(t, { mockTokenDelayMs: 30 })
  await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '1' })
  const abort = new AbortController()
  const response = await fetch(`${address}/v1/chat/completions`, {
    method: 'POST',
    signal: abort.signal,
    headers: { 'content-type': 'application/json', 'x-relay-team-id': 'platform' },
    body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Tell me everything' }], max_tokens: 200, stream: true })
  })
  t.equal(response.status, 200)
  const reader = response.body!.getReader()
  let received = ''
  while ((received.match(/"content":"[^"]+"/g) ?? []).length < 3) received += new TextDecoder().decode((await reader.read()).value)
  abort.abort()
  await reader.cancel().catch(() => {})
  await settled()
  const [record] = await sql`select metadata from budget_usage_records`
  const produced = (record!.metadata as { outputTokens: number }).outputTokens
  t.ok(produced >= 3 && produced < 20, `settled for ${produced} tokens produced, not the 200 asked for`)
})
