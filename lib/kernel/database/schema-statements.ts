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

/**
 * The statements of `text`, each without its `;`, in order: a `;` ends one only outside quotes ('...',
 * "..."), dollar quotes ($$...$$, $tag$...$tag$) and comments (-- and /* *\/). Blank statements and
 * comment-only ones are left out.
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
    if (c === '-' && text[i + 1] === '-') {
      const end = text.indexOf('\n', i)
      i = end === -1 ? text.length : end + 1
    } else if (c === '/' && text[i + 1] === '*') {
      const end = text.indexOf('*/', i + 2)
      if (end === -1) throw new Error('a /* comment is not closed')
      i = end + 2
    } else if (c === '\'' || c === '"') {
      // a quote doubled inside is part of the string
      let j = i + 1
      for (;;) {
        const end = text.indexOf(c, j)
        if (end === -1) throw new Error(`a ${c} quote is not closed`)
        if (text[end + 1] === c) { j = end + 2; continue }
        i = end + 1
        break
      }
      code = true
    } else if (c === '$' && /^\$([A-Za-z_][A-Za-z0-9_]*)?\$/.test(text.slice(i, i + 64)) && !/[A-Za-z0-9_]/.test(text[i - 1] ?? '')) {
      const tag = /^\$([A-Za-z_][A-Za-z0-9_]*)?\$/.exec(text.slice(i, i + 64))![0]
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
