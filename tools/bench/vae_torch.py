#!/usr/bin/env python3
"""Times diffusers' VAE encode and decode like `loopback-scaler bench --vae-only`.

Run from the repository root, with the same thread count as the Rust side:

    python3 tools/bench/vae_torch.py --size 1024 --threads 2 [--tiled] [--only decode]

Random weights of the SD 1.x/2.x VAE architecture (timing does not depend on the values),
float32 on the CPU, batch 1, one call of each pass (no warm-up, as on the Rust side). For each
pass it reports seconds and the peak resident memory the pass added (Linux: the peak is reset
through /proc/self/clear_refs before the pass). `--tiled` uses diffusers' own tiling
(`enable_tiling()`, 512-px tiles, per-tile GroupNorm statistics).
"""

import argparse
import json
import time

import torch
from diffusers import AutoencoderKL

from procmem import reset_peak, status_kib

VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
)


def measured(fn):
    before = status_kib("VmRSS:")
    reset_peak()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    peak = status_kib("VmHWM:")
    del out
    return {
        "seconds": seconds,
        "rss_before_mib": before / 1024,
        "peak_increase_mib": (peak - before) / 1024,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiled", action="store_true")
    parser.add_argument("--only", choices=["encode", "decode"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vae = AutoencoderKL(**VAE).eval()
    if args.tiled:
        vae.enable_tiling()
    latent = args.size // 8
    report = {
        "model": "SD VAE (random weights)",
        "size": args.size,
        "threads": args.threads,
        "tiled": args.tiled,
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__},
    }
    with torch.no_grad():
        if args.only in (None, "encode"):
            image = torch.randn(1, 3, args.size, args.size)
            report["vae_encode"] = measured(lambda: vae.encode(image).latent_dist.mean)
            del image
        if args.only in (None, "decode"):
            latents = torch.randn(1, 4, latent, latent)
            report["vae_decode"] = measured(lambda: vae.decode(latents).sample)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
