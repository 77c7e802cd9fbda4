#!/usr/bin/env bash
# Benchmark: pgclone against pg_basebackup (clear text and TLS), against a plain local copy (issues 4, 12), and
# against pg_rewind for a former primary's rejoin (issue 21).
#
#   bench/run.sh            run every scenario, print one markdown table per scenario and the issue's targets
#   bench/run.sh --record   ... and append the tables, the exact command, date, machine and pgclone's git
#                           revision to docs/BENCHMARKS.md
#
# Root only (network namespaces, tc). PostgreSQL 15, sshd and pgclone run as the unprivileged user
# pgclonetest (scripts/lib.sh). The primary lives on "its own host": a network namespace behind a veth pair
# (10.231.x.y/30), PostgreSQL (ssl = on, self-signed certificate; pg_hba takes hostssl and host) and an sshd
# bound to its address; the replica side (pg_basebackup, pgclone) runs in the root namespace, so every byte
# crosses a real (virtual) link, never loopback. The primary is idle while a method is timed; a CHECKPOINT
# runs (untimed) before every timed run; each clone goes into a fresh directory, removed afterwards; methods
# take turns within each round (interleaved) and the tables show medians over the rounds. A failing run
# aborts the whole benchmark with its command and stderr. In round 1 every clone is also checked (untimed):
# `pgclone verify` for pgclone's, pg_verifybackup for pg_basebackup's.
#
# Methods: "local cp -a" copies what a clone moves (the data directory but pg_wal and postmaster.pid) on this
# disk, then `sync -f` (pgclone and pg_basebackup fsync what they write): the limit. Caches cannot be dropped
# on a shared machine, so the primary's files are in the page cache for every method alike.
# pg_basebackup: `-X stream -c fast` (pgclone also asks for a fast checkpoint), PGSSLMODE=disable: clear TCP
# over the veth. pg_basebackup TLS: the same with PGSSLMODE=require. pgclone: the binary as built (it brings
# its own agent to the primary: no --remote-pgclone), `--progress none --json` and the flags of the method;
# its own PostgreSQL connections keep libpq's default sslmode (prefer, so TLS).
#
# Columns: median and every round's time, data MB/s (MB = 10^6 bytes of the primary's files without pg_wal),
# "CPU s/GB": CPU seconds the whole machine (both "hosts") was busy during the timed run (/proc/stat: user,
# nice, system, irq, softirq), median over the rounds, per GB (10^9 bytes) of data; time ÷ pg_basebackup, ÷
# pg_basebackup TLS and ÷ local cp -a (when those ran); the share of a capped link; for pgclone methods
# "peak RSS client / agent MB", the largest over the rounds: the client's from pgclone's --json "peak_rss_kb"
# (its own VmHWM) if it gives it, else GNU time's %M (it and the children it waited for: ssh, rsync; time is
# installed with apt if missing); the agents' the largest VmHWM of the processes in the namespace whose comm
# is pgclone or rsync (the rsync transport's daemon) or whose command line has the word "agent", sampled
# every 0.2 s during every timed run (of every method, so that each pays the sampler's bit of CPU alike);
# and "data channel", what pgclone's --json says the data travelled over (auto may fall back to ssh).
#
# Scenarios (methods are "label|kind|flags"; kind: cp, bb, bbtls or pgclone; flags: pgclone's):
#   S1  uncapped veth, pgclone's default --parallel (number of CPUs): local cp -a; pg_basebackup;
#       pg_basebackup TLS; pgclone default (no transport flags); pgclone --data-channel tcp; --data-channel
#       ssh; --compress none; --compress lz4; pgclone rsync (--transport rsync).
#       Targets: pgclone default time ≤ 0.8× pg_basebackup's and ≤ 0.6× pg_basebackup TLS's; its CPU s/GB ≤
#       pg_basebackup TLS's; pgclone --data-channel tcp CPU s/GB ≤ pg_basebackup's.
#   S2  a link that caps the whole link at 200 MB/s and each TCP flow at 25 MB/s (htb + u32 hash on the
#       veth's egress in the namespace, i.e. primary -> replica; see bench_cap in bench/lib.sh):
#       pg_basebackup; pg_basebackup TLS; pgclone -p8 --compress none; pgclone -p8 (default compression);
#       pgclone -p8 --data-channel ssh --compress none; pgclone rsync -p8; the share of the 200 MB/s link
#       each achieved ("data MB/s" is data bytes per second, not wire bytes: compressed, it can exceed the link).
#       Targets: pgclone -p8 --compress none ≥ 90 % of the link; pgclone -p8 data rate ≥ 1.5× the link.
#   S3  re-sync of a stale directory (issues 14, 21): pgclone (default flags, plus -R and the standby's own port)
#       clones into a directory; with BENCH_S3_KIND=standby (the default) the clone runs here as a standby until
#       it has replayed a checkpoint made after its start and made a restartpoint of it, and is shut down cleanly
#       (untimed); with BENCH_S3_KIND=never-started it is left as the copy made it (backup_label, its WAL up to
#       the backup's end); pgbench writes for BENCH_DELTA_SECONDS; pgclone re-runs into the same directory.
#       Shows the re-sync's method (--json resync.method: wal-summaries; wal-blocks where the primary keeps no
#       WAL summaries but still has the WAL since the directory's redo point, see wal_keep_size in BENCH_PG_CONF;
#       page-lsns or page-hashes where it does not, with data checksums on or off: see BENCH_INITDB), the bytes it
#       read on the primary and on the replica (resync.read_primary_bytes, read_replica_bytes), the WAL it read to
#       tell what changed (resync.read_wal_bytes) and the bytes it moved (moved_bytes), against the bytes of the
#       8 KiB pages that really changed (counted, untimed, just before the re-sync on the idle primary after a
#       CHECKPOINT), time against the full clone, the WAL the primary wrote in between, CPU s/GB and peak RSS.
#       Targets (issue 21, whatever the kind and method): time ≤ 0.15× the full clone; read on the primary and
#       read on the replica each ≤ 2× the changed pages.
#   S4  many small files: a second primary with BENCH_TABLES one-row tables (one 8 KiB file each): local cp -a,
#       pg_basebackup, pgclone default, pgclone rsync. Target: pgclone default time ≤ 1.5× local cp -a's.
#   S5  a former primary rejoins after a failover (issue 21), pg_rewind against pgclone, PostgreSQL 15 only
#       (pg_rewind). The primary above is stopped for the scenario (and started again after it). Each round: A =
#       a copy of it, a primary on the replica's side (port 5441 on the veth's address here), with wal_keep_size
#       = 4GB unless BENCH_PG_CONF sets it (both tools need A's WAL from the last checkpoint before the fork;
#       pgclone's wal-blocks also B's since the fork); B = its standby in the namespace (pg_basebackup, port
#       5442), streaming until caught up; B promoted (pg_ctl promote: its walreceiver ends); pgbench on A for
#       BENCH_S5_OLD_SECONDS, writes B never sees; A shut down (-m fast); pgbench on B for BENCH_S5_NEW_SECONDS;
#       B shut down. Both directories are copied (cp -a, untimed) and A rejoins B from that state twice, by each
#       tool in turn (which goes first alternates over the rounds; between them the copies are put back): B
#       started; (a) `pg_rewind --target-pgdata A --source-server 'B' --progress`, standby.signal and
#       primary_conninfo written, A started; (b) pgclone -R into A from B (with BENCH_S5_FLAGS), A started; each
#       timed from the tool's start until A's walreceiver streams and its replay LSN is B's current LSN (B
#       idle). Untimed after each: the pgbench tables' sums, key-weighted sums and counts on A against B's
#       ("data equal"). Per round: the WAL each side wrote after the fork, the pages that differ (B's against
#       A's, as S3 counts them), each tool's total and own time, what pg_rewind said it must copy, pgclone's
#       method, bytes read on B and on A, WAL read to tell, bytes moved. With data checksums (BENCH_INITDB=
#       --data-checksums) or wal_log_hints = on pgclone goes by wal-blocks; with neither pg_rewind refuses (its
#       error line is recorded) and pgclone compares pages (page-hashes).
#       Targets: pgclone's time to a caught-up standby ≤ 0.5× pg_rewind's (its rewind and its recovery);
#       pgclone's standby has B's data in every round (where pg_rewind refuses, too).
# The targets look the methods up by label; one whose method did not run says "not run".
#
# Settings (environment):
#   BENCH_SCALE=130          pgbench scale of the primary (130: about 2 GB to copy)
#   BENCH_PG_MAJOR=15        the primary's PostgreSQL: Debian's 15, or 16, 17, 18 from scripts/install-deps.sh's
#                            npm builds (pg_basebackup is 15's: with another major run S3, or methods without it)
#   BENCH_PG_CONF=...        more postgresql.conf lines for the primary, e.g. 'summarize_wal = on' ("\n" between)
#   BENCH_INITDB=...         more initdb flags for the primaries, e.g. --data-checksums (PostgreSQL 18's default)
#   BENCH_ROUNDS=3           rounds per scenario (medians over them)
#   BENCH_DELTA_SECONDS=120  S3: seconds of pgbench writes between clone and re-clone
#   BENCH_DELTA_TPS=N        S3, S5: limit their writes to N transactions/s (pgbench -R; default: full speed)
#   BENCH_S3_KIND=standby    S3: the stale directory: standby (stopped after a restartpoint) or never-started
#   BENCH_TABLES=100000      S4: number of small tables
#   BENCH_S5_OLD_SECONDS=10  S5: seconds of pgbench on the old primary after the promotion
#   BENCH_S5_NEW_SECONDS=60  S5: seconds of pgbench on the new primary before the rejoin
#   BENCH_S5_FLAGS=...       S5: more pgclone flags for the rejoin (default: none; -R is always given)
#   BENCH_SCENARIOS="S1 S2 S3 S4"   which scenarios to run (S5 only when named)
#   BENCH_S1_METHODS=...     S1's methods instead of the list above: "label|kind|flags" entries separated by
#   BENCH_S2_METHODS=...       ";" or newlines, e.g. 'pg_basebackup|bb|;pgclone default|pgclone|' (to run
#   BENCH_S4_METHODS=...       only what a given pgclone has, or one method alone)
#   BENCH_S3_FLAGS=...       S3: pgclone's flags for both runs (default: none)
#   BENCH_PGCLONE=PATH       benchmark this pgclone binary (and the pgclone-agent beside it) instead of building
#                            them (cargo build --release)
#   BENCH_NOTE=...           a remark for the --record heading (e.g. "busy machine")
#   BENCH_TMP=/var/tmp       where the work directory (primaries, clones; about 3x the data, S5 6x) is made
#   BENCH_KEEP=1             keep the work directory (logs of every run) instead of removing it
#
# Quick functional run (a few minutes):
#   BENCH_SCALE=10 BENCH_ROUNDS=1 BENCH_DELTA_SECONDS=20 BENCH_TABLES=20000 bench/run.sh
#   BENCH_SCALE=10 BENCH_ROUNDS=1 BENCH_S5_NEW_SECONDS=10 BENCH_INITDB=--data-checksums BENCH_SCENARIOS=S5 bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
# shellcheck source=bench/lib.sh
. bench/lib.sh

