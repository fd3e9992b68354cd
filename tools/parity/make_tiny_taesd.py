#!/usr/bin/env python3
"""Build a random-weight TAESD (diffusers AutoencoderTiny, the real architecture with 24
channels instead of 64) and record its decode of fixed latents.

Run from the repository root:

    python3 tools/parity/make_tiny_taesd.py

It (re)creates tests/fixtures/taesd/:

* tiny-taesd/config.json + diffusion_pytorch_model.safetensors   the diffusers folder layout
  (as madebyollin/taesd ships it), decoder weights scaled so the output spans [0, 1]
* taesd_decoder.safetensors   the same decoder under the original repository's key names
  (nn.Sequential indices: `1.weight`, `3.conv.0.weight`, …)
* latents.f32 (1, 4, 5, 7) and decoded.f32 (1, 3, 40, 56): AutoencoderTiny.decode(latents)
  in float32 on the CPU, i.e. 2·decoder(latents) − 1 in [-1, 1]
* manifest.json: shapes and how they were made
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import json
import shutil
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from diffusers import AutoencoderTiny

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/fixtures/taesd"
CHANNELS = 24


def main():
    torch.manual_seed(5)
    torch.set_num_threads(1)
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "tiny-taesd").mkdir(parents=True)
    vae = AutoencoderTiny(
        encoder_block_out_channels=(CHANNELS,) * 4,
        decoder_block_out_channels=(CHANNELS,) * 4,
        num_encoder_blocks=(1, 1, 1, 1),  # the encoder is not used; keep it small
        num_decoder_blocks=(3, 3, 3, 1),  # TAESD's decoder
    ).eval()
    with torch.no_grad():
        # default init shrinks activations through 13 ReLU blocks; rescale to keep them alive
        for name, p in vae.decoder.named_parameters():
            if name.endswith("weight"):
                p.mul_(1.6)
    vae.save_pretrained(OUT / "tiny-taesd", safe_serialization=True)
    vae = AutoencoderTiny.from_pretrained(OUT / "tiny-taesd").eval()

    # the original key layout: DecoderTiny's layers are the original Sequential minus its
    # leading Clamp, so index + 1
    dec = {k.removeprefix("decoder.layers."): v for k, v in vae.state_dict().items() if k.startswith("decoder.layers.")}
    orig = {}
    for k, v in dec.items():
        i, rest = k.split(".", 1)
        orig[f"{int(i) + 1}.{rest}"] = v.contiguous()
    safetensors.torch.save_file(orig, OUT / "taesd_decoder.safetensors")

    g = torch.Generator().manual_seed(9)
    latents = torch.randn(1, 4, 5, 7, generator=g) * 2.0
    with torch.no_grad():
        decoded = vae.decode(latents).sample
    print("decoded range", float(decoded.min()), float(decoded.max()), "std", float(decoded.std()))
    assert float(decoded.std()) > 0.05
    latents.numpy().astype("<f4").tofile(OUT / "latents.f32")
    decoded.numpy().astype("<f4").tofile(OUT / "decoded.f32")
    manifest = {
        "generator": "tools/parity/make_tiny_taesd.py",
        "model": "diffusers AutoencoderTiny, decoder channels %d, blocks (3,3,3,1), random weights" % CHANNELS,
        "latents": {"file": "latents.f32", "shape": list(latents.shape)},
        "decoded": {"file": "decoded.f32", "shape": list(decoded.shape),
                    "what": "AutoencoderTiny.decode(latents).sample = 2*layers(3*tanh(latents/3)) - 1"},
        "file_format": "raw little-endian f32, C order",
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__},
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print("size", sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file()))


if __name__ == "__main__":
    main()
