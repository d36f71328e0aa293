// Review of a772455 on the cluster: the spend report (every groupBy, scope filters, records whose allocations
// are in other trees than the record) and the metrics gauges over several trees, against numbers computed
// independently from the tables (read whole, summed here in units).
import t from 'tap'
import { distributedApp } from '../test/fixtures/citus-app.js'
import { PREFIX } from '../test/fixtures/app.js'
import { createStatusRepository } from '../lib/usage/status-repository.js'

const SCALE = 10n ** 10n
const units = (text: string) => {
  const negative = text.startsWith('-')
  const [i = '0', f = ''] = (negative ? text.slice(1) : text).split('.')
  const value = BigInt(i) * SCALE + BigInt((f + '0000000000').slice(0, 10))
  return negative ? -value : value
}
const money = (value: bigint) => {
  const negative = value < 0n
  const abs = negative ? -value : value
  const i = abs / SCALE
  const f = (abs % SCALE).toString().padStart(10, '0').replace(/0+$/, '')
  return `${negative ? '-' : ''}${i}${f === '' ? '' : `.${f}`}`
}

interface Rec { id: string, root_id: string, budget_id: string | null, amount: string, currency: string, occurred_at: Date, metadata: Record<string, any> }

t.test('the spend report and the gauges over four trees on both workers equal the tables\' numbers', async (t) => {
  const { sql, app, createBudget, admin } = await distributedApp(t)
  const roots: Array<{ id: string, rootId: string }> = []
  for (let i = 0; i < 6; i++) roots.push(await createBudget({ name: `org ${i}`, scopeType: 'organization', scopeId: `org-${i}`, amount: '1000', metrics: i === 0 }))
  const placement = new Set<number>()
  const portOf = async (root: string) => (await sql`select n.nodeport from pg_dist_shard_placement n where n.shardid = get_shard_id_for_distribution_column('budget_definitions', ${root}::uuid)`)[0]!.nodeport as number
  for (const root of roots) placement.add(await portOf(root.id))
  // trees on both workers, whatever the hash gave the first six
  while (placement.size < 2 && roots.length < 30) {
    const extra = await createBudget({ name: `extra ${roots.length}`, scopeType: 'organization', scopeId: `extra-${roots.length}`, amount: '1000' })
    roots.push(extra)
    placement.add(await portOf(extra.id))
  }
  t.ok(placement.size >= 2, `trees on ${placement.size} workers`)
  const teams: Array<{ id: string, rootId: string }> = []
  for (let i = 0; i < 6; i++) teams.push(await createBudget({ name: `team ${i}`, scopeType: 'team', scopeId: i % 2 === 0 ? 'shared' : `team-${i}`, parentId: roots[i]!.id, amount: '500' }))
  const users: Array<{ id: string, rootId: string }> = []
  for (let i = 0; i < 3; i++) users.push(await createBudget({ name: `user ${i}`, scopeType: 'user', scopeId: `user-${i}`, amount: '50', metrics: i === 1 }))
  // records on one tree counting toward budgets of others
  let n = 0
  for (let i = 0; i < 6; i++) {
    for (let j = 0; j < 3; j++) {
      n++
      const other = users[(i + j) % 3]!
      const also = j === 0 ? [] : j === 1 ? [other.id] : [other.id, teams[(i + 3) % 6]!.id]
      await app.budgetTracker.record({
        budgetId: teams[i]!.id, amount: `${n}.${n}`, currency: 'USD',
        metadata: { requestId: `r-${n}`, modelId: n % 2 === 0 ? 'gpt-4o' : 'o3', userId: `user-${n % 4}`, teamId: `t-${i}`, organizationId: `org-${i}`, projectId: `p-${j}`, inputTokens: n * 10, outputTokens: n, tags: { env: j === 0 ? 'prod' : 'dev' } },
        alsoCountsToward: also
      })
    }
  }
  for (const user of users) await app.budgetTracker.record({ budgetId: user.id, amount: '0.5', currency: 'USD', metadata: { requestId: `u-${user.id}` } })
  await sql`insert into budget_usage_records (root_id, budget_id, amount, currency, source, metadata, idempotency_key, occurred_at, allocated_by_settlement)
    values ('00000000-0000-0000-0000-000000000000', null, 0.25, 'USD', 'gate', ${sql.json({ organizationId: 'org-0', teamId: 'ghost' } as never)}, 'ghost-1', now() - interval '1 hour', false)`

  const records = await sql<Rec[]>`select id::text, root_id::text, budget_id::text, amount::text, currency, occurred_at, metadata from budget_usage_records`
  const allocations = await sql<Array<{ usage_id: string, budget_id: string, root_id: string }>>`select usage_id::text, budget_id::text, root_id::text from budget_usage_allocations`
  const budgets = new Map((await sql<Array<{ id: string, root_id: string, scope_type: string, scope_id: string }>>`select id::text, root_id::text, scope_type, scope_id from budget_definitions`).map((b) => [b.id, b]))
  t.ok(allocations.some((a) => records.find((r) => r.id === a.usage_id)!.root_id !== a.root_id), 'allocations in other trees than their record')

  const keyOf: Record<string, (r: Rec) => string | null> = {
    scope: (r) => r.budget_id === null ? null : `${budgets.get(r.budget_id)!.scope_type}:${budgets.get(r.budget_id)!.scope_id}`,
    organization: (r) => r.metadata.organizationId ?? null,
    team: (r) => r.metadata.teamId ?? null,
    user: (r) => r.metadata.userId ?? null,
    project: (r) => r.metadata.projectId ?? null,
    model: (r) => r.metadata.modelId ?? null,
    day: (r) => r.occurred_at.toISOString().slice(0, 10),
    tag: (r) => r.metadata.tags?.env ?? null
  }
  const from = new Date(Date.now() - 86_400_000).toISOString()
  const to = new Date(Date.now() + 60_000).toISOString()
  const scopes: Array<[string, string] | undefined> = [undefined, ['team', 'shared'], ['user', 'user-0'], ['user', 'user-2'], ['organization', 'org-3'], ['team', 'team-5']]
  for (const groupBy of Object.keys(keyOf)) {
    for (const scope of scopes) {
      const chosen = scope === undefined
        ? records
        : records.filter((r) => allocations.some((a) => a.usage_id === r.id && budgets.get(a.budget_id)!.scope_type === scope[0] && budgets.get(a.budget_id)!.scope_id === scope[1]))
      const groups = new Map<string, { key: string | null, total: bigint, calls: number, input: number, output: number }>()
      for (const r of chosen) {
        const key = keyOf[groupBy]!(r)
        const group = groups.get(String(key)) ?? { key, total: 0n, calls: 0, input: 0, output: 0 }
        group.total += units(r.amount); group.calls++; group.input += r.metadata.inputTokens ?? 0; group.output += r.metadata.outputTokens ?? 0
        groups.set(String(key), group)
      }
      const expected = [...groups.values()].map((g) => ({ key: g.key, currency: 'USD', total: money(g.total), calls: g.calls, inputTokens: String(g.input), outputTokens: String(g.output) }))
        .sort((a, b) => a.key === b.key ? 0 : a.key === null ? 1 : b.key === null ? -1 : a.key < b.key ? -1 : 1)
      const query = new URLSearchParams({ groupBy, from, to, sort: 'key', ...(groupBy === 'tag' ? { tagKey: 'env' } : {}), ...(scope === undefined ? {} : { scopeType: scope[0], scopeId: scope[1] }) })
      const response = await admin({ url: `${PREFIX}/reports/spend?${query.toString()}` })
      t.equal(response.statusCode, 200, `${groupBy} ${String(scope)}: ${response.body.slice(0, 300)}`)
      if (response.statusCode !== 200) continue
      t.same(response.json().groups, expected, `${groupBy} ${String(scope)}`)
      if (scope !== undefined && groupBy === 'scope') t.ok(expected.length > 0, 'the filter keeps records')
      const limited = await admin({ url: `${PREFIX}/reports/spend?${query.toString()}&limit=2` })
      t.equal(limited.statusCode, 200, `${groupBy} ${String(scope)} limit: ${limited.body.slice(0, 300)}`)
    }
  }

  // gauges of every kind: blocked by a block-all crossing, without a window row (weekly in a zone), not started,
  // ended, deleted, a tree of its own on each worker
  const blocking = await createBudget({ name: 'blocking', scopeType: 'organization', scopeId: 'blocking', amount: '10', metrics: true, enforcement: 'soft',
    alerts: [{ threshold: 50, actions: ['block-all'], notificationChannels: ['ops'] }] })
  await app.budgetTracker.record({ budgetId: blocking.id, amount: '6', currency: 'USD', metadata: { requestId: 'blocking-1' } })
  const notifying = await createBudget({ name: 'notifying', scopeType: 'organization', scopeId: 'notifying', amount: '10', metrics: true,
    alerts: [{ threshold: 50, actions: ['notify'], notificationChannels: ['ops'] }] })
  await app.budgetTracker.record({ budgetId: notifying.id, amount: '6', currency: 'USD', metadata: { requestId: 'notifying-1' } })
  const rowless = await createBudget({ name: 'rowless', scopeType: 'organization', scopeId: 'rowless', period: 'weekly', timezone: 'Pacific/Kiritimati', metrics: true })
  const later = await createBudget({ name: 'later', scopeType: 'organization', scopeId: 'later', startDate: '2099-01-01', metrics: true })
  const ended = await createBudget({ name: 'ended', scopeType: 'organization', scopeId: 'ended', startDate: '2024-01-01', endDate: '2025-01-01', metrics: true })
  const gone = await createBudget({ name: 'gone', scopeType: 'organization', scopeId: 'gone', metrics: true })
  t.equal((await admin({ method: 'DELETE', url: `${PREFIX}/${gone.id}` })).statusCode < 300, true, 'deleted')
  await sql`delete from budget_status_cache where root_id = ${rowless.id} and budget_id = ${rowless.id}`
  const alertRows = await sql`select budget_id::text, actions, resolved_at from budget_alert_history`
  t.ok(alertRows.some((row) => row.budget_id === blocking.id && row.actions.includes('block-all') && row.resolved_at === null), 'a block-all crossing in force')

  // the gauges: every marked budget and the top spenders, with each one's current row
  const metrics = await createStatusRepository(sql).listMetricBudgets(4)
  const rows = await sql<Array<{ budget_id: string, current_amount: string, reserved_amount: string, period_end: Date }>>`
    select budget_id::text, current_amount::text, reserved_amount::text, period_end from budget_status_cache where period_start <= now() and now() < period_end`
  const top = [...rows].sort((a, b) => Number(units(b.current_amount) - units(a.current_amount)) || (a.budget_id < b.budget_id ? -1 : 1)).slice(0, 4).map((r) => r.budget_id)
  const ids = [...new Set([roots[0]!.id, users[1]!.id, blocking.id, notifying.id, rowless.id, later.id, ended.id, ...top])].sort()
  t.same(metrics.map((m) => m.id), ids, 'the marked budgets and the top 4')
  for (const m of metrics) {
    const row = rows.find((r) => r.budget_id === m.id)
    t.equal(money(units(m.currentAmount)), row === undefined ? '0' : money(units(row.current_amount)), `spend of ${m.name}`)
  }
  const byId = new Map(metrics.map((m) => [m.id, m]))
  t.same(metrics.filter((m) => m.blocked).map((m) => m.name), ['blocking'], 'blocked: the budget with a block-all crossing in force, no other')
  const window = await createStatusRepository(sql).findWindow(rowless.id, new Date())
  t.same(byId.get(rowless.id)?.periodEnd, window?.periodEnd, 'a budget without a row: its window\'s end, computed on the workers')
  t.equal(byId.get(rowless.id)?.currentAmount, '0')
  for (const id of [later.id, ended.id]) t.ok(Math.abs(byId.get(id)!.periodEnd.getTime() - Date.now()) < 10_000, 'no window now: now')
  const scrape = await admin({ url: `${PREFIX}/metrics` })
  t.equal(scrape.statusCode, 200, scrape.body.slice(0, 300))
  t.match(scrape.body, new RegExp(`relaycore_budget_blocked\\{budget_id="${blocking.id}"[^}]*\\} 1`), 'the blocked gauge in the scrape')
  t.notMatch(scrape.body, new RegExp(gone.id), 'a deleted budget has no gauge')
  t.match(scrape.body, new RegExp(`relaycore_budget_spend\\{budget_id="${teams[5]!.id}"[^}]*\\} `), 'a top spender in the scrape')
  for (const top of [0, 1, 20]) {
    const listed = await createStatusRepository(sql).listMetricBudgets(top)
    const topIds = [...rows].filter((r) => !(r.budget_id === gone.id)).sort((a, b) => Number(units(b.current_amount) - units(a.current_amount)) || (a.budget_id < b.budget_id ? -1 : 1)).slice(0, top).map((r) => r.budget_id)
    t.same(listed.map((m) => m.id), [...new Set([roots[0]!.id, users[1]!.id, blocking.id, notifying.id, rowless.id, later.id, ended.id, ...topIds])].sort(), `top ${top}`)
  }

  // the report's top N and its others, against the whole report; days in a zone far from UTC
  for (const groupBy of ['scope', 'user', 'model', 'day']) {
    for (const scope of [undefined, ['team', 'shared'], ['user', 'user-1']]) {
      const query = new URLSearchParams({ groupBy, from, to, timeZone: 'Pacific/Kiritimati', ...(scope === undefined ? {} : { scopeType: scope[0]!, scopeId: scope[1]! }) })
      const whole = (await admin({ url: `${PREFIX}/reports/spend?${query.toString()}` })).json()
      for (const limit of [1, 2, 3]) {
        const cut = await admin({ url: `${PREFIX}/reports/spend?${query.toString()}&limit=${limit}` })
        t.equal(cut.statusCode, 200, cut.body.slice(0, 300))
        const report = cut.json()
        t.same(report.groups, whole.groups.slice(0, limit), `${groupBy} ${String(scope)} limit ${limit}: the first groups`)
        const rest = whole.groups.slice(limit)
        const others = rest.length === 0 ? [] : [{ currency: 'USD', total: money(rest.reduce((sum: bigint, g: { total: string }) => sum + units(g.total), 0n)), calls: rest.reduce((sum: number, g: { calls: number }) => sum + g.calls, 0),
          inputTokens: String(rest.reduce((sum: number, g: { inputTokens: string }) => sum + Number(g.inputTokens), 0)), outputTokens: String(rest.reduce((sum: number, g: { outputTokens: string }) => sum + Number(g.outputTokens), 0)), groups: rest.length }]
        t.same(report.others, others, `${groupBy} ${String(scope)} limit ${limit}: the others`)
      }
      const csv = await admin({ url: `${PREFIX}/reports/spend?${query.toString()}`, headers: { accept: "text/csv" } })
      t.equal(csv.statusCode, 200, `csv ${csv.body.slice(0, 200)}`); t.equal(csv.body.trim().split("\r\n").length, whole.groups.length + 1, "csv: a line a group")
    }
  }
})

