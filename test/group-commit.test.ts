import t from 'tap'
import { createGroupCommit, type Pending } from '../lib/gate/group-commit.js'

/** A commit that records each batch's items and waits for the test to let it finish. */
function recording () {
  const batches: number[][] = []
  const gates: Array<() => void> = []
  const commit = async (batch: Array<Pending<number, string>>): Promise<void> => {
    batches.push(batch.map((pending) => pending.item))
    await new Promise<void>((resolve) => gates.push(resolve))
    for (const pending of batch) pending.resolve(`done ${pending.item}`)
  }
  const release = async (): Promise<void> => {
    while (gates.length === 0) await new Promise((resolve) => setImmediate(resolve))
    gates.shift()!()
  }
  return { batches, commit, release }
}

t.test('a lone item is a batch of one; what arrives meanwhile waits for the next batch, up to `most` a batch', async (t) => {
  const { batches, commit, release } = recording()
  const queue = createGroupCommit<number, string>(2, commit)
  const first = queue.submit(1)
  const rest = [queue.submit(2), queue.submit(3), queue.submit(4)]
  t.same(batches, [[1]], 'the first goes at once, alone')
  await release()
  t.equal(await first, 'done 1')
  await release()
  await release()
  t.same(await Promise.all(rest), ['done 2', 'done 3', 'done 4'])
  t.same(batches, [[1], [2, 3], [4]], 'the three that waited went in batches of at most two, in order')
  t.equal(queue.running(), null, 'idle once the queue is empty')
})

t.test('a commit that throws rejects every item it left unanswered, and the next batch still runs', async (t) => {
  let calls = 0
  const queue = createGroupCommit<number, string>(10, async (batch) => {
    calls++
    if (calls === 1) {
      batch[0]!.resolve('answered before the failure')
      throw new Error('the statement failed')
    }
    for (const pending of batch) pending.resolve('ok')
  })
  const answered = queue.submit(1)
  const failed = queue.submit(2) // waits: batch 1 holds only the first
  t.equal(await answered, 'answered before the failure')
  t.equal(await failed, 'ok', 'a later batch commits')
  const [a, b] = [queue.submit(3), queue.submit(4)]
  t.same(await Promise.all([a, b]), ['ok', 'ok'])

  const broken = createGroupCommit<number, string>(10, async () => { throw new Error('down') })
  await t.rejects(broken.submit(1), { message: 'down' }, 'an unanswered item gets the error')
})

t.test('items handed to `again` are committed first, each alone, before what queued behind them', async (t) => {
  const batches: number[][] = []
  let behind: Promise<string> | undefined
  const queue = createGroupCommit<number, string>(10, async (batch, again) => {
    batches.push(batch.map((pending) => pending.item))
    if (behind === undefined && batch.length > 1) {
      behind = queue.submit(3) // queued while the batch fails
      again(batch)
      return
    }
    for (const pending of batch) pending.resolve(`done ${pending.item}`)
  })
  const lone = queue.submit(0)
  const grouped = [queue.submit(1), queue.submit(2)] // wait behind the lone one, then go together
  await lone
  t.same(await Promise.all(grouped), ['done 1', 'done 2'])
  t.equal(await behind, 'done 3')
  t.same(batches, [[0], [1, 2], [1], [2], [3]], 'the failed batch again, one by one, then what queued behind it')
})