record=0
case "${1:-}" in
  "") ;;
  --record) record=1 ;;
  -h | --help) sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0"; exit 0 ;;
  *) pgc_die "unknown argument $1 (try --help)" ;;
esac
invocation=
for v in BENCH_PG_MAJOR BENCH_PG_CONF BENCH_INITDB BENCH_SCALE BENCH_ROUNDS BENCH_DELTA_SECONDS BENCH_DELTA_TPS BENCH_TABLES BENCH_SCENARIOS BENCH_S1_METHODS \
         BENCH_S2_METHODS BENCH_S4_METHODS BENCH_S3_FLAGS BENCH_S3_KIND BENCH_S5_OLD_SECONDS BENCH_S5_NEW_SECONDS BENCH_S5_FLAGS \
         BENCH_PGCLONE BENCH_NOTE BENCH_TMP BENCH_KEEP; do
  [ -n "${!v:-}" ] && invocation+="$v=$(shell_quote "${!v}") "
done
invocation+="bench/run.sh${1:+ $1}"
SCALE=${BENCH_SCALE:-130} ROUNDS=${BENCH_ROUNDS:-3} DELTA=${BENCH_DELTA_SECONDS:-120} TABLES=${BENCH_TABLES:-100000}
SCENARIOS=${BENCH_SCENARIOS:-S1 S2 S3 S4}
S3_FLAGS=${BENCH_S3_FLAGS:-}
S3_KIND=${BENCH_S3_KIND:-standby}
case $S3_KIND in standby | never-started) ;; *) pgc_die "BENCH_S3_KIND=$S3_KIND: standby or never-started" ;; esac
S5_OLD=${BENCH_S5_OLD_SECONDS:-10} S5_NEW=${BENCH_S5_NEW_SECONDS:-60} S5_FLAGS=${BENCH_S5_FLAGS:-}
PG=$PGC_PG15_BIN
MAJOR=${BENCH_PG_MAJOR:-15}
PG_CONF=$(printf '%b' "${BENCH_PG_CONF:-}")

# methods NAME DEFAULT...: the array NAME ("label|kind|flags" entries), from $BENCH_<NAME> when that is set
# (entries separated by ";" or newlines, blanks around them ignored), else the DEFAULTs.
methods() {
  local -n list=$1
  local var=BENCH_$1 e kind parts
  shift
  list=("$@")
  [ -n "${!var:-}" ] || return 0
  list=()
  IFS=';' read -ra parts <<<"${!var//$'\n'/;}"
  for e in "${parts[@]}"; do
    e=${e#"${e%%[![:space:]]*}"} e=${e%"${e##*[![:space:]]}"}
    [ -n "$e" ] || continue
    [[ $e == ?*'|'*'|'* ]] || pgc_die "$var: '$e' is not label|kind|flags"
    kind=${e#*|} kind=${kind%%|*}
    case $kind in cp | bb | bbtls | pgclone) ;; *) pgc_die "$var: kind '$kind' in '$e' (cp, bb, bbtls or pgclone)" ;; esac
    list+=("$e")
  done
  [ ${#list[@]} -gt 0 ] || pgc_die "$var names no method"
}
methods S1_METHODS "local cp -a|cp|" "pg_basebackup|bb|" "pg_basebackup TLS|bbtls|" "pgclone default|pgclone|" \
  "pgclone --data-channel tcp|pgclone|--data-channel tcp" "pgclone --data-channel ssh|pgclone|--data-channel ssh" \
  "pgclone --compress none|pgclone|--compress none" "pgclone --compress lz4|pgclone|--compress lz4" \
  "pgclone rsync|pgclone|--transport rsync"
methods S2_METHODS "pg_basebackup|bb|" "pg_basebackup TLS|bbtls|" \
  "pgclone -p8 --compress none|pgclone|--parallel 8 --compress none" "pgclone -p8|pgclone|--parallel 8" \
  "pgclone -p8 --data-channel ssh --compress none|pgclone|--parallel 8 --data-channel ssh --compress none" \
  "pgclone rsync -p8|pgclone|--transport rsync --parallel 8"
methods S4_METHODS "local cp -a|cp|" "pg_basebackup|bb|" "pgclone default|pgclone|" "pgclone rsync|pgclone|--transport rsync"

pgc_is_root || pgc_die "run as root: the benchmark makes a network namespace and shapes its link with tc"
bench_server "$MAJOR"
if [ "$MAJOR" != 15 ]; then
  for sc in $SCENARIOS; do
    case $sc in S1) m=("${S1_METHODS[@]}") ;; S2) m=("${S2_METHODS[@]}") ;; S4) m=("${S4_METHODS[@]}") ;; *) m=() ;; esac
    for e in "${m[@]}"; do
      [[ $e == *'|bb|'* || $e == *'|bbtls|'* ]] &&
        pgc_die "$sc: pg_basebackup 15 cannot back up PostgreSQL $MAJOR; give BENCH_${sc}_METHODS without it, or run S3"
    done
  done
