#!/usr/bin/env python3
"""Times the same UNet step as `loopback-scaler bench` on OpenVINO (or PyTorch) on the CPU.

Run from the repository root, with the same thread count as the Rust side:

    python3 tools/bench/unet_openvino.py --engine openvino --precision bf16 \
        --arch sd15 --size 512 --batch 2 --steps 3 --threads 2 [--check]
    python3 tools/bench/unet_openvino.py --engine torch --precision bf16 ...

Random weights (seeded) of the published SD 1.5 / SD 2.1 UNets, one warm-up call, then
`--steps` timed calls. Prints JSON in the shape of tools/bench/unet_torch.py's output.

OpenVINO: the diffusers UNet is converted with `openvino.convert_model` (dynamic shapes) and
saved as IR (f32 weights) under --ir-cache, keyed by arch, seed and torch/diffusers versions, so
a second run skips the conversion. Loading, reshaping to the static input shapes, compiling
(INFERENCE_NUM_THREADS, INFERENCE_PRECISION_HINT, PERFORMANCE_HINT=LATENCY) and the timed
inference run in a child process that imports neither torch nor diffusers, so its peak RSS is
what an OpenVINO app holds (FastSD CPU loads IR the same way); the parent's peak (torch model +
conversion) is reported separately as convert_peak_rss_mib.

PyTorch: `--precision bf16` casts the model and inputs to bfloat16 (what a diffusers pipeline
with torch_dtype=torch.bfloat16 does); `--torch-bf16 autocast` keeps f32 weights under
torch.autocast("cpu", torch.bfloat16) instead.

`--check` runs the PyTorch f32 UNet once on the same input and reports max and mean |Δ| of this
engine's output, relative to the f32 output's standard deviation (f32 engines should be ~1e-5;
bf16 ~1e-2), plus, for OpenVINO, the compiled model's INFERENCE_PRECISION_HINT and the
precisions the CPU plugin actually runs its convolutions and matmuls in.
"""

import argparse
import collections
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

# Copied from tools/bench/unet_torch.py (kept in step by hand).
UNETS = {
    "sd15": dict(attention_head_dim=8, cross_attention_dim=768, use_linear_projection=False),
    "sd21": dict(attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, use_linear_projection=True),
}
COMMON = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    norm_num_groups=32,
)


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(n, fn):
    """One warm-up call, then n timed calls. cpu_util is this process's CPU seconds per wall
    second over the timed calls: near the thread count on an idle machine, lower when other
    processes take cores away (spin-waiting threads count as busy)."""
    fn()
    runs = []
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    for _ in range(n):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    cpu_util = (time.process_time() - cpu_start) / (time.perf_counter() - wall_start)
    return {"mean_s": sum(runs) / len(runs), "min_s": min(runs), "runs": runs, "cpu_util": cpu_util}


def difference(out, ref):
    import numpy as np

    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    diff = np.abs(out - ref)
    std = float(ref.std())
    return {
        "reference": "PyTorch f32, same weights and input",
        "ref_std": std,
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_rel_to_std": float(diff.max()) / std,
        "mean_rel_to_std": float(diff.mean()) / std,
        "finite": bool(np.isfinite(out).all()),
    }


# ---------------------------------------------------------------------------------------------
# Child: OpenVINO only (no torch in this process).


