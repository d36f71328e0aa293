// Review of a5cec52: docs/rate-limits.md says a custom estimateCost that leaves out tokens "reserves one token
// a call (every call uses one at least)". A served call whose upstream reports no usage (JSON without usage,
// a stream cut before its usage chunk) is charged at its estimate; on the tokens limit it is counted at the
// tokens it reserved (integration.ts settleCall: usedTokens(metadata) ?? rated.tokens), which for such an
// estimate is 0, not the one token it took: its token goes back, and the tokens limit never refuses it.
import t from 'tap'
import { noTokens, bucketTokens } from './fixtures/rate-buckets.js'
import { buildGateway } from './fixtures/gateway.js'
import { checkInvariants } from './fixtures/invariants.js'
import { startUpstream, type UpstreamMode } from './fixtures/upstream.js'

for (const mode of ['json-no-usage', 'sse-cut'] as UpstreamMode[]) {
  t.test(`upstream ${mode}, an estimate without tokens, 5 tokens a minute: each served call uses one token at least`, async (t) => {
    const upstream = await startUpstream(t, { mode })
    const gateway = await buildGateway(t, { upstreamServer: upstream.url, gate: noTokens })
    const budget = await gateway.createBudget({ scopeId: 'team-a', amount: '100', rateLimits: { tokensPerMinute: 5 } })
    const stream = mode.startsWith('sse')
    const started = Date.now()
    let served = 0
    const statuses: number[] = []
    for (let i = 0; i < 8; i++) {
      const answer = await gateway.app.inject({
        method: 'POST',
        url: '/v1/chat/completions',
        headers: { 'x-relay-team-id': 'team-a' },
        body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 20, stream, ...(stream ? { stream_options: { include_usage: true } } : {}) }
      })
      statuses.push(answer.statusCode)
      if (answer.statusCode === 200) served++
      await gateway.settled()
    }
    const refill = (Date.now() - started) / 60_000 * 5
    const records = (await gateway.sql<Array<{ n: number }>>`select count(*)::int as n from budget_usage_records`)[0]!.n
    t.equal(records, served, `${served} calls served and charged at their estimate`)
    const upstreamTokens = upstream.calls.length * 26
    t.ok(served <= 5 + Math.ceil(refill), `${served} of 8 served on 5 tokens a minute (${refill.toFixed(2)} refilled; the upstream was called ${upstream.calls.length} times, each using about 26 tokens, ${upstreamTokens} in all): ${statuses.join(' ')}`)
    await gateway.app.close()
    const level = await bucketTokens(gateway.sql, budget.id)
    t.ok(level <= 5 - served + refill + 0.01, `the bucket holds ${level.toFixed(2)} of 5 tokens after ${served} served calls`)
    await checkInvariants(t, gateway.sql)
  })
}
