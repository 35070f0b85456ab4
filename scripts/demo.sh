#!/usr/bin/env bash
# Serves the sample backup shipped in examples/sample-backup/ on 127.0.0.1:
# kvreplica syncs it into a replica and answers KV Connect (Deno.openKv) and
# the admin API, with tokens generated for this run. Prints a Deno one-liner
# and a curl to try, then runs until Ctrl-C, which stops the server and
# removes every file the demo made.
#
#   ./scripts/demo.sh [--port N] [--admin-port N]
#
# Ports: KV Connect 4512 and admin 4513 unless given (flags, or the
# environment: KVREPLICA_DEMO_PORT, KVREPLICA_DEMO_ADMIN_PORT); 0 picks a
# free one. KVREPLICA_BIN runs that binary instead of building one.
#
# The tokens live only in files of mode 0600 in a temporary directory, and
# reach kvreplica and curl as file paths: never on a command line, where
# every local user could read them in the process list.
set -euo pipefail
cd "$(dirname "$0")/.."

port="${KVREPLICA_DEMO_PORT:-4512}"
admin_port="${KVREPLICA_DEMO_ADMIN_PORT:-4513}"
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port="${2:?--port needs a number}"; shift 2 ;;
    --admin-port) admin_port="${2:?--admin-port needs a number}"; shift 2 ;;
    -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done
for p in "$port" "$admin_port"; do
  case "$p" in
    '' | *[!0-9]*) echo "demo.sh: a port is a number 0-65535, got '$p'" >&2; exit 2 ;;
  esac
done

# The debug build, not --release: a fresh release build takes several
# times longer, and serving a 1,550-key sample needs no optimiser. The
# binary runs directly (not under `cargo run`), so that this script holds
# the server's own process id for a clean stop.
if [ -n "${KVREPLICA_BIN:-}" ]; then
  bin="$KVREPLICA_BIN"
else
  echo "== building kvreplica (cargo build; the first build takes a few minutes)"
  cargo build --quiet
  bin="${CARGO_TARGET_DIR:-target}/debug/kvreplica"
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/kvreplica-demo.XXXXXX")"
server=
stop() {
  trap - INT TERM
  if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
on_signal() {
  echo
  echo "== stopping"
  stop
  exit 0
}
trap on_signal INT TERM
trap stop EXIT

token() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }
(
  umask 077
  token >"$tmp/access-token"
  token >"$tmp/admin-token"
  printf 'Authorization: Bearer %s\n' "$(cat "$tmp/admin-token")" >"$tmp/admin-header"
)

RUST_LOG="${RUST_LOG:-info}" "$bin" serve \
  --source "file://$PWD/examples/sample-backup/" \
  --db "$tmp/demo.sqlite" \
  --addr "127.0.0.1:$port" \
  --admin-addr "127.0.0.1:$admin_port" \
  --access-tokens-file "$tmp/access-token" \
  --admin-token-file "$tmp/admin-token" \
  2>"$tmp/serve.log" &
server=$!

# The addresses as the server announced them (a port 0 becomes a real one),
# then its readiness: the sample synced and served.
addr_of() { sed -n "s/.*$1 listening addr=\([^ ]*\).*/\1/p" "$tmp/serve.log" | head -n 1; }
kv= admin=
for _ in $(seq 600); do
  if ! kill -0 "$server" 2>/dev/null; then
    echo "demo.sh: kvreplica serve stopped:" >&2
    cat "$tmp/serve.log" >&2
    if grep -q 'Address already in use' "$tmp/serve.log"; then
      echo "demo.sh: choose other ports: --port N --admin-port N (0: any free one)" >&2
    fi
    exit 1
  fi
  kv="$(addr_of 'KV Connect')" admin="$(addr_of 'admin API')"
  if [ -n "$kv" ] && [ -n "$admin" ] &&
    curl -fsS -o /dev/null "http://$admin/readyz" 2>/dev/null; then
    break
  fi
  kv=
  sleep 0.1
done
if [ -z "$kv" ]; then
  echo "demo.sh: kvreplica serve not ready within 60 s:" >&2
  cat "$tmp/serve.log" >&2
  exit 1
fi

cat <<EOF
== serving examples/sample-backup/ (synced into $tmp/demo.sqlite)
KV Connect: http://$kv    admin API: http://$admin
tokens (mode 0600): $tmp/access-token, $tmp/admin-token; server log: $tmp/serve.log

== read it with Deno (from another terminal):
DENO_KV_ACCESS_TOKEN="\$(cat $tmp/access-token)" deno eval --unstable-kv 'const kv = await Deno.openKv("http://$kv"); let n = 0; for await (const e of kv.list({ prefix: [] })) if (n++ < 3) console.log(e.key, e.value, e.versionstamp); console.log(n, "entries");'

== ask the admin API where the replica is:
curl -sS -H @$tmp/admin-header http://$admin/pitr/current

== Ctrl-C stops the server and removes $tmp
EOF
wait "$server" || {
  status=$?
  echo "demo.sh: kvreplica serve exited ($status):" >&2
  cat "$tmp/serve.log" >&2
  exit 1
}
