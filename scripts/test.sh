#!/usr/bin/env bash
# The whole test suite: installs the test servers and clients it needs
# (cached outside the clone, see install-test-tools.sh), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install-test-tools.sh
# Whatever the sourced script did with the shell's options: every step below
# must fail the run.
set -euo pipefail
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
./scripts/verify-systemd.sh
