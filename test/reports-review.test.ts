// Attacks on the spend reports (docs/reports.md): hostile queries, top-N sums, presets across clock changes, CSV escaping, clients that leave.
import { request as httpRequest } from 'node:http'
import type { AddressInfo } from 'node:net'
import fc from 'fast-check'
import postgres from 'postgres'
import t from 'tap'
import { fromUnits, toUnits } from '../lib/kernel/money.js'
import { ADMIN_TOKEN, PREFIX, buildApp, snapshotTables } from './fixtures/app.js'

const AUTH = { authorization: `Bearer ${ADMIN_TOKEN}` }
type Sql = Awaited<ReturnType<typeof buildApp>>['sql']

async function unbudgeted (sql: Sql, amount: string, occurredAt: string, caller: Record<string, unknown>, currency = 'USD') {
  await sql`
    insert into budget_usage_records (budget_id, amount, currency, source, metadata, idempotency_key, occurred_at, allocated_by_settlement)
    values (null, ${amount}, ${currency}, 'gate', ${sql.json(caller as never)}, ${`unbudgeted-${Math.random()}`}, ${occurredAt}, false)`
}

/** A minimal RFC 4180 parser. */
function parseCsv (text: string): string[][] {
  const rows: string[][] = []
  let row: string[] = []
  let field = ''
  let quoted = false
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++ } else if (c === '"') quoted = false
      else field += c
    } else if (c === '"') quoted = true
    else if (c === ',') { row.push(field); field = '' } else if (c === '\r' && text[i + 1] === '\n') { row.push(field); rows.push(row); row = []; field = ''; i++ } else field += c
  }
  if (field !== '' || row.length > 0) { row.push(field); rows.push(row) }
  return rows
}

t.test('holds: hostile queries: only 200 or 400 BUDGET_ERR_VALIDATION, in JSON and CSV, nothing changed', async (t) => {
  const { app, sql } = await buildApp(t)
  await unbudgeted(sql, '1.5', '2024-03-01T12:00:00Z', { teamId: 'a', modelId: 'm', tags: { f: 'x' } })
  const before = await snapshotTables(sql)
  const value = fc.oneof(
    fc.constantFrom('', ' ', 'UTC ', 'Etc/GMT+14', 'Etc/GMT-14', '../', '../../etc/passwd', 'x'.repeat(5000), "UTC'; drop table budget_usage_records; --",
      'CET', 'EST', 'posixrules', 'Factory', 'localtime', 'utc', 'UTC', 'Europe/Paris', 'America/Santiago', 'Asia/Kathmandu', 'Pacific/Kiritimati',
      '0', '-1', '1001', '1000', '1', '1.5', '1e3', 'NaN', 'Infinity', '99999999999999999999', '0x10', ' 1', 'total', 'key', 'KEY',
      'this-week', 'last-week', 'this-month', 'last-month', 'team', 'tag', 'day', 'scope', 'user', 'project', 'organization', 'model',
      '2024-03-01', '2024-03-02', '1970-01-01', '9999-12-31', '9999-12-31T23:59:59Z', '0000-01-01', '2024-02-30', '2024-03-01T12:00:00+14:00',
      '2024-03-01T12:00:00-12:00', '2024-03-01T24:00:00Z', 'USD', 'usd', 'EUR', 'f', '\u0000', '%00', 'é', '\ud83d\ude00', '[]', '{}', 'null'),
    fc.string({ maxLength: 40 }), fc.string({ unit: 'binary', maxLength: 10 }))
  const param = fc.constantFrom('groupBy', 'tagKey', 'from', 'to', 'preset', 'timeZone', 'sort', 'limit', 'scopeType', 'scopeId', 'currency', 'bogus')
  const seen = new Map<number, number>()
  await fc.assert(fc.asyncProperty(fc.array(fc.tuple(param, value), { maxLength: 6 }), fc.boolean(), async (pairs, csv) => {
    const query = pairs.map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join('&')
    const response = await app.inject({ url: `${PREFIX}/reports/spend?${query}`, headers: { ...AUTH, ...(csv ? { accept: 'text/csv' } : {}) } })
    seen.set(response.statusCode, (seen.get(response.statusCode) ?? 0) + 1)
    if (response.statusCode === 200) return true
    if (response.statusCode !== 400) throw new Error(`${response.statusCode} for ${query}: ${response.body.slice(0, 300)}`)
    const body = response.json()
    if (body.code !== 'BUDGET_ERR_VALIDATION') throw new Error(`code ${body.code as string} for ${query}: ${response.body.slice(0, 300)}`)
    if (/\n\s+at |select |\/work\/|node_modules/i.test(response.body)) throw new Error(`leak: ${response.body}`)
    return true
  }), { numRuns: 400 })
  t.ok((seen.get(200) ?? 0) > 0 && (seen.get(400) ?? 0) > 0, JSON.stringify([...seen]))
  t.same(await snapshotTables(sql), before, 'nothing changed')
})

