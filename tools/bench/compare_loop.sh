#!/usr/bin/env bash
# One whole img2img loop (prompt encoding, VAE encode, the denoising steps, VAE decode),
# Loopback Scaler vs diffusers' img2img pipeline, back to back on this machine, on the same
# diffusers folder (random SD 1.5 weights: tools/bench/make_random_sd15.py).
#
#   tools/bench/compare_loop.sh MODEL_DIR [SIZE] [STEPS] [DENOISE] [THREADS] [PRECISION]
#
# PRECISION: f32 (default) or bf16 (ours `--precision bf16`, diffusers `torch_dtype=bfloat16`).
# Prints both JSON reports and the ratios (ours / diffusers). Build first:
#   cargo build --release
set -euo pipefail
model=${1:?usage: compare_loop.sh MODEL_DIR [SIZE] [STEPS] [DENOISE] [THREADS] [PRECISION]}
size=${2:-512}
steps=${3:-30}
denoise=${4:-0.35}
threads=${5:-2}
precision=${6:-f32}
case $precision in
    f32) dtype=float32 ;;
    bf16) dtype=bfloat16 ;;
    *) echo "PRECISION must be f32 or bf16, not $precision" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/../.."
ours=$(RAYON_NUM_THREADS=$threads ./target/release/loopback-scaler bench --loop --model "$model" \
    --size "$size" --loop-steps "$steps" --denoise "$denoise" --device cpu --precision "$precision")
torch=$(python3 tools/bench/loop_torch.py --model "$model" --size "$size" --steps "$steps" \
    --denoise "$denoise" --threads "$threads" --dtype "$dtype")
echo "$ours"
echo "$torch"
python3 - "$ours" "$torch" <<'PY'
import json, sys
ours, torch = (json.loads(s) for s in sys.argv[1:3])
a, b = ours["loop"], torch["loop"]
print(f"size {ours['size']}, {a['steps_run']} steps: loop ours {a['seconds']:.1f} s, "
      f"diffusers {b['seconds']:.1f} s, ratio {a['seconds'] / b['seconds']:.2f}")
for key in ("before_steps_s", "step_mean_s", "after_steps_s"):
    print(f"  {key}: ours {a[key]:.2f}, diffusers {b[key]:.2f}, ratio {a[key] / b[key]:.2f}")
print(f"peak RSS during the loop: ours {ours['peak_rss_mib'] / 1024:.2f} GiB, "
      f"diffusers {torch['peak_rss_mib'] / 1024:.2f} GiB")
PY
