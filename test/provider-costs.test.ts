// The providers' cost report collectors (lib/provider-costs/), run against local servers that speak OpenAI's
// Costs API and Anthropic's cost report: paging, a bucket corrected after it was collected (replaced and
// audited), a 429 with retry-after, a 5xx, a malformed page (nothing of it stored, the next run resumes at it),
// and amounts kept exactly, long decimals and exponents included.
import t from 'tap'
import { isDeepStrictEqual } from 'node:util'
import fc from 'fast-check'
import type { Sql } from 'postgres'
import { buildApp, PREFIX, type TestApp } from './fixtures/app.js'
import { anthropicPage, openAiPage, startCostReportServer, type CostReportServer } from './fixtures/cost-report-server.js'
import { exactDecimal, parseExactJson, JsonNumber, shiftDecimal } from '../lib/kernel/exact-json.js'
import type { BudgetsOptions } from '../lib/index.js'

const RETRY = { backoffMs: 10, maxRetryAfterMs: 3000, serverErrorRetries: 2, rateLimitRetries: 3 }

async function collect (app: TestApp) {
  const response = await app.admin({ method: 'POST', url: `${PREFIX}/provider-costs/collect` })
  if (response.statusCode !== 200) throw new Error(`collect answered ${response.statusCode}: ${response.body}`)
  return response.json<{ collectors: Array<{ source: string, status: string, pages: number, inserted: number, corrected: number, unchanged: number, error?: string }> }>().collectors
}

async function stored (sql: Sql, source: string) {
  return await sql<Array<{ date: string, project: string, lineItem: string, model: string, tokenType: string, amount: string, correctedAt: Date | null }>>`
    select bucket_date::text as date, project, line_item as "lineItem", model, token_type as "tokenType", amount::text as amount, corrected_at as "correctedAt"
    from budget_provider_costs where source = ${source} order by bucket_date, project, line_item, token_type`
}

async function cursorOf (sql: Sql, source: string) {
  const [row] = await sql<Array<{ nextPage: string | null, lastError: string | null, completed: boolean }>>`
    select next_page as "nextPage", last_error as "lastError", completed_through is not null as completed from budget_provider_cost_cursors where source = ${source}`
  return row
}

async function openAiApp (t: { teardown: (fn: () => unknown) => void }, server: CostReportServer, extra: Partial<BudgetsOptions> = {}) {
  return await buildApp(t, { providerCosts: { openai: { adminKey: 'sk-admin-test', organization: 'org-test', baseUrl: server.url, intervalMs: 0 }, retry: RETRY }, ...extra })
}

