// Request and token rate limits beside money. Each rate-limited budget has a token bucket in PostgreSQL
// (budget_rate_take, sql/functions/rate-limits.sql) that every gateway process shares. A call needs one request and its
// worst-case tokens from every rate-limited budget of its line. This process keeps an allowance per
// budget, taken from the bucket: exactly the call's need when calls are rare, a slice (up to 64 calls'
// worth, at most an eighth of what the bucket holds) when they come within 100 ms of each other, so on
// a hot budget calls are admitted in memory, with no round trip. Whatever a process holds counts as used
// in the bucket, so the limits hold across processes; what it does not use goes back when idle for 2 s
// and when the process closes. When a call ends, the tokens it did not use go back to the allowance, and the
// tokens it used past what the allowance held go to the bucket at once, as a debt every process meets.
// A changed budget ends every allowance at once (forgetAll): what was held, what a statement in flight
// then grants and what calls admitted before the change give back all go to the buckets, so not one
// call is admitted in memory under a limit that no longer holds.
import type { Logger } from '../kernel/logger.js'
import { bestEffort } from '../kernel/best-effort.js'
import { DatabaseUnavailableError } from '../kernel/errors.js'
import type { BudgetTerms } from './budget-terms.js'
import type { BucketOf, RateAsk, RateGrant, RateRepository, RateReturn } from './rate-repository.js'
import { IDLE_MS, LOW_WATER_CALLS, idleTimer, isHot, lowWaterCalls, sliceCalls, trimmedCalls, type SlicePace } from './hot-slices.js'


interface Allowance extends SlicePace {
  /** The root of the budget's tree, which the statements on its bucket name. */
  rootId: string
  requests: number
  tokens: number
  lastUse: number
  /** The bucket as the last statement left it: the 429's numbers. */
  seen: RateGrant | null
  /** One statement at a time per budget; calls that need it meanwhile wait for it. */
  taking: Promise<unknown> | null
  /** Below this many calls' worth it is topped up (a quarter of what the last take asked for). */
  lowWater: number
  /** The tokens the last admitted call took: what a call's worth of tokens is when the allowance is trimmed. */
  lastTokens: number
}

/** What an admitted call took from each rate-limited budget of its line (empty when none limits it). */
export interface RateAdmission {
  taken: Array<{ budgetId: string, rootId: string, requests: number, tokens: number, limitsTokens: boolean }>
  /** The allowances' era it was admitted in (forgetAll starts a new one). */
  era: number
}

/** Which budget's limit refused, and the numbers OpenAI's 429 headers carry. */
export interface RateRefusal {
  budgetId: string
  name: string
  /** The dimension that ran out first. */
  dimension: 'requests' | 'tokens'
  requestsPerMinute: number | null
  requestsLeft: number | null
  tokensPerMinute: number | null
  tokensLeft: number | null
  /** When the call's need will be back in the bucket. */
  retryAfterMs: number
  /** When each dimension's bucket will be full again. */
  requestsResetMs: number | null
  tokensResetMs: number | null
  /** The call needs more tokens than the budget allows in a minute: no wait makes it fit, and retrying is pointless. */
  tooLarge: boolean
}

/** What a call on a line that no budget rate-limits takes: nothing (one object for all of them, never changed). */
export const NOTHING_TAKEN: RateAdmission = { taken: [], era: -1 }

const limits = (budget: BudgetTerms) => budget.requestsPerMinute !== null || budget.tokensPerMinute !== null

