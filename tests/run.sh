#!/usr/bin/env bash
# The test command (README): builds every binary, then runs the whole test suite with nextest
# (cargo test if nextest is missing), plus the fmt and clippy gates.
#
# End-to-end tests start the real binaries from target/debug, so they are built first.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (workspace, all targets, -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build all binaries"
cargo build --workspace --bins --locked

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast --failure-output final
else
    cargo test --workspace --locked --no-fail-fast
fi

if [ "${CERTGATE_FUZZ_SMOKE:-1}" = 1 ] && [ -x fuzz/smoke.sh ]; then
    echo "== fuzz smoke"
    FUZZ_SECONDS="${FUZZ_SECONDS:-10}" fuzz/smoke.sh
fi
