#!/usr/bin/env python3
"""Times one whole img2img loop with diffusers, like `loopback-scaler bench --loop`.

Run from the repository root, on the same diffusers folder and thread count as the Rust side
(a random-weight SD 1.5 folder: `tools/bench/make_random_sd15.py`):

    python3 tools/bench/loop_torch.py --model /tmp/sd15-random --size 512 --threads 2

StableDiffusionImg2ImgPipeline on the CPU (float32, or `--dtype bfloat16`: the whole pipeline
in bf16, as `torch_dtype=torch.bfloat16` loads it), DDIM (the folder's scheduler config), CFG
7, the same prompt, an empty negative prompt and the same gradient input image as the Rust
side; one call (no warm-up, as on the Rust side). Reports the loop's seconds, split at the
step callbacks (before the steps: prompt encoding, VAE encode, noise; the mean step; after
the steps: VAE decode and the image conversion), and the peak resident memory during the
loop (Linux: the peak is reset through /proc/self/clear_refs after loading).
"""

import argparse
import json
import time

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline
from PIL import Image

from procmem import reset_peak, status_kib

PROMPT = "a photograph of a cat sitting on a wooden table"


def gradient(size):
    """The Rust side's `bench_loop::gradient`: x, y and their mean, 0..255."""
    scale = 255.0 / max(size - 1, 1)
    x = np.arange(size, dtype=np.float64) * scale
    xs, ys = np.meshgrid(x, x)
    rgb = np.stack([xs, ys, (xs + ys) / 2.0], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--denoise", type=float, default=0.35)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
        args.model, torch_dtype=getattr(torch, args.dtype), safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - start
    image = gradient(args.size)

    marks = []

    def on_step(_pipe, _step, _t, kwargs):
        marks.append(time.perf_counter() - start)
        return kwargs

    before = status_kib("VmRSS:")
    reset_peak()
    start = time.perf_counter()
    with torch.no_grad():
        out = pipe(
            prompt=PROMPT,
            negative_prompt="",
            image=image,
            strength=args.denoise,
            num_inference_steps=args.steps,
            guidance_scale=7.0,
            generator=torch.Generator().manual_seed(1),
            callback_on_step_end=on_step,
        ).images[0]
    seconds = time.perf_counter() - start
    peak = status_kib("VmHWM:")
    assert out.size == (args.size, args.size)

    step = (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else marks[0] / 2
    report = {
        "model": args.model,
        "size": args.size,
        "scheduled_steps": args.steps,
        "denoise": args.denoise,
        "threads": args.threads,
        "dtype": args.dtype,
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__},
        "load_s": load_s,
        "loop": {
            "seconds": seconds,
            "steps_run": len(marks),
            "before_steps_s": max(marks[0] - step, 0.0),
            "step_mean_s": step,
            "after_steps_s": seconds - marks[-1],
        },
        "rss_before_mib": before / 1024,
        "peak_rss_mib": peak / 1024,
        "peak_increase_mib": (peak - before) / 1024,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
