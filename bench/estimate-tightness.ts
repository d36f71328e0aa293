// How tight the gate's estimate of prompt tokens is (issue 14): over a seeded corpus of 1,200 varied chat
// requests to OpenAI models, the estimate's prompt tokens against what OpenAI bills for them (computed
// offline, test/fixtures/openai-tokens.ts), beside the byte count it replaced. The minimum must be at
// least 1.00: the estimate is an upper bound.
import { fmt } from './harness.js'
import { tightness, tightnessRows, type Row } from '../test/fixtures/tightness.js'

const rows = tightnessRows()
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
