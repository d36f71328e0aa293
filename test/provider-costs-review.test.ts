// The provider cost collectors and the CSV import against hostile providers and hostile files: redirects, unbounded
// bodies, page tokens that repeat, CSV built to hold the event loop (refused where it goes wrong), and a valid import read in slices.
import t from 'tap'
import { createHook } from 'node:async_hooks'
import { createServer, type IncomingHttpHeaders } from 'node:http'
import type { AddressInfo } from 'node:net'
import { buildApp, PREFIX } from './fixtures/app.js'
import { anthropicPage, openAiPage, startCostReportServer } from './fixtures/cost-report-server.js'
import { fetchReport, FETCH_DEFAULTS } from '../lib/provider-costs/fetch-report.js'
import { collectOnce } from '../lib/provider-costs/collector.js'
import { createProviderCostRepository } from '../lib/provider-costs/cost-repository.js'
import { openAiCostsClient } from '../lib/provider-costs/openai-costs.js'
import { FIELD_WORK, MAX_CSV_ROWS } from '../lib/provider-costs/csv-costs.js'
import { COST_CSV_BODY_LIMIT } from '../lib/http/admin/provider-costs.js'
import { SLICE_WORK } from '../lib/kernel/loop-slices.js'

const RETRY = { backoffMs: 10, maxRetryAfterMs: 3000, serverErrorRetries: 0, rateLimitRetries: 0 }
const silent = { info () {}, warn () {}, error () {}, debug () {}, trace () {}, fatal () {}, child () { return silent } } as any

async function listen (t: { teardown: (fn: () => unknown) => void }, handler: Parameters<typeof createServer>[1]) {
  const server = createServer(handler)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => { server.closeAllConnections(); await new Promise((resolve) => server.close(resolve)) })
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

t.test('a redirect from the provider is not followed: the Anthropic admin key never reaches another host', async (t) => {
  const seen: IncomingHttpHeaders[] = []
  const evil = await listen(t, (request, response) => {
    seen.push(request.headers)
    response.writeHead(200, { 'content-type': 'application/json' })
    response.end(anthropicPage([], null))
  })
  const provider = await listen(t, (request, response) => {
    response.writeHead(302, { location: `${evil.replace('127.0.0.1', 'localhost')}/steal${request.url ?? ''}` })
    response.end()
  })
  const app = await buildApp(t, { providerCosts: { anthropic: { adminKey: 'sk-ant-admin-SECRET', baseUrl: provider, intervalMs: 0 }, retry: RETRY } })
  const response = await app.admin({ method: 'POST', url: `${PREFIX}/provider-costs/collect` })
  t.equal(response.statusCode, 200)
  t.equal(seen.length, 0, 'the redirect is not followed to another origin')
  t.equal(seen[0]?.['x-api-key'], undefined, 'the admin key must not reach another host')
  t.match(response.json(), { collectors: [{ source: 'anthropic', status: 'failed', error: /302: the provider redirects to http:\/\/localhost:\d+; a redirect is not followed/ }] },
    'the run fails, naming the redirect and where it pointed')
})

t.test('a chunked page (no content-length) is read only up to maxPageBytes, then the body is cancelled', async (t) => {
  const CHUNK = Buffer.alloc(1024 * 1024, 0x20)
  const total = 200 // MiB
  let written = 0
  let finished = false
  const url = await listen(t, (_request, response) => {
    response.writeHead(200, { 'content-type': 'application/json' })
    const pump = () => {
      while (written < total) {
        written++
        if (!response.write(CHUNK)) { response.once('drain', pump); return }
      }
      response.end('{}', () => { finished = true })
    }
    response.on('close', () => {})
    pump()
  })
  const policy = { ...FETCH_DEFAULTS, maxPageBytes: 1024 * 1024, serverErrorRetries: 0, timeoutMs: 60_000 }
  const heapBefore = process.memoryUsage().rss
  let peak = heapBefore
  const probe = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss) }, 5)
  await t.rejects(fetchReport({ url, headers: {} }, policy, new AbortController().signal))
  clearInterval(probe)
  t.comment(`server wrote ${written} MiB, finished ${String(finished)}, rss grew ${Math.round((peak - heapBefore) / 1048576)} MiB`)
  t.ok(written < 16, `a 1 MiB limit should stop reading after about 1 MiB; the server got to write ${written} MiB`)
})

