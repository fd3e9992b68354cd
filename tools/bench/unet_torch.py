#!/usr/bin/env python3
"""Times the same UNet (and VAE) as `loopback-scaler bench` in diffusers/PyTorch.

Run from the repository root, with the same thread count as the Rust side:

    python3 tools/bench/unet_torch.py --arch sd15 --size 512 --batch 2 --steps 3 --threads 2 [--vae]

Random weights of the published SD 1.5 / SD 2.1 architectures (timing does not depend on the
values), float32 on the CPU, one warm-up call, then `--steps` timed calls. Prints JSON in the
shape of the Rust command's output, with peak RSS from getrusage.

Also, for `tools/gpu/check.sh` (without these flags the output is what it always was):

    --arch sdxl                          SDXL base 1.0's UNet (diffusers' config; its added
                                         size / pooled-text conditioning gets random inputs)
    --device cpu|cuda                    where to run (default cpu)
    --dtype float32|float16|bfloat16     weights and inputs (default float32)

On CUDA every timed call is bracketed by torch.cuda.synchronize(), and the JSON adds
`peak_gpu_mib` (torch.cuda.max_memory_allocated over the whole run, weights included),
`peak_gpu_reserved_mib` (max_memory_reserved: what the caching allocator held) and `gpu`.
The weights are created directly in --dtype on --device (no float32 copy on the host).
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
    # stabilityai/stable-diffusion-xl-base-1.0's unet/config.json (its keys override COMMON's).
    "sdxl": dict(
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    ),
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


def no_sync():
    pass


def timed(n, fn, sync=no_sync):
    fn()
    sync()
    runs = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        sync()
        runs.append(time.perf_counter() - start)
    return {"mean_s": sum(runs) / len(runs), "min_s": min(runs), "runs": runs}


DTYPE_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def build(cls, config, device, dtype):
    """`cls(**config)` with its random weights created in `dtype` on `device`."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(**config)
    finally:
        torch.set_default_dtype(previous)
    return model.to(device=device, dtype=dtype).eval()


def unet_inputs(arch, batch, latent, size, device, dtype):
    """(x, t, context, forward kwargs) for one UNet call; SDXL adds its pooled text embedding
    (1280) and size ids (original size, crop, target size) as diffusers' SDXL pipeline does."""
    x = torch.randn(batch, 4, latent, latent)
    context = torch.randn(batch, 77, UNETS[arch]["cross_attention_dim"])
    extra = {}
    if arch == "sdxl":
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, 1280).to(device, dtype),
            "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * batch).to(device, dtype),
        }
    return x.to(device, dtype), torch.tensor(500, device=device), context.to(device, dtype), extra


def main_device(args):
    """--device / --dtype / --arch sdxl: the same measurement on any device and dtype."""
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else no_sync
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    start = time.perf_counter()
    unet = build(UNet2DConditionModel, {**COMMON, **UNETS[args.arch]}, device, dtype)
    sync()
    load_s = time.perf_counter() - start
    latent = args.size // 8
    x, t, context, extra = unet_inputs(args.arch, args.batch, latent, args.size, device, dtype)
    name = torch.cuda.get_device_name(device) if cuda else None
    report = {
        "model": f"{args.arch} (random weights)",
        "device": f"CUDA ({name})" if cuda else f"CPU ({args.threads} threads)",
        "dtype": DTYPE_NAMES[args.dtype],
        "size": args.size,
        "batch": args.batch,
        "threads": args.threads,
        "load_s": load_s,
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__},
    }
    if cuda:
        report["gpu"] = name
        report["versions"]["cuda"] = torch.version.cuda
        report["versions"]["cudnn"] = torch.backends.cudnn.version()
    with torch.no_grad():
        report["unet_step"] = timed(
            args.steps, lambda: unet(x, t, encoder_hidden_states=context, **extra), sync
        )
        if args.vae:
            vae = build(AutoencoderKL, VAE, device, dtype)
            image = torch.randn(1, 3, args.size, args.size).to(device, dtype)
            latents = torch.randn(1, 4, latent, latent).to(device, dtype)
            report["vae_encode"] = timed(1, lambda: vae.encode(image), sync)
            report["vae_decode"] = timed(1, lambda: vae.decode(latents), sync)
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if cuda:
        report["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        report["peak_gpu_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    print(json.dumps(report, indent=2))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", choices=sorted(UNETS), default="sd15")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vae", action="store_true")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPE_NAMES), default="float32")
    args = parser.parse_args()
    if args.device != "cpu" or args.dtype != "float32" or args.arch == "sdxl":
        main_device(args)
        return
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
