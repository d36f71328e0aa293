// Admin writes in a transaction of their own: on a connection of their own, and cut at a bound by PostgreSQL.
// Fastify's handlerTimeout stops counting once a request's body is read, so it never bounds a POST or a PUT;
// and a statement sent on the shared pool is pipelined behind whatever a busy connection is running
// (postgres.js), which under gate load is a hold, a lease or a settlement that may wait up to its own
// lock_timeout on a hot row. So a bounded transaction first reserves a connection (it waits for one to
// drain, never behind another's statements, and for at most the bound), then runs under `set local`
// statement_timeout and lock_timeout: a statement or a lock wait past the bound is cancelled by PostgreSQL
// and the transaction rolls back, and one that ends past its deadline is rolled back before it commits.
// Either way nothing is changed, and the answer is AdminTimeoutError (a 503 with a stable code). Work of
// several statements calls withinBound(tx) between them: past the deadline it stops there, and else the
// next statement may run only for what is left of the bound (each statement's timeout alone would let
// ten statements run ten bounds).
import type { ReservedSql, Sql, TransactionSql } from 'postgres'
import { bestEffort, type BestEffortLog } from '../best-effort.js'
import { AdminTimeoutError } from '../errors.js'
import { retryingConflicts } from './db.js'

/** PostgreSQL's answers to a statement or a lock wait cut by the bound: query_canceled, lock_not_available. */
const CUT = new Set(['57014', '55P03'])

/** Each bounded transaction's deadline and bound, by the sql its work is given. */
const deadlines = new WeakMap<object, { deadline: number, timeoutMs: number }>()

/**
 * Between two statements of a bounded transaction: past its deadline, AdminTimeoutError (the transaction
 * rolls back); else the statements that follow are cut at the deadline. Outside one, nothing.
 */
export async function withinBound (tx: TransactionSql): Promise<void> {
  const bound = deadlines.get(tx)
  if (bound === undefined) return
  const left = bound.deadline - Date.now()
  if (left < 1) throw new AdminTimeoutError(bound.timeoutMs)
  await tx.unsafe(`set local statement_timeout = ${left}; set local lock_timeout = ${left}`)
}

export type BoundedTransaction = <T>(work: (tx: TransactionSql) => Promise<T>) => Promise<T>

/** `sql.begin` made bounded: what runs inside it is cut at `timeoutMs` and answers AdminTimeoutError. */
export function boundedTransaction (sql: Sql, timeoutMs: number, log: BestEffortLog): BoundedTransaction {
  if (!Number.isInteger(timeoutMs) || timeoutMs < 1) throw new TypeError('timeoutMs must be a whole number of milliseconds, at least 1')
  // A deadlock or a serialization failure rolled the work back with no effect: it runs again, as a gate
  // statement would (retryingConflicts), within the same deadline; one that keeps failing so is 503.
  return async function inBoundedTransaction<T> (work: (tx: TransactionSql) => Promise<T>): Promise<T> {
    const deadline = Date.now() + timeoutMs
    return await retryingConflicts(async () => await once(work, deadline), deadline)
  }

  async function once<T> (work: (tx: TransactionSql) => Promise<T>, deadline: number): Promise<T> {
    const left = Math.max(1, deadline - Date.now()) // all of the bound, or what a run again has left of it
    const connection = await reserveWithin(sql, left)
    let open = false
    try {
      await connection.unsafe(`begin; set local statement_timeout = ${left}; set local lock_timeout = ${left}`)
      open = true
      const tx = withSavepoints(connection)
      deadlines.set(tx, { deadline, timeoutMs })
      const result = await work(tx)
      if (Date.now() > deadline) throw new AdminTimeoutError(timeoutMs)
      await connection`commit`
      open = false
      return result
    } catch (error) {
      // The work's own error is the answer; a rollback that fails too (a connection cut) is only logged.
      if (open) await bestEffort(log, async () => await connection`rollback`, 'rolling back an admin transaction failed', { cause: (error as Error).message })
      throw CUT.has((error as { code?: unknown }).code as string) ? new AdminTimeoutError(timeoutMs, { cause: error }) : error
    } finally {
      connection.release()
    }
  }
}

/**
 * A view of `sql` whose `begin` is bounded, for a service that opens its own transactions (the batch
 * collector): its other statements go to the pool as before.
 */
export function withBoundedBegin (sql: Sql, timeoutMs: number, log: BestEffortLog): Sql {
  const bounded = boundedTransaction(sql, timeoutMs, log)
  return new Proxy(sql, {
    get (target, property, receiver) {
      if (property !== 'begin') return Reflect.get(target, property, receiver)
      return async (...args: unknown[]) => await bounded(args[args.length - 1] as (tx: TransactionSql) => Promise<unknown>)
    }
  })
}

/** A connection of the pool for this transaction alone; past `timeoutMs` without one, AdminTimeoutError (a late one goes back). */
async function reserveWithin (sql: Sql, timeoutMs: number): Promise<ReservedSql> {
  let timer: NodeJS.Timeout | undefined
  let late = false
  const reserving = sql.reserve()
  // A failure before the deadline is the race's to throw; after it the caller has its AdminTimeoutError and nothing was reserved.
  reserving.then((connection) => { if (late) connection.release() }, () => {})
  try {
    return await Promise.race([reserving, new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => { late = true; reject(new AdminTimeoutError(timeoutMs)) }, timeoutMs)
    })])
  } finally {
    clearTimeout(timer)
  }
}

/** The reserved connection as a transaction's sql: `savepoint(fn)` as postgres.js's transactions have it. */
function withSavepoints (connection: ReservedSql): TransactionSql {
  let savepoints = 0
  const tx = connection as unknown as TransactionSql
  Object.assign(tx, {
    async savepoint<T> (...args: [(sp: TransactionSql) => Promise<T>] | [string, (sp: TransactionSql) => Promise<T>]): Promise<T> {
      const work = args[args.length - 1] as (sp: TransactionSql) => Promise<T>
      const name = `s${savepoints++}`
      await withinBound(tx)
      await connection.unsafe(`savepoint ${name}`)
      try {
        const result = await work(tx)
        await connection.unsafe(`release savepoint ${name}`)
        return result
      } catch (error) {
        await connection.unsafe(`rollback to savepoint ${name}`)
        throw error
      }
    }
  })
  return tx
}
