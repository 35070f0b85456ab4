#!/usr/bin/env bash
# Syncs the sample backup shipped in examples/ into demo.sqlite, then shows
# a few entries and the newest recoverable points. Works on a fresh machine
# with only cargo installed.
set -euo pipefail
cd "$(dirname "$0")/.."
db="${1:-demo.sqlite}"
cargo build --release --quiet
bin=target/release/kvreplica
"$bin" sync --source "file://$PWD/examples/sample-backup/" --db "$db"
echo
echo "== newest recoverable points (kvreplica pitr list):"
"$bin" pitr --db "$db" list --limit 5
echo "== position (kvreplica pitr info):"
"$bin" pitr --db "$db" info
