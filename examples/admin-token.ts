// The example gateway's admin token when ADMIN_TOKEN is unset and it keeps its data in an embedded PostgreSQL:
// made at the first start and kept in the data directory (mode 0600), so a restart keeps an open dashboard
// and a Prometheus scrape config working, as it keeps the budgets.
import { randomBytes } from 'node:crypto'
import { chmod, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'

/** The file, inside the embedded data directory, that holds the kept token. */
export const ADMIN_TOKEN_FILE = 'admin-token'

/** The plugin's floor for an admin token's length (lib/options.ts). */
const MIN_LENGTH = 16

export function randomAdminToken (): string {
  return randomBytes(24).toString('base64url')
}

/**
 * The token kept in `dataDir`, made and written first when there is none. A file that holds no usable
 * token (shorter than the plugin takes) stops the start with a message rather than being replaced: it
 * may be a token someone typed in, and replacing it would lock out whoever uses it.
 */
export async function keptAdminToken (dataDir: string): Promise<{ token: string, file: string, created: boolean }> {
  const file = join(dataDir, ADMIN_TOKEN_FILE)
  const kept = await readToken(file)
  if (kept !== null) {
    // Whoever could read the data directory could read the token: keep it to its owner even if loosened.
    await chmod(file, 0o600)
    return { token: kept, file, created: false }
  }
  const token = randomAdminToken()
  // 'wx': never over a file that appeared meanwhile; mode 0600 from the first byte, not after a chmod.
  await writeFile(file, `${token}\n`, { mode: 0o600, flag: 'wx' })
  return { token, file, created: true }
}

async function readToken (file: string): Promise<string | null> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw error
  }
  const token = text.trim()
  if (token.length < MIN_LENGTH) throw new Error(`${file} holds no admin token of at least ${MIN_LENGTH} characters: put one there, or delete the file to have a new one made`)
  return token
}