fi
# S5 compares with pg_rewind, which only Debian's 15 has (the npm builds of 16..18 bring initdb, pg_ctl, postgres).
[[ " $SCENARIOS " == *" S5 "* ]] && [ "$MAJOR" != 15 ] && pgc_die "S5 needs PostgreSQL 15 (pg_rewind, pg_basebackup of the same major)"
pgc_ensure_base || pgc_die "missing dependencies (see above)"
# GNU time measures the client's peak RSS (%M) for a pgclone whose --json has no peak_rss_kb.
pgc_ensure_packages time || pgc_log "no GNU time: the client's peak RSS only from pgclone's --json peak_rss_kb"
GNU_TIME=
/usr/bin/time --version 2>&1 | grep -q GNU && GNU_TIME=/usr/bin/time
if [ -n "${BENCH_PGCLONE:-}" ]; then
  [ -x "$BENCH_PGCLONE" ] || pgc_die "BENCH_PGCLONE=$BENCH_PGCLONE is no executable"
  src_bin=$BENCH_PGCLONE
else
  cargo build --release
  src_bin=${CARGO_TARGET_DIR:-target}/release/pgclone
fi
BENCH_USER=$PGC_TEST_USER
pgc_as_user_cmd

BENCH_WORK=$(mktemp -d "${BENCH_TMP:-/var/tmp}/pgcbench-XXXXXX")
cleanup() {
  local rc=$?
  trap - INT TERM
  [ -n "${load_pid:-}" ] && kill "$load_pid" 2>/dev/null
  bench_teardown
  if [ "${BENCH_KEEP:-}" = 1 ]; then pgc_log "kept $BENCH_WORK"; else rm -rf "$BENCH_WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
chown "$BENCH_USER:" "$BENCH_WORK"
chmod 755 "$BENCH_WORK"
as_user mkdir "$BENCH_WORK"/{bin,logs,tmp,clones}
export TMPDIR=$BENCH_WORK/tmp PGPASSWORD=bench   # pgclone's run directories land here; both pass setpriv
echo "$PGPASSWORD" | as_user tee "$BENCH_WORK/pw" >/dev/null
# A copy: other people's builds may replace target/release/pgclone during the benchmark. pgclone-agent goes
# beside it, as installed: it is what pgclone brings to the primary.
cp "$src_bin" "$BENCH_WORK/bin/pgclone"
[ -x "$(dirname "$src_bin")/pgclone-agent" ] || pgc_die "no pgclone-agent beside $src_bin"
cp "$(dirname "$src_bin")/pgclone-agent" "$BENCH_WORK/bin/pgclone-agent"
chmod 755 "$BENCH_WORK/bin/pgclone" "$BENCH_WORK/bin/pgclone-agent"
BIN=$BENCH_WORK/bin/pgclone
rev=$(git rev-parse --short HEAD)
[ -z "$(git status --porcelain -- src Cargo.toml Cargo.lock)" ] || rev="$rev + uncommitted changes in src/"
[ -n "${BENCH_PGCLONE:-}" ] && rev="$rev (binary: $BENCH_PGCLONE)"
R=$BENCH_WORK/clones/replica   # every clone's target: absent before each run
report=$BENCH_WORK/report.md
out() { printf '%s\n' "$@" | tee -a "$report"; }   # one line per argument, to stdout and the report

step() { printf '\n==> %s\n' "$*" >&2; }

step "primary: PostgreSQL $MAJOR (ssl = on) in a network namespace, pgbench scale $SCALE, sshd"
bench_netns_up
P=$BENCH_WORK/primary
bench_primary "$P" 5432 "$PG_CONF"
bench_check_ssl 5432
as_user "$PG/pgbench" -i -q -s "$SCALE" -h "$BENCH_NS_ADDR" -p 5432 -U postgres postgres 2>"$BENCH_WORK/logs/pgbench-init.err" ||
  { cat "$BENCH_WORK/logs/pgbench-init.err" >&2; pgc_die "pgbench -i failed"; }
bench_sshd

# cmd_for KIND SRC PORT [pgclone flags...]: the command of one method into $R, in the array CMD.
cmd_for() {
  local kind=$1 src=$2 port=$3
  shift 3
  # shellcheck disable=SC2016  # sh -c '...' expands its own arguments
  case $kind in
    cp) CMD=(sh -c 'mkdir "$2" && cd "$1" &&
                    find . -mindepth 1 -maxdepth 1 ! -name pg_wal ! -name postmaster.pid -exec cp -a -t "$2" {} + &&
                    sync -f "$2"' sh "$src" "$R") ;;
    bb | bbtls)
      CMD=(env "PGSSLMODE=$([ "$kind" = bb ] && echo disable || echo require)"
           "$PG/pg_basebackup" -h "$BENCH_NS_ADDR" -p "$port" -U postgres -X stream -c fast -D "$R") ;;
    pgclone) CMD=("$BIN" --pghost "$BENCH_NS_ADDR" --pgport "$port" --pguser postgres --primary-pgdata "$src"
                  --replica-pgdata "$R" --ssh-user "$BENCH_USER" --ssh-port "$BENCH_SSH_PORT"
                  --ssh-config "$BENCH_WORK/ssh/config" --progress none --json "$@") ;;
  esac
}

