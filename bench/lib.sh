# Helpers for bench/run.sh (sourced after scripts/lib.sh; root only): a primary on "its own host" (a
# network namespace behind a veth pair) with its sshd and a self-signed TLS certificate, a per-flow bandwidth
# cap on that link, and what a timed run measures (time, CPU of the whole machine, the agents' peak RSS).
# Everything made here is recorded in BENCH_* variables so that bench_teardown can remove it.
# shellcheck shell=bash disable=SC2034  # variables here are used by run.sh

BENCH_NS='' BENCH_HOST_IF='' BENCH_NS_IF='' BENCH_HOST_ADDR='' BENCH_NS_ADDR=''
BENCH_SSH_PORT=2222   # inside the namespace, where every port is free
BENCH_CHILD=          # the timed command running now (killed by bench_teardown)
BENCH_SAMPLER=        # the agents' RSS sampler running now (killed by bench_teardown)
BENCH_HZ=$(getconf CLK_TCK)   # USER_HZ, the unit of /proc/stat

# Run a command as the bench user, here or on the primary's "host". Not for `... &`: a function in the
# background is a subshell, and $! would not be the command (setpriv, env and ip netns exec all exec).
as_user() { "${PGC_AS_USER[@]}" "$@"; }
in_ns() { ip netns exec "$BENCH_NS" "${PGC_AS_USER[@]}" "$@"; }

# Namespace g5ns<i> with veth g5h<i> (here, 10.231.a.b+1) <-> g5n<i> (inside, 10.231.a.b+2), a /30 chosen by
# i exactly as tests/support/netns.rs does: creating the namespace under that name reserves the subnet among
# the tests that may be running at the same time, and among concurrent benchmarks.
bench_netns_up() {
  local i a b _
  for _ in $(seq 100); do
    i=$((RANDOM % 16384)) a=$((i / 64)) b=$((i % 64 * 4))
    ip netns add "g5ns$i" 2>/dev/null || continue
    BENCH_NS=g5ns$i BENCH_HOST_IF=g5h$i BENCH_NS_IF=g5n$i
    BENCH_HOST_ADDR=10.231.$a.$((b + 1)) BENCH_NS_ADDR=10.231.$a.$((b + 2))
    if [ -n "$(ip route show "10.231.$a.$b/30")" ] ||
       ! ip link add "$BENCH_HOST_IF" type veth peer name "$BENCH_NS_IF" netns "$BENCH_NS" 2>/dev/null; then
      ip netns del "$BENCH_NS"; BENCH_NS=   # a leftover of some killed run owns it: try another
      continue
    fi
    ip addr add "$BENCH_HOST_ADDR/30" dev "$BENCH_HOST_IF"
    ip link set "$BENCH_HOST_IF" up
    ip -n "$BENCH_NS" addr add "$BENCH_NS_ADDR/30" dev "$BENCH_NS_IF"
    ip -n "$BENCH_NS" link set "$BENCH_NS_IF" up
    ip -n "$BENCH_NS" link set lo up
    pgc_log "namespace $BENCH_NS: $BENCH_HOST_IF $BENCH_HOST_ADDR <-> $BENCH_NS_IF $BENCH_NS_ADDR"
    return 0
  done
  pgc_die "no free namespace g5ns<N> after 100 tries"
}

