// The reconciliation view: per UTC day, provider and mapped budget, the provider's bill beside the spend the gate
// recorded (GET {prefix}/reconciliation), the days past the tolerance highlighted. Amounts are shown as the API
// sends them, every digit (money.js's display); the drift flag is the API's, never recomputed from Numbers.
import { display } from './money.js'

/** An amount cell: every digit, the exact text in its title; '—' for none (a missing rate, no correction). */
function amountCell (el, field, value) {
  return value === null ? el('td', { class: 'number', 'data-field': field }, '—') : el('td', { class: 'number', 'data-field': field, title: value }, display(value))
}

/** The report's lines as table rows; a drifting line carries class "drift" and says so in words, not by colour alone. */
export function reconciliationRows (el, lines) {
  return lines.map((line) => el('tr', { ...(line.drift ? { class: 'drift' } : {}), 'data-day': line.day, 'data-budget-id': line.budgetId, 'data-provider': line.provider },
    el('td', {}, line.day), el('td', {}, line.provider), el('td', {}, line.budgetName), el('td', {}, line.currency),
    amountCell(el, 'provider', line.providerAmount), amountCell(el, 'recorded', line.recordedAmount), amountCell(el, 'difference', line.difference),
    el('td', { class: 'number', 'data-field': 'ratio' }, line.ratio ?? '—'), amountCell(el, 'correction', line.correction),
    el('td', { 'data-field': 'state' }, line.missingRate !== null ? `no ${line.missingRate} rate` : line.drift ? 'drift' : 'within tolerance')))
}

/** The query of the view's form: from and to (inclusive UTC days) when given; the API's default otherwise (the last 30 days). */
export function reconciliationQuery (from, to) {
  const query = new URLSearchParams()
  if (from !== '') query.set('from', from)
  if (to !== '') query.set('to', to)
  const text = query.toString()
  return `/reconciliation${text === '' ? '' : `?${text}`}`
}
