#!/usr/bin/env bash
# One-shot GPU check: on a machine with one NVIDIA GPU, the driver, PyTorch + diffusers and a
# prebuilt binary (no network, no Rust toolchain), in under 10 minutes:
#
#   1. tiny-model parity: `loopback-scaler run` on tests/fixtures/tiny-sd (64x64 coffee, DDIM 10
#      steps, denoise 0.5, CFG 7.5, seed 1234: the harness of tests/fixtures/half-parity/) on
#      the device in f16, f32 (and bf16 on CUDA) against the CPU f32 run, against diffusers on
#      the device (tools/parity/make_half_parity.py's loop, via helpers.py tiny-ref) and
#      against the committed fixture: max and mean |delta| in 8-bit levels;
#   2. one UNet step, batch 2, f16, random SD 1.5 and SDXL weights at 512 and 1024:
#      `loopback-scaler bench` beside tools/bench/unet_torch.py (PyTorch + diffusers) on the
#      same device: s/step, ours/PyTorch, peak GPU memory (nvidia-smi sampled every 0.1 s for
#      both; PyTorch's max_memory_allocated too);
#   3. a whole default `run` (4 loops up to 1024x1024, 30 steps, denoise 0.35) of a 512x512
#      input on random SD 1.5 weights (tools/bench/make_random_sd15.py): wall time, peak memory.
#
# Every step's failure is recorded and the next step runs; one summary file at the end.
#
#   tools/gpu/check.sh [--bin PATH] [--python PATH] [--device cuda|cpu] [--quick]
#                      [--out FILE.md] [--work DIR] [--sd15 DIR] [--budget SECONDS]
#
#   --bin     the release binary, built elsewhere with `--features cuda,cudnn` (default
#             target/release/loopback-scaler)
#   --python  a Python with torch, diffusers, transformers, numpy, Pillow (default python3)
#   --device  cuda (default) or cpu (a dry run of the script itself: no GPU numbers)
#   --quick   smallest sizes and steps only (64x64 benches, 1 step; a 64 -> 128 run, 4 steps)
#   --out     the summary, Markdown (default gpu-check-summary.md)
#   --work    where the reports, logs and images go (default: a new folder under /tmp); a
#             random SD 1.5 folder already made there (sd15-random/.complete) is reused
#   --sd15    use this random (or real) SD 1.5 diffusers folder for step 3 instead of making one
#   --budget  stop starting steps once this many seconds have gone (default 570)
#
# Run from anywhere; paths are relative to the current directory. Needs the repository's tools/
# and tests/fixtures/{tiny-sd,parity,half-parity}/ beside each other, as in the repository.
set -uo pipefail

bin=target/release/loopback-scaler
python=python3
device=cuda
quick=0
out="gpu-check-summary.md"
work=
sd15=
budget=570
argv="$*"

usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
need() { [[ $# -ge 2 && -n $2 ]] || { echo "check.sh: $1 needs a value" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --bin) need "$@"; bin=$2; shift 2 ;;
        --python) need "$@"; python=$2; shift 2 ;;
        --device) need "$@"; device=$2; shift 2 ;;
        --quick) quick=1; shift ;;
        --out) need "$@"; out=$2; shift 2 ;;
        --work) need "$@"; work=$2; shift 2 ;;
        --sd15) need "$@"; sd15=$2; shift 2 ;;
        --budget) need "$@"; budget=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case $device in
    cuda | cpu) ;;
    *) echo "check.sh: --device is cuda or cpu" >&2; exit 2 ;;
esac
[[ $budget =~ ^[0-9]+$ ]] || { echo "check.sh: --budget is whole seconds" >&2; exit 2; }