# Stop the servers, kill whatever still runs in the namespace (only ours), delete veth and namespace.
bench_teardown() {
  local d pid
  if [ -n "$BENCH_CHILD" ] && kill -0 "$BENCH_CHILD" 2>/dev/null; then
    # GNU time, when it wraps the command, would die of SIGTERM without passing it on: the command gets it
    # instead, and time ends when the command has (pgclone cleans up on the primary first).
    if [ "$(ps -o comm= -p "$BENCH_CHILD")" = time ]; then
      pkill -TERM -P "$BENCH_CHILD" || true
    else
      kill -TERM "$BENCH_CHILD" 2>/dev/null || true
    fi
    wait "$BENCH_CHILD" 2>/dev/null || true
  fi
  if [ -n "$BENCH_SAMPLER" ]; then
    kill -TERM "$BENCH_SAMPLER" 2>/dev/null; wait "$BENCH_SAMPLER" 2>/dev/null || true
  fi
  for d in "${BENCH_SERVERS[@]}"; do
    [ -f "$d/postmaster.pid" ] && { as_user "${BENCH_SRV[@]}" pg_ctl stop -m fast -w -t 60 -D "$d" >/dev/null 2>&1 || true; }
  done
  if [ -n "$BENCH_NS" ]; then
    for pid in $(ip netns pids "$BENCH_NS" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip link del "$BENCH_HOST_IF" 2>/dev/null || true
    ip netns del "$BENCH_NS" 2>/dev/null || true
  fi
  return 0
}

# bench_server MAJOR: BENCH_SRV, the prefix that runs a server binary (initdb, pg_ctl) of PostgreSQL MAJOR:
# Debian's 15, or the npm build scripts/install-deps.sh unpacked (with its libraries). Client tools (psql,
# pgbench, pg_basebackup) are always Debian's 15.
bench_server() {
  if [ "$1" = 15 ]; then
    BENCH_SRV=(env "PATH=$PGC_PG15_BIN:/usr/bin:/bin")
  else
    [ -x "$PGC_CACHE/pg$1/bin/postgres" ] || pgc_die "no PostgreSQL $1 in $PGC_CACHE/pg$1 (scripts/install-deps.sh)"
    BENCH_SRV=(env "PATH=$PGC_CACHE/pg$1/bin:/usr/bin:/bin" "LD_LIBRARY_PATH=$PGC_CACHE/pg$1/lib")
  fi
}

# bench_primary DIR PORT [CONF]: a primary (of bench_server's major) in the namespace, listening on its
# address only, scram-sha-256 for the bench user's connections from the root namespace (normal and
# replication), with TLS or without: `ssl = on` with a self-signed certificate (server.crt and server.key in
# DIR, the key 0600 and owned by the server's user). libpq's default sslmode (prefer) then takes TLS: a method
# that wants clear text says PGSSLMODE=disable. CONF: more lines for its postgresql.conf.
BENCH_SERVERS=()
bench_primary() {
  local dir=$1 port=$2 conf=${3:-}
  # shellcheck disable=SC2086  # BENCH_INITDB: flags, split into words on purpose
  as_user "${BENCH_SRV[@]}" initdb -D "$dir" -U postgres --auth=scram-sha-256 --pwfile="$BENCH_WORK/pw" \
    --locale=C --encoding=UTF8 ${BENCH_INITDB:-} >/dev/null
  as_user openssl req -new -x509 -days 30 -nodes -newkey rsa:2048 -subj "/CN=$BENCH_NS_ADDR" \
    -keyout "$dir/server.key" -out "$dir/server.crt" 2>"$dir.openssl.log" ||
    { cat "$dir.openssl.log" >&2; pgc_die "openssl could not make the primary's certificate"; }
  as_user chmod 600 "$dir/server.key"
  as_user tee -a "$dir/postgresql.conf" >/dev/null <<EOF
listen_addresses = '$BENCH_NS_ADDR'
port = $port
unix_socket_directories = '$BENCH_WORK'
shared_buffers = 256MB
max_locks_per_transaction = 256
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
$conf
EOF
  as_user tee "$dir/pg_hba.conf" >/dev/null <<EOF
local   all         all                     scram-sha-256
hostssl all         all  $BENCH_HOST_ADDR/32 scram-sha-256
hostssl replication all  $BENCH_HOST_ADDR/32 scram-sha-256
host    all         all  $BENCH_HOST_ADDR/32 scram-sha-256
host    replication all  $BENCH_HOST_ADDR/32 scram-sha-256
EOF
  BENCH_SERVERS+=("$dir")
  in_ns "${BENCH_SRV[@]}" pg_ctl start -w -t 120 -D "$dir" -l "$dir.log" >/dev/null
}

# bench_check_ssl PORT: a replication connection with PGSSLMODE=require (pg_basebackup TLS) is TLS, one with
# PGSSLMODE=disable (pg_basebackup) is not.
bench_check_ssl() {
  local m got
  for m in require:t disable:f; do
    got=$(PGSSLMODE=${m%:*} as_user "$PGC_PG15_BIN/psql" -X -At -v ON_ERROR_STOP=1 -h "$BENCH_NS_ADDR" -p "$1" \
      -U postgres -d "dbname=postgres replication=database" -c "select ssl from pg_stat_ssl where pid = pg_backend_pid()") ||
      pgc_die "no replication connection with PGSSLMODE=${m%:*} to port $1"
    [ "$got" = "${m#*:}" ] || pgc_die "PGSSLMODE=${m%:*}: pg_stat_ssl.ssl is '$got', not '${m#*:}'"
  done
}

# bench_psql PORT SQL: one statement as postgres over the veth, unaligned output.
bench_psql() {
  as_user "$PGC_PG15_BIN/psql" -X -At -v ON_ERROR_STOP=1 -h "$BENCH_NS_ADDR" -p "$1" -U postgres -d postgres -c "$2"
}

# An sshd in the namespace as the bench user (a non-root sshd logs in only as itself: all pgclone needs),
# with its own host key and one authorized key; sessions get TMPDIR=$BENCH_WORK/remote-tmp. Writes the
# client config $BENCH_WORK/ssh/config that never reads ~/.ssh.
bench_sshd() {
  local d=$BENCH_WORK/ssh i
  as_user mkdir -p "$d" "$BENCH_WORK/remote-tmp"
  as_user ssh-keygen -q -t ed25519 -N '' -f "$d/host_key"
  as_user ssh-keygen -q -t ed25519 -N '' -f "$d/id_ed25519"
  as_user cp "$d/id_ed25519.pub" "$d/authorized_keys"
  as_user tee "$d/sshd_config" >/dev/null <<EOF
ListenAddress $BENCH_NS_ADDR:$BENCH_SSH_PORT
HostKey $d/host_key
PidFile $d/sshd.pid
AuthorizedKeysFile $d/authorized_keys
AllowUsers $BENCH_USER
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
MaxStartups 100
MaxSessions 100
SetEnv TMPDIR=$BENCH_WORK/remote-tmp
EOF
  echo "[$BENCH_NS_ADDR]:$BENCH_SSH_PORT $(cut -d' ' -f1-2 "$d/host_key.pub")" | as_user tee "$d/known_hosts" >/dev/null
  as_user tee "$d/config" >/dev/null <<EOF
UserKnownHostsFile $d/known_hosts
GlobalKnownHostsFile /dev/null
StrictHostKeyChecking yes
IdentitiesOnly yes
IdentityFile $d/id_ed25519
BatchMode yes
ConnectTimeout 10
LogLevel ERROR
EOF
  ip netns exec "$BENCH_NS" "${PGC_AS_USER[@]}" /usr/sbin/sshd -D -e -f "$d/sshd_config" 2>"$d/sshd.log" &
  disown   # bench_teardown kills it with everything in the namespace; no "Killed" notice then
  for i in $(seq 100); do
    as_user ssh -F "$d/config" -p "$BENCH_SSH_PORT" -l "$BENCH_USER" "$BENCH_NS_ADDR" true 2>/dev/null && return 0
    sleep 0.2
  done
  cat "$d/sshd.log" >&2
  pgc_die "no ssh login into the namespace after 20 s"
}

# bench_cap LINK PER: on the namespace's end of the veth (egress = primary -> replica), cap the whole link
# at LINK and every TCP flow at PER (tc rates, e.g. 1600mbit 200mbit). No netem/fq here, so: htb root
# with the link rate, 256 leaf classes `rate 1mbit ceil PER`, and a u32 hash on bits 1..8 of the
# destination port (the replica's ephemeral port; connect() picks even ports, so bit 0 says little)
# spreading flows over the leaves. Two flows may share a leaf (and its PER), as on a real per-flow policer.
bench_cap() {
  local link=$1 per=$2 dev=$BENCH_NS_IF i f=$BENCH_WORK/tc.batch
  {
    echo "qdisc add dev $dev root handle 1: htb default 2"
    echo "class add dev $dev parent 1: classid 1:1 htb rate $link ceil $link burst 256k cburst 256k quantum 200000"
    echo "class add dev $dev parent 1:1 classid 1:2 htb rate 1mbit ceil $link burst 64k cburst 64k"
    echo "filter add dev $dev parent 1: prio 1 handle 2: protocol ip u32 divisor 256"
    for i in $(seq 0 255); do
      printf 'class add dev %s parent 1:1 classid 1:%x htb rate 1mbit ceil %s burst 64k cburst 64k\n' "$dev" $((0x100 + i)) "$per"
      printf 'filter add dev %s parent 1: prio 1 protocol ip u32 ht 2:%x: match u32 0 0 flowid 1:%x\n' "$dev" "$i" $((0x100 + i))
    done
    echo "filter add dev $dev parent 1: prio 1 protocol ip u32 ht 800:: match ip protocol 6 0xff hashkey mask 0x000001fe at 20 link 2:"
  } >"$f"
  ip netns exec "$BENCH_NS" tc -batch "$f"
}
bench_uncap() { ip netns exec "$BENCH_NS" tc qdisc del dev "$BENCH_NS_IF" root; }

# bench_busy: in BENCH_BUSY, the CPU time the whole machine (both "hosts": the namespace shares this kernel)
# has been busy since boot, in USER_HZ: user + nice + system + irq + softirq of /proc/stat's aggregate line.
# Not idle or iowait; not steal (time the hypervisor gave to someone else) nor guest and guest_nice (already
# in user and nice).
bench_busy() {
  local _cpu user nice system _idle _iowait irq softirq _rest
  read -r _cpu user nice system _idle _iowait irq softirq _rest </proc/stat
  BENCH_BUSY=$((user + nice + system + irq + softirq))
}

# bench_sampler_start FILE: in the background, every 0.2 s, the largest VmHWM (peak RSS, kB) of the agents on
# the primary's "host": the processes in the namespace whose comm is pgclone or rsync (the rsync transport's
# daemon) or whose command line has the word "agent". bench_sampler_stop writes it to FILE. Only builtins in
# its loop (a fork would cost CPU the run is charged with); it runs during every timed run, whatever the
# method, so that every method pays the same for it.
bench_sampler_start() {
  local file=$1
  rm -f "$file" "$file.stop"
  (
    trap - EXIT INT TERM
    max=0 ns=/run/netns/$BENCH_NS
    exec {tick}<> <(:)   # a pipe nobody writes to: `read -t` on it sleeps without a fork
    while :; do
      for d in /proc/[0-9]*; do
        [ "$d/ns/net" -ef "$ns" ] || continue
        read -r comm 2>/dev/null <"$d/comm" || continue   # (it may have ended since the glob)
        case $comm in
          pgclone | rsync) ;;
          postgres | sshd | sshd-session) continue ;;
          *) mapfile -d '' args 2>/dev/null <"$d/cmdline" || continue
             case " ${args[*]} " in *" agent "*) ;; *) continue ;; esac ;;
        esac
        while read -r key value _; do
          if [ "$key" = VmHWM: ]; then [ "$value" -gt "$max" ] && max=$value; break; fi
        done 2>/dev/null <"$d/status" || :
      done
      [ -e "$file.stop" ] && break
      read -r -t 0.2 -u "$tick" _ || :
    done
    echo "$max" >"$file"
  ) &
  BENCH_SAMPLER=$!
}

