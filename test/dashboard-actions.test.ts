// The dashboard acts, in a real headless Chromium on a real PostgreSQL: a team lead's token makes, changes and
// archives a budget of its team through the page, with every digit of the amount typed; it is offered no
// parent outside its area, and the API's refusal when its access narrows is shown beside the field it names; it
// never sees the sibling team. A bad value shows the API's own error beside the field and changes nothing, and
// an alert acknowledged on the page is acknowledged in the API.
import t from 'tap'
import { ADMIN_TOKEN, PREFIX, snapshotTables } from './fixtures/app.js'
import { spendTo } from './fixtures/gateway.js'
import { launch, networkQuiet, openBudget as open, pageErrors, provokedRefusal, signIn } from './fixtures/browser.js'
import { LEAD, teamsWorld } from './fixtures/teams-world.js'

// More digits than a Number keeps (16 significant): a page that parsed it would send another amount, or one
// the API refuses as a JSON number of more than 15 digits.
const AMOUNT = '123456.7890123456'
const NEW_AMOUNT = '234567.8901234567'

/** A page of its own, signed in as the lead and showing the budget `id`, and the errors it reports. */
async function leadAt (t: Parameters<typeof launch>[0], base: string, id: string) {
  const browser = await launch(t)
  const page = await browser.newPage()
  const errors = pageErrors(page)
  await signIn(page, base, LEAD)
  await open(page, id)
  return { page, errors }
}

