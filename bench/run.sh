#!/usr/bin/env bash
# Benchmark: pgclone against pg_basebackup and against a plain local copy (issue 4).
#
#   bench/run.sh            run every scenario, print one markdown table per scenario
#   bench/run.sh --record   ... and append the tables, the exact command, date, machine and pgclone's git
#                           revision to docs/BENCHMARKS.md
#
# Root only (network namespaces, tc). PostgreSQL 15, sshd and pgclone run as the unprivileged user
# pgclonetest (scripts/lib.sh). The primary lives on "its own host": a network namespace behind a veth pair
# (10.231.x.y/30), PostgreSQL and an sshd bound to its address; the replica side (pg_basebackup, pgclone)
# runs in the root namespace, so every byte crosses a real (virtual) link, never loopback. The primary is
# idle while a method is timed; a CHECKPOINT runs (untimed) before every timed run; each clone goes into a
# fresh directory, removed afterwards; methods take turns within each round (interleaved) and the tables show
# medians over the rounds. A failing run aborts the whole benchmark with its command and stderr. In round 1
# every clone is also checked (untimed): `pgclone verify` for pgclone's, pg_verifybackup for pg_basebackup's.
#
# Methods: "local cp -a" copies what a clone moves (the data directory but pg_wal and postmaster.pid) on this
# disk, then `sync -f` (pgclone and pg_basebackup fsync what they write): the limit. Caches cannot be dropped
# on a shared machine, so the primary's files are in the page cache for every method alike.
# pg_basebackup: `-X stream -c fast` (pgclone also asks for a fast checkpoint), plain TCP over the veth.
# pgclone: over ssh (encrypted) to the namespace; native transport with --remote-pgclone pointing at a copy
# of the freshly built binary; rsync transport with its throwaway daemon.
#
# Scenarios:
#   S1  uncapped veth. local cp, pg_basebackup, pgclone rsync / native / native lz4 / native zstd, each with
#       pgclone's default --parallel (number of CPUs).
#   S2  a link that caps the whole link at 200 MB/s and each TCP flow at 25 MB/s (htb + u32 hash on the
#       veth's egress in the namespace, i.e. primary -> replica; see bench_cap in bench/lib.sh):
#       pg_basebackup, pgclone native --parallel 8 (also with --compress zstd: "data MB/s" is data bytes per
#       second, not wire bytes), pgclone rsync --parallel 8; the share of the 200 MB/s link each achieved.
#   S3  delta re-clone: pgclone native clones into a directory, pgbench writes for BENCH_DELTA_SECONDS, then
#       pgclone native re-runs into the same directory. Shows bytes moved (--json moved_bytes) against the
#       bytes of the 8 KiB pages that really changed (counted, untimed, just before the re-clone on the idle
#       primary after a CHECKPOINT), time against the full clone, and the WAL the primary wrote in between.
#   S4  many small files: a second primary with BENCH_TABLES one-row tables (one 8 KiB file each): local cp,
#       pg_basebackup, pgclone native, pgclone rsync.
#
# Settings (environment):
#   BENCH_SCALE=130          pgbench scale of the primary (130: about 2 GB to copy)
#   BENCH_ROUNDS=3           rounds per scenario (medians over them)
#   BENCH_DELTA_SECONDS=120  S3: seconds of pgbench writes between clone and re-clone
#   BENCH_DELTA_TPS=N        S3: limit those writes to N transactions/s (pgbench -R; default: full speed)
#   BENCH_TABLES=100000      S4: number of small tables
#   BENCH_SCENARIOS="S1 S2 S3 S4"   which scenarios to run
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
for v in BENCH_SCALE BENCH_ROUNDS BENCH_DELTA_SECONDS BENCH_DELTA_TPS BENCH_TABLES BENCH_SCENARIOS BENCH_NOTE BENCH_TMP BENCH_KEEP; do
  [ -n "${!v:-}" ] && invocation+="$v=$(shell_quote "${!v}") "
done
invocation+="bench/run.sh${1:+ $1}"
SCALE=${BENCH_SCALE:-130} ROUNDS=${BENCH_ROUNDS:-3} DELTA=${BENCH_DELTA_SECONDS:-120} TABLES=${BENCH_TABLES:-100000}
SCENARIOS=${BENCH_SCENARIOS:-S1 S2 S3 S4}
PG=$PGC_PG15_BIN

