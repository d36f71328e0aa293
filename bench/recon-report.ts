// The reconciliation report (budget_recon_report, PL/pgSQL, scope by scope, each statement naming its tree)
// against the SQL-language one it replaced (installed from commit 1109fdb as old_recon_report), on plain
// PostgreSQL: BUDGETS mapped budgets (200), 62 days of buckets and usage each, in a database of its own
// (recon_bench); medians of 7 alternating runs, and the ratio. `npx tsx bench/recon-report.ts`.
import postgres from 'postgres'
import { execFileSync } from 'node:child_process'
import { migrate } from '../lib/kernel/database/migrate.js'

const BUDGETS = Number(process.env.BUDGETS ?? 200)
const DAYS = 62
// the server of DATABASE_URL (or the local one), in a database of its own
const url = new URL(process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres')
const admin = postgres(url.href, { max: 1, onnotice: () => {} })
await admin.unsafe('drop database if exists recon_bench')
await admin.unsafe('create database recon_bench')
url.pathname = '/recon_bench'
const sql = postgres(url.href, { max: 2, onnotice: () => {} })
await migrate(sql)
const text = execFileSync('git', ['show', '1109fdb:sql/functions/reconciliation.sql'], { encoding: 'utf8' })
const from = text.indexOf('create or replace function budget_recon_report(')
await sql.unsafe(text.slice(from, text.indexOf('\n$$;', from) + 4).replace('budget_recon_report(', 'old_recon_report('))

await sql`insert into budget_definitions (id, root_id, name, scope_type, scope_id, amount, currency, period, start_date)
  select g.id, g.id, 'b' || g.n, 'team', 't' || g.n, 1000000, 'USD', 'annual', '2024-01-01'
  from (select gen_random_uuid() as id, n from generate_series(1, ${BUDGETS}) n) g`
await sql`insert into budget_recon_mappings (provider, kind, value, budget_id, root_id, true_up)
  select 'openai', 'project', 'p' || b.scope_id, b.id, b.id, true from budget_definitions b`
await sql`insert into budget_provider_costs (source, provider, account, bucket_date, project, line_item, model, cost_type, token_type, service_tier, context_window, currency, amount)
  select 'openai', 'openai', 'acct', current_date - d, 'p' || b.scope_id, 'li', 'gpt', 'usage', 'input', 'default', 'default', 'USD', (d % 7 + 1) * 1.25
  from budget_definitions b cross join generate_series(1, ${DAYS}) d`
await sql`insert into budget_usage_records (budget_id, root_id, amount, currency, source, occurred_at)
  select b.id, b.id, (d % 5 + 1) * 1.2, 'USD', 'bench', (current_date - d)::timestamp at time zone 'UTC' + interval '3 hours'
  from budget_definitions b cross join generate_series(1, ${DAYS}) d`
const range = [new Date(Date.now() - DAYS * 86_400_000).toISOString().slice(0, 10), new Date(Date.now() - 86_400_000).toISOString().slice(0, 10)]
const time = async (fn: string) => {
  const started = process.hrtime.bigint()
  const [row] = await sql.unsafe(`select count(*)::int as n from ${fn}($1::date, $2::date, null, null)`, range)
  return { ms: Number(process.hrtime.bigint() - started) / 1e6, n: row!.n as number }
}
const runs: Record<string, number[]> = { old: [], new: [] }
for (let i = 0; i < 7; i++) {
  const a = await time('old_recon_report'); runs.old!.push(a.ms)
  const b = await time('budget_recon_report'); runs.new!.push(b.ms)
  if (i === 0) console.log(`lines: old ${a.n}, new ${b.n}`)
}
const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!
console.log(`budgets ${BUDGETS}, days ${DAYS}: old median ${median(runs.old!).toFixed(1)} ms, new median ${median(runs.new!).toFixed(1)} ms, new/old ${(median(runs.new!) / median(runs.old!)).toFixed(2)}`)
await sql.end()
await admin.unsafe('drop database recon_bench')
await admin.end()
