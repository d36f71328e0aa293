// Review of the dashboard's writes across sessions and failures, in headless Chromium on a real PostgreSQL:
// one click makes one budget; signing out leaves nothing of the token's budgets in the page for the next
// token; an API that is down or answers a 502 leaves a message, the form as typed, no uncaught error and no
// change; a team lead is offered nothing outside its area.
import t from 'tap'
import { ADMIN_TOKEN, PREFIX, snapshotTables } from './fixtures/app.js'
import { spendTo } from './fixtures/gateway.js'
import { launch, networkQuiet, pageErrors, signIn, openBudget as open } from './fixtures/browser.js'
import { LEAD, VIEWER, teamsWorld } from './fixtures/teams-world.js'

/** Chromium's console line for a 4xx/5xx or a refused connection the test provokes on purpose. */
const provoked = (error: string): boolean => /the server responded with a status of [45]\d\d|net::ERR_|Failed to load resource/.test(error)

t.test('a double click on Save makes one budget, not two', async (t) => {
  const { base, teamA, admin } = await teamsWorld(t)
  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  const errors = pageErrors(page)
  const quiet = networkQuiet(page)
  await signIn(page, base, LEAD)
  await open(page, teamA.id)
  await page.click('#budget-new-child')
  await page.waitForSelector('#budget-editor:not([hidden])')
  await page.fill('#budget-form [name=name]', 'Alice')
  await page.fill('#budget-form [name=scopeId]', 'alice')
  await page.fill('#budget-form [name=amount]', '100')
  await page.dblclick('#budget-form button[type=submit]')
  await page.waitForSelector('#action-status:has-text("Created Alice.")')
  await quiet()
  const { budgets } = (await admin('GET', '?limit=500')).json()
  const made = budgets.filter((budget: { name: string }) => budget.name === 'Alice')
  t.equal(made.length, 1, `one click (a double one) makes one budget; the API has ${made.length as number} named Alice`)
  t.equal(await page.locator('.budget-row:has-text("Alice")').count(), made.length, 'the tree shows what the API has')
  t.same(errors, [], 'no page error')
})

t.test('signing out leaves nothing of the token\'s budgets in the page: not the name an archive confirmation showed, nor its refusal', async (t) => {
  const { base, org, teamA, admin, createBudget } = await teamsWorld(t)
  // A budget outside the lead's area (under the organization).
  const gone = await createBudget({ name: 'Gone Soon', scopeId: 'gone', parentId: org.id, amount: '10' })
  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  const errors = pageErrors(page)
  const quiet = networkQuiet(page)
  await signIn(page, base, ADMIN_TOKEN)
  await open(page, gone.id)
  await page.click('#budget-archive') // the confirmation names the budget
  await page.waitForSelector('#budget-archive-form:not([hidden])')
  await page.check('#budget-archive-form [name=cascade]')
  // Another admin archives it first: this one's Archive is refused (404), and the refusal names it.
  t.equal((await admin('DELETE', `/${gone.id}`)).statusCode, 204)
  await page.click('#budget-archive-form button[type=submit]')
  await page.waitForSelector('#budget-archive-form .form-error:not(:empty)')
  t.match(await page.textContent('#budget-archive-form .form-error'), gone.id, `the refusal names the budget (${(await page.textContent('#budget-archive-form .form-error'))!})`)
  // The admin leaves the page to the team lead.
  await page.click('#sign-out')
  await page.fill('#token', LEAD)
  await page.click('#sign-in button[type=submit]')
  await page.locator(`.budget-row[data-budget-id="${teamA.id}"]`).waitFor()
  await quiet()
  const html = await page.content()
  const found = (text: string) => [...html.matchAll(new RegExp(`.{0,60}${text}.{0,20}`, 'g'))].map((match) => match[0].trim())
  t.same(found('Gone Soon'), [], 'the lead\'s document holds nothing of the admin\'s budget\'s name')
  t.same(found(gone.id), [], 'nor its id, in the admin\'s refusal')
  await open(page, teamA.id)
  t.notOk(await page.isChecked('#budget-archive-form [name=cascade]'), 'nor the admin\'s "and every budget under it" left ticked')
  t.same(errors.filter((error) => !provoked(error)), [], 'no page error but the 404 provoked')
})