pgc_is_root || pgc_die "run as root: the benchmark makes a network namespace and shapes its link with tc"
pgc_ensure_base || pgc_die "missing dependencies (see above)"
cargo build --release
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
# A copy: other people's builds may replace target/release/pgclone during the benchmark.
cp "${CARGO_TARGET_DIR:-target}/release/pgclone" "$BENCH_WORK/bin/pgclone"
chmod 755 "$BENCH_WORK/bin/pgclone"
BIN=$BENCH_WORK/bin/pgclone
rev=$(git rev-parse --short HEAD)
[ -z "$(git status --porcelain -- src Cargo.toml Cargo.lock)" ] || rev="$rev + uncommitted changes in src/"
R=$BENCH_WORK/clones/replica   # every clone's target: absent before each run
report=$BENCH_WORK/report.md
out() { printf '%s\n' "$@" | tee -a "$report"; }   # one line per argument, to stdout and the report

step() { printf '\n==> %s\n' "$*" >&2; }

step "primary: PostgreSQL 15 in a network namespace, pgbench scale $SCALE, sshd"
bench_netns_up
P=$BENCH_WORK/primary
bench_primary "$P" 5432
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
    bb) CMD=("$PG/pg_basebackup" -h "$BENCH_NS_ADDR" -p "$port" -U postgres -X stream -c fast -D "$R") ;;
    pgclone) CMD=("$BIN" --pghost "$BENCH_NS_ADDR" --pgport "$port" --pguser postgres --primary-pgdata "$src"
                  --replica-pgdata "$R" --ssh-user "$BENCH_USER" --ssh-port "$BENCH_SSH_PORT"
                  --ssh-config "$BENCH_WORK/ssh/config" --progress none --json "$@") ;;
  esac
}
NATIVE=(--transport native --remote-pgclone "$BIN")

# run_method SCENARIO ROUND LABEL KIND SRC PORT [flags]: one timed run into $R (the caller empties it or,
# for a re-clone, not); adds the time to TIMES[LABEL] (and pgclone's moved bytes to MOVED[LABEL]); in
# round 1 verifies the clone.
declare -A TIMES MOVED
run_method() {
  local sc=$1 round=$2 label=$3 kind=$4 src=$5 port=$6 log
  shift 6
  log=$BENCH_WORK/logs/$sc.$round.${label//[^a-z0-9]/_}
  cmd_for "$kind" "$src" "$port" "$@"
  bench_psql "$port" checkpoint >/dev/null
  printf '%s round %s: %-22s' "$sc" "$round" "$label" >&2
  bench_timed "$log" "${CMD[@]}"
  printf '%8s s\n' "$BENCH_T" >&2
  TIMES[$label]+=" $BENCH_T"
  [ "$kind" = pgclone ] && MOVED[$label]+=" $(json_field moved_bytes "$log.out")"
  if [ "$round" = 1 ]; then
    case $kind in
      pgclone) as_user "$BIN" verify "$R" >"$log.verify" 2>&1 || { cat "$log.verify" >&2; pgc_die "pgclone verify $R failed ($label)"; } ;;
      bb) as_user "$PG/pg_verifybackup" -q "$R" >"$log.verify" 2>&1 || { cat "$log.verify" >&2; pgc_die "pg_verifybackup $R failed"; } ;;
    esac
  fi
  return 0
}

