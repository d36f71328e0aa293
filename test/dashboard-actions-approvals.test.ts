// The dashboard acts on approvals and what every tree shares, in a real headless Chromium on a real PostgreSQL:
// a call refused by require-approval, a request filed on the page, its two levels approved on the page by the team
// lead and then finance, and the call goes through; each role sees only the controls it may use; a platform
// admin sets an exchange rate, every digit.
import t from 'tap'
import type { Page } from 'playwright-core'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway, spendTo } from './fixtures/gateway.js'
import { approvalsAuthorize } from './fixtures/approvals-gateway.js'
import { launch, openBudget as open, pageErrors, provokedRefusal, signIn } from './fixtures/browser.js'

// Above the lead's upTo, so both levels; more digits than a Number keeps (16 significant).
const REQUESTED = '600000.0000000001'
const POLICY = { levels: [{ name: 'team lead', roles: ['editor'], upTo: '500000' }, { name: 'finance', roles: ['approver', 'admin'] }] }

/**
 * The approval tests' principals (fixtures/approvals-gateway.ts: dev, a viewer of team a; lead, its editor;
 * finance, an approver of every tree) over team a, whose require-approval at 50% is decided by the lead up to
 * 500000, then finance; spent past it.
 */
async function world (t: Parameters<typeof buildGateway>[0]) {
  const gateway = await buildGateway(t, { gate: { sweepIntervalMs: 0 }, authorize: approvalsAuthorize })
  const base = await gateway.app.listen({ port: 0, host: '127.0.0.1' })
  const org = await gateway.createBudget({ name: 'Org', scopeType: 'organization', scopeId: 'org', amount: '100000000' })
  const team = await gateway.createBudget({
    name: 'Team A', scopeId: 'team-a', parentId: org.id, amount: '2000000', alerts: [{ threshold: 50, actions: ['require-approval'], approvalPolicy: POLICY }]
  })
  await spendTo(gateway.app, team.id, '1000001')
  const admin = async (method: 'GET' | 'POST', url: string) => (await gateway.app.inject({ method, url: `${PREFIX}${url}`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).json()
  return { ...gateway, base, org, team, admin }
}

/** The controls that change budgets, by what they are: each one visible on the page now. */
async function writeControls (page: Page): Promise<string[]> {
  const controls = ['#budget-new', '#budget-actions', '#budget-edit', '#budget-archive', '#budget-new-child', '#budget-editor', '#detail-alerts form.acknowledge', '#rates']
  const shown = []
  for (const control of controls) if (await page.locator(control).first().isVisible()) shown.push(control)
  return shown
}

t.test('a two-level approval on the page: filed by a reader, approved by the team lead, then by finance; then the refused call goes through', async (t) => {
  const { base, team, call, admin } = await world(t)
  const refused = await call({ team: 'team-a' })
  t.equal(refused.statusCode, 402)
  t.equal(refused.json().error.code, 'approval_required', 'the call is refused until someone approves more spend')

  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  const errors = pageErrors(page)

  // The team's viewer files the request from the budget's page.
  await signIn(page, base, 'dev')
  await open(page, team.id)
  await page.fill('#request-form [name=amount]', ` ${REQUESTED} `)
  await page.fill('#request-form [name=reason]', 'launch week')
  const filing = page.waitForRequest((request) => request.method() === 'POST' && request.url().endsWith('/approval-requests'))
  await page.click('#request-form button[type=submit]')
  t.same((await filing).postDataJSON(), { amount: REQUESTED, reason: 'launch week' }, 'the amount as typed, trimmed, a string')
  const filed = page.locator('#detail-request-list li[data-request-id]')
  await filed.waitFor()
  const requestId = (await filed.getAttribute('data-request-id'))!
  t.equal(await filed.locator('[data-field=amount]').textContent(), REQUESTED, 'the budget\'s page lists it, every digit')
  t.match(await filed.innerText(), /1\. team lead: to decide · 2\. finance: after that/, 'both levels: it is above the lead\'s 500000')
  t.notOk(await page.isVisible('#approval-queue'), 'the viewer decides nothing: no queue')
  await page.click('#sign-out')

  // The team lead decides level 1 in its queue.
  await signIn(page, base, 'lead')
  const leadItem = page.locator(`#approval-queue-list li[data-request-id="${requestId}"]`)
  await leadItem.waitFor()
  t.ok(await page.isVisible('#approval-queue'), 'the lead\'s queue holds it: the policy names editors at level 1')
  t.match(await leadItem.innerText(), /asked by dev-alice: launch week/)
  await leadItem.locator('[name=comment]').fill('ok for the launch')
  await leadItem.locator('button[data-verdict=approve]').click()
  await leadItem.waitFor({ state: 'detached' })
  let request = (await admin('GET', '/approval-requests?state=pending')).requests.find((one: { id: string }) => one.id === requestId)
  t.match(request, { nextLevel: 2, levels: [{ level: 1, decidedBy: 'lead-a', verdict: 'approve', comment: 'ok for the launch' }, { level: 2, decidedBy: null }] }, 'the API has level 1 approved by the lead')
  t.equal((await call({ team: 'team-a' })).statusCode, 402, 'one level of two: still refused')
  await page.click('#sign-out')

  // Finance decides level 2.
  await signIn(page, base, 'finance')
  const financeItem = page.locator(`#approval-queue-list li[data-request-id="${requestId}"]`)
  await financeItem.waitFor()
  t.match(await financeItem.innerText(), /1\. team lead: approved by lead-a \(“ok for the launch”\)/, 'finance sees the lead\'s decision')
  await open(page, team.id)
  await financeItem.locator('[name=comment]').fill('budgeted')
  await financeItem.locator('button[data-verdict=approve]').click()
  await page.waitForSelector('#approval-queue-list li.empty')
  const approvalShown = page.locator('#detail-approvals [data-approval-id]')
  await approvalShown.waitFor()
  t.equal(await approvalShown.locator('[data-field=amount]').textContent(), REQUESTED, 'the budget\'s page reads the approval back, every digit')
  t.match(await approvalShown.innerText(), /by lead-a, finance until/)
  request = (await admin('GET', '/approval-requests?state=approved')).requests.find((one: { id: string }) => one.id === requestId)
  t.match(request, { state: 'approved', approvalId: String }, 'the API has it approved')
  const approvals = (await admin('GET', `/${team.id}/approvals`)).approvals
  t.equal(approvals.length, 1)
  t.match(approvals[0], { id: request.approvalId, amount: REQUESTED, approvedBy: 'lead-a, finance', reason: 'launch week' }, 'the approval\'s amount is exactly the one requested')

  t.equal((await call({ team: 'team-a' })).statusCode, 200, 'the call goes through now')
  t.same(errors, [], 'no page error')
})

t.test('each role sees the controls it may use: a viewer none that write, an approver its queue and not the budget\'s edit ones; a platform admin sets a rate', async (t) => {
  const { base, team, app, admin } = await world(t)
  const as = (who: string) => async (method: 'POST' | 'PUT', url: string, body: Record<string, unknown>) =>
    (await app.inject({ method, url: `${PREFIX}${url}`, headers: { authorization: `Bearer ${who}` }, body })).json()
  // A request of two levels whose first the lead approved over the API: finance has one to decide.
  const request = await as(ADMIN_TOKEN)('POST', `/${team.id}/approval-requests`, { amount: '700000', reason: 'load test' })
  t.match(await as('lead')('POST', `/${team.id}/approval-requests/${request.id as string}/decisions`, { level: 1, verdict: 'approve' }), { nextLevel: 2 })
  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  const errors = pageErrors(page)

  await signIn(page, base, 'dev')
  await open(page, team.id)
  await page.waitForSelector('#detail-alerts li:has-text("50% crossed")')
  t.same(await writeControls(page), [], 'a viewer sees no control that writes: no budget form or buttons, no Acknowledge, no rates')
  t.notOk(await page.isVisible('#approval-queue'), 'no queue: it decides nothing')
  t.ok(await page.isVisible('#request-form'), 'it may ask for approval, as any reader may')
  await page.click('#sign-out')

  await signIn(page, base, 'finance')
  const item = page.locator(`#approval-queue-list li[data-request-id="${request.id as string}"]`)
  await item.waitFor()
  t.ok(await item.locator('button[data-verdict=approve]').isVisible() && await item.locator('button[data-verdict=reject]').isVisible(), 'an approver sees Approve and Reject on the request it may decide')
  await open(page, team.id)
  await page.waitForSelector('#detail-alerts li:has-text("50% crossed")')
  t.same(await writeControls(page), [], 'and none of the controls that change budgets')
  await item.locator('[name=comment]').fill('not this quarter')
  await item.locator('button[data-verdict=reject]').click()
  await item.waitFor({ state: 'detached' })
  const rejected = (await admin('GET', '/approval-requests?state=rejected')).requests
  t.match(rejected, [{ id: request.id, state: 'rejected', levels: [{ verdict: 'approve' }, { decidedBy: 'finance', verdict: 'reject', comment: 'not this quarter' }] }], 'the API has its rejection, with the comment')
  await page.click('#sign-out')

  await signIn(page, base, ADMIN_TOKEN)
  await open(page, team.id)
  await page.waitForSelector('#detail-alerts form.acknowledge')
  t.same(await writeControls(page), ['#budget-new', '#budget-actions', '#budget-edit', '#budget-archive', '#budget-new-child', '#detail-alerts form.acknowledge', '#rates'],
    'a platform admin sees every control (the form opens when asked)')
  t.ok(await page.isVisible('#approval-queue'), 'and its queue')

  // A currency the API refuses, then a rate with more digits than a Number keeps.
  await page.fill('#rate-form [name=from]', 'eur')
  await page.fill('#rate-form [name=to]', 'USD')
  await page.fill('#rate-form [name=rate]', '0.92')
  await page.click('#rate-form button[type=submit]')
  const message = page.locator('#rate-form [data-error-for=from]')
  await message.waitFor()
  const api = await as(ADMIN_TOKEN)('PUT', '/exchange-rates/eur/USD', { rate: '0.92' })
  t.equal(await message.textContent(), api.message, `the API's own message beside the currency (${api.message as string})`)
  t.equal(await page.getAttribute('#rate-form [name=from]', 'aria-invalid'), 'true')
  const RATE = '0.923456789012345678'
  await page.fill('#rate-form [name=from]', 'EUR')
  await page.fill('#rate-form [name=rate]', ` ${RATE} `)
  await page.click('#rate-form button[type=submit]')
  const row = page.locator('#rates-table tbody tr[data-rate-id]').first()
  await row.waitFor()
  t.equal(await row.locator('[data-field=rate]').textContent(), RATE, 'the rates table reads it back, every digit')
  t.match(await page.textContent('#rate-status'), `1 EUR is ${RATE} USD from`)
  t.equal(await page.locator('#rate-form [aria-invalid]').count(), 0, 'the refusal is gone')
  const { rates } = await admin('GET', '/exchange-rates?from=EUR&to=USD')
  t.match(rates, [{ from: 'EUR', to: 'USD', rate: RATE, setBy: 'admin', replaced: false }], 'the API has the rate exactly')

  t.same(errors.filter((error) => !provokedRefusal(error)), [], 'no page error')
  t.equal(errors.filter(provokedRefusal).length, 1, 'the one 400 provoked')
})
