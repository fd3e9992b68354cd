#!/usr/bin/env bash
# One SD 1.5 UNet step (batch 2 = one classifier-free-guidance step, random weights) on the CPU:
# Loopback Scaler f32 and bf16, PyTorch f32 and bf16, OpenVINO f32 and bf16, back to back on
# this machine, REPEATS rounds (round-robin, so background load spreads over all engines); the
# table keeps each engine's best round.
#
#   tools/bench/compare_cpu_engines.sh [SIZE] [STEPS] [THREADS]
#
# Environment: PYTHON (a Python with torch, diffusers and openvino; default python3),
# REPEATS (default 2), FIRST_ROUND (default 1; a later number adds rounds to an earlier OUT),
# ENGINES (space-separated subset of: ours-f32 ours-bf16 torch-f32
# torch-bf16 ov-f32 ov-bf16), TIMEOUT (seconds per run, default 3600), OUT (folder for the JSON
# and stderr of every run; default a new temporary folder).
# A run that fails is recorded and the rest go on.
# The first round of torch-bf16, ov-f32 and ov-bf16 also compares the output with PyTorch f32
# on the same weights and input (tools/bench/unet_openvino.py --check).
# Build first: cargo build --release
set -uo pipefail
size=${1:-512}
steps=${2:-3}
threads=${3:-2}
py=${PYTHON:-python3}
repeats=${REPEATS:-2}
first=${FIRST_ROUND:-1}
engines=${ENGINES:-ours-f32 ours-bf16 torch-f32 torch-bf16 ov-f32 ov-bf16}
limit=${TIMEOUT:-3600}
cd "$(dirname "$0")/../.."
out=${OUT:-$(mktemp -d -t cpu-engines.XXXXXX)}
mkdir -p "$out"

command_for() { # engine round
    local common=(--arch sd15 --size "$size" --batch 2 --steps "$steps")
    local check=()
    [ "$2" = 1 ] && check=(--check)
    case $1 in
        ours-f32) echo RAYON_NUM_THREADS="$threads" ./target/release/loopback-scaler bench \
            "${common[@]}" --device cpu --precision f32 ;;
        ours-bf16) echo RAYON_NUM_THREADS="$threads" ./target/release/loopback-scaler bench \
            "${common[@]}" --device cpu --precision bf16 ;;
        torch-f32) echo "$py" tools/bench/unet_openvino.py --engine torch --precision f32 \
            "${common[@]}" --threads "$threads" ;;
        torch-bf16) echo "$py" tools/bench/unet_openvino.py --engine torch --precision bf16 \
            "${common[@]}" --threads "$threads" "${check[@]}" ;;
        ov-f32) echo "$py" tools/bench/unet_openvino.py --engine openvino --precision f32 \
            "${common[@]}" --threads "$threads" "${check[@]}" ;;
        ov-bf16) echo "$py" tools/bench/unet_openvino.py --engine openvino --precision bf16 \
            "${common[@]}" --threads "$threads" "${check[@]}" ;;
        *) echo "unknown engine $1" >&2; return 1 ;;
    esac
}

echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs;" \
    "$(lscpu | grep -o 'amx_bf16\|avx512_bf16' | sort -u | tr '\n' ' ')"
echo "size $size, batch 2, $steps timed steps after one warm-up, $threads threads; results in $out"
for round in $(seq "$first" $((first + repeats - 1))); do
    for engine in $engines; do
        cmd=$(command_for "$engine" "$round") || exit 1
        load=$(cut -d' ' -f1-3 /proc/loadavg)
        binary=""
        case $engine in ours-*) binary=$(stat -c %y target/release/loopback-scaler | cut -c1-19) ;; esac
        echo "[$(date +%H:%M:%S)] round $round $engine (load $load): $cmd"
        SECONDS=0
        env $cmd >"$out/$engine.$round.json" 2>"$out/$engine.$round.err"
        rc=$?
        printf '{"engine": "%s", "round": %s, "rc": %s, "load_before": "%s", "load_after": "%s", "wall_s": %s, "binary": "%s"}\n' \
            "$engine" "$round" "$rc" "$load" "$(cut -d' ' -f1-3 /proc/loadavg)" "$SECONDS" "$binary" \
            >"$out/$engine.$round.meta"
        [ $rc -ne 0 ] && echo "  failed (rc $rc): $(grep -v '^\s*$' "$out/$engine.$round.err" | tail -1)"
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$out" $engines <<'PY'
import glob, json, os, sys

out, engines = sys.argv[1], sys.argv[2:]
rows = {}
for engine in engines:
    runs, failures, accuracy = [], [], None
    for meta_path in sorted(glob.glob(f"{out}/{engine}.*.meta"),
                            key=lambda p: int(p.rsplit(".", 2)[1])):
        meta = json.load(open(meta_path))
        base = meta_path[:-5]
        if meta["rc"] != 0:
            lines = [l for l in open(base + ".err").read().splitlines() if l.strip()]
            failures.append((meta, lines[-1] if lines else ""))
            continue
        report = json.loads(open(base + ".json").read())
        accuracy = accuracy or report.get("accuracy")
        runs.append((meta, report))
    rows[engine] = (runs, failures, accuracy)

def best(engine):
    runs = rows[engine][0]
    return min(runs, key=lambda r: r[1]["unet_step"]["mean_s"]) if runs else None

reference = best("ov-bf16") if "ov-bf16" in rows else None
ref_s = reference[1]["unet_step"]["mean_s"] if reference else None
print()
print(f"| engine | s/step (best mean) | fastest step | all means | x OV bf16 | peak RSS GiB | 1-min load before/after (kept run) | note |")
print(f"|---|---|---|---|---|---|---|---|")
for engine in engines:
    runs, failures, accuracy = rows[engine]
    kept = best(engine)
    if kept is None:
        reason = failures[0][1] if failures else "not run"
        print(f"| {engine} | failed | | | | | {failures[0][0]['load_before'].split()[0] if failures else ''} | {reason[:160]} |")
        continue
    meta, report = kept
    step = report["unet_step"]
    means = ", ".join(f"{r[1]['unet_step']['mean_s']:.2f}" for r in runs)
    ratio = f"{step['mean_s'] / ref_s:.2f}" if ref_s else ""
    note = [report.get("engine") or f"loopback-scaler (binary of {meta.get('binary', '?')})"]
    if accuracy:
        note.append(f"|Δ| vs torch f32: max {accuracy['max_rel_to_std']:.2g}, mean "
                    f"{accuracy['mean_rel_to_std']:.2g} of std")
    if "compiled_properties" in report:
        note.append(f"hint {report['compiled_properties'].get('INFERENCE_PRECISION_HINT')}")
        note.append(f"compile {report['compile_s']:.1f} s")
    if report.get("convert_s"):
        note.append(f"convert {report['convert_s']:.1f} s")
    if "cpu_util" in step:
        note.append(f"CPU util {step['cpu_util']:.2f}")
    if failures:
        note.append(f"{len(failures)} failed round(s)")
    print(f"| {engine} | {step['mean_s']:.2f} | {step['min_s']:.2f} | {means} | {ratio} | "
          f"{report['peak_rss_mib'] / 1024:.2f} | {meta['load_before'].split()[0]}/{meta.get('load_after', '?').split()[0]} | {'; '.join(note)} |")
PY