t.test('holds: top-N: kept rows + others == un-limited totals per currency, exactly, with ties and mixed currencies', async (t) => {
  const { admin, sql } = await buildApp(t)
  const amounts = ['0.1', '0.2', '0.3', '1', '1', '2', '0.0000000001', '3.3333333333', '1000000000.0000001', '0.1000000000']
  let n = 0
  for (let g = 0; g < 60; g++) {
    for (const currency of ['USD', 'EUR', 'JPY'].slice(0, 1 + (g % 3))) {
      await unbudgeted(sql, amounts[(g * 7 + n++) % amounts.length]!, '2024-03-01T12:00:00Z', { teamId: `t${g % 40}`, modelId: 'm', inputTokens: g, outputTokens: 2 * g }, currency)
    }
  }
  await unbudgeted(sql, '5', '2024-03-01T12:00:00Z', { modelId: 'm' })
  const report = async (q: string) => {
    const r = await admin({ url: `${PREFIX}/reports/spend?from=2024-03-01&to=2024-03-02&groupBy=team&${q}` })
    if (r.statusCode !== 200) throw new Error(r.body)
    return r.json()
  }
  const all = await report('')
  const sum = async (values: string[]) => (await sql`select coalesce(sum(v::numeric), 0)::text as s from unnest(${values}::text[]) v`)[0]!.s as string
  const eq = async (a: string, b: string) => (await sql`select ${a}::numeric = ${b}::numeric as e`)[0]!.e as boolean
  await fc.assert(fc.asyncProperty(fc.integer({ min: 1, max: 120 }), fc.constantFrom('total', 'key'), async (limit, sort) => {
    const cut = await report(`limit=${limit}&sort=${sort}`)
    const full = await report(`sort=${sort}`)
    if (JSON.stringify(cut.groups) !== JSON.stringify(full.groups.slice(0, limit))) throw new Error('kept rows differ')
    for (const currency of ['USD', 'EUR', 'JPY']) {
      const allOf = all.groups.filter((g: { currency: string }) => g.currency === currency)
      const kept = cut.groups.filter((g: { currency: string }) => g.currency === currency)
      const other = cut.others.find((o: { currency: string }) => o.currency === currency)
      const total = await sum([...kept.map((g: { total: string }) => g.total), ...(other === undefined ? [] : [other.total])])
      if (!(await eq(total, await sum(allOf.map((g: { total: string }) => g.total))))) throw new Error(`${currency} limit ${limit}`)
      if ((other?.groups ?? 0) + kept.length !== allOf.length) throw new Error('group count')
      if (other !== undefined && !/^\d+(\.\d+)?$/.test(other.total)) throw new Error(`others total ${other.total as string}`)
    }
    return true
  }), { numRuns: 25 })
})

