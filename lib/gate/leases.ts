// Leases on hot lines: when calls on one line come close together, this process holds a slice of the
// line's room as one reservation (budget_lease_take, sql/functions/leases.sql) and admits calls from it in memory, with
// no round trip. Each admitted call's estimate comes out of the slice; when the call ends, its actual
// cost goes to the settlement queue (moved from the lease to settled spend, in batches) and the rest
// of its estimate goes back to the slice. The escrow rule holds because the whole slice counts as
// reserved in PostgreSQL until it is spent or given back: settled + held <= limit on every budget.
// A lease is given back when idle, when its line changes or rolls over, and when the process closes.
// A call may cost more than its estimate: it is charged in full, the slice goes below zero in memory
// (the lease admits nothing more until a top-up covers it), and the lease row in PostgreSQL gives up
// what it holds, at most. A retired lease's row stays until every call admitted from it has settled;
// then the final return ends it (sql/functions/leases.sql), so no settlement ever finds its lease gone early.
import { randomUUID } from 'node:crypto'
import type { Logger } from '../kernel/logger.js'
import { fromUnits, toUnits, type Money } from '../kernel/money.js'
import { treesOf, type BudgetNumbers, type BudgetTerms } from './budget-terms.js'
import type { LeaseRepository } from './lease-repository.js'
import type { LeasedSettlement } from './settlement-repository.js'
import type { SettleOutcome, SettlementQueue } from './settlements.js'
import type { WindowLedger } from './window-ledger.js'
import { IDLE_MS, LOW_WATER_CALLS, idleTimer, isHot, lowWaterCalls, sliceCalls, trimmedCalls, type SlicePace } from './hot-slices.js'

/** A lease takes no slice for fewer calls than this at the current estimate: near a limit, calls hold one by one (hot-slices.ts). */
const FEWEST_CALLS = BigInt(LOW_WATER_CALLS)
/** A give-back that fails is tried again after these pauses; room not given back is swept as spend when the lease expires. */
const RETURN_RETRY_DELAYS_MS = [20, 100, 500, 2000, 5000]

interface Lease extends SlicePace {
  id: string
  line: BudgetTerms[]
  /** The line's budget ids, for every settlement of its calls. */
  budgetIds: string[]
  validUntil: number
  /** Units no admitted call can use any more: what new calls may take, or what is given back. Below zero when calls cost more than their estimates. */
  available: bigint
  /** Calls admitted from it whose settlement has not committed yet: while there are any, its row must stay. */
  unsettled: number
  /** A settlement of one of its calls failed: the row is left to expire, and the sweeper counts what it holds. */
  settlementFailed: boolean
  /** The final return was sent, or its rows were found swept: nothing more is given back from memory. */
  ended: boolean
  /** A take with a grant has landed: its rows are in PostgreSQL (until the final return, or a sweep). */
  landed: boolean
  /**
   * Each budget's numbers as the last take measured them under its lock, in the line's order, as a call is
   * decided on them (no approval, no projected crossing, a fit: see Admission.take). A new array each take.
   */
  taken: BudgetNumbers[]
  /** Units its rows hold in PostgreSQL as far as this process knows: what its takes granted, less what settlements drew and returns gave back. */
  held: bigint
  /** Return numbers given so far (budget_lease_return applies each number once: a retry sends the same one). */
  returnsNumbered: number
  /** The returns of this lease, one after the other: each is sent once the one before has committed or been given up. */
  returns: Promise<void>
  returning: boolean
  taking: Promise<void> | null
  /** Below this many calls' worth its slice is topped up (a quarter of what the last take asked for). */
  lowWater: bigint
  /** The last admitted call's estimate: what a call's worth is when the slice is trimmed. */
  lastUnits: bigint
  lastUse: number
  renewedAt: number
  windowStart: number
  windowEnd: number
}

