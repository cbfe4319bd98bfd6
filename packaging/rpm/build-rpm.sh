#!/usr/bin/env bash
# Build the .rpm from the existing release binary: packaging/rpm/build-rpm.sh VERSION OUTDIR
set -euo pipefail
cd "$(dirname "$0")/../.."
version=$1 out=$2
top=$(mktemp -d)
trap 'rm -rf "$top"' EXIT
rpmbuild -bb --quiet --define "_topdir $top" --define "ponte_version $version" \
    --define "src $PWD" --define "_build_id_links none" --define "__strip /bin/true" \
    --target x86_64 packaging/rpm/ponte.spec >"$top/rpmbuild.log" 2>&1 || { cat "$top/rpmbuild.log" >&2; exit 1; }
cp "$top"/RPMS/x86_64/ponte-"$version"-1.x86_64.rpm "$out/"
