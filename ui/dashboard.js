// The dashboard's script: sign in with the admin token (kept in this tab's sessionStorage), then read the
// admin API of the prefix this page is served under and draw the budget tree, the selected budget's
// burn-down, alerts, approvals and recent decisions, the recent alerts, and the spend report with its CSV download.
// What changes the API's state has a module of its own, shown only to a principal that may use it: the budget
// form and its buttons, acknowledging an alert, requests for approval, exchange rates. After a write the page
// reads back what it changed. Money is shown as the API sends it, every digit (money.js), and sent as typed:
// a Number only ever places a point on the chart.
import { adminApi, ApiError, Stale, Unauthorized } from './api.js'
import { el, feed } from './el.js'
import { coordinate, display, fromUnits, percentOf, toUnits } from './money.js'
import { presetDays, queryRange } from './report-periods.js'
import { reconciliationQuery, reconciliationRows } from './reconciliation.js'
import { whatIf } from './what-if.js'
import { budgetForm } from './budget-form.js'
import { budgetActions } from './budget-actions.js'
import { budgetAlerts } from './budget-alerts.js'
import { approvalRequests } from './approval-requests.js'
import { exchangeRates } from './rates.js'

const TOKEN_KEY = 'relaycore-budgets-token'

const $ = (selector) => document.querySelector(selector)

// Every read and write goes through this client: a sign-in or sign-out renews its session, and an answer to
// what an earlier session asked is dropped (Stale), whatever it holds.
const client = adminApi({
  // The admin API's prefix, written into the page by the server ('' when the API is at the root).
  prefix: document.querySelector('meta[name=relaycore-budgets-api]').content,
  token: () => sessionStorage.getItem(TOKEN_KEY) ?? ''
})
const api = client.get
const signOut = () => signedOut('That token was refused.')
const forms = { client, $, signOut }

// The parts of a budget's page and of the page that act (each its own module).
const whatIfForm = whatIf(forms)
const editor = budgetForm({
  ...forms,
  onSaved: async (budget, created) => await afterWrite(budget.id, `${created ? 'Created' : 'Saved'} ${budget.name}.`)
})
const actions = budgetActions({
  ...forms,
  form: editor,
  budgets: () => state.budgets.values(),
  selected: () => state.selected,
  onArchived: async (budget) => {
    editor.close()
    await afterWrite(null, `Archived ${budget.name}.`)
  }
})
const alertsFeed = budgetAlerts({ ...forms, onAcknowledged: async (id) => await afterWrite(id, 'Alert acknowledged.') })
const requests = approvalRequests({
  ...forms,
  failed: (error) => failed(error),
  budgetOf: (id) => state.budgets.get(id),
  onDecided: async (request) => {
    if (state.selected === request.budgetId) await select(request.budgetId)
  }
})
const rates = exchangeRates({ ...forms, failed: (error) => failed(error, '#rates-error') })

/** Runs `task` over the items, at most `width` at a time (one request per budget, without a flood). */
async function eachLimited (items, width, task) {
  const queue = [...items]
  await Promise.all(Array.from({ length: Math.min(width, queue.length) }, async () => {
    while (queue.length > 0) await task(queue.shift())
  }))
}

// Sign in and out

function signedIn () {
  $('#sign-in').hidden = true
  $('#dashboard').hidden = false
  $('#refresh').hidden = false
  $('#sign-out').hidden = false
}

function signedOut (message = '', { keepToken = false } = {}) {
  client.renew()
  if (!keepToken) sessionStorage.removeItem(TOKEN_KEY)
  // Nothing of the token's data stays on the page for the next one, and no form it opened.
  state.budgets = new Map()
  state.statuses = new Map()
  state.access = null
  unselect()
  editor.close()
  actions.clear()
  requests.clear()
  rates.clear()
  // The budget's page too, hidden as it is: its name and id stay out of the next token's document.
  for (const selector of ['#budget-tree', '#recent-alerts', '#report-table tbody', '#reconciliation-table tbody', '#what-if-result', '#detail-decisions tbody',
    '#detail-name', '#detail-figures', '#detail-alerts', '#detail-approvals', '#burn-down', '#burn-down-projection']) $(selector).replaceChildren()
  delete $('#detail-decisions').dataset.budgetId
  delete $('#detail').dataset.budgetId
  for (const selector of ['#load-error', '#report-error', '#reconciliation-error', '#reconciliation-tolerance', '#principal', '#action-status', '#rates-error']) $(selector).textContent = ''
  $('#dashboard').hidden = true
  $('#refresh').hidden = true
  $('#sign-out').hidden = true
  $('#principal').hidden = true
  $('#sign-in').hidden = false
  $('#sign-in-error').textContent = message
  $('#token').value = ''
}

