// On the Citus cluster (`npm run test:citus`). Review of ebaffca / 14647b9 (locks.sql tree by tree, the sweeper's SKIP LOCKED of every row): two real
// gateway processes on a line that spans two trees (a user budget that is its own root; a team under an
// organization), the ids chosen so that budget-id order is the opposite of root order. Clients that abort
// streams after a few chunks, an upstream that fails or hangs, a TTL short enough that calls outlive their
// holds, and both processes' sweepers racing the settlements. Afterwards: nothing held, the escrow rule and
// every hard limit kept, no usage counted twice, every completed call recorded, no 5xx from the gate but a 503.
import t from 'tap'
import { distributeOnCitus } from '../lib/kernel/database/citus.js'
import { migrate } from '../lib/kernel/database/migrate.js'
import { createTestSql } from '../test/fixtures/database.js'
import { startGatewayProcess, type GatewayProcess } from '../test/fixtures/gateway-process.js'
import { findViolations, waitForSettled } from '../test/fixtures/invariants.js'
import { modeFromPrompt, modeMarker, startUpstream, type UpstreamMode } from '../test/fixtures/upstream.js'
import { costOf, DEFAULT_PRICES } from '../lib/pricing/pricing.js'
import { worstCaseTokens } from '../lib/pricing/estimate.js'
import { fromUnits, toUnits } from '../lib/kernel/money.js'

const ADMIN_TOKEN = 'review-citus2-admin-token-0123456789'
// the organization's tree sorts first by root; within the line the user's budget sorts first by id
const ORG = '10000000-0000-4000-8000-000000000000'
const USER = '50000000-0000-4000-8000-000000000000'
const TEAM = '90000000-0000-4000-8000-000000000000'

const body = (mode: UpstreamMode, stream: boolean) => ({
  model: 'gpt-4o-mini', stream, ...(stream ? { stream_options: { include_usage: true } } : {}),
  messages: [{ role: 'user', content: `Summarise the quarterly report ${modeMarker(mode)}` }], max_tokens: 100
})

