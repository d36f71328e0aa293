// Review of 34ab349 (a refused decision's message keeps the approval queue shown when the principal has nothing
// left to decide): the refusal does not outlive its principal (a sign-out and in as someone else, even with the
// queue's reload still in flight), a Refresh, or a later decision; and a principal who decides nothing sees no queue.
import t from 'tap'
import type { Page } from 'playwright-core'
import { listeningApprovalsGateway } from './fixtures/approvals-gateway.js'
import { launch, networkQuiet, pageErrors, provokedRefusal, signIn } from './fixtures/browser.js'

/** The lead's only request expires while its page is open, and the lead's Approve is refused. */
async function refusedLead (t: Parameters<typeof listeningApprovalsGateway>[0], page: Page, hold = false) {
  const w = await listeningApprovalsGateway(t)
  const filed = (await w.dev('POST', `/${w.team.id}/approval-requests`, { amount: '100', reason: 'expires' })).json()
  const quiet = networkQuiet(page)
  await signIn(page, w.base, 'lead')
  const item = page.locator(`#approval-queue-list li[data-request-id="${filed.id as string}"]`)
  await item.waitFor()
  await quiet()
  await w.sql`update budget_approval_requests set expires_at = now() - interval '1 second' where id = ${filed.id as string}`
  let release = () => {}
  if (hold) {
    const held = new Promise<void>((resolve) => { release = resolve })
    // the queue's reload after the refusal waits until released
    await page.route(/approval-requests\?decidable=true/, async (route) => { await held; await route.continue().catch(() => {}) })
  }
  await item.locator('button[data-verdict=approve]').click()
  return { ...w, filed, quiet, release }
}

const queueState = async (page: Page) => ({
  visible: await page.locator('#approval-queue').isVisible(),
  error: await page.locator('#approval-queue-error').innerText().catch(() => '')
})

t.test('after a refusal, signing out and in as a viewer who decides nothing: no queue, no refusal', async (t) => {
  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  const errors = pageErrors(page)
  const { base, quiet } = await refusedLead(t, page)
  await page.waitForSelector('#approval-queue-error:not(:empty)')
  await quiet()
  t.match(await queueState(page), { visible: true, error: /expired|closed|not pending|no longer/i }, 'the lead sees the refusal over the queue')
  await page.click('#sign-out')
  await signIn(page, base, 'dev')
  await quiet()
  t.same(await queueState(page), { visible: false, error: '' }, 'the viewer sees no queue and no refusal of the lead\'s')
  t.same(errors.filter((error) => !provokedRefusal(error)), [], 'no page error')
})

t.test('a sign-out while the queue\'s reload after a refusal is in flight: the next principal sees none of it', async (t) => {
  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  const errors = pageErrors(page)
  const { base, quiet, release } = await refusedLead(t, page, true)
  await page.waitForSelector('#approval-queue-list .form-error:not(:empty)')
  await page.click('#sign-out')
  await page.unroute(/approval-requests\?decidable=true/)
  await signIn(page, base, 'dev')
  release()
  await quiet()
  t.same(await queueState(page), { visible: false, error: '' }, 'the viewer sees no queue and no refusal of the lead\'s')
  t.same(errors.filter((error) => !provokedRefusal(error)), [], 'no page error')
})

t.test('after a refusal, a Refresh with nothing to decide hides the queue; a new request to decide shows it without the old refusal', async (t) => {
  const browser = await launch(t)
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  const errors = pageErrors(page)
  const { quiet, dev, team } = await refusedLead(t, page)
  await page.waitForSelector('#approval-queue-error:not(:empty)')
  await quiet()
  await page.click('#refresh')
  await quiet()
  t.same(await queueState(page), { visible: false, error: '' }, 'the editor with nothing to decide: no queue after a Refresh')
  const next = (await dev('POST', `/${team.id}/approval-requests`, { amount: '50', reason: 'next' })).json()
  await page.click('#refresh')
  const item = page.locator(`#approval-queue-list li[data-request-id="${next.id as string}"]`)
  await item.waitFor()
  await quiet()
  t.same(await queueState(page), { visible: true, error: '' }, 'the new request shown, no refusal left over')
  await item.locator('button[data-verdict=approve]').click()
  await item.waitFor({ state: 'detached' })
  await quiet()
  t.same(await queueState(page), { visible: false, error: '' }, 'decided: nothing left, no queue, no refusal')
  t.same(errors.filter((error) => !provokedRefusal(error)), [], 'no page error')
})
