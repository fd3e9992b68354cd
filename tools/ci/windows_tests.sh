#!/usr/bin/env bash
# Windows in CI: cross-builds the workspace's tests for x86_64-pc-windows-gnu (MinGW) and runs
# them under Wine: the README's `cargo test`, every test but one (listed below), on the Windows
# build of the code (`cfg(windows)` paths, the Windows API for memory, Windows file semantics,
# MinGW's C library).
#
# What Wine needs here (Debian bookworm's Wine 8):
# - `bcryptprimitives.dll`, which Rust's standard library imports (`ProcessPrng`) and Wine 8
#   lacks: a test-only stand-in is built from tools/ci/wine/ and put into the Wine prefix
#   (skipped when the Wine there has its own). It never ships.
# - an X server for the GUI snapshot tests: Wine's Vulkan goes through its X11 driver, so the
#   tests run inside `xvfb-run`; the snapshots render on Mesa's lavapipe as on Linux.
# The prefix lives in target/wine-prefix, so the tests' app data (%LOCALAPPDATA%) stays there.
#
# Usage: tools/ci/windows_tests.sh [cargo test options, e.g. -p loopback-core]
set -euo pipefail
cd "$(dirname "$0")/../.."
target=x86_64-pc-windows-gnu

missing=()
for pkg in gcc-mingw-w64-x86-64 wine wine64 xvfb xauth mesa-vulkan-drivers libvulkan1; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if command -v rustup >/dev/null; then
    rustup target add "$target" >/dev/null 2>&1
fi

export WINEPREFIX="$PWD/target/wine-prefix"
export WINEDEBUG=-all
# No Mono or Gecko installer prompts while the prefix is made.
export WINEDLLOVERRIDES="mscoree,mshtml="
export VK_ICD_FILENAMES=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json
system32="$WINEPREFIX/drive_c/windows/system32"
if [ ! -d "$system32" ]; then
    wineboot --init >/dev/null 2>&1
    wineserver --wait
fi
if [ ! -f "$system32/bcryptprimitives.dll" ]; then
    x86_64-w64-mingw32-gcc -O2 -shared -o "$system32/bcryptprimitives.dll" \
        tools/ci/wine/bcryptprimitives.c tools/ci/wine/bcryptprimitives.def -ladvapi32
fi

# The one test Wine cannot run, and why:
# - interrupt::ctrl_c_cancels_a_run_and_keeps_the_finished_loops: Wine 8 refuses to send a
#   console Ctrl-Break to a process group (GenerateConsoleCtrlEvent fails with "Invalid
#   access"), so the interrupt cannot be delivered; the test runs on Linux (SIGINT).
skip=(--skip interrupt::ctrl_c_cancels_a_run_and_keeps_the_finished_loops)

export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine
# One X server for the whole run; Wine's server stays up between the test binaries.
xvfb-run --auto-servernum cargo test --target "$target" "$@" -- "${skip[@]}"
wineserver --kill || true