t.test('exact numbers: a JSON number becomes the decimal it spells, digit for digit', async (t) => {
  const cases: Array<[string, string | null]> = [
    ['0.1234567890123456789', '0.1234567890123456789'], ['1e-7', '0.0000001'], ['1E-7', '0.0000001'], ['2.5e+3', '2500'], ['0.06356999999999999', '0.06356999999999999'],
    ['123456789012345678901234567890.123456789', '123456789012345678901234567890.123456789'], ['-0.000', '0'], ['-1.50', '-1.5'], ['0', '0'], ['100', '100'],
    ['1.000000000000000000000000000001e2', '100.0000000000000000000000000001'], ['9.99e-30', '0.00000000000000000000000000000999'],
    ['1e400', null], ['1e-400', null], ['0e999999999', '0'], ['1e41', null]
  ]
  for (const [text, expected] of cases) t.equal(exactDecimal(text), expected, text)
  t.equal(shiftDecimal('123.78912', 2), '1.2378912', 'cents to dollars')
  t.equal(shiftDecimal('5', 2), '0.05')
  t.equal(shiftDecimal('-0.5', 2), '-0.005')
  const parsed = parseExactJson('{"value":0.1234567890123456789,"tiny":1e-7,"list":[1,{"x":null}],"s":"\\u00e9"}') as Record<string, unknown>
  t.same((parsed.value as JsonNumber).text, '0.1234567890123456789', 'the number as written, not the double JSON.parse would make')
  t.same((parsed.tiny as JsonNumber).text, '1e-7')
  t.equal(parsed.s, 'é')

  // Against JSON.parse: the same structure for any JSON value, and the same refusals for any text.
  const strip = (value: unknown): unknown => value instanceof JsonNumber ? Number(value.text)
    : Array.isArray(value) ? value.map(strip)
      : value !== null && typeof value === 'object' ? Object.fromEntries(Object.entries(value).map(([key, item]) => [key, strip(item)])) : value
  fc.assert(fc.property(fc.jsonValue({ maxDepth: 5 }), (value) => {
    const text = JSON.stringify(value)
    return isDeepStrictEqual(strip(parseExactJson(text)), JSON.parse(text))
  }), { numRuns: 300 })
  fc.assert(fc.property(fc.string({ maxLength: 30 }), (text) => {
    let native = true
    try { JSON.parse(text) } catch { native = false }
    let exact = true
    try { parseExactJson(text) } catch { exact = false }
    return native === exact
  }), { numRuns: 2000 })
  // Any decimal with an exponent: its digits shifted by the exponent, checked with bigint arithmetic.
  fc.assert(fc.property(fc.bigInt({ min: -(10n ** 30n), max: 10n ** 30n }), fc.integer({ min: -30, max: 9 }), (digits, exponent) => {
    const written = exactDecimal(`${digits}e${exponent}`)
    if (written === null) return true
    const [whole = '', fraction = ''] = written.replace('-', '').split('.')
    const units = BigInt(whole + fraction.padEnd(40, '0')) * (written.startsWith('-') ? -1n : 1n)
    const expected = exponent >= 0 ? digits * 10n ** BigInt(exponent + 40) : digits * 10n ** BigInt(40 + exponent)
    return units === expected
  }), { numRuns: 500 })
})

t.test('OpenAI: pages through the report, stores each bucket once with its exact amount', async (t) => {
  const server = await startCostReportServer(t)
  server.pages.set('', openAiPage([{ day: '2026-01-01', results: [
    { project: 'proj_a', lineItem: 'gpt-4o, input', value: '0.1234567890123456789' },
    { project: 'proj_a', lineItem: 'gpt-4o, output', value: '1e-7' },
    { project: null, lineItem: null, value: '12' }
  ] }], 'page_2'))
  server.pages.set('page_2', openAiPage([{ day: '2026-01-02', results: [{ project: 'proj_b', lineItem: 'embeddings', value: '3.0E+2' }] }], 'page_3'))
  server.pages.set('page_3', openAiPage([{ day: '2026-01-03', results: [{ project: 'proj_b', lineItem: 'embeddings', value: '0.06356999999999999' }] }], null))
  const app = await openAiApp(t, server)

  const [outcome] = await collect(app)
  t.match(outcome, { source: 'openai', status: 'completed', pages: 3, inserted: 5, corrected: 0, unchanged: 0 })
  t.same((await stored(app.sql, 'openai')).map(({ date, project, lineItem, amount }) => [date, project, lineItem, amount]), [
    ['2026-01-01', '', '', '12'],
    ['2026-01-01', 'proj_a', 'gpt-4o, input', '0.1234567890123456789'],
    ['2026-01-01', 'proj_a', 'gpt-4o, output', '0.0000001'],
    ['2026-01-02', 'proj_b', 'embeddings', '300'],
    ['2026-01-03', 'proj_b', 'embeddings', '0.06356999999999999']
  ], 'the amounts as the provider wrote them: no digit lost to a double')
  const [sum] = await app.sql<Array<{ exact: boolean }>>`select sum(amount) = 312.1870268890123456689::numeric as exact from budget_provider_costs`
  t.ok(sum!.exact, 'summed exactly in SQL')

  const [first, second, third] = server.requests
  t.equal(first!.url.pathname, '/v1/organization/costs')
  t.equal(first!.headers.authorization, 'Bearer sk-admin-test')
  t.equal(first!.headers['openai-organization'], 'org-test')
  t.same(first!.url.searchParams.getAll('group_by[]'), ['project_id', 'line_item'])
  t.equal(first!.url.searchParams.get('bucket_width'), '1d')
  t.equal(first!.url.searchParams.get('page'), null, 'the first page without a cursor')
  const start = Number(first!.url.searchParams.get('start_time'))
  const end = Number(first!.url.searchParams.get('end_time'))
  const today = Math.floor(Date.now() / 86_400_000) * 86_400
  t.equal(start, today - 3 * 86_400, 'the last three days (lookbackDays) and today')
  t.equal(end, today + 86_400)
  t.equal(second!.url.searchParams.get('page'), 'page_2')
  t.equal(third!.url.searchParams.get('page'), 'page_3')
  t.equal(second!.url.searchParams.get('start_time'), String(start), 'the same window on every page')

  const again = await collect(app)
  t.match(again[0], { status: 'completed', pages: 3, inserted: 0, corrected: 0, unchanged: 5 }, 'collected twice: stored once')
  t.equal((await app.sql`select count(*)::int as n from budget_provider_costs`)[0]!.n, 5)
  t.equal((await app.sql`select count(*)::int as n from budget_audit_log`)[0]!.n, 0, 'nothing to audit')
})