# run_method SCENARIO ROUND LABEL KIND SRC PORT [flags]: one timed run into $R (the caller empties it or,
# for a re-clone, not); adds the time to TIMES[LABEL], the machine's CPU seconds to CPUS[LABEL], and for
# pgclone the moved bytes to MOVED[LABEL], the peak RSS (kB) of client and agents to RSSC and RSSA[LABEL] and
# the data channel its --json names (if it does) to CHAN[LABEL]; in round 1 verifies the clone.
declare -A TIMES MOVED CPUS RSSC RSSA CHAN
run_method() {
  local sc=$1 round=$2 label=$3 kind=$4 src=$5 port=$6 log=${3,,} client chan
  shift 6
  log=$BENCH_WORK/logs/$sc.$round.${log//[^a-z0-9]/_}
  cmd_for "$kind" "$src" "$port" "$@"
  [ "$kind" = pgclone ] && [ -n "$GNU_TIME" ] && CMD=("$GNU_TIME" -q -f %M -o "$log.rss" "${CMD[@]}")
  bench_psql "$port" checkpoint >/dev/null
  printf '%s round %s: %-48s' "$sc" "$round" "$label" >&2
  bench_timed "$log" "${CMD[@]}"
  printf '%8s s %7s CPU s\n' "$BENCH_T" "$BENCH_CPU" >&2
  TIMES[$label]+=" $BENCH_T"
  CPUS[$label]+=" $BENCH_CPU"
  if [ "$kind" = pgclone ]; then
    MOVED[$label]+=" $(json_field moved_bytes "$log.out")"
    # pgclone's own peak (VmHWM) if it reports it; else GNU time's: it and the children it waited for.
    client=$(json_field peak_rss_kb "$log.out" || true)
    [ -n "$client" ] || client=$(tail -n1 "$log.rss" 2>/dev/null || true)
    RSSC[$label]+=" ${client:-0}"
    RSSA[$label]+=" $BENCH_AGENT_KB"
    chan=$(grep -o '"data_channel":"[a-z0-9]*"' "$log.out" | head -n1 | cut -d'"' -f4 || true)
    [ -z "$chan" ] || [[ " ${CHAN[$label]:-} " == *" $chan "* ]] || CHAN[$label]+=" $chan"
  fi
  if [ "$round" = 1 ]; then
    case $kind in
      pgclone) as_user "$BIN" verify "$R" >"$log.verify" 2>&1 || { cat "$log.verify" >&2; pgc_die "pgclone verify $R failed ($label)"; } ;;
      bb | bbtls) as_user "$PG/pg_verifybackup" -q "$R" >"$log.verify" 2>&1 || { cat "$log.verify" >&2; pgc_die "pg_verifybackup $R failed ($label)"; } ;;
    esac
  fi
  return 0
}

# rounds SCENARIO SRC PORT "LABEL|KIND|FLAGS"...: every method once per round, in turn, BENCH_ROUNDS rounds.
rounds() {
  local sc=$1 src=$2 port=$3 r m label kind flags
  shift 3
  TIMES=() MOVED=() CPUS=() RSSC=() RSSA=() CHAN=()
  for r in $(seq "$ROUNDS"); do
    for m in "$@"; do
      IFS='|' read -r label kind flags <<<"$m"
      rm -rf "$R"
      # shellcheck disable=SC2086  # flags: words without blanks or globs
      run_method "$sc" "$r" "$label" "$kind" "$src" "$port" $flags
      rm -rf "$R"
    done
  done
}

