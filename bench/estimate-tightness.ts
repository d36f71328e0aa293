// How tight the gate's estimate of prompt tokens is (issue 14): over a seeded corpus of 1,200 varied chat
// requests to OpenAI models, the estimate's prompt tokens against what OpenAI bills for them (computed
// offline, test/fixtures/openai-tokens.ts), beside the byte count it replaced. The minimum must be at
// least 1.00: the estimate is an upper bound. Then the same for every API the gate knows, the corpus's
// conversations put in each API's form, each against the count stated beside it (exact, or a proxy
// where the provider's tokenizer cannot be run offline).
import { fmt } from './harness.js'
import { apiTightness, embeddingsRows, messagesRows, responsesRows, summary, tightness, tightnessRows, type Row, type Summary } from '../test/fixtures/tightness.js'

const rows = await tightnessRows()
const line = (name: string, part: Row[], withImages = false) => {
  const { estimate, bytes } = tightness(part, withImages)
  return `| ${name} (${part.length}) | ${fmt(estimate.median, 3)} | ${fmt(estimate.max, 3)} | ${fmt(estimate.min, 3)} | ${fmt(bytes.median, 2)} | ${fmt(bytes.max, 2)} | ${fmt(bytes.min, 2)} |`
}
const has = (row: Row, field: string) => row.body[field] !== undefined
process.stdout.write([
  '',
  'estimated / actual prompt tokens, OpenAI models',
  '',
  '| requests | tokenizer: median | max | min | byte count: median | max | min |',
  '|---|---|---|---|---|---|---|',
  line('all, image parts left out of both', rows),
  line('all, images at their worst case in both', rows, true),
  line('with tools or functions', rows.filter((row) => has(row, 'tools') || has(row, 'functions'))),
  line('with response_format', rows.filter((row) => has(row, 'response_format'))),
  line('without tools or response_format', rows.filter((row) => !has(row, 'tools') && !has(row, 'functions') && !has(row, 'response_format'))),
  line('cl100k models (gpt-4, gpt-3.5-turbo)', rows.filter((row) => /^gpt-(4|3\.5-turbo)$/.test(row.body.model))),
  ''
].join('\n'))
const { estimate } = tightness(rows)
process.stdout.write(`targets: median <= 1.05 -> ${estimate.median <= 1.05 ? 'met' : 'NOT met'}; never under 1.00 -> ${estimate.min >= 1 ? 'met' : 'NOT met'}\n`)

// Per API: image parts left out of both sides. min must be >= 1 where the actual is exact (or the chat
// oracle); Messages' actual is a proxy, so its min is a figure, not a target.
const perApi = (api: string, count: number, actual: string, ratios: Summary) =>
  `| ${api} (${count}) | ${actual} | ${fmt(ratios.median, 3)} | ${fmt(ratios.p90, 3)} | ${fmt(ratios.max, 3)} | ${fmt(ratios.min, 3)} |`
const chatRatios = summary(rows.map((row) => (row.estimate - row.images) / (row.actual - row.images)))
const responses = await responsesRows()
const embeddings = await embeddingsRows()
const messages = await messagesRows()
const messagesCl100k = await messagesRows(undefined, 'gpt-4')
const apis: Array<[string, number, string, Summary, boolean]> = [
  ['chat', rows.length, 'OpenAI\'s tokenizer by the chat rule (the oracle)', chatRatios, true],
  ['Responses', responses.length, 'the chat oracle on the same conversation (proxy: Responses\' framing is not published)', apiTightness(responses), true],
  ['embeddings, text-embedding-3-small', embeddings.length, 'cl100k_base, each string (exact)', apiTightness(embeddings), true],
  ['Messages, claude-sonnet-4-5', messages.length, 'o200k_base by the chat rule (proxy: Claude\'s tokenizer is not available offline)', apiTightness(messages), false],
  ['Messages, claude-sonnet-4-5', messagesCl100k.length, 'cl100k_base by the chat rule (the same proxy, the older tokenizer)', apiTightness(messagesCl100k), false]
]
process.stdout.write([
  '',
  'estimated / actual input tokens per API, the same 1,200 conversations, image parts left out of both',
  '',
  '| API (requests) | actual | median | p90 | max | min |',
  '|---|---|---|---|---|---|',
  ...apis.map(([api, count, actual, ratios]) => perApi(api, count, actual, ratios)),
  ''
].join('\n'))
for (const [api, , , ratios, exact] of apis) {
  if (exact) process.stdout.write(`${api}: never under 1.00 -> ${ratios.min >= 1 ? 'met' : 'NOT met'}\n`)
}
