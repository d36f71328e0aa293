// The dashboard's script: sign in with the admin token (kept in this tab's sessionStorage), then read the
// admin API of the prefix this page is served under and draw the budget tree, the selected budget's
// burn-down, alerts and approvals, the recent alerts, and the spend report with its CSV download.
import { coordinate, display, fromUnits, percentOf, toUnits } from './money.js'

const TOKEN_KEY = 'relaycore-budgets-token'
// The admin API's prefix, written into the page by the server ('' when the API is at the root).
const API = document.querySelector('meta[name=relaycore-budgets-api]').content

const $ = (selector) => document.querySelector(selector)

/** An element with attributes and children; text goes in as text, never as HTML. */
function el (tag, attributes = {}, ...children) {
  const node = document.createElement(tag)
  for (const [name, value] of Object.entries(attributes)) {
    if (name === 'class') node.className = value
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value)
    else if (value !== null && value !== undefined) node.setAttribute(name, String(value))
  }
  for (const child of children.flat()) node.append(child instanceof Node ? child : document.createTextNode(String(child)))
  return node
}

class Unauthorized extends Error {}

/** GET {prefix}{path}; `path` starts with '/' or '?' (the list, at the prefix itself, or at '/' for an empty prefix). */
async function api (path, { accept = 'application/json' } = {}) {
  const response = await fetch(`${API === '' && path.startsWith('?') ? '/' : API}${path}`, {
    headers: { authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) ?? ''}`, accept },
    cache: 'no-store'
  })
  if (response.status === 401) throw new Unauthorized('the token was refused')
  if (!response.ok) {
    const body = await response.json().catch(() => ({}))
    throw new Error(`${response.status} ${body.code ?? ''} ${body.message ?? response.statusText}`.trim())
  }
  return accept === 'application/json' ? await response.json() : await response.blob()
}

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

function signedOut (message = '') {
  sessionStorage.removeItem(TOKEN_KEY)
  $('#dashboard').hidden = true
  $('#refresh').hidden = true
  $('#sign-out').hidden = true
  $('#sign-in').hidden = false
  $('#sign-in-error').textContent = message
  $('#token').value = ''
}

async function start () {
  try {
    await loadBudgets()
    signedIn()
    await loadRecentAlerts()
  } catch (error) {
    failed(error)
  }
}

/** Any failed read: a refused token signs out (and is forgotten); anything else is shown. */
function failed (error, where = '#load-error') {
  if (error instanceof Unauthorized) signedOut('That token was refused.')
  else if ($('#dashboard').hidden) signedOut(error.message)
  else $(where).textContent = error.message
}

// The budget tree

const state = { budgets: new Map(), statuses: new Map(), selected: null }

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
  if (state.budgets.size === 0) tree.append(el('p', { class: 'hint' }, 'No budgets yet: create one with POST ', API, '.'))
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
    if (state.selected === id) unselect()
    return failed(error)
  }
  if (state.selected !== id) return // another budget was picked while these were on their way
  $('#load-error').textContent = ''
  $('#detail').hidden = false
  $('#detail').dataset.budgetId = id
  $('#detail-name').textContent = `${budget.name} (${budget.scopeType}:${budget.scopeId})`
  // Amounts are shown to 4 decimals; the exact figure is the title.
  const figure = (label, shown, field, exact = shown) => [el('dt', {}, label), el('dd', { 'data-field': field, title: exact }, shown)]
  const money = (label, amount, field, suffix = ` ${status.currency}`) => figure(label, `${display(amount)}${suffix}`, field, amount)
  $('#detail-figures').replaceChildren(
    ...money('Spent', status.currentAmount, 'spend'),
    ...money('Limit', status.limit, 'limit'),
    ...money('Reserved', status.reservedAmount, 'reserved'),
    ...money('Remaining', status.remaining, 'remaining'),
    ...money('Burn rate', status.burnRate, 'burn-rate', ` ${status.currency} / day`),
    ...money('Projected', status.projectedTotal, 'projected'),
    ...figure('Period', `${status.periodStart.slice(0, 16)} → ${status.periodEnd.slice(0, 16)} UTC`, 'period'),
    ...figure('Status', status.status, 'status'))
  drawBurnDown(budget, status, summary)
  $('#detail-alerts').replaceChildren(...feed(alerts.alerts, (alert) =>
    `${alert.crossedAt.slice(0, 16)} · ${alert.threshold}% crossed (${display(alert.spent)} of ${display(alert.limit)})` +
    ` · ${alert.actions.join(', ')}${alert.acknowledgedBy ? ` · acknowledged by ${alert.acknowledgedBy}` : ''}`))
  $('#detail-approvals').replaceChildren(...feed(approvals.approvals, (approval) =>
    `${approval.createdAt.slice(0, 16)} · ${display(approval.amount)} by ${approval.approvedBy} until ${approval.expiresAt.slice(0, 16)}`))
}

function feed (items, line) {
  return items.length === 0 ? [el('li', { class: 'empty' }, 'None')] : items.slice(0, 50).map((item) => el('li', {}, line(item)))
}

let chart = null

/**
 * Remaining budget over the period: limit minus the spend accumulated day by day (exact, in units), the
 * projection from now to the period's end, and a line where each alert threshold fires.
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
  points.push([now, limit - toUnits(status.currentAmount)])
  const projectedEnd = limit - toUnits(status.projectedTotal)
  const xs = [...new Set([...points.map(([x]) => x), end])].sort((a, b) => a - b)
  const actual = xs.map((x) => { const point = points.find(([px]) => px === x); return point ? coordinate(point[1]) : null })
  const projection = xs.map((x) => x === now ? coordinate(points[points.length - 1][1]) : x === end ? coordinate(projectedEnd) : null)
  const thresholds = budget.alerts.map((alert) => ({ label: `${alert.threshold}% alert`, y: coordinate(limit - percentOf(limit, alert.threshold)) }))
  const series = [
    {},
    { label: 'Remaining', stroke: '#2f7d4f', width: 2, spanGaps: true },
    { label: `Projected (${display(fromUnits(projectedEnd))} left at period end)`, stroke: '#2f7d4f', dash: [6, 4], spanGaps: true },
    ...thresholds.map(({ label }) => ({ label, stroke: '#b3261e', dash: [2, 3], width: 1 }))
  ]
  const data = [xs, actual, projection, ...thresholds.map(({ y }) => xs.map(() => y))]
  const target = $('#burn-down')
  chart?.destroy()
  target.replaceChildren()
  chart = new window.uPlot({
    width: Math.max(360, target.clientWidth || 520),
    height: 240,
    series,
    scales: { x: { time: true, range: [start, end] } },
    axes: [{}, { label: status.currency, size: 70 }]
  }, data, target)
}

// Recent alerts across budgets

async function loadRecentAlerts () {
  const { alerts } = await api('/alerts?limit=20')
  $('#recent-alerts').replaceChildren(...feed(alerts, (alert) =>
    `${alert.crossedAt.slice(0, 16)} · ${state.budgets.get(alert.budgetId)?.name ?? alert.budgetId} · ${alert.threshold}% (${display(alert.spent)} of ${display(alert.limit)}) · ${alert.actions.join(', ')}`))
}

// The spend report

function reportQuery () {
  const form = new FormData($('#report-form'))
  const query = new URLSearchParams()
  for (const name of ['from', 'to']) if (form.get(name)) query.set(name, form.get(name))
  query.set('groupBy', form.get('groupBy'))
  if (form.get('groupBy') === 'tag') query.set('tagKey', form.get('tagKey'))
  return `/reports/spend?${query}`
}

async function runReport () {
  $('#report-error').textContent = ''
  try {
    const report = await api(reportQuery())
    $('#report-table tbody').replaceChildren(...report.groups.map((group) => el('tr', {},
      el('td', {}, group.key ?? '(none)'), el('td', {}, group.currency), el('td', { class: 'number', title: group.total }, display(group.total)),
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

// Wiring

$('#sign-in').addEventListener('submit', (event) => {
  event.preventDefault()
  // An HTTP header carries the token: printable ASCII only (anything else fetch cannot send).
  if (!/^[\x21-\x7e]+$/.test($('#token').value)) return signedOut('A token is printable ASCII, without spaces.')
  sessionStorage.setItem(TOKEN_KEY, $('#token').value)
  $('#token').value = ''
  void start()
})
$('#sign-out').addEventListener('click', () => signedOut())
$('#refresh').addEventListener('click', () => { void start() })
$('#report-form').addEventListener('submit', (event) => { event.preventDefault(); void runReport() })
$('#report-csv').addEventListener('click', () => { void downloadCsv() })
if (sessionStorage.getItem(TOKEN_KEY) !== null) void start()