# bench_sampler_stop FILE: stops the sampler after one last look; its result in BENCH_AGENT_KB (0: none seen).
bench_sampler_stop() {
  local file=$1
  : >"$file.stop"
  wait "$BENCH_SAMPLER" 2>/dev/null || true
  BENCH_SAMPLER=
  BENCH_AGENT_KB=$(cat "$file" 2>/dev/null || echo 0)
  rm -f "$file.stop"
}

# bench_timed LOG CMD...: run CMD as the bench user (stdout LOG.out, stderr LOG.err): seconds in BENCH_T, the
# CPU seconds of the whole machine meanwhile in BENCH_CPU, the agents' peak RSS (kB, 0: none) in
# BENCH_AGENT_KB (also in LOG.agent), its exit status in BENCH_RC. A failure aborts the benchmark loudly, with
# the command and the end of its stderr, unless BENCH_MAY_FAIL=1 (a refusal the caller records).
bench_timed() {
  local log=$1 t0 c0 rc=0
  shift
  bench_sampler_start "$log.agent"
  bench_busy
  c0=$BENCH_BUSY
  t0=$EPOCHREALTIME
  "${PGC_AS_USER[@]}" "$@" >"$log.out" 2>"$log.err" &   # not as_user: $! must be the command itself
  BENCH_CHILD=$!
  wait "$BENCH_CHILD" || rc=$?
  BENCH_CHILD=
  BENCH_T=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
  bench_busy
  BENCH_CPU=$(awk -v n=$((BENCH_BUSY - c0)) -v hz="$BENCH_HZ" 'BEGIN { printf "%.2f", n / hz }')
  bench_sampler_stop "$log.agent"
  BENCH_RC=$rc
  if [ "$rc" -ne 0 ] && [ "${BENCH_MAY_FAIL:-}" != 1 ]; then
    printf '\n*** FAILED (exit %s after %s s):' "$rc" "$BENCH_T" >&2
    printf ' %q' "$@" >&2
    printf '\n--- stderr (%s.err, last 40 lines):\n' "$log" >&2
    tail -n 40 "$log.err" >&2
    pgc_die "benchmark aborted"
  fi
}

