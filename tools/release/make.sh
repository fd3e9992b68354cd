#!/usr/bin/env bash
# Release archives of loopback-scaler for people without Rust, by one command:
#
#   tools/release/make.sh [--target TRIPLE]... [--out DIR] [--force]
#
# For each target (default: both), `cargo build --release --locked`, the binary stripped, and
# an archive with the binary, README.md, LICENSE and THIRD-PARTY-LICENSES.txt
# (tools/release/licences.py):
#   DIR/loopback-scaler-VERSION-x86_64-unknown-linux-gnu.tar.gz
#   DIR/loopback-scaler-VERSION-x86_64-pc-windows-gnu.zip
#   DIR/SHA256SUMS   (every archive of VERSION in DIR)
# DIR defaults to dist/. VERSION is the workspace's `version.workspace` (Cargo.toml). An existing
# archive of the same version is kept unless --force. Archives are built in a temporary folder
# inside DIR and renamed into place, so a stopped run leaves no half-written archive.
# The zip is made by `zip` when it is installed, else by Python's zipfile (RELEASE_ZIP= with an
# empty value forces Python). Timings and sizes: docs/development.md, "Releases".
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
HELPER=tools/release/licences.py
APP=loopback-scaler
ALL_TARGETS=(x86_64-unknown-linux-gnu x86_64-pc-windows-gnu)

die() { echo "make.sh: $*" >&2; exit 1; }
usage() { sed -n '2,17s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

targets=()
out=dist
force=0
while (($#)); do
    case $1 in
        --target) (($# >= 2)) || die "--target needs a target triple"; targets+=("$2"); shift 2 ;;
        --target=*) targets+=("${1#*=}"); shift ;;
        --out) (($# >= 2)) || die "--out needs a folder"; out=$2; shift 2 ;;
        --out=*) out=${1#*=}; shift ;;
        --force) force=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
((${#targets[@]})) || targets=("${ALL_TARGETS[@]}")
for t in "${targets[@]}"; do
    [[ " ${ALL_TARGETS[*]} " == *" $t "* ]] || die "unknown target '$t' (one of: ${ALL_TARGETS[*]})"
done

# --- tools: each missing one is named with the line that installs it -------------------------
need() { command -v "$1" >/dev/null || die "missing $1: $2"; }
need cargo "install Rust from https://rustup.rs"
need rustc "install Rust from https://rustup.rs"
need python3 "sudo apt-get install python3"
need tar "sudo apt-get install tar"
need gzip "sudo apt-get install gzip"
need sha256sum "sudo apt-get install coreutils"
sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
for t in "${targets[@]}"; do
    [[ -d $sysroot/lib/rustlib/$t/lib ]] || die "missing Rust's standard library for $t: rustup target add $t"
    case $t in
        *-windows-gnu)
            need x86_64-w64-mingw32-gcc "sudo apt-get install gcc-mingw-w64-x86-64"
            need x86_64-w64-mingw32-strip "sudo apt-get install gcc-mingw-w64-x86-64" ;;
        *)
            need cc "sudo apt-get install gcc"
            need strip "sudo apt-get install binutils" ;;
    esac
done
zip_tool=${RELEASE_ZIP-$(command -v zip || true)}

version=$(python3 "$HELPER" version)
[[ -n $version ]] || die "no version in Cargo.toml"
target_dir=$(cargo metadata --no-deps --format-version 1 --locked |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
[[ -f README.md && -f LICENSE ]] || die "README.md or LICENSE missing at $ROOT"
if command -v git >/dev/null && [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    echo "make.sh: warning: uncommitted changes in the working tree are built into the archives" >&2
fi

archive_of() { # archive_of TARGET -> the archive's file name
    case $1 in
        *-windows-*) echo "$APP-$version-$1.zip" ;;
        *) echo "$APP-$version-$1.tar.gz" ;;
    esac
}

mkdir -p "$out"
out=$(cd "$out" && pwd)
for t in "${targets[@]}"; do
    a=$(archive_of "$t")
    [[ ! -e $out/$a || $force == 1 ]] || die "$out/$a exists (version $version); --force replaces it"
done
tmp=$(mktemp -d "$out/.make.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

make_zip() { # make_zip ARCHIVE FOLDER, run in the folder's parent
    if [[ -n $zip_tool ]]; then
        "$zip_tool" -q -r -X -9 "$1" "$2"
    else
        python3 - "$1" "$2" <<'EOF'
import os, sys, zipfile
archive, top = sys.argv[1:]
with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    for folder, subfolders, files in os.walk(top):
        subfolders.sort()
        for name in sorted(files):
            z.write(os.path.join(folder, name))
EOF
    fi
}

size() { stat -c %s "$1"; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
summary=()
for t in "${targets[@]}"; do
    name=$APP-$version-$t
    archive=$(archive_of "$t")
    if [[ $t == "$host" ]]; then
        # The host's own build: the same artefacts as a plain `cargo build --release`.
        target_args=()
        built=$target_dir/release
    else
        target_args=(--target "$t")
        built=$target_dir/$t/release
    fi
    case $t in
        *-windows-*) exe=$APP.exe; strip_tool=x86_64-w64-mingw32-strip ;;
        *) exe=$APP; strip_tool="strip" ;;
    esac

    echo "== $name: cargo build --release --locked ${target_args[*]}" >&2
    start=$SECONDS
    cargo build --release --locked --bin "$APP" "${target_args[@]}"
    build_s=$((SECONDS - start))

    stage=$tmp/$name
    mkdir -p "$stage"
    cp "$built/$exe" "$stage/$exe"
    "$strip_tool" "$stage/$exe"
    cp README.md LICENSE "$stage/"
    python3 "$HELPER" third-party --target "$t" -o "$stage/THIRD-PARTY-LICENSES.txt"

    case $archive in
        *.zip) (cd "$tmp" && make_zip "$archive" "$name") ;;
        *) tar -C "$tmp" --sort=name --owner=0 --group=0 --numeric-owner -cf - "$name" |
            gzip -9 -n >"$tmp/$archive" ;;
    esac
    mv -f "$tmp/$archive" "$out/$archive"
    summary+=("$archive: $(mib "$(size "$out/$archive")"); $exe stripped $(mib "$(size "$stage/$exe")") (unstripped $(mib "$(size "$built/$exe")")); build ${build_s} s")
done

shopt -s nullglob
(cd "$out" && sha256sum -- "$APP-$version"-*.zip "$APP-$version"-*.tar.gz) >"$tmp/SHA256SUMS"
mv -f "$tmp/SHA256SUMS" "$out/SHA256SUMS"

echo "== $out" >&2
printf '%s\n' "${summary[@]}" >&2
cat "$out/SHA256SUMS" >&2
