#!/usr/bin/env bash
# Install the raw TCP forwarders `ponte bench --peers DIR` runs beside Ponte: rathole and bore.
# Usage: bench/install-peers.sh [DIR]   (default: bench/peers; binaries land in DIR/bin)
# Built from crates.io with `cargo install --locked`, so it needs only cargo and a C toolchain.
set -euo pipefail
root="${1:-$(dirname "$0")/peers}"
mkdir -p "$root"
# Published lock files first (what the authors tested). rathole 0.5.0's lock pins `time` 0.3.29,
# which newer compilers reject (E0282), so it falls back to fresh dependency versions.
install() {
    cargo install --locked --root "$root" "$1" || {
        echo "$1: the published lock file does not build with this compiler; retrying without --locked" >&2
        cargo install --root "$root" "$1"
    }
}
install rathole
install bore-cli
echo "peers installed in $root/bin:"
ls "$root/bin"
echo "run: ponte bench --peers $root/bin"
