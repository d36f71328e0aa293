// The estimate's prompt tokens must bound what OpenAI bills (the oracle,
// test/fixtures/openai-tokens.ts). A tool result whose JSON starts with whitespace is re-rendered by the
// API (JSON.parse accepts leading whitespace) but counted as sent by tokens.ts (jsonTextTokens only
// re-renders text that starts with '{'): the estimate is under the bill, and a hard budget is overspent.
import t from 'tap'
import { worstCaseTokens, estimateChatCost } from '../lib/pricing/estimate.js'
import { DEFAULT_PRICES, createPriceBook } from '../lib/pricing/pricing.js'
import { toUnits } from '../lib/kernel/money.js'
import { openAIPromptTokens } from './fixtures/openai-tokens.js'
import { buildGateway } from './fixtures/gateway.js'
import { startUpstream } from './fixtures/upstream.js'

const price = DEFAULT_PRICES['gpt-4o-mini']!
const result = JSON.stringify(Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`k${i}`, { v: i }])))
const body = (lead: string) => ({
  model: 'gpt-4o-mini',
  max_tokens: 1,
  messages: [
    { role: 'user', content: 'look these up' },
    { role: 'assistant', content: null, tool_calls: [{ id: 'c1', type: 'function', function: { name: 'f', arguments: '{}' } }, { id: 'c2', type: 'function', function: { name: 'f', arguments: '{}' } }] },
    { role: 'tool', tool_call_id: 'c1', content: lead + result },
    { role: 'tool', tool_call_id: 'c2', content: lead + result }
  ]
})

t.test('tool results with leading whitespace: the estimate is at least the oracle', async (t) => {
  for (const lead of ['', ' ', '\n', '\t', '\r\n']) {
    const b = body(lead)
    const estimate = (await worstCaseTokens(b, price, b.model)).inputTokens
    const oracle = openAIPromptTokens(b, price.maxImageTokens!)!
    t.ok(estimate >= oracle, `lead ${JSON.stringify(lead)}: estimate ${estimate} >= oracle ${oracle}`)
  }
})

t.test('through a real gateway: a hard budget sized to the estimate is overspent by a worst-case upstream', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json-worst-case' })
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  const b = body('\n')
  const { amount } = (await estimateChatCost(b, createPriceBook(DEFAULT_PRICES)))
  const budget = await gateway.createBudget({ amount })
  const response = await gateway.call({ team: 'team-a' }, b)
  t.equal(response.statusCode, 200)
  await gateway.settled()
  const status = await gateway.status(budget.id)
  t.ok(toUnits(status.currentAmount) <= toUnits(amount), `hard limit ${amount}: spent ${status.currentAmount}`)
})

t.test('tool call arguments with a leading space: the estimate is at least the oracle', async (t) => {
  const args = JSON.stringify(Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`key_${i}`, -i])))
  for (const lead of ['', ' ', '\n']) {
    const b = { model: 'gpt-4o-mini', max_tokens: 1, messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: null, tool_calls: [{ id: 'c1', type: 'function', function: { name: 'f', arguments: lead + args } }] }] }
    const estimate = (await worstCaseTokens(b, price, b.model)).inputTokens
    const oracle = openAIPromptTokens(b, price.maxImageTokens!)!
    t.ok(estimate >= oracle, `lead ${JSON.stringify(lead)}: estimate ${estimate} >= oracle ${oracle}`)
  }
})