# tmed LABEL: the median time of LABEL in the last rounds(), empty if it did not run. cpugb LABEL BYTES: its
# median CPU seconds per GB of BYTES. rss LABEL: "client / agent" peak RSS in MB, the largest over the rounds,
# and the data channel(s) pgclone's --json named, if it did.
tmed() { [ -z "${TIMES[$1]:-}" ] || median "${TIMES[$1]}"; }
cpugb() { cpu_per_gb "$(median "${CPUS[$1]}")" "$2"; }
rss() { printf '%s / %s' "$(kb_mb "$(maxof "${RSSC[$1]:-}")")" "$(kb_mb "$(maxof "${RSSA[$1]:-}")")"; }
chan() { local c=${CHAN[$1]:-}; c=${c# }; printf '%s' "${c:--}"; }

# table BYTES LINK_MB_S "LABEL|..."...: the markdown table of the last rounds(); LINK_MB_S adds the link share.
table() {
  local bytes=$1 link=$2 m label kind med bb tls cp pgc='' hdr row
  shift 2
  bb=$(tmed pg_basebackup) tls=$(tmed "pg_basebackup TLS") cp=$(tmed "local cp -a")
  for m in "$@"; do [[ $m == *'|pgclone|'* ]] && pgc=1; done
  hdr="| method | median s | each round s | data MB/s | CPU s/GB |"
  [ -n "$bb" ] && hdr+=" time ÷ pg_basebackup |"
  [ -n "$tls" ] && hdr+=" time ÷ pg_basebackup TLS |"
  [ -n "$cp" ] && hdr+=" time ÷ local cp -a |"
  [ -n "$link" ] && hdr+=" share of the $link MB/s link |"
  [ -n "$pgc" ] && hdr+=" peak RSS client / agent MB | data channel |"
  out "$hdr"
  out "$(awk -F'|' '{ s = "| --- |"; for (i = 3; i < NF; i++) s = s " ---: |"; print s }' <<<"$hdr")"
  for m in "$@"; do
    IFS='|' read -r label kind _ <<<"$m"
    med=$(tmed "$label")
    row="| $label | $med |${TIMES[$label]} | $(mbps "$bytes" "$med") | $(cpugb "$label" "$bytes") |"
    [ -n "$bb" ] && row+=" $(ratio "$med" "$bb") |"
    [ -n "$tls" ] && row+=" $(ratio "$med" "$tls") |"
    [ -n "$cp" ] && row+=" $(ratio "$med" "$cp") |"
    [ -n "$link" ] && row+=" $(awk -v r="$(mbps "$bytes" "$med")" -v l="$link" 'BEGIN { printf "%.0f %%", 100 * r / l }') |"
    if [ -n "$pgc" ]; then
      if [ "$kind" = pgclone ]; then row+=" $(rss "$label") | $(chan "$label") |"; else row+=" - | - |"; fi
    fi
    out "$row"
  done
}

# The issue's targets after a scenario's table, each met or missed by the medians of the last rounds().
# The methods are found by label; a target whose method did not run says so.
targets() { out "" "Targets (issue 12), from the medians:" "" "| target | result | verdict |" "| --- | --- | ---: |"; }
verdict() { awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN { print ((op == "<=" ? v + 0 <= l + 0 : v + 0 >= l + 0) ? "met" : "**missed**") }'; }
not_run() { out "| $1 | not run ($2) | - |"; }
# target_time A B LIMIT: A's time ≤ LIMIT × B's.
target_time() {
  local t="$1 time ≤ $3× $2's" a b r
  a=$(tmed "$1") b=$(tmed "$2")
  [ -n "$a" ] || { not_run "$t" "$1"; return 0; }
  [ -n "$b" ] || { not_run "$t" "$2"; return 0; }
  r=$(ratio "$a" "$b")
  out "| $t | $r× ($a s vs $b s) | $(verdict "$r" "<=" "$3") |"
}
# target_cpu A B BYTES: A's CPU s/GB ≤ B's.
target_cpu() {
  local t="$1 CPU s/GB ≤ $2's" a b
  [ -n "$(tmed "$1")" ] || { not_run "$t" "$1"; return 0; }
  [ -n "$(tmed "$2")" ] || { not_run "$t" "$2"; return 0; }
  a=$(cpugb "$1" "$3") b=$(cpugb "$2" "$3")
  out "| $t | $a vs $b | $(verdict "$a" "<=" "$b") |"
}
# target_link A BYTES LINK_MB_S FACTOR TEXT: A's data rate ≥ FACTOR × the link.
target_link() {
  local t="$1 data rate $5" med r f
  med=$(tmed "$1")
  [ -n "$med" ] || { not_run "$t" "$1"; return 0; }
  r=$(mbps "$2" "$med")
  f=$(awk -v r="$r" -v l="$3" 'BEGIN { printf "%.2f", r / l }')
  out "| $t | $r MB/s = ${f}× the link | $(verdict "$f" ">=" "$4") |"
}

heading() {
  local bytes files
  bytes=$(data_bytes "$2") files=$(data_files "$2")
  out ""
  out "### $1"
  out ""
  out "Data to copy: $(mb "$bytes") in $files files (the primary's data directory without pg_wal). $ROUNDS round(s)."
  out ""
  DATA=$bytes
}

s1() {
  step "S1: uncapped veth"
  bench_psql 5432 checkpoint >/dev/null
  heading "S1: uncapped veth (pgclone --parallel default = $(nproc))" "$P"
  rounds S1 "$P" 5432 "${S1_METHODS[@]}"
  table "$DATA" "" "${S1_METHODS[@]}"
  targets
  target_time "pgclone default" pg_basebackup 0.8
  target_time "pgclone default" "pg_basebackup TLS" 0.6
  target_cpu "pgclone default" "pg_basebackup TLS" "$DATA"
  target_cpu "pgclone --data-channel tcp" pg_basebackup "$DATA"
}

s2() {
  step "S2: link capped at 200 MB/s, each TCP flow at 25 MB/s"
  bench_cap 1600mbit 200mbit   # tc: mbit = 10^6 bit/s, so 200 MB/s and 25 MB/s
  bench_psql 5432 checkpoint >/dev/null
  heading "S2: link 200 MB/s, 25 MB/s per TCP flow" "$P"
  rounds S2 "$P" 5432 "${S2_METHODS[@]}"
  bench_uncap
  table "$DATA" 200 "${S2_METHODS[@]}"
  out ""
  out "With compression (pgclone's default, lz4, zstd), data MB/s counts the data, not the (compressed) bytes on the wire; it can exceed the link."
  targets
  target_link "pgclone -p8 --compress none" "$DATA" 200 0.9 "≥ 90 % of the link"
  target_link "pgclone -p8" "$DATA" 200 1.5 "≥ 1.5× the link"
}

# The standby S3 makes of each clone: its own port, on 127.0.0.1 and a socket in the work directory (its
# copied pg_hba.conf admits the bench user there), streaming with the password of PGPASSWORD.
S3_STANDBY=(-R --replica-port 5440 --recovery-option listen_addresses=127.0.0.1 --application-name bench_standby
  --conninfo-password)
standby_psql() { as_user "$PG/psql" -X -At -v ON_ERROR_STOP=1 -h "$BENCH_WORK" -p 5440 -U postgres -d postgres -c "$1"; }
# wait_for SQL: until the standby answers t to SQL (60 s at most).
wait_for() {
  local i
  for i in $(seq 300); do
    [ "$(standby_psql "$1" 2>/dev/null)" = t ] && return 0
    sleep 0.2
  done
  pgc_die "the standby in $R never answered t to: $1"
}
# standby_cycle LOG: the clone in $R runs as a standby until it has made a restartpoint of a checkpoint the
# primary made after its start, then shuts down cleanly: a stale standby.
standby_cycle() {
  local lsn
  BENCH_SERVERS+=("$R")
  as_user "${BENCH_SRV[@]}" pg_ctl start -w -t 120 -D "$R" -l "$1" >/dev/null
  wait_for "select count(*) = 1 from pg_stat_wal_receiver where status = 'streaming'"
  bench_psql 5432 checkpoint >/dev/null
  lsn=$(bench_psql 5432 "select pg_current_wal_lsn()")
  wait_for "select pg_last_wal_replay_lsn() >= '$lsn'"
  standby_psql checkpoint >/dev/null
  as_user "${BENCH_SRV[@]}" pg_ctl stop -m fast -w -t 120 -D "$R" >/dev/null
}

# json_why LOG: pgclone's --json resync.why (why it did not re-sync by WAL), if it gave one; fails if not.
json_why() { grep -o '"why":"\([^"\\]\|\\.\)*"' "$1" | head -n1 | sed 's/^"why":"//; s/"$//' | grep .; }
# why_notes LINE...: after a table, the reasons pgclone gave for not going by WAL, if any.
why_notes() {
  [ $# -gt 0 ] || return 0
  out "" "Why not by WAL (--json resync.why):" ""
  local w
  for w in "$@"; do out "- $w"; done
}

s3() {
  local r log lsn0 wal changed full delta moved read readr wal_read method bytes fbytes kind_text why rows=() whys=() methods='' reads='' readsr=''
  case $S3_KIND in
    standby) kind_text="a standby stale by $DELTA s of pgbench writes" ;;
    never-started) kind_text="a clone never started, stale by $DELTA s of pgbench writes" ;;
  esac
  step "S3: re-sync of $kind_text"
  TIMES=() MOVED=() CPUS=() RSSC=() RSSA=() CHAN=()
  for r in $(seq "$ROUNDS"); do
    rm -rf "$R"
    # shellcheck disable=SC2086  # flags: words without blanks or globs
    run_method S3 "$r" full pgclone "$P" 5432 $S3_FLAGS "${S3_STANDBY[@]}"
    # never-started: the clone stays as the copy left it (backup_label, its WAL up to the backup's end)
    [ "$S3_KIND" = standby ] && standby_cycle "$BENCH_WORK/logs/S3.$r.standby.log"
    lsn0=$(bench_psql 5432 "select pg_current_wal_lsn()")
    log=$BENCH_WORK/logs/S3.$r.pgbench
    printf 'S3 round %s: pgbench writes for %s s\n' "$r" "$DELTA" >&2
    "${PGC_AS_USER[@]}" "$PG/pgbench" -n -c 2 -j 2 -T "$DELTA" ${BENCH_DELTA_TPS:+-R "$BENCH_DELTA_TPS"} \
      -h "$BENCH_NS_ADDR" -p 5432 -U postgres postgres >"$log.out" 2>"$log.err" &
    load_pid=$!
    wait "$load_pid" || { cat "$log.err" >&2; pgc_die "pgbench failed"; }
    load_pid=
    wal=$(bench_psql 5432 "select pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0')::bigint")
    bench_psql 5432 checkpoint >/dev/null
    changed=$(changed_pages "$P" "$R")   # untimed; the primary stays idle until the re-clone
    # shellcheck disable=SC2086
    run_method S3 "$r" delta pgclone "$P" 5432 $S3_FLAGS "${S3_STANDBY[@]}"   # into the same, now stale, clone
    full=${TIMES[full]##* } delta=${TIMES[delta]##* } moved=${MOVED[delta]##* }
    log=$BENCH_WORK/logs/S3.$r.delta.out
    fbytes=$(json_field bytes "$BENCH_WORK/logs/S3.$r.full.out")
    bytes=$(json_field bytes "$log") read=$(json_field read_primary_bytes "$log")
    readr=$(json_field read_replica_bytes "$log") wal_read=$(json_field read_wal_bytes "$log")
    method=$(grep -o '"method":"[a-z-]*"' "$log" | cut -d'"' -f4)
    [[ " $methods " == *" $method "* ]] || methods+=" $method"
    why=$(json_why "$log") && whys+=("Round $r, $method: $why")
    reads+=" $(ratio "$read" "$changed")" readsr+=" $(ratio "$readr" "$changed")"
    rows+=("| $r | $full | $(cpu_per_gb "${CPUS[full]##* }" "$fbytes") | $(kb_mb "${RSSC[full]##* }") / $(kb_mb "${RSSA[full]##* }") | $(mb "$wal") | $(mb "$changed") | $method | $delta | $(mb "$read") | $(ratio "$read" "$changed") | $(mb "$readr") | $(ratio "$readr" "$changed") | $(mb "${wal_read:-0}") | $(mb "$moved") | $(ratio "$moved" "$changed") | $(awk -v m="$moved" -v b="$bytes" 'BEGIN { printf "%.1f %%", 100 * m / b }') | $(ratio "$delta" "$full") | $(cpu_per_gb "${CPUS[delta]##* }" "$bytes") | $(kb_mb "${RSSC[delta]##* }") / $(kb_mb "${RSSA[delta]##* }") |")
  done
  rm -rf "$R"
  heading "S3: re-sync (pgclone${S3_FLAGS:+ $S3_FLAGS}) of $kind_text (-c 2${BENCH_DELTA_TPS:+, -R $BENCH_DELTA_TPS}), PostgreSQL $MAJOR${BENCH_INITDB:+ (initdb $BENCH_INITDB)}${PG_CONF:+ with ${PG_CONF//$'\n'/, }}" "$P"
  out "CPU s/GB: per GB of the clone's data (--json bytes), whatever was moved. Read on the primary, on the replica: what the re-sync read of the data files on each host (--json resync.read_primary_bytes, read_replica_bytes); WAL read to tell: the WAL it read to tell which pages changed (resync.read_wal_bytes: the primary's, on the primary, and the streamed or the replica's own)."
  out ""
  out "| round | full clone s | full CPU s/GB | full peak RSS client / agent MB | WAL written in between | pages changed | re-sync method | re-sync s | read on the primary | primary read ÷ changed | read on the replica | replica read ÷ changed | WAL read to tell | moved over the link | moved ÷ changed | moved ÷ data | re-sync time ÷ full clone | re-sync CPU s/GB | re-sync peak RSS client / agent MB |"
  out "| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for r in "${rows[@]}"; do out "$r"; done
  [ "$ROUNDS" -gt 1 ] && out "| median | $(median "${TIMES[full]}") | $(cpugb full "$DATA") | $(rss full) | | | | $(median "${TIMES[delta]}") | | $(median "$reads") | | $(median "$readsr") | | $(mb "$(median "${MOVED[delta]}")") | | | $(ratio "$(median "${TIMES[delta]}")" "$(median "${TIMES[full]}")") | $(cpugb delta "$DATA") | $(rss delta) |"
  why_notes "${whys[@]}"
  out "" "Targets (issue 21: every kind of stale directory), from the medians:" "" "| target | result | verdict |" "| --- | --- | ---: |"
  target_time delta full 0.15
  out "| read on the primary ≤ 2× the changed pages | $(median "$reads")× | $(verdict "$(median "$reads")" "<=" 2) |"
  out "| read on the replica ≤ 2× the changed pages | $(median "$readsr")× | $(verdict "$(median "$readsr")" "<=" 2) |"
  [[ ${methods# } == *' '* ]] && out "| one method in every round | ${methods# } | **missed** |"
  return 0
}

s4() {
  local S=$BENCH_WORK/small
  step "S4: a second primary with $TABLES small tables"
  bench_primary "$S" 5433
  bench_check_ssl 5433
  # One 8 KiB file per table; a COMMIT every 1000 tables keeps the lock table small.
  bench_psql 5433 "DO \$\$ BEGIN FOR i IN 1..$TABLES LOOP
                     EXECUTE format('CREATE TABLE t%s AS SELECT %s AS id', i, i);
                     IF i % 1000 = 0 THEN COMMIT; END IF;
                   END LOOP; END \$\$" >/dev/null
  bench_psql 5433 checkpoint >/dev/null
  heading "S4: $TABLES small tables (pgclone --parallel default = $(nproc))" "$S"
  rounds S4 "$S" 5433 "${S4_METHODS[@]}"
  table "$DATA" "" "${S4_METHODS[@]}"
  targets
  target_time "pgclone default" "local cp -a" 1.5
}

# S5: a former primary A (here, on the replica's side) rejoins as a standby of B (in the namespace: the primary's
# host, whose sshd pgclone logs into), the standby promoted in a failover. Ports: A 5441 on the veth's address
# here, B 5442 on the namespace's; both keep their socket in the work directory. The settings the two servers
# must not share (port, listen_addresses) go on pg_ctl's command line: pg_rewind and pgclone both bring B's
# configuration files to A.
S5_A_PORT=5441 S5_B_PORT=5442
S5_CONNINFO="user=postgres password=$PGPASSWORD application_name=bench_rejoin"
at_psql() { as_user "$PG/psql" -X -At -v ON_ERROR_STOP=1 -h "$1" -p "$2" -U postgres -d postgres -c "$3"; }
a_psql() { at_psql "$BENCH_HOST_ADDR" "$S5_A_PORT" "$1"; }
b_psql() { at_psql "$BENCH_NS_ADDR" "$S5_B_PORT" "$1"; }
s5_start_a() {   # DIR LOG: as a primary or a standby; -w waits for a standby's consistent point
  as_user "${BENCH_SRV[@]}" pg_ctl start -w -t 3600 -D "$1" -l "$2" \
    -o "-c port=$S5_A_PORT -c listen_addresses=$BENCH_HOST_ADDR" >/dev/null || { tail -n 20 "$2" >&2; pgc_die "A ($1) did not start"; }
}
s5_start_b() {   # DIR LOG
  in_ns "${BENCH_SRV[@]}" pg_ctl start -w -t 300 -D "$1" -l "$2" \
    -o "-c port=$S5_B_PORT -c listen_addresses=$BENCH_NS_ADDR" >/dev/null || { tail -n 20 "$2" >&2; pgc_die "B ($1) did not start"; }
}
s5_stop() { as_user "${BENCH_SRV[@]}" pg_ctl stop -m fast -w -t 600 -D "$1" >/dev/null; }
# s5_pgbench LOG ADDR PORT SECONDS: writes (-c 2, BENCH_DELTA_TPS) on one server; the WAL it wrote in S5_WAL.
s5_pgbench() {
  local lsn0
  lsn0=$(at_psql "$2" "$3" "select pg_current_wal_lsn()")
  "${PGC_AS_USER[@]}" "$PG/pgbench" -n -c 2 -j 2 -T "$4" ${BENCH_DELTA_TPS:+-R "$BENCH_DELTA_TPS"} \
    -h "$2" -p "$3" -U postgres postgres >"$1.out" 2>"$1.err" &
  load_pid=$!
  wait "$load_pid" || { cat "$1.err" >&2; pgc_die "pgbench on $2:$3 failed"; }
  load_pid=
  S5_WAL=$(at_psql "$2" "$3" "select pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0')::bigint")
}
# The pgbench tables' fingerprint: of each, the sum of its balance (delta), that sum weighted by the row's key,
# and the count (a page left as the old primary wrote it shows here). pgbench keeps the plain sums equal to
# one another; the weighted ones tell which rows hold them.
S5_FP="select concat_ws(' ',
  (select sum(abalance) || '/' || sum(aid::bigint * abalance) || '/' || count(*) from pgbench_accounts),
  (select sum(bbalance) || '/' || sum(bid::bigint * bbalance) || '/' || count(*) from pgbench_branches),
  (select sum(tbalance) || '/' || sum(tid::bigint * tbalance) || '/' || count(*) from pgbench_tellers),
  (select coalesce(sum(delta), 0) || '/' || coalesce(sum(aid::bigint * delta), 0) || '/' || count(*) from pgbench_history))"

# s5_setup ROUND A B: the failover state, both servers stopped cleanly. A: a copy of the scenario's primary (P,
# stopped), a primary here; B: its standby (pg_basebackup in the namespace), streaming until caught up, then
# promoted (its walreceiver ends: it sees nothing more of A); A writes for S5_OLD s and is shut down; B writes
# for S5_NEW s and is shut down. Sets S5_WAL_A, S5_WAL_B (WAL each wrote after the fork) and S5_CHANGED (bytes
# of B's pages that A lacks or has otherwise: what an ideal rejoin moves).
s5_setup() {
  local r=$1 A=$2 B=$3 log=$BENCH_WORK/logs/S5.$1 lsn ok
  printf 'S5 round %s: failover state (copy of the primary, standby by pg_basebackup, promote, %s s on A, %s s on B)\n' \
    "$r" "$S5_OLD" "$S5_NEW" >&2
  rm -rf "$A" "$B"
  as_user cp -a "$P" "$A"
  as_user tee -a "$A/pg_hba.conf" >/dev/null <<EOH
hostssl all         all  $BENCH_NS_ADDR/32 scram-sha-256
hostssl replication all  $BENCH_NS_ADDR/32 scram-sha-256
host    all         all  $BENCH_NS_ADDR/32 scram-sha-256
host    replication all  $BENCH_NS_ADDR/32 scram-sha-256
EOH
  # Both tools need A's WAL from the last checkpoint before the fork, pgclone also B's since the fork: 60 s of
  # pgbench at full speed on a 5 GB data set can write more than 1 GB of it.
  [[ $PG_CONF == *wal_keep_size* ]] || echo "wal_keep_size = 4GB" | as_user tee -a "$A/postgresql.conf" >/dev/null
  s5_start_a "$A" "$log.setup.a.log"
  in_ns "$PG/pg_basebackup" -h "$BENCH_HOST_ADDR" -p "$S5_A_PORT" -U postgres -X stream -c fast -D "$B" \
    >"$log.basebackup.out" 2>&1 || { cat "$log.basebackup.out" >&2; pgc_die "pg_basebackup of B failed"; }
  as_user touch "$B/standby.signal"
  echo "primary_conninfo = 'host=$BENCH_HOST_ADDR port=$S5_A_PORT user=postgres password=$PGPASSWORD application_name=bench_b'" |
    as_user tee -a "$B/postgresql.auto.conf" >/dev/null
  s5_start_b "$B" "$log.setup.b.log"
  lsn=$(a_psql "select pg_current_wal_lsn()") ok=
  for _ in $(seq 600); do
    ok=$(a_psql "select count(*) = 1 from pg_stat_replication where application_name = 'bench_b'
                 and state = 'streaming' and replay_lsn >= '$lsn'")
    [ "$ok" = t ] && break
    sleep 0.2
  done
  [ "$ok" = t ] || pgc_die "B never streamed from A up to $lsn (logs: $log.setup.*.log)"
  as_user "${BENCH_SRV[@]}" pg_ctl promote -w -t 120 -D "$B" >/dev/null
  s5_pgbench "$log.pgbench.a" "$BENCH_HOST_ADDR" "$S5_A_PORT" "$S5_OLD"
  S5_WAL_A=$S5_WAL
  s5_stop "$A"
  s5_pgbench "$log.pgbench.b" "$BENCH_NS_ADDR" "$S5_B_PORT" "$S5_NEW"
  S5_WAL_B=$S5_WAL
  s5_stop "$B"
  S5_CHANGED=$(changed_pages "$B" "$A")
}

# s5_rejoin ROUND VARIANT A B: B running, A stopped; one timed rejoin of A by VARIANT (pg_rewind or pgclone),
# from the tool's start to A streaming from B with its replay at B's current LSN (B idle). Sets S5_T (all),
# S5_TOOL (the tool alone), S5_EQ (yes/no: A's pgbench tables as B's); pg_rewind: S5_COPY (bytes it said it
# would copy), S5_REFUSED (its error line if it refused; A is then not started).
s5_rejoin() {
  local r=$1 v=$2 A=$3 B=$4 R=$3 log=$BENCH_WORK/logs/S5.$1.$2 t0 lsn ok='' end fa fb
  S5_REFUSED='' S5_COPY='' S5_EQ=-
  printf 'S5 round %s: %-10s' "$r" "$v" >&2
  t0=$EPOCHREALTIME
  if [ "$v" = pg_rewind ]; then
    BENCH_MAY_FAIL=1 bench_timed "$log" "$PG/pg_rewind" --target-pgdata "$A" --progress \
      --source-server "host=$BENCH_NS_ADDR port=$S5_B_PORT user=postgres dbname=postgres"
    S5_TOOL=$BENCH_T
    S5_COPY=$(sed -n 's/.*need to copy \([0-9]*\) MB.*/\1/p' "$log.err" | head -n1)
    [ -z "$S5_COPY" ] || S5_COPY=$((S5_COPY * 1048576))
    if [ "$BENCH_RC" -ne 0 ]; then
      S5_REFUSED=$(grep -m1 'error:' "$log.err" || tail -n1 "$log.err")
      S5_T=''
      printf '%8s s: refused: %s\n' "$S5_TOOL" "$S5_REFUSED" >&2
      return 0
    fi
    as_user touch "$A/standby.signal"
    echo "primary_conninfo = 'host=$BENCH_NS_ADDR port=$S5_B_PORT $S5_CONNINFO'" | as_user tee -a "$A/postgresql.auto.conf" >/dev/null
  else
    # shellcheck disable=SC2086  # flags: words without blanks or globs
    cmd_for pgclone "$B" "$S5_B_PORT" -R --application-name bench_rejoin --conninfo-password $S5_FLAGS
    bench_timed "$log" "${CMD[@]}"
    S5_TOOL=$BENCH_T
  fi
  s5_start_a "$A" "$log.a.log"
  end=$((SECONDS + 3600))
  while [ "$SECONDS" -lt "$end" ]; do
    lsn=$(b_psql "select pg_current_wal_lsn()")
    ok=$(a_psql "select pg_last_wal_replay_lsn() >= '$lsn' and exists (select from pg_stat_wal_receiver where status = 'streaming')" 2>/dev/null || true)
    [ "$ok" = t ] && break
    sleep 0.05
  done
  [ "$ok" = t ] || pgc_die "S5 $v: A never caught up with B (log: $log.a.log)"
  S5_T=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
  printf '%8s s (the tool %s s)\n' "$S5_T" "$S5_TOOL" >&2
  fa=$(a_psql "$S5_FP") fb=$(b_psql "$S5_FP")   # untimed; B idle
  printf 'A: %s\nB: %s\n' "$fa" "$fb" >"$log.fingerprint"
  if [ "$fa" = "$fb" ]; then S5_EQ=yes; else S5_EQ=no; pgc_log "S5 $v: A's data differ from B's: $fa vs $fb"; fi
  return 0
}

s5() {
  local A=$BENCH_WORK/s5a B=$BENCH_WORK/s5b r v log hints first why eqs='' rows=() whys=() refused='' methods=''
  local -A T TT
  local ta tb ratio method read readr wal_read moved copy pr_t pr_eq pc_t pc_eq ratios=''
  step "S5: a former primary rejoins after a failover (pg_rewind and pgclone)"
  TIMES=()
  # pg_rewind needs data checksums or wal_log_hints; pgclone reads A's own WAL then (wal-blocks), else compares pages.
  hints=$(bench_psql 5432 "select current_setting('data_checksums') || ' ' || current_setting('wal_log_hints')")
  heading "S5: a former primary rejoins after a failover: pg_rewind against pgclone${S5_FLAGS:+ $S5_FLAGS} ($S5_OLD s of pgbench on the old primary after the promotion, $S5_NEW s on the new one, -c 2${BENCH_DELTA_TPS:+, -R $BENCH_DELTA_TPS}), PostgreSQL $MAJOR${BENCH_INITDB:+ (initdb $BENCH_INITDB)}${PG_CONF:+ with ${PG_CONF//$'\n'/, }}$([[ $PG_CONF == *wal_keep_size* ]] || echo ", wal_keep_size = 4GB"); data checksums ${hints% *}, wal_log_hints ${hints#* }" "$P"
  as_user "${BENCH_SRV[@]}" pg_ctl stop -m fast -w -t 600 -D "$P" >/dev/null   # A is its copy; back at the end
  BENCH_SERVERS+=("$A" "$B")
  for r in $(seq "$ROUNDS"); do
    s5_setup "$r" "$A" "$B"
    as_user cp -a "$A" "$A.start"
    as_user cp -a "$B" "$B.start"
    # Each variant from the same state; they take turns going first.
    if [ $((r % 2)) = 1 ]; then first=pg_rewind; set -- pg_rewind pgclone; else first=pgclone; set -- pgclone pg_rewind; fi
    for v in "$@"; do
      if [ "$v" != "$first" ]; then
        rm -rf "$A" "$B"
        as_user mv "$A.start" "$A"
        as_user mv "$B.start" "$B"
      fi
      sync   # untimed: no write-back of the copies above left for the timed run
      s5_start_b "$B" "$BENCH_WORK/logs/S5.$r.$v.b.log"
      s5_rejoin "$r" "$v" "$A" "$B"
      if [ "$v" = pgclone ]; then
        left=$(bench_leftovers "$S5_B_PORT")
        [ -z "$left" ] || { pgc_log "WARNING: left behind after S5 pgclone: $left"; out "" "**Left behind after S5 round $r (pgclone):** $left"; }
      fi
      [ -f "$A/postmaster.pid" ] && s5_stop "$A"
      s5_stop "$B"
      T[$v]=$S5_T TT[$v]=$S5_TOOL
      if [ "$v" = pg_rewind ]; then pr_eq=$S5_EQ copy=$S5_COPY; [ -n "$S5_REFUSED" ] && refused=$S5_REFUSED; else pc_eq=$S5_EQ; fi
    done
    log=$BENCH_WORK/logs/S5.$r.pgclone.out
    method=$(grep -o '"method":"[a-z-]*"' "$log" | cut -d'"' -f4)
    [[ " $methods " == *" $method "* ]] || methods+=" $method"
    why=$(json_why "$log") && whys+=("Round $r, $method: $why")
    read=$(json_field read_primary_bytes "$log") readr=$(json_field read_replica_bytes "$log")
    wal_read=$(json_field read_wal_bytes "$log") moved=$(json_field moved_bytes "$log")
    eqs+=" $pc_eq"
    pc_t=${T[pgclone]} pr_t=${T[pg_rewind]}
    TIMES[pgclone]+=" $pc_t"
    if [ -n "$pr_t" ]; then
      TIMES[pg_rewind]+=" $pr_t"
      ratio=$(ratio "$pc_t" "$pr_t") ratios+=" $ratio"
      pr_t="$pr_t | ${TT[pg_rewind]} | $(mb "${copy:-0}") | $pr_eq"
    else
      ratio=- pr_t="refused | ${TT[pg_rewind]} | - | -"
    fi
    rows+=("| $r | $first | $(mb "$S5_WAL_A") | $(mb "$S5_WAL_B") | $(mb "$S5_CHANGED") | $pr_t | $pc_t | ${TT[pgclone]} | $method | $(mb "$read") | $(mb "$readr") | $(mb "${wal_read:-0}") | $(mb "$moved") | $pc_eq | $ratio |")
    rm -rf "$A.start" "$B.start"
  done
  rm -rf "$A" "$B"
  in_ns "${BENCH_SRV[@]}" pg_ctl start -w -t 600 -D "$P" -l "$P.log" >/dev/null
  out "Each round builds one failover state and rejoins the old primary A from it twice, once by each tool (copies of both stopped directories restore it; the tools take turns going first). Timed from the tool's start until A streams from B with its replay at B's current LSN (B idle): pg_rewind --progress, then standby.signal and primary_conninfo, then A started; pgclone -R (re-sync), then A started. Pages differing: B's pages A lacks or has otherwise (what an ideal rejoin moves). pg_rewind copied: its \"need to copy\". Read on B, on A: pgclone's --json resync.read_primary_bytes, read_replica_bytes; WAL read to tell: resync.read_wal_bytes. Data equal: the pgbench tables' sums, key-weighted sums and counts on A are B's."
  [ -n "$refused" ] && out "" "pg_rewind refused: \`$refused\`"
  out ""
  out "| round | first | WAL A wrote after the fork | WAL B wrote after the fork | pages differing | pg_rewind s (rewind + recovery to caught-up) | of which pg_rewind | pg_rewind copied | pg_rewind data equal | pgclone s (re-sync + recovery to caught-up) | of which pgclone | pgclone method | read on B | read on A | WAL read to tell | moved over the link | pgclone data equal | pgclone ÷ pg_rewind |"
  out "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: |"
  for r in "${rows[@]}"; do out "$r"; done
  ta=$(tmed pgclone) tb=$(tmed pg_rewind)
  [ "$ROUNDS" -gt 1 ] && out "| median | | | | | ${tb:-refused} | | | | $ta | | | | | | | | $([ -n "$tb" ] && ratio "$ta" "$tb" || echo -) |"
  why_notes "${whys[@]}"
  out "" "Targets (issue 21), from the medians:" "" "| target | result | verdict |" "| --- | --- | ---: |"
  if [ -n "$tb" ]; then
    target_time pgclone pg_rewind 0.5
  else
    out "| pgclone time ≤ 0.5× pg_rewind's | pg_rewind refused | - |"
  fi
  if [[ $eqs == *no* ]]; then v="**missed**"; else v=met; fi
  if [ -n "$refused" ]; then
    out "| without data checksums and wal_log_hints, where pg_rewind refuses, pgclone rejoins with the new primary's data | pgclone by${methods}, data equal:${eqs} | $v |"
  else
    out "| pgclone's standby has the new primary's data | by${methods}, data equal:${eqs} | $v |"
  fi
  [[ ${methods# } == *' '* ]] && out "| one method in every round | ${methods# } | **missed** |"
  return 0
}

for sc in $SCENARIOS; do
  case $sc in
    S1) s1; port=5432 ;; S2) s2; port=5432 ;; S3) s3; port=5432 ;; S4) s4; port=5433 ;; S5) s5; port=5432 ;;
    *) pgc_die "unknown scenario $sc (BENCH_SCENARIOS takes S1 S2 S3 S4 S5)" ;;
  esac
  left=$(bench_leftovers "$port")
  if [ -n "$left" ]; then
    pgc_log "WARNING: left behind after $sc: $left"
    out "" "**Left behind after $sc:** $left"
  fi
done

if [ "$record" = 1 ]; then
  {
    printf '\n## %s, pgclone %s%s\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')" "$rev" "${BENCH_NOTE:+: $BENCH_NOTE}"
    # shellcheck disable=SC2016
    printf -- '- command: `%s`\n' "$invocation"
    printf -- '- machine: %s CPUs (%s), %s GiB memory, Linux %s, %s\n' "$(nproc)" \
      "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)" \
      "$(awk '/^MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)" "$(uname -r)" "$("${BENCH_SRV[@]}" postgres --version)"
    printf -- '- pgclone: %s\n' "$("$BIN" --version)"
    cat "$report"
  } >>docs/BENCHMARKS.md
  pgc_log "appended to docs/BENCHMARKS.md"
fi
