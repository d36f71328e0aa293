// The dashboard page in a real headless Chromium: the token prompt (kept in the tab only), the budget
// tree with the spend the API reports after a gated call, the burn-down with its thresholds, the
// alerts and approvals, the spend report and its CSV download; and the page's routes without a browser.
import { existsSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { chromium, type Browser, type Page } from 'playwright-core'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway, spendTo } from './fixtures/gateway.js'

/** Debian's chromium (what .ci/run installs), another Chromium named by CHROMIUM_PATH, or Playwright's own download. */
function chromiumPath (): string {
  const candidates = [process.env.CHROMIUM_PATH, '/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome', chromium.executablePath()]
  const found = candidates.find((path) => path !== undefined && path !== '' && existsSync(path))
  if (found === undefined) throw new Error('no Chromium found: install Debian\'s chromium package (apt-get install chromium) or set CHROMIUM_PATH')
  return found
}

async function launch (t: { teardown: (fn: () => unknown) => void }): Promise<Browser> {
  // --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
  const browser = await chromium.launch({ executablePath: chromiumPath(), args: ['--no-sandbox'] })
  t.teardown(async () => await browser.close())
  return browser
}

/** The page's errors (uncaught exceptions, console errors such as a blocked script) as they happen. */
function pageErrors (page: Page): string[] {
  const errors: string[] = []
  page.on('pageerror', (error) => errors.push(error.message))
  page.on('console', (message) => { if (message.type() === 'error') errors.push(message.text()) })
  return errors
}

t.test('the page in Chromium: token prompt, tree, spend after a gated call, burn-down, alerts, approvals, report and CSV', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const base = await gateway.app.listen({ port: 0, host: '127.0.0.1' })
  const organization = await gateway.createBudget({ name: 'Acme', scopeType: 'organization', scopeId: 'acme', amount: '1000' })
  const team = await gateway.createBudget({
    name: 'Search team', scopeId: 'team-a', parentId: organization.id, amount: '100',
    alerts: [{ threshold: 50, actions: ['notify'] }, { threshold: 80, actions: ['require-approval'] }]
  })
  await spendTo(gateway.app, team.id, '55') // crosses the 50% alert
  const approval = await gateway.app.inject({
    method: 'POST', url: `${PREFIX}/${team.id}/approvals`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body: { amount: '10', reason: 'launch week' }
  })
  t.equal(approval.statusCode, 201)
  t.equal((await gateway.call({ team: 'team-a', organization: 'acme' })).statusCode, 200, 'a gated call')
  await gateway.settled()
  const status = await gateway.status(team.id)
  t.not(status.currentAmount, '55', 'the gated call added its cost')

  const browser = await launch(t)
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } })
  const page = await context.newPage()
  const errors = pageErrors(page)

  await page.goto(`${base}${PREFIX}/ui`)
  t.ok(await page.isVisible('#sign-in'), 'the token prompt first')
  t.notOk(await page.isVisible('#dashboard'), 'no dashboard before a token')

  await page.fill('#token', 'пароль')
  await page.click('#sign-in button[type=submit]')
  await page.waitForSelector('#sign-in-error:has-text("printable ASCII")')
  t.equal(await page.evaluate('sessionStorage.length'), 0, 'a token no header can carry is not kept')

  await page.fill('#token', 'not-the-token-at-all')
  await page.click('#sign-in button[type=submit]')
  await page.waitForSelector('#sign-in-error:has-text("refused")')
  t.equal(await page.evaluate('sessionStorage.length'), 0, 'a refused token is not kept')

  await page.fill('#token', ADMIN_TOKEN)
  await page.click('#sign-in button[type=submit]')
  const teamRow = page.locator(`.budget-row[data-budget-id="${team.id}"]`)
  await teamRow.waitFor()
  t.equal(await teamRow.locator('[data-field=spend]').getAttribute('title'), status.currentAmount, 'the tree shows the spend the API reports, exactly')
  t.equal(await teamRow.locator('[data-field=limit]').textContent(), '100')
  t.equal(await page.locator(`[data-budget-id="${organization.id}"] + .children [data-budget-id="${team.id}"]`).count(), 1, 'the team sits under its organization')
  const spentWidth = await teamRow.locator('.bar .spent').evaluate((bar: unknown) => (bar as { style: { width: string } }).style.width)
  t.ok(Math.abs(parseFloat(spentWidth) - 55) < 0.01 && spentWidth.endsWith('%'), `the bar is as long as the share spent (${spentWidth})`)

  const storage = await page.evaluate("({ session: sessionStorage.getItem('relaycore-budgets-token'), local: localStorage.length, cookie: document.cookie })")
  t.same(storage, { session: ADMIN_TOKEN, local: 0, cookie: '' }, 'the token is in this tab\'s sessionStorage only')
  await page.reload()
  await teamRow.waitFor()
  t.pass('a reload in the same tab stays signed in')
  const otherTab = await context.newPage()
  await otherTab.goto(`${base}${PREFIX}/ui/`)
  t.ok(await otherTab.isVisible('#sign-in'), 'a new tab asks for the token again')
  await otherTab.close()

  await teamRow.click()
  await page.waitForSelector(`#detail[data-budget-id="${team.id}"]`)
  t.equal(await page.locator('#detail-figures [data-field=spend]').getAttribute('title'), status.currentAmount, 'the figure\'s exact amount')
  await page.waitForSelector('#burn-down canvas')
  const legend = await page.locator('#burn-down .u-legend').innerText()
  t.match(legend, /Remaining/)
  t.match(legend, /Projected/)
  t.match(legend, /50% alert/)
  t.match(legend, /80% alert/)
  t.match(await page.locator('#detail-alerts').innerText(), /50% crossed \(55 of 100\) · notify/)
  t.match(await page.locator('#detail-approvals').innerText(), /10 by admin until/)
  t.match(await page.locator('#recent-alerts').innerText(), /Search team · 50%/)

  await page.click('#report-form button[type=submit]')
  const reportRow = page.locator('#report-table tbody tr', { hasText: 'team:team-a' })
  await reportRow.waitFor()
  const report = (await gateway.app.inject({ url: `${PREFIX}/reports/spend`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).json()
  const teamGroup = report.groups.find((group: { key: string }) => group.key === 'team:team-a')
  t.equal(await reportRow.locator('td').nth(2).getAttribute('title'), teamGroup.total, 'the report\'s total, exactly')
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#report-csv')])
  t.equal(download.suggestedFilename(), 'spend-report.csv')
  const csv = readFileSync((await download.path())!, 'utf8')
  t.match(csv.split('\n')[0], /^scope,currency,total,calls,inputTokens,outputTokens/)
  t.match(csv, new RegExp(`"?team:team-a"?,"?USD"?,"?${teamGroup.total.replace('.', '\\.')}"?`))

  await page.screenshot({ path: process.env.DASHBOARD_SCREENSHOT ?? join(tmpdir(), 'relaycore-dashboard.png'), fullPage: true })
  await page.click('#sign-out')
  t.ok(await page.isVisible('#sign-in'), 'forgetting the token signs out')
  t.equal(await page.evaluate('sessionStorage.length'), 0)
  t.same(errors.filter((error) => !error.includes('401')), [], 'no script error and nothing blocked by the page\'s policy')
})

