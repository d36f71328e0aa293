// Adversarial review on the Citus cluster of 96e60fe, 4f18cbf and 5af7eda: a two-tree line (test/fixtures/two-tree-calls.ts)
// with live holds and a lease while a child budget's window and alerts change (the carry, the alerts that follow);
// settlement batches mixing releases and spends, and release-only ones of held and leased calls, across both trees;
// and a gateway line spanning two trees with a shadow budget in each, its verdicts counted tree by tree.
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { BOTH, LINE, ORG, TEAM, USER, twoTreeStatements } from '../test/fixtures/two-tree-cluster.js'
import { buildGateway } from '../test/fixtures/gateway.js'
import { findViolations } from '../test/fixtures/invariants.js'
import { startUpstream } from '../test/fixtures/upstream.js'

t.test('a child budget\'s window and alerts changed on the cluster while two-tree holds and a lease are live', async (t) => {
  const s = await twoTreeStatements(t)
  const ids = [randomUUID(), randomUUID(), randomUUID()]
  t.ok(await s.hold(ids[0]!, '3'), 'a hold on both trees')
  t.ok(await s.hold(ids[1]!, '2', [TEAM, ORG]), 'a hold on the team and organization')
  const lease = randomUUID()
  t.ok(await s.takeLease(lease, '5', BOTH) !== null, 'a lease on both trees')
  t.ok(await s.hold(ids[2]!, '1'), 'a third hold')
  await s.settle(ids[2]!, '30', BOTH)
  await s.sql`update budget_definitions set alerts = ${s.sql.json([{ threshold: 10, actions: ['notify', 'block-all'] }, { threshold: 20, actions: ['notify'] }] as any)} where root_id = ${ORG} and id = ${TEAM}`
  await s.sql`select * from budget_alerts_follow_definition(${TEAM})`
  const before = await s.sql`select threshold::int, resolved_at is null as active from budget_alert_history where budget_id = ${TEAM} order by threshold`
  t.same(before.map((r) => [r.threshold, r.active]), [[10, true], [20, true]], 'both crossings recorded')

  // the definition changes: actions in another order (the same alert), the 20% gone, the amount raised
  const change = await s.sql.begin(async (tx) => {
    await tx`update budget_definitions set alerts = ${tx.json([{ threshold: 10, actions: ['block-all', 'notify'] }, { threshold: 50, actions: ['notify'] }] as any)}, amount = 150 where root_id = ${ORG} and id = ${TEAM}`
    return await tx`select recorded, resolved from budget_alerts_follow_definition(${TEAM})`
  })
  t.same(change, [{ recorded: 0, resolved: 1 }], 'the 20% resolved, the 10% kept (same actions, other order)')
  const after = await s.sql`select threshold::int, resolved_at is null as active from budget_alert_history where budget_id = ${TEAM} order by threshold`
  t.same(after.map((r) => [r.threshold, r.active]), [[10, true], [20, false]], 'only the 20% resolved')

  // the team's window changed: its live rows (of the holds in both trees and the lease) carried on its tree's shard
  await s.sql.begin(async (tx) => {
    await tx`update budget_definitions set period = 'daily' where root_id = ${ORG} and id = ${TEAM}`
    await tx`select * from budget_alerts_follow_definition(${TEAM})`
  })
  const [day] = await s.sql`select period_start from budget_status_windows(array[${TEAM}]::uuid[], array[now()])`
  const starts = await s.sql`select distinct period_start from budget_reservations where root_id = ${ORG} and budget_id = ${TEAM}`
  t.same(starts.map((r) => r.period_start.toISOString()), [day!.period_start.toISOString()], 'carried to the day')
  t.same(await s.broken(), [], 'every window equal to its allocations and live reservations')

  // a batch releasing one call and spending on another, the lease's call and its return: nothing left
  const mixed = await s.sql`select reservation_id, usage_id from budget_settle_batch(${[ids[0]!, ids[1]!]}::uuid[], array[null, 0.5]::numeric[], array['gate', 'gate'], array['call', 'call'],
    array['{}'::jsonb, '{}'::jsonb], null, ${BOTH}::uuid[], ${ORG}::uuid)`
  t.equal(mixed.length, 2, 'a batch releasing one and spending on the other')
  await s.settleLeased(lease, randomUUID(), '0.25', BOTH)
  await s.returnLease(lease, '0', true, 1, BOTH)
  t.same(await findViolations(s.sql), [], 'no hold left; windows equal to their allocations and reservations')
  t.same(await s.spent(), { user: '30.25', team: '30.75', org: '30.75' }, 'spend exact (the team by its daily window)')
})

