// Settlements off the caller's path, committed in groups: the gate hands each ended call to this queue
// and answers at once; whatever gathers while one batch commits goes in the next, as one statement for
// calls that held their own reservation (settleBatch) and one for calls admitted from leases
// (settleLeased). Until its batch commits, a call's reservation
// (or its lease) is the record of it: a process that dies with settlements queued leaves holds that
// the sweeper counts at their estimate, as for any call whose outcome is unknown.
//
// Batches commit with synchronous_commit off (set inside their SQL functions, for their transaction
// only): a batch's locks go as soon as it commits, not after the WAL reaches disk. A PostgreSQL crash can then lose the last moments of settlements, whole
// (each batch is one transaction); their holds come back with the database and are swept and counted
// at their estimate. Nothing goes uncounted. Holds keep synchronous commits: a lost hold would be.
//
// A served call that no budget covered has no hold: its usage record (budget_id null) goes in
// the same batches, as a third statement. Nothing stands for it until that commits, so a batch that
// fails past its retries loses those records, and says so at error level.
import { randomUUID } from 'node:crypto'
import type { Logger } from '../kernel/logger.js'
import { isDatabaseUnavailable } from '../kernel/errors.js'
import { createKeyedGroupCommit, type Pending } from './group-commit.js'
import type { LeasedSettlement, RecordOrigin, Settlement, SettlementRepository } from './settlement-repository.js'
import type { UnbudgetedValues } from '../usage/index.js'

/**
 * What a settlement did, each case by name (never a null that could mean several), so that its caller
 * can tell an expiry from a call with nothing to charge or a settlement run twice.
 */
export type SettleOutcome =
  /** The call's cost was recorded, once. */
  | { outcome: 'recorded', usageId: string }
  /** Nothing to charge (nothing was served): the hold was given back. */
  | { outcome: 'released' }
  /** A record under the call's request id was there already (another reservation of the same request): nothing more was charged. */
  | { outcome: 'already-recorded' }
  /** The call's lease had expired and been swept, counting the call at its estimate, before this settlement. */
  | { outcome: 'expired' }
  /**
   * No hold under this reservation id: it had expired and been swept (counted at its estimate), or it was
   * settled before (a settleCall run twice). PostgreSQL keeps no trace that tells the two apart once the
   * row is gone; a caller that settles each reservation once, as the gate does, knows it expired.
   */
  | { outcome: 'not-found' }

/**
 * Whether the sweeper counted the call at its estimate before this settlement, for a caller that settles
 * each reservation once (the gate, a give-back): then no hold under its id means it expired.
 */
export function sweptBeforeSettling (settled: SettleOutcome): boolean {
  return settled.outcome === 'expired' || settled.outcome === 'not-found'
}

/** What budget_settle_batch said of one reservation: its row's usage record (null: none written), or no row at all. */
function heldOutcome (usageId: string | null | undefined, charged: boolean): SettleOutcome {
  if (usageId === undefined) return { outcome: 'not-found' }
  if (usageId !== null) return { outcome: 'recorded', usageId }
  return charged ? { outcome: 'already-recorded' } : { outcome: 'released' }
}

// Small enough that a batch holds the hot rows' locks only briefly (a lease top-up may wait for it).
const MOST_IN_A_BATCH = 100
// Lock timeouts, serialization failures and a database that is briefly away end a batch without
// effect; it is safe to run again.
const RETRYABLE = new Set(['40P01', '40001', '55P03'])
const RETRY_DELAYS_MS = [5, 20, 100, 500, 2000]

/** `cut`: an attempt that held it met a connection error, after which PostgreSQL may have committed it. */
type Work = ({ kind: 'reservation', settlement: Settlement } | { kind: 'leased', settlement: LeasedSettlement } | { kind: 'unbudgeted', settlement: UnbudgetedValues }) & { cut?: boolean }

/** Stores unbudgeted calls' records in one statement, under the ids made for them; the ids of those that are theirs (one missing: another record holds its request id). */
export type RecordUnbudgeted = (records: UnbudgetedValues[], options: { afterCut: boolean }) => Promise<Set<string>>

