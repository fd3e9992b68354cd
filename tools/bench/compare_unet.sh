#!/usr/bin/env bash
# One UNet step (batch 2 = one classifier-free-guidance step), Loopback Scaler vs
# PyTorch/diffusers, back to back on this machine, random weights of the SD 1.5 architecture.
#
#   tools/bench/compare_unet.sh [SIZE] [STEPS] [THREADS]
#
# Prints both JSON reports and the time ratio (ours / PyTorch). Build first:
#   cargo build --release
set -euo pipefail
size=${1:-512}
steps=${2:-2}
threads=${3:-2}
cd "$(dirname "$0")/../.."
ours=$(RAYON_NUM_THREADS=$threads ./target/release/loopback-scaler bench --arch sd15 \
    --size "$size" --batch 2 --steps "$steps" --device cpu)
torch=$(python3 tools/bench/unet_torch.py --arch sd15 --size "$size" --batch 2 \
    --steps "$steps" --threads "$threads")
echo "$ours"
echo "$torch"
python3 - "$ours" "$torch" <<'PY'
import json, sys
ours, torch = (json.loads(s) for s in sys.argv[1:3])
a, b = ours["unet_step"]["mean_s"], torch["unet_step"]["mean_s"]
size = ours["size"]
tflop = {512: 0.80, 768: 2.0, 1024: 4.67}.get(size)
print(f"size {size}: ours {a:.1f} s/step, PyTorch {b:.1f} s/step, ratio {a / b:.2f}; "
      f"peak RSS ours {ours['peak_rss_mib'] / 1024:.2f} GiB, "
      f"PyTorch {torch['peak_rss_mib'] / 1024:.2f} GiB")
if tflop:
    print(f"achieved: ours {2 * tflop * 1000 / a:.0f} GFLOP/s, PyTorch {2 * tflop * 1000 / b:.0f} GFLOP/s "
          f"(UNet {tflop} TFLOP per image, batch 2)")
PY