t.test('OpenAI: a bucket the provider corrects is replaced, and the audit log keeps the old amount', async (t) => {
  const server = await startCostReportServer(t)
  server.pages.set('', openAiPage([{ day: '2026-02-01', results: [{ project: 'proj_a', lineItem: 'gpt-4o, input', value: '1.10' }, { project: 'proj_a', lineItem: 'gpt-4o, output', value: '2' }] }], null))
  const app = await openAiApp(t, server)
  t.match((await collect(app))[0], { inserted: 2 })
  const [before] = await app.sql<Array<{ id: string, collectedAt: Date }>>`select id::text as id, collected_at as "collectedAt" from budget_provider_costs where line_item = 'gpt-4o, input'`

  server.pages.set('', openAiPage([{ day: '2026-02-01', results: [{ project: 'proj_a', lineItem: 'gpt-4o, input', value: '1.1' }, { project: 'proj_a', lineItem: 'gpt-4o, output', value: '2.000000000000000000001' }] }], null))
  t.match((await collect(app))[0], { inserted: 0, corrected: 1, unchanged: 1 }, '1.10 and 1.1 are the same amount; 2 and 2.000000000000000000001 are not')
  const rows = await stored(app.sql, 'openai')
  t.same(rows.map((row) => row.amount), ['1.1', '2.000000000000000000001'])
  t.equal(rows[0]!.correctedAt, null, 'the unchanged bucket was not touched')
  t.not(rows[1]!.correctedAt, null)
  const [unchanged] = await app.sql<Array<{ id: string, collectedAt: Date }>>`select id::text as id, collected_at as "collectedAt" from budget_provider_costs where line_item = 'gpt-4o, input'`
  t.same(unchanged, before, 'same row, same collected_at')

  const audit = (await app.admin({ url: `${PREFIX}/audit` })).json<{ entries: Array<Record<string, unknown>> }>().entries
  t.equal(audit.length, 1)
  t.match(audit[0], {
    budgetId: null, action: 'correct-provider-cost', actor: 'collector:openai', changes: ['amount'],
    before: { source: 'openai', account: 'org-test', date: '2026-02-01', project: 'proj_a', lineItem: 'gpt-4o, output', currency: 'USD', amount: '2' },
    after: { amount: '2.000000000000000000001' }
  })
})

