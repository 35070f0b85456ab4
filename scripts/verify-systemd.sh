#!/usr/bin/env bash
# Checks systemd/kvreplica.service with `systemd-analyze verify`, against the
# binary just built (verify insists the ExecStart binary exists). verify exits
# 0 on directives it ignores, so any message at all counts as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v systemd-analyze >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi
bin="${CARGO_TARGET_DIR:-$PWD/target}/debug/kvreplica"
[ -x "$bin" ] || cargo build --quiet
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
sed "s#/usr/local/bin/kvreplica#$bin#" systemd/kvreplica.service > "$dir/kvreplica.service"
out="$(systemd-analyze verify "$dir/kvreplica.service" 2>&1)" || { echo "$out" >&2; exit 1; }
if [ -n "$out" ]; then
  echo "systemd-analyze verify found problems in systemd/kvreplica.service:" >&2
  echo "$out" >&2
  exit 1
fi
echo "systemd/kvreplica.service: systemd-analyze verify ok"
