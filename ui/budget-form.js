// The budget form: make a budget (under one of the page's budgets, or at the top for a principal of every
// tree) or change one. It sends what was typed, trimmed: an amount is the string typed, never a Number. A
// change sends only the fields that differ from the budget as the API sent it (PUT changes the fields
// given; alerts, filters and rate limits go whole). The API checks everything, and a refusal is shown
// beside the field it names (form-errors.js); the page checks only that required fields are filled.
import { alertRows } from './alert-rows.js'
import { Unauthorized } from './api.js'
import { el } from './el.js'
import { clearRefusal, showRefusal } from './form-errors.js'
import { onSubmit } from './form-submit.js'
import { listOf, numberOrText, tagsOf, tagsText } from './form-values.js'

/** An instant's calendar day (YYYY-MM-DD) in `timeZone` (UTC when the budget names none). */
function dayIn (instant, timeZone) {
  const parts = Object.fromEntries(new Intl.DateTimeFormat('en-US', { timeZone: timeZone ?? 'UTC', year: 'numeric', month: '2-digit', day: '2-digit' })
    .formatToParts(new Date(instant)).map((part) => [part.type, part.value]))
  return `${parts.year}-${parts.month}-${parts.day}`
}

// The scope a budget under one of each type usually has.
const CHILD_SCOPE = { organization: 'team', team: 'user', user: 'project', project: 'project' }

/**
 * The form in #budget-editor. `client`: the admin API (api.js); `signOut`: what a refused token does;
 * `onSaved(budget, created)`: after the API took it, to read back what changed.
 */
