// Review of the dashboard's words for an API that does not answer, or answers something that is not the API's
// (ui/api.js: Unreachable, ApiError's detail), in headless Chromium against the real gateway: the sign-in screen
// with the API down, a sign-out while a write is pending, a 502 whose body is odd JSON or hostile HTML, a 2xx
// without a JSON body, and an outage on each panel that writes.
import t from 'tap'
import type { Page, Route } from 'playwright-core'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { spendTo } from './fixtures/gateway.js'
import { listeningApprovalsGateway } from './fixtures/approvals-gateway.js'
import { launch, networkQuiet, signIn, openBudget as open } from './fixtures/browser.js'

const DOWN = /^The budget API did not answer: the connection or the gateway is down\. Once it is back, reload to see what the API has\.$/
const isApi = (url: URL): boolean => url.pathname.startsWith(PREFIX) && !url.pathname.startsWith(`${PREFIX}/ui`)
/** Words the page must never show. */
const BAD = /Failed to fetch|\[object Object\]|undefined|Cannot read|is not iterable|TypeError/

async function newPage (t: Parameters<typeof launch>[0]) {
  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  const uncaught: string[] = []
  page.on('pageerror', (error) => uncaught.push(error.message))
  return { page, uncaught, quiet: networkQuiet(page) }
}

/** Sets 1 EUR to 1.1 USD on the rates form. */
async function setRate (page: Page): Promise<void> {
  await page.fill('#rate-form [name=from]', 'EUR')
  await page.fill('#rate-form [name=to]', 'USD')
  await page.fill('#rate-form [name=rate]', '1.1')
  await page.click('#rate-form button[type=submit]')
}

/** The lines the page shows that a reader should never see (Failed to fetch, [object Object], undefined, a TypeError). */
const badLines = async (page: Page): Promise<string[]> =>
  (await page.evaluate('document.body.innerText') as string).split('\n').map((line) => line.trim()).filter((line) => BAD.test(line))
const visibleText = async (page: Page): Promise<string> => await page.evaluate('document.body.innerText') as string

t.test('signing in while the API is down: the sign-in screen says so, and reloading once it is back (as it says) signs in', async (t) => {
  const { base } = await listeningApprovalsGateway(t)
  const { page, uncaught } = await newPage(t)
  await page.goto(`${base}${PREFIX}/ui`)
  await page.route(isApi, async (route) => await route.abort('connectionrefused'))
  await page.fill('#token', ADMIN_TOKEN)
  await page.click('#sign-in button[type=submit]')
  await page.waitForSelector('#sign-in-error:not(:empty)')
  const said = (await page.textContent('#sign-in-error'))!
  t.match(said, DOWN, `the sign-in screen names the outage (${said})`)
  const kept = await page.evaluate('sessionStorage.getItem("relaycore-budgets-token")')
  await page.unrouteAll()
  await page.reload()
  await page.waitForLoadState('networkidle')
  t.ok(await page.isVisible('#dashboard'),
    `the screen says "Once it is back, reload to see what the API has": a reader reloads once the API is back and expects the dashboard; the token was ${kept === null ? 'dropped, so the reload shows an empty sign-in form' : 'kept'}`)

  // A proxy's HTML 502 at sign-in: the same words as on a form ("The budget API answered 502 Bad Gateway.").
  await page.route(isApi, async (route) => await route.fulfill({ status: 502, contentType: 'text/html', body: '<html><body><h1>502 Bad Gateway</h1></body></html>' }))
  if (!await page.isVisible('#sign-in')) await page.click('#sign-out')
  await page.fill('#token', ADMIN_TOKEN)
  await page.click('#sign-in button[type=submit]')
  await page.waitForSelector('#sign-in-error:not(:empty)')
  const proxy = (await page.textContent('#sign-in-error'))!
  t.equal(proxy, 'The budget API answered 502 Bad Gateway.', `a proxy's 502 at sign-in is named as on a form (shown: ${JSON.stringify(proxy)})`)
  t.same(uncaught, [], 'no uncaught error')
})

