// Review of the dashboard's use of GET {prefix}/access (ui/dashboard.js start/showAccess): the header names
// the token's principal as text, a token refused after /access signs out, an empty area is an empty page, and
// switching tokens in one tab leaves nothing of the previous token's data on the page.
import t from 'tap'
import type { Page } from 'playwright-core'
import { ADMIN_TOKEN, PREFIX } from './fixtures/app.js'
import { buildGateway, spendTo } from './fixtures/gateway.js'
import { launch, pageErrors } from './fixtures/browser.js'

/** A 401 in Chromium's console is the refusal the page expects (it signs out). */
const refusal = (error: string) => /status of 401/.test(error)

t.test('the dashboard and GET /access', async (t) => {
  const principals = new Map<string, unknown>()
  const revokeAfterAccess = new Set<string>()
  const revoked = new Set<string>()
  const gateway = await buildGateway(t, {
    gate: { sweepIntervalMs: 0 },
    authorize: (request) => {
      const token = /^Bearer (\S+)$/.exec(request.headers.authorization ?? '')?.[1] ?? ''
      if (token === ADMIN_TOKEN) return 'admin'
      if (revoked.has(token)) return false
      // revoked by the host the moment its /access was answered: the next read is refused
      if (revokeAfterAccess.has(token) && request.url.startsWith(`${PREFIX}/access`)) revoked.add(token)
      return (principals.get(token) ?? false) as never
    }
  })
  const base = await gateway.app.listen({ port: 0, host: '127.0.0.1' })
  const org = await gateway.createBudget({ name: 'Acme', scopeType: 'organization', scopeId: 'acme', amount: '1000' })
  const alerts = [{ threshold: 50, actions: ['notify'] }]
  const teamA = await gateway.createBudget({ name: 'Team A', scopeId: 'team-a', parentId: org.id, amount: '100', alerts })
  const teamB = await gateway.createBudget({ name: 'Team B secret', scopeId: 'team-b', parentId: org.id, amount: '100', alerts })
  await spendTo(gateway.app, teamA.id, '60')
  await spendTo(gateway.app, teamB.id, '70') // crosses Team B's 50% alert: in the admin's recent alerts
  const lead = 'lead-token-0123456789'
  principals.set(lead, { actor: 'lead-a', role: 'editor', scopes: [{ scopeType: 'team', scopeId: 'team-a' }] })

  const browser = await launch(t)
  async function signIn (page: Page, token: string) {
    await page.fill('#token', token)
    await page.click('#sign-in button[type=submit]')
  }

  t.test('an actor named with HTML and script is shown as text: no element, no script run, no page error', async (t) => {
    const page = await browser.newPage()
    const errors = pageErrors(page)
    const actor = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>&amp; "lead"'
    principals.set('html-token', { actor, role: 'viewer', scopes: [{ budgetId: teamA.id }] })
    await page.goto(`${base}${PREFIX}/ui`)
    await signIn(page, 'html-token')
    await page.locator(`.budget-row[data-budget-id="${teamA.id}"]`).waitFor()
    t.equal(await page.textContent('#principal'), `${actor} · viewer · scoped`, 'the name as written')
    t.equal(await page.locator('#principal *').count(), 0, 'no element made from it')
    t.equal(await page.evaluate('window.__pwned'), undefined, 'nothing of it ran')
    t.same(errors, [], 'no page error (the policy was not tested by a blocked inline script either)')
    await page.close()
  })

  t.test('a viewer with scopes: [] sees an empty page without an error', async (t) => {
    const page = await browser.newPage()
    const errors = pageErrors(page)
    principals.set('empty-token', { actor: 'nobody', role: 'viewer', scopes: [] })
    await page.goto(`${base}${PREFIX}/ui`)
    await signIn(page, 'empty-token')
    await page.waitForSelector('#dashboard:not([hidden])')
    await page.waitForSelector('#recent-alerts li')
    t.equal(await page.textContent('#principal'), 'nobody · viewer · scoped')
    t.equal(await page.locator('.budget-row').count(), 0, 'no budget')
    t.equal(await page.textContent('#load-error'), '', 'no error shown')
    t.equal(await page.textContent('#recent-alerts'), 'None')
    t.notOk(await page.isVisible('#reconciliation'))
    t.same(errors, [], 'no page error')
    await page.close()
  })

  t.test('a token revoked between /access and the list signs out cleanly', async (t) => {
    const page = await browser.newPage()
    const errors = pageErrors(page)
    principals.set('revoked-token', { actor: 'leaver', role: 'viewer', scopes: [{ budgetId: teamA.id }] })
    revokeAfterAccess.add('revoked-token')
    await page.goto(`${base}${PREFIX}/ui`)
    await signIn(page, 'revoked-token')
    await page.waitForSelector('#sign-in-error:has-text("refused")')
    t.ok(revoked.has('revoked-token'), '/access was answered, then the token refused')
    t.notOk(await page.isVisible('#principal'), 'no name left in the header')
    t.notOk(await page.isVisible('#dashboard'))
    t.ok(await page.isVisible('#sign-in'))
    t.equal(await page.evaluate('sessionStorage.length'), 0, 'the token is forgotten')
    t.same(errors.filter((error) => !refusal(error)), [], 'no page error but the 401 itself')
    await page.close()
  })

  t.test('admin, then a lead, then the admin again in one tab: nothing of the admin\'s reads is left on the lead\'s page', async (t) => {
    const page = await browser.newPage()
    const errors = pageErrors(page)
    await page.goto(`${base}${PREFIX}/ui`)
    await signIn(page, ADMIN_TOKEN)
    await page.locator(`.budget-row[data-budget-id="${teamB.id}"]`).click()
    await page.waitForSelector(`#detail[data-budget-id="${teamB.id}"]:not([hidden])`)
    await page.waitForSelector('#recent-alerts li:has-text("Team B secret")')
    await page.selectOption('#report-form [name=groupBy]', 'scope')
    await page.click('#report-form button[type=submit]')
    await page.waitForSelector('#report-table tbody tr')
    const adminReport = await page.locator('#report-table tbody').textContent()
    t.ok(adminReport !== null && adminReport.length > 0, `the admin ran the spend report (${adminReport})`)

    await page.click('#sign-out')
    await signIn(page, lead)
    await page.locator(`.budget-row[data-budget-id="${teamA.id}"]`).waitFor()
    await page.waitForSelector('#recent-alerts li:not(:has-text("Team B secret"))')
    t.equal(await page.textContent('#principal'), 'lead-a · editor · scoped')
    t.notOk(await page.isVisible('#detail'), 'the admin\'s selected budget (the sibling team) is not shown')
    t.notOk(await page.isVisible('#reconciliation'))
    t.notOk((await page.textContent('#recent-alerts'))?.includes('Team B'), 'the recent alerts are the lead\'s')
    t.equal(await page.locator('#report-table tbody tr').count(), 0, `no row of the admin's spend report on the lead's page (shown: ${await page.locator('#report-table tbody').textContent()})`)
    const visible = await page.locator('main').innerText()
    t.notOk(visible.includes('team-b') || visible.includes('Team B') || visible.includes(teamB.id), 'nothing of the sibling team visible')

    await page.click('#sign-out')
    await signIn(page, ADMIN_TOKEN)
    await page.locator(`.budget-row[data-budget-id="${teamB.id}"]`).waitFor()
    await page.waitForSelector('#reconciliation:not([hidden])')
    t.equal(await page.textContent('#principal'), 'admin · admin')
    t.same(errors, [], 'no page error')
    await page.close()
  })

  t.test('the admin\'s reads still on their way when the lead signs in do not land on the lead\'s page', async (t) => {
    const page = await browser.newPage()
    const errors = pageErrors(page)
    // The admin's recent-alerts read is slow (a loaded server): it answers after the lead has signed in.
    let release!: () => void
    const released = new Promise<void>((resolve) => { release = resolve })
    let held = false
    await page.route(/\/alerts\?limit=20$/, async (route) => {
      if (route.request().headers().authorization === `Bearer ${ADMIN_TOKEN}`) {
        held = true
        await released
      }
      await route.continue()
    })
    await page.goto(`${base}${PREFIX}/ui`)
    await signIn(page, ADMIN_TOKEN)
    await page.locator(`.budget-row[data-budget-id="${teamB.id}"]`).waitFor()
    t.ok(held, 'the admin\'s recent alerts are on their way')
    await page.click('#sign-out')
    await signIn(page, lead)
    await page.locator(`.budget-row[data-budget-id="${teamA.id}"]`).waitFor()
    await page.waitForSelector('#recent-alerts li')
    t.equal(await page.textContent('#principal'), 'lead-a · editor · scoped')
    release()
    // the admin's start() goes on: its recent alerts, then its reconciliation
    await page.waitForResponse(/\/reconciliation/).catch(() => {})
    await page.waitForTimeout(300)
    const recent = await page.locator('#recent-alerts').innerText()
    t.notOk(recent.includes(teamB.id) || recent.includes('Team B'), `the lead's recent alerts hold nothing of the sibling team (shown: ${recent.replace(/\s+/g, ' ')})`)
    t.same(errors, [], 'no page error')
    await page.close()
  })
})
