// Review of the dashboard's forms with hostile text, in headless Chromium on a real PostgreSQL: budget names,
// scope ids, alert channels, level names and actors holding HTML, script, RTL overrides and long unbroken
// text are made through the page and shown back: nothing runs, no element is made from them, and at a
// phone's width nothing the new forms show sticks out of its box.
import t from 'tap'
import { ADMIN_TOKEN, PREFIX, TEST_CHANNELS } from './fixtures/app.js'
import { buildGateway } from './fixtures/gateway.js'
import { horizontalOverflows, launch, networkQuiet, pageErrors, signIn, openBudget as open } from './fixtures/browser.js'

const HTML = '"><img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script><svg onload="window.__pwned=3">'
const RTL = '\u202Egnp.exe\u202C \u05E9\u05DC\u05D5\u05DD'
const CHANNEL = `<img src=x onerror="window.__pwned=4">${RTL}`
/** The parts of the page the budget form added: the form, and the budget's buttons with the archive confirmation. */
const NEW_PARTS = '#budget-editor, #budget-actions'

t.test('hostile names, scope ids, channels, level names and actors: shown as text everywhere, nothing runs', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 }, notifications: { channels: { ...TEST_CHANNELS, [CHANNEL]: { type: 'log' } } } })
  const base = await gateway.app.listen({ port: 0, host: '127.0.0.1' })
  const org = await gateway.createBudget({ name: `Org ${HTML}`, scopeType: 'organization', scopeId: 'org', amount: '1000' })
  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  const errors = pageErrors(page)
  const quiet = networkQuiet(page)
  await signIn(page, base, ADMIN_TOKEN)
  await open(page, org.id)
  await page.click('#budget-new-child')
  await page.waitForSelector('#budget-editor:not([hidden])')
  const NAME = `${HTML}${RTL}${'W'.repeat(70)}`
  await page.fill('#budget-form [name=name]', NAME)
  await page.fill('#budget-form [name=scopeId]', `${HTML}${RTL}`)
  await page.fill('#budget-form [name=amount]', '10')
  await page.click('#budget-add-alert')
  await page.fill('#budget-form [data-field="alerts.0.threshold"]', '80')
  await page.uncheck('#budget-form [data-field="alerts.0.actions"] input[value=notify]')
  await page.check('#budget-form [data-field="alerts.0.actions"] input[value=require-approval]')
  await page.fill('#budget-form [data-field="alerts.0.notificationChannels"]', CHANNEL)
  await page.locator('#budget-form [data-field="alerts.0"] button', { hasText: 'Add level' }).click()
  await page.fill('#budget-form [data-field="alerts.0.approvalPolicy.levels.0.name"]', `${HTML}`.slice(0, 100))
  await page.fill('#budget-form [data-field="alerts.0.approvalPolicy.levels.0.actors"]', `<b>boss</b>${RTL}`)
  await page.click('#budget-form button[type=submit]')
  await page.waitForSelector('#action-status:has-text("Created "), #budget-form[data-state=refused]')
  t.equal(await page.getAttribute('#budget-form', 'data-state'), null, `the API took it (${await page.locator('#budget-form .form-error, #budget-form .field-error').allTextContents()})`)
  if (await page.getAttribute('#budget-form', 'data-state') !== null) return
  const id = (await page.getAttribute('#detail', 'data-budget-id'))!
  const made = (await gateway.app.inject({ url: `${PREFIX}/${id}`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).json()
  t.match(made, { name: NAME, scopeId: `${HTML}${RTL}`, alerts: [{ notificationChannels: [CHANNEL], approvalPolicy: { levels: [{ name: HTML.slice(0, 100), actors: [`<b>boss</b>${RTL}`] }] } }] }, 'the API has every text as typed')
  t.equal(await page.locator(`.budget-row[data-budget-id="${id}"] .budget-name`).evaluate((node) => node.firstChild?.textContent), NAME, 'the tree shows the name as text')

  // The edit form fills every field back from it, and the archive confirmation names it.
  await page.click('#budget-edit')
  await page.waitForSelector('#budget-editor:not([hidden])')
  t.equal(await page.inputValue('#budget-form [data-field="alerts.0.notificationChannels"]'), CHANNEL, 'the channel back in its field')
  t.equal(await page.textContent('#budget-editor-title'), `Change ${NAME}`)
  await page.click('#budget-archive')
  t.equal(await page.textContent('#budget-archive-name'), NAME)
  // A request filed on it, with hostile text, to see it in the queue and on the page.
  await page.fill('#request-form [name=amount]', '1')
  await page.fill('#request-form [name=reason]', HTML)
  await page.click('#request-form button[type=submit]')
  await page.locator('#detail-request-list li[data-request-id]').first().waitFor()
  await quiet()
  t.equal(await page.locator('#dashboard img, #dashboard script, #dashboard svg:not(.u-over svg), #dashboard b').count(), 0, 'no element made from what was typed')
  t.equal(await page.evaluate('window.__pwned'), undefined, 'nothing ran')

  t.same(errors, [], 'no page error (a CSP violation would be one)')
})

t.test('at a phone\'s width, a long budget name in the new forms wraps instead of pushing the page sideways', async (t) => {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 } })
  const base = await gateway.app.listen({ port: 0, host: '127.0.0.1' })
  // 79 characters without a space or a hyphen: a service account's budget, named as its account is.
  const NAME = 'ServiceAccountForTheMonthlyBillingReconciliationPipelineOfTheEuropeanSubsidiary'
  const budget = await gateway.createBudget({ name: NAME, scopeType: 'organization', scopeId: 'org', amount: '1000' })
  const browser = await launch(t)
  const page = await (await browser.newContext({ viewport: { width: 390, height: 844 } })).newPage()
  const errors = pageErrors(page)
  await signIn(page, base, ADMIN_TOKEN)
  await open(page, budget.id)
  t.same(await horizontalOverflows(page, NEW_PARTS), [], 'the budget\'s buttons fit')
  await page.click('#budget-edit')
  await page.waitForSelector('#budget-editor:not([hidden])')
  t.same(await horizontalOverflows(page, NEW_PARTS), [], 'the edit form, titled with the name, fits')
  await page.click('#budget-cancel')
  await page.click('#budget-archive')
  await page.waitForSelector('#budget-archive-form:not([hidden])')
  t.same(await horizontalOverflows(page, NEW_PARTS), [], 'the archive confirmation, which names the budget, fits')
  t.same(errors, [], 'no page error')
})
