// What a form's text becomes in a request body. Money stays the string typed, trimmed: never a Number. A
// percent or a count is sent as a JSON number when it reads as one, and otherwise as typed, so that the
// API, not the page, says what is wrong with it (and names the field).

/** '80' as 80, '12.5' as 12.5; anything else ('abc', '1e3') as the text, for the API to refuse. */
export function numberOrText (text) {
  const trimmed = text.trim()
  return /^\d{1,15}(\.\d{1,15})?$/.test(trimmed) ? Number(trimmed) : trimmed
}

/** 'a, b,,c' as ['a', 'b', 'c']. */
export function listOf (text) {
  return text.split(',').map((item) => item.trim()).filter((item) => item !== '')
}

/** 'feature=search, env=prod' as { feature: 'search', env: 'prod' } (a pair without '=' has an empty value). */
export function tagsOf (text) {
  return Object.fromEntries(listOf(text).map((pair) => {
    const at = pair.indexOf('=')
    return at === -1 ? [pair, ''] : [pair.slice(0, at).trim(), pair.slice(at + 1).trim()]
  }))
}

/** Tags back as the text tagsOf reads. */
export function tagsText (tags = {}) {
  return Object.entries(tags).map(([key, value]) => `${key}=${value}`).join(', ')
}
