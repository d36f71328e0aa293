// Adversarial review of budget_record_spend naming each row's tree: the public routes that reach budget_record_spend's step-wise path (projected
// alerts walked, windows without rows, thresholds crossed mid-batch), concurrently, with hostile input: no 5xx,
// no lost or double-counted spend, the invariants hold.
import t from 'tap'
import { PREFIX, budgetRequest, buildApp, postBudget } from './fixtures/app.js'
import { findViolations } from './fixtures/invariants.js'

t.test('usage API, batch route and direct inserts at once on walked windows: no 5xx, every record counted once', async (t) => {
  const { admin, sql } = await buildApp(t, {}, {})
  const projected = [{ threshold: 30, actions: ['notify'] }, { threshold: 60, actions: ['notify'] }, { threshold: 0.0001, basis: 'projected', actions: ['notify'] }]
  const org = await postBudget(admin, budgetRequest({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '1000', enforcement: 'soft', alerts: projected }))
  const team = await postBudget(admin, budgetRequest({ name: 'team', scopeType: 'team', scopeId: 'platform', parentId: org.id, amount: '500', enforcement: 'soft', alerts: projected }))
  const user = await postBudget(admin, budgetRequest({ name: 'user', scopeType: 'user', scopeId: 'ada', amount: '300', enforcement: 'soft', alerts: projected }))
  const lastMonth = new Date(Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), 0, 12)).toISOString()
  const jobs: Array<Promise<{ code: number, what: string }>> = []
  for (let i = 0; i < 24; i++) {
    const occurredAt = i % 3 === 0 ? lastMonth : undefined
    jobs.push(admin({ method: 'POST', url: `${PREFIX}/${team.id}/usage`, body: { amount: '1.5', currency: 'USD', source: 'x', occurredAt, metadata: { requestId: `api-${i}` } } })
      .then((r) => ({ code: r.statusCode, what: `api ${r.body.slice(0, 200)}` })))
    jobs.push(admin({ method: 'POST', url: `${PREFIX}/usage/batch`, body: { records: [
      { scopes: { team: 'platform', user: 'ada' }, amount: '2', currency: 'USD', occurredAt, metadata: { requestId: `b-${i}-0` } },
      { scopes: { team: 'platform', user: 'ada' }, amount: '3', currency: 'USD', metadata: { requestId: `b-${i}-1` } },
      { scopes: { team: 'platform' }, amount: 'NaN', currency: 'USD', metadata: { requestId: `b-${i}-2` } },
      { scopes: { user: 'ada' }, amount: '99999999999999999999', currency: 'USD', metadata: { requestId: `b-${i}-3` } },
      { scopes: { team: 'platform', user: 'ada' }, amount: '3', currency: 'USD', metadata: { requestId: `b-${i}-1` } }
    ] } }).then((r) => ({ code: r.statusCode, what: `batch ${r.body.slice(0, 200)}` })))
    jobs.push(sql`insert into budget_usage_records (budget_id, amount, currency, occurred_at, also_counts_toward) values (${user.id}, 0.25, 'USD', ${occurredAt ?? new Date().toISOString()}, ${[team.id]}::uuid[])`
      .then(() => ({ code: 201, what: 'insert' }), (e: Error) => ({ code: 599, what: `insert ${e.message}` })))
    if (i % 6 === 0) jobs.push(sql`delete from budget_status_cache where budget_id = ${user.id} and current_amount = 0`.then(() => ({ code: 200, what: 'drop' })))
  }
  const answers = await Promise.all(jobs)
  t.same(answers.filter((a) => a.code >= 500), [], 'no 5xx and no failed insert')
  const { n, total } = (await sql<Array<{ n: number, total: string }>>`
    select count(*)::int as n, coalesce(sum(amount), 0)::text as total from budget_usage_allocations where budget_id = ${team.id}`)[0]!
  // per i: api 1.5, batch 2 + 3 (its replay counted once), insert 0.25 (also counts toward the team)
  t.equal(n, 24 * 4, 'each record allocated to the team once')
  t.equal(total, String(24 * 6.75) + '.0000000000', 'the team\'s spend')
  t.same(await findViolations(sql), [], 'invariants')
  const crossings = await sql`select budget_id, period_start, threshold, basis, count(*)::int as n from budget_alert_history where resolved_at is null group by 1, 2, 3, 4 having count(*) > 1`
  t.same([...crossings], [], 'no crossing recorded twice')
})
