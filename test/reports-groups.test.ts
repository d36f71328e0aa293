// Spend reports by the caller's scope (organization, team, user, project), sorted by total with a top-N,
// over presets in a time zone, with usage no budget covered; and the rule docs/reports.md states: over a
// team budget's status window, groupBy=team gives that team exactly its status's currentAmount, whatever
// budgets sit below it.
import fc from 'fast-check'
import t from 'tap'
import { ADMIN_TOKEN, PREFIX, buildApp, snapshotTables } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }

interface Group { key: string | null, currency: string, total: string, calls: number }

/** A usage record no budget covered, written as the gate writes one (budget_id null): the caller's scopes in its metadata. */
async function unbudgeted (sql: Awaited<ReturnType<typeof buildApp>>['sql'], amount: string, occurredAt: string, caller: Record<string, unknown>, currency = 'USD') {
  await sql`
    insert into budget_usage_records (budget_id, amount, currency, source, metadata, idempotency_key, occurred_at, allocated_by_settlement)
    values (null, ${amount}, ${currency}, 'gate', ${sql.json(caller as never)}, ${`unbudgeted-${Math.random()}`}, ${occurredAt}, false)`
}

const groupOf = (groups: Group[], key: string | null, currency = 'USD') => groups.find((group) => group.key === key && group.currency === currency)

t.test('groupBy=team over the team budget\'s window equals its status exactly, with a user and a project budget below it', async (t) => {
  const gateway = await buildGateway(t)
  const { app, createBudget, call, settled, sql } = gateway
  const org = await createBudget({ scopeType: 'organization', scopeId: 'acme', amount: '1000' })
  const team = await createBudget({ scopeType: 'team', scopeId: 'platform', parentId: org.id, amount: '500' })
  await createBudget({ scopeType: 'user', scopeId: 'alice', parentId: team.id, amount: '100' })
  await createBudget({ scopeType: 'project', scopeId: 'search', parentId: team.id, amount: '100' })
  await createBudget({ scopeType: 'team', scopeId: 'data', parentId: org.id, amount: '500' })

  const platform = { organization: 'acme', team: 'platform' }
  const callers = [
    { ...platform, user: 'alice' }, // on alice's budget, below the team
    { ...platform, user: 'alice' },
    { ...platform, user: 'bob', project: 'search' }, // on the project's budget, below the team
    { ...platform, user: 'bob', project: 'search' },
    { ...platform, user: 'alice', project: 'search' }, // both budgets below the team: counted once toward it
    { ...platform, user: 'carol' }, // straight on the team
    { ...platform, user: 'carol' },
    { organization: 'acme', team: 'data', user: 'dave' } // another team
  ]
  for (const [index, scopes] of callers.entries()) {
    const response = await call(scopes, { max_tokens: 10 + index * 7, messages: [{ role: 'user', content: `call ${index} ${'x'.repeat(index * 13)}` }] })
    t.equal(response.statusCode, 200, `call ${index} served`)
  }
  await settled()
  // a caller of a team without a budget, this month: in the report, under its team, and under scope as null
  await unbudgeted(sql, '0.0000108', new Date().toISOString(), { organizationId: 'acme', teamId: 'ghost', userId: 'eve', modelId: 'gpt-4o-mini' })

  const get = async (url: string) => {
    const response = await app.inject({ url, headers: AUTH })
    t.equal(response.statusCode, 200, url)
    return response.json()
  }
  const status = await get(`${PREFIX}/${team.id}/status`)
  const window = `from=${status.periodStart as string}&to=${status.periodEnd as string}`
  const byTeam = await get(`${PREFIX}/reports/spend?groupBy=team&${window}`)
  t.equal(byTeam.from, status.periodStart, 'the resolved window is echoed')
  t.equal(groupOf(byTeam.groups, 'platform')?.total, status.currentAmount, 'platform\'s report total is its status\'s currentAmount, to the last digit')
  t.equal(groupOf(byTeam.groups, 'platform')?.calls, 7)
  t.equal(groupOf(byTeam.groups, 'ghost')?.total, '0.0000108', 'a team without a budget is reported')
  t.ok(status.currentAmount !== '0', 'the calls cost something')

  const orgStatus = await get(`${PREFIX}/${org.id}/status`)
  const byOrg = await get(`${PREFIX}/reports/spend?groupBy=organization&${window}`)
  const orgGroup = groupOf(byOrg.groups, 'acme')
  t.ok(orgGroup !== undefined)
  // the organization's budget does not cover ghost's unbudgeted call; its report total does, and by that much exactly
  t.equal(orgGroup!.calls, 9)
  const [difference] = await sql`select (${orgGroup!.total}::numeric - ${orgStatus.currentAmount as string}::numeric)::text as d`
  t.equal(Number(difference!.d), 0.0000108, 'acme = its status + the unbudgeted call no budget of it covered')

  // groupBy=scope keeps its meaning: the budget each call was recorded on, so the team's own line is less
  // than its status (the operator's 0.7266 against 0.7393), and usage no budget covered is the null key
  const byScope = await get(`${PREFIX}/reports/spend?groupBy=scope&${window}`)
  t.ok(groupOf(byScope.groups, 'user:alice') !== undefined && groupOf(byScope.groups, 'project:search') !== undefined)
  t.not(groupOf(byScope.groups, 'team:platform')?.total, status.currentAmount)
  t.equal(groupOf(byScope.groups, null)?.total, '0.0000108', 'usage no budget covered: key null')

  // by user and by project, from the record, whatever budget it was recorded on
  const byUser = await get(`${PREFIX}/reports/spend?groupBy=user&${window}&sort=key`)
  t.same(byUser.groups.map((g: Group) => [g.key, g.calls]), [['alice', 3], ['bob', 2], ['carol', 2], ['dave', 1], ['eve', 1]])
  const byProject = await get(`${PREFIX}/reports/spend?groupBy=project&${window}&sort=key`)
  t.same(byProject.groups.map((g: Group) => [g.key, g.calls]), [['search', 3], [null, 6]], 'callers without a project: key null')
})