export interface Admission {
  lease: Lease
  estimate: bigint
  admittedAt: Date
  /**
   * The numbers the call is decided on (decidedOn, with its estimate): each window's as the lease's last take
   * measured them under its lock, and a fit (the slice holds the call). The take never spans a threshold whose
   * alert does more than notify, so no action the call could meet comes into force inside the lease. The same
   * array for every call of one take, so a decision on it can be kept per take (lib/gate/integration.ts).
   */
  take: readonly BudgetNumbers[]
  /**
   * The numbers the call reports: each window's spend and reservations as this process knows them now
   * (window-ledger.ts; the whole slice still reserved, as PostgreSQL has it), the take's where it knows none.
   */
  numbers: BudgetNumbers[]
}

/** The numbers a leased call is decided on: its lease's take, with the call's estimate. */
export function decidedOn (admission: Admission): BudgetNumbers[] {
  const estimate = fromUnits(admission.estimate)
  return admission.take.map((taken) => ({ ...taken, estimate }))
}

export function createLeases (reservations: LeaseRepository, settlements: SettlementQueue, ledger: WindowLedger,
  options: { currency: string, ttlMs: number, observe: (definitionsVersion: number, sentAt: number) => void }, log: Logger) {
  const leases = new Map<string, Lease>()
  /** Retired leases whose row is still there (calls to settle, or the final return on its way): kept alive like the others. */
  const draining = new Set<Lease>()
  const lastCall = new Map<string, number>()
  let returning = 0

  /**
   * Queues a give-back of the lease under its next return number. A lease's returns go one at a time, in
   * number order, so a retry (the same number: applied once, sql/functions/leases.sql) is never overtaken.
   */
  function queueReturn (lease: Lease, amount: Money, final: boolean): void {
    const number = ++lease.returnsNumbered
    returning++
    lease.returns = lease.returns.then(async () => { await sendReturn(lease, amount, final, number) }).finally(() => { returning-- })
  }

  /** Sends one give-back, again after a failure (a reply cut after it committed: the same number, so it is not applied twice). Never rejects. */
  async function sendReturn (lease: Lease, amount: Money, final: boolean, number: number): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        const sentAt = ledger.stamp()
        await reservations.returnLease(lease.id, treesOf(lease.line), amount, final, number)
        // What the rows gave back, as budget_lease_return does: all they held when final, else at most that.
        const units = toUnits(amount)
        const released = final || units > lease.held ? lease.held : units
        lease.held -= released
        moveWindows(lease, 0n, released, sentAt)
        if (final) draining.delete(lease)
        return
      } catch (error) {
        const delay = RETURN_RETRY_DELAYS_MS[attempt]
        if (delay === undefined) {
          // Given up: the row is no longer kept alive, so it expires and the sweeper counts what it holds
          // as spent (an over-count, never an under-count).
          draining.delete(lease)
          log.error({ err: error, leaseId: lease.id, amount, final }, 'giving back a budget lease failed; it will be swept when it expires')
          return
        }
        log.warn({ err: error, leaseId: lease.id, attempt: attempt + 1 }, 'giving back a budget lease failed; trying again')
        await new Promise((resolve) => setTimeout(resolve, delay))
      }
    }
  }

  /** A statement of this lease committed: every window of its line moved alike (one currency, no conversion). */
  function moveWindows (lease: Lease, spent: bigint, released: bigint, sentAt: number): void {
    for (const budget of lease.line) ledger.moved(budget.budgetId, budget.periodStart, spent, released, sentAt)
  }

  /**
   * Gives back what no admitted call can use. Once the lease is retired and every call it admitted has
   * settled (and no top-up is landing), the return is final: all the row still holds goes back and it is gone.
   */
  function giveBack (lease: Lease): void {
    if (lease.ended) return
    const settledAll = lease.returning && lease.unsettled === 0 && lease.taking === null
    // A call whose settlement failed is charged by the sweeper, at its estimate, from what the row still holds.
    if (settledAll && lease.settlementFailed) draining.delete(lease)
    const final = settledAll && !lease.settlementFailed
    if (!final && lease.available <= 0n) return
    const amount = lease.available > 0n ? lease.available : 0n
    lease.available -= amount
    if (final) lease.ended = true
    queueReturn(lease, fromUnits(amount), final)
  }

  /** Gives back what a live lease holds past its pace's need (hot-slices.ts trimmedCalls): its calls keep admitting from the rest. */
  function trim (lease: Lease, now: number): void {
    if (lease.returning || lease.ended || lease.taking !== null || lease.lastUnits <= 0n || lease.available <= 0n) return
    const kept = trimmedCalls(lease, Number(lease.available / lease.lastUnits), now)
    if (kept === null) return
    const amount = lease.available - lease.lastUnits * BigInt(kept)
    lease.available -= amount
    queueReturn(lease, fromUnits(amount), false)
  }

  function retire (key: string, lease: Lease): void {
    if (leases.get(key) === lease) leases.delete(key)
    if (!lease.returning && !lease.ended) draining.add(lease)
    lease.returning = true
    giveBack(lease)
  }

  /** One top-up at a time per lease; a retired lease gives back what landed once it is done. */
  function topUp (lease: Lease, estimate: bigint): Promise<void> {
    lease.taking = take(lease, estimate).finally(() => {
      lease.taking = null
      if (lease.returning) giveBack(lease)
    })
    return lease.taking
  }

  async function take (lease: Lease, estimate: bigint): Promise<void> {
    const sentAt = ledger.stamp()
    const sentAtMs = Date.now()
    const calls = sliceCalls(lease, sentAtMs)
    lease.callsSinceTake = 0
    lease.tookAt = sentAtMs
    lease.lastAsk = calls
    lease.lowWater = BigInt(lowWaterCalls(calls))
    const granted = await reservations.takeLease(lease.id, lease.line, options.currency, options.ttlMs,
      fromUnits(estimate * BigInt(calls)), fromUnits(estimate * FEWEST_CALLS))
    if (granted === null) return
    lease.landed = true
    if (lease.ended) {
      // Its rows were found swept (a renewal) while this take waited: what they hold now is this take's
      // slice alone, which no call can use. The final return gives it all back and ends the rows again.
      draining.add(lease)
      queueReturn(lease, '0', true)
      return
    }
    // The slice is the lease's before anything else happens: if the version says a budget changed (the
    // lease then goes with the old lines), or the lease was retired meanwhile, it is given back whole.
    const slice = toUnits(granted.granted)
    lease.available += slice
    lease.held += slice
    const measured = new Map(granted.budgets.map((budget) => [budget.budgetId, budget]))
    lease.taken = lease.line.map((budget) => ({ ...measured.get(budget.budgetId)!, approvedThrough: null, projectedActions: [], fits: true, estimate: null, outOfRange: false, overCap: false }))
    // The take reports each window's reservations without this slice; the window holds it now.
    for (const budget of lease.line) {
      const numbers = measured.get(budget.budgetId)
      if (numbers !== undefined) ledger.measured(budget.budgetId, budget.periodStart, numbers.currentAmount, fromUnits(toUnits(numbers.reservedAmount) + slice), sentAt)
    }
    options.observe(granted.definitionsVersion, sentAtMs)
    if (lease.returning) giveBack(lease)
  }

  /**
   * Ends a call that was not served: its estimate goes back to the slice, 'released'; or, when the lease
   * had expired and been swept (counting the call at its estimate), 'expired', as a settlement says. Only
   * PostgreSQL knows of a sweep the renewals have not found yet (the process was cut off past the TTL), so
   * it is asked; this is the path of failed calls, not of served ones. Unable to ask, the call is released.
   */
  async function release ({ lease, estimate }: Admission): Promise<SettleOutcome> {
    try {
      const swept = lease.ended || !await reservations.leaseHeld(lease.id, treesOf(lease.line)).catch((error: unknown) => {
        log.warn({ err: error, leaseId: lease.id }, 'checking a budget lease failed: its released call is given back to it')
        return true
      })
      if (swept) {
        // As the renewal that finds it swept: it admits no more, and has nothing left to give back.
        if (!lease.ended) {
          lease.available = 0n
          lease.ended = true
          draining.delete(lease)
          for (const [key, held] of leases) if (held === lease) retire(key, lease)
        }
        return { outcome: 'expired' }
      }
      lease.available += estimate
      return { outcome: 'released' }
    } finally {
      lease.unsettled--
      if (lease.returning) giveBack(lease)
    }
  }

  // Idle and out-of-date leases are given back; the others are kept alive well within their TTL, so a
  // living process never has a lease swept from under it (one that was, after all, admits no more).
  const sweeper = idleTimer(() => {
    const now = Date.now()
    for (const [key, lease] of leases) {
      if (now - lease.lastUse > IDLE_MS || now >= lease.validUntil) retire(key, lease)
      else trim(lease, now)
    }
    for (const [key, at] of lastCall) if (now - at > IDLE_MS) lastCall.delete(key)
    for (const [key, lease] of [...leases, ...[...draining].map((lease) => [null, lease] as const)]) {
      if (now - lease.renewedAt < options.ttlMs / 3) continue
      lease.renewedAt = now
      // No row is "swept" only if a take had landed before the renewal was sent: a take in flight then
      // (the first, waiting on a hot window row) has not written its rows yet, and only adds rows.
      const hadRows = lease.landed
      reservations.renewLease(lease.id, treesOf(lease.line), options.ttlMs).then((alive) => {
        if (alive || lease.ended || !hadRows) return
        // It expired and was swept (counted whole): it admits no more, and has nothing left to give back.
        lease.available = 0n
        lease.ended = true
        draining.delete(lease)
        if (key !== null) retire(key, lease)
      }, (error: unknown) => { log.warn({ err: error, leaseId: lease.id }, 'renewing a budget lease failed') })
    }
  }, Math.min(500, Math.max(50, Math.floor(options.ttlMs / 6))))

  /** Takes the call's estimate out of the lease's slice, which holds it; tops the slice up before it runs dry. */
  function admitFrom (lease: Lease, estimate: Money, units: bigint, now: number): Admission {
    lease.available -= units
    lease.unsettled++
    lease.callsSinceTake++
    lease.lastUnits = units
    lease.lastUse = now
    // Top up before the slice runs dry, so calls do not wait for the statement that does it.
    if (lease.available < units * lease.lowWater && lease.taking === null && !lease.returning) {
      topUp(lease, units).catch((error: unknown) => { log.warn({ err: error, leaseId: lease.id }, 'topping up a budget lease failed') })
    }
    // A lease is taken only on a line in the gate's currency (so the estimate is the call's own) and never
    // reaches a threshold whose alert does more than notify (sql/functions/leases.sql): the take reads no
    // approval and no projected crossing, and the call fits, since the slice already holds it. It is
    // decided on the take's numbers. It reports the freshest this process knows (window-ledger.ts), the
    // take's otherwise: the whole slice counts as reserved, as it does in PostgreSQL, so the call reports
    // what a hold would (what is left before its estimate), and the same binding budget as a read of the windows now.
    const take = lease.taken
    const numbers: BudgetNumbers[] = new Array(take.length)
    for (let index = 0; index < take.length; index++) {
      const taken = take[index]!
      const known = ledger.numbersOf(taken.budgetId, lease.line[index]!.periodStart)
      numbers[index] = known === undefined ? { ...taken, estimate } : { ...taken, estimate, currentAmount: known.currentAmount, reservedAmount: known.reservedAmount }
    }
    const admittedAt = new Date(Math.min(Math.max(now, lease.windowStart), lease.windowEnd - 1))
    return { lease, estimate: units, admittedAt, take, numbers }
  }

  return {
    /**
     * Admits a call from the line's lease, taking or topping up the lease when the line is hot. Null
     * when it cannot (a cold line, a line near its limit or an alert action, an out-of-date line): the
     * caller then holds call by call.
     */
    async admit (key: string, line: BudgetTerms[], validUntil: number, estimate: Money): Promise<Admission | null> {
      sweeper.start()
      const now = Date.now()
      const previous = lastCall.get(key)
      lastCall.set(key, now)
      const units = toUnits(estimate)
      let lease = leases.get(key)
      if (lease !== undefined && (lease.line !== line || now >= lease.validUntil)) {
        retire(key, lease) // the line was reloaded (a change, a rollover): its lease belongs to the old one
        lease = undefined
      }
      if (lease === undefined) {
        if (!isHot(previous, now) || line.length === 0) return null
        lease = {
          id: randomUUID(), line, budgetIds: line.map((budget) => budget.budgetId), validUntil, available: 0n, held: 0n, returnsNumbered: 0, returns: Promise.resolve(), unsettled: 0, settlementFailed: false, ended: false, landed: false, taken: [], returning: false, taking: null, lowWater: FEWEST_CALLS, lastUnits: 0n, callsSinceTake: 0, tookAt: now, lastAsk: 0, lastUse: now, renewedAt: now,
          windowStart: Math.max(...line.map((budget) => budget.periodStart.getTime())),
          windowEnd: Math.min(...line.map((budget) => budget.periodEnd.getTime()))
        }
        leases.set(key, lease)
      }
      if (lease.available < units) {
        // One top-up at a time per lease; calls that arrive meanwhile wait for it.
        await (lease.taking ?? topUp(lease, units))
        if (lease.returning || lease.available < units) return null
      }
      return admitFrom(lease, estimate, units, now)
    },

    /**
     * admit() when nothing needs waiting for: the line's lease is current and has room for the call now.
     * Null otherwise (admit() then decides, and may take or top up the lease).
     */
    admitNow (key: string, line: BudgetTerms[], estimate: Money): Admission | null {
      const lease = leases.get(key)
      const now = Date.now()
      if (lease === undefined || lease.line !== line || now >= lease.validUntil) return null
      const units = toUnits(estimate)
      if (lease.available < units) return null
      lastCall.set(key, now)
      return admitFrom(lease, estimate, units, now)
    },
    /**
     * Ends an admitted call: charges `actualCost` in full (null: nothing was served) and frees what is
     * left of its estimate (a call that cost more takes the difference from the slice). Resolves with
     * what the settlement did.
     */
    async end (admission: Admission, actualCost: Money | null, info: { requestId: string, source: string, description: string | null, metadata: Record<string, unknown> }): Promise<SettleOutcome> {
      const { lease, estimate } = admission
      if (actualCost === null) return await release(admission)
      const charged = toUnits(actualCost)
      lease.available += estimate - charged
      if (lease.returning) giveBack(lease) // what this call left unused, now; the row stays for its charge
      try {
        const settlement: LeasedSettlement = {
          leaseId: lease.id, budgetIds: lease.budgetIds, trees: treesOf(lease.line), requestId: info.requestId, actualCost, occurredAt: admission.admittedAt,
          source: info.source, description: info.description, metadata: info.metadata
        }
        const settled = await settlements.settleLeased(settlement)
        if (settled.outcome === 'recorded') {
          // As budget_settle_leased moves it: all of the cost to settled spend, out of what the rows hold (to 0 at most).
          const released = charged > lease.held ? lease.held : charged
          lease.held -= released
          moveWindows(lease, charged, released, settlement.sentAt ?? 0)
        }
        return settled
      } catch (error) {
        lease.settlementFailed = true
        throw error
      } finally {
        lease.unsettled--
        if (lease.returning) giveBack(lease)
      }
    },

    /** Stops admitting from every lease and gives back what no call can use (a budget changed). */
    forgetAll (): void {
      for (const [key, lease] of leases) retire(key, lease)
    },

    /**
     * Gives everything back and waits for the returns to commit, for at most `waitMs`: with the
     * database away, a lease not given back expires and is counted as spent (never under-counted).
     */
    async close (waitMs = 5000): Promise<void> {
      sweeper.stop()
      // A top-up still in flight lands after its lease is retired and gives its slice back then; a lease
      // with calls still settling ends when the last one has. Wait for all of it, for at most waitMs.
      for (const [key, lease] of leases) retire(key, lease)
      const deadline = Date.now() + waitMs
      while ((draining.size > 0 || returning > 0) && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 10))
      }
    }
  }
}

export type Leases = ReturnType<typeof createLeases>
