#!/usr/bin/env bash
# Builds the release binaries and a Debian package of them, $CARGO_TARGET_DIR/debian/pgclone_<version>_<arch>.deb:
# pgclone, pgclone-agent (which pgclone brings to the primary), the man page and bash, zsh and fish completions,
# the last three printed by pgclone itself from its flag definitions, so they never drift from the binary.
#
#   scripts/package.sh          build the .deb and print its path
#   scripts/package.sh --check  ... then unpack it into an empty directory (dpkg -x) and run what it holds:
#                               pgclone --version, pgclone-agent --version, man -l on the page (CI does this)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

pgc_find_cargo
cargo build --release --locked
target=${CARGO_TARGET_DIR:-target}
bin=$target/release
version=$("$bin/pgclone" --version | cut -d' ' -f2)
arch=$(dpkg --print-architecture)
root=$(mktemp -d)
chmod 755 "$root"   # the package's / is the system's
trap 'rm -rf "$root"' EXIT

install -D -m 755 "$bin/pgclone" "$root/usr/bin/pgclone"
install -D -m 755 "$bin/pgclone-agent" "$root/usr/bin/pgclone-agent"
install -d -m 755 "$root/usr/share/man/man1" "$root/usr/share/bash-completion/completions" \
  "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d" "$root/usr/share/doc/pgclone"
"$bin/pgclone" man | gzip -9n >"$root/usr/share/man/man1/pgclone.1.gz"
"$bin/pgclone" completions bash >"$root/usr/share/bash-completion/completions/pgclone"
"$bin/pgclone" completions zsh >"$root/usr/share/zsh/vendor-completions/_pgclone"
"$bin/pgclone" completions fish >"$root/usr/share/fish/vendor_completions.d/pgclone.fish"
install -m 644 README.md docs/PROTOCOL.md docs/patroni.md "$root/usr/share/doc/pgclone/"
printf 'pgclone %s, MIT license.\n' "$version" >"$root/usr/share/doc/pgclone/copyright"
install -d -m 755 "$root/DEBIAN"
cat >"$root/DEBIAN/control" <<EOF
Package: pgclone
Version: $version
Architecture: $arch
Maintainer: pgclone developers <pgclone@invalid>
Depends: libc6 (>= 2.34), libpq5, openssh-client
Recommends: rsync
Section: database
Priority: optional
Description: clone a live PostgreSQL primary into a ready-to-start standby
 pgclone turns an empty directory into a physical standby of a live PostgreSQL 15+
 primary: WAL streamed from before the backup starts, the data directory copied in
 parallel over TLS keyed through ssh, pg_control put in place last.
EOF
mkdir -p "$target/debian"
deb=$target/debian/pgclone_${version}_$arch.deb
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"

if [ "${1:-}" = --check ]; then
  tree=$(mktemp -d)
  trap 'rm -rf "$root" "$tree"' EXIT
  dpkg -x "$deb" "$tree"
  "$tree/usr/bin/pgclone" --version
  "$tree/usr/bin/pgclone-agent" --version
  [ "$("$tree/usr/bin/pgclone" --version)" = "pgclone $version" ] || pgc_die "the packaged pgclone is not $version"
  MANWIDTH=100 man -l "$tree/usr/share/man/man1/pgclone.1.gz" | grep -q -- '--primary-pgdata' ||
    pgc_die "the man page does not document --primary-pgdata"
  for f in usr/share/bash-completion/completions/pgclone usr/share/zsh/vendor-completions/_pgclone \
    usr/share/fish/vendor_completions.d/pgclone.fish; do
    grep -q -- '--primary-pgdata' "$tree/$f" || pgc_die "$f does not complete --primary-pgdata"
  done
  pgc_log "the package holds pgclone $version, its agent, a man page and completions that work"
fi
