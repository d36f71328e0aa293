// Errors that cannot vanish (issue 22, item 4): work that must not fail its caller (a give-back, a top-up
// in the background) never throws, and its failure is logged with what was lost and the ids to find it.
// The give-backs fail for real: their SQL function is renamed away for the moment, on a real database.
import Fastify from 'fastify'
import t from 'tap'
import { bestEffort } from '../lib/kernel/best-effort.js'
import type { BudgetTerms } from '../lib/gate/budget-terms.js'
import { createRateRepository } from '../lib/gate/rate-repository.js'
import { createRateLimits, isRateRefusal } from '../lib/gate/rate-limits.js'
import { budgetRequest, buildApp, PREFIX } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'

type Line = { level: number, msg: string, [key: string]: unknown }

/** A Fastify logger whose lines (debug and above) land in `lines`. */
function capturedLog () {
  const lines: Line[] = []
  const log = Fastify({ logger: { level: 'debug', stream: { write: (line: string) => { lines.push(JSON.parse(line)) } } } }).log
  return { log, lines }
}

const WARN = 40

t.test('bestEffort: resolves true on success; on a failure (thrown or rejected) logs it with its context and resolves false', async (t) => {
  const { log, lines } = capturedLog()
  t.equal(await bestEffort(log, async () => 'done', 'never logged'), true)
  t.same(lines, [], 'a success logs nothing')
  t.equal(await bestEffort(log, async () => { throw new Error('the database is away') }, 'giving back a hold failed', { reservationId: 'r-1' }), false)
  // A job that throws before its first await is caught the same.
  const throwsAtOnce = (() => { throw new Error('at once') }) as unknown as () => Promise<void>
  t.equal(await bestEffort(log, throwsAtOnce, 'polling failed', {}, 'debug'), false)
  t.match(lines, [
    { level: WARN, msg: 'giving back a hold failed', reservationId: 'r-1', err: { message: 'the database is away' } },
    { level: 20, msg: 'polling failed', err: { message: 'at once' } }
  ], 'each failure logged once, at its level, with the error and the ids')
})

t.test('a hold answered after the gate\'s deadline is given back; when that fails, a warning names the hold and its budgets', async (t) => {
  const gateway = await buildGateway(t, { captureLogs: true, gate: { timeoutMs: 300 } })
  const { app, sql } = gateway
  const budget = await gateway.createBudget({ scopeId: 'team-a', amount: '10' })
  const first = await app.budgetIntegration.reserveCall({ team: 'team-a' }, '0.1') // makes the window row
  await app.budgetIntegration.releaseCall(first.reservationId!)
  await new Promise((resolve) => setTimeout(resolve, 150)) // a cold line: the next call holds on its own, no lease

  // Another transaction holds the window row, so the hold waits past the gate's deadline of 300 ms.
  const blocker = await sql.reserve()
  t.teardown(() => { blocker.release() })
  await blocker`begin`
  await blocker`select 1 from budget_status_cache where budget_id = ${budget.id} for update`
  const refused = app.budgetIntegration.reserveCall({ team: 'team-a' }, '0.1').then(() => null, (error: { code?: string }) => error.code)
  t.equal(await refused, 'BUDGET_ERR_DATABASE_UNAVAILABLE', 'the caller was answered: unavailable')
  // The give-back of the late hold will fail: its settlement function is away.
  await sql`alter function budget_settle_batch(uuid[], numeric[], text[], text[], jsonb[], uuid[], uuid[], uuid) rename to budget_settle_batch_away`
  t.teardown(async () => await sql`alter function budget_settle_batch_away(uuid[], numeric[], text[], text[], jsonb[], uuid[], uuid[], uuid) rename to budget_settle_batch`)
  await blocker`commit` // the hold lands now, late

  let warning: Line | undefined
  for (let i = 0; i < 200 && warning === undefined; i++) {
    await new Promise((resolve) => setTimeout(resolve, 25))
    warning = gateway.logs.find((line) => /giving back a hold \(answered after the gate's deadline\) failed/.test(line.msg ?? '')) as Line | undefined
  }
  t.ok(warning, 'the failed give-back is logged')
  const [held] = await sql<Array<{ id: string }>>`select id from budget_reservations where budget_id = ${budget.id}`
  t.match(warning, { level: WARN, reservationId: held?.id, budgetIds: [budget.id], err: { message: /budget_settle_batch/ } },
    'at warn, naming the hold left to be swept and billed, and its budgets')
})

t.test('a rate-limit allowance whose give-back fails is logged with the budgets it belongs to', async (t) => {
  const { admin, sql } = await buildApp(t)
  const budget = (await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ rateLimits: { requestsPerMinute: 600 } }) })).json()
  const { log, lines } = capturedLog()
  const rateLimits = createRateLimits(createRateRepository(sql), log)
  const line = [{ budgetId: budget.id, rootId: budget.rootId, name: budget.name, requestsPerMinute: 600, tokensPerMinute: null }] as unknown as BudgetTerms[]
  const admitted = await rateLimits.admit(line, 0)
  if (isRateRefusal(admitted)) throw new Error('refused')
  rateLimits.end(admitted, null) // not served: its request is this process's allowance now, to give back
  await sql`alter function budget_rate_give_back(uuid[], numeric[], numeric[], uuid[], uuid) rename to budget_rate_give_back_away`
  t.teardown(async () => await sql`alter function budget_rate_give_back_away(uuid[], numeric[], numeric[], uuid[], uuid) rename to budget_rate_give_back`)
  await rateLimits.close() // gives the allowance back, and waits for it
  t.match(lines.filter((line) => line.level === WARN), [
    { msg: /^giving back rate-limit allowance failed/, budgetIds: [budget.id], err: { message: /budget_rate_give_back/ } }
  ], 'one warning, naming the budget')
})