t.test('where the equality ends, as docs/reports.md says: a filtered team budget, and the team\'s calls before its budget', async (t) => {
  const { admin, sql } = await buildApp(t)
  const monthStart = `${new Date().toISOString().slice(0, 7)}-01`
  const created = await admin({ method: 'POST', url: PREFIX, body: { name: 'platform', scopeType: 'team', scopeId: 'platform', amount: '100', currency: 'USD', period: 'monthly', startDate: monthStart, filters: { models: ['gpt-4o'] } } })
  t.equal(created.statusCode, 201, created.body)
  const budget = created.json()
  const now = new Date().toISOString()
  const recorded = await admin({ method: 'POST', url: `${PREFIX}/${budget.id}/usage`, body: { amount: '0.25', currency: 'USD', source: 'test', occurredAt: now, metadata: { modelId: 'gpt-4o', teamId: 'platform' } } })
  t.equal(recorded.statusCode, 201, recorded.body)
  // the team's call of a model its budget's filter leaves out: no budget covers it
  await unbudgeted(sql, '0.125', now, { teamId: 'platform', modelId: 'gpt-4o-mini' })
  // the team's call before its budget was created, in the budget's window: no budget covered it then
  await unbudgeted(sql, '0.5', `${monthStart}T00:00:00Z`, { teamId: 'platform', modelId: 'gpt-4o' })
  const status = (await admin({ url: `${PREFIX}/${budget.id}/status` })).json()
  t.equal(status.currentAmount, '0.25', 'the budget counts only the model its filter names')
  const window = `from=${status.periodStart as string}&to=${status.periodEnd as string}`
  const report = (await admin({ url: `${PREFIX}/reports/spend?groupBy=team&${window}` })).json()
  t.equal(groupOf(report.groups, 'platform')?.total, '0.875', 'the report counts every call of the team: 0.25 + 0.125 + 0.5 unbudgeted')
  const counted = (await admin({ url: `${PREFIX}/reports/spend?groupBy=team&${window}&scopeType=team&scopeId=platform` })).json()
  t.equal(groupOf(counted.groups, 'platform')?.total, '0.25', 'scopeType/scopeId: only the records that counted toward the team\'s budgets')
})

