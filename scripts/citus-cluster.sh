#!/usr/bin/env bash
# Builds Citus 13.2.2 against Debian's PostgreSQL 15 and runs a local
# three-node cluster: a coordinator on 5501 and workers on 5502 and 5503,
# each its own initdb cluster under one data directory.
#
#   scripts/citus-cluster.sh build [CITUS_SRC]   compile and install Citus
#   scripts/citus-cluster.sh start               initdb (once), start, join nodes
#   scripts/citus-cluster.sh status              servers and active workers
#   scripts/citus-cluster.sh stop                stop the three servers
#   scripts/citus-cluster.sh psql [args...]      psql on the coordinator
#
# The Citus source is not part of this repository. Check it out elsewhere:
#   git clone https://github.com/citusdata/citus /tmp/citus-src
#   git -C /tmp/citus-src checkout v13.2.2
# and pass that directory as the argument to build, or set CITUS_SRC.
#
# Build dependencies (Debian 12):
#   apt-get install postgresql-server-dev-15 libcurl4-openssl-dev liblz4-dev \
#     libzstd-dev libkrb5-dev libssl-dev libxslt1-dev libpam0g-dev \
#     libreadline-dev flex bison autoconf make gcc
#
# Environment:
#   CITUS_SRC   Citus checkout at v13.2.2 (build)
#   CITUS_DATA  data directory, default /tmp/citus-cluster
#   CITUS_DB    database that gets the extension and the node list, default
#               postgres (Citus keeps its metadata per database); start
#               records it in $CITUS_DATA/database, and later commands
#               default to the recorded one
#   PG_BIN      PostgreSQL binaries, default /usr/lib/postgresql/15/bin
#
# Every subcommand can be run again: build skips the compatibility edit when
# it is already applied, start leaves running servers, existing data
# directories and already registered nodes alone.
set -euo pipefail

CITUS_VERSION=v13.2.2
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_CONFIG=${PG_CONFIG:-$PG_BIN/pg_config}
[ -x "$PG_CONFIG" ] || PG_CONFIG=$(command -v pg_config || true)
CITUS_DATA=${CITUS_DATA:-/tmp/citus-cluster}
if [ -z "${CITUS_DB:-}" ] && [ -f "$CITUS_DATA/database" ]; then
  CITUS_DB=$(cat "$CITUS_DATA/database")
fi
CITUS_DB=${CITUS_DB:-postgres}
HOST=127.0.0.1
COORDINATOR_PORT=5501
WORKER_PORTS="5502 5503"
ALL_PORTS="$COORDINATOR_PORT $WORKER_PORTS"
# initdb and postgres refuse to run as root; the servers run as this user.
RUN_AS=${CITUS_RUN_AS:-postgres}

die() { echo "citus-cluster: $*" >&2; exit 1; }
log() { echo "citus-cluster: $*" >&2; }

# Runs a command as the server user when we are root, as ourselves otherwise.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u "$RUN_AS" -- "$@"
  else
    "$@"
  fi
}

node_dir() { echo "$CITUS_DATA/node-$1"; }

psql_on() {
  local port=$1 db=$2; shift 2
  "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$port" -U postgres -d "$db" "$@"
}