t.test('OpenAI: a 429 waits what retry-after asks; a 5xx is tried again; then the page is stored', async (t) => {
  const server = await startCostReportServer(t)
  server.pages.set('', openAiPage([{ day: '2026-03-01', results: [{ project: 'p', lineItem: 'x', value: '5' }] }], 'next'))
  server.pages.set('next', openAiPage([{ day: '2026-03-02', results: [{ project: 'p', lineItem: 'x', value: '6' }] }], null))
  server.faults.push({ status: 429, headers: { 'retry-after': '1' } }, { status: 503 })
  const app = await openAiApp(t, server)
  const [outcome] = await collect(app)
  t.match(outcome, { status: 'completed', pages: 2, inserted: 2 })
  const [limited, failed, served] = server.requests
  t.ok(failed!.at - limited!.at >= 950, `waited ${failed!.at - limited!.at} ms after the 429's retry-after: 1`)
  t.ok(served!.at >= failed!.at, 'then the 5xx was tried again')
  t.equal(server.requests.length, 4)
})

t.test('OpenAI: a run that fails stores nothing of the failed page, and the next run resumes at it', async (t) => {
  const server = await startCostReportServer(t)
  server.pages.set('', openAiPage([{ day: '2026-04-01', results: [{ project: 'p', lineItem: 'a', value: '1' }] }], 'second'))
  server.pages.set('second', openAiPage([{ day: '2026-04-02', results: [{ project: 'p', lineItem: 'a', value: '2' }] }], 'third'))
  server.pages.set('third', openAiPage([{ day: '2026-04-03', results: [{ project: 'p', lineItem: 'a', value: '3' }] }], null))
  const app = await openAiApp(t, server)

  // A 5xx on the second page, past every retry (1 try + 2 retries).
  server.faults.push({ status: 200, body: server.pages.get('')! }, { status: 502 }, { status: 500 }, { status: 503 })
  let [outcome] = await collect(app)
  t.match(outcome, { status: 'failed', pages: 1, inserted: 1, error: /503/ })
  t.same((await stored(app.sql, 'openai')).map((row) => row.amount), ['1'], 'the first page stayed stored')
  t.match(await cursorOf(app.sql, 'openai'), { nextPage: 'second', lastError: /503/ }, 'the cursor at the failed page')

  // A 429 asking for longer than the bound: the run ends there, the cursor where it was.
  server.faults.push({ status: 429, headers: { 'retry-after': '3600' } })
  ;[outcome] = await collect(app)
  t.match(outcome, { status: 'failed', pages: 0, error: /retry-after/ })
  t.equal(server.requests.at(-1)!.url.searchParams.get('page'), 'second', 'resumed at the failed page')

  // A malformed page: its good rows are not stored either.
  const malformed = [
    'not json', '{"object":"page","data":{},"has_more":false}',
    '{"object":"page","data":[{"start_time":1775088000,"results":[{"amount":{"value":"2","currency":"usd"}}]}],"has_more":false,"next_page":null}',
    '{"object":"page","data":[{"start_time":1775088000,"results":[{"amount":{"value":7,"currency":"usd"},"project_id":"p","line_item":"a"},{"amount":{"value":1e999,"currency":"usd"}}]}],"has_more":false,"next_page":null}',
    '{"object":"page","data":[{"start_time":1775088001,"results":[]}],"has_more":false,"next_page":null}',
    '{"object":"page","data":[{"start_time":1775088000,"results":[{"amount":{"value":7,"currency":"dollars"}}]}],"has_more":false,"next_page":null}',
    '{"object":"page","data":[{"start_time":1775088000,"results":[{"amount":{"value":7,"currency":"usd"},"project_id":"p","line_item":"a"},{"amount":{"value":8,"currency":"usd"},"project_id":"p","line_item":"a"}]}],"has_more":false,"next_page":null}',
    '{"object":"page","data":[],"has_more":true,"next_page":null}',
    `{"object":"page","data":[],"has_more":false,"next_page":null}${' '.repeat(3)}x`
  ]
  for (const body of malformed) {
    server.faults.push({ status: 200, body })
    ;[outcome] = await collect(app)
    t.match(outcome, { status: 'failed', pages: 0, inserted: 0, error: /malformed/ }, body.slice(0, 60))
    t.same((await stored(app.sql, 'openai')).map((row) => row.amount), ['1'], 'nothing of it stored')
    t.match(await cursorOf(app.sql, 'openai'), { nextPage: 'second' })
  }

  ;[outcome] = await collect(app)
  t.match(outcome, { status: 'completed', pages: 2, inserted: 2 }, 'the next run resumes at the failed page and reads to the end')
  t.equal(server.requests.at(-2)!.url.searchParams.get('page'), 'second')
  t.same((await stored(app.sql, 'openai')).map((row) => row.amount), ['1', '2', '3'])
  t.match(await cursorOf(app.sql, 'openai'), { nextPage: null, lastError: null, completed: true })

  ;[outcome] = await collect(app)
  t.match(outcome, { status: 'completed', pages: 3, unchanged: 3 }, 'a new run reads its window from the first page')

  // A page token the provider refuses (expired): that run fails, and the next one starts the window again.
  server.faults.push({ status: 200, body: server.pages.get('')! }, { status: 400, body: '{"error":{"message":"invalid page"}}' })
  ;[outcome] = await collect(app)
  t.match(outcome, { status: 'failed', pages: 1, error: /400/ })
  t.match(await cursorOf(app.sql, 'openai'), { nextPage: null, lastError: /400/ })
  const asked = server.requests.length
  ;[outcome] = await collect(app)
  t.match(outcome, { status: 'completed', pages: 3, unchanged: 3 })
  t.equal(server.requests[asked]!.url.searchParams.get('page'), null, 'from the first page')
})