async function start () {
  try {
    const access = await api('/access')
    showAccess(access)
    await loadBudgets()
    signedIn()
    await loadRecentAlerts()
    await requests.load()
    if (access.permissions.includes('platform')) await Promise.all([runReconciliation(), rates.load()])
  } catch (error) {
    failed(error)
  }
}

/**
 * After a write the API took: the page reads back what it changed (the tree and its figures, the budget's page
 * of `selectId` (null: none), the recent alerts and the approval queue), and says what was done.
 */
async function afterWrite (selectId, done) {
  state.selected = selectId
  try {
    await loadBudgets()
    await Promise.all([loadRecentAlerts(), requests.load()])
    $('#action-status').textContent = done
  } catch (error) {
    failed(error)
  }
}

/**
 * Who the token stands for (GET {prefix}/access): its name and role in the header, and only the panels it may
 * use. The what-if replay and the reconciliation read every tree: a platform admin's alone. The API refuses
 * the rest anyway; the page does not offer what would be refused.
 */
function showAccess (access) {
  const { actor, role, permissions, scopes } = access
  state.access = access
  $('#principal').textContent = `${actor} · ${role}${scopes === null ? '' : ' · scoped'}`
  $('#principal').hidden = false
  const platform = permissions.includes('platform')
  $('#what-if-form').hidden = !platform
  $('#reconciliation').hidden = !platform
  $('#rates').hidden = !platform
  actions.allow(access)
  requests.allow(access)
}

/** Any failed read: a refused token signs out (and is forgotten); anything else is shown, on the sign-in screen when it came at sign-in. */
function failed (error, where = '#load-error') {
  if (error instanceof Stale) return
  const text = error.detail ?? error.message
  if (error instanceof Unauthorized) signedOut('That token was refused.')
  // At sign-in, an outage or an answer that is not the API's: the token was not refused, so the tab keeps it
  // and a reload once the API answers signs in with it.
  else if ($('#dashboard').hidden) signedOut(text, { keepToken: true })
  else $(where).textContent = text
}

// The budget tree

// access: the principal (GET {prefix}/access), null when signed out.
const state = { budgets: new Map(), statuses: new Map(), selected: null, access: null }

async function loadBudgets () {
  const budgets = []
  let cursor = null
  do {
    const page = await api(`?limit=500${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`)
    budgets.push(...page.budgets)
    cursor = page.nextCursor
  } while (cursor !== null)
  state.budgets = new Map(budgets.map((budget) => [budget.id, budget]))
  state.statuses = new Map()
  await eachLimited(budgets, 6, async (budget) => {
    state.statuses.set(budget.id, await api(`/${budget.id}/status`).catch((error) => {
      if (error instanceof Unauthorized) throw error
      return null
    }))
  })
  $('#load-error').textContent = ''
  drawTree()
  if (state.selected !== null && state.budgets.has(state.selected)) await select(state.selected)
  else unselect() // gone since it was picked
}

function unselect () {
  state.selected = null
  chart?.destroy()
  chart = null
  $('#detail').hidden = true
}

function drawTree () {
  const children = new Map()
  for (const budget of state.budgets.values()) {
    const parent = budget.parentId !== null && state.budgets.has(budget.parentId) ? budget.parentId : null
    children.set(parent, [...(children.get(parent) ?? []), budget])
  }
  const branch = (parent) => (children.get(parent) ?? [])
    .sort((a, b) => a.name.localeCompare(b.name))
    .map((budget) => el('div', { role: 'treeitem' }, budgetRow(budget), el('div', { class: 'children', role: 'group' }, branch(budget.id))))
  const tree = $('#budget-tree')
  tree.replaceChildren(...branch(null))
  if (state.budgets.size === 0) tree.append(el('p', { class: 'hint' }, 'No budgets to show: none yet, or none this token may see.'))
}