# median "T1 T2 ...": of blank-separated numbers.
# bench_leftovers PORT: what the clones left behind, waiting up to 10 s for it to go: replication slots and
# pgclone sessions on the primary, pgclone or rsync processes (here or in the namespace), run directories
# under the TMPDIR of pgclone and of its ssh sessions. Empty output: nothing.
bench_leftovers() {
  local i left pid
  for i in $(seq 50); do
    left=$(bench_psql "$1" "select string_agg(x, '; ') from (select 'slot ' || slot_name x from pg_replication_slots
             union all select 'session ' || pid || ' ' || application_name from pg_stat_activity
             where application_name like 'pgclone%') s")
    left+=$(find "$TMPDIR" "$BENCH_WORK/remote-tmp" -mindepth 1 -maxdepth 1 -printf '; %p')
    for pid in $(pgrep -f "$BENCH_WORK/bin/pgclone") $(ip netns pids "$BENCH_NS"); do
      case $(ps -o comm= -p "$pid") in pgclone | rsync) left+="; process $(ps -o pid=,args= -p "$pid")" ;; esac
    done
    [ -z "$left" ] && return 0
    sleep 0.2
  done
  echo "${left#; }"
}

# changed_pages PRIMARY REPLICA: bytes of the 8 KiB pages of the primary's data files (all but pg_wal,
# postmaster.pid, pg_control) that differ from the replica's, or that the replica lacks; what an ideal delta
# re-clone moves. Run on an idle primary after a CHECKPOINT, as the re-clone then reads the same files.
changed_pages() {
  python3 - "$1" "$2" <<'PY'
import os, sys
primary, replica = sys.argv[1:3]
page, changed = 8192, 0
for root, dirs, files in os.walk(primary):
    rel = os.path.relpath(root, primary)
    if rel == "pg_wal":
        dirs[:] = []
        continue
    for f in files:
        path = os.path.normpath(os.path.join(rel, f))
        if path in ("postmaster.pid", "global/pg_control"):
            continue
        try:
            a = open(os.path.join(primary, path), "rb")
        except FileNotFoundError:
            continue
        try:
            b = open(os.path.join(replica, path), "rb")
        except FileNotFoundError:
            b = None
        with a:
            while True:
                x = a.read(page)
                if not x:
                    break
                if b is None or b.read(page) != x:
                    changed += len(x)
        if b:
            b.close()
print(changed)
PY
}

