#!/usr/bin/env bash
# Takes assets/screenshot.png: starts the desktop app under Xvfb with the tiny test model,
# opens a test photo, runs the loops, and lets the app save a screenshot of its own window
# (`gui --screenshot`, eframe's ViewportCommand::Screenshot) once the run has finished.
#
# Needs: xvfb xauth mesa-vulkan-drivers libvulkan1 (installed by .ci/run when missing).
# Usage: tools/screenshot.sh [OUTPUT.png]   (default: assets/screenshot.png)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-assets/screenshot.png}"

for cmd in xvfb-run; do
    command -v "$cmd" >/dev/null || { echo "error: $cmd is missing (apt-get install xvfb xauth)" >&2; exit 2; }
done

# The dev profile optimises dependencies (Cargo.toml), which is plenty for the tiny model;
# PROFILE=release uses a release build instead.
profile="${PROFILE:-dev}"
cargo build --quiet --profile "$profile"
bin="target/$([ "$profile" = dev ] && echo debug || echo "$profile")/loopback-scaler"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# A small input keeps the tiny model's run short; a 4-loop run to 384 px shows the filmstrip.
python3 - "$tmp/coffee.png" <<'PY' 2>/dev/null || cp tests/data/coffee.png "$tmp/coffee.png"
import sys
from PIL import Image
Image.open("tests/data/coffee.png").convert("RGB").resize((192, 144)).save(sys.argv[1])
PY
cat > "$tmp/settings.json" <<'JSON'
{"loops": 4, "target_mode": "scale", "scale": 2.0, "steps": 10, "denoise": 0.4,
 "seed": 42, "prompt": "a cup of coffee on a wooden table, detailed", "curve": "ease-out-cubic"}
JSON

# Software rendering (lavapipe); pin it so the picture is the same on every machine.
if [ -f /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ]; then
    export VK_ICD_FILENAMES=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json
fi
export XDG_DATA_HOME="$tmp/data" XDG_RUNTIME_DIR="$tmp/run"
mkdir -p "$tmp/run" && chmod 700 "$tmp/run"
rm -f "$out"
timeout 300 xvfb-run -a -s "-screen 0 1400x900x24" \
    "$bin" gui --fresh --model tests/fixtures/tiny-sd --device cpu \
    --settings "$tmp/settings.json" --input "$tmp/coffee.png" --run --screenshot "$out"
test -s "$out" || { echo "error: no screenshot was written" >&2; exit 1; }
echo "wrote $out"
