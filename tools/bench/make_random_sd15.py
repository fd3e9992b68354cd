#!/usr/bin/env python3
"""Writes a full-size SD 1.5-architecture diffusers folder with random weights, for measuring
`loopback-scaler run` end to end (time per loop, peak memory) where no real model can be
downloaded. The images it makes are noise; the work the engine does is that of SD 1.5.

    python3 tools/bench/make_random_sd15.py /tmp/sd15-random

Architecture: the published SD 1.5 configs (UNet 860M, VAE 84M, CLIP ViT-L/14 text encoder 123M),
float32 safetensors (~4.3 GB). The tokenizer and scheduler files are copied from
`tests/fixtures/tiny-sd` (the real CLIP vocabulary and a DDIM scheduler).
"""

import shutil
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests/fixtures/tiny-sd"


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/sd15-random")
    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=2,
        attention_head_dim=8,
        cross_attention_dim=768,
        norm_num_groups=32,
    ).save_pretrained(out / "unet")
    AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    ).save_pretrained(out / "vae")
    CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=768,
        )
    ).save_pretrained(out / "text_encoder")
    for part in ("tokenizer", "scheduler"):
        shutil.copytree(TINY / part, out / part, dirs_exist_ok=True)
    shutil.copy(TINY / "model_index.json", out / "model_index.json")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
