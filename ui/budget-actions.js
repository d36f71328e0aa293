// The buttons that change budgets: "New budget" over the tree, and on a budget's page "Edit", "New budget
// under it" and "Archive…" (with its confirmation). They show only where the API would take them: to a
// principal that may write, and, for a scoped one, not on its area's roots (whoever granted the access
// changes those) and with no budget at the top (a scoped principal's budget goes under one of its area).
import { clearRefusal, showRefusal } from './form-errors.js'
import { onSubmit } from './form-submit.js'

/**
 * `form`: the budget form (budget-form.js); `budgets()`: the budgets the page shows; `selected()`: the one
 * picked, or null; `onArchived(budget)`: after the API archived it.
 */
export function budgetActions ({ client, $, signOut, form, budgets, selected, onArchived }) {
  const actions = $('#budget-actions')
  const archiveForm = $('#budget-archive-form')
  let access = null
  let current = null

  const mayWrite = () => access?.permissions.includes('write') === true
  const isRoot = (id) => access?.roots?.includes(id) === true

  function create (parentId) {
    form.create({ parents: [...budgets()], parentId, topLevel: access.scopes === null })
  }

  $('#budget-new').addEventListener('click', () => create(selected() ?? access.roots?.[0] ?? ''))
  $('#budget-new-child').addEventListener('click', () => create(current.id))
  $('#budget-edit').addEventListener('click', async () => {
    const budget = current
    clearRefusal(actions)
    try {
      const fresh = await client.get(`/${budget.id}`) // the budget as the API has it now, not as the list had it
      if (current === budget) form.edit(fresh)
    } catch (error) {
      showRefusal(actions, error, signOut)
    }
  })
  $('#budget-archive').addEventListener('click', () => {
    clearRefusal(archiveForm)
    $('#budget-archive-name').textContent = current.name
    archiveForm.hidden = false
  })
  $('#budget-archive-cancel').addEventListener('click', () => { archiveForm.hidden = true })
  onSubmit(archiveForm, async () => {
    const budget = current
    clearRefusal(archiveForm)
    try {
      await client.send('DELETE', `/${budget.id}${archiveForm.elements.namedItem('cascade').checked ? '?cascade=true' : ''}`)
    } catch (error) {
      return showRefusal(archiveForm, error, signOut)
    }
    archiveForm.hidden = true
    await onArchived(budget)
  })

  return {
    /** The principal (GET {prefix}/access): "New budget" if it may make one somewhere (a scoped one: under a root). */
    allow (principal) {
      access = principal
      $('#budget-new').hidden = !mayWrite() || (principal.roots !== null && principal.roots.length === 0)
    },
    /** The budget page now shown: its buttons, as the principal may use them. */
    show (budget) {
      if (current?.id !== budget.id) {
        archiveForm.hidden = true
        archiveForm.reset()
        clearRefusal(actions)
      }
      current = budget
      actions.hidden = !mayWrite()
      $('#budget-edit').hidden = isRoot(budget.id)
      $('#budget-archive').hidden = isRoot(budget.id)
      $('#budget-root-note').hidden = !isRoot(budget.id)
    },
    /** Nothing shown: on sign-out. */
    clear () {
      access = null
      current = null
      actions.hidden = true
      archiveForm.hidden = true
      archiveForm.reset()
      $('#budget-archive-name').textContent = ''
      clearRefusal(archiveForm)
      clearRefusal(actions)
      $('#budget-new').hidden = true
    }
  }
}
