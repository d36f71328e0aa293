// The provider cost collectors and the CSV import against hostile providers and hostile files: redirects, unbounded
// bodies, page tokens that repeat, CSV built to hold the event loop, and the loop's longest stretch on a valid import.
import t from 'tap'
import { createServer, type IncomingHttpHeaders } from 'node:http'
import type { AddressInfo } from 'node:net'
import { buildApp, PREFIX } from './fixtures/app.js'
import { anthropicPage, openAiPage, startCostReportServer } from './fixtures/cost-report-server.js'
import { fetchReport, FETCH_DEFAULTS } from '../lib/provider-costs/fetch-report.js'
import { collectOnce } from '../lib/provider-costs/collector.js'
import { createProviderCostRepository } from '../lib/provider-costs/cost-repository.js'
import { openAiCostsClient } from '../lib/provider-costs/openai-costs.js'

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

t.test('a CSV line of 1.9M empty fields is refused while it is scanned, the event loop held under 20 ms', async (t) => {
  const app = await buildApp(t)
  const header = 'date,provider,account,amount,currency\n'
  const body = header + ','.repeat(4 * 1024 * 1024 - header.length - 10) + '\n'
  let worst = 0
  let last = performance.now()
  let probing = true
  const probe = () => {
    const now = performance.now()
    worst = Math.max(worst, now - last)
    last = now
    if (probing) setImmediate(probe)
  }
  setImmediate(probe)
  const response = await app.admin({ method: 'POST', url: `${PREFIX}/provider-costs/import`, payload: body, headers: { 'content-type': 'text/csv' } })
  probing = false
  worst = Math.max(worst, performance.now() - last) // the gap still open when the answer came
  t.equal(response.statusCode, 400, response.body.slice(0, 300))
  t.ok(worst < 20, `the loop was held ${worst.toFixed(1)} ms (house target 20 ms)`)
})

t.test('a quoted CSV field of 2M doubled quotes is refused while it is scanned, the event loop held under 20 ms', async (t) => {
  const app = await buildApp(t)
  const header = 'date,provider,account,amount,currency\n'
  const body = header + '"' + '""'.repeat(2 * 1024 * 1024 - 40) + '"\n'
  let worst = 0
  let last = performance.now()
  let probing = true
  const probe = () => {
    const now = performance.now()
    worst = Math.max(worst, now - last)
    last = now
    if (probing) setImmediate(probe)
  }
  setImmediate(probe)
  const response = await app.admin({ method: 'POST', url: `${PREFIX}/provider-costs/import`, payload: body, headers: { 'content-type': 'text/csv' } })
  probing = false
  worst = Math.max(worst, performance.now() - last) // the gap still open when the answer came
  t.equal(response.statusCode, 400, response.body.slice(0, 300))
  t.ok(worst < 20, `the loop was held ${worst.toFixed(1)} ms (house target 20 ms)`)
})

t.test('a valid 20,000-line CSV import holds the event loop under 20 ms at a stretch', async (t) => {
  const app = await buildApp(t)
  const lines = Array.from({ length: 20_000 }, (_, index) => `2024-07-01,mistral,acme,project-${index},model-${'m'.repeat(60)},line-${'l'.repeat(30)},${index}.123456789,USD`)
  const body = `date,provider,account,project,model,line_item,amount,currency\n${lines.join('\n')}\n`
  let worst = 0
  const big: number[] = []
  let last = performance.now()
  let probing = true
  const probe = () => {
    const now = performance.now()
    worst = Math.max(worst, now - last)
    if (now - last > 10) big.push(Math.round(now - last))
    last = now
    if (probing) setImmediate(probe)
  }
  setImmediate(probe)
  const response = await app.admin({ method: 'POST', url: `${PREFIX}/provider-costs/import`, payload: body, headers: { 'content-type': 'text/csv' } })
  probing = false
  worst = Math.max(worst, performance.now() - last) // the gap still open when the answer came
  t.equal(response.statusCode, 200, response.body.slice(0, 200))
  t.comment(`gaps over 10 ms: ${big.join(', ')}`)
  t.ok(worst < 20, `the loop was held ${worst.toFixed(1)} ms (house target 20 ms)`)
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