t.test('Anthropic: pages through the cost report, cents read as exact dollars, corrections audited', async (t) => {
  const server = await startCostReportServer(t)
  server.pages.set('', anthropicPage([{ day: '2026-05-01', results: [
    { workspace: 'wrkspc_01', description: 'Claude Sonnet 4 Usage - Input Tokens', amount: '123.78912' },
    { workspace: null, description: 'Claude Sonnet 4 Usage - Output Tokens', amount: '0.0000000000000000001', tokenType: 'output_tokens' }
  ] }], 'page_MjAyNS0wNS0xNFQwMDowMDowMFo='))
  server.pages.set('page_MjAyNS0wNS0xNFQwMDowMDowMFo=', anthropicPage([{ day: '2026-05-02', results: [
    { workspace: 'wrkspc_01', description: 'Web Search', amount: '1000', costType: 'web_search', model: null, tokenType: null }
  ] }], null))
  const app = await buildApp(t, { providerCosts: { anthropic: { adminKey: 'sk-ant-admin01-test', baseUrl: server.url, intervalMs: 0, lookbackDays: 5 }, retry: RETRY } })

  const [outcome] = await collect(app)
  t.match(outcome, { source: 'anthropic', status: 'completed', pages: 2, inserted: 3 })
  t.same((await stored(app.sql, 'anthropic')).map(({ date, project, lineItem, model, tokenType, amount }) => [date, project, lineItem, model, tokenType, amount]), [
    ['2026-05-01', '', 'Claude Sonnet 4 Usage - Output Tokens', 'claude-sonnet-4-20250514', 'output_tokens', '0.000000000000000000001'],
    ['2026-05-01', 'wrkspc_01', 'Claude Sonnet 4 Usage - Input Tokens', 'claude-sonnet-4-20250514', 'uncached_input_tokens', '1.2378912'],
    ['2026-05-02', 'wrkspc_01', 'Web Search', '', '', '10']
  ], 'cents divided by 100 exactly; the default workspace is \'\'')
  const [first, second] = server.requests
  t.equal(first!.url.pathname, '/v1/organizations/cost_report')
  t.equal(first!.headers['x-api-key'], 'sk-ant-admin01-test')
  t.equal(first!.headers['anthropic-version'], '2023-06-01')
  t.same(first!.url.searchParams.getAll('group_by[]'), ['workspace_id', 'description'])
  const today = new Date(Math.floor(Date.now() / 86_400_000) * 86_400_000)
  t.equal(first!.url.searchParams.get('starting_at'), new Date(today.getTime() - 5 * 86_400_000).toISOString().replace('.000Z', 'Z'), 'RFC 3339, lookbackDays 5')
  t.equal(first!.url.searchParams.get('ending_at'), new Date(today.getTime() + 86_400_000).toISOString().replace('.000Z', 'Z'))
  t.equal(second!.url.searchParams.get('page'), 'page_MjAyNS0wNS0xNFQwMDowMDowMFo=')

  server.pages.set('page_MjAyNS0wNS0xNFQwMDowMDowMFo=', anthropicPage([{ day: '2026-05-02', results: [
    { workspace: 'wrkspc_01', description: 'Web Search', amount: '1000.5', costType: 'web_search', model: null, tokenType: null }
  ] }], null))
  t.match((await collect(app))[0], { inserted: 0, corrected: 1, unchanged: 2 })
  const audit = (await app.admin({ url: `${PREFIX}/audit` })).json<{ entries: Array<Record<string, unknown>> }>().entries
  t.match(audit, [{ action: 'correct-provider-cost', actor: 'collector:anthropic', before: { lineItem: 'Web Search', costType: 'web_search', amount: '10' }, after: { amount: '10.005' } }])

  // A malformed page (an amount that is a JSON number, not the documented decimal string).
  server.faults.push({ status: 200, body: '{"data":[{"starting_at":"2026-05-03T00:00:00Z","results":[{"amount":12,"currency":"USD"}]}],"has_more":false,"next_page":null}' })
  t.match((await collect(app))[0], { status: 'failed', error: /amount/ })
  t.equal((await app.sql`select count(*)::int as n from budget_provider_costs`)[0]!.n, 3)
})

