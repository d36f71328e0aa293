// The API's refusal on the form that asked: its message beside the field it names (the element whose
// data-field is that dotted path, or the nearest one above it: alerts.0.approvalPolicy.levels.1 falls back
// to alerts.0.approvalPolicy), marked aria-invalid; a refusal that names no field of the form goes over it.
import { Stale, Unauthorized } from './api.js'
import { el } from './el.js'

/** Takes every refusal shown on the form away (before it is sent again, or when it is filled anew). */
export function clearRefusal (form) {
  for (const message of form.querySelectorAll('.field-error')) message.remove()
  for (const field of form.querySelectorAll('[aria-invalid]')) {
    field.removeAttribute('aria-invalid')
    field.removeAttribute('aria-describedby')
  }
  const banner = form.querySelector('.form-error')
  if (banner !== null) {
    banner.textContent = ''
    delete banner.dataset.code
  }
  delete form.dataset.state
}

/** The element of the form that stands for `field`, or for the nearest field above it; null for none. */
export function fieldElement (form, field) {
  const path = typeof field === 'string' ? field.split('.') : []
  for (let length = path.length; length > 0; length--) {
    const element = form.querySelector(`[data-field="${CSS.escape(path.slice(0, length).join('.'))}"]`)
    if (element !== null) return element
  }
  return null
}

let described = 0

/**
 * What a write's failure does to its form: an answer for a token signed out since is dropped, a refused token
 * signs out (`signOut`), and anything else is shown, the API's message beside the field it names.
 */
export function showRefusal (form, error, signOut) {
  if (error instanceof Stale) return
  if (error instanceof Unauthorized) return signOut()
  clearRefusal(form)
  form.dataset.state = 'refused'
  const text = error.detail ?? error.message
  const target = fieldElement(form, error.field)
  if (target === null) {
    const banner = form.querySelector('.form-error')
    banner.textContent = text
    if (error.code !== undefined) banner.dataset.code = error.code
    return
  }
  const id = `field-error-${++described}`
  target.setAttribute('aria-invalid', 'true')
  target.setAttribute('aria-describedby', id)
  target.after(el('p', { class: 'field-error', id, role: 'alert', 'data-error-for': error.field, 'data-code': error.code }, text))
}
