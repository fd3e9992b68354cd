#!/usr/bin/env bash
# The contributor-loop timings of docs/development.md, in a checkout DIR (this one, or a worktree
# of an older commit for a before/after comparison):
#   tools/dev/measure_build.sh DIR LABEL GUI_FILE ENGINE_FILE
# e.g. tools/dev/measure_build.sh . after src/gui/viewer.rs crates/engine/src/kernels/norm.rs
# Times, with a fresh target directory of its own: a clean `cargo build --release`, a clean
# `cargo test` (build and run), then `cargo test --no-run` and `cargo build --release` after
# touching one GUI file and one engine file. Writes wall and CPU seconds to /tmp/meas/LABEL.txt
# and each command's output beside it.
set -u
dir=$1; label=$2; gui=$3; engine=$4
mkdir -p /tmp/meas
out=/tmp/meas/$label.txt
cd "$dir"
export CARGO_TARGET_DIR=$dir/target-measure CARGO_TERM_COLOR=never
lvp=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json; [ -f "$lvp" ] && export VK_ICD_FILENAMES="$lvp"
rm -rf "$CARGO_TARGET_DIR"
t() { local name=$1; shift; /usr/bin/time -f "$name wall=%e user=%U sys=%S maxrss_kb=%M" -a -o "$out" "$@" > /tmp/meas/$label-$name.log 2>&1; echo "$name rc=$?" >> "$out"; }
echo "== $label $(date -u +%FT%TZ) $(lscpu | grep 'Model name' | sed 's/  */ /g')" >> "$out"
t release cargo build --release
t test cargo test
touch "$gui"; t incr-gui cargo test --no-run
touch "$engine"; t incr-engine cargo test --no-run
touch "$gui"; t incr-gui-release cargo build --release
touch "$engine"; t incr-engine-release cargo build --release
echo "== done $(date -u +%FT%TZ)" >> "$out"