t.test('holds: CSV escaping: formula prefixes, quotes, newlines in tag values and scope ids', async (t) => {
  const { app, sql } = await buildApp(t)
  const nasty = ['=HYPERLINK("http://x","y")', '+1+1', '-2+3', '@SUM(A1)', '\tTAB', '\rCR', 'a,b', 'he said "hi"', 'line\nbreak', 'line\r\nbreak', ' =1+1', '\u00a0=1', '\uff1d1+1', '', "'quoted"]
  for (const [i, value] of nasty.entries()) {
    await unbudgeted(sql, `${i + 1}`, '2024-03-01T12:00:00Z', { teamId: value, modelId: value, tags: { f: value } })
  }
  for (const groupBy of ['team', 'model', 'tag&tagKey=f']) {
    const json = (await app.inject({ url: `${PREFIX}/reports/spend?from=2024-03-01&to=2024-03-02&groupBy=${groupBy}&sort=key`, headers: AUTH })).json()
    const response = await app.inject({ url: `${PREFIX}/reports/spend?from=2024-03-01&to=2024-03-02&groupBy=${groupBy}&sort=key`, headers: { ...AUTH, accept: 'text/csv' } })
    t.equal(response.statusCode, 200)
    t.equal(response.headers['x-report-truncated'], 'false')
    t.equal(response.headers['x-report-from'], '2024-03-01T00:00:00.000Z')
    t.equal(response.headers['x-report-to'], '2024-03-02T00:00:00.000Z')
    const rows = parseCsv(response.body)
    t.equal(rows.length, json.groups.length + 1, `${groupBy}: one CSV row per group`)
    for (const [i, group] of json.groups.entries()) {
      const cell = rows[i + 1]![0]!
      t.notOk(/^[=+\-@\t\r]/.test(cell), `${groupBy}: cell ${JSON.stringify(cell)} cannot start a formula`)
      const unprefixed = cell.startsWith("'") && /^[=+\-@\t\r]/.test(cell.slice(1)) ? cell.slice(1) : cell
      t.equal(unprefixed, group.key ?? '', `${groupBy}: the key survives`)
      t.equal(rows[i + 1]![2], group.total, 'total as in JSON')
    }
  }
})

async function pgBackends (sql: Sql): Promise<Array<{ state: string, query: string }>> {
  return await sql`select state, query from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid() and query ilike '%budget_usage_records u%'` as never
}

async function openCsv (port: number, query: string): Promise<{ firstChunk: Promise<string>, abort: () => void }> {
  let abort = () => {}
  const firstChunk = new Promise<string>((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path: `${PREFIX}/reports/spend?${query}`, headers: { ...AUTH, accept: 'text/csv' } }, (res) => {
      res.once('data', (chunk: Buffer) => resolve(chunk.toString()))
    })
    req.on('error', () => {})
    abort = () => { req.destroy(); reject(new Error('aborted')) }
    req.end()
  })
  firstChunk.catch(() => {})
  return { firstChunk, abort: () => abort() }
}

t.test('holds: a client that leaves before the first CSV page: the cursor is closed and the pool is not exhausted', async (t) => {
  const { app, sql } = await buildApp(t)
  for (let i = 0; i < 3000; i++) if (i % 500 === 0) await sql`insert into budget_usage_records (budget_id, amount, currency, source, metadata, idempotency_key, occurred_at, allocated_by_settlement) select null, 0.001, 'USD', 'gate', jsonb_build_object('teamId', 't' || g, 'modelId', 'm' || g), 'k' || ${i} || '-' || g, '2024-03-01T12:00:00Z', false from generate_series(1, 500) g`
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  const url = (await sql`select current_database() as d`)[0]!.d as string
  const locker = postgres(`postgres://postgres@127.0.0.1:5432/${url}`, { max: 1, onnotice: () => {} })
  t.teardown(async () => await locker.end())
  const clients = 12 // more than the pool (postgres.js default max 10)
  await locker.begin(async (tx) => {
    await tx`lock table budget_usage_records in access exclusive mode`
    for (let i = 0; i < clients; i++) {
      const c = await openCsv(port, 'from=2024-03-01&to=2024-03-02&groupBy=team')
      await new Promise((resolve) => setTimeout(resolve, 50))
      c.abort()
    }
    await new Promise((resolve) => setTimeout(resolve, 300))
    const waiting = await tx`select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock' and query ilike '%budget_usage_records u%'`
    t.ok(waiting[0]!.n > 0, `report queries were waiting on the lock when their clients left (${waiting[0]!.n as number})`)
  })
  await new Promise((resolve) => setTimeout(resolve, 1500))
  const lingering = await pgBackends(sql)
  t.same(lingering.filter((b) => b.state !== 'idle'), [], 'no report cursor left open in a transaction')
  const later = await Promise.race([
    app.inject({ url: `${PREFIX}/reports/spend?from=2024-03-01&to=2024-03-02&groupBy=team&limit=1`, headers: AUTH }).then((r) => r.statusCode),
    new Promise((resolve) => setTimeout(() => resolve('timed out after 10 s'), 10_000))
  ])
  t.equal(later, 200, 'a later report still works')
})

