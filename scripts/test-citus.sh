#!/usr/bin/env bash
# `npm run test:citus`: the tests in test-citus/, and the main suite's files listed below, against a real Citus cluster. Each test makes its own database
# on the coordinator and every worker (test/fixtures/database.ts), with the workers joined to it.
#
#   CITUS_URL   a Citus coordinator to use (postgres://user@host:port/db); its workers are read from its node
#               list. Unset: the local cluster of scripts/citus-cluster.sh (coordinator 5501, workers 5502 and
#               5503), started here, which needs Citus built and installed (that script's build).
#
# With no Citus to run on, it says so in one line and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
if [ -n "${CITUS_URL:-}" ]; then
  coordinator=$CITUS_URL
else
  pkglibdir=$("$PG_BIN/pg_config" --pkglibdir 2>/dev/null || true)
  if [ ! -f "$pkglibdir/citus.so" ]; then
    echo "test:citus: no Citus here: set CITUS_URL to a coordinator, or build it with scripts/citus-cluster.sh build (see its header)"
    exit 1
  fi
  bash scripts/citus-cluster.sh start >/dev/null 2>&1 || { echo "test:citus: the local Citus cluster did not start (scripts/citus-cluster.sh start)"; exit 1; }
  # the database the script made the cluster in (it records it), which has the extension and the node list
  coordinator=postgres://postgres@127.0.0.1:5501/$(cat "${CITUS_DATA:-/tmp/citus-cluster}/database")
fi

# every worker, as a connection string with the coordinator's user and password, on its maintenance database
workers=$("$PG_BIN/psql" -X -q -At "$coordinator" -c "select string_agg(nodename || ':' || nodeport, ' ' order by nodeport)
  from pg_dist_node where groupid <> 0 and noderole = 'primary' and isactive" 2>/dev/null) \
  || { echo "test:citus: no Citus node list at $coordinator (unreachable, or no citus extension in that database)"; exit 1; }
[ -n "$workers" ] || { echo "test:citus: $coordinator has no active worker"; exit 1; }
urls=()
for worker in $workers; do
  urls+=("$(node -e 'const u = new URL(process.argv[1]); const [h, p] = process.argv[2].split(":"); u.hostname = h; u.port = p; u.pathname = "/postgres"; console.log(u.toString())' "$coordinator" "$worker")")
done
CITUS_WORKER_URLS=$(IFS=,; echo "${urls[*]}")
coordinator_postgres=$(node -e 'const u = new URL(process.argv[1]); u.pathname = "/postgres"; console.log(u.toString())' "$coordinator")
echo "# test:citus on coordinator $coordinator_postgres, workers $CITUS_WORKER_URLS" >&2

# Unless told which files: test-citus/, and the main suite's files that run whole on the coordinator as they are
# (the plugin's statements and the tests' own reads; docs/scaling.md says what the others still need).
on_citus_too=(test/alerts.test.ts test/digests.test.ts test/notifications.test.ts test/reconciliation.test.ts test/reports.test.ts test/metrics.test.ts test/hostile-input.test.ts
  test/lease-integrity.test.ts test/lease-renewal.test.ts test/lease-crossings.test.ts test/lease-swept.test.ts test/lease-numbers.test.ts
  test/simulate.test.ts test/recon-r2-simulate.test.ts)
if [ $# -eq 0 ]; then set -- test-citus/ "${on_citus_too[@]}"; fi
# The hostile-input battery meets every route with its fixed hostile examples and this many random inputs per
# property (60 on plain PostgreSQL): a request through the cluster costs several times one on a single server, and
# .ci/run must stay well within its 90 minutes on a slow day (83 on 2026-12-06 at 5 a property).
export HOSTILE_RUNS=${HOSTILE_RUNS:-2}
DATABASE_URL=$coordinator_postgres CITUS_WORKER_URLS=$CITUS_WORKER_URLS exec npx tap --disable-coverage "$@"
