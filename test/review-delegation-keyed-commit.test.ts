// Review of 2d6ae2f (lib/gate/group-commit.ts createKeyedGroupCommit, the gate's batches by tree set on Citus):
// running() waits for every key's queue, the idle queues pruned past 1024 keys never take a busy one (nor its
// items) with them, a failing batch in one key's queue leaves the others' items committed, and each batch holds
// items of one key only.
import t from 'tap'
import { createKeyedGroupCommit, type Pending } from '../lib/gate/group-commit.js'

const tick = async () => await new Promise((resolve) => setImmediate(resolve))

t.test('running() waits for every key\'s batch, and each batch is of one key', async (t) => {
  const gates = new Map<string, () => void>()
  const batches: string[][] = []
  const queue = createKeyedGroupCommit<string, string>(10, async (batch: Array<Pending<string, string>>) => {
    batches.push(batch.map((p) => p.item))
    await new Promise<void>((resolve) => gates.set(batch[0]!.item.split(':')[0]!, resolve))
    for (const p of batch) p.resolve(`done ${p.item}`)
  }, (item) => item.split(':')[0]!)
  const answers = ['a:1', 'b:1', 'a:2', 'b:2', 'c:1', 'a:3'].map((item) => queue.submit(item))
  await tick()
  t.same(batches, [['a:1'], ['b:1'], ['c:1']], 'one runner a key, at once')
  let drained = false
  void queue.running()!.then(() => { drained = true })
  gates.get('a')!(); gates.get('c')!()
  await tick(); await tick()
  t.notOk(drained, 'not drained while b\'s batch is in flight')
  // a's second batch started: the drain that waited before may end, but running() is not null yet
  t.not(queue.running(), null, 'a runner still in flight')
  for (let i = 0; i < 5; i++) { for (const gate of gates.values()) gate(); await tick() }
  t.same(await Promise.all(answers), ['done a:1', 'done b:1', 'done a:2', 'done b:2', 'done c:1', 'done a:3'])
  t.equal(queue.running(), null, 'idle')
  t.ok(batches.every((batch) => new Set(batch.map((item) => item.split(':')[0])).size === 1), 'no batch mixes keys')
})

t.test('past 1024 keys the idle queues go, the busy ones and their items stay', async (t) => {
  const held: Array<() => void> = []
  const queue = createKeyedGroupCommit<string, string>(10, async (batch) => {
    if (batch[0]!.item.startsWith('stuck')) await new Promise<void>((resolve) => held.push(resolve))
    for (const p of batch) p.resolve(p.item)
  }, (item) => item.split(':')[0]!)
  const stuck = [queue.submit('stuck0:1'), queue.submit('stuck1:1')]
  const behind = [queue.submit('stuck0:2'), queue.submit('stuck1:2')] // queued behind the busy runners
  for (let i = 0; i < 1100; i++) await queue.submit(`k${i}:1`)
  const late = queue.submit('stuck0:3')
  t.not(queue.running(), null, 'the stuck keys are running')
  for (let i = 0; i < 4; i++) { while (held.length > 0) held.shift()!(); await tick() }
  t.same(await Promise.all([...stuck, ...behind, late]), ['stuck0:1', 'stuck1:1', 'stuck0:2', 'stuck1:2', 'stuck0:3'], 'every item of a busy key answered')
  t.equal(queue.running(), null, 'idle')
})

t.test('a batch failing in one key\'s queue: its items go again alone; other keys commit', async (t) => {
  const committed: string[] = []
  const queue = createKeyedGroupCommit<string, string>(10, async (batch, again) => {
    if (batch.length > 1 && batch.some((p) => p.item === 'a:bad')) { again(batch); return }
    for (const p of batch) {
      if (p.item === 'a:bad') { p.reject(new Error('bad')); continue }
      committed.push(p.item); p.resolve(p.item)
    }
  }, (item) => item.split(':')[0]!)
  const first = queue.submit('a:0')
  const rest = ['a:1', 'a:bad', 'a:2', 'b:1', 'b:2'].map((item) => queue.submit(item))
  await first
  const results = await Promise.allSettled(rest)
  t.same(results.map((r) => r.status), ['fulfilled', 'rejected', 'fulfilled', 'fulfilled', 'fulfilled'])
  t.same(committed.sort(), ['a:0', 'a:1', 'a:2', 'b:1', 'b:2'])
})