type Queued = Pending<Work, SettleOutcome>

export function createSettlementQueue (reservations: SettlementRepository,
  options: { ttlMs: number, byTree: boolean, observe: (definitionsVersion: number, sentAt: number) => void, recordUnbudgeted: RecordUnbudgeted, stamp: () => number }, log: Logger) {
  /**
   * What a settlement sent again after a connection cut did, when the statement found nothing left to do: the
   * first attempt may have committed (the cut came after). Its usage record has the id the queue made for it:
   * found, the call was recorded by that attempt. A record under the request id with another id is another
   * reservation's of the same request (already recorded), or the sweeper's (the hold expired first, counted
   * at its estimate: `otherwise`, as without the cut).
   */
  async function afterCut (origin: RecordOrigin | undefined, usageId: string, trees: string[] | undefined, charged: boolean, otherwise: SettleOutcome): Promise<SettleOutcome> {
    const found = await reservations.findSettledRecord(origin, usageId, trees)
    if (found?.own === true) return { outcome: 'recorded', usageId }
    // without the origin (a hold made by another process), nothing else can be told: as without the cut
    if (found?.swept === true || origin === undefined) return otherwise
    if (charged) return found === null ? otherwise : { outcome: 'already-recorded' }
    return { outcome: 'released' } // nothing to charge, and no sweep: the first attempt gave the hold back
  }

  /** Stamps the items' statement as sent now (window-ledger.ts): a settlement moves the ledger only past the measurements sent before it. */
  function stampSent (items: Queued[]): void {
    const sentAt = options.stamp()
    for (const queued of items) (queued.item.settlement as Settlement | LeasedSettlement).sentAt = sentAt
  }

  /** Commits one batch: each kind one statement. */
  async function commit (batch: Queued[]): Promise<void> {
    const own = batch.filter((queued) => queued.item.kind === 'reservation')
    const leased = batch.filter((queued) => queued.item.kind === 'leased')
    const unbudgeted = batch.filter((queued) => queued.item.kind === 'unbudgeted')
    if (own.length > 0) {
      stampSent(own)
      const sentAt = Date.now()
      const { usageIds, definitionsVersion } = await reservations.settleBatch(own.map((queued) => queued.item.settlement as Settlement))
      options.observe(definitionsVersion, sentAt)
      const outcomes: SettleOutcome[] = []
      for (const queued of own) {
        const settlement = queued.item.settlement as Settlement
        const charged = settlement.actualCost !== null
        const outcome = heldOutcome(usageIds.get(settlement.reservationId), charged)
        outcomes.push(outcome.outcome === 'not-found' && queued.item.cut === true && settlement.usageId !== undefined
          ? await afterCut(settlement.origin, settlement.usageId, settlement.trees, charged, outcome)
          : outcome)
      }
      own.forEach((queued, index) => { queued.resolve(outcomes[index]!) })
    }
    if (leased.length > 0) {
      stampSent(leased)
      const sentAt = Date.now()
      const { outcomes, definitionsVersion } = await reservations.settleLeased(leased.map((queued) => queued.item.settlement as LeasedSettlement), options.ttlMs)
      options.observe(definitionsVersion, sentAt)
      const answers: SettleOutcome[] = []
      for (const queued of leased) {
        const settlement = queued.item.settlement as LeasedSettlement
        const found = outcomes.get(settlement.requestId)
        const answer: SettleOutcome = found === undefined || !found.leaseFound
          ? { outcome: 'expired' }
          : found.usageId !== null ? { outcome: 'recorded', usageId: found.usageId } : { outcome: 'already-recorded' }
        // Sent again after a cut, the call's own record from the first attempt reads as another's, or as an
        // expired lease's when the lease was swept meanwhile: its id tells.
        answers.push(answer.outcome !== 'recorded' && queued.item.cut === true
          ? await afterCut({ requestId: settlement.requestId, budgetIds: settlement.budgetIds }, settlement.usageId!, settlement.trees, true, answer)
          : answer)
      }
      leased.forEach((queued, index) => { queued.resolve(answers[index]!) })
    }
    if (unbudgeted.length > 0) {
      const stored = await options.recordUnbudgeted(unbudgeted.map((queued) => queued.item.settlement as UnbudgetedValues),
        { afterCut: unbudgeted.some((queued) => queued.item.cut === true) })
      for (const queued of unbudgeted) {
        // The first of two under one request id takes the record; the other is its replay. A record sent again
        // after a cut finds its own (by the id made for it, insertUnbudgeted) and is recorded, not a replay.
        const { id } = queued.item.settlement as UnbudgetedValues
        queued.resolve(stored.has(id) ? { outcome: 'recorded', usageId: id } : { outcome: 'already-recorded' })
      }
    }
  }

  /** Commits a batch, trying again on a failure that leaves no effect; past that, each of its items alone. */
  async function commitRetrying (batch: Queued[], again: (items: Queued[]) => void): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await commit(batch)
        return
      } catch (error) {
        // A connection error may come after the batch committed: a retry that finds its work done then looks for what it did.
        if (isDatabaseUnavailable(error)) for (const queued of batch) queued.item.cut = true
        const delay = RETRY_DELAYS_MS[attempt]
        if (delay === undefined || !(RETRYABLE.has((error as { code?: string }).code ?? '') || isDatabaseUnavailable(error))) {
          if (batch.length > 1) {
            // One settlement may have failed the batch: settle each alone, so the others still commit.
            again(batch)
            return
          }
          // The hold stays until its TTL; the sweeper then counts it at its estimate. An unbudgeted call has none: its record is lost.
          log.error({ err: error, settlement: batch[0]?.item.settlement },
            batch[0]?.item.kind === 'unbudgeted' ? 'recording an unbudgeted call failed: its spend is not in the ledger' : 'settling a gated call failed')
          for (const queued of batch) queued.reject(error)
          return
        }
        await new Promise((resolve) => setTimeout(resolve, delay))
      }
    }
  }

  // One queue, or one for each set of trees (byTree: on Citus each batch's statements then run on one node);
  // a settlement that does not know its trees, and an unbudgeted record, go to the queue of none.
  const treesKey = (work: Work): string => work.kind === 'unbudgeted' ? '' : (work.settlement.trees ?? []).join(' ')
  const queue = createKeyedGroupCommit<Work, SettleOutcome>(MOST_IN_A_BATCH, commitRetrying, (work) => options.byTree ? treesKey(work) : '')
  const enqueue = queue.submit

  return {
    /** Queues the end of a call's own hold; resolves with what it did once its batch commits. */
    settle (settlement: Settlement): Promise<SettleOutcome> {
      settlement.usageId ??= randomUUID()
      return enqueue({ kind: 'reservation', settlement })
    },

    /** Queues the charge of a call admitted from a lease; resolves with what it did once its batch commits. */
    settleLeased (settlement: LeasedSettlement): Promise<SettleOutcome> {
      settlement.usageId ??= randomUUID()
      return enqueue({ kind: 'leased', settlement })
    },

    /** Queues the usage record of a served call that no budget covered; resolves once its batch commits. */
    recordUnbudgeted (record: UnbudgetedValues): Promise<SettleOutcome> {
      return enqueue({ kind: 'unbudgeted', settlement: record })
    },

    /**
     * Waits until everything queued so far has committed or failed, for at most `waitMs`: with the
     * database away, what is left stays held and the sweeper counts it at its estimate.
     */
    async drain (waitMs = 10_000): Promise<void> {
      const deadline = Date.now() + waitMs
      for (let running = queue.running(); running !== null && Date.now() < deadline; running = queue.running()) {
        await Promise.race([running, new Promise((resolve) => setTimeout(resolve, deadline - Date.now()).unref())])
      }
    }
  }
}

export type SettlementQueue = ReturnType<typeof createSettlementQueue>
