// The gate battery for the Responses, Messages and embeddings routes, over real HTTP: for each API, about
// forty concurrent calls through the example gateway to a misbehaving upstream of that API
// (test/fixtures/upstream-apis.ts: typical and worst-case usage, no usage, errors, streams whole, cut and
// without usage, hangs), a fifth of the clients leaving at a random point, against a hard team and
// organization budget that the worst-case calls exhaust. Once settled, the escrow invariants hold, no
// record is over its estimate, errors cost nothing, and a worst-case call is charged exactly its usage.
import type { Sql } from 'postgres'
import t from 'tap'
import { estimateEmbeddingCost } from '../lib/model-apis/embeddings.js'
import { estimateMessagesCost } from '../lib/model-apis/messages.js'
import { estimateResponsesCost } from '../lib/model-apis/responses.js'
import { fromUnits, normalizeMoney, toUnits } from '../lib/kernel/money.js'
import { costOfTokens, createPriceBook, DEFAULT_PRICES } from '../lib/pricing/pricing.js'
import { buildGateway } from './fixtures/gateway.js'
import { checkInvariants, waitForSettled } from './fixtures/invariants.js'
import {
  API_UPSTREAM_MODES, EMBEDDINGS_MODES, apiModeMarker, priceOf, startApiUpstream, type ApiName, type ApiUpstreamCall, type ApiUpstreamMode
} from './fixtures/upstream-apis.js'

const SEED = Number(process.env.GATE_BATTERY_APIS_SEED ?? (Date.now() % 2_147_483_647))
const CALLS = 40
const WORKERS = 10
const PRICES = createPriceBook(DEFAULT_PRICES)
const ERROR_MODES = new Set<ApiUpstreamMode>(['error-500', 'error-429'])
/** Answers whose usage never comes: the call is charged its estimate. */
const ESTIMATED_MODES = new Set<ApiUpstreamMode>(['json-no-usage', 'sse-cut', 'sse-no-usage'])

const pause = async (ms: number) => await new Promise((resolve) => setTimeout(resolve, ms))

function mulberry32 (seed: number): () => number {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6D2B79F5) >>> 0
    let x = state
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

interface Leave {
  /** Hang up this many ms after sending (it may be before the answer's headers, or in its body). */
  afterMs?: number
  /** Hang up after reading this many delta events of a stream. */
  afterDeltas?: number
}

interface Sent {
  status: number | null
  text: string
  deltas: number
  left: boolean
  timedOut: boolean
}

const PATHS: Record<ApiName, string> = { responses: '/v1/responses', messages: '/v1/messages', embeddings: '/v1/embeddings' }
const DELTA = /"type":"(?:response\.output_text\.delta|content_block_delta)"/g

async function send (address: string, api: ApiName, scopes: Record<string, string>, body: Record<string, unknown>, leave: Leave, timeoutMs = 10_000): Promise<Sent> {
  const abort = new AbortController()
  const sent: Sent = { status: null, text: '', deltas: 0, left: false, timedOut: false }
  const hangUp = () => { if (!abort.signal.aborted) { sent.left = true; abort.abort() } }
  const timers = [setTimeout(() => { if (!abort.signal.aborted) { sent.timedOut = true; abort.abort() } }, timeoutMs)]
  if (leave.afterMs !== undefined) timers.push(setTimeout(hangUp, leave.afterMs))
  const headers = {
    'content-type': 'application/json',
    ...(api === 'messages' ? { 'anthropic-version': '2023-06-01' } : {}),
    ...Object.fromEntries(Object.entries(scopes).map(([type, id]) => [`x-relay-${type}-id`, id]))
  }
  try {
    const response = await fetch(`${address}${PATHS[api]}`, { method: 'POST', signal: abort.signal, headers, body: JSON.stringify(body) })
    sent.status = response.status
    const reader = response.body!.getReader()
    const decoder = new TextDecoder()
    for (;;) {
      const { value, done } = await reader.read()
      if (done) break
      sent.text += decoder.decode(value, { stream: true })
      sent.deltas = (sent.text.match(DELTA) ?? []).length
      if (leave.afterDeltas !== undefined && sent.deltas >= leave.afterDeltas) {
        hangUp()
        await reader.cancel().catch(() => {})
        break
      }
    }
  } catch {
    // aborted: by the plan (left) or by the deadline (timedOut)
  } finally {
    for (const timer of timers) clearTimeout(timer)
  }
  return sent
}

const PROMPTS = ['Summarise the budget.', 'Tell me about gateways and tokens.', 'Why did the period reset?', 'Count the windows of the relay, twice over.']

