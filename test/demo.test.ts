// `npm run demo` runs the seed's three examples for real.
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import t from 'tap'
import { createTestDatabase } from './fixtures/database.js'

t.test('the demo creates the Q1 budget, records the GPT-4 usage and checks constraints', async (t) => {
  const url = await createTestDatabase(t)
  const demo = new URL('../examples/budget-demo.ts', import.meta.url).pathname
  const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', demo], { env: { ...process.env, DATABASE_URL: url } })
  t.match(stdout, /== 1\. created the budget\n\{\n {2}"id": "[0-9a-f-]{36}",\n {2}"name": "Engineering Team Q1 Budget"/)
  t.match(stdout, /== 2\. recorded the usage[\s\S]*"amount": "25\.5"/)
  t.match(stdout, /"currentAmount": "25\.5"/)
  t.match(stdout, /Yes: Within every applicable budget\. 9974\.5 USD remaining\.\n$/)
})
