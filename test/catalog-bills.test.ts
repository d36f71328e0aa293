// Catalog models whose provider may bill more than tokens at the input rate (cache writes, server tools): each bounded or refused.
import { calcPrice } from '@pydantic/genai-prices'
import t from 'tap'
import { estimateChatCost } from '../lib/pricing/estimate.js'
import { createPriceBook } from '../lib/pricing/pricing.js'
import { toUnits } from '../lib/kernel/money.js'
import { buildGateway } from './fixtures/gateway.js'
import { startUpstream } from './fixtures/upstream.js'

const catalog = createPriceBook({})
const prose = 'The quick brown fox jumps over the lazy dog. '.repeat(2000) // about 20,000 tokens

t.test('OpenAI models whose prompt-cache writes bill 1.25x the input rate: the estimate is no bound', async (t) => {
  // The catalog's own comment: "Cache writes are billed at 1.25x the uncached input rate". OpenAI's prompt
  // caching is automatic (no request field turns it on), so any call may write its whole prompt to the cache.
  for (const model of ['gpt-5.6-luna', 'gpt-5.6-sol', 'gpt-5.6-terra', 'gpt-6-astra', 'gpt-6-luna', 'gpt-6-sol']) {
    const body = { model, messages: [{ role: 'user', content: prose }], max_tokens: 1 }
    let estimate: string
    try { estimate = (await estimateChatCost(body, catalog)).amount } catch (error) { t.pass(`${model} refused: ${(error as Error).message}`); continue }
    const inputTokens = ((await estimateChatCost(body, catalog)).tokens ?? 0) - 1
    // What the provider bills when the prompt is written to its cache, by the catalog's own arithmetic.
    const billed = calcPrice({ input_tokens: inputTokens, cache_write_tokens: inputTokens, output_tokens: 1 }, model)!.total_price
    // The library's total is a float: compared at the money scale (10 decimals), where its noise ends.
    t.ok(toUnits(estimate) >= toUnits(billed.toFixed(10)), `${model}: estimate ${estimate} >= billed ${billed.toFixed(8)} (prompt written to the cache)`)
  }
})

t.test('server-side tools (web search) and cache_control parts pass the gate unrefused', async (t) => {
  const upstream = await startUpstream(t)
  const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: { sweepIntervalMs: 0 } })
  await gateway.createBudget({ amount: '1' })
  const cases: Array<[string, Record<string, unknown>]> = [
    // Anthropic's server web search tool ($10 per 1,000 searches, per the catalog's web_searches_kcount, plus the results as input tokens)
    ['anthropic web_search tool', { model: 'claude-sonnet-4-6', tools: [{ type: 'web_search_20250305', name: 'web_search', max_uses: 50 }] }],
    // Gemini grounding with Google Search (billed per grounded prompt)
    ['gemini googleSearch tool', { model: 'gemini-2.5-pro', tools: [{ googleSearch: {} }] }],
    // Anthropic cache writes: 1.25x (5 min) or 2x (1 h) the input rate, which the catalog knows (cache_write_1h_mtok)
    ['anthropic cache_control 1h', { model: 'claude-sonnet-4-6', messages: [{ role: 'user', content: [{ type: 'text', text: 'hello', cache_control: { type: 'ephemeral', ttl: '1h' } }] }] }]
  ]
  for (const [name, extra] of cases) {
    const before = upstream.calls.length
    const response = await gateway.call({ team: 'team-a' }, extra)
    t.not(response.statusCode, 200, `${name}: refused (got ${response.statusCode}; the upstream got ${upstream.calls.length - before} call(s), tools=${JSON.stringify(upstream.calls.at(-1)?.body.tools ?? null)})`)
  }
  await gateway.settled()
})
