// Review of the gate's CPU work (reserveCallNow, resolveScopes answered without a wait, callerCap skipped):
// calls on a hot leased line, answered in memory, while the budget changes under them and clients hang up,
// with a resolveScopes that answers through a thenable that is no native Promise, and one that answers at once.
// Afterwards: every served call recorded once, nothing left held, the cache equal to the records, no hard budget over.
import t from 'tap'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'
import { findViolations, waitForSettled } from './fixtures/invariants.js'
import { scopesFromHeaders } from '../lib/http/gate/gate-options.js'
import type { FastifyRequest } from 'fastify'

const thenable = (request: FastifyRequest) => ({
  // A thenable of another library's making: answers on a later turn of the loop.
  then (resolve: (value: unknown) => void) { setImmediate(() => { resolve(scopesFromHeaders(request)) }) }
})

for (const [name, resolveScopes] of [['a thenable that is no Promise', thenable]] as const) {
  t.test(`hot leased line, budget changed mid-flight, clients hanging up (resolveScopes: ${name})`, async (t) => {
    const gateway = await buildGateway(t, { mockTokenDelayMs: 2, gate: { resolveScopes: resolveScopes as never, sweepIntervalMs: 0 } })
    const { app, sql, createBudget } = gateway
    const budget = await createBudget({ scopeId: 'team-a', amount: '0.003' })
    const address = await app.listen({ port: 0, host: '127.0.0.1' })
    let served = 0
    let refused = 0
    let aborted = 0
    const call = async (i: number, stream: boolean, abortAfterMs: number | null): Promise<void> => {
      const controller = new AbortController()
      const timer = abortAfterMs === null ? null : setTimeout(() => { controller.abort() }, abortAfterMs)
      try {
        const response = await fetch(`${address}/v1/chat/completions`, {
          method: 'POST',
          signal: controller.signal,
          headers: { 'content-type': 'application/json', 'x-relay-team-id': 'team-a' },
          body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: `call ${i} ${'hello '.repeat(i % 7)}` }], max_tokens: 30, stream })
        })
        const text = await response.text()
        if (response.status === 200) served++
        else if (response.status === 402) refused++
        else t.fail(`status ${response.status}: ${text}`)
      } catch {
        aborted++
      } finally {
        if (timer !== null) clearTimeout(timer)
      }
    }
    for (let wave = 0; wave < 6; wave++) {
      const calls = Array.from({ length: 40 }, async (_, i) => await call(wave * 40 + i, i % 3 === 0, i % 5 === 0 ? 1 + (i % 4) * 3 : null))
      if (wave === 2 || wave === 4) {
        // The definitions move while calls are admitted from the lease.
        const changed = await app.inject({ method: 'PUT', url: `${PREFIX}/${budget.id}`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body: { amount: wave === 2 ? '0.002' : '0.004' } })
        t.equal(changed.statusCode, 200, 'the budget changed')
      }
      await Promise.all(calls)
    }
    t.ok(served > 0, `served ${served}, refused ${refused}, hung up ${aborted}`)
    await app.close()
    t.equal(await waitForSettled(sql, 30_000).then(() => null, (error: Error) => error.message), null, 'every hold and lease ended')
    t.same(await findViolations(sql), [], 'no hold left, every window equals its allocations, no hard budget over')
    const [records] = await sql<Array<{ n: number, requests: number }>>`
      select count(*)::int as n, count(distinct metadata ->> 'requestId')::int as requests from budget_usage_records where source = 'gateway'`
    t.equal(records!.n, records!.requests, 'no call recorded twice')
    t.ok(records!.n >= served, `every served call recorded (${records!.n} records, ${served} served)`)
  })
}