t.test('a team lead makes, changes and archives a budget of its team on the page; nothing outside its area is offered or shown', async (t) => {
  const { base, teamA, teamB, admin, scopes, sql } = await teamsWorld(t)
  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  const errors = pageErrors(page)
  const siblingShown = async () => { const html = await page.content(); return html.includes(teamB.id) || html.includes('Sibling Team B') }

  await signIn(page, base, LEAD)
  await page.locator(`.budget-row[data-budget-id="${teamA.id}"]`).waitFor()
  t.ok(await page.isVisible('#budget-new'), 'a lead may make budgets: "New budget" is there')
  await open(page, teamA.id)
  t.ok(await page.isVisible('#budget-new-child'), 'it may make one under its team')
  t.notOk(await page.isVisible('#budget-edit'), 'its team budget is a root of its area: no Edit')
  t.notOk(await page.isVisible('#budget-archive'), 'nor Archive')
  t.ok(await page.isVisible('#budget-root-note'), 'the page says why')

  await page.click('#budget-new-child')
  await page.waitForSelector('#budget-editor:not([hidden])')
  const parents = await page.locator('#budget-form [name=parentId] option').evaluateAll((options) => options.map((option) => option.getAttribute('value')))
  t.same(parents, [teamA.id], 'the only parent offered is in its area: no budget at the top, not the sibling, not the organization')
  t.notOk(await siblingShown(), 'the sibling team is nowhere on the page, the form included')
  t.equal(await page.inputValue('#budget-form [name=scopeType]'), 'user', 'a budget under a team is a user\'s, unless changed')
  await page.fill('#budget-form [name=name]', 'Alice')
  await page.fill('#budget-form [name=scopeId]', 'alice')
  await page.fill('#budget-form [name=amount]', `  ${AMOUNT} `)
  await page.click('#budget-add-alert')
  await page.fill('#budget-form [data-field="alerts.0.threshold"]', '50')
  const created = page.waitForRequest((request) => request.method() === 'POST' && request.url().endsWith(PREFIX))
  await page.click('#budget-form button[type=submit]')
  const sent = (await created).postDataJSON()
  t.equal(sent.amount, AMOUNT, 'the page sends the amount typed, trimmed, as a string')
  await page.waitForSelector('#action-status:has-text("Created Alice.")')
  const aliceId = await page.getAttribute('#detail', 'data-budget-id')
  t.not(aliceId, teamA.id, 'the page shows the new budget')
  const alice = (await admin('GET', `/${aliceId!}`)).json()
  t.match(alice, { name: 'Alice', scopeType: 'user', scopeId: 'alice', parentId: teamA.id, amount: AMOUNT, currency: 'USD', period: 'monthly', createdBy: 'lead-a' }, 'the API has it, with exactly the amount typed')
  t.same(alice.alerts, [{ threshold: 50, actions: ['notify'], notificationChannels: [] }])
  const aliceRow = page.locator(`.budget-row[data-budget-id="${alice.id}"]`)
  t.equal(await aliceRow.locator('[data-field=limit]').textContent(), AMOUNT, 'the tree shows it under its amount, every digit')
  t.equal(await page.locator(`[data-budget-id="${teamA.id}"] + .children [data-budget-id="${alice.id}"]`).count(), 1, 'under the team')
  t.equal(await page.locator('#detail-figures [data-field=limit]').getAttribute('title'), AMOUNT, 'and its page too')
  t.notOk(await page.isVisible('#budget-editor'), 'the form closes once the API took it')

  // Change the amount and the alert, and add one that asks for approval, decided by two levels.
  await page.click('#budget-edit')
  await page.waitForSelector('#budget-editor:not([hidden])')
  t.equal(await page.inputValue('#budget-form [name=amount]'), AMOUNT, 'the form starts from the budget as the API has it')
  await page.fill('#budget-form [name=amount]', NEW_AMOUNT)
  await page.fill('#budget-form [data-field="alerts.0.threshold"]', '75')
  await page.click('#budget-add-alert')
  await page.fill('#budget-form [data-field="alerts.1.threshold"]', '90')
  await page.uncheck('#budget-form [data-field="alerts.1.actions"] input[value=notify]')
  await page.check('#budget-form [data-field="alerts.1.actions"] input[value=require-approval]')
  const addLevel = page.locator('#budget-form [data-field="alerts.1"] button', { hasText: 'Add level' })
  await addLevel.click()
  await addLevel.click()
  await page.fill('#budget-form [data-field="alerts.1.approvalPolicy.levels.0.name"]', 'team lead')
  await page.check('#budget-form [data-field="alerts.1.approvalPolicy.levels.0.roles"] input[value=editor]')
  await page.fill('#budget-form [data-field="alerts.1.approvalPolicy.levels.0.upTo"]', '100.0000000001')
  await page.fill('#budget-form [data-field="alerts.1.approvalPolicy.levels.1.name"]', 'finance')
  await page.check('#budget-form [data-field="alerts.1.approvalPolicy.levels.1.roles"] input[value=approver]')
  const changed = page.waitForRequest((request) => request.method() === 'PUT')
  await page.click('#budget-form button[type=submit]')
  const change = (await changed).postDataJSON()
  t.same(Object.keys(change).sort(), ['alerts', 'amount'], 'a change sends the fields that changed, no more')
  t.equal(change.amount, NEW_AMOUNT, 'as the string typed')
  await page.waitForSelector('#action-status:has-text("Saved Alice.")')
  const saved = (await admin('GET', `/${alice.id}`)).json()
  t.equal(saved.amount, NEW_AMOUNT, 'the API has the new amount, exactly')
  t.same(saved.alerts, [
    { threshold: 75, actions: ['notify'], notificationChannels: [] },
    { threshold: 90, actions: ['require-approval'], notificationChannels: [], approvalPolicy: { levels: [{ name: 'team lead', roles: ['editor'], upTo: '100.0000000001' }, { name: 'finance', roles: ['approver'] }] } }
  ], 'and the alerts as edited, the policy\'s amount exact')
  t.equal(await aliceRow.locator('[data-field=limit]').textContent(), NEW_AMOUNT, 'the tree reads the change back')
  await page.waitForSelector('#burn-down .u-legend:has-text("90% alert")')
  t.pass('the budget\'s page reads it back: the burn-down draws the new alert')

  // The host narrows the lead's access to Alice while its page is open: the team is no longer its to build under.
  await open(page, teamA.id)
  await page.click('#budget-new-child')
  await page.fill('#budget-form [name=name]', 'Bob')
  await page.fill('#budget-form [name=scopeId]', 'bob')
  await page.fill('#budget-form [name=amount]', '10')
  scopes.lead = [{ budgetId: alice.id }]
  const before = await snapshotTables(sql)
  await page.click('#budget-form button[type=submit]')
  const message = page.locator('#budget-form [data-error-for=parentId]')
  await message.waitFor()
  t.same(await snapshotTables(sql), before, 'the refusal changed nothing')
  t.match(await message.textContent(), `Invalid 'parentId': budget '${teamA.id}' is not one of the budgets you may touch`, 'the API\'s 403, beside the parent it names')
  t.equal(await message.getAttribute('data-code'), 'BUDGET_ERR_OUT_OF_SCOPE')
  t.equal(await page.getAttribute('#budget-form [name=parentId]', 'aria-invalid'), 'true', 'the parent field is marked')
  t.equal(await page.textContent('#budget-form > .form-error'), '', 'no banner: the message is beside the field')
  scopes.lead = [{ scopeType: 'team', scopeId: 'team-a' }]
  await page.click('#budget-cancel')

  await open(page, alice.id)
  await page.click('#budget-archive')
  await page.click('#budget-archive-form button[type=submit]')
  await page.waitForSelector('#action-status:has-text("Archived Alice.")')
  await aliceRow.waitFor({ state: 'detached' })
  t.notOk(await page.isVisible('#detail'), 'the archived budget\'s page is gone')
  t.equal((await admin('GET', `/${alice.id}`)).statusCode, 404, 'the API archived it')
  t.notOk(await siblingShown(), 'the sibling team was never on the page')
  t.same(errors.filter((error) => !provokedRefusal(error)), [], 'no page error')
  t.equal(errors.filter(provokedRefusal).length, 1, 'the one refusal provoked (the 403), as Chromium logs it')
})