t.test('release-only settlements of two-tree held calls on the cluster, in one batch and retried', async (t) => {
  const s = await twoTreeStatements(t)
  const ids = Array.from({ length: 4 }, () => randomUUID())
  for (const [i, id] of ids.entries()) t.ok(await s.hold(id, '1', i % 2 === 0 ? LINE : [USER]), 'held')
  for (let attempt = 0; attempt < 2; attempt++) {
    await s.sql`select reservation_id from budget_settle_batch(${ids}::uuid[], ${ids.map(() => null)}::numeric[], ${ids.map(() => 'gate')}::text[], ${ids.map(() => 'call')}::text[],
      array_fill('{}'::jsonb, array[${ids.length}::int]), null, ${BOTH}::uuid[], ${ORG}::uuid)`
  }
  t.same(await findViolations(s.sql), [], 'given back; nothing spent')
  t.same(await s.spent(), { user: '0', team: '0', org: '0' }, 'nothing counted')
})

t.test('a gateway line spanning two trees on the cluster, a shadow budget in each: each tree counts every verdict', async (t) => {
  const upstream = await startUpstream(t, { mode: 'json' })
  const a = await buildGateway(t, { upstreamServer: upstream.url, captureLogs: true })
  const user = await a.createBudget({ name: 'user', scopeType: 'user', scopeId: 'ada', amount: '0.0001', enforcement: 'shadow' })
  const org = await a.createBudget({ name: 'org', scopeType: 'organization', scopeId: 'acme', amount: '10', enforcement: 'hard' })
  const team = await a.createBudget({ name: 'team', scopeType: 'team', scopeId: 'platform', amount: '0.0002', enforcement: 'shadow', parentId: org.id })
  const named = new Map<string, number>()
  const errors: string[] = []
  await Promise.all(Array.from({ length: 16 }, async () => {
    const answer = await a.call({ user: 'ada', team: 'platform', organization: 'acme' }, { model: 'gpt-4o', max_tokens: 200 })
    if (answer.statusCode !== 200) { errors.push(`${answer.statusCode} ${answer.body.slice(0, 200)}`); return }
    for (const part of String(answer.headers['x-budget-shadow'] ?? '').split(',').map((p) => p.trim()).filter((p) => p !== '')) {
      const key = part.split(';').slice(0, 3).join(';')
      named.set(key, (named.get(key) ?? 0) + 1)
    }
  }))
  t.same(errors, [], 'every call admitted')
  await a.settled(30_000)
  const counts = await a.sql`select budget_id, code, outcome, calls::int from budget_shadow_counts order by budget_id, code, outcome`
  t.same(Object.fromEntries(counts.map((row) => [`${row.budget_id as string};code=${row.code as string};outcome=${row.outcome as string}`, row.calls])), Object.fromEntries(named), 'counts = verdicts')
  t.ok([...named.keys()].some((k) => k.startsWith(user.id)) && [...named.keys()].some((k) => k.startsWith(team.id)), 'verdicts in both trees')
  t.same(await findViolations(a.sql), [], 'invariants')
  t.same(a.logs.filter((line) => /shadow/.test(line.msg ?? '')).map((line) => line.msg), [], 'no shadow note failed')
})
