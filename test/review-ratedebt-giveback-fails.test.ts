// Review of the rate limits' token debt: a call that used more tokens than it reserved owes the bucket the
// rest, given back (a negative amount) when it ends. budget_rate_give_back runs with lock_timeout 2 s and a
// 55P03 is not retried, so a give-back queued behind a busy bucket row fails. That must not forgive the
// debt: it stays in the process's allowance and is paid by the next take.
import t from 'tap'
import { buildGateway } from './fixtures/gateway.js'
import { checkInvariants, waitFor } from './fixtures/invariants.js'
import { holdBucketRow } from './fixtures/rate-buckets.js'

t.test('a debt whose give-back fails on a busy bucket row is kept, and paid before the next call is admitted', async (t) => {
  const gateway = await buildGateway(t, { captureLogs: true, gate: { sweepIntervalMs: 0 } })
  const budget = await gateway.createBudget({ scopeId: 'team-a', amount: '100', rateLimits: { tokensPerMinute: 100 } })
  const integration = gateway.app.budgetIntegration
  const caller = { team: 'team-a' }
  const bucket = async () => Number((await gateway.sql`select tokens::float8 as tokens from budget_rate_buckets where budget_id = ${budget.id}`)[0]!.tokens)
  const failedGiveBacks = () => gateway.logs.filter((line) => String(line.msg).startsWith('giving back rate-limit allowance failed')).length

  // A call reserving 10 tokens, which uses 90: it owes 80.
  const started = Date.now()
  const call = await integration.reserveCall(caller, '0.0001', { tokens: 10 })
  t.ok(call.check.canProceed, 'admitted')
  const holder = await holdBucketRow(gateway.sql, budget.id)
  await integration.settleCall(call.reservationId!, '0.0001', { metadata: { inputTokens: 40, outputTokens: 50 } })
  t.ok(await waitFor(async () => failedGiveBacks() > 0, 8000), 'the give-back of the debt failed on the busy row')
  const failed = gateway.logs.find((line) => String(line.msg).startsWith('giving back rate-limit allowance failed')) as { err?: { code?: string } } | undefined
  t.equal(failed?.err?.code, '55P03', 'lock_timeout')
  await holder.release()
  const refill = () => (Date.now() - started) / 60_000 * 100

  // The bucket has given 10; the process still owes 80. A call of 5 tokens needs 80 + 5 from the bucket,
  // which holds 90 and the refill: admitted by paying the debt first.
  const next = await integration.reserveCall(caller, '0.0001', { tokens: 5 })
  t.ok(next.check.canProceed, 'the next call is admitted: the bucket holds the debt and its need')
  const level = await bucket()
  t.ok(level <= 100 - 10 - 80 - 5 + refill() + 0.001, `the bucket paid the debt: ${level.toFixed(2)} left of 100 - 10 - 80 - 5 + ${refill().toFixed(2)} refilled`)
  await integration.settleCall(next.reservationId!, '0.0001', { metadata: { inputTokens: 2, outputTokens: 3 } })
  // About 5 and the refill are left: a call of 30 is refused (forgiven, the debt would have left 90).
  const third = await integration.reserveCall(caller, '0.0001', { tokens: 30 })
  t.equal(third.check.code, 'rate_limit_exceeded', `refused: the debt was not forgiven (${refill().toFixed(2)} refilled)`)
  await gateway.settled()
  await checkInvariants(t, gateway.sql)
})