t.test('the API down or answering 502: each write shows a message, keeps what was typed, changes nothing, throws nothing', async (t) => {
  const { base, teamA, app, sql, createBudget } = await teamsWorld(t)
  const alice = await createBudget({ name: 'Alice', scopeType: 'user', scopeId: 'alice', parentId: teamA.id, amount: '10', alerts: [{ threshold: 50, actions: ['notify'] }] })
  await spendTo(app, alice.id, '6')
  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  const uncaught: string[] = []
  page.on('pageerror', (error) => uncaught.push(error.message))
  const errors = pageErrors(page)
  const quiet = networkQuiet(page)
  await signIn(page, base, LEAD)
  await open(page, alice.id)
  await page.waitForSelector('#detail-alerts form.acknowledge')
  await page.click('#budget-edit')
  await page.waitForSelector('#budget-editor:not([hidden])')
  await page.fill('#budget-form [name=amount]', '9.5')
  const before = await snapshotTables(sql)

  for (const outage of ['down', '502'] as const) {
    // Every admin API call from now on: refused at the socket, or a proxy's HTML 502.
    await page.route((url) => url.pathname.startsWith(PREFIX) && !url.pathname.startsWith(`${PREFIX}/ui`), async (route) => {
      if (outage === 'down') await route.abort('connectionrefused')
      else await route.fulfill({ status: 502, contentType: 'text/html', body: '<html><body><h1>502 Bad Gateway</h1></body></html>' })
    })
    await page.click('#budget-form button[type=submit]')
    await page.waitForSelector('#budget-form[data-state=refused]')
    const said = (await page.textContent('#budget-form > .form-error'))!.trim()
    t.match(said, outage === 'down' ? /^The budget API did not answer: the connection or the gateway is down\./ : /^The budget API answered 502 Bad Gateway\.$/, `${outage}: Save says it failed, in words a reader can act on (${said})`)
    t.equal(await page.inputValue('#budget-form [name=amount]'), '9.5', `${outage}: the form keeps what was typed`)
    t.ok(await page.isVisible('#budget-editor'), `${outage}: the form stays open`)

    await page.click(`#detail-alerts form.acknowledge button`)
    await page.waitForSelector('#detail-alerts form.acknowledge .form-error:not(:empty)')
    t.equal(await page.textContent('#detail-alerts form.acknowledge .form-error'), said, `${outage}: Acknowledge says so too`)

    await page.click('#budget-archive')
    await page.click('#budget-archive-form button[type=submit]')
    await page.waitForSelector('#budget-archive-form .form-error:not(:empty)')
    t.equal(await page.textContent('#budget-archive-form .form-error'), said, `${outage}: and Archive`)
    t.ok(await page.isVisible(`.budget-row[data-budget-id="${alice.id}"]`), `${outage}: the budget is still in the tree`)
    await page.click('#budget-archive-cancel')
    await quiet()
    await page.unrouteAll()
    // The next round starts from the same form (clear the refusal by typing again).
    await page.fill('#budget-form [name=amount]', '9.5')
    await page.locator('#detail-alerts form.acknowledge .form-error').evaluate((node) => { node.textContent = '' })
    await page.locator('#budget-archive-form .form-error').evaluate((node) => { node.textContent = '' })
  }
  t.same(await snapshotTables(sql), before, 'nothing changed in the database')
  t.same(uncaught, [], 'no uncaught error or unhandled rejection')
  t.same(errors.filter((error) => !provoked(error)), [], 'no other page error')

  // Back up: the same Save goes through.
  await page.click('#budget-form button[type=submit]')
  await page.waitForSelector('#action-status:has-text("Saved Alice.")')
  t.pass('once the API is back, Save goes through')
})

t.test('a team lead and a viewer: the controls each is offered are the ones the API takes', async (t) => {
  const { base, teamA, teamB, org, createBudget } = await teamsWorld(t)
  const alice = await createBudget({ name: 'Alice', scopeType: 'user', scopeId: 'alice', parentId: teamA.id, amount: '10' })
  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  const errors = pageErrors(page)
  await signIn(page, base, LEAD)
  await page.locator(`.budget-row[data-budget-id="${alice.id}"]`).waitFor()
  t.equal(await page.locator(`.budget-row[data-budget-id="${teamB.id}"], .budget-row[data-budget-id="${org.id}"]`).count(), 0, 'no budget outside the area in the tree')
  await page.click('#budget-new')
  await page.waitForSelector('#budget-editor:not([hidden])')
  const parents = await page.locator('#budget-form [name=parentId] option').evaluateAll((options) => options.map((option) => option.getAttribute('value')))
  t.same(parents.sort(), [teamA.id, alice.id].sort(), 'New budget offers parents of its area only, and no budget at the top')
  await page.click('#budget-cancel')
  await open(page, alice.id)
  t.ok(await page.isVisible('#budget-edit') && await page.isVisible('#budget-archive'), 'Alice is below its root: Edit and Archive')
  await page.click('#sign-out')

  await signIn(page, base, VIEWER)
  await open(page, alice.id)
  for (const control of ['#budget-new', '#budget-actions', '#budget-edit', '#budget-archive', '#budget-editor', '#rates', '#approval-queue']) {
    t.notOk(await page.isVisible(control), `a viewer is not offered ${control}`)
  }
  t.same(errors, [], 'no page error')
})
