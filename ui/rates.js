// Exchange rates, for a platform admin (they are shared by every tree): set one pair's rate
// (PUT {prefix}/exchange-rates/:from/:to, the rate as the string typed) and list the latest ones, every digit.
import { display } from './money.js'
import { el } from './el.js'
import { clearRefusal, showRefusal } from './form-errors.js'
import { onSubmit } from './form-submit.js'

export function exchangeRates ({ client, $, signOut, failed }) {
  const form = $('#rate-form')
  const text = (name) => form.elements.namedItem(name).value.trim()

  async function load () {
    const { rates } = await client.get('/exchange-rates?limit=20')
    $('#rates-table tbody').replaceChildren(...(rates.length === 0
      ? [el('tr', {}, el('td', { colspan: 5, class: 'empty' }, 'None'))]
      : rates.map((rate) => el('tr', { 'data-rate-id': rate.id, class: rate.replaced ? 'replaced' : null }, // el leaves null out
        el('td', {}, `${rate.from} → ${rate.to}`),
        el('td', { class: 'number', 'data-field': 'rate', title: rate.rate }, display(rate.rate)),
        el('td', { class: 'nowrap' }, rate.effectiveFrom.slice(0, 16).replace('T', ' ')),
        el('td', {}, rate.setBy ?? ''),
        el('td', {}, rate.replaced ? 'replaced' : '')))))
  }

  onSubmit(form, async () => {
    clearRefusal(form)
    $('#rate-status').textContent = ''
    const effectiveFrom = text('effectiveFrom')
    let rate
    try {
      rate = await client.send('PUT', `/exchange-rates/${encodeURIComponent(text('from'))}/${encodeURIComponent(text('to'))}`,
        { rate: text('rate'), ...(effectiveFrom === '' ? {} : { effectiveFrom }) })
    } catch (error) {
      return showRefusal(form, error, signOut)
    }
    form.reset()
    $('#rate-status').textContent = `1 ${rate.from} is ${display(rate.rate)} ${rate.to} from ${rate.effectiveFrom.slice(0, 16).replace('T', ' ')} UTC.`
    await load().catch(failed)
  })

  return {
    load,
    clear () {
      form.reset()
      clearRefusal(form)
      $('#rate-status').textContent = ''
      $('#rates-table tbody').replaceChildren()
    }
  }
}