function budgetRow (budget) {
  const status = state.statuses.get(budget.id)
  const health = status?.status ?? 'unknown'
  const bar = el('div', { class: `bar ${health}`, title: status === null || status === undefined ? 'status unavailable' : `${status.percentUsed}% used` })
  if (status) {
    const limit = toUnits(status.limit)
    const share = (units) => limit === 0n ? 100 : Math.min(100, coordinate(units * 100n) / coordinate(limit))
    const spent = share(toUnits(status.currentAmount))
    bar.append(el('div', { class: 'spent' }), el('div', { class: 'reserved' }))
    // Widths through the CSSOM (the page's policy allows no style attributes).
    bar.children[0].style.width = `${spent}%`
    bar.children[1].style.left = `${spent}%`
    bar.children[1].style.width = `${Math.min(100 - spent, share(toUnits(status.reservedAmount)))}%`
  }
  return el('div', { class: `budget-row${state.selected === budget.id ? ' selected' : ''}`, 'data-budget-id': budget.id, onclick: () => { void select(budget.id) } },
    el('div', { class: 'budget-name' }, budget.name, el('small', {}, `${budget.scopeType}:${budget.scopeId} · ${budget.period}`)),
    bar,
    el('div', { class: 'figures' },
      el('span', { 'data-field': 'spend', title: status?.currentAmount ?? '' }, status ? display(status.currentAmount) : '–'),
      ' / ',
      el('span', { 'data-field': 'limit', title: budget.amount }, display(budget.amount)), ` ${budget.currency}`),
    el('span', { class: `badge ${health}`, 'data-field': 'status' }, health))
}

// One budget: figures, burn-down, alerts and approvals

async function select (id) {
  state.selected = id
  for (const row of document.querySelectorAll('.budget-row')) row.classList.toggle('selected', row.dataset.budgetId === id)
  const budget = state.budgets.get(id)
  let status, summary, alerts, approvals
  try {
    [status, summary, alerts, approvals] = await Promise.all([
      api(`/${id}/status`), api(`/${id}/usage/summary`), api(`/${id}/alerts`), api(`/${id}/approvals`)
    ])
  } catch (error) {
    if (error instanceof Stale) return // another token's page now: nothing of this one is drawn or undone
    if (state.selected === id) unselect()
    return failed(error)
  }
  if (state.selected !== id) return // another budget was picked while these were on their way
  $('#load-error').textContent = ''
  $('#detail').hidden = false
  $('#detail').dataset.budgetId = id
  $('#detail-name').textContent = `${budget.name} (${budget.scopeType}:${budget.scopeId})`
  // Amounts are shown with every digit (the title holds the same figure, for a copy without the currency).
  const figure = (label, shown, field, exact = shown) => [el('dt', {}, label), el('dd', { 'data-field': field, title: exact }, shown)]
  const money = (label, amount, field, suffix = ` ${status.currency}`) => figure(label, `${display(amount)}${suffix}`, field, amount)
  $('#detail-figures').replaceChildren(
    ...money('Spent', status.currentAmount, 'spend'),
    ...money('Limit', status.limit, 'limit'),
    ...money('Reserved', status.reservedAmount, 'reserved'),
    ...money('Remaining', status.remaining, 'remaining'),
    ...money('Burn rate', status.burnRate, 'burn-rate', ` ${status.currency} / day`),
    ...money('Projected', status.projectedTotal, 'projected'),
    // A shadow budget: what a hard one would have spent, and the calls it would have refused, clamped or downgraded.
    ...(status.shadow === undefined ? [] : [
      ...money('As-if spend (shadow)', status.shadow.asIfCurrentAmount, 'shadow-as-if'),
      ...figure('Shadow verdicts', status.shadow.counts.map((count) => `${count.code} ${count.outcome}: ${count.calls}`).join(', ') || 'none', 'shadow-counts')
    ]),
    ...figure('Period', `${status.periodStart.slice(0, 16)} → ${status.periodEnd.slice(0, 16)} UTC`, 'period'),
    el('dt', {}, 'Status'), el('dd', {}, el('span', { class: `badge ${status.status}`, 'data-field': 'status' }, status.status)))
  drawBurnDown(budget, status, summary)
  whatIfForm.show({ id, currency: status.currency }, status.limit)
  actions.show(budget)
  alertsFeed.show(id, alerts.alerts, state.access?.permissions.includes('write') === true)
  $('#detail-approvals').replaceChildren(...feed(approvals.approvals, (approval) =>
    el('span', { 'data-approval-id': approval.id }, `${approval.createdAt.slice(0, 16)} · `,
      el('span', { 'data-field': 'amount', title: approval.amount }, display(approval.amount)),
      ` by ${approval.approvedBy} until ${approval.expiresAt.slice(0, 16)}`)))
  await Promise.all([showDecisions(id), requests.show(budget).catch((error) => { if (state.selected === id) failed(error) })])
}

