// The one rule for the process's small caches (amounts read, tokenizer pieces, a model's encoding, a
// threshold's units): looked up with Map.get and never reordered, and emptied when full, so that a lookup
// stays cheap whatever was kept before and memory stays bounded. What is emptied is worked out again.

/** Keeps `value` under `key`, emptying `map` first when it holds `most` entries; answers `value`. */
export function keep<K, V> (map: Map<K, V>, most: number, key: K, value: V): V {
  if (map.size >= most) map.clear()
  map.set(key, value)
  return value
}
