// The one rule for the process's small caches (amounts read, tokenizer pieces, a model's encoding, a
// threshold's units): looked up with Map.get and never reordered, and emptied when full, so that a lookup
// stays cheap whatever was kept before and memory stays bounded. What is emptied is worked out again.

/**
 * Keeps `value` under `key`, emptying `map` first when it holds `most` entries; answers `value`. A text key
 * is kept as a string of its own (ownText), so that an entry holds no more than its own characters.
 */
export function keep<K, V> (map: Map<K, V>, most: number, key: K, value: V): V {
  if (map.size >= most) map.clear()
  map.set(typeof key === 'string' ? ownText(key) as K : key, value)
  return value
}

/**
 * `text` as a string of its own. V8 cuts a substring of 13 characters or more as a view into the string it
 * was cut from (a sliced string), which keeps all of that string alive: a key a cache keeps must not be one,
 * or one tokenizer piece would keep a whole request body for as long as the process. Shorter substrings
 * are copies already. Splitting into UTF-16 units and joining them makes a flat copy, lone surrogates kept.
 */
export function ownText (text: string): string {
  return text.length <= 12 ? text : text.split('').join('')
}