t.test('holds: a client that leaves mid-CSV: the cursor is closed and later reports work', async (t) => {
  const { app, sql } = await buildApp(t)
  await sql`insert into budget_usage_records (budget_id, amount, currency, source, metadata, idempotency_key, occurred_at, allocated_by_settlement) select null, 0.001, 'USD', 'gate', jsonb_build_object('teamId', 't' || g || repeat('x', 200), 'modelId', 'm'), 'k-' || g, '2024-03-01T12:00:00Z', false from generate_series(1, 20000) g`
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  for (let i = 0; i < 12; i++) {
    const c = await openCsv(port, 'from=2024-03-01&to=2024-03-02&groupBy=team&sort=key')
    await c.firstChunk
    c.abort()
  }
  await new Promise((resolve) => setTimeout(resolve, 1500))
  t.same((await pgBackends(sql)).filter((b) => b.state !== 'idle'), [], 'no cursor left open')
  const later = await Promise.race([
    app.inject({ url: `${PREFIX}/reports/spend?from=2024-03-01&to=2024-03-02&groupBy=team&limit=1`, headers: AUTH }).then((r) => r.statusCode),
    new Promise((resolve) => setTimeout(() => resolve('timed out after 10 s'), 10_000))
  ])
  t.equal(later, 200)
})

t.test('a gate call on a budget below the team from a caller that names no team counts toward the team\'s status, and is in the report\'s null team (docs/reports.md)', async (t) => {
  const { buildGateway } = await import('./fixtures/gateway.js')
  const { app, createBudget, call, settled } = await buildGateway(t)
  const team = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '500' })
  await createBudget({ scopeType: 'user', scopeId: 'alice', parentId: team.id, amount: '100' })
  await createBudget({ scopeType: 'project', scopeId: 'search', parentId: team.id, amount: '100' })
  const callers: Array<Record<string, string>> = [
    { team: 'platform', user: 'alice' },
    { user: 'alice' }, // alice's budget, below the team, no team header
    { project: 'search' }, // the project's budget, below the team, no team header
    { team: 'platform', user: 'carol' }
  ]
  for (const scopes of callers) {
    const r = await call(scopes, { max_tokens: 20 })
    t.equal(r.statusCode, 200, JSON.stringify(scopes))
  }
  await settled()
  const status = (await app.inject({ url: `${PREFIX}/${team.id}/status`, headers: AUTH })).json()
  const report = (await app.inject({ url: `${PREFIX}/reports/spend?groupBy=team&from=${status.periodStart as string}&to=${status.periodEnd as string}`, headers: AUTH })).json()
  const groups = report.groups.map((g: { key: string | null, calls: number }) => [g.key, g.calls])
  t.same(groups, [['platform', 2], [null, 2]], 'the two calls that named the team are its row; the two that named none are the null row')
  const sum = report.groups.reduce((total: bigint, g: { total: string }) => total + toUnits(g.total), 0n)
  t.equal(fromUnits(sum), status.currentAmount, 'together they are exactly the team\'s status')
})

t.test('holds: team total vs status when the team\'s caller also has a user budget that is not below the team', async (t) => {
  const { buildGateway } = await import('./fixtures/gateway.js')
  const { app, createBudget, call, settled } = await buildGateway(t)
  const team = await createBudget({ scopeType: 'team', scopeId: 'platform', amount: '500' })
  await createBudget({ scopeType: 'user', scopeId: 'alice', amount: '100' }) // no parent
  for (const scopes of [{ team: 'platform', user: 'alice' }, { team: 'platform', user: 'carol' }]) {
    const r = await call(scopes, { max_tokens: 20 })
    t.equal(r.statusCode, 200, JSON.stringify(scopes))
  }
  await settled()
  const status = (await app.inject({ url: `${PREFIX}/${team.id}/status`, headers: AUTH })).json()
  const report = (await app.inject({ url: `${PREFIX}/reports/spend?groupBy=team&from=${status.periodStart as string}&to=${status.periodEnd as string}`, headers: AUTH })).json()
  const platform = report.groups.find((g: { key: string | null }) => g.key === 'platform')
  t.equal(platform?.total, status.currentAmount, `platform's report total equals its status (calls ${platform?.calls as number})`)
})

