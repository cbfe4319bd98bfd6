#!/usr/bin/env bash
# Build every package into dist/:
#   dist/ponte_<v>-1_amd64.deb           cargo-deb (units, /etc/ponte examples, user ponte), of the
#                                        profile-guided build (packaging/pgo-build.sh)
#   dist/ponte-<v>-x86_64.rpm            rpmbuild from the same release binary (if rpmbuild exists)
#   dist/ponte-<v>-x86_64-windows.exe    x86_64-pc-windows-gnu, cross-built with mingw
#   dist/ponte-<v>-x86_64.msi            wixl, from packaging/windows/ponte.wxs
#   dist/test/                           test-only: the same packages with the next version, to test upgrades
# A missing tool skips its package with a message; with CI=true it is an error.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
# The upgrade tests need a higher version; MSI compares only major.minor.patch.
next=$(echo "$version" | awk -F. '{ printf "%d.%d.%d", $1, $2, $3 + 1 }')
mkdir -p dist/test
ci=${CI:-false}
missing() {
    if [ "$ci" = true ]; then echo "build-all: $1 is missing (CI=true: failing)" >&2; exit 1; fi
    echo "build-all: SKIP $2: $1 is not installed"
}
timed() { local t0=$SECONDS; "$@"; echo "build-all: '$*' took $((SECONDS - t0)) s"; }

# --- Linux --------------------------------------------------------------------------------
# Profile-guided (packaging/pgo-build.sh): 20-23 % less CPU per request in relay and agent.
if packaging/pgo-build.sh --check; then
    timed packaging/pgo-build.sh
else
    missing llvm-profdata "the profile-guided build (rustup component add llvm-tools); building without a profile"
    timed cargo build --release --locked
fi
if cargo deb --version >/dev/null 2>&1; then
    timed cargo deb --no-build --locked -o "dist/ponte_${version}-1_amd64.deb"
    # Same files, next version: for the dpkg upgrade test.
    cargo deb --no-build --locked --deb-version "${next}-1" -o "dist/test/ponte_${next}-1_amd64.deb" >/dev/null
else
    missing cargo-deb ".deb (cargo install cargo-deb --locked)"
fi
if command -v rpmbuild >/dev/null; then
    timed packaging/rpm/build-rpm.sh "$version" dist
else
    echo "build-all: SKIP .rpm: rpmbuild is not installed (apt-get install rpm)"
fi

# --- Windows ------------------------------------------------------------------------------
if command -v x86_64-w64-mingw32-gcc >/dev/null; then
    rustup target add x86_64-pc-windows-gnu >/dev/null 2>&1 || true
    timed cargo build --release --locked --target x86_64-pc-windows-gnu
    exe=target/x86_64-pc-windows-gnu/release/ponte.exe
    cp "$exe" "dist/ponte-${version}-x86_64-windows.exe"
    if command -v wixl >/dev/null; then
        for v in "$version" "$next"; do
            out="dist/ponte-${v}-x86_64.msi"
            [ "$v" = "$next" ] && out="dist/test/ponte-${v}-x86_64.msi"
            timed wixl -a x64 -D Version="$v" -D Exe="$exe" -D Examples=packaging/examples \
                -o "$out" packaging/windows/ponte.wxs
        done
    else
        missing wixl ".msi (apt-get install wixl)"
    fi
else
    missing x86_64-w64-mingw32-gcc "Windows build and .msi (apt-get install gcc-mingw-w64-x86-64)"
fi

echo
echo "build-all: packages in dist/:"
ls -l dist dist/test
