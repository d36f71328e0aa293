// An admin write's transaction (lib/kernel/database/bounded.ts) that PostgreSQL ends with a deadlock is run
// again, within the same bound, as a gate statement is (retryingConflicts): before, a batch POST that met a
// deadlock answered 500. Two bounded transactions lock two rows in opposite orders, so PostgreSQL kills
// one of them (40P01); both must end committed, each run counted.
import t from 'tap'
import { boundedTransaction } from '../lib/kernel/database/bounded.js'
import { createTestSql } from './fixtures/database.js'

const silent = { warn: () => {}, error: () => {} }

t.test('a bounded transaction killed by a deadlock runs again and commits', async (t) => {
  const { sql } = await createTestSql(t, { max: 4 })
  await sql`create table pair (id integer primary key, writes integer not null default 0)`
  await sql`insert into pair (id) values (1), (2)`
  const bounded = boundedTransaction(sql, 10_000, silent as never)
  let runs = 0
  let bothHoldOne: () => void = () => {}
  let holding = 0
  const met = new Promise<void>((resolve) => { bothHoldOne = resolve })
  const write = async (first: number, second: number): Promise<void> => {
    await bounded(async (tx) => {
      runs++
      await tx`update pair set writes = writes + 1 where id = ${first}`
      if (++holding === 2) bothHoldOne()
      await met // the first run of each holds its first row before either asks for its second
      await tx`update pair set writes = writes + 1 where id = ${second}`
    })
  }
  const results = await Promise.allSettled([write(1, 2), write(2, 1)])
  t.same(results.map((result) => result.status), ['fulfilled', 'fulfilled'], 'both transactions committed')
  t.equal(runs, 3, 'the one PostgreSQL killed ran once more')
  t.same(await sql`select id, writes from pair order by id`, [{ id: 1, writes: 2 }, { id: 2, writes: 2 }], 'each committed once')
})
