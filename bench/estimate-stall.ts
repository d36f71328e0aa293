// How long one request's estimate holds the event loop (issue 19, item 8): adversarial bodies up to
// Fastify's default body limit (1 MiB), each estimated the way the gate does it (estimateChatCost, and
// under nearLimit 'clamp' the search for the largest affordable max_tokens). The estimate is
// asynchronous and gives the loop a turn between slices of its work (lib/kernel/loop-slices.ts), so what
// matters is the longest continuous stretch the loop is held while it runs, not its total: a probe
// re-schedules itself with setImmediate for as long as the estimate runs, and the longest gap between
// two of its turns (from the call to the first turn, and from the last turn to the estimate's end) is
// that stretch. Each stretch is measured in CPU time (process.cpuUsage, user and system: what it
// blocks an idle core for, whatever else the shared machine runs) and in wall time. Target: every
// body's longest stretch under 20 ms of CPU. Per body: the median of 5 runs' longest stretches, the
// slowest run's, the estimate's total CPU (median) and how many turns the loop got during it. Beside it
// the body's parse: JSON.parse's CPU (what Fastify's default parser runs in one stretch) and the longest
// stretch of the parser that yields (budgetJsonParser's, lib/kernel/json-parse.ts), measured the same way.
// Run: npx tsx bench/estimate-stall.ts
import { costAtOutputLimit, largestAffordable } from '../lib/http/gate/clamp.js'
import { estimateChatCost } from '../lib/pricing/estimate.js'
import { DEFAULT_PRICES, createPriceBook } from '../lib/pricing/pricing.js'
import { forgetCountedPieces, preloadTokenizers } from '../lib/pricing/tokens.js'
import { toUnits } from '../lib/kernel/money.js'
import { parseJsonInSlices } from '../lib/kernel/json-parse.js'
import { cpuNow, probed } from './loop-probe.js'
import type { FastifyRequest } from 'fastify'

const BODY_LIMIT = 1_048_576
const TARGET_MS = 20
const book = createPriceBook({ ...DEFAULT_PRICES, 'claude-3-5-sonnet': { input: '3', output: '15', maxOutputTokens: 8192 } })
preloadTokenizers(['gpt-4o', 'gpt-4'])

/** Random lowercase "words" of 2 to 12 letters: each a new piece for the tokenizer, its costliest ASCII. */
function randomWords (bytes: number, seed = 1): string {
  let state = seed
  const next = () => { state = (state * 1103515245 + 12345) % 2147483648; return state }
  let text = ''
  while (text.length < bytes) {
    const length = 2 + (next() % 11)
    for (let i = 0; i < length; i++) text += String.fromCharCode(97 + (next() % 26))
    text += ' '
  }
  return text.slice(0, bytes)
}

/** Grows `make(count)` until its JSON is as large as fits under the body limit. */
function fill (make: (count: number) => Record<string, unknown>): Record<string, unknown> {
  let low = 1
  let high = 1
  while (JSON.stringify(make(high)).length < BODY_LIMIT) high *= 2
  while (low < high - 1) {
    const middle = Math.floor((low + high) / 2)
    if (JSON.stringify(make(middle)).length <= BODY_LIMIT) low = middle; else high = middle
  }
  return make(low)
}

const nested = (depth: number): Record<string, unknown> => depth === 0 ? { type: 'string' } : { type: 'object', properties: { a: nested(depth - 1) } }
const tool = (i: number) => ({ type: 'function', function: { name: `tool_${i}`, description: `does thing ${i}`, parameters: { type: 'object', properties: { id: { type: 'string', enum: ['a', 'b', `c${i}`] } } } } })
const chinese = '预算网关令牌模型成本限制周期每个团队本月调用支出'

