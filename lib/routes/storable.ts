// PostgreSQL text and jsonb hold neither NUL characters nor unpaired UTF-16 surrogates (which JSON can
// carry as "\ud800"); such input is refused with a 400 that names the field, never left to fail as a 500.
import { InvalidFieldError } from '../errors.js'

// With the u flag a surrogate range matches only a surrogate that is not half of a pair.
const UNSTORABLE = /[\0\ud800-\udfff]/u

export function isStorableText (text: string): boolean {
  return !UNSTORABLE.test(text)
}

/** Walks a parsed request part (keys and values) and throws for the first string that cannot be stored. */
export function checkStorable (value: unknown, path: string): void {
  if (typeof value === 'string') {
    if (!isStorableText(value)) throw new InvalidFieldError(path || 'body', 'contains a NUL character or an unpaired surrogate, which cannot be stored')
    return
  }
  if (typeof value !== 'object' || value === null) return
  for (const [key, child] of Object.entries(value)) {
    const field = path === '' ? key : `${path}.${key}`
    if (!isStorableText(key)) throw new InvalidFieldError(path || 'body', `has a key with a NUL character or an unpaired surrogate: ${JSON.stringify(key)}`)
    checkStorable(child, field)
  }
}
