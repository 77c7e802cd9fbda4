#!/usr/bin/env bash
# Demo: clone a live local PostgreSQL 15 primary into a streaming standby with pgclone.
#
# Builds pgclone, creates a throwaway primary with pgbench data, and clones it while pgbench writes to
# it: the primary's data directory is on this host, so pgclone's native transport runs its agents as
# local processes (--no-ssh). pgclone then starts the clone as a standby (--start) and waits until the
# primary sees it streaming; the demo ends by showing the primary's pg_stat_replication. Everything runs
# on 127.0.0.1. As root, PostgreSQL and pgclone run as the unprivileged user pgclonetest (created if needed).
#
#   PGCLONE_DEMO_KEEP=1   keep the demo directory and leave the servers running
#   PGCLONE_DEMO_SCALE=N  pgbench scale (default 10, about 150 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

step() { printf '\n==> %s\n' "$*"; }

pgc_ensure_base || pgc_die "missing dependencies (see above; as root this script installs them)"
step "building pgclone: cargo build --release"
cargo build --release
bin=${CARGO_TARGET_DIR:-target}/release/pgclone

user=$(pgc_run_user)
demo=$(mktemp -d /tmp/pgcdemo-XXXXXX)
pgc_is_root && chown "$user:" "$demo"
pgc_as_user_cmd
as() { "${PGC_AS_USER[@]}" "$@"; }  # run as $user
write() { as tee "$1" >/dev/null; }    # write stdin to a file owned by $user
append() { as tee -a "$1" >/dev/null; }
export PGPASSWORD=secret                # passes through setpriv to psql, pgbench and pgclone
pg=$PGC_PG15_BIN
pgport=$(pgc_free_port)
replport=$(pgc_free_port)
load_pid=

cleanup() {
  local rc=$?
  [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null
  if [ "${PGCLONE_DEMO_KEEP:-}" = 1 ]; then
    step "kept $demo (servers still running; stop them with pg_ctl stop -D $demo/primary and -D $demo/replica)"
    return $rc
  fi
  for d in replica primary; do
    [ -f "$demo/$d/postmaster.pid" ] && as "$pg/pg_ctl" stop -m fast -D "$demo/$d" >/dev/null 2>&1
  done
  rm -rf "$demo"
  return $rc
}
trap cleanup EXIT

cp "$bin" "$demo/pgclone"
chmod 755 "$demo/pgclone"

step "creating the demo primary (PostgreSQL 15, port $pgport) in $demo/primary as $user"
echo "$PGPASSWORD" | write "$demo/pw"
as "$pg/initdb" -D "$demo/primary" -U postgres --auth=scram-sha-256 --pwfile="$demo/pw" \
  --locale=C --encoding=UTF8 >/dev/null
append "$demo/primary/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $pgport
unix_socket_directories = '$demo'
shared_buffers = 64MB
EOF
write "$demo/primary/pg_hba.conf" <<EOF
local all         all               scram-sha-256
host  all         all  127.0.0.1/32 scram-sha-256
host  replication all  127.0.0.1/32 scram-sha-256
EOF
as "$pg/pg_ctl" start -w -D "$demo/primary" -l "$demo/primary.log" >/dev/null
psql_primary() { as "$pg/psql" -X -h 127.0.0.1 -p "$pgport" -U postgres -d postgres "$@"; }
as "$pg/pgbench" -i -q -s "${PGCLONE_DEMO_SCALE:-10}" -h 127.0.0.1 -p "$pgport" -U postgres postgres

step "starting a pgbench write load on the primary (it keeps running during the clone)"
# Not `as ... &`: that would fork a subshell and $! would not be pgbench. setpriv and env exec.
"${PGC_AS_USER[@]}" "$pg/pgbench" -n -c 2 -T 600 -h 127.0.0.1 -p "$pgport" -U postgres postgres >"$demo/pgbench.log" 2>&1 &
load_pid=$!

step "cloning the live primary, then starting the clone as a standby on port $replport"
cmd=("$demo/pgclone" --pghost 127.0.0.1 --pgport "$pgport" --pguser postgres
  --primary-pgdata "$demo/primary" --replica-pgdata "$demo/replica" --no-ssh --parallel 4
  --start --replica-port "$replport" --application-name demo_standby --conninfo-password)
printf '$ PGPASSWORD=secret'; printf ' %q' "${cmd[@]}"; printf '\n'
as "${cmd[@]}"
kill "$load_pid"
load_pid=

step "the primary's pg_stat_replication"
psql_primary -x -c "select application_name, client_addr, state, sent_lsn, write_lsn, flush_lsn, replay_lsn, sync_state
                    from pg_stat_replication where application_name = 'demo_standby'"