t.test('sorted by total, top-N with others per currency, in JSON and CSV', async (t) => {
  const { admin, sql } = await buildApp(t)
  const rows: Array<[string, string, string]> = [
    ['a', '0.1', 'USD'], ['b', '3', 'USD'], ['b', '0.0000000001', 'USD'], ['c', '2', 'USD'], ['d', '2', 'USD'], ['e', '0.5', 'EUR'], ['f', '7', 'EUR'],
    ['h', '10', 'GBP'], ['i', '9', 'GBP'] // as text, '10' would sort after '9'
  ]
  for (const [team, amount, currency] of rows) await unbudgeted(sql, amount, '2024-03-01T12:00:00Z', { teamId: team, modelId: 'm' }, currency)
  await unbudgeted(sql, '1', '2024-03-01T12:00:00Z', { modelId: 'm' }) // a caller without a team
  const report = async (query: string) => (await admin({ url: `${PREFIX}/reports/spend?from=2024-03-01&to=2024-03-02&groupBy=team&${query}` })).json()

  const all = await report('')
  t.equal(all.sort, 'total', 'total is the default')
  t.same(all.groups.map((g: Group) => [g.key, g.currency, g.total]), [
    ['h', 'GBP', '10'], ['i', 'GBP', '9'], ['f', 'EUR', '7'], ['b', 'USD', '3.0000000001'], ['c', 'USD', '2'], ['d', 'USD', '2'], [null, 'USD', '1'], ['e', 'EUR', '0.5'], ['a', 'USD', '0.1']
  ], 'largest first; ties by key')
  t.same([all.truncated, all.others, all.limit], [false, [], null])

  const top = await report('limit=3')
  t.same(top.groups.map((g: Group) => g.key), ['h', 'i', 'f'])
  t.equal(top.truncated, true)
  t.same(top.others, [
    { currency: 'EUR', total: '0.5', calls: 1, inputTokens: '0', outputTokens: '0', groups: 1 },
    { currency: 'USD', total: '8.1000000001', calls: 6, inputTokens: '0', outputTokens: '0', groups: 5 }
  ], 'what the limit cut, summed per currency: nothing lost')
  t.same((await report('limit=9')).truncated, false, 'a limit that cuts nothing says so')
  t.same((await report('limit=8')).others, [{ currency: 'USD', total: '0.1', calls: 1, inputTokens: '0', outputTokens: '0', groups: 1 }])
  t.same((await report('sort=key&limit=2')).groups.map((g: Group) => g.key), ['a', 'b'])

  const csv = async (query: string) => await admin({ url: `${PREFIX}/reports/spend?from=2024-03-01&to=2024-03-02&groupBy=team&${query}`, headers: { accept: 'text/csv' } })
  const cut = await csv('limit=2')
  t.equal(cut.headers['x-report-truncated'], 'true')
  t.equal(cut.headers['x-report-from'], '2024-03-01T00:00:00.000Z')
  t.same(cut.body.split('\r\n'), ['team,currency,total,calls,inputTokens,outputTokens', 'h,GBP,10,1,0,0', 'i,GBP,9,1,0,0', ''])
  const whole = await csv('sort=key')
  t.equal(whole.headers['x-report-truncated'], 'false')
  t.equal(whole.body.split('\r\n').length, 11, 'a header, 9 groups, the end')
  const empty = await csv('currency=JPY&limit=1')
  t.same([empty.headers['x-report-truncated'], empty.body], ['false', 'team,currency,total,calls,inputTokens,outputTokens\r\n'])
})