# Absolute paths before moving to the repository root.
abs() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
bin=$(abs "$bin")
out=$(abs "$out")
[[ $python == */* ]] && python=$(abs "$python")
[[ -n $sd15 ]] && sd15=$(abs "$sd15")
if [[ -n $work ]]; then
    work=$(abs "$work")
    mkdir -p "$work" || exit 2
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX") || exit 2
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root" || exit 2
helpers=$root/tools/gpu/helpers.py

# No network: every model is a local folder or random weights made here.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 HF_DATASETS_OFFLINE=1
export DIFFUSERS_VERBOSITY=error TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

# The binary loads CUDA's libraries (cuBLAS, cuRAND, NVRTC, cuDNN 9) at run time: besides the
# system's, look in the toolkit's folder and, for cuDNN, in the Python's PyTorch wheels.
if [[ $device == cuda ]]; then
    libs=()
    [[ -d /usr/local/cuda/lib64 ]] && libs+=(/usr/local/cuda/lib64)
    if ! ldconfig -p 2> /dev/null | grep -q 'libcudnn\.so\.9'; then
        cudnn=$("$python" -c 'import os, nvidia.cudnn as c; print(os.path.join(list(c.__path__)[0], "lib"))' 2> /dev/null)
        [[ -n $cudnn && -d $cudnn ]] && libs+=("$cudnn")
    fi
    for dir in "${libs[@]}"; do
        LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$dir
    done
    export LD_LIBRARY_PATH
fi

mkdir -p "$work"/{logs,measure,tiny,bench,run}
: > "$work/steps.tsv"
printf '%s\n' "$argv" > "$work/argv.txt"
rm -f "$work/quick"
((quick)) && touch "$work/quick"
threads=$(nproc 2>/dev/null || echo 4)
t0=$SECONDS
reserve=20 # seconds kept for the summary

say() { echo "[gpu-check $((SECONDS - t0))s] $*" >&2; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$work/steps.tsv"; }

# step NAME TIMEOUT [--gpu] [--stdout FILE] -- CMD...
# Runs CMD through helpers.py measure (stderr to logs/NAME.log, stdout to FILE or
# logs/NAME.out, measurements to measure/NAME.json) and records the outcome.
step() {
    local name=$1 limit=$2
    shift 2
    local gpu=() stdout="$work/logs/$name.out"
    while [[ $# -gt 0 && $1 != -- ]]; do
        case $1 in
            --gpu) [[ $device == cuda ]] && gpu=(--gpu) ;;
            --stdout) stdout=$2; shift ;;
        esac
        shift
    done
    shift
    local left=$((budget - (SECONDS - t0) - reserve))
    if ((left < 15)); then
        record "$name" skipped 0 "not started: the ${budget} s budget is spent"
        say "$name: skipped (budget)"
        return 1
    fi
    ((limit > left)) && limit=$left
    say "$name: $*"
    local s=$SECONDS rc note=
    "$python" "$helpers" measure --json "$work/measure/$name.json" --stdout "$stdout" \
        "${gpu[@]}" --timeout "$limit" -- "$@" 2> "$work/logs/$name.log"
    rc=$?
    ((rc == 124)) && note="timed out after $limit s"
    ((rc == 127)) && note="could not start $1"
    record "$name" "$rc" $((SECONDS - s)) "$note"
    say "$name: rc $rc, $((SECONDS - s)) s $note"
    return "$rc"
}

# A step's output must exist (a command can exit 0 and write nothing).
expect() {
    local name=$1 file=$2
    if [[ ! -s $file ]]; then
        record "$name" missing 0 "exited 0 but wrote no $(basename "$file")"
        say "$name: no $(basename "$file")"
    fi
}

say "work folder $work; device $device; quick $quick; binary $bin"
s=$SECONDS
"$python" "$helpers" env --bin "$bin" --python "$python" --device "$device" --out "$work/env.json" \
    > "$work/logs/env.log" 2>&1
record env $? $((SECONDS - s)) ""
[[ -x $bin ]] || say "no executable binary at $bin: every step that needs it will fail"

# ---- 1. Tiny-model parity -------------------------------------------------------------------
tiny_args=(run --input tests/fixtures/parity/in_coffee_64x64.png --model tests/fixtures/tiny-sd
    --start-size 64x64 --target-mode scale --scale 1.0 --loops 1 --tile off
    --sampler ddim --steps 10 --denoise 0.5 --cfg 7.5 --seed 1234
    --prompt "a cup of coffee on a wooden table" --negative-prompt "blurry, lowres" --overwrite)
tiny_run() { # NAME DEVICE PRECISION
    local png="$work/tiny/ours_$1.png"
    rm -f "$png"
    step "tiny_ours_$1" 120 --gpu -- "$bin" "${tiny_args[@]}" --device "$2" --precision "$3" -o "$png" &&
        expect "tiny_ours_$1" "$png"
}
tiny_run cpu_f32 cpu f32
tiny_run dev_f16 "$device" f16
tiny_run dev_f32 "$device" f32
tiny_run dev_bf16 "$device" bf16
step tiny_diffusers 240 --gpu -- "$python" "$helpers" tiny-ref --device "$device" --out "$work/tiny/diffusers" &&
    expect tiny_diffusers "$work/tiny/diffusers/all_f16.out_u8.u8"

# ---- 2. UNet step, batch 2, f16: ours vs PyTorch ----------------------------------------------
if ((quick)); then sizes=(64) bench_steps=1; else sizes=(512 1024) bench_steps=5; fi
for arch in sd15 sdxl; do
    for size in "${sizes[@]}"; do
        key=${arch}_$size
        step "bench_${key}_ours" 240 --gpu --stdout "$work/bench/$key.ours.json" -- \
            "$bin" bench --arch "$arch" --size "$size" --batch 2 --steps "$bench_steps" \
            --device "$device" --precision f16 &&
            expect "bench_${key}_ours" "$work/bench/$key.ours.json"
        step "bench_${key}_torch" 240 --gpu --stdout "$work/bench/$key.torch.json" -- \
            "$python" tools/bench/unet_torch.py --arch "$arch" --size "$size" --batch 2 \
            --steps "$bench_steps" --threads "$threads" --device "$device" --dtype float16 &&
            expect "bench_${key}_torch" "$work/bench/$key.torch.json"
    done
done

# ---- 3. A whole default run on random SD 1.5 weights -----------------------------------------
if [[ -z $sd15 ]]; then
    sd15=$work/sd15-random
    if [[ -f $sd15/.complete ]]; then
        record make_sd15 0 0 "reused $sd15"
    else
        rm -rf "$sd15"
        step make_sd15 300 -- "$python" tools/bench/make_random_sd15.py "$sd15" && touch "$sd15/.complete"
    fi
fi
if ((quick)); then
    in_size=64
    run_extra=(--target-mode scale --scale 2 --steps 4)
    what="--quick: a 64x64 gradient, 4 loops up to 128x128 (--target-mode scale --scale 2), 4 scheduled steps at denoise 0.35, otherwise the defaults"
else
    in_size=512
    run_extra=()
    what="A 512x512 gradient input, the defaults: 4 loops up to 1024x1024 (linear curve), DDIM 30 scheduled steps at denoise 0.35, CFG 7, tiling auto (loops past 768 px), precision auto (f16 on CUDA, f32 on the CPU)"
fi
"$python" "$helpers" gradient "$in_size" "$work/run/input.png" 2> "$work/logs/gradient.log"
rm -rf "$work/run/loops" "$work/run/out.png"
printf '%s; model %s; --device %s, --seed 1.\n' "$what" "$sd15" "$device" > "$work/run/what.txt"
if [[ -f $sd15/model_index.json ]]; then
    step run_sd15 420 --gpu -- "$bin" run --input "$work/run/input.png" --model "$sd15" --device "$device" \
        --seed 1 --prompt "a photograph of a cat sitting on a wooden table" "${run_extra[@]}" \
        --save-loops "$work/run/loops" -o "$work/run/out.png" --overwrite &&
        expect run_sd15 "$work/run/out.png"
else
    record run_sd15 skipped 0 "no model at $sd15"
fi

# ---- Summary ----------------------------------------------------------------------------------
"$python" "$helpers" summary --work "$work" --out "$out" > "$work/logs/summary.log" 2>&1 || {
    say "the summary failed: $work/logs/summary.log"
    cat "$work/logs/summary.log" >&2
    exit 1
}
failed=$(awk -F'\t' '$2 != "0"' "$work/steps.tsv" | wc -l)
say "summary: $out ($failed step(s) failed or skipped; everything else in $work)"
((failed == 0))
