#!/usr/bin/env bash
# macOS in CI, as far as a Linux machine without Apple's SDK can go: the whole workspace, tests
# included, with the Metal backend, type-checked and linted for Apple silicon
# (aarch64-apple-darwin). Nothing is linked or run: that needs Apple's linker and SDK.
#
# The one C dependency on that target is `ring` (hf-hub → ureq → rustls), whose build script
# compiles C even for `cargo check`. Debian's clang compiles it for Apple targets; the SDK
# headers it would read are avoided: ring's own `RING_CORE_NOSTDLIBINC` (no libc headers, as
# for its freestanding targets) and tools/ci/macos/include/TargetConditionals.h (Apple's
# target macros, the one SDK header ring still includes).
set -euo pipefail
cd "$(dirname "$0")/../.."
target=aarch64-apple-darwin

if ! command -v clang >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq clang >/dev/null
fi
if command -v rustup >/dev/null; then
    rustup target add "$target" >/dev/null 2>&1
fi

sdk=$(mktemp -d)
trap 'rm -rf "$sdk"' EXIT
# cc-rs asks `xcrun` for the SDK unless SDKROOT names one; an empty folder is enough, since no
# SDK header is read.
export SDKROOT="$sdk"
export CC_aarch64_apple_darwin=clang
export CFLAGS_aarch64_apple_darwin="--target=arm64-apple-macos11 -DRING_CORE_NOSTDLIBINC -isystem $PWD/tools/ci/macos/include"
cargo clippy --target "$target" --features metal --workspace --all-targets -- -D warnings
