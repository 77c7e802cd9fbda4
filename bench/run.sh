#!/usr/bin/env bash
# Benchmark: pgclone against pg_basebackup (clear text and TLS) and against a plain local copy (issues 4, 12).
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
#   S3  re-sync of a stale standby (issue 14): pgclone (default flags, plus -R and the standby's own port)
#       clones into a directory; the clone runs here as a standby until it has replayed a checkpoint made after
#       its start and made a restartpoint of it, and is shut down cleanly (untimed); pgbench writes for
#       BENCH_DELTA_SECONDS; pgclone re-runs into the same directory. Shows the re-sync's method (--json
#       resync.method: wal-summaries; page-lsns or page-hashes where the primary keeps no WAL summaries, with
#       data checksums on or off: see BENCH_INITDB), the bytes it
#       read on the primary (resync.read_primary_bytes) and moved (moved_bytes) against the bytes of the 8 KiB
#       pages that really changed (counted, untimed, just before the re-sync on the idle primary after a
#       CHECKPOINT), time against the full clone, the WAL the primary wrote in between, CPU s/GB and peak RSS.
#       Targets: by WAL summaries, time ≤ 0.15× the full clone and read on the primary ≤ 2× the changed
#       pages; by page LSNs or page hashes, time ≤ 0.4× the full clone.
#   S4  many small files: a second primary with BENCH_TABLES one-row tables (one 8 KiB file each): local cp -a,
#       pg_basebackup, pgclone default, pgclone rsync. Target: pgclone default time ≤ 1.5× local cp -a's.
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
#   BENCH_DELTA_TPS=N        S3: limit those writes to N transactions/s (pgbench -R; default: full speed)
#   BENCH_TABLES=100000      S4: number of small tables
#   BENCH_SCENARIOS="S1 S2 S3 S4"   which scenarios to run
#   BENCH_S1_METHODS=...     S1's methods instead of the list above: "label|kind|flags" entries separated by
#   BENCH_S2_METHODS=...       ";" or newlines, e.g. 'pg_basebackup|bb|;pgclone default|pgclone|' (to run
#   BENCH_S4_METHODS=...       only what a given pgclone has, or one method alone)
#   BENCH_S3_FLAGS=...       S3: pgclone's flags for both runs (default: none)
#   BENCH_PGCLONE=PATH       benchmark this pgclone binary (and the pgclone-agent beside it) instead of building
#                            them (cargo build --release)
#   BENCH_NOTE=...           a remark for the --record heading (e.g. "busy machine")
#   BENCH_TMP=/var/tmp       where the work directory (primaries, clones; about 3x the data) is made
#   BENCH_KEEP=1             keep the work directory (logs of every run) instead of removing it
#
# Quick functional run (a few minutes):
#   BENCH_SCALE=10 BENCH_ROUNDS=1 BENCH_DELTA_SECONDS=20 BENCH_TABLES=20000 bench/run.sh
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
         BENCH_S2_METHODS BENCH_S4_METHODS BENCH_S3_FLAGS BENCH_PGCLONE BENCH_NOTE BENCH_TMP BENCH_KEEP; do
  [ -n "${!v:-}" ] && invocation+="$v=$(shell_quote "${!v}") "
done
invocation+="bench/run.sh${1:+ $1}"
SCALE=${BENCH_SCALE:-130} ROUNDS=${BENCH_ROUNDS:-3} DELTA=${BENCH_DELTA_SECONDS:-120} TABLES=${BENCH_TABLES:-100000}
SCENARIOS=${BENCH_SCENARIOS:-S1 S2 S3 S4}
S3_FLAGS=${BENCH_S3_FLAGS:-}
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

s3() {
  local r log lsn0 wal changed full delta moved read method bytes fbytes rows=() methods='' reads=''
  step "S3: re-sync of a standby stale by $DELTA s of pgbench writes"
  TIMES=() MOVED=() CPUS=() RSSC=() RSSA=() CHAN=()
  for r in $(seq "$ROUNDS"); do
    rm -rf "$R"
    # shellcheck disable=SC2086  # flags: words without blanks or globs
    run_method S3 "$r" full pgclone "$P" 5432 $S3_FLAGS "${S3_STANDBY[@]}"
    standby_cycle "$BENCH_WORK/logs/S3.$r.standby.log"
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
    method=$(grep -o '"method":"[a-z-]*"' "$log" | cut -d'"' -f4)
    [[ " $methods " == *" $method "* ]] || methods+=" $method"
    reads+=" $(ratio "$read" "$changed")"
    rows+=("| $r | $full | $(cpu_per_gb "${CPUS[full]##* }" "$fbytes") | $(kb_mb "${RSSC[full]##* }") / $(kb_mb "${RSSA[full]##* }") | $(mb "$wal") | $(mb "$changed") | $method | $delta | $(mb "$read") | $(ratio "$read" "$changed") | $(mb "$moved") | $(ratio "$moved" "$changed") | $(awk -v m="$moved" -v b="$bytes" 'BEGIN { printf "%.1f %%", 100 * m / b }') | $(ratio "$delta" "$full") | $(cpu_per_gb "${CPUS[delta]##* }" "$bytes") | $(kb_mb "${RSSC[delta]##* }") / $(kb_mb "${RSSA[delta]##* }") |")
  done
  rm -rf "$R"
  heading "S3: re-sync (pgclone${S3_FLAGS:+ $S3_FLAGS}) of a standby stale by $DELTA s of pgbench writes (-c 2${BENCH_DELTA_TPS:+, -R $BENCH_DELTA_TPS}), PostgreSQL $MAJOR${BENCH_INITDB:+ (initdb $BENCH_INITDB)}${PG_CONF:+ with ${PG_CONF//$'\n'/, }}" "$P"
  out "CPU s/GB: per GB of the clone's data (--json bytes), whatever was moved. Read on the primary: what the re-sync read of the primary's files (--json resync.read_primary_bytes)."
  out ""
  out "| round | full clone s | full CPU s/GB | full peak RSS client / agent MB | WAL written in between | pages changed | re-sync method | re-sync s | read on the primary | read ÷ changed | moved over the link | moved ÷ changed | moved ÷ data | re-sync time ÷ full clone | re-sync CPU s/GB | re-sync peak RSS client / agent MB |"
  out "| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for r in "${rows[@]}"; do out "$r"; done
  [ "$ROUNDS" -gt 1 ] && out "| median | $(median "${TIMES[full]}") | $(cpugb full "$DATA") | $(rss full) | | | | $(median "${TIMES[delta]}") | | $(median "$reads") | $(mb "$(median "${MOVED[delta]}")") | | | $(ratio "$(median "${TIMES[delta]}")" "$(median "${TIMES[full]}")") | $(cpugb delta "$DATA") | $(rss delta) |"
  out "" "Targets (issue 14), from the medians:" "" "| target | result | verdict |" "| --- | --- | ---: |"
  case ${methods# } in
    wal-summaries)
      target_time delta full 0.15
      out "| read on the primary ≤ 2× the changed pages | $(median "$reads")× | $(verdict "$(median "$reads")" "<=" 2) |" ;;
    page-hashes | page-lsns) target_time delta full 0.4 ;;
    *) out "| by one method in every round | ${methods# } | **missed** |" ;;
  esac
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

for sc in $SCENARIOS; do
  case $sc in
    S1) s1; port=5432 ;; S2) s2; port=5432 ;; S3) s3; port=5432 ;; S4) s4; port=5433 ;;
    *) pgc_die "unknown scenario $sc (BENCH_SCENARIOS takes S1 S2 S3 S4)" ;;
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
