// Review of 1df63c1 on the Citus cluster: reconciliation across two trees (mappings, report, drifts with their
// outbox rows, true-ups of child and parent, a mapping moved to another tree), through the admin API.
import t from 'tap'
import { distributedApp } from '../test/fixtures/citus-app.js'
import { PREFIX } from '../test/fixtures/app.js'

const DAY_MS = 86_400_000
const dayBefore = (days: number): string => new Date(Date.now() - days * DAY_MS).toISOString().slice(0, 10)
const YESTERDAY = dayBefore(1)

t.test('two trees on the cluster: report, drifts, true-ups of child and parent, a mapping moved to the other tree', async (t) => {
  const { sql, createBudget, admin } = await distributedApp(t)
  const call = async (method: 'GET' | 'POST' | 'PUT' | 'DELETE', url: string, body?: unknown) =>
    await admin({ method, url: `${PREFIX}${url}`, ...(body === undefined ? {} : { body: body as Record<string, unknown> }) })
  const must = async (method: 'GET' | 'POST' | 'PUT' | 'DELETE', url: string, body: unknown, status: number) => {
    const response = await call(method, url, body)
    t.equal(response.statusCode, status, `${method} ${url}: ${response.body.slice(0, 400)}`)
    return response
  }
  const alerts = [{ threshold: 50, actions: ['notify'], notificationChannels: ['ops'] }]
  const org = await createBudget({ name: 'Org', scopeType: 'organization', scopeId: 'acme', amount: '1000', alerts })
  const team = await createBudget({ name: 'Team', scopeType: 'team', scopeId: 'team-a', amount: '1000', parentId: org.id, alerts })
  const other = await createBudget({ name: 'Other', scopeType: 'team', scopeId: 'team-b', amount: '1000', alerts })
  // the two trees on different workers
  const placement = await sql<Array<{ port: number }>>`
    select distinct nodeport as port from pg_dist_shard_placement p join pg_dist_shard s using (shardid)
    where s.logicalrelid = 'budget_definitions'::regclass and ${org.rootId}::uuid is not null
      and get_shard_id_for_distribution_column('budget_definitions', ${org.rootId}::uuid) = s.shardid
    union all
    select distinct nodeport from pg_dist_shard_placement p join pg_dist_shard s using (shardid)
    where s.logicalrelid = 'budget_definitions'::regclass and get_shard_id_for_distribution_column('budget_definitions', ${other.rootId}::uuid) = s.shardid`
  t.comment(`trees on ports ${placement.map((p) => p.port).join(', ')}`)

  const parentMap = (await must('POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'account', value: 'acme', budgetId: org.id, trueUp: true }, 201)).json()
  const childMap = (await must('POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_a', budgetId: team.id, trueUp: true }, 201)).json()
  const otherMap = (await must('POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_b', budgetId: other.id, trueUp: true }, 201)).json()
  await must('POST', `/${team.id}/usage`, { amount: '8', currency: 'USD', occurredAt: `${YESTERDAY}T01:00:00Z`, metadata: { requestId: 'a' } }, 201)
  await must('POST', `/${org.id}/usage`, { amount: '5', currency: 'USD', occurredAt: `${YESTERDAY}T02:00:00Z`, metadata: { requestId: 'b' } }, 201)
  await must('POST', `/${other.id}/usage`, { amount: '2', currency: 'USD', occurredAt: `${YESTERDAY}T02:00:00Z`, metadata: { requestId: 'c' } }, 201)
  const imported = await admin({
    method: 'POST', url: `${PREFIX}/provider-costs/import`, headers: { 'content-type': 'text/csv' },
    payload: ['date,provider,account,project,amount,currency', `${YESTERDAY},mistral,acme,proj_a,10,USD`, `${YESTERDAY},mistral,acme,proj_b,4,USD`, `${YESTERDAY},mistral,acme,proj_c,6,USD`].join('\n')
  })
  t.equal(imported.statusCode, 200, imported.body)

  const report = async () => (await must('GET', `/reconciliation?from=${YESTERDAY}&to=${YESTERDAY}`, undefined, 200)).json().lines as Array<Record<string, string | null>>
  const figures = async () => (await report()).map((l) => [l.budgetName, l.providerAmount, l.recordedAmount, l.correction, l.difference])
  t.strictSame(await figures(), [
    ['Org', '20.0000000000', '13.0000000000', null, '7.0000000000'],
    ['Other', '4.0000000000', '2.0000000000', null, '2.0000000000'],
    ['Team', '10.0000000000', '8.0000000000', null, '2.0000000000']
  ], 'the report before any true-up')

  // drifts: one per line, each with its outbox row in its own tree
  const evaluated = (await must('POST', '/reconciliation/evaluate', undefined, 200)).json()
  t.equal(evaluated.drifts.length, 3, 'three drifts')
  const outbox = await sql`select d.budget_id::text as budget, o.root_id::text as root, d.root_id::text as drift_root, o.channel from budget_notification_outbox o
    join budget_recon_drifts d on d.root_id = o.root_id and d.id = o.drift_id order by 1`
  t.equal(outbox.length, 3, 'one outbox row per drift')
  const rootOf: Record<string, string> = { [org.id]: org.rootId, [team.id]: team.rootId, [other.id]: other.rootId }
  for (const row of outbox) t.equal(row.root, rootOf[row.budget as string], 'the outbox row is in the drift budget\'s tree')
  t.equal((await must('POST', '/reconciliation/evaluate', undefined, 200)).json().drifts.length, 0, 'each drift once')

  // true-ups: parent first, then child (the parent moves again), idempotent
  const up = async (budgetId: string) => (await must('POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId }, 200)).json()
  t.match(await up(org.id), { status: 'created', amount: '7.0000000000' })
  t.match(await up(team.id), { status: 'created', amount: '2.0000000000' })
  t.match(await up(other.id), { status: 'created', amount: '2.0000000000' })
  t.match(await up(team.id), { status: 'unchanged' })
  t.match(await up(org.id), { status: 'unchanged' })
  t.strictSame(await figures(), [
    ['Org', '20.0000000000', '15.0000000000', '5.0000000000', '5.0000000000'],
    ['Other', '4.0000000000', '2.0000000000', '2.0000000000', '2.0000000000'],
    ['Team', '10.0000000000', '8.0000000000', '2.0000000000', '2.0000000000']
  ], 'each budget at its invoice once both are trued up')
  const audits = await sql`select a.budget_id::text as budget, a.root_id::text as root, count(*)::int as n from budget_audit_log a where a.action = 'true-up' group by 1, 2 order by 1`
  t.strictSame(audits.map((a) => [a.budget, a.root, a.n]).sort(), [[org.id, org.rootId, 2], [team.id, team.rootId, 1], [other.id, other.rootId, 1]].sort(),
    'one true-up entry per correction written or moved, in its tree')

  // a mapping moved to the other tree: the child's (its corrections stranded: refused), then a fresh one
  const refused = await call('PUT', `/provider-costs/mappings/${childMap.id}`, { budgetId: other.id })
  t.equal(refused.statusCode, 409, refused.body)
  const spare = (await must('POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'proj_c', budgetId: team.id }, 201)).json()
  const moved = await must('PUT', `/provider-costs/mappings/${spare.id}`, { budgetId: other.id, trueUp: true }, 200)
  t.match(moved.json(), { id: spare.id, budgetId: other.id, createdAt: spare.createdAt, trueUp: true }, 'the same id and creation time')
  const rows = await sql`select id::text as id, root_id::text as root from budget_recon_mappings where id = ${spare.id}::bigint`
  t.strictSame(rows.map((r) => [r.id, r.root]), [[spare.id, other.rootId]], 'stored once, in the new tree')
  const moveAudit = await sql`select root_id::text as root, budget_id::text as budget, before ->> 'budgetId' as before from budget_audit_log where action = 'update-cost-mapping'`
  t.strictSame(moveAudit.map((a) => [a.root, a.budget, a.before]), [[other.rootId, other.id, team.id]], 'audited in the new tree')
  t.match(await up(other.id), { status: 'adjusted', amount: '8.0000000000', previous: '2.0000000000' }, 'the moved bucket is the other budget\'s now')
  // and back again
  await must('PUT', `/provider-costs/mappings/${otherMap.id}`, { value: 'proj_b' }, 200)
  const list = (await must('GET', '/provider-costs/mappings', undefined, 200)).json().mappings as Array<{ id: string }>
  t.strictSame(list.map((m) => m.id).sort(), [parentMap.id, childMap.id, otherMap.id, spare.id].sort())

  // two processes at once: two true-ups of the same tree and a move, concurrently
  await admin({
    method: 'POST', url: `${PREFIX}/provider-costs/import`, headers: { 'content-type': 'text/csv' },
    payload: ['date,provider,account,project,amount,currency', `${YESTERDAY},mistral,acme,proj_a,12,USD`, `${YESTERDAY},mistral,acme,proj_b,4,USD`].join('\n')
  })
  const answers = await Promise.all([
    call('POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: team.id }),
    call('POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: org.id }),
    call('POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: other.id })
  ])
  t.strictSame(answers.map((a) => a.statusCode), [200, 200, 200], answers.map((a) => a.body).join('\n'))
  const final = await report()
  for (const line of final) t.equal(line.difference, line.correction, `${line.budgetName as string} at its invoice`)
})

t.test('on the cluster, a true-up into an ended window fires no alert, one into the current window does; trees on both workers', async (t) => {
  const { sql, createBudget, admin } = await distributedApp(t)
  const call = async (method: 'GET' | 'POST' | 'PUT' | 'DELETE', url: string, body?: unknown) =>
    await admin({ method, url: `${PREFIX}${url}`, ...(body === undefined ? {} : { body: body as Record<string, unknown> }) })
  const workerOf = async (rootId: string) => (await sql<Array<{ port: number }>>`
    select p.nodeport as port from pg_dist_shard_placement p
    where p.shardid = get_shard_id_for_distribution_column('budget_definitions', ${rootId}::uuid)`)[0]!.port
  const alerts = [{ threshold: 50, actions: ['notify'], notificationChannels: ['ops'] }]
  // daily budgets until two of them are on different workers (each its own tree)
  const daily: Array<{ id: string, rootId: string, port: number }> = []
  for (let i = 0; i < 12 && new Set(daily.map((d) => d.port)).size < 2; i++) {
    const made = await createBudget({ name: `Daily ${i}`, scopeType: 'team', scopeId: `d${i}`, amount: '10', period: 'daily', alerts })
    daily.push({ ...made, port: await workerOf(made.rootId) })
  }
  const first = daily[0]!
  const second = daily.find((d) => d.port !== first.port)!
  t.ok(second, 'two trees on two workers')
  const TODAY = dayBefore(0)
  const current = YESTERDAY.slice(0, 7) === TODAY.slice(0, 7)
  const monthly = await createBudget({ name: 'Monthly', scopeType: 'team', scopeId: 'm', amount: '10', alerts })
  const lines = ['date,provider,account,project,amount,currency']
  for (const [i, b] of [first, second, monthly].entries()) {
    const mapped = await call('POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: `p${i}`, budgetId: b.id, trueUp: true })
    t.equal(mapped.statusCode, 201, mapped.body)
    lines.push(`${YESTERDAY},mistral,acme,p${i},9,USD`)
  }
  const imported = await admin({ method: 'POST', url: `${PREFIX}/provider-costs/import`, headers: { 'content-type': 'text/csv' }, payload: lines.join('\n') })
  t.equal(imported.statusCode, 200, imported.body)
  for (const b of [first, second, monthly]) {
    const up = await call('POST', '/reconciliation/true-up', { provider: 'mistral', day: YESTERDAY, budgetId: b.id })
    t.equal(up.statusCode, 200, up.body)
  }
  const fired = async (b: { id: string, rootId: string }) =>
    (await sql`select count(*)::int as n from budget_alert_history where root_id = ${b.rootId} and budget_id = ${b.id}`)[0]!.n as number
  t.equal(await fired(first), 0, `yesterday's window of the tree on ${first.port} fires no alert`)
  t.equal(await fired(second), 0, `yesterday's window of the tree on ${second.port} fires no alert`)
  t.equal(await fired(monthly), current ? 1 : 0, 'the current window alerts as any spend')
  // the mark does not outlive the true-up: ordinary late usage into the ended window still alerts
  const late = await call('POST', `/${first.id}/usage`, { amount: '9', currency: 'USD', occurredAt: `${dayBefore(2)}T12:00:00Z`, metadata: { requestId: 'late' } })
  t.equal(late.statusCode, 201, late.body)
  t.equal(await fired(first), 1, 'late usage into an ended window still alerts')
})
