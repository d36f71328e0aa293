// Review 2: findKeyHolders (a join with DISTINCT ON per asked key) answers as the lateral read before it, with keys
// asked several times (on other budgets), gated records (no fingerprint) of one key on several budgets, and legacy records.
import t from 'tap'
import { findKeyHolders } from '../lib/usage/usage-repository.js'
import { PREFIX, budgetRequest, buildApp } from './fixtures/app.js'

t.test('findKeyHolders equals the lateral read it replaced', async (t) => {
  const { admin, sql } = await buildApp(t)
  const ids: Array<{ id: string, rootId: string }> = []
  for (const name of ['a', 'b', 'c']) ids.push((await admin({ method: 'POST', url: PREFIX, body: budgetRequest({ name, scopeId: name, amount: '100000', period: 'annual' }) })).json())
  const [a, b, c] = ids as [{ id: string, rootId: string }, { id: string, rootId: string }, { id: string, rootId: string }]
  const put = async (budget: { id: string, rootId: string }, key: string, fingerprint: string | null, at: string, amount: string) => {
    await sql`insert into budget_usage_records (root_id, budget_id, amount, currency, source, metadata, occurred_at, idempotency_key, request_fingerprint, recorded_at)
              values (${budget.rootId}, ${budget.id}, ${amount}, 'USD', ${key}, '{}'::jsonb, now(), ${key}, ${fingerprint}, ${at})`
  }
  await put(a, 'gated', null, '2026-01-01T00:00:02Z', '1')
  await put(b, 'gated', null, '2026-01-01T00:00:01Z', '2')
  await put(c, 'gated', null, '2026-01-01T00:00:03Z', '3')
  await put(a, 'mixed', null, '2026-01-01T00:00:00Z', '4')
  await put(b, 'mixed', 'fp', '2026-01-01T00:00:05Z', '5')
  await put(a, 'legacy', 'legacy', '2026-01-01T00:00:00Z', '6')
  await put(c, 'only-c', null, '2026-01-01T00:00:00Z', '7')
  const asks = [
    [[a, 'gated']], [[b, 'gated']], [[a, 'gated'], [b, 'gated']], [[b, 'gated'], [a, 'gated'], [c, 'gated']], [[c, 'gated'], [a, 'nothing']],
    [[a, 'mixed']], [[c, 'mixed'], [a, 'mixed']], [[b, 'legacy'], [c, 'legacy']], [[a, 'only-c']], [[a, 'only-c'], [c, 'only-c'], [b, 'only-c']],
    [[a, 'gated'], [a, 'gated'], [c, 'only-c'], [b, 'mixed'], [a, 'legacy']]
  ] as Array<Array<[{ id: string }, string]>>
  for (const ask of asks) {
    const keys = ask.map(([budget, key]) => ({ budgetId: budget.id, idempotencyKey: key, fingerprint: 'another request' }))
    const now = (await findKeyHolders(sql, keys)).map((holder) => holder === undefined ? null : [String(holder.record.amount).replace(/\.?0+$/, ''), holder.fingerprint])
    // the definition before (lateral), one answer an ask
    const rows = await sql`
      select u.amount::text as amount, u.request_fingerprint as fingerprint
      from unnest(${keys.map((key) => key.budgetId)}::text[]::uuid[], ${keys.map((key) => key.idempotencyKey)}::text[]) with ordinality as k(budget_id, idempotency_key, n)
      left join lateral (
        select * from budget_usage_records r
        where r.idempotency_key = k.idempotency_key and (r.request_fingerprint is not null or r.budget_id = k.budget_id)
        order by r.request_fingerprint is null, r.recorded_at, r.id limit 1
      ) u on true
      order by k.n`
    const before = rows.map((row) => row.amount === null ? null : [row.amount.replace(/\.?0+$/, ''), row.fingerprint])
    t.same(now, before, JSON.stringify(keys.map((key) => [ids.findIndex((x) => x.id === key.budgetId), key.idempotencyKey])))
  }
  const one = await findKeyHolders(sql, [{ budgetId: b.id, idempotencyKey: 'gated', fingerprint: 'another request' }, { budgetId: a.id, idempotencyKey: 'gated', fingerprint: 'another request' }])
  t.same(one.map((holder) => String(holder!.record.amount).replace(/\.?0+$/, '')), ['2', '1'], 'a key asked for two budgets: each ask answered with its own budget\'s gated record')
  const mixed = await findKeyHolders(sql, [{ budgetId: a.id, idempotencyKey: 'mixed', fingerprint: 'another request' }])
  t.same([mixed[0]!.record.budgetId, mixed[0]!.fingerprint], [b.id, 'fp'], 'a fingerprinted holder before a gated one of the asked budget')
})
