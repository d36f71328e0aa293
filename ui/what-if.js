// The what-if form on a budget's page: "what if this had been X over the last 30 days?". It asks the admin
// API's what-if replay (POST {prefix}/simulate) with the budget's amount changed, and shows what the replay
// answers for this budget: the calls it would have refused, the spend that would not have happened, and the
// thresholds it would have crossed. The replay changes nothing (docs/simulate.md).
import { Stale, Unauthorized } from './api.js'
import { display } from './money.js'

const DAY_MS = 86_400_000

/** The form on the budget shown (its id, its currency); `client` is the admin API (api.js). */
export function whatIf ({ client, $, signOut }) {
  let current = null
  const form = $('#what-if-form')
  const result = $('#what-if-result')

  form.addEventListener('submit', async (event) => {
    event.preventDefault()
    if (current === null) return
    const budget = current
    const amount = $('#what-if-amount').value.trim()
    const to = new Date()
    const from = new Date(to.getTime() - 30 * DAY_MS)
    result.dataset.state = 'running'
    result.textContent = 'Replaying the last 30 days…'
    let answer
    try {
      answer = await client.send('POST', '/simulate', { from: from.toISOString(), to: to.toISOString(), proposal: { update: [{ id: budget.id, changes: { amount } }] } })
    } catch (error) {
      if (error instanceof Stale) return // another token's page now
      if (error instanceof Unauthorized) return signOut()
      if (current !== budget) return
      result.dataset.state = 'error'
      result.textContent = error.detail ?? error.message
      return
    }
    if (current !== budget) return // another budget was picked meanwhile
    const mine = answer.budgets.find((entry) => entry.budgetId === budget.id)
    const refused = mine?.refused ?? []
    const count = refused.reduce((sum, outcome) => sum + outcome.count, 0)
    const first = refused.map((outcome) => outcome.firstAt).sort()[0]
    const crossings = (mine?.crossings ?? []).map((crossing) => `${crossing.threshold}% on ${crossing.at.slice(0, 16)}`)
    result.dataset.state = 'done'
    result.dataset.refused = String(count)
    result.replaceChildren(
      line('what-if-refused', `${count} calls refused${first === undefined ? '' : ` (the first on ${first.slice(0, 16)} UTC)`}`),
      line('what-if-avoided', `${display(mine?.avoidedSpend ?? '0')} ${budget.currency} of spend that would not have happened`),
      line('what-if-crossings', crossings.length === 0 ? 'No threshold crossed' : `Thresholds crossed: ${crossings.join(', ')}`),
      ...answer.unknowns.map((unknown) => line(null, unknown, 'hint')))
  })

  function line (field, text, className) {
    const node = document.createElement('p')
    if (field !== null) node.dataset.field = field
    if (className !== undefined) node.className = className
    node.textContent = text
    return node
  }

  return {
    /** The budget now shown: the form starts again from its amount. */
    show (budget, limit) {
      current = budget
      $('#what-if-amount').value = limit
      result.replaceChildren()
      delete result.dataset.state
    }
  }
}
