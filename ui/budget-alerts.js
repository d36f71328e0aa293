// A budget's alert history on its page: each threshold crossing, and for a principal that may write, an
// Acknowledge button on each one nobody has acknowledged yet (POST {prefix}/:id/alerts/:alertId/acknowledge).
import { display } from './money.js'
import { el, feed } from './el.js'
import { showRefusal } from './form-errors.js'
import { onSubmit } from './form-submit.js'

/** `onAcknowledged(budgetId)`: after the API recorded it, to read the budget's page back. */
export function budgetAlerts ({ client, $, signOut, onAcknowledged }) {
  const list = $('#detail-alerts')

  function acknowledgeForm (budgetId, alert) {
    const form = el('form', { class: 'acknowledge', 'data-alert-id': alert.id },
      el('button', { type: 'submit' }, 'Acknowledge'),
      el('span', { class: 'form-error', role: 'alert' }))
    onSubmit(form, async () => {
      try {
        await client.send('POST', `/${budgetId}/alerts/${alert.id}/acknowledge`)
      } catch (error) {
        return showRefusal(form, error, signOut)
      }
      await onAcknowledged(budgetId)
    })
    return form
  }

  return {
    /** The budget's crossings, newest first; with Acknowledge buttons when `mayAcknowledge`. */
    show (budgetId, alerts, mayAcknowledge) {
      list.replaceChildren(...feed(alerts, (alert) => [
        `${alert.shadow ? '[shadow] ' : ''}${alert.crossedAt.slice(0, 16)} · ${alert.threshold}% crossed (${display(alert.spent)} of ${display(alert.limit)})` +
        ` · ${alert.actions.join(', ')}${alert.acknowledgedBy ? ` · acknowledged by ${alert.acknowledgedBy}` : ''}`,
        mayAcknowledge && alert.acknowledgedBy === null ? acknowledgeForm(budgetId, alert) : null
      ]))
    }
  }
}