# PostgreSQL 15.20 (Debian 12's postgresql-15) exports have_createdb_privilege()
# from commands/dbcommands.h; Citus 13.2.2 defines its own
# static inline copy for PG 15 in pg_version_compat.h, so any file that
# includes both fails (e.g. commands/database.c):
#   error: static declaration of 'have_createdb_privilege' follows non-static declaration
# Drop Citus's copy and include the server header instead. Idempotent.
patch_compat() {
  local header=$1/src/include/pg_version_compat.h
  [ -f "$header" ] || die "$header not found; is $1 a Citus checkout?"
  if grep -q 'citus-cluster.sh: have_createdb_privilege' "$header"; then
    log "compatibility edit already applied to $header"
    return
  fi
  perl -0pi -e '
    s{\n\nstatic inline bool\nhave_createdb_privilege\(void\)\n\{.*?\n\}\n}
     {\n\n/* citus-cluster.sh: have_createdb_privilege comes from the server (PG 15.x exports it) */\n#include "commands/dbcommands.h"\n}s
      or die "have_createdb_privilege definition not found\n";
  ' "$header"
  grep -q 'citus-cluster.sh: have_createdb_privilege' "$header" || die "could not edit $header"
  log "compatibility edit applied to $header"
}

cmd_build() {
  local src=${1:-${CITUS_SRC:-}}
  [ -n "$src" ] || die "build needs the Citus source directory (argument or CITUS_SRC)"
  [ -d "$src" ] || die "$src is not a directory"
  src=$(cd "$src" && pwd)
  [ -x "$PG_CONFIG" ] || die "pg_config not found; install postgresql-server-dev-15"
  "$PG_CONFIG" --pgxs >/dev/null || die "$PG_CONFIG has no PGXS; install postgresql-server-dev-15"
  if git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
    local tag
    tag=$(git -C "$src" describe --tags --exact-match 2>/dev/null || echo "not a tag")
    [ "$tag" = "$CITUS_VERSION" ] || log "warning: $src is at $tag, expected $CITUS_VERSION"
  fi
  patch_compat "$src"
  (
    cd "$src"
    if [ ! -f Makefile.global ] || [ config.status -ot configure ]; then
      PG_CONFIG=$PG_CONFIG ./configure
    fi
    make -j"${JOBS:-2}"
    if [ -w "$("$PG_CONFIG" --pkglibdir)" ]; then
      make install
    else
      sudo make install
    fi
  )
  log "installed citus into $("$PG_CONFIG" --pkglibdir)"
}

init_node() {
  local port=$1 dir
  dir=$(node_dir "$port")
  if [ -f "$dir/PG_VERSION" ]; then
    return
  fi
  log "initdb $dir"
  as_owner "$PG_BIN/initdb" -D "$dir" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  cat >>"$dir/postgresql.conf" <<EOF

# citus-cluster.sh
port = $port
listen_addresses = '$HOST'
unix_socket_directories = '$CITUS_DATA'
shared_preload_libraries = 'citus'
wal_level = logical
max_prepared_transactions = 100
shared_buffers = 64MB
logging_collector = off
EOF
  # initdb --auth=trust already trusts local and 127.0.0.1; say so explicitly.
  grep -q '^host all all 127.0.0.1/32 trust' "$dir/pg_hba.conf" ||
    echo 'host all all 127.0.0.1/32 trust' >>"$dir/pg_hba.conf"
}

start_node() {
  local port=$1 dir
  dir=$(node_dir "$port")
  if as_owner "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
    log "node $port already running"
    return
  fi
  log "starting node $port"
  as_owner "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null ||
    { tail -20 "$dir/server.log" >&2; die "node $port did not start"; }
}

ensure_db_and_extension() {
  local port=$1
  if [ "$CITUS_DB" != postgres ]; then
    if [ -z "$(psql_on "$port" postgres -tAc "select 1 from pg_database where datname = '$CITUS_DB'")" ]; then
      psql_on "$port" postgres -c "create database \"$CITUS_DB\""
    fi
  fi
  psql_on "$port" "$CITUS_DB" -c "create extension if not exists citus"
}

cmd_start() {
  command -v "$PG_BIN/initdb" >/dev/null || die "$PG_BIN/initdb not found"
  [ -f "$("$PG_CONFIG" --pkglibdir)/citus.so" ] || die "citus.so is not installed; run build first"
  mkdir -p "$CITUS_DATA"
  [ "$(id -u)" = 0 ] && chown "$RUN_AS" "$CITUS_DATA"
  local port
  for port in $ALL_PORTS; do
    init_node "$port"
    start_node "$port"
  done
  for port in $ALL_PORTS; do
    ensure_db_and_extension "$port"
  done
  echo "$CITUS_DB" >"$CITUS_DATA/database"
  psql_on "$COORDINATOR_PORT" "$CITUS_DB" -c "select citus_set_coordinator_host('$HOST', $COORDINATOR_PORT)" >/dev/null
  for port in $WORKER_PORTS; do
    if [ -z "$(psql_on "$COORDINATOR_PORT" "$CITUS_DB" -tAc \
      "select 1 from pg_dist_node where nodename = '$HOST' and nodeport = $port")" ]; then
      log "adding worker $port"
      psql_on "$COORDINATOR_PORT" "$CITUS_DB" -c "select citus_add_node('$HOST', $port)" >/dev/null
    fi
  done
  cmd_status
}

cmd_status() {
  local port rc=0 dir
  for port in $ALL_PORTS; do
    dir=$(node_dir "$port")
    if [ -f "$dir/PG_VERSION" ] && as_owner "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
      echo "node $port: running ($dir)"
    else
      echo "node $port: stopped ($dir)"
      rc=3
    fi
  done
  if [ $rc = 0 ]; then
    psql_on "$COORDINATOR_PORT" "$CITUS_DB" -c "select * from citus_get_active_worker_nodes() order by node_port"
  fi
  return $rc
}

cmd_stop() {
  local port dir
  for port in $ALL_PORTS; do
    dir=$(node_dir "$port")
    if [ -f "$dir/PG_VERSION" ] && as_owner "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
      log "stopping node $port"
      as_owner "$PG_BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null
    fi
  done
}

case "${1:-}" in
  build) shift; cmd_build "$@" ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  psql) shift; psql_on "$COORDINATOR_PORT" "$CITUS_DB" "$@" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