/**
 * The budget's recent refusals, clamps and downgrades, from {prefix}/decisions. A server without that route
 * answers 404: the block stays hidden, and no error is shown (the rest of the page does not depend on it).
 */
async function showDecisions (id) {
  const block = $('#detail-decisions')
  if (block.dataset.budgetId !== id) block.hidden = true // another budget's rows are not this one's
  let page
  try {
    page = await api(`/decisions?budgetId=${encodeURIComponent(id)}&limit=20`)
  } catch (error) {
    if (error instanceof Stale || state.selected !== id) return
    block.hidden = true
    if (error instanceof ApiError && error.status === 404) return
    return failed(error)
  }
  if (state.selected !== id) return
  const scopes = (decision) => Object.entries(decision.scopes ?? {}).map(([type, scope]) => `${type}:${scope}`).join(' ')
  const model = (decision) => decision.requestedModel && decision.requestedModel !== decision.model ? `${decision.requestedModel} → ${decision.model}` : decision.model
  const binding = ({ budget }) => budget === null || budget === undefined
    ? ['–']
    : [budget.name, el('small', { class: 'code' }, `${display(budget.current)} + ${display(budget.reserved)} reserved of ${display(budget.limit)}`)]
  block.querySelector('tbody').replaceChildren(...(page.decisions.length === 0
    ? [el('tr', {}, el('td', { colspan: 6, class: 'empty' }, 'None'))]
    : page.decisions.map((decision) => el('tr', { 'data-decision-id': decision.id },
      el('td', { class: 'nowrap' }, decision.at.slice(0, 19).replace('T', ' ')),
      el('td', {}, el('span', { class: `badge ${decision.outcome}`, 'data-field': 'outcome' }, decision.outcome), el('small', { class: 'code' }, decision.code)),
      el('td', {}, scopes(decision)),
      el('td', { class: 'nowrap' }, model(decision)),
      el('td', { class: 'number nowrap', 'data-field': 'estimate' }, `${display(decision.estimate)} ${decision.currency}`),
      el('td', { class: 'binding' }, binding(decision))))))
  block.dataset.budgetId = id
  block.hidden = false
}

let chart = null

/**
 * Remaining budget over the period: limit minus the spend accumulated day by day (exact, in units), the
 * projection from now to the period's end, and a line where each alert threshold fires.
 *
 * The y scale is the limit down to zero (or to the lowest remaining or alert line below it), never the
 * projection's: a burst extrapolated over the month (13.905 projected on a 0.8 budget) would otherwise set the
 * scale, flatten the remaining line at 0 and pack the alert lines together. A projection past the scale stops
 * at its edge, and the text under the chart gives its value.
 */