# shell_quote WORD: WORD as a shell word, in single quotes unless plain.
shell_quote() {
  case $1 in
    '' | *[!A-Za-z0-9_./:=,+-]*) printf "'%s'" "${1//\'/\'\\\'\'}" ;;
    *) printf '%s' "$1" ;;
  esac
}

median() { tr -s ' ' '\n' <<<"$*" | grep . | sort -g | awk '{ v[NR] = $1 } END { printf "%.2f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf (b > 0 ? "%.2f" : "-"), a / b }'; }
mbps() { awk -v n="$1" -v t="$2" 'BEGIN { printf "%.1f", n / t / 1e6 }'; }     # MB/s, MB = 10^6 bytes
mb() { awk -v n="$1" 'BEGIN { printf "%.1f MB", n / 1e6 }'; }
maxof() { tr -s ' ' '\n' <<<"$*" | grep . | sort -g | tail -n1; }              # of blank-separated numbers
cpu_per_gb() { awk -v c="$1" -v n="$2" 'BEGIN { printf (n > 0 ? "%.2f" : "-"), c / (n / 1e9) }'; }   # CPU s per 10^9 bytes
kb_mb() { awk -v k="${1:-0}" 'BEGIN { printf (k > 0 ? "%.0f" : "-"), k * 1024 / 1e6 }'; }   # kB (KiB, as Linux counts) -> MB
json_field() { grep -o "\"$1\":[0-9.]*" "$2" | head -n1 | cut -d: -f2; }     # a number in pgclone's --json
# Bytes of the regular files a clone moves from data directory $1 (all but pg_wal and postmaster.pid).
data_bytes() { find "$1" -path "$1/pg_wal" -prune -o -type f ! -name postmaster.pid -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }
data_files() { find "$1" -path "$1/pg_wal" -prune -o -type f ! -name postmaster.pid -print | wc -l; }