t.test('a bad value shows the API\'s own error beside the field it names, and changes nothing', async (t) => {
  const { base, teamA, admin, sql, createBudget } = await teamsWorld(t)
  const budget = await createBudget({ name: 'Alice', scopeType: 'user', scopeId: 'alice', parentId: teamA.id, amount: '10', alerts: [{ threshold: 50, actions: ['notify'] }] })
  const { page, errors } = await leadAt(t, base, budget.id)
  await page.click('#budget-edit')
  await page.waitForSelector('#budget-editor:not([hidden])')
  const before = await snapshotTables(sql)

  const cases: Array<[string, string, string, Record<string, unknown>]> = [
    ['amount', '[name=amount]', 'abc', { amount: 'abc' }],
    ['alerts.0.threshold', '[data-field="alerts.0.threshold"]', '1500', { alerts: [{ threshold: 1500, actions: ['notify'], notificationChannels: [] }] }]
  ]
  for (const [field, selector, typed, body] of cases) {
    await page.fill('#budget-form [name=amount]', '10')
    await page.fill('#budget-form [data-field="alerts.0.threshold"]', '50')
    await page.fill(`#budget-form ${selector}`, typed)
    await page.click('#budget-form button[type=submit]')
    const message = page.locator(`#budget-form [data-error-for="${field}"]`)
    await message.waitFor()
    const api = (await admin('PUT', `/${budget.id}`, body)).json()
    t.equal(api.field, field, `the API names ${field}`)
    t.equal(await message.textContent(), api.message, `${field}: the API's own message (${api.message as string})`)
    t.equal(await page.getAttribute(`#budget-form ${selector}`, 'aria-invalid'), 'true', `${field}: the field is marked`)
    t.equal(await page.getAttribute(`#budget-form ${selector}`, 'aria-describedby'), await message.getAttribute('id'), `${field}: and described by the message`)
    t.equal(await page.locator('#budget-form [aria-invalid]').count(), 1, `${field}: no other field is`)
    t.same(await snapshotTables(sql), before, `${field}: the API's state is unchanged`)
  }
  t.ok(await page.isVisible('#budget-editor'), 'the form stays open, with what was typed')
  t.equal(await page.inputValue('#budget-form [data-field="alerts.0.threshold"]'), '1500')
  t.same(errors.filter((error) => !provokedRefusal(error)), [], 'no page error')
  t.equal(errors.filter(provokedRefusal).length, 2, 'the two 400s provoked')
})