t.test('an error page sent chunked is read only to a small bound for its message, then the body is cancelled', async (t) => {
  const CHUNK = Buffer.alloc(1024 * 1024, 0x61)
  let written = 0
  const url = await listen(t, (_request, response) => {
    response.writeHead(403, { 'content-type': 'text/plain' })
    const pump = () => {
      while (written < 200) {
        written++
        if (!response.write(CHUNK)) { response.once('drain', pump); return }
      }
      response.end()
    }
    pump()
  })
  const policy = { ...FETCH_DEFAULTS, serverErrorRetries: 0, timeoutMs: 60_000 }
  await t.rejects(fetchReport({ url, headers: {} }, policy, new AbortController().signal), { status: 403, message: /^403: a{300}$/ })
  t.ok(written < 16, `an error body is read to a few KiB; the server got to write ${written} MiB`)
})

t.test('GET provider-costs with a day of year 0 (which PostgreSQL refuses) is a 400, not a 500', async (t) => {
  const app = await buildApp(t)
  for (const query of ['from=0000-01-01', 'to=0000-12-31']) {
    const response = await app.admin({ url: `${PREFIX}/provider-costs?${query}` })
    t.ok(response.statusCode < 500, `${query}: ${response.statusCode} ${response.body}`)
  }
})

t.test('a next_page token that repeats fails its page at once, so no run asks the provider for it over and over', async (t) => {
  const server = await startCostReportServer(t)
  server.pages.set('', openAiPage([{ day: '2026-01-01', results: [{ project: 'p', lineItem: 'x', value: '1' }] }], 'loop'))
  server.pages.set('loop', openAiPage([{ day: '2026-01-02', results: [{ project: 'p', lineItem: 'x', value: '1' }] }], 'loop'))
  const app = await buildApp(t)
  const repository = createProviderCostRepository(app.sql)
  const client = openAiCostsClient({ adminKey: 'sk-admin-x', baseUrl: server.url })
  const options = { schedule: { lookbackDays: 3, maxCatchUpDays: 90, maxPagesPerRun: 50 }, fetch: { ...FETCH_DEFAULTS, ...RETRY }, now: () => new Date(), signal: new AbortController().signal, log: silent }
  const outcomes = []
  for (let run = 0; run < 4; run++) outcomes.push(await collectOnce(client, repository, options))
  t.comment(outcomes.map((o) => `${o.status} pages=${o.pages} ${o.error ?? ''}`).join('\n'))
  t.comment(`requests to the provider: ${server.requests.length}, of which for page=loop: ${server.requests.filter((r) => r.url.searchParams.get('page') === 'loop').length}`)
  const [cursor] = await app.sql`select next_page, completed_through from budget_provider_cost_cursors`
  const detected = outcomes.every((o) => o.status === 'failed' && o.pages === 1 && /malformed: next_page repeats the token 'loop'/.test(o.error ?? ''))
  t.ok(outcomes.some((o) => o.status === 'completed') || cursor!.completed_through !== null || detected,
    'a token that repeats itself should end the window (or be detected), not hold the collector on it forever')
  t.equal(server.requests.filter((r) => r.url.searchParams.get('page') === 'loop').length, 4, 'each run asks for the repeated token once')
  t.equal(cursor!.next_page, null, 'the next run starts the window anew, not at the repeated token')
  t.equal((await app.sql`select count(*)::int as n from budget_provider_costs`)[0]!.n, 1, 'nothing of the page that repeats its token is stored')
})

t.test('a next_page token that leads back to an earlier page of the run fails that page too', async (t) => {
  const server = await startCostReportServer(t)
  const day = (d: string) => [{ day: d, results: [{ project: 'p', lineItem: 'x', value: '1' }] }]
  server.pages.set('', openAiPage(day('2026-01-01'), 'a'))
  server.pages.set('a', openAiPage(day('2026-01-02'), 'b'))
  server.pages.set('b', openAiPage(day('2026-01-03'), 'a'))
  const app = await buildApp(t)
  const options = { schedule: { lookbackDays: 3, maxCatchUpDays: 90, maxPagesPerRun: 50 }, fetch: { ...FETCH_DEFAULTS, ...RETRY }, now: () => new Date(), signal: new AbortController().signal, log: silent }
  const outcome = await collectOnce(openAiCostsClient({ adminKey: 'sk-admin-x', baseUrl: server.url }), createProviderCostRepository(app.sql), options)
  t.match(outcome, { status: 'failed', pages: 2, error: /next_page repeats the token 'a'/ })
  t.equal(server.requests.length, 3, 'the pages of the first, a and b, once each')
})

