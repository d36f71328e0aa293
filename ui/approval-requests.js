// Requests for approval (docs/approvals.md) on the page: the queue of those the principal may decide now
// (GET {prefix}/approval-requests?decidable=true), each approved or rejected at its next level with a comment;
// and on a budget's page, its pending requests and the form to file one, which any reader may. Who decides a
// level is the policy's to say, not the role's: the queue shows to whoever the API says may decide something,
// and always to a principal whose role may approve (an empty queue then reads "None").
import { display } from './money.js'
import { el } from './el.js'
import { clearRefusal, showRefusal } from './form-errors.js'
import { onSubmit } from './form-submit.js'

/**
 * `budgetOf(id)`: the page's budget of that id (its name and currency), if shown; `onDecided(request)`: after a
 * decision, to read back the budget it was about (an approval made by the last level); `failed(error)`: a read
 * that failed after a write.
 */
export function approvalRequests ({ client, $, signOut, budgetOf, onDecided, failed }) {
  const queue = $('#approval-queue')
  const queueList = $('#approval-queue-list')
  const budgetList = $('#detail-request-list')
  const fileForm = $('#request-form')
  let access = null
  let shown = null // the budget whose requests the budget's page shows

  /** One request: its budget, amount (every digit), who asked and why, and each level with its decision. */
  function describe (request) {
    const budget = budgetOf(request.budgetId)
    const levels = request.levels.map((level) => level.verdict === null
      ? `${level.level}. ${level.name}: ${level.level === request.nextLevel ? 'to decide' : 'after that'}`
      : `${level.level}. ${level.name}: ${level.verdict === 'approve' ? 'approved' : 'rejected'} by ${level.decidedBy}${level.comment ? ` (“${level.comment}”)` : ''}`)
    return [
      el('div', {},
        el('strong', {}, budget?.name ?? request.budgetId), ' · ',
        el('span', { 'data-field': 'amount', title: request.amount }, display(request.amount)), budget === undefined ? '' : ` ${budget.currency}`,
        ` · asked by ${request.requestedBy}${request.reason ? `: ${request.reason}` : ''}`,
        el('span', { class: `badge ${request.state}`, 'data-field': 'state' }, request.state)),
      el('small', { class: 'levels' }, levels.join(' · '), ` · waits until ${request.expiresAt.slice(0, 16)} UTC`)
    ]
  }

  /** Approve or reject the request's next level, with a comment. */
  function decisionForm (request) {
    const form = el('form', { class: 'decide' },
      el('label', {}, `Comment for level ${request.nextLevel} `, el('input', { name: 'comment', 'data-field': 'comment', size: 24 })),
      el('button', { type: 'submit', value: 'approve', 'data-verdict': 'approve' }, 'Approve'),
      el('button', { type: 'submit', value: 'reject', 'data-verdict': 'reject' }, 'Reject'),
      el('p', { class: 'form-error', role: 'alert' }))
    // Enter in the comment decides nothing: a decision is the button chosen (the browser would press the first, Approve).
    form.elements.namedItem('comment').addEventListener('keydown', (event) => { if (event.key === 'Enter') event.preventDefault() })
    onSubmit(form, async (event) => {
      const verdict = event.submitter?.dataset.verdict
      if (verdict !== 'approve' && verdict !== 'reject') return
      clearRefusal(form)
      const comment = form.elements.namedItem('comment').value.trim()
      let decided
      try {
        decided = await client.send('POST', `/${request.budgetId}/approval-requests/${request.id}/decisions`,
          { level: request.nextLevel, verdict, ...(comment === '' ? {} : { comment }) })
      } catch (error) {
        showRefusal(form, error, signOut)
        // Decided by someone else meanwhile, closed, expired: the queue as the API has it now, without it. The refusal stays on the page.
        if (error.status === 409 || error.status === 403 || error.status === 404) await reloadKeeping(form).catch(failed)
        return
      }
      await load().catch(failed)
      await onDecided(decided)
    })
    return form
  }

  /** The queue read anew after `form`'s decision was refused: the refusal is shown over the queue. */
  async function reloadKeeping (form) {
    const refusal = form.querySelector('.field-error, .form-error')?.textContent ?? ''
    await load()
    $('#approval-queue-error').textContent = refusal
    // Shown where the decision was made, even when the principal has nothing left to decide (load hid the queue).
    if (refusal !== '') queue.hidden = false
  }

  /** The queue: the requests whose next level the principal may decide now. */
  async function load () {
    const { requests } = await client.get('/approval-requests?decidable=true&limit=50')
    $('#approval-queue-error').textContent = ''
    queueList.replaceChildren(...(requests.length === 0
      ? [el('li', { class: 'empty' }, 'None')]
      : requests.map((request) => el('li', { 'data-request-id': request.id }, describe(request), decisionForm(request)))))
    queue.hidden = !(access?.permissions.includes('approve') === true || requests.length > 0)
  }

  onSubmit(fileForm, async () => {
    clearRefusal(fileForm)
    const budgetId = shown
    const amount = fileForm.elements.namedItem('amount').value.trim()
    const reason = fileForm.elements.namedItem('reason').value.trim()
    try {
      await client.send('POST', `/${budgetId}/approval-requests`, { amount, ...(reason === '' ? {} : { reason }) })
    } catch (error) {
      return showRefusal(fileForm, error, signOut)
    }
    fileForm.reset()
    await Promise.all([showRequestsOf(budgetId), load()]).catch(failed)
  })

  /** The budget's pending requests on its page. */
  async function showRequestsOf (budgetId) {
    const { requests } = await client.get(`/approval-requests?budgetId=${encodeURIComponent(budgetId)}&limit=20`)
    if (shown !== budgetId) return
    budgetList.replaceChildren(...(requests.length === 0
      ? [el('li', { class: 'empty' }, 'None pending')]
      : requests.map((request) => el('li', { 'data-request-id': request.id }, describe(request)))))
  }

  return {
    allow (principal) { access = principal },
    load,
    /**
     * A budget's page: its pending requests, and the form to ask for more spend where a require-approval
     * alert would refuse calls (a request elsewhere has nothing to lift).
     */
    async show (budget) {
      if (shown !== budget.id) {
        clearRefusal(fileForm)
        fileForm.reset()
        budgetList.replaceChildren()
      }
      shown = budget.id
      fileForm.hidden = !budget.alerts.some((alert) => alert.actions.includes('require-approval'))
      await showRequestsOf(budget.id)
    },
    clear () {
      access = null
      shown = null
      queue.hidden = true
      $('#approval-queue-error').textContent = ''
      queueList.replaceChildren()
      budgetList.replaceChildren()
      clearRefusal(fileForm)
      fileForm.reset()
    }
  }
}