t.test('an alert acknowledged on the page is acknowledged in the API', async (t) => {
  const { base, teamA, app, admin, createBudget } = await teamsWorld(t)
  const budget = await createBudget({ name: 'Alice', scopeType: 'user', scopeId: 'alice', parentId: teamA.id, amount: '10', alerts: [{ threshold: 50, actions: ['notify'] }] })
  await spendTo(app, budget.id, '6')
  const [crossing] = (await admin('GET', `/${budget.id}/alerts`)).json().alerts
  t.equal(crossing.acknowledgedBy, null, 'a crossing nobody acknowledged')
  const { page, errors } = await leadAt(t, base, budget.id)
  await page.click(`#detail-alerts form.acknowledge[data-alert-id="${crossing.id as string}"] button`)
  await page.waitForSelector('#detail-alerts li:has-text("acknowledged by lead-a")')
  t.equal(await page.locator('#detail-alerts form.acknowledge').count(), 0, 'no button left for it')
  const [after] = (await admin('GET', `/${budget.id}/alerts`)).json().alerts
  t.match(after, { id: crossing.id, acknowledgedBy: 'lead-a', acknowledgedAt: String }, 'the API has the acknowledgement, by the lead')
  t.same(errors, [], 'no page error')
})

t.test('a write answered after its token signed out lands nowhere: the next token\'s page shows nothing of it', async (t) => {
  const { base, teamA, teamB, admin } = await teamsWorld(t)
  const browser = await launch(t)
  const page = await browser.newPage()
  const errors = pageErrors(page)
  const quiet = networkQuiet(page)
  await signIn(page, base, ADMIN_TOKEN)
  await page.locator(`.budget-row[data-budget-id="${teamB.id}"]`).waitFor()
  await open(page, teamB.id)
  await page.click('#budget-edit')
  await page.waitForSelector('#budget-editor:not([hidden])')
  await page.fill('#budget-form [name=amount]', '999')
  // The admin's change is slow on its way (a loaded network): it is answered after the lead has signed in.
  let release!: () => void
  const released = new Promise<void>((resolve) => { release = resolve })
  await page.route((url) => url.pathname === `${PREFIX}/${teamB.id}`, async (route) => {
    if (route.request().method() === 'PUT') await released
    await route.continue()
  })
  const answered = page.waitForResponse((response) => response.request().method() === 'PUT')
  await page.click('#budget-form button[type=submit]')
  await page.click('#sign-out')
  // in the same document (a navigation would cancel the admin's request)
  await page.fill('#token', LEAD)
  await page.click('#sign-in button[type=submit]')
  await page.locator(`.budget-row[data-budget-id="${teamA.id}"]`).waitFor()
  release()
  t.equal((await answered).status(), 200, 'the API took the admin\'s change')
  t.equal((await admin('GET', `/${teamB.id}`)).json().amount, '999')
  await quiet() // whatever the page would do with the answer, it has done
  t.equal(await page.textContent('#action-status'), '', 'no "Saved" on the lead\'s page')
  t.notOk(await page.isVisible('#budget-editor'), 'no form left open')
  t.notOk(await page.isVisible('#detail'), 'no budget\'s page of the admin\'s')
  const html = await page.content()
  t.notOk(html.includes(teamB.id) || html.includes('Sibling Team B'), 'nothing of the sibling team', { found: [...html.matchAll(new RegExp(`.{0,120}(${teamB.id}|Sibling Team B).{0,40}`, 'g'))].map((m) => m[0]) })
  t.same(errors, [], 'no page error')
})
