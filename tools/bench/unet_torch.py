#!/usr/bin/env python3
"""Times the same UNet (and VAE) as `loopback-scaler bench` in diffusers/PyTorch.

Run from the repository root, with the same thread count as the Rust side:

    python3 tools/bench/unet_torch.py --arch sd15 --size 512 --batch 2 --steps 3 --threads 2 [--vae]

Random weights of the published SD 1.5 / SD 2.1 architectures (timing does not depend on the
values), float32 on the CPU, one warm-up call, then `--steps` timed calls. Prints JSON in the
shape of the Rust command's output, with peak RSS from getrusage.
"""

import argparse
import json
import resource
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

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
VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
)


def timed(n, fn):
    fn()
    runs = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return {"mean_s": sum(runs) / len(runs), "min_s": min(runs), "runs": runs}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", choices=sorted(UNETS), default="sd15")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vae", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    start = time.perf_counter()
    unet = UNet2DConditionModel(**COMMON, **UNETS[args.arch]).eval()
    load_s = time.perf_counter() - start
    latent = args.size // 8
    x = torch.randn(args.batch, 4, latent, latent)
    context = torch.randn(args.batch, 77, UNETS[args.arch]["cross_attention_dim"])
    t = torch.tensor(500)
    report = {
        "model": f"{args.arch} (random weights)",
        "device": f"CPU ({args.threads} threads)",
        "dtype": "F32",
        "size": args.size,
        "batch": args.batch,
        "threads": args.threads,
        "load_s": load_s,
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__},
    }
    with torch.no_grad():
        report["unet_step"] = timed(args.steps, lambda: unet(x, t, encoder_hidden_states=context))
        if args.vae:
            vae = AutoencoderKL(**VAE).eval()
            image = torch.randn(1, 3, args.size, args.size)
            latents = torch.randn(1, 4, latent, latent)
            report["vae_encode"] = timed(1, lambda: vae.encode(image))
            report["vae_decode"] = timed(1, lambda: vae.decode(latents))
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