export function createRateLimits (reservations: RateRepository, log: Logger) {
  const allowances = new Map<string, Allowance>()
  let returns: Promise<unknown> = Promise.resolve()
  /** Counts forgetAll(): allowance taken or admitted in an earlier era goes back to the buckets. */
  let era = 0
  /** Statements taking allowance, in flight: close() waits for them (their allowance may be gone by then). */
  const takes = new Set<Promise<boolean>>()
  /** close() was called: nothing more is taken (the gate is stopping, its pool about to end). */
  let closed = false

  const allowanceOf = ({ budgetId, rootId }: BucketOf): Allowance => {
    let allowance = allowances.get(budgetId)
    if (allowance === undefined) {
      sweeper.start()
      allowance = { rootId, requests: 0, tokens: 0, lastUse: 0, seen: null, taking: null, lowWater: LOW_WATER_CALLS, lastTokens: 0, callsSinceTake: 0, tookAt: Date.now(), lastAsk: 0 }
      allowances.set(budgetId, allowance)
    }
    return allowance
  }

  // Every call uses a token at least: a call whose estimate names none (reserveCall without tokens) still
  // needs one, so it asks the bucket when its allowance is empty, and a bucket in debt (the uses of such calls
  // are counted when they end) refuses it. Needing nothing, it would be covered by an empty allowance.
  const need = (budget: BudgetTerms, tokens: number) => ({
    requests: budget.requestsPerMinute === null ? 0 : 1,
    tokens: budget.tokensPerMinute === null ? 0 : Math.max(1, tokens)
  })
  const covers = (allowance: Allowance, wanted: { requests: number, tokens: number }) =>
    allowance.requests >= wanted.requests && allowance.tokens >= wanted.tokens

  /**
   * One statement for the line's budgets whose allowance is short: their need, or a slice when hot. False
   * when the definitions changed while it was in flight: what it was granted went back to the buckets.
   */
  async function topUp (short: BudgetTerms[], tokens: number, now: number): Promise<boolean> {
    const asks: RateAsk[] = short.map((budget) => {
      const allowance = allowanceOf(budget)
      const wanted = need(budget, tokens)
      const calls = isHot(allowance.lastUse, now) ? sliceCalls(allowance, now) : 1
      const extraCalls = calls - 1
      allowance.callsSinceTake = 0
      allowance.tookAt = now
      allowance.lastAsk = calls
      allowance.lowWater = lowWaterCalls(calls)
      // The need is the shortfall: what the allowance lacks for this call (more when a call overdrew it;
      // 0 for a top-up in the background, which takes whatever the bucket can spare up to the slice).
      const needRequests = Math.max(0, wanted.requests - allowance.requests)
      const needTokens = Math.max(0, wanted.tokens - allowance.tokens)
      return {
        budgetId: budget.budgetId,
        rootId: budget.rootId,
        needRequests,
        needTokens,
        askRequests: needRequests + wanted.requests * extraCalls,
        askTokens: needTokens + wanted.tokens * extraCalls
      }
    })
    // An allowance given back a moment ago may not be in its bucket yet: take after it is, or a call
    // is refused for tokens this process just returned.
    const takenIn = era
    const rootOf = new Map(asks.map((ask) => [ask.budgetId, ask.rootId]))
    const taking = returns.then(async () => await reservations.takeRate(asks)).then((grants) => {
      if (takenIn !== era) {
        // Granted under definitions that have changed since: the bucket gets it back, no call uses it.
        giveBack(grants.map((grant) => ({ budgetId: grant.budgetId, rootId: rootOf.get(grant.budgetId)!, requests: grant.grantedRequests, tokens: grant.grantedTokens })))
        return false
      }
      for (const grant of grants) {
        const allowance = allowanceOf({ budgetId: grant.budgetId, rootId: rootOf.get(grant.budgetId)! })
        allowance.requests += grant.grantedRequests
        allowance.tokens += grant.grantedTokens
        allowance.seen = grant
      }
      return true
    })
    takes.add(taking)
    for (const budget of short) allowanceOf(budget).taking = taking
    try {
      return await taking
    } finally {
      takes.delete(taking)
      for (const budget of short) if (allowances.get(budget.budgetId)?.taking === taking) allowances.get(budget.budgetId)!.taking = null
    }
  }

  function refusal (budget: BudgetTerms, tokens: number): RateRefusal {
    const seen = allowanceOf(budget).seen
    const requestsLeft = seen?.requestsLeft ?? null
    const tokensLeft = seen?.tokensLeft ?? null
    const wanted = need(budget, tokens)
    // ms until `amount` more is in a bucket that refills `perMinute` a minute
    const wait = (amount: number, perMinute: number | null) => perMinute === null || amount <= 0 ? 0 : Math.ceil(amount * 60_000 / perMinute)
    const requestsShort = requestsLeft === null ? 0 : wanted.requests - requestsLeft
    const tokensShort = tokensLeft === null ? 0 : wanted.tokens - tokensLeft
    const tooLarge = budget.tokensPerMinute !== null && wanted.tokens > budget.tokensPerMinute
    return {
      tooLarge,
      budgetId: budget.budgetId,
      name: budget.name,
      dimension: !tooLarge && budget.requestsPerMinute !== null && (requestsShort > 0 || budget.tokensPerMinute === null) ? 'requests' : 'tokens',
      requestsPerMinute: budget.requestsPerMinute,
      requestsLeft: requestsLeft === null ? null : Math.max(0, Math.floor(requestsLeft)),
      tokensPerMinute: budget.tokensPerMinute,
      tokensLeft: tokensLeft === null ? null : Math.max(0, Math.floor(tokensLeft)),
      // at least a millisecond: a refused call is never told to come back at once
      retryAfterMs: Math.max(1, wait(requestsShort, budget.requestsPerMinute), wait(tokensShort, budget.tokensPerMinute)),
      requestsResetMs: budget.requestsPerMinute === null ? null : wait(budget.requestsPerMinute - (requestsLeft ?? 0), budget.requestsPerMinute),
      tokensResetMs: budget.tokensPerMinute === null ? null : wait(budget.tokensPerMinute - (tokensLeft ?? 0), budget.tokensPerMinute)
    }
  }

  // Allowances idle for IDLE_MS go back to their buckets, in one statement.
  const sweeper = idleTimer(() => {
    const now = Date.now()
    giveBackIdle(now - IDLE_MS)
    trim(now)
  }, 500)

  /** Gives back what live allowances hold past their pace's need (hot-slices.ts trimmedCalls), in one statement. */
  function trim (now: number): void {
    const back: RateReturn[] = []
    for (const [budgetId, allowance] of allowances) {
      if (allowance.taking !== null) continue
      const tokenCalls = allowance.lastTokens > 0 ? Math.floor(allowance.tokens / allowance.lastTokens) : 0
      const kept = trimmedCalls(allowance, Math.max(Math.floor(allowance.requests), tokenCalls), now)
      if (kept === null) continue
      const requests = Math.max(0, allowance.requests - kept)
      const tokens = allowance.lastTokens > 0 ? Math.max(0, allowance.tokens - allowance.lastTokens * kept) : 0
      allowance.requests -= requests
      allowance.tokens -= tokens
      back.push({ budgetId, rootId: allowance.rootId, requests, tokens })
    }
    giveBack(back)
  }

  /** Ends the allowances idle since `idleSince` (all of them: every one, even with a statement in flight, which then gives its grant back). */
  function giveBackIdle (idleSince: number, all = false): void {
    const back: RateReturn[] = []
    for (const [budgetId, allowance] of allowances) {
      if (!all && (allowance.lastUse > idleSince || allowance.taking !== null)) continue
      back.push({ budgetId, rootId: allowance.rootId, requests: allowance.requests, tokens: allowance.tokens })
      allowances.delete(budgetId)
    }
    giveBack(back)
  }

  /**
   * Gives allowance back to the buckets (what is not 0 of it; a negative amount is a debt), after the returns
   * before it. Resolves when it has landed, or failed and was dealt with (it never rejects).
   */
  function giveBack (back: RateReturn[]): Promise<void> {
    back = back.filter((b) => b.requests !== 0 || b.tokens !== 0)
    if (back.length === 0) return Promise.resolve()
    // Failed after the repository's own retries (a bucket row locked past lock_timeout, the database away):
    // allowance given back is lost to the bucket until it refills, within a minute, so fewer calls. A debt must
    // not be forgiven: it goes back to this process's allowance, paid by its next take or give-back.
    returns = Promise.all([returns, bestEffort(log, async () => { await reservations.giveBackRate(back) },
      'giving back rate-limit allowance failed: those budgets admit fewer calls until their buckets refill, within a minute; a debt stays in this process until its next take',
      { budgetIds: back.map((b) => b.budgetId), allowance: back }).then((given) => {
      if (!given) for (const debt of back.filter((b) => b.tokens < 0)) allowanceOf(debt).tokens += debt.tokens
    })])
    return returns.then(() => {})
  }

  /** Takes the call's need from every limiting budget's allowance, which covers it; tops up the hot ones before they run dry. */
  function takeCovered (limited: BudgetTerms[], tokens: number, now: number): RateAdmission {
    const low: BudgetTerms[] = []
    const taken = limited.map((budget) => {
      const allowance = allowanceOf(budget)
      const wanted = need(budget, tokens)
      const hot = isHot(allowance.lastUse, now)
      allowance.requests -= wanted.requests
      allowance.tokens -= wanted.tokens
      allowance.lastUse = now
      allowance.callsSinceTake++
      allowance.lastTokens = wanted.tokens
      // On a hot budget, top up before the allowance runs dry, so calls do not wait for the statement.
      if (hot && allowance.taking === null && !covers(allowance, { requests: wanted.requests * allowance.lowWater, tokens: wanted.tokens * allowance.lowWater })) low.push(budget)
      return { budgetId: budget.budgetId, rootId: budget.rootId, ...wanted, limitsTokens: budget.tokensPerMinute !== null }
    })
    if (low.length > 0) {
      void bestEffort(log, async () => { await topUp(low, tokens, now) },
        'topping up a rate-limit allowance in the background failed: the next call takes its own', { budgetIds: low.map((budget) => budget.budgetId) })
    }
    return { taken, era }
  }

  return {
    /**
     * Takes one request and `tokens` from every rate-limited budget of the line, or nothing: then the
     * budget whose limit refused, with the numbers of OpenAI's 429.
     */
    async admit (line: BudgetTerms[], tokens: number): Promise<RateAdmission | RateRefusal> {
      const limited = line.filter(limits)
      if (limited.length === 0) return NOTHING_TAKEN
      const now = Date.now()
      // Waiting for another call's statement on a budget costs no try, nor does a statement of ours whose
      // grant went back because the definitions changed meanwhile; at most two statements of our own that count.
      for (let ownTakes = 0, rounds = 0; ; rounds++) {
        const short = limited.filter((budget) => !covers(allowanceOf(budget), need(budget, tokens)))
        if (short.length === 0) break
        const pending = short.map((budget) => allowanceOf(budget).taking).filter((taking) => taking !== null)
        if (pending.length > 0 && rounds < 50) {
          // Whatever they did: a failed statement is reported by the call that made it, and the loop looks again.
          await Promise.allSettled(pending)
          continue
        }
        if (ownTakes >= 2 || rounds >= 50) return refusal(short[0]!, tokens)
        if (closed) throw new DatabaseUnavailableError()
        if (await topUp(short, tokens, now)) ownTakes++
      }
      return takeCovered(limited, tokens, now)
    },

    /**
     * admit() when nothing needs waiting for: no budget of the line limits the rate, or every allowance
     * covers the call now. Null otherwise (admit() then takes from the buckets, or refuses).
     */
    admitNow (line: BudgetTerms[], tokens: number): RateAdmission | null {
      if (!line.some(limits)) return NOTHING_TAKEN
      const limited = line.filter(limits)
      for (const budget of limited) {
        const allowance = allowances.get(budget.budgetId)
        if (allowance === undefined || !covers(allowance, need(budget, tokens))) return null
      }
      return takeCovered(limited, tokens, Date.now())
    },


    /**
     * Ends an admitted call: `usedTokens` is what it used (null: it was not served, so its request and
     * tokens come back). The difference from what it took goes back to the allowance. Resolves when what goes
     * to the bucket (a debt) is there: a settlement that waits for it is recorded after its debt.
     */
    async end (admission: RateAdmission, usedTokens: number | null): Promise<void> {
      // A served call used a token at least (need() took one), though its upstream reported no usage.
      const used = usedTokens === null ? 0 : Math.max(1, usedTokens)
      if (admission.era !== era) {
        // Admitted under definitions that have changed since: the difference settles with the bucket.
        await giveBack(admission.taken.map((taken) => ({
          budgetId: taken.budgetId,
          rootId: taken.rootId,
          requests: usedTokens === null ? taken.requests : 0,
          tokens: taken.limitsTokens ? taken.tokens - used : 0
        })))
        return
      }
      const debts: RateReturn[] = []
      for (const taken of admission.taken) {
        const allowance = allowanceOf(taken)
        if (usedTokens === null) allowance.requests += taken.requests
        // what it reserved less what it used
        if (taken.limitsTokens) allowance.tokens += taken.tokens - used
        // Used more than the allowance held (an estimate that leaves tokens out, an upstream billing past
        // max_tokens): the bucket is told of the debt at once, so every process's next call meets it, and a
        // refusal's wait counts it. Kept here, it was invisible to other processes until this one's next take.
        if (allowance.tokens < 0) {
          debts.push({ budgetId: taken.budgetId, rootId: allowance.rootId, requests: 0, tokens: allowance.tokens })
          allowance.tokens = 0
        }
      }
      await giveBack(debts)
    },

    /** Gives every allowance back (a budget changed: its limits may have): later calls take under the new ones. */
    forgetAll (): void {
      era++
      giveBackIdle(Number.POSITIVE_INFINITY, true)
    },

    /** Gives every allowance back and waits for it to commit, for at most `waitMs`. */
    async close (waitMs = 5000): Promise<void> {
      closed = true
      sweeper.stop()
      // A statement in flight gives its grant back when it lands: wait for it, then for every return.
      const landing = Promise.allSettled([...takes])
      era++
      giveBackIdle(Number.POSITIVE_INFINITY, true)
      await Promise.race([landing.then(async () => await returns), new Promise((resolve) => setTimeout(resolve, waitMs).unref())])
    }
  }
}

export type RateLimits = ReturnType<typeof createRateLimits>

export function isRateRefusal (result: RateAdmission | RateRefusal): result is RateRefusal {
  return 'retryAfterMs' in result
}
