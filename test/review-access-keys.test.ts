// Review of the example gateway's ADMIN_KEYS (examples/admin-keys.ts): "parsed strictly: every mistake stops
// the start". A key written twice in the JSON is a mistake JSON.parse resolves silently (the last wins).
import t from 'tap'
import { parseAdminKeys } from '../examples/admin-keys.js'

const KEY = 'lead-platform-key-0123456789'

t.test('ADMIN_KEYS with the same key twice: refused, not resolved silently to the last principal (here one with every tree)', async (t) => {
  const text = `{"${KEY}": {"actor": "lead-platform", "role": "viewer", "scopes": [{"scopeType": "team", "scopeId": "platform"}]}, ` +
    `"${KEY}": {"actor": "ops", "role": "admin"}}`
  let parsed: ReturnType<typeof parseAdminKeys> | null = null
  let refused: string | null = null
  try { parsed = parseAdminKeys(text) } catch (error) { refused = (error as Error).message }
  t.comment(parsed === null ? `refused: ${refused}` : `accepted: ${JSON.stringify([...parsed.values()])}`)
  t.ok(refused !== null, 'a duplicated key stops the start')
  if (refused !== null) t.notMatch(refused, KEY, 'without echoing the key')
})