// The hostile lines fill the import's body limit. What they must not do is make the reader scan past the
// point where the line is already wrong: the refusal names the character of the line the scan stopped at,
// so the tests check where it stopped, not how long it took (timing belongs in bench/cost-import-stall.ts).
const FULL_HEADER = 'date,provider,account,project,model,line_item,amount,currency\n'

t.test('a CSV line of 1M empty fields is refused at its 9th field, the scan stopping there', async (t) => {
  const app = await buildApp(t)
  const body = FULL_HEADER + ','.repeat(COST_CSV_BODY_LIMIT - FULL_HEADER.length - 10) + '\n'
  const response = await app.admin({ method: 'POST', url: `${PREFIX}/provider-costs/import`, payload: body, headers: { 'content-type': 'text/csv' } })
  t.equal(response.statusCode, 400, response.body.slice(0, 300))
  t.match(response.json(), { code: 'BUDGET_ERR_COST_CSV_INVALID', field: 'line 2' })
  t.equal(response.json().message, 'Invalid cost CSV, line 2: more than 8 fields where the header names 8 (refused at the 9th, which starts at character 9 of the line)',
    'the 9th field is where the line went wrong; the scan read its 8 commas and no more of the million')
})

t.test('a quoted CSV field of 0.5M doubled quotes is refused at its 513th character, the scan stopping there', async (t) => {
  const app = await buildApp(t)
  const body = FULL_HEADER + '"' + '""'.repeat((COST_CSV_BODY_LIMIT - FULL_HEADER.length - 10) / 2) + '"\n'
  t.ok(body.length <= COST_CSV_BODY_LIMIT)
  const response = await app.admin({ method: 'POST', url: `${PREFIX}/provider-costs/import`, payload: body, headers: { 'content-type': 'text/csv' } })
  t.equal(response.statusCode, 400, response.body.slice(0, 300))
  t.match(response.json(), { code: 'BUDGET_ERR_COST_CSV_INVALID', field: 'line 2' })
  // The opening quote, then 513 doubled quotes: the 513th character of the field ends at character 1 + 2 × 513.
  t.equal(response.json().message, 'Invalid cost CSV, line 2: field 1 is longer than 512 characters (refused at its 513th character, character 1027 of the line)',
    'the 513th character is where the field went wrong; the scan read 1027 characters of the line and no more')
})

t.test('a valid 10,000-line CSV of 1 MiB is read in slices: the import gives the loop a turn between slices of 64 lines', async (t) => {
  const app = await buildApp(t)
  const header = 'date,provider,account,project,model,line_item,amount,currency\n'
  const line = (index: number) => `2024-07-01,mistral,acme,project-${index},model-${'m'.repeat(15)},line-${'l'.repeat(20)},${index}.123456789,USD`
  const body = header + Array.from({ length: MAX_CSV_ROWS }, (_, index) => line(index)).join('\n') + '\n'
  t.ok(body.length <= COST_CSV_BODY_LIMIT && body.length > COST_CSV_BODY_LIMIT * 0.9, `a file near the body limit (${body.length} bytes)`)
  // The reader counts FIELD_WORK a field and yields when a slice's SLICE_WORK is spent (or its time is, sooner):
  // a file of MAX_CSV_ROWS lines of 8 fields yields at least once per SLICE_WORK / (8 × FIELD_WORK) lines.
  // A yield is a setImmediate, whose callback runs in the next turn of the loop. Counted are the immediates the
  // import schedules, not the turns of a setImmediate probe: a probe spins while the database answers (some
  // 100,000 turns here), so it counts the import's waits, whether or not its reading is sliced.
  const linesPerSlice = SLICE_WORK / (8 * FIELD_WORK)
  const atLeast = Math.floor(MAX_CSV_ROWS / linesPerSlice)
  let yields = 0
  const hook = createHook({ init (_id, type) { if (type === 'Immediate') yields++ } })
  hook.enable()
  const response = await app.admin({ method: 'POST', url: `${PREFIX}/provider-costs/import`, payload: body, headers: { 'content-type': 'text/csv' } }).finally(() => hook.disable())
  t.equal(response.statusCode, 200, response.body.slice(0, 200))
  t.same(response.json(), { rows: MAX_CSV_ROWS, inserted: MAX_CSV_ROWS, corrected: 0, unchanged: 0 })
  t.ok(yields >= atLeast, `the import gave the loop ${yields} turns (setImmediate); slices of ${linesPerSlice} lines give at least ${atLeast}`)
})

