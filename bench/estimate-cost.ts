// The estimate's cost per call (issue 14): the model's tokenizer against the byte count it replaced, on
// realistic prompts, measured alone (nothing else runs). Printed by bench/gate.ts; alone with
// BENCH_ONLY=estimate npx tsx bench/gate.ts.
import { estimateChatCost } from '../lib/pricing/estimate.js'
import { DEFAULT_PRICES, createPriceBook } from '../lib/pricing/pricing.js'
import { chatCorpus } from '../test/fixtures/chat-corpus.js'
import { fmt } from './harness.js'

const BYTES_MODEL = 'a-model-without-a-known-tokenizer'
const book = createPriceBook({ ...DEFAULT_PRICES, [BYTES_MODEL]: DEFAULT_PRICES['gpt-4o-mini']! })
const prose = (sentences: number) => Array.from({ length: sentences }, (_, i) => `Sentence ${i} of the quarterly report says revenue grew while churn held steady in region ${i % 7}.`).join(' ')
const tool = (name: string) => ({ type: 'function', function: { name, description: `Looks up a ${name} by id or name`, parameters: { type: 'object', properties: { id: { type: 'string', description: 'the id' }, unit: { type: 'string', enum: ['a', 'b', 'c'] } }, required: ['id'] } } })
const corpus = chatCorpus(200, 99)

const PROMPTS: Array<[string, Record<string, unknown>]> = [
  ['"Say hello" (the load\'s call)', { messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 20 }],
  ['chat: 1 KB system prompt, 3 turns', { messages: [{ role: 'system', content: prose(10) }, { role: 'user', content: prose(2) }, { role: 'assistant', content: prose(3) }, { role: 'user', content: 'And the risks?' }], max_tokens: 500 }],
  ['agent: 3 tools, a tool call and its result', { messages: [{ role: 'system', content: prose(4) }, { role: 'user', content: prose(1) }, { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'customer', arguments: '{"id":"c-42"}' } }] }, { role: 'tool', tool_call_id: 'call_1', content: JSON.stringify({ name: 'Acme', plan: 'pro', seats: 40 }) }], tools: ['customer', 'invoice', 'ticket'].map(tool), max_tokens: 800 }],
  ['RAG: 20 KB document', { messages: [{ role: 'system', content: 'Answer from the document.' }, { role: 'user', content: prose(220) }], max_tokens: 1000 }],
  ['2 KB of Chinese', { messages: [{ role: 'user', content: '请总结本季度财务报告的主要风险，包括客户流失、收入增长和预测。'.repeat(22) }], max_tokens: 500 }]
]

/** Microseconds a call, over 300 ms of calls after 200 ms of warm-up (the JIT's). */
async function perCall (body: Record<string, unknown>): Promise<number> {
  const run = async (ms: number): Promise<number> => {
    const deadline = process.hrtime.bigint() + BigInt(ms * 1e6)
    const started = process.hrtime.bigint()
    let calls = 0
    while (process.hrtime.bigint() < deadline) { for (let i = 0; i < 20; i++) (await estimateChatCost(body, book)); calls += 20 }
    return Number(process.hrtime.bigint() - started) / 1e3 / calls
  }
  await run(200)
  return await run(300)
}

/** Rows for the gate benchmark's table: us per estimate with the tokenizer and with the byte count. */
export async function estimateCostRows (): Promise<string[]> {
  const started = process.hrtime.bigint()
  await (estimateChatCost({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'load' }] }, book))
  const loadMs = Number(process.hrtime.bigint() - started) / 1e6
  const rows: string[] = []
  for (const [name, body] of PROMPTS) {
    const tokens = await perCall({ ...body, model: 'gpt-4o-mini' })
    const bytes = await perCall({ ...body, model: BYTES_MODEL })
    rows.push(`| estimate per call, ${name}: tokenizer / byte count | ${fmt(tokens, 1)} us / ${fmt(bytes, 1)} us | ${fmt(tokens / bytes)}x |`)
  }
  // The corpus's requests in turn (mixed languages, tools, long prompts): the merge cache helps less.
  const started2 = process.hrtime.bigint()
  for (const body of corpus) (await estimateChatCost(body, book))
  const corpusUs = Number(process.hrtime.bigint() - started2) / 1e3 / corpus.length
  return [
    `| tokenizer load (o200k_base), once a process | ${fmt(loadMs, 0)} ms | |`,
    ...rows,
    `| estimate per call, ${corpus.length} varied requests of the tightness corpus, each once | ${fmt(corpusUs, 0)} us | |`
  ]
}
