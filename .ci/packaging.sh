#!/usr/bin/env bash
# Packaging set-up for CI: install the tools the packaging tests need, then build every package
# into dist/ (packaging/build-all.sh). Runs before `cargo test --all-targets`, which finds the
# artifacts there; with CI=true a test whose tool or artifact is missing fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
export DEBIAN_FRONTEND=noninteractive

# chromium, chromium-driver and a font: the browser tests of the console and the inspector.
pkgs=(gcc-mingw-w64-x86-64 wine wine64 wixl msitools lintian systemd-container rpm chromium chromium-driver fonts-dejavu-core)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "packaging: apt-get install ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "packaging: apt packages ready ($((SECONDS - start)) s)"

if ! cargo deb --version >/dev/null 2>&1; then
    cargo install cargo-deb --version 3.8.0 --locked --quiet   # the version the packaging was tested with
fi
rustup target add x86_64-pc-windows-gnu >/dev/null 2>&1 || echo "packaging: rustup could not add x86_64-pc-windows-gnu (offline?); the Windows build will say what is missing"
# llvm-profdata for the profile-guided Linux build (packaging/pgo-build.sh).
rustup component add llvm-tools >/dev/null 2>&1 || echo "packaging: rustup could not add llvm-tools (offline?); build-all will say what is missing"
echo "packaging: cargo-deb, the Windows target and llvm-tools ready ($((SECONDS - start)) s)"

# The cfg(windows) code (SCM glue) is only compiled for this target: lint it here.
cargo clippy --locked --target x86_64-pc-windows-gnu -- -D warnings
echo "packaging: Windows lint clean ($((SECONDS - start)) s)"

packaging/build-all.sh
echo "packaging: done in $((SECONDS - start)) s"
