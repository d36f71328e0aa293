import t from 'tap'
import { lifecycleOf, partOf, type Part } from '../lib/kernel/part.js'

function recordingLog () {
  const errors: unknown[] = []
  const noop = () => {}
  return { errors, log: { debug: noop, info: noop, warn: noop, error: (object: object | string) => { errors.push(object) } } }
}

t.test('parts start in the order listed and stop in the reverse order', async (t) => {
  const seen: string[] = []
  const part = (name: string): Part<string> => ({ api: name, start: () => { seen.push(`start ${name}`) }, stop: async () => { seen.push(`stop ${name}`) } })
  const { log } = recordingLog()
  const lifecycle = lifecycleOf([part('database'), partOf('reports'), part('gate'), part('hooks')], log)
  lifecycle.start()
  await lifecycle.stop()
  t.same(seen, ['start database', 'start gate', 'start hooks', 'stop hooks', 'stop gate', 'stop database'])
})

t.test('a part that fails to stop is logged, the others still stop, and the first failure is thrown', async (t) => {
  const stopped: string[] = []
  const failing = (name: string): Part<null> => ({ api: null, stop: async () => { throw new Error(`${name} would not stop`) } })
  const stopping = (name: string): Part<null> => ({ api: null, stop: async () => { stopped.push(name) } })
  const { log, errors } = recordingLog()
  const lifecycle = lifecycleOf([stopping('database'), failing('outbox'), stopping('gate'), failing('hooks')], log)
  await t.rejects(lifecycle.stop(), { message: 'hooks would not stop' }, 'the first failure, in stopping order')
  t.same(stopped, ['gate', 'database'], 'the database client is closed even so')
  t.equal(errors.length, 2, 'each failure is logged')
})