# rounds SCENARIO SRC PORT "LABEL|KIND|FLAGS"...: every method once per round, in turn, BENCH_ROUNDS rounds.
rounds() {
  local sc=$1 src=$2 port=$3 r m label kind flags
  shift 3
  TIMES=() MOVED=()
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

# table BYTES LINK_MB_S "LABEL|..."...: the markdown table of the last rounds(); LINK_MB_S adds the link share.
table() {
  local bytes=$1 link=$2 m label med bb cp hdr
  shift 2
  bb=$(median "${TIMES[pg_basebackup]}")
  cp=${TIMES[local cp -a]:+$(median "${TIMES[local cp -a]}")}
  hdr="| method | median s | each round s | data MB/s | time ÷ pg_basebackup |"
  [ -n "$cp" ] && hdr+=" time ÷ local copy |"
  [ -n "$link" ] && hdr+=" share of the $link MB/s link |"
  out "$hdr"
  out "$(awk -F'|' '{ s = "| --- |"; for (i = 3; i < NF; i++) s = s " ---: |"; print s }' <<<"$hdr")"
  for m in "$@"; do
    label=${m%%|*}
      med=$(median "${TIMES[$label]}")
    row="| $label | $med |${TIMES[$label]} | $(mbps "$bytes" "$med") | $(ratio "$med" "$bb") |"
    [ -n "$cp" ] && row+=" $(ratio "$med" "$cp") |"
    [ -n "$link" ] && row+=" $(awk -v r="$(mbps "$bytes" "$med")" -v l="$link" 'BEGIN { printf "%.0f %%", 100 * r / l }') |"
    out "$row"
  done
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

S1_METHODS=("local cp -a|cp|" "pg_basebackup|bb|" "pgclone rsync|pgclone|--transport rsync"
  "pgclone native|pgclone|${NATIVE[*]}" "pgclone native lz4|pgclone|${NATIVE[*]} --compress lz4"
  "pgclone native zstd|pgclone|${NATIVE[*]} --compress zstd")
S2_METHODS=("pg_basebackup|bb|" "pgclone native -p8|pgclone|${NATIVE[*]} --parallel 8"
  "pgclone native -p8 zstd|pgclone|${NATIVE[*]} --parallel 8 --compress zstd"
  "pgclone rsync -p8|pgclone|--transport rsync --parallel 8")
S4_METHODS=("local cp -a|cp|" "pg_basebackup|bb|" "pgclone native|pgclone|${NATIVE[*]}"
  "pgclone rsync|pgclone|--transport rsync")

s1() {
  step "S1: uncapped veth"
  bench_psql 5432 checkpoint >/dev/null
  heading "S1: uncapped veth (pgclone --parallel default = $(nproc))" "$P"
  rounds S1 "$P" 5432 "${S1_METHODS[@]}"
  table "$DATA" "" "${S1_METHODS[@]}"
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
  out "With --compress zstd, data MB/s counts the data, not the (compressed) bytes on the wire; it can exceed the link."
}

s3() {
  local r log lsn0 wal changed full delta moved bytes rows=()
  step "S3: delta re-clone after $DELTA s of pgbench writes"
  TIMES=() MOVED=()
  for r in $(seq "$ROUNDS"); do
    rm -rf "$R"
    run_method S3 "$r" full pgclone "$P" 5432 "${NATIVE[@]}"
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
    run_method S3 "$r" delta pgclone "$P" 5432 "${NATIVE[@]}"   # into the same, now stale, clone
    full=${TIMES[full]##* } delta=${TIMES[delta]##* } moved=${MOVED[delta]##* }
    bytes=$(json_field bytes "$BENCH_WORK/logs/S3.$r.delta.out")
    rows+=("| $r | $full | $(mb "$wal") | $(mb "$changed") | $delta | $(mb "$moved") | $(ratio "$moved" "$changed") | $(awk -v m="$moved" -v b="$bytes" 'BEGIN { printf "%.1f %%", 100 * m / b }') | $(ratio "$delta" "$full") |")
  done
  rm -rf "$R"
  heading "S3: delta re-clone (pgclone native) after $DELTA s of pgbench writes (-c 2${BENCH_DELTA_TPS:+, -R $BENCH_DELTA_TPS})" "$P"
  out "| round | full clone s | WAL written in between | pages changed | re-clone s | moved over the link | moved ÷ changed | moved ÷ data | re-clone time ÷ full clone |"
  out "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for r in "${rows[@]}"; do out "$r"; done
  [ "$ROUNDS" -gt 1 ] && out "| median | $(median "${TIMES[full]}") | | | $(median "${TIMES[delta]}") | $(mb "$(median "${MOVED[delta]}")") | | | $(ratio "$(median "${TIMES[delta]}")" "$(median "${TIMES[full]}")") |"
  return 0
}

s4() {
  local S=$BENCH_WORK/small
  step "S4: a second primary with $TABLES small tables"
  bench_primary "$S" 5433
  # One 8 KiB file per table; a COMMIT every 1000 tables keeps the lock table small.
  bench_psql 5433 "DO \$\$ BEGIN FOR i IN 1..$TABLES LOOP
                     EXECUTE format('CREATE TABLE t%s AS SELECT %s AS id', i, i);
                     IF i % 1000 = 0 THEN COMMIT; END IF;
                   END LOOP; END \$\$" >/dev/null
  bench_psql 5433 checkpoint >/dev/null
  heading "S4: $TABLES small tables (pgclone --parallel default = $(nproc))" "$S"
  rounds S4 "$S" 5433 "${S4_METHODS[@]}"
  table "$DATA" "" "${S4_METHODS[@]}"
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
      "$(awk '/^MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)" "$(uname -r)" "$("$PG/postgres" --version)"
    printf -- '- pgclone: %s\n' "$("$BIN" --version)"
    cat "$report"
  } >>docs/BENCHMARKS.md
  pgc_log "appended to docs/BENCHMARKS.md"
fi