function drawBurnDown (budget, status, summary) {
  const limit = toUnits(status.limit)
  const start = Date.parse(status.periodStart) / 1000
  const end = Date.parse(status.periodEnd) / 1000
  const now = Math.min(end, Math.max(start, Date.now() / 1000))
  const points = [[start, limit]]
  let spent = 0n
  // Flat through days without spend: each day with usage steps down from its start to its end (or now).
  for (const day of [...summary.byDay].sort((a, b) => a.day.localeCompare(b.day))) {
    const midnight = Date.parse(`${day.day}T00:00:00Z`) / 1000 // summary days are UTC days
    const dayStart = Math.max(start, midnight)
    if (dayStart > points[points.length - 1][0] && dayStart < now) points.push([dayStart, limit - spent])
    spent += toUnits(day.total)
    const dayEnd = midnight + 86_400
    if (dayEnd < now) points.push([dayEnd, limit - spent])
  }
  const left = limit - toUnits(status.currentAmount)
  points.push([now, left])
  const projectedEnd = limit - toUnits(status.projectedTotal)
  const thresholds = budget.alerts.map((alert) => {
    const remaining = limit - percentOf(limit, alert.threshold)
    return { label: `${alert.threshold}% alert`, units: remaining, exact: fromUnits(remaining) }
  })

  // The scale, in units: from the limit (or the highest point) down to 0 or below it to the lowest line drawn.
  const top = [limit, ...points.map(([, units]) => units)].reduce((a, b) => (b > a ? b : a))
  const bottom = [0n, ...points.map(([, units]) => units), ...thresholds.map(({ units }) => units)].reduce((a, b) => (b < a ? b : a))
  const span = coordinate(top - bottom) || 1
  const range = [coordinate(bottom) - span * 0.04, coordinate(top) + span * 0.04]

  // The projection, a straight line from now to the period's end, cut where it leaves the scale.
  let projectionEnd = [end, projectedEnd]
  const clipped = projectedEnd < bottom || projectedEnd > top
  if (clipped && end > now) {
    const edge = projectedEnd < bottom ? bottom : top
    const share = coordinate(left - edge) / coordinate(left - projectedEnd)
    projectionEnd = [now + (end - now) * share, edge]
  }

  const xs = [...new Set([...points.map(([x]) => x), projectionEnd[0], end])].sort((a, b) => a - b)
  const exactAt = (pairs) => xs.map((x) => { const point = pairs.find(([px]) => px === x); return point ? fromUnits(point[1]) : null })
  const actualExact = exactAt(points)
  const projectionExact = xs.map((x) => x === now ? fromUnits(left) : x === projectionEnd[0] ? fromUnits(projectionEnd[1]) : null)
  const toY = (exact) => exact === null ? null : coordinate(toUnits(exact))
  // The legend shows the exact figure of the point under the cursor, never the chart's float.
  const exactValue = (values) => (_chart, _raw, _series, index) => index === null || values[index] === null ? '--' : display(values[index])
  const series = [
    {},
    { label: 'Remaining', stroke: '#2f7d4f', width: 2, spanGaps: true, value: exactValue(actualExact) },
    { label: 'Projected', stroke: '#2f7d4f', dash: [6, 4], spanGaps: true, value: exactValue(projectionExact) },
    ...thresholds.map(({ label, exact }) => ({ label, stroke: '#b3261e', dash: [2, 3], width: 1, value: () => display(exact) }))
  ]
  const data = [xs, actualExact.map(toY), projectionExact.map(toY), ...thresholds.map(({ units }) => xs.map(() => coordinate(units)))]
  const target = $('#burn-down')
  chart?.destroy()
  target.replaceChildren()
  // The scale's exact bounds before padding, for a reader of the page's markup (and its test).
  target.dataset.scaleBottom = fromUnits(bottom)
  target.dataset.scaleTop = fromUnits(top)
  chart = new window.uPlot({
    width: chartWidth(),
    height: 240,
    series,
    scales: { x: { time: true, range: [start, end] }, y: { range } },
    axes: [{}, { label: status.currency, size: 60 }]
  }, data, target)

  const note = $('#burn-down-projection')
  note.dataset.clipped = String(clipped)
  note.replaceChildren(
    'Projected at the period\'s end: ',
    el('span', { 'data-field': 'projected-total' }, `${display(status.projectedTotal)} ${status.currency}`),
    ' spent, ',
    el('span', { 'data-field': 'projected-left' }, `${display(fromUnits(projectedEnd < 0n ? -projectedEnd : projectedEnd))} ${status.currency}`),
    projectedEnd < 0n ? ' over the limit.' : ' left.',
    clipped ? ` Off this chart's scale: the dashed line stops at its edge${projectedEnd < 0n && left > 0n ? `, where this pace runs out ${runsOut(now, end, left, projectedEnd)}` : ''}.` : '')
}

/** When the straight projection from now reaches zero left (for reading only: minutes, UTC). */
function runsOut (now, end, left, projectedEnd) {
  const at = now + (end - now) * coordinate(left) / coordinate(left - projectedEnd)
  return `around ${new Date(at * 1000).toISOString().slice(0, 16).replace('T', ' ')} UTC`
}

/** The chart as wide as its box (a phone's too), and no narrower than the axes need. */
function chartWidth () {
  return Math.max(240, $('#burn-down').clientWidth || 520)
}

window.addEventListener('resize', () => chart?.setSize({ width: chartWidth(), height: 240 }))

