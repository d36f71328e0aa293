// Review of the dashboard's budget form (ui/budget-form.js, ui/alert-rows.js), in headless Chromium on a real
// PostgreSQL: an edit must change only what the operator changed. A budget with every field the API keeps
// (description, timezone, digest, maxCallCost, filters, rate limits, alerts with allowedModels,
// maxPricePerMillion, a projected basis and an approval policy naming actors) is edited through the page and
// read back from the API.
import t from 'tap'
import type { Page } from 'playwright-core'
import { ADMIN_TOKEN, PREFIX, snapshotTables } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'
import { launch, networkQuiet, pageErrors, provokedRefusal } from './fixtures/browser.js'

// An actor may be any text up to 200 characters (ApprovalLevel.actors): a directory name such as this one is
// one actor, with a comma in it.
const ACTOR_WITH_COMMA = 'Doe, Jane (finance)'

const RICH = {
  name: 'Rich',
  description: 'kept by every edit',
  scopeType: 'team',
  scopeId: 'rich',
  amount: '1234.5678901234',
  currency: 'USD',
  period: 'monthly',
  startDate: '2026-01-01',
  timezone: 'Europe/Berlin',
  recurring: true,
  metrics: true,
  enforcement: 'soft',
  nearLimit: 'clamp',
  maxCallCost: '0.25',
  digest: { every: 'weekly', channels: ['email'] },
  filters: { models: ['gpt-4o*'], tags: { feature: 'search', env: 'prod' } },
  rateLimits: { requestsPerMinute: 600, tokensPerMinute: 1_000_000_000_000 },
  alerts: [
    { threshold: 50, actions: ['notify'], notificationChannels: ['email', 'slack'], basis: 'projected' },
    { threshold: 80, actions: ['restrict-models'], notificationChannels: [], allowedModels: ['gpt-4o-mini'], maxPricePerMillion: '0.6' },
    {
      threshold: 90,
      actions: ['require-approval'],
      notificationChannels: ['ops'],
      approvalPolicy: { levels: [{ name: 'lead', actors: [ACTOR_WITH_COMMA, 'lead-a'], upTo: '100.1234567891' }, { name: 'finance', roles: ['approver'] }], requestTtlMinutes: 60 }
    }
  ]
}

async function world (t: Parameters<typeof buildGateway>[0]) {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const base = await gateway.app.listen({ port: 0, host: '127.0.0.1' })
  const org = await gateway.createBudget({ name: 'Org', scopeType: 'organization', scopeId: 'org', amount: '100000000', timezone: 'Europe/Berlin' })
  const rich = await gateway.createBudget({ ...RICH, parentId: org.id })
  const admin = async (method: 'GET' | 'PUT', url: string, body?: Record<string, unknown>) =>
    await gateway.app.inject({ method, url: `${PREFIX}${url}`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, ...(body === undefined ? {} : { body }) })
  return { ...gateway, base, org, rich, admin }
}

async function signInAndEdit (page: Page, base: string, id: string) {
  await page.goto(`${base}${PREFIX}/ui`)
  await page.fill('#token', ADMIN_TOKEN)
  await page.click('#sign-in button[type=submit]')
  await page.locator(`.budget-row[data-budget-id="${id}"]`).click()
  await page.waitForSelector(`#detail[data-budget-id="${id}"]:not([hidden])`)
  await page.click('#budget-edit')
  await page.waitForSelector('#budget-editor:not([hidden])')
}

/** The budget as the API has it, without what every write changes. */
const kept = ({ updatedAt: _updatedAt, ...budget }: Record<string, unknown>) => budget

