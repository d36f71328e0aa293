// A form's write, sent once: while its request is in flight, another submit (a double click, Enter pressed
// twice) sends nothing, and the form's buttons are disabled. A write that makes something (a budget, a
// request for approval) has no key the API could use to drop the second.

/** Runs `write(event)` on the form's submit, one at a time; the submit's default (a page load) never happens. */
export function onSubmit (form, write) {
  let sending = false
  form.addEventListener('submit', async (event) => {
    event.preventDefault()
    if (sending) return
    sending = true
    const buttons = [...form.querySelectorAll('button')]
    for (const button of buttons) button.disabled = true
    try {
      await write(event)
    } finally {
      sending = false
      for (const button of buttons) button.disabled = false
    }
  })
}
