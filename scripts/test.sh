#!/usr/bin/env bash
# THE test command: install (root) or check (non-root) dependencies, then run every unit and
# integration test. Exits non-zero if anything fails.
#   PGCLONE_TEST_THREADS  parallel tests per test binary (default 2; tests are independent)
#   PGCLONE_KEEP_TEST_DIR=1  keep each test's /tmp/pgctest-* work dir for debugging
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

bash scripts/install-deps.sh
pgc_find_cargo
cargo --version
start=$SECONDS
# --no-fail-fast: a failing test binary must not hide the results of the others (still exits non-zero).
cargo test --no-fail-fast -- --test-threads="${PGCLONE_TEST_THREADS:-2}" --show-output
pgc_log "all tests passed in $((SECONDS - start)) s"