/** A body of `api` for call `project`, with the upstream's mode marked in its prompt. */
function bodyFor (api: ApiName, project: string, mode: ApiUpstreamMode, random: () => number): Record<string, unknown> {
  const prompt = `[${project}] ${apiModeMarker(mode)} ${PROMPTS[Math.floor(random() * PROMPTS.length)]!}`
  const stream = mode.startsWith('sse') || (mode === 'worst' && random() < 0.5)
  if (api === 'embeddings') {
    return { model: 'text-embedding-3-small', input: Array.from({ length: 1 + Math.floor(random() * 8) }, (_, i) => `${prompt} ${'budget gateway token '.repeat(20 + i * 10)}`) }
  }
  if (api === 'responses') {
    return {
      model: 'gpt-4o-mini', input: prompt, max_output_tokens: 200 + Math.floor(random() * 800),
      ...(random() < 0.3 ? { instructions: 'Answer briefly.' } : {}), ...(stream ? { stream: true } : {})
    }
  }
  const roll = random()
  const cacheControl = roll < 0.3 ? { cache_control: { type: 'ephemeral', ttl: '1h' } } : roll < 0.6 ? { cache_control: { type: 'ephemeral' } } : {}
  return {
    model: 'claude-sonnet-4-5', max_tokens: 100 + Math.floor(random() * 500),
    ...(random() < 0.3 ? { system: 'Answer briefly.' } : {}),
    messages: [{ role: 'user', content: [{ type: 'text', text: prompt, ...cacheControl }] }],
    ...(stream ? { stream: true } : {})
  }
}

async function estimateOf (api: ApiName, body: Record<string, unknown>): Promise<bigint> {
  const estimate = api === 'embeddings' ? (await estimateEmbeddingCost(body, PRICES)) : api === 'responses' ? (await estimateResponsesCost(body, PRICES)) : (await estimateMessagesCost(body, PRICES))
  return toUnits(estimate.amount)
}

interface UsageRow { amount: string, metadata: Record<string, unknown> }

async function usageRows (sql: Sql): Promise<UsageRow[]> {
  const rows = await sql<UsageRow[]>`select amount::text as amount, metadata from budget_usage_records order by occurred_at, id`
  return rows.map((row) => ({ ...row, amount: normalizeMoney(row.amount) }))
}

interface Plan {
  project: string
  mode: ApiUpstreamMode
  body: Record<string, unknown>
  team: string
  leave: 'never' | 'early' | 'mid-way'
}

t.comment(`seed ${SEED}: GATE_BATTERY_APIS_SEED=${SEED} repeats this run`)