/** The wall-clock parts of an instant in a zone, by Intl (the oracle for PostgreSQL's calendar). */
function localParts (instant: Date, timeZone: string) {
  const parts = Object.fromEntries(new Intl.DateTimeFormat('en-GB', {
    timeZone, hourCycle: 'h23', year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit', weekday: 'short'
  }).formatToParts(instant).map((part) => [part.type, part.value]))
  return { day: Number(parts.day), weekday: parts.weekday, time: `${parts.hour}:${parts.minute}:${parts.second}`, month: Number(parts.month) }
}

t.test('presets: ISO weeks from Monday and months, local midnight to local midnight in timeZone, echoed', async (t) => {
  const { admin, sql } = await buildApp(t)
  const now = new Date()
  await unbudgeted(sql, '0.25', now.toISOString(), { teamId: 'platform' })
  for (const timeZone of ['UTC', 'Europe/Paris', 'America/New_York', 'Asia/Kolkata', 'Pacific/Chatham']) {
    const window = async (preset: string) => {
      const response = await admin({ url: `${PREFIX}/reports/spend?preset=${preset}&timeZone=${encodeURIComponent(timeZone)}&groupBy=team` })
      t.equal(response.statusCode, 200, `${preset} in ${timeZone}`)
      const body = response.json()
      t.equal(body.timeZone, timeZone)
      return { from: new Date(body.from), to: new Date(body.to), body }
    }
    const thisWeek = await window('this-week')
    const lastWeek = await window('last-week')
    const thisMonth = await window('this-month')
    const lastMonth = await window('last-month')
    for (const [name, w] of [['this-week', thisWeek], ['last-week', lastWeek]] as const) {
      t.match(localParts(w.from, timeZone), { weekday: 'Mon', time: '00:00:00' }, `${name} starts on a local Monday midnight in ${timeZone}`)
      t.match(localParts(w.to, timeZone), { weekday: 'Mon', time: '00:00:00' })
    }
    for (const [name, w] of [['this-month', thisMonth], ['last-month', lastMonth]] as const) {
      t.match(localParts(w.from, timeZone), { day: 1, time: '00:00:00' }, `${name} starts on the 1st at local midnight in ${timeZone}`)
      t.match(localParts(w.to, timeZone), { day: 1, time: '00:00:00' })
      t.equal((localParts(w.to, timeZone).month - localParts(w.from, timeZone).month + 12) % 12, 1, 'one month long')
    }
    t.ok(thisWeek.from <= now && now < thisWeek.to && thisMonth.from <= now && now < thisMonth.to, 'this week and this month hold now')
    t.equal(lastWeek.to.getTime(), thisWeek.from.getTime())
    t.equal(lastMonth.to.getTime(), thisMonth.from.getTime())
    t.equal(groupOf(thisWeek.body.groups, 'platform')?.total, '0.25', 'this week\'s spend is in this week')
    t.same(lastWeek.body.groups, [], 'and not in last week')
  }
})

t.test('groupBy=day follows timeZone', async (t) => {
  const { admin, sql } = await buildApp(t)
  await unbudgeted(sql, '1', '2024-03-01T23:30:00Z', { teamId: 'platform' })
  const days = async (zone: string) => (await admin({ url: `${PREFIX}/reports/spend?from=2024-03-01&to=2024-03-03&groupBy=day&timeZone=${zone}` })).json().groups.map((g: Group) => g.key)
  t.same(await days('UTC'), ['2024-03-01'])
  t.same(await days('Europe/Paris'), ['2024-03-02'])
})

t.test('bad preset, time zone, sort and limit are a 400 naming the field, JSON or CSV', async (t) => {
  const { admin } = await buildApp(t)
  for (const [query, field] of [
    ['preset=this-week&from=2024-01-01', 'preset'], ['preset=last-month&to=2024-01-01', 'preset'], ['preset=yesterday', 'preset'],
    ['timeZone=Mars/Olympus', 'timeZone'], ['timeZone=CET', 'timeZone'], ['timeZone=', 'timeZone'], ['preset=this-week&timeZone=localtime', 'timeZone'],
    ['sort=name', 'sort'], ['limit=0', 'limit'], ['limit=1001', 'limit'], ['limit=1.5', 'limit'], ['limit=x', 'limit'], ['groupBy=tenant', 'groupBy']
  ] as const) {
    for (const accept of ['application/json', 'text/csv']) {
      const response = await admin({ url: `${PREFIX}/reports/spend?${query}`, headers: { accept } })
      t.equal(response.statusCode, 400, `${query} (${accept})`)
      t.match(response.json(), { code: 'BUDGET_ERR_VALIDATION', field: new RegExp(field) }, `${query}: names ${field}`)
    }
  }
  const conflict = (await admin({ url: `${PREFIX}/reports/spend?preset=this-week&from=2024-01-01` })).json()
  t.match(conflict.message, /from/, 'the conflict is named')
})

