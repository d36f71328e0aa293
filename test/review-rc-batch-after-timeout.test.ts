// Review rc: the batch that times out (handlerTimeout answers 503) keeps running its RetryBatch loop on a
// reserved connection, re-locking the tree's window rows each round, long after the answer; gated calls on a
// sibling team meanwhile.
import t from 'tap'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'

const pause = async (ms: number) => await new Promise((resolve) => setTimeout(resolve, ms))

t.test('a batch answered 503 at its bound still runs afterwards; gated calls on a sibling meanwhile', async (t) => {
  const gw = await buildGateway(t, { gate: {} })
  const org = await gw.createBudget({ name: 'org', scopeType: 'organization', scopeId: 'org-1', amount: '1000000' })
  const teamA = await gw.createBudget({ name: 'a', scopeId: 'team-a', amount: '100000', parentId: org.id })
  await gw.createBudget({ name: 'b', scopeId: 'team-b', amount: '100000', parentId: org.id })
  const good = Array.from({ length: 4000 }, (_, i) => ({ budgetId: teamA.id, amount: '0.001', currency: 'USD', metadata: { requestId: `g-${i}` } }))
  const bad = Array.from({ length: 400 }, (_, i) => ({ budgetId: teamA.id, amount: String(i + 1), currency: 'EUR', metadata: { requestId: 'same-key' } }))
  const started = Date.now()
  const batch = gw.app.inject({ method: 'POST', url: `${PREFIX}/usage/batch`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body: { records: [...good, ...bad] } })
    .then((response) => ({ at: Date.now() - started, status: response.statusCode, body: response.body.slice(0, 200) }))
  const statuses = new Map<number, number>()
  let answered: { at: number, status: number, body: string } | null = null
  void batch.then((a) => { answered = a })
  let stillRunningAfterAnswer = 0
  let lastSeenRunning = 0
  while (Date.now() - started < 60_000) {
    const calls = await Promise.all(Array.from({ length: 4 }, async () => (await gw.call({ team: 'team-b' })).statusCode))
    for (const code of calls) statuses.set(code, (statuses.get(code) ?? 0) + 1)
    const [row] = await gw.sql`select count(*)::int as n from pg_stat_activity where query like '%budget_record_usage_batch%' and state = 'active' and pid <> pg_backend_pid()`
    if ((row!.n as number) > 0) lastSeenRunning = Date.now() - started
    if (answered !== null && (row!.n as number) > 0) stillRunningAfterAnswer++
    if (answered !== null && (row!.n as number) === 0) { await pause(500); const [again] = await gw.sql`select count(*)::int as n from pg_stat_activity where query like '%budget_record_usage_batch%' and state = 'active' and pid <> pg_backend_pid()`; if ((again!.n as number) === 0) break }
    await pause(50)
  }
  const [stored] = await gw.sql`select count(*)::int as n from budget_usage_records where source is null and idempotency_key like 'g-%'`
  t.comment(JSON.stringify({ answered, lastSeenRunningMs: lastSeenRunning, stillRunningAfterAnswer, gatedStatuses: Object.fromEntries(statuses), stored: stored!.n }))
  t.ok(answered !== null && (answered as { at: number }).at <= 10_000 + 1000, 'answered within the 10 s bound')
  t.ok(lastSeenRunning <= 10_000 + 1000, `the batch's statements stopped within the bound (last seen at ${lastSeenRunning} ms)`)
  t.equal(statuses.get(503) ?? 0, 0, 'no gated call on the sibling refused')
})
