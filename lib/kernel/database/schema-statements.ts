// How a schema change is sent: under the one lock every migrate() takes, a file's statements one by one. On
// Citus a DDL statement is passed on to the workers as the text the client sent; a file sent whole is several
// commands, which Citus refuses to pass on ("cannot insert multiple commands into a prepared statement").
import type { TransactionSql } from 'postgres'

/**
 * The lock every migrate() takes first: one process at a time changes the schema. On Citus, the transaction's
 * statements on distributed tables then run over one connection a node, not in parallel: Citus refuses a
 * function's DDL after a parallel one in the same transaction ("cannot run function command because there
 * was a parallel operation on a distributed table"), and a migration's ALTER TABLE comes before the files.
 */
export async function lockMigrations (tx: TransactionSql): Promise<void> {
  await tx`select pg_advisory_xact_lock(hashtextextended('relaycore-budgets:migrate', 0))`
  await tx`select set_config('citus.multi_shard_modify_mode', 'sequential', true) where exists (select 1 from pg_extension where extname = 'citus')`
}

/** A file's statements, each sent on its own. */
export async function runStatements (tx: TransactionSql, text: string): Promise<void> {
  for (const statement of splitStatements(text)) await tx.unsafe(statement)
}

/** A dollar quote's opening tag at a position ($$, $tag$: PostgreSQL's identifier letters, any length). */
const DOLLAR_TAG = /\$(?:[\p{L}_][\p{L}\p{N}_]*)?\$/uy
const IDENTIFIER_CHAR = /[\p{L}\p{N}_$]/u

/**
 * The statements of `text`, each without its `;`, in order: a `;` ends one only outside quotes ('...',
 * E'...' with its backslash escapes, "..."), dollar quotes ($$...$$, $tag$...$tag$) and comments (-- to
 * the end of the line, and /* *\/, which nest, as in PostgreSQL). Blank statements and comment-only ones
 * are left out. What is not closed is refused, never cut in the middle.
 */
export function splitStatements (text: string): string[] {
  const statements: string[] = []
  let start = 0
  let i = 0
  let code = false // whether the current statement has anything but comments and blanks
  const push = (end: number) => {
    if (code) statements.push(text.slice(start, end).trim())
    start = end + 1
    code = false
  }
  while (i < text.length) {
    const c = text[i]!
    const before = text[i - 1] ?? ''
    if (c === '-' && text[i + 1] === '-') {
      while (i < text.length && text[i] !== '\n' && text[i] !== '\r') i++
    } else if (c === '/' && text[i + 1] === '*') {
      let depth = 1
      i += 2
      while (depth > 0) {
        if (i >= text.length) throw new Error('a /* comment is not closed')
        if (text[i] === '/' && text[i + 1] === '*') { depth++; i += 2 } else if (text[i] === '*' && text[i + 1] === '/') { depth--; i += 2 } else i++
      }
    } else if (c === '\'' || c === '"') {
      // E'...': a backslash escapes the next character; in any string a quote doubled is part of it
      const escapes = c === '\'' && (before === 'E' || before === 'e') && !IDENTIFIER_CHAR.test(text[i - 2] ?? '')
      let j = i + 1
      for (;;) {
        if (j >= text.length) throw new Error(`a ${c} quote is not closed`)
        if (escapes && text[j] === '\\') { j += 2; continue }
        if (text[j] === c) {
          if (text[j + 1] === c) { j += 2; continue }
          break
        }
        j++
      }
      i = j + 1
      code = true
    } else if (c === '$' && !IDENTIFIER_CHAR.test(before) && (DOLLAR_TAG.lastIndex = i, DOLLAR_TAG.test(text))) {
      const tag = text.slice(i, DOLLAR_TAG.lastIndex)
      const end = text.indexOf(tag, i + tag.length)
      if (end === -1) throw new Error(`a ${tag} quote is not closed`)
      i = end + tag.length
      code = true
    } else if (c === ';') {
      push(i)
      i++
    } else {
      if (!/\s/.test(c)) code = true
      i++
    }
  }
  push(text.length)
  return statements
}
