// The estimate is an upper bound for every API, not only chat: the tightness corpus's 1,200 conversations
// as Responses requests are never estimated under what OpenAI bills for the same conversation (the chat
// oracle: Responses' framing is not published), and its texts as embeddings requests never under their
// cl100k_base count (exact: OpenAI bills an embedding input's tokens and adds nothing). Messages has no
// exact count offline (Claude's tokenizer is not published): only a necessary check is made there.
import t from 'tap'
import { encode as cl100k } from 'gpt-tokenizer/encoding/cl100k_base'
import { worstCaseEmbeddingTokens } from '../lib/model-apis/embeddings.js'
import { chatCorpus } from './fixtures/chat-corpus.js'
import { apiTightness, embeddingsRows, messagesRows, responsesRows, type ApiRow } from './fixtures/tightness.js'

const corpus = chatCorpus()
const under = (rows: ApiRow[]) => rows.filter((row) => row.estimate < row.actual).map((row) => ({ body: JSON.stringify(row.body).slice(0, 200), estimate: row.estimate, actual: row.actual }))

t.test('Responses: the corpus as instructions and input items, never estimated under the chat oracle\'s count', async (t) => {
  const rows = await responsesRows(corpus)
  t.equal(rows.length, corpus.length, `${rows.length} requests`)
  // The corpus carries every kind of input the brief names, or the figure would say nothing of them.
  const kinds = (row: ApiRow) => new Set([
    ...(row.body.input as Array<Record<string, unknown>>).flatMap((item) => [String(item.type), ...(Array.isArray(item.content) ? item.content.map((part: { type: string }) => part.type) : [])]),
    ...['instructions', 'tools', 'tool_choice', 'text'].filter((field) => row.body[field] !== undefined)
  ])
  const seen = new Map<string, number>()
  for (const row of rows) for (const kind of kinds(row)) seen.set(kind, (seen.get(kind) ?? 0) + 1)
  for (const kind of ['message', 'function_call', 'function_call_output', 'input_text', 'output_text', 'input_image', 'instructions', 'tools', 'tool_choice', 'text']) {
    t.ok((seen.get(kind) ?? 0) >= 10, `${kind}: in ${seen.get(kind) ?? 0} requests`)
  }
  t.same(under(rows), [], 'no request is estimated under its actual input tokens')
  const ratios = apiTightness(rows)
  t.ok(ratios.min >= 1, `minimum estimated/actual ${ratios.min.toFixed(3)} >= 1 (median ${ratios.median.toFixed(3)}, p90 ${ratios.p90.toFixed(3)})`)
})

t.test('embeddings: the corpus\'s texts, never estimated under their cl100k_base tokens', async (t) => {
  const rows = await embeddingsRows(corpus)
  t.equal(rows.length, corpus.length, `${rows.length} requests`)
  t.ok(rows.filter((row) => Array.isArray(row.body.input)).length >= 500, 'lists of strings as well as single strings')
  t.same(under(rows), [], 'no request is estimated under its actual input tokens')
  const ratios = apiTightness(rows)
  t.ok(ratios.min >= 1, `minimum estimated/actual ${ratios.min.toFixed(3)} >= 1 (median ${ratios.median.toFixed(3)}, p90 ${ratios.p90.toFixed(3)})`)
  // The actual is the tokenizer's own count, not the estimate's counter under another name.
  const sample = { model: 'text-embedding-3-small', input: ['Hello, world!', '预算网关限制每个团队本月模型调用的支出。'] }
  t.ok((await worstCaseEmbeddingTokens(sample)) >= cl100k(sample.input[0]!).length + cl100k(sample.input[1]!).length, 'a hand-checked request too')
})

t.test('Messages: every conversation accepted, and at least OpenAI\'s count of it (necessary, not sufficient: Claude\'s tokenizer is not available offline)', async (t) => {
  const rows = await messagesRows(corpus)
  t.equal(rows.length, corpus.length, `${rows.length} requests`)
  t.same(under(rows), [], 'no request is estimated under the o200k_base count of its conversation')
  t.comment(`median ${apiTightness(rows).median.toFixed(3)} against the proxy: the byte bound's looseness, overstated by how many fewer tokens o200k_base makes than Claude's tokenizer`)
})
