#!/usr/bin/env bash
# Checks systemd/kvreplica.service and the template systemd/kvreplica@.service
# (as an instance, kvreplica@example.service) with `systemd-analyze verify`,
# against the binary just built (verify insists the ExecStart binary exists).
# verify exits 0 on directives it ignores, so any message at all counts as a
# failure. The two units must also agree on everything but the per-instance
# lines (paths, description), so a change to one is made to both.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v systemd-analyze >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi
bin="${CARGO_TARGET_DIR:-$PWD/target}/debug/kvreplica"
[ -x "$bin" ] || cargo build --quiet
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT

# verify UNIT_FILE NAME: verifies UNIT_FILE installed as NAME.
verify() {
  sed "s#/usr/local/bin/kvreplica#$bin#" "$1" > "$dir/$2"
  local out
  out="$(systemd-analyze verify "$dir/$2" 2>&1)" || { echo "$out" >&2; exit 1; }
  if [ -n "$out" ]; then
    echo "systemd-analyze verify found problems in $1:" >&2
    echo "$out" >&2
    exit 1
  fi
  echo "$1: systemd-analyze verify ok"
}
verify systemd/kvreplica.service kvreplica.service
# An instance needs its template beside it.
cp systemd/kvreplica@.service "$dir/kvreplica@.service"
verify systemd/kvreplica@.service kvreplica@example.service

# The directives of both units, comments and per-instance lines left out.
directives() {
  grep -v -e '^#' -e '^$' -e '^Description=' -e '^ExecStart=' -e '^StateDirectory=' \
    -e '^WorkingDirectory=' -e '^LoadCredential=' "$1"
}
if ! diff <(directives systemd/kvreplica.service) <(directives systemd/kvreplica@.service) >&2; then
  echo "systemd/kvreplica.service and systemd/kvreplica@.service differ beyond the per-instance lines" >&2
  exit 1
fi
# The per-instance lines do use the instance name.
for key in Description ExecStart StateDirectory WorkingDirectory LoadCredential; do
  if grep "^$key=" systemd/kvreplica@.service | grep -qv '%i'; then
    echo "systemd/kvreplica@.service: $key= does not use the instance name %i" >&2
    exit 1
  fi
done
echo "systemd/kvreplica@.service: same settings as kvreplica.service, per-instance paths"

# Memory limits (README, "Run under systemd"): both set, the soft one lower.
mib() { # the value of KEY= in the unit, in MiB (plain M or G suffix)
  local v
  v="$(sed -n "s/^$1=//p" systemd/kvreplica.service)"
  case "$v" in
    *G) echo $(( ${v%G} * 1024 )) ;;
    *M) echo "${v%M}" ;;
    *) echo "systemd/kvreplica.service: $1=${v:-(unset)} is not a size in M or G" >&2; exit 1 ;;
  esac
}
high="$(mib MemoryHigh)"; max="$(mib MemoryMax)"
if [ "$high" -ge "$max" ]; then
  echo "systemd/kvreplica.service: MemoryHigh= ($high MiB) must be below MemoryMax= ($max MiB)" >&2
  exit 1
fi
echo "memory limits: MemoryHigh=${high}M MemoryMax=${max}M"