def openvino_child(args):
    import numpy as np
    import openvino as ov

    io = np.load(args.child_io)
    inputs = [io["sample"], io["timestep"], io["context"]]
    core = ov.Core()
    report = {}

    start = time.perf_counter()
    model = core.read_model(args.child_ir)
    report["read_s"] = time.perf_counter() - start
    shapes = {}
    for port, array in zip(model.inputs, inputs):
        shapes[port] = ov.PartialShape(list(array.shape))
    model.reshape(shapes)

    config = {
        "INFERENCE_NUM_THREADS": args.threads,
        "INFERENCE_PRECISION_HINT": args.precision,
        "PERFORMANCE_HINT": "LATENCY",
    }
    start = time.perf_counter()
    compiled = core.compile_model(model, "CPU", config)
    report["compile_s"] = time.perf_counter() - start
    del model
    gc.collect()
    report["rss_after_compile_mib"] = current_rss_mib()

    props = {}
    for name in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS",
                 "PERFORMANCE_HINT", "ENABLE_HYPER_THREADING", "ENABLE_CPU_PINNING"):
        try:
            props[name] = str(compiled.get_property(name))
        except Exception as error:  # noqa: BLE001 - a property this version lacks
            props[name] = f"unavailable ({type(error).__name__})"
    report["compiled_properties"] = props
    report["runtime_precisions"] = runtime_precisions(compiled)

    request = compiled.create_infer_request()
    feed = {i: array for i, array in enumerate(inputs)}
    report["unet_step"] = timed(args.steps, lambda: request.infer(feed))
    out = request.get_output_tensor(0).data.astype(np.float32)
    np.save(args.child_out, out)
    report["rss_end_mib"] = current_rss_mib()
    report["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(report))


def runtime_precisions(compiled):
    """Counts the CPU plugin's compute layers by type, runtime precision and kernel."""
    counts = collections.Counter()
    try:
        for op in compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            layer = info["layerType"].astype(str)
            if layer not in ("Convolution", "Deconvolution", "FullyConnected", "MatMul",
                             "ScaledDotProductAttention", "Subgraph", "MVN"):
                continue
            precision = info["runtimePrecision"].astype(str)
            kernel = info["primitiveType"].astype(str)
            counts[f"{layer} {precision} {kernel}"] += 1
    except Exception as error:  # noqa: BLE001 - diagnostics only
        return {"error": f"{type(error).__name__}: {error}"}
    return dict(sorted(counts.items()))


def current_rss_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


# ---------------------------------------------------------------------------------------------
# Parent: builds the diffusers UNet, converts it, runs the child (OpenVINO) or times PyTorch.


def build(args):
    import torch
    from diffusers import UNet2DConditionModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    unet = UNet2DConditionModel(**COMMON, **UNETS[args.arch]).eval()
    load_s = time.perf_counter() - start
    generator = torch.Generator().manual_seed(args.seed + 1)
    latent = args.size // 8
    x = torch.randn(args.batch, 4, latent, latent, generator=generator)
    context = torch.randn(args.batch, 77, UNETS[args.arch]["cross_attention_dim"], generator=generator)
    t = torch.tensor(500)
    return unet, (x, t, context), load_s


def ir_path(args):
    import diffusers
    import torch

    key = f"{args.arch}_seed{args.seed}_torch{torch.__version__}_diffusers{diffusers.__version__}"
    key = key.replace("+", "_")
    return os.path.join(args.ir_cache, key, "unet.xml")


def run_openvino(args, report, unet, inputs):
    import numpy as np
    import openvino as ov
    import torch

    class Wrapper(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                             return_dict=False)[0]

    report["engine"] = f"openvino {ov.__version__}"
    path = ir_path(args)
    report["ir"] = path
    if args.reconvert or not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        start = time.perf_counter()
        with torch.no_grad():
            model = ov.convert_model(Wrapper(unet), example_input=inputs)
        report["convert_s"] = time.perf_counter() - start
        start = time.perf_counter()
        ov.save_model(model, path, compress_to_fp16=False)
        report["save_ir_s"] = time.perf_counter() - start
        report["ir_cached"] = False
        del model
        gc.collect()
    else:
        report["convert_s"] = None
        report["ir_cached"] = True
    report["convert_peak_rss_mib"] = peak_rss_mib()

    with tempfile.TemporaryDirectory() as tmp:
        io_path = os.path.join(tmp, "io.npz")
        out_path = os.path.join(tmp, "out.npy")
        x, t, context = inputs
        np.savez(io_path, sample=x.numpy(), timestep=t.numpy(), context=context.numpy())
        child = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--engine", "openvino",
             "--precision", args.precision, "--threads", str(args.threads),
             "--steps", str(args.steps), "--child-ir", path, "--child-io", io_path,
             "--child-out", out_path],
            check=True, stdout=subprocess.PIPE, text=True)
        report.update(json.loads(child.stdout.strip().splitlines()[-1]))
        return np.load(out_path)


def run_torch(args, report, unet, inputs):
    import torch

    report["engine"] = f"torch {torch.__version__}"
    x, t, context = inputs
    if args.precision == "bf16" and args.torch_bf16 == "cast":
        unet = unet.to(torch.bfloat16)
        x, context = x.to(torch.bfloat16), context.to(torch.bfloat16)
        report["torch_bf16"] = "model.to(torch.bfloat16)"
        step = lambda: unet(x, t, encoder_hidden_states=context, return_dict=False)[0]  # noqa: E731
    elif args.precision == "bf16":
        report["torch_bf16"] = "torch.autocast('cpu', torch.bfloat16), f32 weights"

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return unet(x, t, encoder_hidden_states=context, return_dict=False)[0]
    else:
        step = lambda: unet(x, t, encoder_hidden_states=context, return_dict=False)[0]  # noqa: E731
    out = []
    with torch.no_grad():
        report["unet_step"] = timed(args.steps, lambda: out.append(step()))
    report["peak_rss_mib"] = peak_rss_mib()
    return out[-1].float().numpy()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=["openvino", "torch"], default="openvino")
    parser.add_argument("--arch", choices=sorted(UNETS), default="sd15")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    parser.add_argument("--torch-bf16", choices=["cast", "autocast"], default="cast")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true",
                        help="compare the output with PyTorch f32 on the same input")
    parser.add_argument("--ir-cache", default=os.path.join(tempfile.gettempdir(), "loopback-ov-ir"))
    parser.add_argument("--reconvert", action="store_true", help="ignore a cached IR")
    parser.add_argument("--child-ir", help=argparse.SUPPRESS)
    parser.add_argument("--child-io", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_ir:
        openvino_child(args)
        return

    import diffusers
    import torch

    unet, inputs, load_s = build(args)
    report = {
        "model": f"{args.arch} (random weights, seed {args.seed})",
        "device": f"CPU ({args.threads} threads)",
        "dtype": {"f32": "F32", "bf16": "BF16"}[args.precision],
        "precision": args.precision,
        "size": args.size,
        "batch": args.batch,
        "threads": args.threads,
        "load_s": load_s,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
    }
    try:
        import openvino

        report["versions"]["openvino"] = openvino.__version__
    except ImportError:
        pass
    reference = None
    if args.check:
        x, t, context = inputs
        start = time.perf_counter()
        with torch.no_grad():
            reference = unet(x, t, encoder_hidden_states=context, return_dict=False)[0].numpy()
        report["reference_s"] = time.perf_counter() - start
    if args.engine == "openvino":
        out = run_openvino(args, report, unet, inputs)
    else:
        out = run_torch(args, report, unet, inputs)
    if reference is not None:
        report["accuracy"] = difference(out, reference)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