const BODIES: Array<[string, (model: string) => Record<string, unknown>]> = [
  ['one message of random words (1 MiB)', (model) => ({ model, messages: [{ role: 'user', content: randomWords(BODY_LIMIT - 100) }], max_tokens: 4000 })],
  ['one message of Chinese (1 MiB)', (model) => fill((n) => ({ model, messages: [{ role: 'user', content: chinese.repeat(n) }], max_tokens: 4000 }))],
  ['20,000 tiny named messages', (model) => ({ model, messages: Array.from({ length: 20_000 }, (_, i) => ({ role: i % 2 === 0 ? 'user' : 'assistant', name: `u${i}`, content: `m${i}` })), max_tokens: 100 })],
  ['short messages to the limit', (model) => fill((n) => ({ model, messages: Array.from({ length: n }, (_, i) => ({ role: 'user', content: `${i}` })), max_tokens: 100 }))],
  ['many tools', (model) => fill((n) => ({ model, messages: [{ role: 'user', content: 'pick' }], tools: Array.from({ length: n }, (_, i) => tool(i)), tool_choice: 'required', max_tokens: 100 }))],
  ['tools nested 60 deep', (model) => fill((n) => ({ model, messages: [{ role: 'user', content: 'go' }], tools: Array.from({ length: n }, (_, i) => ({ type: 'function', function: { name: `t${i}`, parameters: nested(28) } })), max_tokens: 100 }))],
  ['tool calls with JSON arguments', (model) => fill((n) => ({ model, messages: [{ role: 'user', content: 'go' }, { role: 'assistant', content: null, tool_calls: Array.from({ length: n }, (_, i) => ({ id: `c${i}`, type: 'function', function: { name: 'f', arguments: JSON.stringify({ a: i, b: [1, 2, { c: 'x' }] }) } })) }], max_tokens: 100 }))],
  ['text parts', (model) => fill((n) => ({ model, messages: [{ role: 'user', content: Array.from({ length: n }, (_, i) => ({ type: 'text', text: `p${i}` })) }], max_tokens: 100 }))],
  // The reviewer's shapes (issue 19 review rb): one piece met again and again, a wide response_format,
  // tiny messages with a key the rule does not know, and long runs of combining marks.
  ["\"a's\" repeated", (model) => fill((n) => ({ model, messages: [{ role: 'user', content: "a's".repeat(n) }], max_tokens: 10 }))],
  ['response_format with many properties', (model) => fill((n) => ({ model, messages: [{ role: 'user', content: 'x' }], response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object', properties: Object.fromEntries(Array.from({ length: n }, (_, i) => [`p${i}`, { type: 'string' }])) } } }, max_tokens: 10 }))],
  ['tiny messages with an extra key', (model) => fill((n) => ({ model, messages: Array.from({ length: n }, () => ({ role: 'user', content: 'x', z: 1 })), max_tokens: 10 }))],
  ['combining marks', (model) => fill((n) => ({ model, messages: [{ role: 'user', content: ('a' + '\u0301'.repeat(50) + ' ').repeat(n) }], max_tokens: 10 }))],
  ['tool results with JSON after a newline', (model) => fill((n) => ({ model, messages: [{ role: 'user', content: 'go' }, ...Array.from({ length: n }, (_, i) => ({ role: 'tool', tool_call_id: `c${i}`, content: '\n' + JSON.stringify({ a: i, b: [1, 2, { c: 'x' }] }) }))], max_tokens: 10 }))]
]

interface Stall { stretchCpu: number, stretchWall: number, worstCpu: number, worstWall: number, totalCpu: number, turns: number }
const RUNS = 5
const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!

/**
 * RUNS runs of `work`, each with no piece counted in the process before (the tokenizer remembers pieces
 * across requests): the worst case, a body whose pieces no earlier request had.
 */
async function measure (work: () => Promise<unknown>): Promise<Stall> {
  const runs = []
  for (let i = 0; i < RUNS; i++) {
    forgetCountedPieces()
    runs.push(await probed(work))
  }
  return {
    stretchCpu: median(runs.map((run) => run.cpu)),
    stretchWall: median(runs.map((run) => run.wall)),
    worstCpu: Math.max(...runs.map((run) => run.cpu)),
    worstWall: Math.max(...runs.map((run) => run.wall)),
    totalCpu: median(runs.map((run) => run.total)),
    turns: median(runs.map((run) => run.turns))
  }
}

/** CPU ms of JSON.parse (what Fastify's body parser runs before the gate), the median of RUNS. */
function parseCpu (text: string): number {
  const runs: number[] = []
  for (let i = 0; i < RUNS; i++) {
    const started = cpuNow()
    JSON.parse(text)
    runs.push(cpuNow() - started)
  }
  return median(runs)
}

/** The clamp search as the gate runs it: the estimate, then the largest max_tokens that fits a room of a tenth of it. */
async function clampRun (body: Record<string, unknown>): Promise<void> {
  const estimate = await estimateChatCost(body, book)
  const request = { body } as unknown as FastifyRequest
  const costAt = costAtOutputLimit(request, estimate, async (view) => await estimateChatCost(view.body, book))
  await largestAffordable(costAt, 16, Number(body.max_tokens), toUnits(estimate.amount) / 10n)
}

const ms = (value: number): string => `${value.toFixed(1)} ms`
const row = (model: string, name: string, bytes: number, stall: Stall, parse: string, sliced: string): string =>
  `| ${model} | ${name} | ${(bytes / 1e6).toFixed(2)} MB | ${ms(stall.stretchCpu)} | ${ms(stall.worstCpu)} | ${ms(stall.stretchWall)} | ${ms(stall.totalCpu)} | ${stall.turns} | ${parse} | ${sliced} |`

const rows: string[] = []
let slowest = 0
let slowestWorst = 0
/** The slowest single run's stretch in wall time: how long the loop itself was held (CPU counts GC threads too). */
let slowestWorstWall = 0
let slowestSlicedWorstWall = 0
let slowestParse = 0
let slowestSliced = 0
let slowestSlicedWorst = 0
for (const model of ['gpt-4o', 'claude-3-5-sonnet']) {
  for (const [name, make] of BODIES) {
    const body = make(model)
    const text = JSON.stringify(body)
    const bytes = text.length
    // What Fastify's body parser costs on the same bytes, before the gate runs at all.
    const parse = parseCpu(text)
    slowestParse = Math.max(slowestParse, parse)
    // The parser that yields, on the same bytes: its longest stretch (CPU, median of RUNS, and the slowest run's).
    const sliced = await measure(async () => await parseJsonInSlices(text))
    slowestSliced = Math.max(slowestSliced, sliced.stretchCpu)
    slowestSlicedWorst = Math.max(slowestSlicedWorst, sliced.worstCpu)
    slowestSlicedWorstWall = Math.max(slowestSlicedWorstWall, sliced.worstWall)
    const slicedCell = `${ms(sliced.stretchCpu)} (${ms(sliced.worstCpu)})`
    let stall: Stall
    try {
      stall = await measure(async () => await estimateChatCost(body, book))
    } catch (error) {
      rows.push(`| ${model} | ${name} | ${(bytes / 1e6).toFixed(2)} MB | refused: ${(error as Error).message.slice(0, 60)} | | | | | ${ms(parse)} | ${slicedCell} |`)
      continue
    }
    slowest = Math.max(slowest, stall.stretchCpu)
    slowestWorst = Math.max(slowestWorst, stall.worstCpu)
    slowestWorstWall = Math.max(slowestWorstWall, stall.worstWall)
    rows.push(row(model, name, bytes, stall, ms(parse), slicedCell))
  }
}
const clampBody = { model: 'gpt-4o', messages: [{ role: 'user', content: randomWords(580_000) }], max_tokens: 16_000 }
const clamp = await measure(async () => { await clampRun(clampBody) })
slowest = Math.max(slowest, clamp.stretchCpu)
slowestWorst = Math.max(slowestWorst, clamp.worstCpu)
slowestWorstWall = Math.max(slowestWorstWall, clamp.worstWall)
rows.push(row('gpt-4o', 'nearLimit clamp: estimate and search, 0.58 MB of random words', 580_000, clamp, '', ''))

// The parse floor: the largest body of the costliest shape to parse (an object of many short keys, as
// response_format's properties) whose JSON.parse stays under the target, in steps of 64 KiB: the
// bodyLimit that keeps the route's own parsing under it.
const wide = (n: number) => JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object', properties: Object.fromEntries(Array.from({ length: n }, (_, i) => [`p${i}`, { type: 'string' }])) } } }, max_tokens: 10 })
let parseLimit = 0
for (let limit = 65_536; limit <= BODY_LIMIT; limit += 65_536) {
  const text = wide(Math.floor(limit / 30))
  if (parseCpu(text) > TARGET_MS) break
  parseLimit = limit
}

process.stdout.write([
  '',
  `how long an estimate holds the event loop, per adversarial body: the longest stretch between two turns of the loop while it runs (CPU; median of ${RUNS} runs and the slowest run), its wall time (median), the estimate's total CPU (median) and the turns the loop got, beside JSON.parse's CPU on the same bytes`,
  '',
  '| model | body | size | longest stretch, CPU | slowest run | longest stretch, wall | estimate CPU in all | loop turns | JSON.parse CPU | parser that yields: longest stretch, CPU (slowest run) |',
  '|---|---|---|---|---|---|---|---|---|---|',
  ...rows,
  '',
  `target: every estimate's longest stretch under ${TARGET_MS} ms of CPU -> ${slowest <= TARGET_MS ? 'met' : 'NOT met'} (slowest ${slowest.toFixed(1)} ms at the median, ${slowestWorst.toFixed(1)} ms in any run; in wall time, ${slowestWorstWall.toFixed(1)} ms in any run)`,
  `JSON.parse of the same bodies (Fastify's default parser, before the gate, one stretch that cannot be sliced): slowest ${slowestParse.toFixed(1)} ms -> ${slowestParse <= TARGET_MS ? 'under' : 'OVER'} ${TARGET_MS} ms; a bodyLimit of ${parseLimit} bytes keeps the costliest parse (many keys) under ${TARGET_MS} ms`,
  `the parser that yields (budgetJsonParser) on the same bodies: longest stretch ${slowestSliced.toFixed(1)} ms at the median, ${slowestSlicedWorst.toFixed(1)} ms in any run (wall time: ${slowestSlicedWorstWall.toFixed(1)} ms) -> ${slowestSliced <= TARGET_MS ? 'under' : 'OVER'} ${TARGET_MS} ms`,
  ''
].join('\n'))
