// Review of the dashboard's requests for approval (ui/approval-requests.js), in headless Chromium on a real
// PostgreSQL: one click files one request; a decision is made by its button, not by a key press in the
// comment; a level decided elsewhere meanwhile (409), or a request expired, changes nothing and leaves no
// stale decision on the queue; what a requester types (HTML, RTL, long text) is shown as text; a platform
// admin's exchange rate goes with every digit typed.
import t from 'tap'
import { ADMIN_TOKEN, snapshotTables } from './fixtures/app.js'
import { listeningApprovalsGateway } from './fixtures/approvals-gateway.js'
import { launch, networkQuiet, openBudget as open, pageErrors, provokedRefusal, signIn } from './fixtures/browser.js'

/** The queue's item for a request, on a page signed in as `token`, once the page's first reads are done. */
async function queueItem (t: Parameters<typeof listeningApprovalsGateway>[0], base: string, token: string, requestId: string, width = 1280) {
  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width, height: 900 } })
  const errors = pageErrors(page)
  const quiet = networkQuiet(page)
  await signIn(page, base, token)
  const item = page.locator(`#approval-queue-list li[data-request-id="${requestId}"]`)
  await item.waitFor()
  await quiet() // the page's first reads may draw the queue again: click the one that stays
  return { page, errors, quiet, item }
}

t.test('a double click on "Ask for approval" files one request, not two', async (t) => {
  const { base, team, admin } = await listeningApprovalsGateway(t)
  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  const errors = pageErrors(page)
  const quiet = networkQuiet(page)
  await signIn(page, base, 'dev')
  await open(page, team.id)
  await page.fill('#request-form [name=amount]', '100')
  await page.fill('#request-form [name=reason]', 'one request')
  await page.dblclick('#request-form button[type=submit]')
  await page.locator('#detail-request-list li[data-request-id]').first().waitFor()
  await quiet()
  const { requests } = (await admin('GET', `/approval-requests?budgetId=${team.id}`)).json()
  t.equal(requests.length, 1, `one request filed by one (double) click; the API has ${requests.length as number}`)
  t.equal(await page.locator('#detail-request-list li[data-request-id]').count(), requests.length, 'the page lists what the API has')
  t.same(errors.filter((error) => !provokedRefusal(error)), [], 'no page error')
})

t.test('Enter in the comment of a request decides nothing: a decision is the button chosen', async (t) => {
  const { base, team, dev, lead } = await listeningApprovalsGateway(t)
  const filed = (await dev('POST', `/${team.id}/approval-requests`, { amount: '100', reason: 'small one' })).json()
  const { errors, quiet, item } = await queueItem(t, base, 'lead', filed.id as string)
  // The lead writes why it will reject, and presses Enter at the end of the sentence.
  await item.locator('[name=comment]').fill('no, not this month')
  await item.locator('[name=comment]').press('Enter')
  await quiet()
  const { requests } = (await lead('GET', '/approval-requests?state=approved')).json()
  t.same(requests.map((request: { id: string }) => request.id), [], 'no request approved by a key press in the comment box')
  const pending = (await lead('GET', `/approval-requests?budgetId=${team.id}`)).json().requests
  t.match(pending, [{ id: filed.id, state: 'pending', nextLevel: 1 }], 'the request still waits for the lead\'s choice')
  t.same(errors.filter((error) => !provokedRefusal(error)), [], 'no page error')
})

t.test('a level decided by someone else meanwhile: the 409 is shown, nothing changes, and the queue no longer offers it', async (t) => {
  const { base, team, dev, lead, finance2, sql } = await listeningApprovalsGateway(t)
  // 600: above the lead's 500, so two levels; the lead approved the first over the API.
  const filed = (await dev('POST', `/${team.id}/approval-requests`, { amount: '600', reason: 'two levels' })).json()
  t.match((await lead('POST', `/${team.id}/approval-requests/${filed.id as string}/decisions`, { level: 1, verdict: 'approve' })).json(), { nextLevel: 2 })
  const { page, errors, quiet, item } = await queueItem(t, base, 'finance', filed.id as string)
  // The other finance principal decides level 2 first.
  t.match((await finance2('POST', `/${team.id}/approval-requests/${filed.id as string}/decisions`, { level: 2, verdict: 'reject', comment: 'no' })).json(), { state: 'rejected' })
  const before = await snapshotTables(sql)
  await item.locator('[name=comment]').fill('fine')
  await item.locator('button[data-verdict=approve]').click()
  await page.waitForSelector(`#approval-queue-list li[data-request-id="${filed.id as string}"] .form-error:not(:empty), #approval-queue-list li.empty, #approval-queue-error:not(:empty)`)
  await quiet()
  t.same(await snapshotTables(sql), before, 'the refused decision changed nothing')
  const shown = await page.locator('#approval-queue').innerText()
  t.match(shown, /closed|decided|rejected/i, `the page says why it was refused (${shown.replace(/\s+/g, ' ').slice(0, 300)})`)
  t.equal(await page.locator(`#approval-queue-list li[data-request-id="${filed.id as string}"] button[data-verdict=approve]`).count(), 0,
    'the queue no longer offers Approve on a request that is closed (only a Refresh takes it away now)')
  t.same(errors.filter((error) => !provokedRefusal(error)), [], 'no page error')
})