t.test('preset=this-month holds now when local midnight on the 1st is repeated by a daylight-saving change (America/Havana, 2026-11-01 04:00-05:00Z)', async (t) => {
  const { sql } = await buildApp(t)
  const { createReportRepository } = await import('../lib/reports/report-repository.js')
  const repo = createReportRepository(sql as never)
  const zones = ['UTC', 'Europe/Paris', 'America/New_York', 'America/Havana', 'America/Santiago', 'Asia/Beirut', 'America/Asuncion', 'Australia/Lord_Howe', 'Pacific/Chatham', 'Asia/Kathmandu', 'Pacific/Kiritimati', 'Pacific/Apia', 'America/Scoresbysund']
  const bad: string[] = []
  await fc.assert(fc.asyncProperty(fc.constantFrom(...zones), fc.integer({ min: Date.UTC(2020, 0, 1), max: Date.UTC(2030, 0, 1) }), fc.constantFrom('this-week', 'this-month'), async (zone, ms, preset) => {
    const now = new Date(ms)
    const w = await repo.presetWindow(preset as never, zone, now)
    if (!(w.from.getTime() <= ms && ms < w.to.getTime())) bad.push(`${preset} ${zone} now=${now.toISOString()} from=${w.from.toISOString()} to=${w.to.toISOString()}`)
    const last = await repo.presetWindow(preset.replace('this', 'last') as never, zone, now)
    if (last.to.getTime() !== w.from.getTime()) bad.push(`last-* does not end where this-* starts: ${zone} ${now.toISOString()}`)
    return true
  }), { numRuns: 300 })
  // the instants around each zone's changes near midnight (2026), and month/year starts
  for (const zone of zones) {
    const changes = await sql`
      select t from generate_series('2025-12-31T00:00Z'::timestamptz, '2027-01-02T00:00Z'::timestamptz, interval '15 minutes') t
      where extract(hour from t at time zone ${zone}) in (23, 0, 1) and (extract(day from t at time zone ${zone}) = 1 or extract(isodow from t at time zone ${zone}) in (1, 7))
        and (t at time zone ${zone}) - ((t - interval '15 minutes') at time zone ${zone}) <> interval '15 minutes'` as unknown as Array<{ t: Date }>
    for (const { t: at } of changes) {
      for (const delta of [-60, -30, -15, -1, 0, 1, 15, 30, 59, 60, 90]) {
        const now = new Date(at.getTime() + delta * 60_000)
        for (const preset of ['this-week', 'this-month']) {
          const w = await repo.presetWindow(preset as never, zone, now)
          if (!(w.from <= now && now < w.to)) bad.push(`${preset} ${zone} now=${now.toISOString()} from=${w.from.toISOString()} to=${w.to.toISOString()}`)
        }
      }
    }
  }
  t.same([...new Set(bad)].slice(0, 10), [], 'every this-week/this-month window holds now')
})

t.test('holds: a record no budget covered is in every groupBy; CSV truncation headers', async (t) => {
  const { app, sql } = await buildApp(t)
  await unbudgeted(sql, '0.0000001', '2024-03-01T23:30:00Z', { organizationId: 'o', teamId: 'tm', userId: 'u', projectId: 'p', modelId: 'm', tags: { f: 'v' } })
  await unbudgeted(sql, '0.0000002', '2024-03-01T12:00:00Z', { teamId: 'tm2', modelId: 'm2' })
  const expected: Record<string, string | null> = { scope: null, organization: 'o', team: 'tm', user: 'u', project: 'p', model: 'm', 'day&timeZone=Asia/Tokyo': '2024-03-02', 'tag&tagKey=f': 'v' }
  for (const [groupBy, key] of Object.entries(expected)) {
    const r = (await app.inject({ url: `${PREFIX}/reports/spend?from=2024-03-01&to=2024-03-02&groupBy=${groupBy}`, headers: AUTH })).json()
    t.ok(r.groups.some((g: { key: string | null, total: string }) => g.key === key && (g.total === '0.0000001' || g.total === '0.0000003')), `${groupBy}: ${JSON.stringify(r.groups)}`)
  }
  const csv = await app.inject({ url: `${PREFIX}/reports/spend?from=2024-03-01&to=2024-03-02&groupBy=team&limit=1`, headers: { ...AUTH, accept: 'text/csv' } })
  t.equal(csv.headers['x-report-truncated'], 'true')
  t.same(parseCsv(csv.body), [['team', 'currency', 'total', 'calls', 'inputTokens', 'outputTokens'], ['tm2', 'USD', '0.0000002', '1', '0', '0']])
})
