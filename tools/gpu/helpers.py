#!/usr/bin/env python3
"""Helpers of tools/gpu/check.sh (standard library only, except `tiny-ref` and `gradient`).

    helpers.py env --bin BIN --python PY --device DEV --out env.json
        GPU name (nvidia-smi -L), driver, CUDA (driver, nvcc, PyTorch), cuDNN, CPU model, the
        binary's version and which CUDA libraries it links.
    helpers.py measure --json OUT.json --stdout OUT.txt [--gpu] [--timeout S] -- CMD ...
        Runs CMD (its stderr goes to ours), records rc, wall time, the child's peak RSS
        (wait4) and, with --gpu, the largest `nvidia-smi --query-gpu=memory.used` printed every
        100 ms during the run (one `nvidia-smi -lms 100`) and the idle value sampled before it. rc 124: timed out (the
        whole process group is killed).
    helpers.py gradient SIZE OUT.png
        loop_torch.py's input: a gradient (x, y, their mean), SIZE x SIZE RGB.
    helpers.py tiny-ref --device DEV --out DIR
        diffusers on tests/fixtures/tiny-sd on DEV: tools/parity/make_half_parity.py's "f32" and
        "all_f16" cases (its own denoise and decode; only the preparation is moved to DEV;
        on CUDA with TF32 off, so f32 is f32), out_u8 of each as raw HWC u8, and on the CPU a
        check that they reproduce the committed fixture tests/fixtures/half-parity/ byte for
        byte.
    helpers.py summary --work DIR --out FILE.md
        Reads what check.sh left in DIR and writes the summary (Markdown).
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HALF = ROOT / "tests/fixtures/half-parity"


# ---------------------------------------------------------------------------------------------
def sh(cmd, timeout=30):
    """stdout of cmd (stripped), or None when it fails or is missing."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cmd_env(args):
    env = {"time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "device": args.device}
    env["nvidia_smi_L"] = sh(["nvidia-smi", "-L"])
    q = sh(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    env["gpu_query"] = q
    smi = sh(["nvidia-smi"])
    m = re.search(r"CUDA Version:\s*([0-9.]+)", smi or "")
    env["driver_cuda_version"] = m.group(1) if m else None
    nvcc = sh(["nvcc", "--version"])
    m = re.search(r"release ([0-9.]+)", nvcc or "")
    env["nvcc"] = m.group(1) if m else None
    env["cpu"] = None
    lscpu = sh(["lscpu"]) or ""
    m = re.search(r"^Model name:\s*(.+)$", lscpu, re.M)
    env["cpu"] = m.group(1).strip() if m else platform.processor() or None
    env["cpus"] = os.cpu_count()
    env["os"] = platform.platform()
    env["python"] = args.python
    env["ld_library_path"] = os.environ.get("LD_LIBRARY_PATH")
    ldconfig = sh(["ldconfig", "-p"]) or ""
    env["ldconfig_cuda_libs"] = sorted({m.group(1) for m in re.finditer(r"^\s*(lib(?:cudnn|cublas|curand|nvrtc|cudart)"
                                                                     r"\.so\.[0-9]+)\s", ldconfig, re.M)})
    probe = (
        "import json, torch, diffusers; c = torch.cuda.is_available(); print(json.dumps({"
        "'torch': torch.__version__, 'torch_cuda': torch.version.cuda, 'diffusers': diffusers.__version__, "
        "'cuda_available': c, 'cudnn': torch.backends.cudnn.version() if c else None, "
        "'torch_gpu': torch.cuda.get_device_name(0) if c else None}))"
    )
    out = sh([args.python, "-c", probe], timeout=120)
    env["python_stack"] = json.loads(out) if out else None
    env["binary"] = args.bin
    env["binary_version"] = sh([args.bin, "--version"])
    ldd = sh(["ldd", args.bin]) or ""
    libs = sorted({m.group(1) for m in re.finditer(r"^\s*(lib(?:cuda|cudart|cublas\w*|curand|cudnn\w*|nvrtc)[^ ]*)",
                                                     ldd, re.M)})
    env["binary_cuda_libs"] = libs
    try:
        env["binary_mib"] = round(os.path.getsize(args.bin) / 2**20, 1)
    except OSError:
        env["binary_mib"] = None
    Path(args.out).write_text(json.dumps(env, indent=1) + "\n")
    print(json.dumps(env, indent=1))


# ---------------------------------------------------------------------------------------------
def gpu_used_mib():
    out = sh(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], timeout=10)
    if not out:
        return None
    try:
        return float(out.splitlines()[0].strip())
    except ValueError:
        return None


def cmd_measure(args):
    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    gpu = args.gpu and shutil.which("nvidia-smi") is not None
    rec = {"cmd": cmd, "gpu_sampled": gpu}
    if gpu:
        rec["gpu_idle_mib"] = gpu_used_mib()
    samples = []
    smi = None
    if gpu:  # one nvidia-smi printing memory.used every 100 ms
        smi = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                "-lms", "100"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def sample():
        for line in smi.stdout:
            try:
                samples.append(float(line.strip()))
            except ValueError:
                pass

    with open(args.stdout, "wb") as out:
        rec["start_unix"] = time.time()
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(cmd, stdout=out, start_new_session=True)
        except OSError as e:
            rec.update(rc=127, error=str(e), wall_s=0.0)
            Path(args.json).write_text(json.dumps(rec, indent=1) + "\n")
            print(f"measure: cannot start {cmd[0]}: {e}", file=sys.stderr)
            return 127
        sampler = threading.Thread(target=sample, daemon=True)
        if gpu:
            sampler.start()
        timed_out = threading.Event()

        def kill():
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass

        timer = threading.Timer(args.timeout, kill) if args.timeout else None
        if timer:
            timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if timer:
            timer.cancel()
        if gpu:
            smi.terminate()
            smi.wait()
            sampler.join()
    rc = 124 if timed_out.is_set() else os.waitstatus_to_exitcode(status)
    rec.update(rc=rc, timed_out=timed_out.is_set(), wall_s=wall, peak_rss_mib=usage.ru_maxrss / 1024)
    if gpu:
        rec["gpu_samples"] = len(samples)
        rec["gpu_peak_used_mib"] = max(samples) if samples else None
        if samples and rec["gpu_idle_mib"] is not None:
            rec["gpu_peak_over_idle_mib"] = max(samples) - rec["gpu_idle_mib"]
    Path(args.json).write_text(json.dumps(rec, indent=1) + "\n")
    return rc


# ---------------------------------------------------------------------------------------------
def cmd_gradient(args):
    import numpy as np
    from PIL import Image

    size = args.size
    scale = 255.0 / max(size - 1, 1)
    x = np.arange(size, dtype=np.float64) * scale
    xs, ys = np.meshgrid(x, x)
    rgb = np.stack([xs, ys, (xs + ys) / 2.0], axis=-1)
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(args.out)


# ---------------------------------------------------------------------------------------------
def cmd_tiny_ref(args):
    sys.path.insert(0, str(ROOT / "tools/parity"))
    import numpy as np
    import torch
    from PIL import Image
    from diffusers import StableDiffusionImg2ImgPipeline

    import make_half_parity as mhp  # its constants, CASES, denoise and decode
    import make_sampler_parity as msp  # to_u8

    device = torch.device(args.device)
    cpu = device.type == "cpu"
    if cpu:  # as the fixture was made: then the results must equal it byte for byte
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
    else:  # f32 means f32: no TF32 convolutions (cuDNN's default) or matmuls
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image = Image.open(mhp.INPUT_PNG).convert("RGB")
    report = {"device": str(device), "torch": torch.__version__, "cases": {}}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    for case, dtype in (("f32", torch.float32), ("all_f16", torch.float16)):
        dt = mhp.CASES[case]
        assert set(dt.values()) == {dtype}
        start = time.perf_counter()
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(mhp.MODEL_DIR, torch_dtype=dtype,
                                                              local_files_only=True).to(device)
        pipe.set_progress_bar_config(disable=True)
        pipes = {dtype: pipe}
        with torch.no_grad():
            # make_half_parity.prepare, with the device: context, init latents (posterior mean *
            # scaling, contiguous NCHW), noise drawn on the CPU in float32 and cast.
            cond, uncond = pipe.encode_prompt(mhp.PROMPT, device, 1, True, mhp.NEGATIVE)
            context = torch.cat([uncond, cond])
            x = pipe.image_processor.preprocess(image).to(torch.float32)
            mean = pipe.vae.encode(x.to(device, dtype)).latent_dist.mean
            init = (pipe.vae.config.scaling_factor * mean).contiguous().to(dtype)
            noise = torch.randn(init.shape, generator=torch.Generator("cpu").manual_seed(mhp.SEED),
                                dtype=torch.float32).to(device, dtype)
            final, timesteps, _ = mhp.denoise(pipes, case, context, init, noise)
            decoded = mhp.decode(pipes, case, final)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        _, u8 = msp.to_u8(decoded.float().cpu())
        u8.tofile(out / f"{case}.out_u8.u8")
        final.float().cpu().numpy().astype("<f4").tofile(out / f"{case}.latents.f32")
        ref_lat = np.fromfile(HALF / f"{case}.latents.f32", dtype="<f4")
        ref_u8 = np.fromfile(HALF / f"{case}.out_u8.u8", dtype=np.uint8)
        d = np.abs(u8.reshape(-1).astype(np.int32) - ref_u8.astype(np.int32))
        lat = np.abs(final.float().cpu().numpy().reshape(-1) - ref_lat)
        report["cases"][case] = {
            "dtype": str(dtype).replace("torch.", ""),
            "timesteps": timesteps,
            "seconds_with_load": seconds,
            "finite": bool(torch.isfinite(decoded).all()),
            "vs_committed_fixture": {"latents_max_abs": float(lat.max()), "latents_mean_abs": float(lat.mean()),
                                     "out_u8_max": int(d.max()), "out_u8_mean": float(d.mean())},
        }
        if cpu:
            same = bool(d.max() == 0 and lat.max() == 0)
            report["cases"][case]["identical_to_fixture"] = same
            if not same:
                raise SystemExit(f"tiny-ref on the CPU does not reproduce half-parity/{case}: {report['cases'][case]}")
        del pipe, pipes
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------
def load_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_u8(path):
    """An image as a flat u8 array: a PNG (RGB) or a raw .u8 file; None when missing."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        return None
    if p.suffix == ".png":
        from PIL import Image

        return np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8).reshape(-1)
    return np.fromfile(p, dtype=np.uint8)


def fmt(v, digits=3):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def tail(path, n=12):
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def cmd_summary(args):
    import numpy as np

    work = Path(args.work)
    env = load_json(work / "env.json") or {}
    steps = []
    status_file = work / "steps.tsv"
    if status_file.is_file():
        for line in status_file.read_text().splitlines():
            name, rc, secs, note = (line.split("\t") + ["", "", ""])[:4]
            steps.append({"name": name, "rc": rc, "seconds": secs, "note": note})
    failed = [s for s in steps if s["rc"] != "0"]
    dev = env.get("device", "?")
    quick = (work / "quick").exists()
    L = []
    title = "GPU check" if dev != "cpu" else "GPU check — CPU dry run (not a GPU measurement)"
    L.append(f"# {title}\n")
    argv = (work / "argv.txt").read_text().strip() if (work / "argv.txt").is_file() else ""
    L.append(f"`tools/gpu/check.sh {argv}`".replace(" `", "`") + "\n")
    L.append("## Machine\n")
    ps = env.get("python_stack") or {}
    rows = [
        ("date (UTC)", env.get("time_utc")),
        ("device", dev + (" (--quick: smallest sizes and steps)" if quick else "")),
        ("GPU (nvidia-smi -L)", (env.get("nvidia_smi_L") or "none").replace("\n", "; ")),
        ("GPU name, driver, memory", env.get("gpu_query")),
        ("driver's CUDA version", env.get("driver_cuda_version")),
        ("nvcc", env.get("nvcc")),
        ("CPU", f"{env.get('cpu')} ({env.get('cpus')} logical CPUs)"),
        ("OS", env.get("os")),
        ("PyTorch / its CUDA / cuDNN", f"{ps.get('torch')} / {ps.get('torch_cuda')} / {ps.get('cudnn')}"),
        ("diffusers", ps.get("diffusers")),
        ("PyTorch sees a GPU", f"{ps.get('cuda_available')} ({ps.get('torch_gpu')})"),
        ("binary", f"{env.get('binary')} ({env.get('binary_version')}, {env.get('binary_mib')} MiB)"),
        ("LD_LIBRARY_PATH", env.get("ld_library_path")),
        ("ldconfig knows", ", ".join(env.get("ldconfig_cuda_libs") or []) or "no CUDA library"),
        ("binary links", ", ".join(env.get("binary_cuda_libs") or []) or "no CUDA library (cudarc loads them at run time)"),
    ]
    L.append("| | |\n|---|---|")
    L += [f"| {k} | {fmt(v)} |" for k, v in rows]
    L.append("")
    L.append(f"**Steps: {len(steps) - len(failed)} of {len(steps)} passed**"
             + (f"; failed or skipped: {', '.join(s['name'] for s in failed)}" if failed else "") + "\n")

    # ---- 1. tiny parity
    L.append("## 1. Tiny-model parity (tests/fixtures/tiny-sd, 64×64 coffee, DDIM 10 steps, denoise 0.5, "
             "CFG 7.5, seed 1234)\n")
    L.append("Differences |Δ| between two 64×64 RGB outputs in 8-bit levels (12,288 values). *ours* = `loopback-scaler run`, "
             f"*dev* = `--device {dev}`; *diffusers* = `helpers.py tiny-ref` (make_half_parity.py's loop on "
             f"{dev}); *fixture* = the committed tests/fixtures/half-parity/ (PyTorch on the CPU).\n")
    tiny = work / "tiny"
    imgs = {
        "ours CPU f32": tiny / "ours_cpu_f32.png",
        "ours dev f16": tiny / "ours_dev_f16.png",
        "ours dev f32": tiny / "ours_dev_f32.png",
        "ours dev bf16": tiny / "ours_dev_bf16.png",
        "diffusers dev f16": tiny / "diffusers/all_f16.out_u8.u8",
        "diffusers dev f32": tiny / "diffusers/f32.out_u8.u8",
        "fixture f32 (PyTorch CPU f32)": HALF / "f32.out_u8.u8",
        "fixture all_f16 (PyTorch CPU f16)": HALF / "all_f16.out_u8.u8",
        "fixture all_bf16 (PyTorch CPU bf16)": HALF / "all_bf16.out_u8.u8",
    }
    pairs = [
        ("ours dev f16", "ours CPU f32"),
        ("ours dev f32", "ours CPU f32"),
        ("ours dev bf16", "ours CPU f32"),
        ("ours dev f16", "diffusers dev f16"),
        ("ours dev f32", "diffusers dev f32"),
        ("ours CPU f32", "fixture f32 (PyTorch CPU f32)"),
        ("ours dev f16", "fixture f32 (PyTorch CPU f32)"),
        ("ours dev f16", "fixture all_f16 (PyTorch CPU f16)"),
        ("ours dev bf16", "fixture all_bf16 (PyTorch CPU bf16)"),
        ("diffusers dev f16", "fixture f32 (PyTorch CPU f32)"),
        ("diffusers dev f16", "fixture all_f16 (PyTorch CPU f16)"),
        ("diffusers dev f32", "fixture f32 (PyTorch CPU f32)"),
        ("fixture all_f16 (PyTorch CPU f16)", "fixture f32 (PyTorch CPU f32)"),
    ]
    L.append("| a | b | max | mean | values differing |\n|---|---|---:|---:|---:|")
    results = {}
    for a, b in pairs:
        x, y = read_u8(imgs[a]), read_u8(imgs[b])
        if x is None or y is None:
            missing = a if x is None else b
            L.append(f"| {a} | {b} | — | — | ({missing}: not made) |")
            continue
        if x.shape != y.shape:
            L.append(f"| {a} | {b} | — | — | shapes differ {x.shape} / {y.shape} |")
            continue
        d = np.abs(x.astype(np.int32) - y.astype(np.int32))
        results[(a, b)] = (int(d.max()), float(d.mean()))
        L.append(f"| {a} | {b} | {int(d.max())} | {d.mean():.3f} | {int((d > 0).sum())} |")
    ref = load_json(tiny / "diffusers/report.json")
    if ref:
        L.append("")
        for case, r in ref["cases"].items():
            v = r["vs_committed_fixture"]
            extra = (f", identical to the fixture: {r['identical_to_fixture']}" if "identical_to_fixture" in r else "")
            L.append(f"- diffusers {case} on {ref['device']}: final latents vs the fixture's max |Δ| "
                     f"{v['latents_max_abs']:.4g}, mean {v['latents_mean_abs']:.4g}; finite {r['finite']}{extra}")
    manifest = load_json(HALF / "manifest.json")
    if manifest:
        cases = {c["name"]: c for c in manifest["cases"]}
        torch16 = max(cases[n]["diff_to_f32"]["out_u8_max_abs"] for n in ("unet_f16", "all_f16"))
        mine = results.get(("ours dev f16", "fixture f32 (PyTorch CPU f32)"))
        if mine:
            verdict = "within" if mine[0] <= torch16 + 1 else "OUTSIDE"
            L.append(f"- ours f16 on {dev} vs the f32 reference: max {mine[0]} levels — {verdict} PyTorch's own CPU "
                     f"f16 distance ({torch16} levels, the bound crates/engine/tests/half.rs allows is that + 1)")
    L.append("")

    # ---- 2. UNet bench
    L.append("## 2. UNet step, batch 2 (one CFG step), random weights, f16\n")
    L.append("ours = `loopback-scaler bench --arch A --size S --batch 2 --precision f16`; PyTorch = "
             "`tools/bench/unet_torch.py --arch A --dtype float16` (diffusers UNet2DConditionModel). "
             "Peak GPU memory: the largest `nvidia-smi` memory.used sampled every 0.1 s minus the idle value before "
             "the process started (CUDA context included); PyTorch's own torch.cuda.max_memory_allocated beside it. "
             "Peak RSS: the process's (wait4).\n")
    L.append("| arch | size | ours s/step | PyTorch s/step | ours / PyTorch | ours load s | PyTorch load s | "
             "ours peak GPU MiB (smi) | PyTorch peak GPU MiB (smi) | PyTorch max_memory_allocated MiB | "
             "ours peak RSS MiB | PyTorch peak RSS MiB |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for f in sorted((work / "bench").glob("*.ours.json")):
        key = f.name[: -len(".ours.json")]
        arch, size = key.split("_")
        ours, torch_ = load_json(f), load_json(work / "bench" / f"{key}.torch.json")
        mo = load_json(work / "measure" / f"bench_{key}_ours.json")
        mt = load_json(work / "measure" / f"bench_{key}_torch.json")
        a = (ours or {}).get("unet_step", {}).get("mean_s")
        b = (torch_ or {}).get("unet_step", {}).get("mean_s")
        ratio = a / b if a and b else None
        L.append(f"| {arch} | {size} | {fmt(a, 4)} | {fmt(b, 4)} | {fmt(ratio, 2)} | {fmt((ours or {}).get('load_s'), 1)} | "
                 f"{fmt((torch_ or {}).get('load_s'), 1)} | {fmt((mo or {}).get('gpu_peak_over_idle_mib'), 0)} | "
                 f"{fmt((mt or {}).get('gpu_peak_over_idle_mib'), 0)} | {fmt((torch_ or {}).get('peak_gpu_mib'), 0)} | "
                 f"{fmt((mo or {}).get('peak_rss_mib'), 0)} | {fmt((mt or {}).get('peak_rss_mib'), 0)} |")
    L.append("")

    # ---- 3. whole run
    L.append("## 3. Whole default run (4 loops) on random SD 1.5 weights\n")
    run = load_json(work / "measure" / "run_sd15.json")
    info = (work / "run" / "what.txt")
    if info.is_file():
        L.append(info.read_text().strip() + "\n")
    if run:
        L.append("| wall s | rc | peak GPU MiB over idle (smi) | peak GPU used MiB (smi) | peak RSS MiB |\n"
                 "|---:|---:|---:|---:|---:|")
        L.append(f"| {fmt(run.get('wall_s'), 1)} | {run.get('rc')} | {fmt(run.get('gpu_peak_over_idle_mib'), 0)} | "
                 f"{fmt(run.get('gpu_peak_used_mib'), 0)} | {fmt(run.get('peak_rss_mib'), 0)} |")
        log = tail(work / "logs" / "run_sd15.log", 14)
        m = re.search(r"model loaded in ([0-9.]+) s", log)
        if m:
            L.append(f"\nModel load (the run's own line): {m.group(1)} s.")
        loops = sorted((work / "run" / "loops").glob("*.png")) if (work / "run" / "loops").is_dir() else []
        if loops and run.get("start_unix"):
            from PIL import Image

            L.append("\nEach loop's image as `--save-loops` wrote it (seconds since the process started, from the "
                     "files' modification times; loop 1 includes loading the model):\n")
            L.append("| loop | size | written at s | loop s |\n|---|---|---:|---:|")
            prev = None
            for p in loops:
                with Image.open(p) as im:
                    dims = f"{im.width}×{im.height}"
                at = p.stat().st_mtime - run["start_unix"]
                L.append(f"| {p.stem} | {dims} | {at:.1f} | {fmt(at - prev if prev is not None else None, 1)} |")
                prev = at
        if log:
            L.append("\nIts log's last lines:\n\n```\n" + log + "\n```")
    else:
        L.append("(not run)")
    L.append("")

    # ---- steps and failures
    L.append("## Steps\n")
    L.append("| step | rc | seconds | note |\n|---|---:|---:|---|")
    for s in steps:
        L.append(f"| {s['name']} | {s['rc']} | {s['seconds']} | {s['note']} |")
    for s in failed:
        log = tail(work / "logs" / f"{s['name']}.log", 15)
        L.append(f"\n### {s['name']}: rc {s['rc']} {s['note']}\n\n```\n{log or '(no output)'}\n```")
    L.append(f"\nEverything the steps wrote (JSON reports, logs, images): `{work}`.\n")
    text = "\n".join(L)
    Path(args.out).write_text(text)
    print(text)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="what", required=True)
    e = sub.add_parser("env")
    e.add_argument("--bin", required=True)
    e.add_argument("--python", required=True)
    e.add_argument("--device", required=True)
    e.add_argument("--out", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--json", required=True)
    m.add_argument("--stdout", required=True)
    m.add_argument("--gpu", action="store_true")
    m.add_argument("--timeout", type=float, default=0)
    m.add_argument("cmd", nargs=argparse.REMAINDER)
    g = sub.add_parser("gradient")
    g.add_argument("size", type=int)
    g.add_argument("out")
    t = sub.add_parser("tiny-ref")
    t.add_argument("--device", default="cpu")
    t.add_argument("--out", required=True)
    s = sub.add_parser("summary")
    s.add_argument("--work", required=True)
    s.add_argument("--out", required=True)
    args = p.parse_args()
    fn = {"env": cmd_env, "measure": cmd_measure, "gradient": cmd_gradient, "tiny-ref": cmd_tiny_ref,
          "summary": cmd_summary}[args.what]
    sys.exit(fn(args) or 0)


if __name__ == "__main__":
    main()
