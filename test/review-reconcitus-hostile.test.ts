// Review of 1df63c1: hostile ids on the mapping routes answer 4xx and change nothing.
import t from 'tap'
import { buildApp, PREFIX, snapshotTables } from './fixtures/app.js'

t.test('a mapping id past bigint on PUT and DELETE: a 4xx, nothing changed', async (t) => {
  const app = await buildApp(t)
  const before = await snapshotTables(app.sql)
  for (const id of ['9999999999999999999', '9223372036854775808', '9223372036854775807']) {
    const put = await app.admin({ method: 'PUT', url: `${PREFIX}/provider-costs/mappings/${id}`, body: { trueUp: true } })
    t.ok(put.statusCode >= 400 && put.statusCode < 500, `PUT ${id}: ${put.statusCode} ${put.body}`)
    const del = await app.admin({ method: 'DELETE', url: `${PREFIX}/provider-costs/mappings/${id}` })
    t.ok(del.statusCode >= 400 && del.statusCode < 500, `DELETE ${id}: ${del.statusCode} ${del.body}`)
  }
  t.strictSame(await snapshotTables(app.sql), before)
})
