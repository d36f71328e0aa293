// The dashboard's reconciliation view in headless Chromium: the provider's bill beside the recorded spend for the
// default range (the last 30 days), every digit of each amount, the day past the tolerance highlighted and named,
// and a range picked in the form.
import t from 'tap'
import { chromium, type Browser } from 'playwright-core'
import { ADMIN_TOKEN, PREFIX, buildApp } from './fixtures/app.js'
import { findChromium } from './fixtures/programs.js'

const DAY_MS = 86_400_000
const dayBefore = (days: number): string => new Date(Date.now() - days * DAY_MS).toISOString().slice(0, 10)

async function launch (t: { teardown: (fn: () => unknown) => void }): Promise<Browser> {
  const executablePath = findChromium()
  if (executablePath === undefined) throw new Error('no Chromium: apt-get install chromium, or set CHROMIUM_PATH, or npx playwright-core install chromium')
  const browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] })
  t.teardown(async () => await browser.close())
  return browser
}

t.test('the provider bill view: exact amounts, the drifting day highlighted, a range from the form', async (t) => {
  const app = await buildApp(t)
  const base = await app.app.listen({ port: 0, host: '127.0.0.1' })
  const admin = async (method: 'POST', url: string, body: Record<string, unknown>) => {
    const response = await app.admin({ method, url: `${PREFIX}${url}`, body })
    if (response.statusCode >= 300) throw new Error(`${method} ${url}: ${response.statusCode} ${response.body}`)
    return response.json<{ id: string }>()
  }
  const team = await admin('POST', '', { name: 'Search team', scopeType: 'team', scopeId: 'team-a', amount: '1000', currency: 'USD', period: 'monthly', startDate: '2024-01-01' })
  await admin('POST', '/provider-costs/mappings', { provider: 'mistral', kind: 'project', value: 'web', budgetId: team.id })
  await admin('POST', `/${team.id}/usage`, { amount: '10.0000000001', currency: 'USD', occurredAt: `${dayBefore(2)}T00:00:00Z` })
  await admin('POST', `/${team.id}/usage`, { amount: '3', currency: 'USD', occurredAt: `${dayBefore(1)}T00:00:00Z` })
  const imported = await app.admin({ method: 'POST', url: `${PREFIX}/provider-costs/import`, headers: { 'content-type': 'text/csv' },
    payload: `date,provider,account,project,amount,currency\n${dayBefore(2)},mistral,acme,web,10.0000000002,USD\n${dayBefore(1)},mistral,acme,web,3.3000000001,USD\n` })
  t.equal(imported.statusCode, 200)

  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  const errors: string[] = []
  page.on('pageerror', (error) => errors.push(error.message))
  page.on('console', (message) => { if (message.type() === 'error') errors.push(message.text()) })
  await page.goto(`${base}${PREFIX}/ui`)
  await page.fill('#token', ADMIN_TOKEN)
  await page.click('#sign-in button[type=submit]')

  const rows = page.locator('#reconciliation-table tbody tr')
  await rows.first().waitFor()
  t.equal(await rows.count(), 2, 'one row per day of the last 30 with a bill')
  const calm = page.locator(`#reconciliation-table tr[data-day="${dayBefore(2)}"]`)
  const drifting = page.locator(`#reconciliation-table tr[data-day="${dayBefore(1)}"]`)
  t.equal(await calm.locator('[data-field=provider]').textContent(), '10.0000000002', 'every digit of the bill')
  t.equal(await calm.locator('[data-field=recorded]').textContent(), '10.0000000001')
  t.equal(await calm.locator('[data-field=difference]').textContent(), '0.0000000001')
  t.equal(await calm.getAttribute('class'), null, 'within the tolerance: not highlighted')
  t.equal(await calm.locator('[data-field=state]').textContent(), 'within tolerance')
  t.equal(await drifting.getAttribute('class'), 'drift', 'past the tolerance: highlighted')
  t.equal(await drifting.locator('[data-field=state]').textContent(), 'drift')
  t.equal(await drifting.locator('[data-field=difference]').textContent(), '0.3000000001')
  t.equal(await drifting.locator('[data-field=ratio]').textContent(), '0.100000')
  t.equal(await page.locator('#reconciliation-tolerance').textContent(), '0.05')
  const backgroundOf = `(row) => getComputedStyle(row).backgroundColor`
  const background = async (row: typeof calm) => await row.evaluate(new Function(`return ${backgroundOf}`)() as (row: unknown) => string)
  t.not(await background(drifting), await background(calm), 'the highlight shows')

  await page.fill('#reconciliation-form [name=from]', dayBefore(1))
  await page.fill('#reconciliation-form [name=to]', dayBefore(1))
  await page.click('#reconciliation-form button[type=submit]')
  await rows.nth(1).waitFor({ state: 'detached' })
  t.equal(await rows.first().getAttribute('data-day'), dayBefore(1), 'the range picked in the form')
  t.same(errors, [], 'no page errors')
})
