#!/usr/bin/env bash
# Demo: clone a live PostgreSQL 15 primary into a streaming standby with pgclone, the way it runs for real.
#
# Builds pgclone, creates a throwaway primary with pgbench data on a "host" of its own (as root: a network
# namespace behind a veth pair, as the tests and benchmarks use; otherwise this host's loopback), with an sshd
# there, and clones it over ssh while pgbench writes to it: pgclone brings its agent over one ssh login and moves
# the data over TLS. It then starts the clone as a standby (--start) and waits until the primary sees it
# streaming; the demo ends by showing the primary's pg_stat_replication row. As root, PostgreSQL, sshd and
# pgclone run as the unprivileged user pgclonetest (created if needed).
#
#   PGCLONE_DEMO_KEEP=1   keep the demo directory and leave the servers running (it says how to stop them)
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
sshport=$(pgc_free_port)
replport=$(pgc_free_port)
load_pid='' sshd_pid='' ns='' hostif=''

# The primary's host: a namespace of our own (root) behind a veth pair, or loopback. Only addresses inside
# it, or loopback, are used.
if pgc_is_root; then
  for _ in $(seq 50); do
    net=10.232.$((RANDOM % 250)).$((RANDOM % 64 * 4))
    [ -z "$(ip route show "$net/30")" ] && ip netns add "pgcdemo$$" 2>/dev/null && break
  done
  ns=pgcdemo$$ hostif=pgcdh$$
  here=${net%.*}.$((${net##*.} + 1)) primary=${net%.*}.$((${net##*.} + 2))
  ip link add "$hostif" type veth peer name "pgcdn$$" netns "$ns"
  ip addr add "$here/30" dev "$hostif" && ip link set "$hostif" up
  ip -n "$ns" addr add "$primary/30" dev "pgcdn$$" && ip -n "$ns" link set "pgcdn$$" up && ip -n "$ns" link set lo up
  on_primary() { ip netns exec "$ns" "${PGC_AS_USER[@]}" "$@"; }
else
  here=127.0.0.1 primary=127.0.0.1
  on_primary() { as "$@"; }
fi

cleanup() {
  local rc=$?
  [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null
  if [ "${PGCLONE_DEMO_KEEP:-}" = 1 ]; then
    step "kept $demo; to stop everything (the servers as $user):"
    echo "  $pg/pg_ctl stop -D $demo/replica"
    echo "  ${ns:+ip netns exec $ns }$pg/pg_ctl stop -D $demo/primary"
    echo "  kill $sshd_pid${ns:+; ip netns del $ns; ip link del $hostif}; rm -rf $demo"
    return $rc
  fi
  as "$pg/pg_ctl" stop -m fast -D "$demo/replica" >/dev/null 2>&1
  on_primary "$pg/pg_ctl" stop -m fast -D "$demo/primary" >/dev/null 2>&1
  [ -n "$sshd_pid" ] && kill "$sshd_pid" 2>/dev/null
  if [ -n "$ns" ]; then
    ip netns del "$ns"
    ip link del "$hostif" 2>/dev/null
  fi
  rm -rf "$demo"
  return $rc
}
trap cleanup EXIT

cp "$bin" "$bin-agent" "$demo/"
chmod 755 "$demo/pgclone" "$demo/pgclone-agent"

step "creating the demo primary (PostgreSQL 15) on $primary:$pgport, in $demo/primary, as $user"
echo "$PGPASSWORD" | write "$demo/pw"
as "$pg/initdb" -D "$demo/primary" -U postgres --auth=scram-sha-256 --pwfile="$demo/pw" \
  --locale=C --encoding=UTF8 >/dev/null
printf '%s\n' "listen_addresses = '$primary'" "port = $pgport" "unix_socket_directories = '$demo'" \
  "shared_buffers = 64MB" | append "$demo/primary/postgresql.conf"
printf '%s\n' "local all all scram-sha-256" "host all all $here/32 scram-sha-256" \
  "host replication all $here/32 scram-sha-256" | write "$demo/primary/pg_hba.conf"
on_primary "$pg/pg_ctl" start -w -D "$demo/primary" -l "$demo/primary.log" >/dev/null
psql_primary() { as "$pg/psql" -X -h "$primary" -p "$pgport" -U postgres -d postgres "$@"; }
as "$pg/pgbench" -i -q -s "${PGCLONE_DEMO_SCALE:-10}" -h "$primary" -p "$pgport" -U postgres postgres

step "starting an sshd on $primary:$sshport (its own host key, one authorized key, logins as $user only)"
as mkdir -p "$demo/ssh"
as ssh-keygen -q -t ed25519 -N '' -f "$demo/ssh/host_key"
as ssh-keygen -q -t ed25519 -N '' -f "$demo/ssh/id_ed25519"
as cp "$demo/ssh/id_ed25519.pub" "$demo/ssh/authorized_keys"
printf '%s\n' "ListenAddress $primary:$sshport" "HostKey $demo/ssh/host_key" "PidFile $demo/ssh/sshd.pid" \
  "AuthorizedKeysFile $demo/ssh/authorized_keys" "AllowUsers $user" "UsePAM no" "StrictModes no" \
  "PasswordAuthentication no" "KbdInteractiveAuthentication no" | write "$demo/ssh/sshd_config"
echo "[$primary]:$sshport $(cut -d' ' -f1,2 "$demo/ssh/host_key.pub")" | write "$demo/ssh/known_hosts"
printf '%s\n' "UserKnownHostsFile $demo/ssh/known_hosts" "StrictHostKeyChecking yes" "IdentitiesOnly yes" \
  "IdentityFile $demo/ssh/id_ed25519" "BatchMode yes" | write "$demo/ssh/config"
# Not `on_primary ... &`: $! must be sshd itself (ip netns exec, setpriv and env all exec).
if [ -n "$ns" ]; then
  ip netns exec "$ns" "${PGC_AS_USER[@]}" /usr/sbin/sshd -D -e -f "$demo/ssh/sshd_config" 2>"$demo/sshd.log" &
else
  /usr/sbin/sshd -D -e -f "$demo/ssh/sshd_config" 2>"$demo/sshd.log" &
fi
sshd_pid=$!
for _ in $(seq 50); do
  as ssh -F "$demo/ssh/config" -p "$sshport" "$primary" true 2>/dev/null && break
  sleep 0.2
done

step "starting a pgbench write load on the primary (it keeps running during the clone)"
# Not `as ... &`: that would fork a subshell and $! would not be pgbench. setpriv and env exec.
"${PGC_AS_USER[@]}" "$pg/pgbench" -n -c 2 -T 600 -h "$primary" -p "$pgport" -U postgres postgres >"$demo/pgbench.log" 2>&1 &
load_pid=$!

step "cloning the live primary over ssh, then starting the clone here as a standby on 127.0.0.1:$replport"
# The copied postgresql.conf listens on the primary's address: the standby gets its own with --recovery-option.
cmd=("$demo/pgclone" -h "$primary" -p "$pgport" -U postgres --primary-pgdata "$demo/primary" -D "$demo/replica"
  --ssh-user "$user" --ssh-port "$sshport" --ssh-config "$demo/ssh/config"
  --start --replica-port "$replport" --recovery-option listen_addresses=127.0.0.1
  --application-name demo_standby --conninfo-password)
printf '$ PGPASSWORD=secret'; printf ' %q' "${cmd[@]}"; printf '\n'
as "${cmd[@]}"
kill "$load_pid"
load_pid=

step "the primary's pg_stat_replication"
psql_primary -x -c "select application_name, client_addr, state, sent_lsn, write_lsn, flush_lsn, replay_lsn, sync_state
                    from pg_stat_replication where application_name = 'demo_standby'"