t.test('an expired request: the refusal is shown, nothing changes, and the queue no longer offers it', async (t) => {
  const { base, team, dev, sql } = await listeningApprovalsGateway(t)
  const filed = (await dev('POST', `/${team.id}/approval-requests`, { amount: '100', reason: 'expires' })).json()
  const { page, errors, quiet, item } = await queueItem(t, base, 'lead', filed.id as string)
  // Its time runs out while the lead's page is open.
  await sql`update budget_approval_requests set expires_at = now() - interval '1 second' where id = ${filed.id as string}`
  const before = await snapshotTables(sql)
  await item.locator('button[data-verdict=approve]').click()
  await page.waitForSelector(`#approval-queue-list li[data-request-id="${filed.id as string}"] .form-error:not(:empty), #approval-queue-list li.empty, #approval-queue-error:not(:empty)`)
  await quiet()
  // The lead's role does not approve (the policy names the lead): with nothing left to decide, the queue would be hidden.
  t.ok(await page.locator('#approval-queue-error').isVisible(), `the refusal is shown: ${await page.locator('#approval-queue-error').innerText()}`)
  t.same(await snapshotTables(sql), before, 'the refused decision changed nothing')
  t.equal(await page.locator(`#approval-queue-list li[data-request-id="${filed.id as string}"] button[data-verdict=approve]`).count(), 0,
    'the queue no longer offers Approve on an expired request')
  t.same(errors.filter((error) => !provokedRefusal(error)), [], 'no page error')
})

t.test('a requester\'s reason and a decider\'s comment are shown as text: no markup runs, nothing spills sideways', async (t) => {
  const { base, team, dev, lead } = await listeningApprovalsGateway(t)
  const HOSTILE = '"><img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>\u202Egnp.exe <b>bold</b>'
  const LONG = 'x'.repeat(1900)
  const filed = (await dev('POST', `/${team.id}/approval-requests`, { amount: '600', reason: HOSTILE })).json()
  const { page, errors, quiet, item } = await queueItem(t, base, 'lead', filed.id as string, 390)
  t.match(await item.innerText(), 'asked by dev-alice: "><img src=x onerror=', 'the reason is shown as the text typed')
  await item.locator('[name=comment]').fill(`${HOSTILE} ${LONG}`)
  await item.locator('button[data-verdict=approve]').click()
  await item.waitFor({ state: 'detached' })
  await quiet()
  t.match((await lead('GET', `/approval-requests?budgetId=${team.id}`)).json().requests, [{ id: filed.id, levels: [{ comment: `${HOSTILE} ${LONG}` }] }], 'the comment as typed')
  // The budget's page lists it with the lead's comment.
  await open(page, team.id)
  const listed = page.locator(`#detail-request-list li[data-request-id="${filed.id as string}"]`)
  await listed.waitFor()
  await quiet()
  t.match(await listed.innerText(), '(“"><img src=x', 'the comment shown as text')
  t.equal(await page.locator('#dashboard img, #dashboard script, #dashboard b').count(), 0, 'no element made from what was typed')
  t.equal(await page.evaluate('window.__pwned'), undefined, 'nothing ran')
  const overflow = await page.evaluate('document.documentElement.scrollWidth - document.documentElement.clientWidth')
  t.equal(overflow, 0, 'nothing sticks out sideways at 390 px')
  t.same(errors.filter((error) => !provokedRefusal(error)), [], 'no page error (a CSP violation would be one)')
})

t.test('a rate: 28 significant digits go as typed, trimmed, and come back whole; a bad one is refused beside the field and changes nothing', async (t) => {
  const { base, admin, sql } = await listeningApprovalsGateway(t)
  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  const errors = pageErrors(page)
  await signIn(page, base, ADMIN_TOKEN)
  await page.waitForSelector('#rates:not([hidden])')
  const before = await snapshotTables(sql)
  await page.fill('#rate-form [name=from]', 'EUR')
  await page.fill('#rate-form [name=to]', 'USD')
  for (const typed of ['1e3', '-1', '0.1+0.2', '0']) {
    await page.fill('#rate-form [name=rate]', ` ${typed} `)
    const put = page.waitForRequest((request) => request.method() === 'PUT')
    await page.click('#rate-form button[type=submit]')
    t.same((await put).postDataJSON(), { rate: typed }, `${typed}: sent as typed, trimmed`)
    await page.waitForSelector('#rate-form [aria-invalid], #rate-form .form-error:not(:empty)')
    t.pass(`${typed}: refused on the form (${(await page.locator('#rate-form .field-error, #rate-form .form-error').allTextContents()).join('')})`)
    t.same(await snapshotTables(sql), before, `${typed}: nothing changed`)
  }
  const RATE = '1234567890.123456789012345678'
  await page.fill('#rate-form [name=rate]', `\t${RATE}  `)
  const put = page.waitForRequest((request) => request.method() === 'PUT')
  await page.click('#rate-form button[type=submit]')
  t.same((await put).postDataJSON(), { rate: RATE }, 'every digit sent, as a string')
  await page.waitForSelector('#rate-status:not(:empty), #rate-form .form-error:not(:empty), #rate-form .field-error')
  const rates = (await admin('GET', '/exchange-rates?from=EUR&to=USD')).json().rates
  t.match(rates, [{ rate: RATE }], `the API keeps every digit (${JSON.stringify(rates)})`)
  t.equal(await page.locator('#rates-table tbody tr[data-rate-id] [data-field=rate]').first().textContent(), RATE, 'the table shows every digit')
  t.same(errors.filter((error) => !provokedRefusal(error)), [], 'no page error')
})
