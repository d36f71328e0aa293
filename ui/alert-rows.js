// The alerts of the budget form: a row for each alert (its threshold, basis, actions and channels) and, with
// require-approval, its approval policy's levels (who decides each, up to what amount). Each input's
// data-field is the API's path to it (alerts.1.approvalPolicy.levels.0.upTo), renumbered as rows come and
// go, so a refusal lands beside the input it names. What the form does not show of an alert (allowedModels,
// maxPricePerMillion) is kept as the API sent it.
import { el } from './el.js'
import { listOf, numberOrText } from './form-values.js'

const ACTIONS = ['notify', 'restrict-models', 'require-approval', 'block-all', 'auto-downgrade']
const ROLES = ['viewer', 'editor', 'approver', 'admin']

/** The rows in `container`. */
export function alertRows (container) {
  // Each row's alert as the API sent it: the fields the form does not show go back unchanged, and a row
  // nobody touched goes back whole as it came (its text may not read back the same: an actor with a comma).
  const originals = new WeakMap()
  const pristine = new WeakMap()
  // Each level row's actors as the API sent them, and the text they were shown as.
  const sentActors = new WeakMap()

  const checkboxes = (values, checked, part) => el('fieldset', { class: 'choices', 'data-part': part },
    el('legend', {}, part === 'actions' ? 'Actions' : 'Roles'),
    values.map((value) => el('label', {}, el('input', { type: 'checkbox', value, checked: checked.includes(value) }), ` ${value}`)))
  const checkedIn = (fieldset) => [...fieldset.querySelectorAll('input:checked')].map((box) => box.value)
  const part = (row, name) => row.querySelector(`[data-part="${name}"]`)

  function levelRow (level = {}) {
    const row = el('div', { class: 'level-row' },
      el('label', {}, 'Level ', el('input', { 'data-part': 'name', value: level.name ?? '', required: true, size: 12 })),
      checkboxes(ROLES, level.roles ?? [], 'roles'),
      el('label', {}, 'Actors ', el('input', { 'data-part': 'actors', value: (level.actors ?? []).join(', '), placeholder: 'alice@example.com', size: 16 })),
      el('label', {}, 'Up to ', el('input', { 'data-part': 'upTo', value: level.upTo ?? '', inputmode: 'decimal', size: 10, placeholder: 'last: none' })),
      el('button', { type: 'button', onclick: () => { row.remove(); renumber() } }, 'Remove level'))
    sentActors.set(row, { actors: level.actors ?? [], text: part(row, 'actors').value })
    return row
  }

  function alertRow (alert = { threshold: '', actions: ['notify'], notificationChannels: [] }) {
    const levels = el('div', { class: 'levels' }, (alert.approvalPolicy?.levels ?? []).map(levelRow))
    const policy = el('fieldset', { class: 'policy', 'data-part': 'approvalPolicy' },
      el('legend', {}, 'Who approves more spend (none: approvers and admins)'),
      levels,
      el('button', { type: 'button', onclick: () => { levels.append(levelRow()); renumber() } }, 'Add level'),
      el('label', {}, 'Requests wait ', el('input', { 'data-part': 'approvalPolicy.requestTtlMinutes', value: alert.approvalPolicy?.requestTtlMinutes ?? '', inputmode: 'numeric', size: 6, placeholder: '1440' }), ' minutes'))
    const actions = checkboxes(ACTIONS, alert.actions ?? [], 'actions')
    const row = el('div', { class: 'alert-row' },
      el('label', {}, 'At ', el('input', { 'data-part': 'threshold', value: alert.threshold ?? '', inputmode: 'decimal', required: true, size: 6 }), ' %'),
      el('label', {}, 'of ', el('select', { 'data-part': 'basis' },
        el('option', { value: 'current', selected: alert.basis !== 'projected' }, 'spend'),
        el('option', { value: 'projected', selected: alert.basis === 'projected' }, 'projected spend'))),
      actions,
      el('label', {}, 'Channels ', el('input', { 'data-part': 'notificationChannels', value: (alert.notificationChannels ?? []).join(', '), placeholder: 'email, slack', size: 14 })),
      policy,
      el('button', { type: 'button', onclick: () => { row.remove(); renumber() } }, 'Remove alert'))
    originals.set(row, alert)
    const showPolicy = () => { policy.hidden = !checkedIn(actions).includes('require-approval') }
    actions.addEventListener('change', showPolicy)
    showPolicy()
    return row
  }

  /** Each input's data-field, the API's path to it, from the rows' order now. */
  function renumber () {
    container.querySelectorAll(':scope > .alert-row').forEach((row, index) => {
      const at = `alerts.${index}`
      row.dataset.field = at
      for (const element of row.querySelectorAll('[data-part]')) {
        const level = element.closest('.level-row')
        element.dataset.field = level === null
          ? `${at}.${element.dataset.part}`
          : `${at}.approvalPolicy.levels.${[...level.parentElement.children].indexOf(level)}.${element.dataset.part}`
      }
      row.querySelector('.levels').dataset.field = `${at}.approvalPolicy.levels`
      row.querySelectorAll('.level-row').forEach((level, position) => { level.dataset.field = `${at}.approvalPolicy.levels.${position}` })
    })
  }

  /** A level as the API takes it: roles and actors only when named, upTo only when typed (money: the text). */
  function readLevel (row) {
    const roles = checkedIn(part(row, 'roles'))
    // actors shown as 'a, b': read back as sent while the text is as shown (an actor's name may hold a comma)
    const sent = sentActors.get(row)
    const actors = part(row, 'actors').value === sent.text ? sent.actors : listOf(part(row, 'actors').value)
    const upTo = part(row, 'upTo').value.trim()
    return {
      name: part(row, 'name').value.trim(),
      ...(roles.length === 0 ? {} : { roles }),
      ...(actors.length === 0 ? {} : { actors }),
      ...(upTo === '' ? {} : { upTo })
    }
  }

  function readAlert (row) {
    const { approvalPolicy, basis, ...kept } = originals.get(row)
    const actions = checkedIn(part(row, 'actions'))
    const levels = [...row.querySelectorAll('.level-row')].map(readLevel)
    const ttl = part(row, 'approvalPolicy.requestTtlMinutes').value.trim()
    const chosenBasis = part(row, 'basis').value
    return {
      ...kept,
      threshold: numberOrText(part(row, 'threshold').value),
      // as sent: a basis the API left out stays out while it is the default
      ...(chosenBasis === 'current' && basis === undefined ? {} : { basis: chosenBasis }),
      actions,
      notificationChannels: listOf(part(row, 'notificationChannels').value),
      // a policy goes with require-approval; without levels, the default one decides
      ...(actions.includes('require-approval') && levels.length > 0
        ? { approvalPolicy: { levels, ...(ttl === '' ? {} : { requestTtlMinutes: numberOrText(ttl) }) } }
        : {})
    }
  }

  return {
    /** The rows of these alerts (none for []). */
    fill (alerts) {
      container.replaceChildren(...alerts.map(alertRow))
      renumber()
      for (const row of container.querySelectorAll(':scope > .alert-row')) pristine.set(row, JSON.stringify(readAlert(row)))
    },
    add () {
      container.append(alertRow())
      renumber()
      container.lastElementChild.querySelector('[data-part=threshold]').focus()
    },
    /** The alerts as the API takes them, in the rows' order. */
    read: () => [...container.querySelectorAll(':scope > .alert-row')].map((row) => {
      const read = readAlert(row)
      return JSON.stringify(read) === pristine.get(row) ? originals.get(row) : read
    })
  }
}