// Recent alerts across budgets

async function loadRecentAlerts () {
  const { alerts } = await api('/alerts?limit=20')
  $('#recent-alerts').replaceChildren(...feed(alerts, (alert) =>
    `${alert.crossedAt.slice(0, 16)} · ${state.budgets.get(alert.budgetId)?.name ?? alert.budgetId} · ${alert.threshold}% (${display(alert.spent)} of ${display(alert.limit)}) · ${alert.actions.join(', ')}`))
}

// The spend report

/**
 * The report's query. The form shows days, both included; a preset fills them in (UTC days, ISO weeks) and
 * the page sends them as from/to, which every version of the API takes. Once the API's own `preset=` is
 * everywhere, a preset can be sent as `preset=<value>` here instead of its days.
 */
function reportQuery () {
  fillPresetDays() // a page left open past midnight on a Sunday reads this week's days, not last week's
  const form = new FormData($('#report-form'))
  const query = new URLSearchParams(queryRange(form.get('from'), form.get('to')))
  query.set('groupBy', form.get('groupBy'))
  if (form.get('groupBy') === 'tag') query.set('tagKey', form.get('tagKey'))
  return `/reports/spend?${query}`
}

/** The chosen preset's days, as of now, into the form's From and To. */
function fillPresetDays () {
  const preset = $('#report-form [name=preset]').value
  if (preset === '') return
  const { first, last } = presetDays(preset)
  $('#report-form [name=from]').value = first
  $('#report-form [name=to]').value = last
}

async function runReport () {
  $('#report-error').textContent = ''
  try {
    const report = await api(reportQuery())
    $('#report-table tbody').replaceChildren(...report.groups.map((group) => el('tr', {},
      el('td', {}, group.key ?? '(none)'), el('td', {}, group.currency), el('td', { class: 'number', 'data-field': 'total', title: group.total }, display(group.total)),
      el('td', { class: 'number' }, group.calls), el('td', { class: 'number' }, group.inputTokens), el('td', { class: 'number' }, group.outputTokens))))
  } catch (error) {
    failed(error, '#report-error')
  }
}

async function downloadCsv () {
  $('#report-error').textContent = ''
  try {
    // The token rides in a header, so the file comes through fetch and leaves as a blob URL.
    const blob = await api(reportQuery(), { accept: 'text/csv' })
    const link = el('a', { href: URL.createObjectURL(blob), download: 'spend-report.csv' })
    document.body.append(link)
    link.click()
    link.remove()
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000)
  } catch (error) {
    failed(error, '#report-error')
  }
}

// The provider's bill beside the recorded spend (reconciliation.js)

async function runReconciliation () {
  $('#reconciliation-error').textContent = ''
  try {
    const form = new FormData($('#reconciliation-form'))
    const report = await api(reconciliationQuery(form.get('from') ?? '', form.get('to') ?? ''))
    $('#reconciliation-tolerance').textContent = report.tolerance
    $('#reconciliation-table tbody').replaceChildren(...reconciliationRows(el, report.lines))
  } catch (error) {
    failed(error, '#reconciliation-error')
  }
}

// Wiring

$('#sign-in').addEventListener('submit', (event) => {
  event.preventDefault()
  // An HTTP header carries the token: printable ASCII only (anything else fetch cannot send).
  if (!/^[\x21-\x7e]+$/.test($('#token').value)) return signedOut('A token is printable ASCII, without spaces.')
  client.renew()
  sessionStorage.setItem(TOKEN_KEY, $('#token').value)
  $('#token').value = ''
  void start()
})
$('#sign-out').addEventListener('click', () => signedOut())
$('#refresh').addEventListener('click', () => { void start() })
$('#report-form').addEventListener('submit', (event) => { event.preventDefault(); void runReport() })
// A preset fills in its days; a day typed by hand makes the range a custom one.
$('#report-form [name=preset]').addEventListener('change', fillPresetDays)
for (const name of ['from', 'to']) $(`#report-form [name=${name}]`).addEventListener('input', () => { $('#report-form [name=preset]').value = '' })
$('#report-csv').addEventListener('click', () => { void downloadCsv() })
$('#reconciliation-form').addEventListener('submit', (event) => { event.preventDefault(); void runReconciliation() })
if (sessionStorage.getItem(TOKEN_KEY) !== null) void start()
