#!/usr/bin/env bash
# Builds one static pgclone for x86_64 Linux, $CARGO_TARGET_DIR/static/pgclone-<version>-x86_64-linux, and its
# SHA-256 beside it. glibc, OpenSSL (Debian's libssl.a, libcrypto.a) and libpq (built from source by pq-src:
# OpenSSL only, no GSSAPI or LDAP; use the .deb where those are needed) are linked in: no interpreter, no shared
# library, so the file runs on any x86_64 Linux. With no pgclone-agent beside it, pgclone brings itself to the
# primary as the agent, so this one file is the whole installation on both hosts.
#
#   scripts/release.sh          build it and print its path
#   scripts/release.sh --check  ... then prove it: no NEEDED or INTERP in its ELF headers, `--version` in an empty
#                               chroot, and the end-to-end tests of the native transport against real PostgreSQL
#                               and sshd with the static build (CI does this; root, for chroot and the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

pgc_find_cargo
triple=x86_64-unknown-linux-gnu
[ "$(uname -m)" = x86_64 ] || pgc_die "the static release is built for x86_64 only"
for lib in libc.a libssl.a libcrypto.a; do
  [ -f "/usr/lib/x86_64-linux-gnu/$lib" ] || pgc_die "/usr/lib/x86_64-linux-gnu/$lib is missing (libc6-dev, libssl-dev)"
done
# With --target, RUSTFLAGS reach only the target's code, not build scripts and proc macros, which stay dynamic.
export OPENSSL_STATIC=1 RUSTFLAGS='-C target-feature=+crt-static'
static=(--locked --release --features static --target "$triple")
cargo build "${static[@]}"
target=${CARGO_TARGET_DIR:-target}
built=$target/$triple/release/pgclone
version=$("$built" --version | cut -d' ' -f2)
mkdir -p "$target/static"
out=$target/static/pgclone-$version-x86_64-linux
strip -o "$out" "$built"
(cd "$target/static" && sha256sum "${out##*/}" >"${out##*/}.sha256")
echo "$out"

if [ "${1:-}" = --check ]; then
  headers=$(readelf -ld "$out")
  ! grep -q 'NEEDED\|INTERP' <<<"$headers" || pgc_die "$out still needs a shared library or an interpreter"
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  install -m 755 "$out" "$root/pgclone"
  [ "$(chroot "$root" /pgclone --version)" = "pgclone $version" ] || pgc_die "$out does not run in an empty chroot"
  # The end-to-end tests of the native transport and a PG 18 clone, with this static build as the pgclone
  # under test (the tests use the binaries of their own cargo invocation: the same flags give the same files).
  cargo test "${static[@]}" --test main -- native:: clones_pg18 --test-threads=2
  pgc_log "$out has no dynamic dependency, runs alone, and clones over ssh"
fi
