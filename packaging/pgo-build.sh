#!/usr/bin/env bash
# The release build the Linux packages ship, optimized with a profile of Ponte at work (PGO):
#   1. an instrumented build, in target/pgo-gen/;
#   2. a training run of it: `ponte bench` with short phases (relay and agent as processes, plain
#      and TLS, small and 1 MiB responses, idle agents, the access log on and off, `ponte
#      webhook`); every process writes its profile when it exits;
#   3. the release build with that profile: target/<host>/release/ponte, copied to
#      target/release/ponte, where cargo-deb, the rpm spec and the packaging tests take it from.
# Needs rustc's own llvm-profdata: `rustup component add llvm-tools`. Measured gain: README,
# Performance.
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
profdata_tool="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
# `--check`: only say (exit status) whether the tool is there; build-all asks before building.
if [ "${1:-}" = --check ]; then
    [ -x "$profdata_tool" ]
    exit
fi
if [ ! -x "$profdata_tool" ]; then
    echo "pgo-build: $profdata_tool is missing: rustup component add llvm-tools" >&2
    exit 1
fi
timed() { local t0=$SECONDS; "$@"; echo "pgo-build: '$*' took $((SECONDS - t0)) s"; }

data=$PWD/target/pgo-gen/profiles
rm -rf "$data"
mkdir -p "$data"
# `--target` keeps build scripts and proc macros out of RUSTFLAGS: only Ponte is instrumented.
RUSTFLAGS="-Cprofile-generate=$data" timed cargo build --release --locked --target "$host" \
    --target-dir target/pgo-gen
train() {
    "target/pgo-gen/$host/release/ponte" bench --duration 2s --connections 32 --idle-agents 50 \
        --json > "$data/bench.json"
}
timed train
if ! compgen -G "$data/*.profraw" >/dev/null; then
    echo "pgo-build: the training run wrote no profile to $data (did its processes exit normally?)" >&2
    exit 1
fi
mkdir -p target/pgo
"$profdata_tool" merge -o target/pgo/ponte.profdata "$data"/*.profraw
"$profdata_tool" show target/pgo/ponte.profdata | grep -E '^(Total functions|Maximum function count)' |
    sed 's/^/pgo-build: profile: /'
# rustc records the profile as an input of every crate it builds with it, so each new profile
# rebuilds them all (about 4 min on two cores): no crate keeps an older profile's optimizations.
RUSTFLAGS="-Cprofile-use=$PWD/target/pgo/ponte.profdata" timed cargo build --release --locked \
    --target "$host"
mkdir -p target/release
cp "target/$host/release/ponte" target/release/ponte
echo "pgo-build: target/release/ponte is the profile-optimized build"