export function budgetForm ({ client, $, signOut, onSaved }) {
  const section = $('#budget-editor')
  const form = $('#budget-form')
  const alerts = alertRows($('#budget-alerts'))
  const input = (name) => form.elements.namedItem(name)
  const text = (name) => input(name).value.trim()
  /** The budget being changed; null while making one. */
  let editing = null
  /** What the form read when it was filled: a change sends the fields that differ from it. */
  let initial = null
  /** The budgets a new one may go under. */
  let parents = []
  /** Counts the form's openings and closings: a save closes the form only if it is still the one that saved. */
  let opened = 0

  /** Every field of the form as the API takes it. */
  function values () {
    const filters = { models: listOf(text('filters.models')), tags: tagsOf(text('filters.tags')) }
    const rateLimits = Object.fromEntries(['requestsPerMinute', 'tokensPerMinute']
      .filter((name) => text(`rateLimits.${name}`) !== '')
      .map((name) => [name, numberOrText(text(`rateLimits.${name}`))]))
    return {
      name: text('name'),
      scopeType: input('scopeType').value,
      scopeId: text('scopeId'),
      amount: text('amount'),
      currency: text('currency'),
      period: input('period').value,
      startDate: text('startDate'),
      endDate: text('endDate') === '' ? null : text('endDate'),
      enforcement: input('enforcement').value,
      nearLimit: input('nearLimit').value === '' ? null : input('nearLimit').value,
      filters: {
        ...(filters.models.length === 0 ? {} : { models: filters.models }),
        ...(Object.keys(filters.tags).length === 0 ? {} : { tags: filters.tags })
      },
      rateLimits,
      alerts: alerts.read()
    }
  }

  /** A new budget's body: what was filled in; nothing for an optional part left empty. */
  function creation () {
    const { endDate, nearLimit, filters, rateLimits, alerts: list, ...rest } = values()
    return {
      ...rest,
      ...(input('parentId').value === '' ? {} : { parentId: input('parentId').value }),
      ...(endDate === null ? {} : { endDate }),
      ...(nearLimit === null ? {} : { nearLimit }),
      ...(Object.keys(filters).length === 0 ? {} : { filters }),
      ...(Object.keys(rateLimits).length === 0 ? {} : { rateLimits }),
      ...(list.length === 0 ? {} : { alerts: list })
    }
  }

  /** A change's body: the fields that differ from the budget as it was read. */
  function changes () {
    return Object.fromEntries(Object.entries(values()).filter(([name, value]) => JSON.stringify(value) !== JSON.stringify(initial[name])))
  }

  function fill (budget) {
    for (const name of ['name', 'scopeType', 'scopeId', 'amount', 'currency', 'period', 'enforcement']) input(name).value = budget[name]
    // The API reads a typed date as midnight in the budget's timezone: shown as that day, not the UTC one.
    input('startDate').value = dayIn(budget.startDate, budget.timezone)
    input('endDate').value = budget.endDate === null || budget.endDate === undefined ? '' : dayIn(budget.endDate, budget.timezone)
    input('nearLimit').value = budget.nearLimit ?? ''
    input('filters.models').value = (budget.filters?.models ?? []).join(', ')
    input('filters.tags').value = tagsText(budget.filters?.tags)
    for (const name of ['requestsPerMinute', 'tokensPerMinute']) input(`rateLimits.${name}`).value = budget.rateLimits?.[name] ?? ''
    alerts.fill(budget.alerts ?? [])
    showEndDate()
  }

  /** The end date is asked for a custom period (or shown while it holds one). */
  function showEndDate () {
    $('#budget-end').hidden = input('period').value !== 'custom' && input('endDate').value === ''
    input('endDate').required = input('period').value === 'custom'
  }

  function open (title) {
    clearRefusal(form)
    $('#budget-editor-title').textContent = title
    section.hidden = false
    section.scrollIntoView({ block: 'nearest' })
    input('name').focus()
  }

  onSubmit(form, async () => {
    clearRefusal(form)
    const budget = editing
    const body = budget === null ? creation() : changes()
    if (Object.keys(body).length === 0) return showRefusal(form, new Error('Nothing to save: no field differs from the budget as it is.'), signOut)
    form.dataset.state = 'saving'
    const asked = opened
    let saved
    try {
      saved = budget === null ? await client.send('POST', '', body) : await client.send('PUT', `/${budget.id}`, body)
    } catch (error) {
      if (asked === opened) showRefusal(form, error, signOut)
      else if (error instanceof Unauthorized) signOut()
      return
    }
    if (asked === opened) close() // not if it was closed, or opened anew, meanwhile
    await onSaved(saved, budget === null) // the API changed either way: the page reads it back
  })
  input('period').addEventListener('change', showEndDate)
  // A budget is in its parent's currency.
  input('parentId').addEventListener('change', () => {
    const parent = parents.find((candidate) => candidate.id === input('parentId').value)
    if (parent !== undefined) input('currency').value = parent.currency
  })
  $('#budget-add-alert').addEventListener('click', () => alerts.add())
  $('#budget-cancel').addEventListener('click', () => close())

  function close () {
    opened++
    editing = null
    initial = null
    section.hidden = true
    $('#budget-editor-title').textContent = ''
    clearRefusal(form)
    form.reset()
    input('parentId').replaceChildren()
    alerts.fill([])
  }

  return {
    /**
     * A new budget under one of `parents` (the page's budgets, `parentId` chosen), or at the top when
     * `topLevel` (a principal of every tree: a scoped one's budget must go under one of its area).
     */
    create ({ parents: candidates, parentId, topLevel }) {
      close()
      parents = candidates
      const parentSelect = input('parentId')
      parentSelect.replaceChildren(
        ...(topLevel ? [el('option', { value: '' }, 'nothing: a budget at the top')] : []),
        ...[...parents].sort((a, b) => a.name.localeCompare(b.name)).map((parent) =>
          el('option', { value: parent.id, selected: parent.id === parentId }, `${parent.name} (${parent.scopeType}:${parent.scopeId})`)))
      const parent = parents.find((candidate) => candidate.id === parentSelect.value)
      fill({
        name: '', scopeType: parent === undefined ? 'organization' : CHILD_SCOPE[parent.scopeType], scopeId: '', amount: '',
        currency: parent?.currency ?? 'USD', period: parent?.period ?? 'monthly', enforcement: 'hard',
        startDate: new Date().toISOString(), endDate: null, nearLimit: null, alerts: []
      })
      $('#budget-parent').hidden = false
      open(parent === undefined ? 'New budget' : `New budget under ${parent.name}`)
    },
    /** The budget `budget` (as the API sent it), to change. */
    edit (budget) {
      close()
      editing = budget
      fill(budget)
      initial = values()
      $('#budget-parent').hidden = true
      open(`Change ${budget.name}`)
    },
    /** Gone: on sign-out, and when the budget it was changing is archived. */
    close
  }
}
