// Group commit, the one loop behind the hold queue and the settlement queue: work that arrives while a batch
// is in PostgreSQL waits for the next batch, and each batch is one call of `commit`. A lone item is a batch of
// one; under load a batch takes up to `most` items, so a hot row is written once per batch, not per item.

/** An item waiting for its batch, and how to answer its submitter. */
export interface Pending<T, R> {
  item: T
  resolve: (result: R) => void
  reject: (error: unknown) => void
  /** Committed in a batch of its own (see again). */
  alone?: boolean
}

/**
 * `commit` answers each item of the batch (resolve or reject); if it throws, every item it left unanswered is
 * rejected with that error. It may hand items to `again`, which puts them first in the queue, each to be
 * committed alone (a batch that one item failed, so that the others still commit).
 */
export function createGroupCommit<T, R> (most: number, commit: (batch: Array<Pending<T, R>>, again: (items: Array<Pending<T, R>>) => void) => Promise<void>) {
  let queue: Array<Pending<T, R>> = []
  let running: Promise<void> | null = null

  const again = (items: Array<Pending<T, R>>): void => { queue = [...items.map((pending) => ({ ...pending, alone: true })), ...queue] }

  async function run (): Promise<void> {
    while (queue.length > 0) {
      const batch = queue[0]?.alone === true ? queue.slice(0, 1) : queue.slice(0, most)
      queue = queue.slice(batch.length)
      try {
        await commit(batch, again)
      } catch (error) {
        // An item already answered ignores this (a promise settles once).
        for (const pending of batch) pending.reject(error)
      }
    }
  }

  // One batch runner at a time; one that ends with work queued behind it starts the next.
  function kick (): void {
    if (running !== null) return
    running = run().finally(() => {
      running = null
      if (queue.length > 0) kick()
    })
  }

  return {
    /** Queues `item`; resolves with what its batch's commit answered for it (one promise per item, nothing wrapped around it). */
    submit (item: T): Promise<R> {
      const done = new Promise<R>((resolve, reject) => { queue.push({ item, resolve, reject }) })
      kick()
      return done
    },

    /** The batch runner in flight, null when the queue is idle: what a drain waits for. */
    running: (): Promise<void> | null => running
  }
}

/**
 * Group commits kept apart by `keyOf(item)`: one queue a key, each with its own batch runner (on Citus the
 * gate batches by the trees a statement names, so that each statement runs on one node). A queue is made when
 * its key first comes, and the idle ones go once there are many (an idle queue holds nothing).
 */
export function createKeyedGroupCommit<T, R> (most: number, commit: (batch: Array<Pending<T, R>>, again: (items: Array<Pending<T, R>>) => void) => Promise<void>,
  keyOf: (item: T) => string) {
  const queues = new Map<string, ReturnType<typeof createGroupCommit<T, R>>>()
  const queueFor = (key: string) => {
    let queue = queues.get(key)
    if (queue === undefined) {
      if (queues.size >= 1024) for (const [idleKey, idle] of queues) if (idle.running() === null) queues.delete(idleKey)
      queues.set(key, queue = createGroupCommit(most, commit))
    }
    return queue
  }
  return {
    /** Queues `item` behind the others of its key (createGroupCommit's submit). */
    submit: async (item: T): Promise<R> => await queueFor(keyOf(item)).submit(item),

    /** Every batch runner in flight, null when every queue is idle: what a drain waits for. */
    running (): Promise<void> | null {
      const running = [...queues.values()].map((queue) => queue.running()).filter((run) => run !== null)
      return running.length === 0 ? null : Promise.all(running).then(() => undefined)
    }
  }
}
