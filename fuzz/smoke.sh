#!/usr/bin/env bash
# Smoke-runs every fuzz target for a few seconds on its checked-in seeds; fails on any crash.
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECONDS:-10}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for target in $(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^certgate-fuzz$'); do
    mkdir -p "corpus/$target"
    work=$(mktemp -d)
    cp -r "corpus/$target/." "$work/"
    echo "== fuzz smoke: $target (${secs}s)"
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "$work" -- -max_total_time="$secs" -rss_limit_mb=2048
    rm -rf "$work"
done