for (const api of ['responses', 'messages', 'embeddings'] as const) {
  t.test(`${api} battery: concurrent calls, misbehaving upstreams and clients that leave keep every invariant and charge by the rules`, async (t) => {
    const random = mulberry32(SEED + api.length)
    const modes = api === 'embeddings' ? EMBEDDINGS_MODES : API_UPSTREAM_MODES
    // Worst-case calls the most: they are what must exhaust the budgets.
    const weighted = (): ApiUpstreamMode => {
      const weights = modes.map((mode) => (mode === 'worst' ? 4 : mode === 'json' ? 3 : 1))
      let roll = random() * weights.reduce((sum, weight) => sum + weight, 0)
      for (const [index, mode] of modes.entries()) if ((roll -= weights[index]!) < 0) return mode
      return modes[0]!
    }
    const plans: Plan[] = Array.from({ length: CALLS }, (_, index) => {
      const mode = weighted()
      const project = `${api}-${index}`
      const roll = random()
      // A fifth of the clients leave; a hanging upstream's client always does, or it would wait forever.
      const leave = mode === 'hang' ? 'mid-way' : roll < 0.1 ? 'early' : roll < 0.2 ? 'mid-way' : 'never'
      return { project, mode, body: bodyFor(api, project, mode, random), team: random() < 0.6 ? 'platform' : 'research', leave }
    })

    const upstream = await startApiUpstream(t)
    const gateway = await buildGateway(t, { upstreamServer: upstream.url, anthropicUpstreamServer: upstream.url })
    const address = await gateway.app.listen({ port: 0, host: '127.0.0.1' })
    // Before app.close: fetch can leave an idle connection open after an abort, which close would wait for.
    t.teardown(() => { gateway.app.server.closeAllConnections() })

    // Hard budgets a fraction of what the calls could cost at worst: the worst-case calls exhaust them.
    const estimates = await Promise.all(plans.map(async (plan) => await estimateOf(api, plan.body)))
    const total = estimates.reduce((sum, estimate) => sum + estimate, 0n)
    const platformTotal = plans.reduce((sum, plan, index) => plan.team === 'platform' ? sum + estimates[index]! : sum, 0n)
    const org = await gateway.createBudget({ name: 'acme', scopeType: 'organization', scopeId: 'acme', amount: fromUnits(total * 30n / 100n), enforcement: 'hard' })
    await gateway.createBudget({ name: 'platform', scopeType: 'team', scopeId: 'platform', amount: fromUnits(platformTotal * 25n / 100n), enforcement: 'hard', parentId: org.id })

    const results: Sent[] = []
    let next = 0
    const worker = async () => {
      for (let index = next++; index < plans.length; index = next++) {
        const plan = plans[index]!
        const streamed = plan.body.stream === true
        const leave: Leave = plan.leave === 'never'
          ? {}
          : plan.leave === 'early'
            ? { afterMs: Math.floor(random() * 15) }
            : streamed && plan.mode !== 'hang' ? { afterDeltas: 1 + Math.floor(random() * 3) } : { afterMs: 20 + Math.floor(random() * 200) }
        results[index] = await send(address, api, { team: plan.team, organization: 'acme', project: plan.project }, plan.body, leave)
        await pause(Math.floor(random() * 5))
      }
    }
    await Promise.all(Array.from({ length: WORKERS }, worker))
    await waitForSettled(gateway.sql, 20_000).catch((error: Error) => t.fail(error.message))
    await checkInvariants(t, gateway.sql)

    const records = await usageRows(gateway.sql)
    const byProject = new Map<string, UsageRow[]>()
    for (const record of records) {
      const project = record.metadata.projectId as string
      byProject.set(project, [...byProject.get(project) ?? [], record])
    }
    const upstreamBy = new Map<string, ApiUpstreamCall[]>()
    for (const call of upstream.calls) {
      const project = new RegExp(`\\[(${api}-\\d+)\\]`).exec(JSON.stringify(call.body))?.[1]
      if (project !== undefined) upstreamBy.set(project, [...upstreamBy.get(project) ?? [], call])
    }

    const problems: string[] = []
    for (const record of records) {
      if (typeof record.metadata.estimatedCost !== 'string') problems.push(`${String(record.metadata.projectId)}: a record without its estimate`)
      else if (toUnits(record.amount) > toUnits(record.metadata.estimatedCost)) problems.push(`${String(record.metadata.projectId)}: charged ${record.amount}, over its estimate ${record.metadata.estimatedCost}`)
    }
    const tally: Record<string, number> = {}
    for (const [index, plan] of plans.entries()) {
      const sent = results[index]!
      const charges = byProject.get(plan.project) ?? []
      const calls = upstreamBy.get(plan.project) ?? []
      const call = calls[0]
      const say = (what: string) => problems.push(`${plan.project} (${plan.mode}${plan.body.stream === true ? ', streamed' : ''}, leave ${plan.leave}, status ${sent.status}): ${what}`)
      const outcome = sent.status === null ? 'left before an answer' : `status ${sent.status}`
      tally[outcome] = (tally[outcome] ?? 0) + 1
      if (sent.timedOut) say('the response did not end within 10 s')
      if (charges.length > 1) say(`charged ${charges.length} times`)
      if (calls.length > 1) say(`sent upstream ${calls.length} times`)
      if (sent.status === 402) {
        if (charges.length > 0) say('refused, yet charged')
        if (call !== undefined) say('refused, yet sent upstream')
        continue
      }
      if (sent.status !== null && !ERROR_MODES.has(plan.mode) && sent.status !== 200) say(`an unexpected answer: ${sent.text.slice(0, 200)}`)
      if (sent.status !== null && call === undefined) { say('answered without reaching the upstream'); continue }
      if (ERROR_MODES.has(plan.mode)) {
        if (sent.status !== null && sent.status < 400) say('an upstream error answered as a success')
        if (sent.status !== null && charges.length > 0) say(`an upstream error charged ${charges[0]!.amount}`)
        continue
      }
      // A call that reached the upstream (left or not, answered or not) is never free.
      if (call !== undefined && charges.length === 0) { say('the upstream was called for it, yet nothing was charged'); continue }
      if (sent.left || sent.status !== 200) continue
      const charge = charges[0]!
      if (plan.mode === 'worst' || plan.mode === 'json' || plan.mode === 'sse') {
        if (call!.usage === null) { say('the upstream never got to send its usage'); continue }
        const expected = costOfTokens(priceOf(call!.usage.model), call!.usage)
        if (charge.amount !== normalizeMoney(expected)) say(`charged ${charge.amount}, not its usage x price ${expected}`)
        if (plan.mode === 'worst' && charge.amount !== normalizeMoney(String(charge.metadata.estimatedCost))) {
          say(`a worst-case call charged ${charge.amount}, not all of its estimate ${String(charge.metadata.estimatedCost)}: the estimate is not the bound the upstream bills`)
        }
      } else if (ESTIMATED_MODES.has(plan.mode) && charge.metadata.costBasis !== 'estimate') {
        say(`charged ${charge.amount} (costBasis ${String(charge.metadata.costBasis)}), not at its estimate`)
      }
    }
    if ((tally['status 402'] ?? 0) === 0) problems.push('no call was refused: the hard budgets were never reached')
    const worst = plans.filter((plan, index) => plan.mode === 'worst' && results[index]!.status === 200 && !results[index]!.left).length
    if (worst === 0) problems.push('no worst-case call was served in full: nothing showed the bound is tight')
    t.comment(`${api}: ${JSON.stringify(tally)}; ${records.length} records, ${worst} worst-case calls served in full`)
    t.same(problems, [], 'every call was charged by the rules')
  })
}