t.test('a sign-out while writes are pending, then the API goes down: nothing of the old session reaches the next token\'s page', async (t) => {
  const { base, team, app } = await listeningApprovalsGateway(t)
  await spendTo(app, team.id, '600') // the 50% alert: an Acknowledge button
  const { page, uncaught, quiet } = await newPage(t)
  await signIn(page, base, ADMIN_TOKEN)
  await open(page, team.id)
  await page.waitForSelector('#detail-alerts form.acknowledge')
  const held: Route[] = []
  await page.route((url) => isApi(url), async (route) => {
    if (route.request().method() === 'GET') return await route.continue()
    held.push(route) // a write: no answer until the test says
  })
  await page.click('#detail-alerts form.acknowledge button')
  await page.fill('#what-if-amount', '700')
  await page.click('#what-if-form button[type=submit]')
  await page.click('#budget-edit')
  await page.fill('#budget-form [name=amount]', '900')
  await page.click('#budget-form button[type=submit]')
  await setRate(page)
  while (held.length < 4) await new Promise((resolve) => setTimeout(resolve, 50))
  await page.click('#sign-out')
  await signIn(page, base, 'lead')
  await open(page, team.id)
  for (const route of held) await route.abort('connectionrefused')
  await quiet()
  const text = await visibleText(page)
  t.notMatch(text, /did not answer|Failed to fetch|answered/, 'no outage message of the old session on the lead\'s page')
  t.equal(await page.locator('[data-state=refused], #what-if-result[data-state=error]').count(), 0, 'no form marked refused')
  t.same(uncaught, [], 'no uncaught error')
})

t.test('a 502 whose body is not the API\'s error: the form says the status in words, and shows markup as text', async (t) => {
  const { base } = await listeningApprovalsGateway(t)
  const { page, uncaught } = await newPage(t)
  await signIn(page, base, ADMIN_TOKEN)
  await page.waitForSelector('#rates:not([hidden])')
  const bodies: Array<[string, string, string]> = [
    ['JSON without message', 'application/json', '{"error":"upstream timed out"}'],
    ['JSON whose message is an object', 'application/json', '{"message":{"text":"upstream timed out"}}'],
    ['JSON whose message is empty', 'application/json', '{"message":""}'],
    ['the JSON null', 'application/json', 'null'],
    ['HTML with a script', 'text/html', '<html><body><img src=x onerror="window.ran=1"><script>window.ran=1</script>502</body></html>'],
    ['JSON whose message is markup', 'application/json', '{"message":"<img src=x onerror=\\"window.ran=1\\">"}']
  ]
  const shown: Record<string, string | undefined> = {}
  for (const [name, contentType, body] of bodies) {
    await page.unrouteAll()
    await page.route(isApi, async (route) => await route.fulfill({ status: 502, contentType, body }))
    await page.evaluate('delete document.querySelector("#rate-form").dataset.state')
    await setRate(page)
    await page.waitForSelector('#rate-form[data-state=refused]')
    shown[name] = (await page.textContent('#rate-form .form-error'))!
  }
  await page.unrouteAll()
  t.equal(await page.evaluate('window.ran'), undefined, 'no markup of the answer ran')
  t.equal(await page.locator('#rate-form img').count(), 0, 'no markup of the answer became an element')
  t.equal(shown['JSON whose message is markup'], '<img src=x onerror="window.ran=1">', 'a message with markup is shown as text')
  t.equal(shown['HTML with a script'], 'The budget API answered 502 Bad Gateway.', 'an HTML 502 is named by its status')
  t.equal(shown['JSON without message'], 'The budget API answered 502 Bad Gateway.', 'JSON without message is named by its status')
  for (const name of ['JSON whose message is an object', 'JSON whose message is empty', 'the JSON null']) {
    t.equal(shown[name], 'The budget API answered 502 Bad Gateway.', `a 502 with ${name} is named by its status`)
  }
  t.same(uncaught, [], 'no uncaught error')
})