t.test('hostile values for the new parameters: never a 5xx, a coded 4xx, nothing changed', async (t) => {
  const { admin, sql } = await buildApp(t)
  await unbudgeted(sql, '0.5', '2024-03-01T00:00:00Z', { teamId: 'platform', organizationId: 'acme', userId: 'u', projectId: 'p', tags: { feature: 'x' } })
  const before = await snapshotTables(sql)
  const text = fc.oneof(fc.string({ maxLength: 30 }), fc.constantFrom('', ' ', '\u0000', '%00', '%ff', '__proto__', 'UTC', 'utc', 'Europe/Paris', '../etc', 'x'.repeat(300), 'this-week', 'total', '-1', '1e3', '1000', '1', 'null', '[]'))
  const value = fc.oneof(text, fc.integer({ min: -2000, max: 2000 }).map(String))
  const parameter = fc.constantFrom('preset', 'timeZone', 'sort', 'limit', 'groupBy', 'from', 'to', 'tagKey', 'scopeType', 'scopeId', 'currency', '__proto__', 'constructor')
  await fc.assert(fc.asyncProperty(fc.array(fc.tuple(parameter, value), { maxLength: 5 }), fc.boolean(), async (pairs, csv) => {
    const query = pairs.map(([name, v]) => `${encodeURIComponent(name)}=${encodeURIComponent(v)}`).join('&')
    const response = await admin({ url: `${PREFIX}/reports/spend?${query}`, headers: { accept: csv ? 'text/csv' : 'application/json' } })
    if (response.statusCode >= 500) throw new Error(`${query}: ${response.statusCode} ${response.body}`)
    if (response.statusCode >= 400 && !/^(BUDGET|FST)_ERR_/.test(String(response.json().code))) throw new Error(`${query}: no code: ${response.body}`)
  }), { numRuns: Number(process.env.HOSTILE_RUNS ?? 150) })
  t.same(await snapshotTables(sql), before, 'nothing changed')
})

t.test('limit=1000 over 1001 groups: the CSV says it cut one, before its body', async (t) => {
  const { admin, sql } = await buildApp(t)
  await sql`
    insert into budget_usage_records (budget_id, amount, currency, source, metadata, idempotency_key, occurred_at, allocated_by_settlement)
    select null, i * 0.001, 'USD', 'gate', jsonb_build_object('modelId', 'model-' || i), 'many-' || i, '2024-03-01T00:00:00Z', false
    from generate_series(1, 1001) as i`
  const url = `${PREFIX}/reports/spend?from=2024-03-01&to=2024-03-02&groupBy=model&limit=1000`
  const csv = await admin({ url, headers: { accept: 'text/csv' } })
  t.equal(csv.headers['x-report-truncated'], 'true')
  t.equal(csv.body.split('\r\n').length, 1002, 'a header, 1000 groups, the end')
  t.match(csv.body.split('\r\n')[1], /^model-1001,USD,1.001,1,/, 'the largest first')
  const json = (await admin({ url })).json()
  t.same(json.others, [{ currency: 'USD', total: '0.001', calls: 1, inputTokens: '0', outputTokens: '0', groups: 1 }], 'the smallest was cut')
  t.equal((await admin({ url: url.replace('limit=1000', 'limit=1000&currency=EUR'), headers: { accept: 'text/csv' } })).headers['x-report-truncated'], 'false')
})