t.test('the page\'s routes: a fixed set of files with a strict policy, outside the admin API and its document, and an option to turn it off', async (t) => {
  const gateway = await buildGateway(t)
  const page = await gateway.app.inject({ url: `${PREFIX}/ui/` })
  t.equal(page.statusCode, 200, 'the page itself needs no token: it holds no data')
  t.match(page.headers['content-type'], /^text\/html/)
  t.match(page.headers['content-security-policy'], /script-src 'self'/)
  t.match(page.headers['content-security-policy'], /frame-ancestors 'none'/)
  t.equal(page.headers['x-content-type-options'], 'nosniff')
  for (const file of ['dashboard.js', 'money.js', 'dashboard.css', 'uPlot.iife.min.js', 'uPlot.min.css']) {
    t.equal((await gateway.app.inject({ url: `${PREFIX}/ui/${file}` })).statusCode, 200, file)
  }
  for (const path of ['nope.js', '..%2F..%2Fpackage.json', '%2e%2e%2fsql', 'index.html%00']) {
    const response = await gateway.app.inject({ url: `${PREFIX}/ui/${path}` })
    t.equal(response.statusCode, 404, path)
    t.equal(response.json().code, 'BUDGET_ERR_ROUTE_NOT_FOUND')
  }
  // Dot segments are resolved before routing: this is {prefix}/package.json, an admin API URL, never a file.
  t.equal((await gateway.app.inject({ url: `${PREFIX}/ui/index.html/../../package.json` })).statusCode, 401)

  const { default: Fastify } = await import('fastify')
  const { default: budgets } = await import('../lib/index.js')
  const app = Fastify()
  await app.register(budgets, { database: gateway.sql, adminToken: ADMIN_TOKEN, dashboard: false, migrate: false })
  await app.ready()
  t.teardown(async () => await app.close())
  t.equal((await app.inject({ url: `${PREFIX}/ui/` })).statusCode, 401, 'dashboard: false serves no page (the URL is the admin API\'s, behind its token)')
  t.equal((await app.inject({ url: `${PREFIX}/ui` })).statusCode, 401)
  t.equal((await app.inject({ url: `${PREFIX}/ui/`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).statusCode, 404)
  await t.rejects(async () => {
    const bad = Fastify()
    await bad.register(budgets, { database: gateway.sql, adminToken: ADMIN_TOKEN, dashboard: 'yes' as unknown as boolean, migrate: false })
    await bad.ready()
  }, /dashboard must be a boolean/)
})

t.test('the API the page reads: budgets a page at a time, and the recent alerts across budgets', async (t) => {
  const gateway = await buildGateway(t)
  const created: string[] = []
  for (let i = 0; i < 5; i++) created.push((await gateway.createBudget({ name: `b${i}`, scopeId: `team-${i}`, amount: '10' })).id)
  const deleted = created.pop()!
  t.equal((await gateway.app.inject({ method: 'DELETE', url: `${PREFIX}/${deleted}`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).statusCode, 204)
  const seen: string[] = []
  let cursor: string | null = null
  let pages = 0
  do {
    const response = await gateway.app.inject({ url: `${PREFIX}?limit=2${cursor === null ? '' : `&cursor=${cursor}`}`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
    t.equal(response.statusCode, 200)
    const body = response.json() as { budgets: Array<{ id: string }>, nextCursor: string | null }
    seen.push(...body.budgets.map((budget) => budget.id))
    cursor = body.nextCursor
    pages++
  } while (cursor !== null)
  t.same(seen, [...created].sort(), 'every live budget once, in id order, without the deleted one')
  t.equal(pages, 2)
  t.equal((await gateway.app.inject({ url: `${PREFIX}?cursor=nope`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).statusCode, 400)
  t.equal((await gateway.app.inject({ url: PREFIX })).statusCode, 401)

  const budget = await gateway.createBudget({ name: 'alerting', scopeId: 'alerting', amount: '10', alerts: [{ threshold: 50, actions: ['notify'] }, { threshold: 90, actions: ['notify'] }] })
  await spendTo(gateway.app, budget.id, '6')
  await spendTo(gateway.app, budget.id, '9.5')
  const recent = await gateway.app.inject({ url: `${PREFIX}/alerts?limit=1`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
  t.equal(recent.statusCode, 200)
  t.same(recent.json().alerts.map((alert: { threshold: number, budgetId: string }) => [alert.budgetId, alert.threshold]), [[budget.id, 90]], 'the newest crossing first')
  t.equal((await gateway.app.inject({ url: `${PREFIX}/alerts?limit=0`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).statusCode, 400)
})

t.test('the page under odd hosts: a root prefix, a host that ignores trailing slashes, a budget deleted under it, a token revoked mid-session', async (t) => {
  const { default: Fastify } = await import('fastify')
  const { default: budgets } = await import('../lib/index.js')
  const { createTestSql } = await import('./fixtures/database.js')
  const { sql } = await createTestSql(t)
  let accepted = ADMIN_TOKEN
  const app = Fastify({ routerOptions: { ignoreTrailingSlash: true } })
  await app.register(budgets, { database: sql, prefix: '/', authorize: (request) => request.headers.authorization === `Bearer ${accepted}` })
  const base = await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(async () => await app.close())
  const create = async (name: string) => (await app.inject({ method: 'POST', url: '/', headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    body: { name, scopeType: 'team', scopeId: name, amount: '10', currency: 'USD', period: 'monthly', startDate: '2024-01-01' } })).json() as { id: string }
  const kept = await create('kept')
  const doomed = await create('doomed')

  const browser = await launch(t)
  const page = await (await browser.newContext()).newPage()
  const errors = pageErrors(page)
  for (const path of ['/ui', '/ui/']) {
    await page.goto(`${base}${path}`)
    t.ok(await page.isVisible('#sign-in'), `${path} serves the page`)
  }
  await page.fill('#token', ADMIN_TOKEN)
  await page.click('#sign-in button[type=submit]')
  await page.locator(`.budget-row[data-budget-id="${doomed.id}"]`).waitFor()
  t.equal(await page.locator('.budget-row').count(), 2, 'the list at the root prefix')

  await page.locator(`.budget-row[data-budget-id="${doomed.id}"]`).click()
  await page.waitForSelector(`#detail[data-budget-id="${doomed.id}"]`)
  t.equal((await app.inject({ method: 'DELETE', url: `/${doomed.id}`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).statusCode, 204)
  await page.click('#refresh')
  await page.locator(`.budget-row[data-budget-id="${doomed.id}"]`).waitFor({ state: 'detached' })
  t.notOk(await page.isVisible('#detail'), 'a budget deleted since it was picked leaves the detail panel')

  // The second of two quick clicks wins, however slowly the first one's reads come back.
  await page.route('**/usage/summary', async (route) => { await new Promise((resolve) => setTimeout(resolve, 600)); await route.continue() }, { times: 1 })
  const other = await create('other')
  await page.click('#refresh')
  await page.locator(`.budget-row[data-budget-id="${other.id}"]`).waitFor()
  await page.locator(`.budget-row[data-budget-id="${kept.id}"]`).click()
  await page.locator(`.budget-row[data-budget-id="${other.id}"]`).click()
  await page.waitForSelector(`#detail[data-budget-id="${other.id}"]`)
  await new Promise((resolve) => setTimeout(resolve, 900))
  t.equal(await page.getAttribute('#detail', 'data-budget-id'), other.id, 'the detail shows the budget picked last')

  accepted = 'a-new-token-0123456789'
  await page.locator(`.budget-row[data-budget-id="${kept.id}"]`).click()
  await page.waitForSelector('#sign-in-error:has-text("refused")')
  t.equal(await page.evaluate('sessionStorage.length'), 0, 'a token revoked mid-session is forgotten')
  t.same(errors.filter((error) => !error.includes('401')), [], 'no uncaught error')
})