t.test('a 2xx without a JSON body (a proxy\'s 200 page, a 204): a message, no uncaught error, no "undefined"', async (t) => {
  const { base, team } = await listeningApprovalsGateway(t)
  const { page, uncaught, quiet } = await newPage(t)
  await signIn(page, base, ADMIN_TOKEN)
  await open(page, team.id)
  await quiet()
  const caught: Record<string, string[]> = {}
  const attempt = async (name: string, answer: { status: number, contentType?: string, body?: string }, pathEnd: string, act: () => Promise<void>) => {
    const before = uncaught.length
    await page.route((url) => isApi(url) && url.pathname.endsWith(pathEnd), async (route) => await route.fulfill(answer))
    await act()
    await quiet()
    await page.unrouteAll()
    caught[name] = uncaught.slice(before)
  }
  await attempt('what-if: 200 HTML', { status: 200, contentType: 'text/html', body: '<html>Please log in to the Wi-Fi</html>' }, '/simulate', async () => {
    await page.fill('#what-if-amount', '700')
    await page.click('#what-if-form button[type=submit]')
  })
  const whatIfShown = (await page.textContent('#what-if-result'))!
  await attempt('rates: 204', { status: 204 }, '/USD', async () => {
    await setRate(page)
  })
  await attempt('budget status: 200 empty', { status: 200, contentType: 'application/json', body: '' }, '/status', async () => {
    await page.click('#refresh')
  })
  for (const [name, errors] of Object.entries(caught)) t.same(errors, [], `${name}: no uncaught error`)
  t.not(whatIfShown, 'Replaying the last 30 days…', `what-if: the result does not stay "Replaying…" forever (shown: ${JSON.stringify(whatIfShown)})`)
  t.same(await badLines(page), [], 'after Refresh, the page shows no "undefined" or JavaScript error text but a message a reader can act on')
})

t.test('an outage on the approval queue, the what-if panel, the rates form and Acknowledge: the words, no uncaught error', async (t) => {
  const { base, team, app, dev } = await listeningApprovalsGateway(t)
  await spendTo(app, team.id, '600')
  const filed = (await dev('POST', `/${team.id}/approval-requests`, { amount: '100', reason: 'small' })).json()
  const { page, uncaught, quiet } = await newPage(t)
  await signIn(page, base, 'lead')
  const item = page.locator(`#approval-queue-list li[data-request-id="${filed.id as string}"]`)
  await item.waitFor()
  await open(page, team.id)
  await page.waitForSelector('#detail-alerts form.acknowledge')
  await quiet()
  await page.route(isApi, async (route) => await route.abort('connectionrefused'))
  await item.locator('[data-verdict=approve]').click()
  await item.locator('.form-error:not(:empty)').waitFor()
  t.match(await item.locator('.form-error').textContent(), DOWN, 'the queue\'s decision says the API did not answer')
  await page.click('#detail-alerts form.acknowledge button')
  await page.waitForSelector('#detail-alerts form.acknowledge .form-error:not(:empty)')
  t.match(await page.textContent('#detail-alerts form.acknowledge .form-error'), DOWN, 'Acknowledge too')
  await page.unrouteAll()
  await page.click('#sign-out')

  await signIn(page, base, ADMIN_TOKEN)
  await open(page, team.id)
  await quiet()
  await page.route(isApi, async (route) => await route.abort('connectionrefused'))
  await page.fill('#what-if-amount', '700')
  await page.click('#what-if-form button[type=submit]')
  await page.waitForSelector('#what-if-result[data-state=error]')
  t.match(await page.textContent('#what-if-result'), DOWN, 'the what-if panel too')
  await setRate(page)
  await page.waitForSelector('#rate-form[data-state=refused]')
  t.match(await page.textContent('#rate-form .form-error'), DOWN, 'and the rates form')
  await page.click('#refresh')
  await page.waitForSelector('#load-error:not(:empty)')
  t.match(await page.textContent('#load-error'), DOWN, 'and Refresh')
  await quiet()
  t.same(await badLines(page), [], 'no "Failed to fetch", "[object Object]" or "undefined" on the page')
  t.same(uncaught, [], 'no uncaught error')
})