t.test('an edit of the name alone sends the name alone, and every other field stays as it was', async (t) => {
  const { base, rich, admin } = await world(t)
  const before = (await admin('GET', `/${rich.id}`)).json()
  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  const errors = pageErrors(page)
  await signInAndEdit(page, base, rich.id)
  t.equal(await page.inputValue('#budget-form [name=amount]'), RICH.amount, 'the amount as the API has it, every digit')
  await page.fill('#budget-form [name=name]', 'Rich, renamed')
  const put = page.waitForRequest((request) => request.method() === 'PUT')
  await page.click('#budget-form button[type=submit]')
  t.same((await put).postDataJSON(), { name: 'Rich, renamed' }, 'the page sends the name alone')
  await page.waitForSelector('#action-status:has-text("Saved Rich, renamed.")')
  const after = (await admin('GET', `/${rich.id}`)).json()
  t.same(kept(after), { ...kept(before), name: 'Rich, renamed' }, 'the API\'s budget: only the name changed')
  t.same(errors, [], 'no page error')
})

t.test('an edit of one alert\'s threshold leaves the other alerts, and their approval policy, as they were', async (t) => {
  const { base, rich, admin } = await world(t)
  const before = (await admin('GET', `/${rich.id}`)).json()
  t.same(before.alerts[2].approvalPolicy.levels[0].actors, [ACTOR_WITH_COMMA, 'lead-a'], 'the API keeps the actor with its comma')
  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  const errors = pageErrors(page)
  const quiet = networkQuiet(page)
  await signInAndEdit(page, base, rich.id)
  await page.fill('#budget-form [data-field="alerts.0.threshold"]', '55')
  const put = page.waitForRequest((request) => request.method() === 'PUT')
  await page.click('#budget-form button[type=submit]')
  const sent = (await put).postDataJSON()
  t.same(Object.keys(sent), ['alerts'], 'the alerts go, whole, as the API takes them')
  t.same(sent.alerts[2].approvalPolicy, before.alerts[2].approvalPolicy,
    'the third alert\'s policy goes back as the API sent it (the operator did not touch it)')
  await quiet()
  const after = (await admin('GET', `/${rich.id}`)).json()
  t.same(after.alerts[0], { ...before.alerts[0], threshold: 55 }, 'the alert edited has its new threshold')
  t.same(after.alerts.slice(1), before.alerts.slice(1), 'the alerts not edited are unchanged in the API: the policy still names the actor "Doe, Jane (finance)"')
  t.same(errors.filter((error) => !provokedRefusal(error)), [], 'no page error')
})

t.test('amounts: every digit typed goes as the string, trimmed; what the API refuses is shown beside the amount and changes nothing', async (t) => {
  const { base, rich, admin, sql } = await world(t)
  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  const errors = pageErrors(page)
  await signInAndEdit(page, base, rich.id)
  const before = await snapshotTables(sql)
  for (const typed of ['1e3', '0.1+0.2', '-5', '12.34567890123', '1 000', '0x10', 'Infinity']) {
    await page.fill('#budget-form [name=amount]', ` ${typed}  `)
    const put = page.waitForRequest((request) => request.method() === 'PUT')
    await page.click('#budget-form button[type=submit]')
    t.same((await put).postDataJSON(), { amount: typed }, `${typed}: sent as typed, trimmed, a string`)
    const message = page.locator('#budget-form [data-error-for=amount]')
    await message.waitFor()
    const api = (await admin('PUT', `/${rich.id}`, { amount: typed })).json()
    t.equal(await message.textContent(), api.message, `${typed}: the API's own words beside the amount`)
    t.same(await snapshotTables(sql), before, `${typed}: nothing changed`)
  }
  // 18 significant digits, 10 decimals: more than any Number keeps.
  const EXACT = '87654321.9876543219'
  await page.fill('#budget-form [name=amount]', `\t${EXACT} `)
  await page.click('#budget-form button[type=submit]')
  await page.waitForSelector('#action-status:has-text("Saved Rich.")')
  t.equal((await admin('GET', `/${rich.id}`)).json().amount, EXACT, 'the API has every digit')
  t.equal(await page.locator(`.budget-row[data-budget-id="${rich.id}"] [data-field=limit]`).textContent(), EXACT, 'the tree shows every digit')
  t.same(errors.filter((error) => !provokedRefusal(error)), [], 'no page error')
})