t.test('hostile queries to the report and the metrics route on the cluster: no 5xx', async (t) => {
  const { admin, createBudget, app } = await distributedApp(t)
  const team = await createBudget({ name: 'team', scopeType: 'team', scopeId: 'x', currency: 'EUR', metrics: true })
  await app.budgetTracker.record({ budgetId: team.id, amount: '1', currency: 'EUR', metadata: { requestId: 'eur', tags: { 'a:b': 'c' } } })
  for (const query of ['groupBy=tag&tagKey=a:b', 'groupBy=tag&tagKey=%00', 'scopeType=team&scopeId=%00', 'scopeType=team&scopeId=' + 'y'.repeat(5000), 'currency=EUR&groupBy=scope&scopeType=team&scopeId=x',
    'currency=GBP&limit=1', 'groupBy=day&timeZone=Asia/Kathmandu&limit=1000', 'from=0001-01-01T00:00:00Z&to=9999-12-31T00:00:00Z&groupBy=scope&scopeType=user&scopeId=x',
    'preset=last-month&groupBy=scope&limit=1&sort=key', 'groupBy=scope&scopeType=team&scopeId=x&timeZone=Mars/Olympus', "scopeType=team&scopeId=x'%3B--"]) {
    const response = await admin({ url: `/api/v1/budgets/reports/spend?${query}` })
    t.ok(response.statusCode < 500, `${query.slice(0, 80)}: ${response.statusCode} ${response.body.slice(0, 200)}`)
  }
  const eur = (await admin({ url: '/api/v1/budgets/reports/spend?currency=EUR&groupBy=scope&scopeType=team&scopeId=x' })).json()
  t.same(eur.groups.map((g: { key: string, total: string }) => [g.key, g.total]), [['team:x', '1']], 'the EUR record under its scope')
  t.equal((await admin({ url: '/api/v1/budgets/metrics' })).statusCode, 200)
})