t.test('the schedule: runs on its own, one run at a time; close waits for the run under way and stops the timer', async (t) => {
  const server = await startCostReportServer(t)
  server.pages.set('', openAiPage([{ day: '2026-06-01', results: [{ project: 'p', lineItem: 'a', value: '1' }] }], null))
  const app = await buildApp(t, { providerCosts: { openai: { adminKey: 'sk-admin-test', baseUrl: server.url, intervalMs: 50 }, retry: RETRY } })
  const deadline = Date.now() + 5000
  while (server.requests.length < 3 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
  t.ok(server.requests.length >= 3, `ran on its own (${server.requests.length} runs)`)
  t.equal((await app.sql`select count(*)::int as n from budget_provider_costs`)[0]!.n, 1)

  server.delayMs = 300
  const asked = server.requests.length
  while (server.requests.length === asked) await new Promise((resolve) => setTimeout(resolve, 5))
  const twice = await Promise.all([app.admin({ method: 'POST', url: `${PREFIX}/provider-costs/collect` }), app.admin({ method: 'POST', url: `${PREFIX}/provider-costs/collect` })])
  t.same(twice.map((response) => response.statusCode), [200, 200])
  t.equal(server.requests.length, asked + 1, 'asked while a run was under way: both joined it, one request')

  server.delayMs = 200
  const closing = Date.now()
  const before = server.requests.length
  while (server.requests.length === before) await new Promise((resolve) => setTimeout(resolve, 5))
  await app.app.close()
  t.ok(Date.now() - closing < 5000, 'closed')
  const after = server.requests.length
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.equal(server.requests.length, after, 'no run after close')
})

t.test('options: a bad providerCosts option fails registration with BUDGET_ERR_OPTIONS', async (t) => {
  for (const providerCosts of [
    { openai: {} }, { openai: { adminKey: '' } }, { openai: { adminKey: 'has space' } }, { openai: { adminKey: 'k', baseUrl: 'ftp://x' } },
    { openai: { adminKey: 'k', intervalMs: -1 } }, { openai: { adminKey: 'k', intervalMs: 1.5 } }, { anthropic: { adminKey: 'k', lookbackDays: 91 } },
    { anthropic: { adminKey: 'k', apiKey: 'x' } }, { mistral: { adminKey: 'k' } }, { retry: { backoffMs: -1 } }, 'sk-admin'
  ]) {
    await t.rejects(buildApp(t, { providerCosts: providerCosts as never }), { code: 'BUDGET_ERR_OPTIONS' }, JSON.stringify(providerCosts))
  }
})