t.test('three collectors on one database store each page once; a hung provider, a dripping body and a far retry-after end the request', async (t) => {
  const server = await startCostReportServer(t)
  server.pages.set('', openAiPage([{ day: '2026-01-01', results: [{ project: 'p', lineItem: 'x', value: '1.5' }] }], 'p2'))
  server.pages.set('p2', openAiPage([{ day: '2026-01-02', results: [{ project: 'p', lineItem: 'x', value: '-0.0000000000000000000000000000000000000001' }] }], null))
  server.delayMs = 30
  const app = await buildApp(t)
  const options = { schedule: { lookbackDays: 3, maxCatchUpDays: 90, maxPagesPerRun: 50 }, fetch: { ...FETCH_DEFAULTS, ...RETRY }, now: () => new Date(), signal: new AbortController().signal, log: silent }
  const one = () => collectOnce(openAiCostsClient({ adminKey: 'sk-admin-x', baseUrl: server.url }), createProviderCostRepository(app.sql), options)
  const outcomes = await Promise.all([one(), one(), one()])
  t.comment(outcomes.map((o) => `${o.status} ${o.pages} ${o.inserted} ${o.error ?? ''}`).join(' | '))
  const rows = await app.sql`select amount::text as amount from budget_provider_costs order by bucket_date`
  t.same(rows.map((r) => r.amount), ['1.5', '-0.0000000000000000000000000000000000000001'])
  t.equal((await app.sql`select count(*)::int as n from budget_audit_log`)[0]!.n, 0)
  const again = await one()
  t.match(again, { status: 'completed', unchanged: 2, inserted: 0 })

  const hung = await listen(t, () => {})
  const started = Date.now()
  await t.rejects(fetchReport({ url: hung, headers: {} }, { ...FETCH_DEFAULTS, timeoutMs: 300, serverErrorRetries: 0 }, new AbortController().signal))
  t.ok(Date.now() - started < 2000, 'timed out')
  const drip = await listen(t, (_request, response) => { response.writeHead(200); const timer = setInterval(() => response.write(' '), 50); response.on('close', () => clearInterval(timer)) })
  await t.rejects(fetchReport({ url: drip, headers: {} }, { ...FETCH_DEFAULTS, timeoutMs: 300, serverErrorRetries: 0 }, new AbortController().signal), 'a body that drips forever times out too')
  for (const retryAfter of ['999999999', new Date(Date.now() + 1e12).toUTCString()]) {
    const limited = await listen(t, (_request, response) => { response.writeHead(429, { 'retry-after': retryAfter }); response.end('{}') })
    const at = Date.now()
    await t.rejects(fetchReport({ url: limited, headers: {} }, { ...FETCH_DEFAULTS, rateLimitRetries: 5 }, new AbortController().signal))
    t.ok(Date.now() - at < 1000, `retry-after ${retryAfter}: refused at once`)
  }
})

t.test('Anthropic amounts in cents (40 decimals, 40 integer digits, credits) are shifted exactly; 41 digits are refused', async (t) => {
  const { anthropicCostsClient } = await import('../lib/provider-costs/anthropic-costs.js')
  const client = anthropicCostsClient({ adminKey: 'k' })
  const page = (amount: string) => anthropicPage([{ day: '2026-01-01', results: [{ workspace: null, description: 'd', amount }] }], null)
  t.equal(client.readPage(page('-0.' + '0'.repeat(39) + '1')).buckets[0]!.amount, '-0.' + '0'.repeat(41) + '1')
  t.equal(client.readPage(page('9'.repeat(40))).buckets[0]!.amount, '9'.repeat(38) + '.99')
  t.equal(client.readPage(page('-0.00')).buckets[0]!.amount, '0')
  t.throws(() => client.readPage(page('1' + '0'.repeat(40))))
  t.throws(() => client.readPage(page('1e3')))
})
