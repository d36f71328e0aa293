// Review of ebaffca (locks.sql): the sweeper's per-root loop keeps the rows it took in one tree locked while
// it takes the next tree's rows SKIP LOCKED, then budget_settle_batch locks ALL of each reservation's rows and
// waits for them. Two gateway processes sweep at once: when one is between its trees' statements, the other
// can take the second tree's rows of the same reservation; each then waits in budget_settle_batch for the
// rows the other holds. The pause between statements is made deterministic here by a row-level security
// policy (a test-only object; the gate's connection is a non-superuser role so the policy applies) whose
// function sleeps once, in the first sweeper only, when it reads the reservation's second-tree row while
// holding its first-tree row: a process descheduled there, nothing else.
import t from 'tap'
import postgres from 'postgres'
import { findViolations } from './fixtures/invariants.js'
import { twoTreeLine } from './fixtures/two-trees.js'

const X = '11111111-1111-4111-8111-111111111111'

t.test('two sweepers on one reservation spanning two trees: neither deadlocks, it is swept once', async (t) => {
  const { url, sql, expiredHold, roots: rootsOf } = await twoTreeLine(t)
  t.ok((await expiredHold(X, '2'))[0]!.fits, 'an expired hold on the three budgets')
  const roots = await rootsOf(X)
  t.equal(roots.length, 2, 'its rows are in two trees')
  const [first, second] = roots as [string, string]

  // test-only: a role the policy applies to, and the pause
  const role = `review_${Math.random().toString(36).slice(2, 10)}`
  await sql.unsafe(`create role ${role} login`)
  t.teardown(async () => {
    const admin = postgres(url, { max: 1, onnotice: () => {} })
    await admin.unsafe(`drop owned by ${role}`).catch(() => {})
    await admin.unsafe(`drop role if exists ${role}`).catch(() => {})
    await admin.end({ timeout: 1 })
  })
  await sql.unsafe(`grant all on schema public to ${role}; grant all on all tables in schema public to ${role};
                    grant all on all sequences in schema public to ${role}; grant execute on all functions in schema public to ${role}`)
  await sql.unsafe(`
    create function review_pause(p_id uuid, p_root uuid) returns boolean language plpgsql volatile security definer as $f$
    begin
      if p_id = '${X}' and p_root = '${second}' and coalesce(current_setting('review.paused', true), '') = ''
         and exists (select 1 from budget_reservations r where r.id = '${X}' and r.root_id = '${first}'
                     and r.xmax::text = (pg_current_xact_id()::xid)::text) then
        perform set_config('review.paused', 'yes', false);
        perform pg_sleep(1.5);
      end if;
      return true;
    end $f$;
    grant execute on function review_pause(uuid, uuid) to ${role};
    alter table budget_reservations enable row level security;
    create policy review_pause on budget_reservations using (review_pause(id, root_id));`)

  const asRole = new URL(url)
  asRole.username = role
  const one = postgres(asRole.toString(), { max: 1, onnotice: () => {} })
  const two = postgres(asRole.toString(), { max: 1, onnotice: () => {} })
  t.teardown(async () => { await one.end({ timeout: 1 }); await two.end({ timeout: 1 }) })

  const sweep = async (db: postgres.Sql) => {
    try {
      return { swept: (await db`select budget_sweep_expired(100) as n`)[0]!.n as number, error: null }
    } catch (error: any) {
      return { swept: 0, error: `${error.code as string}: ${error.message as string}` }
    }
  }
  const a = sweep(one) // takes X's first-tree row, then pauses before its second-tree row
  await new Promise((resolve) => setTimeout(resolve, 400))
  const b = sweep(two) // meanwhile: skips the first-tree row, takes the second tree's
  const results = await Promise.all([a, b])
  t.same(results.map((r) => r.error), [null, null], 'neither sweeper fails (no 40P01 deadlock)')

  await sql.unsafe('alter table budget_reservations disable row level security')
  await sql`select budget_sweep_expired(100)`
  t.equal((await sql`select count(*)::int as n from budget_usage_records`)[0]!.n, 1, 'one usage record for the call')
  t.same(await findViolations(sql), [], 'invariants')
})