t.test('the form shows a budget\'s own days, in its timezone: an end moved by a week moves by a week', async (t) => {
  const { base, org, admin, createBudget } = await world(t)
  // A custom period in Berlin, 2026-01-01 to 2026-01-15: midnights in Berlin, an hour before midnight UTC.
  const custom = await createBudget({ name: 'Launch', scopeId: 'launch', parentId: org.id, amount: '10', period: 'custom', timezone: 'Europe/Berlin', startDate: '2026-01-01', endDate: '2026-01-15' })
  const budget = (await admin('GET', `/${custom.id}`)).json()
  t.match(budget, { startDate: '2025-12-31T23:00:00.000Z', endDate: '2026-01-14T23:00:00.000Z' }, 'the API: midnights in Berlin')
  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  const errors = pageErrors(page)
  await signInAndEdit(page, base, custom.id)
  const shownStart = await page.inputValue('#budget-form [name=startDate]')
  const shownEnd = await page.inputValue('#budget-form [name=endDate]')
  t.equal(shownStart, '2026-01-01', 'Starts reads the day the budget starts (the API reads a typed day as midnight in its zone)')
  t.equal(shownEnd, '2026-01-15', 'Ends reads the day the budget ends')
  // The operator pushes the end back by one week from the day the form shows.
  const weekLater = new Date(Date.parse(`${shownEnd}T00:00:00Z`) + 7 * 86_400_000).toISOString().slice(0, 10)
  await page.fill('#budget-form [name=endDate]', weekLater)
  await page.click('#budget-form button[type=submit]')
  await page.waitForSelector('#action-status:has-text("Saved Launch."), #budget-form[data-state=refused]')
  t.equal(await page.textContent('#action-status'), 'Saved Launch.', 'the API took it')
  const after = (await admin('GET', `/${custom.id}`)).json()
  t.equal((Date.parse(after.endDate) - Date.parse(budget.endDate)) / 86_400_000, 7, `the end moved by the week typed (typed ${weekLater}; the API has ${after.endDate as string})`)
  t.same(errors, [], 'no page error')
})

t.test('a level\'s upTo with 27 significant digits goes as typed, trimmed, and the API keeps every digit', async (t) => {
  const { base, rich, admin } = await world(t)
  const before = (await admin('GET', `/${rich.id}`)).json()
  const UP_TO = '12345678901234567.1234567891'
  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  const errors = pageErrors(page)
  await signInAndEdit(page, base, rich.id)
  // Take the comma-bearing actor out of the way (it is the other finding), keep the rest.
  await page.fill('#budget-form [data-field="alerts.2.approvalPolicy.levels.0.actors"]', 'lead-a')
  await page.fill('#budget-form [data-field="alerts.2.approvalPolicy.levels.0.upTo"]', `  ${UP_TO}\t`)
  const put = page.waitForRequest((request) => request.method() === 'PUT')
  await page.click('#budget-form button[type=submit]')
  const sent = (await put).postDataJSON()
  t.equal(sent.alerts[2].approvalPolicy.levels[0].upTo, UP_TO, 'the upTo as typed, trimmed, a string')
  await page.waitForSelector('#action-status:has-text("Saved Rich.")')
  const after = (await admin('GET', `/${rich.id}`)).json()
  t.same(after.alerts[2].approvalPolicy, { ...before.alerts[2].approvalPolicy, levels: [{ name: 'lead', actors: ['lead-a'], upTo: UP_TO }, before.alerts[2].approvalPolicy.levels[1]] }, 'the API keeps every digit')
  t.same(after.alerts.slice(0, 2), before.alerts.slice(0, 2), 'the other alerts unchanged')
  t.same(errors, [], 'no page error')
})