t.test('two processes, a two-tree line, aborted streams, failing and hanging upstreams, a short TTL: nothing lost or counted twice', async (t) => {
  const { url, sql } = await createTestSql(t, { max: 4 })
  await migrate(sql)
  await distributeOnCitus(sql)
  const price = DEFAULT_PRICES['gpt-4o-mini']!
  const { inputTokens, outputTokens } = await worstCaseTokens(body('json', false), price)
  const estimate = costOf(price, inputTokens, outputTokens)
  const near = (n: bigint) => fromUnits(toUnits(estimate) * n)
  await sql`insert into budget_definitions (id, root_id, name, scope_type, scope_id, amount, currency, period, start_date, enforcement)
            values (${ORG}, ${ORG}, 'org', 'organization', 'acme', ${near(60n)}, 'USD', 'monthly', '2024-01-01', 'hard')`
  await sql`insert into budget_definitions (id, root_id, name, scope_type, scope_id, amount, currency, period, start_date, enforcement, parent_id)
            values (${TEAM}, ${ORG}, 'team', 'team', 'platform', ${near(1000n)}, 'USD', 'monthly', '2024-01-01', 'hard', ${ORG})`
  await sql`insert into budget_definitions (id, root_id, name, scope_type, scope_id, amount, currency, period, start_date, enforcement)
            values (${USER}, ${USER}, 'user', 'user', 'ada', ${near(45n)}, 'USD', 'monthly', '2024-01-01', 'hard')`
  const roots = await sql`select distinct root_id from budget_definitions order by 1`
  t.same(roots.map((r) => r.root_id), [ORG, USER], 'two trees: the organization\'s first')

  const upstream = await startUpstream(t, { mode: modeFromPrompt('json'), chunkDelayMs: 60 })
  const env = { DATABASE_URL: url, ADMIN_TOKEN, UPSTREAM_URL: upstream.url, UPSTREAM_API_KEY: 'sk-test', RESERVATION_TTL_MS: '900', SWEEP_INTERVAL_MS: '100', LOG_LEVEL: 'error' }
  const processes: GatewayProcess[] = []
  for (let i = 0; i < 2; i++) {
    const gateway = await startGatewayProcess(env)
    processes.push(gateway)
    t.teardown(async () => await gateway.stop())
  }

  interface Outcome { status: number, kind: string, complete: boolean, error?: string }
  const call = async (i: number): Promise<Outcome> => {
    const gateway = processes[i % 2]!
    const kinds = ['json', 'json', 'abort-stream', 'full-stream', 'error-500', 'hang', 'json', 'abort-stream'] as const
    const kind = kinds[i % kinds.length]!
    const mode: UpstreamMode = kind === 'json' ? 'json' : kind === 'error-500' ? 'error-500' : kind === 'hang' ? 'hang' : 'sse'
    const stream = kind === 'abort-stream' || kind === 'full-stream'
    const abort = new AbortController()
    if (kind === 'hang') setTimeout(() => { abort.abort() }, 400 + (i % 5) * 300)
    try {
      const response = await fetch(`${gateway.url}/v1/chat/completions`, {
        method: 'POST', signal: abort.signal,
        headers: { 'content-type': 'application/json', 'x-relay-user-id': 'ada', 'x-relay-team-id': 'platform' },
        body: JSON.stringify(body(mode, stream))
      })
      if (kind === 'abort-stream' && response.status === 200) {
        const reader = response.body!.getReader()
        for (let n = 0; n < 2 + (i % 4); n++) if ((await reader.read()).done) break
        abort.abort()
        return { status: 200, kind, complete: false }
      }
      const text = await response.text()
      return { status: response.status, kind, complete: response.status === 200, ...(response.status >= 500 ? { error: text.slice(0, 200) } : {}) }
    } catch {
      return { status: 0, kind, complete: false }
    }
  }

  const outcomes: Outcome[] = []
  for (let wave = 0; wave < 5; wave++) {
    outcomes.push(...await Promise.all(Array.from({ length: 16 }, async (_, i) => await call(wave * 16 + i))))
  }
  // the gate's own 5xx: only a 503 budget_unavailable; the upstream's 500 passes through (or is mapped) for its calls alone
  const gate5xx = outcomes.filter((o) => o.status >= 500 && o.kind !== 'error-500' && !(o.status === 503 && /budget_unavailable/.test(o.error ?? '')))
  t.same(gate5xx, [], 'no 5xx from the gate but a 503 budget_unavailable')
  t.ok(outcomes.some((o) => o.status === 200), `${outcomes.filter((o) => o.status === 200).length} admitted`)
  t.comment(JSON.stringify(Object.entries(outcomes.reduce<Record<string, number>>((m, o) => { m[`${o.kind}:${o.status}`] = (m[`${o.kind}:${o.status}`] ?? 0) + 1; return m }, {}))))
  t.ok(outcomes.every((o) => [0, 200, 402, 503].includes(o.status) || o.kind === 'error-500'), 'every call admitted, refused, or cut by its client')

  await waitForSettled(sql, 20_000)
  t.same(await findViolations(sql), [], 'no hold left, each window equal to its allocations, no hard budget over its limit')
  const sources = await sql<Array<{ source: string, lease: boolean, n: number }>>`
    select source, idempotency_key like 'lease:%' as lease, count(*)::int as n from budget_usage_records group by 1, 2 order by 1, 2`
  t.ok(sources.some((s) => s.source === 'expired-reservation'), `the sweepers raced the calls (the premise): ${JSON.stringify(sources)}`)
  const twice = await sql`select idempotency_key, count(*)::int as n from budget_usage_records group by 1 having count(*) > 1`
  t.same(twice, [], 'no call recorded twice')
  const records = await sql<Array<{ n: number }>>`select count(*)::int as n from budget_usage_records where idempotency_key not like 'lease:%'`
  const completed = outcomes.filter((o) => o.complete).length
  t.ok(records[0]!.n >= completed, `every completed call recorded: ${records[0]!.n} call records for ${completed} completed calls`)
  const held = outcomes.filter((o) => o.status !== 402).length
  t.ok(records[0]!.n <= held, `no more call records (${records[0]!.n}) than calls not refused (${held}); the upstream saw ${upstream.count()}`)
})
