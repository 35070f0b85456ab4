#!/usr/bin/env bash
# Installs the real servers and clients the tests run against into .tools/
# (idempotent: a second run only checks). Sourced by scripts/test.sh, which
# then sees the exported KVREPLICA_TEST_* variables.
set -euo pipefail
TOOLS="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.tools"
mkdir -p "$TOOLS"
