#!/usr/bin/env python3
"""Tiny ControlNets for the tiny SD 1.x and SDXL models, and the SD 1.x one as an
original-layout (lllyasviel / sd-webui-controlnet) single file.

Run from the repository root, after make_tiny_sd.py and make_tiny_sdxl.py (it reads the UNets of
tests/fixtures/tiny-sd/ and tests/fixtures/tiny-sdxl/):

    python3 tools/parity/make_tiny_controlnet.py

It deletes and rewrites, deterministically and without network access:

* tests/fixtures/tiny-controlnet/        diffusers ControlNetModel folder (config.json +
                                         diffusion_pytorch_model.safetensors, float16) made with
                                         ControlNetModel.from_unet(tiny-sd's UNet), plus manifest.json
* tests/fixtures/tiny-controlnet-sdxl/   the same from tiny-sdxl's UNet (text_time added
                                         conditioning copied), plus manifest.json
* tests/fixtures/checkpoint/tiny-controlnet.safetensors
                                         tiny-controlnet in the original ControlNet layout
                                         (control_model.time_embed / input_blocks / middle_block /
                                         input_hint_block / zero_convs / middle_block_out), float16

from_unet copies conv_in, the time embedding (and SDXL's add_embedding), the down blocks and the
mid block from the UNet. ControlNet's zero-initialised convolutions (the conditioning
embedding's conv_out, every controlnet_down_blocks.*, controlnet_mid_block) are then filled
from a seeded generator so that the residuals change the image; the conditioning embedding's
other convolutions keep PyTorch's default initialisation under torch.manual_seed. Every model
is saved in float16 and read back: the references of make_controlnet_parity.py use exactly the
float16 values upcast to float32.

The single file is verified before it is written: diffusers'
ControlNetModel.from_single_file(path, config=tests/fixtures/tiny-controlnet) must load it back
into exactly the folder's tensors. See tools/parity/README.md ("Tiny ControlNets").
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "checkpoint"))
import make_tiny_sd as tiny  # noqa: E402  (jsonable, versions, dir_size, paths)
import make_fixtures as ckpt  # noqa: E402  (unet_to_original: diffusers UNet names -> LDM names)

ROOT = tiny.ROOT
SD_UNET = ROOT / "tests/fixtures/tiny-sd/unet"
SDXL_UNET = ROOT / "tests/fixtures/tiny-sdxl/unet"
OUT_SD = ROOT / "tests/fixtures/tiny-controlnet"
OUT_SDXL = ROOT / "tests/fixtures/tiny-controlnet-sdxl"
CHECKPOINT = ROOT / "tests/fixtures/checkpoint/tiny-controlnet.safetensors"
WEIGHTS = "diffusion_pytorch_model.safetensors"

# Three stride-2 convolutions (between the four entries) take the 64x64 control image to the
# 8x8 latents; the original layout has input_hint_block.0..14 for exactly four entries.
COND_CHANNELS = (8, 8, 16, 16)
# torch.manual_seed before from_unet (default init of the conditioning embedding's convs), then
# a torch.Generator("cpu") with this seed fills the zero convolutions, in named_parameters order.
SEEDS = {"sd": 301, "sdxl": 302}
RAND_SEEDS = {"sd": 311, "sdxl": 312}
ZERO_CONVS = ("controlnet_cond_embedding.conv_out.", "controlnet_down_blocks.", "controlnet_mid_block.")
WEIGHT_STD = 0.2  # normal(0, std) for the zero convs' weights
BIAS_STD = 0.05  # and for their biases

LDM_PREFIX = "control_model."


def is_zero_conv(name):
    return name.startswith(ZERO_CONVS)


def build(unet_dir, family):
    """ControlNetModel.from_unet(unet) with randomised zero convolutions, float32."""
    unet = UNet2DConditionModel.from_pretrained(unet_dir, torch_dtype=torch.float32, local_files_only=True)
    torch.manual_seed(SEEDS[family])
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=COND_CHANNELS)
    gen = torch.Generator("cpu").manual_seed(RAND_SEEDS[family])
    randomised = []
    with torch.no_grad():
        for name, p in cn.named_parameters():
            if is_zero_conv(name):
                assert bool((p == 0).all()), name  # from_unet leaves them zero
                std = WEIGHT_STD if name.endswith(".weight") else BIAS_STD
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * std)
                randomised.append({"name": name, "shape": list(p.shape), "std": std})
    return unet, cn.eval(), randomised


def save_and_reload(cn, out_dir):
    """Save in float16, read back; returns the float32 model of exactly the saved values."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    ref16 = {k: v.to(torch.float16) for k, v in cn.state_dict().items()}
    cn.to(torch.float16).save_pretrained(out_dir, safe_serialization=True)
    with safe_open(out_dir / WEIGHTS, "pt") as f:
        assert f.metadata() == {"format": "pt"}, f.metadata()
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F16"}, dtypes
    saved = load_file(out_dir / WEIGHTS)
    assert set(saved) == set(ref16)
    assert all(torch.equal(saved[k], ref16[k]) for k in saved)
    back = ControlNetModel.from_pretrained(out_dir, torch_dtype=torch.float32, local_files_only=True)
    sd = back.state_dict()
    assert set(sd) == set(saved) and all(torch.equal(sd[k], saved[k].to(torch.float32)) for k in sd)
    return back.eval(), saved


def unet_part_equal(saved, unet_dir):
    """The UNet-part tensors of the ControlNet are the UNet's float16 tensors bit for bit."""
    unet16 = load_file(unet_dir / WEIGHTS)
    shared = [k for k in saved if k.split(".")[0] in ("conv_in", "time_embedding", "add_embedding",
                                                      "down_blocks", "mid_block")]
    assert shared and all(torch.equal(saved[k], unet16[k]) for k in shared)
    return len(shared)


def probe(cn, family):
    """Residual statistics on a random sample, to show the randomised zero convs do something."""
    gen = torch.Generator("cpu").manual_seed(7)
    sample = torch.randn((2, 4, 8, 8), generator=gen)
    dim = cn.config.cross_attention_dim
    context = torch.randn((2, 77, dim), generator=gen)
    cond = torch.rand((2, 3, 64, 64), generator=gen)
    kw = {}
    if family == "sdxl":
        pooled = cn.config.projection_class_embeddings_input_dim - 6 * cn.config.addition_time_embed_dim
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn((2, pooled), generator=gen),
                                   "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    with torch.no_grad():
        down, mid = cn(sample, torch.tensor(500), encoder_hidden_states=context, controlnet_cond=cond,
                       return_dict=False, **kw)
    return [{"shape": list(r.shape), "std": round(float(r.std()), 4), "max_abs": round(float(r.abs().max()), 4)}
            for r in list(down) + [mid]]


# ---------------------------------------------------------------------------------------------
# Original (lllyasviel ControlNet / sd-webui-controlnet) layout
# ---------------------------------------------------------------------------------------------
def controlnet_to_original(sd, layers_per_block, attention_levels, n_blocks):
    """diffusers ControlNetModel names -> control_model.* names of the original ControlNet."""
    unet_part, out = {}, {}
    for name, t in sd.items():
        parts = name.split(".")
        if parts[0] == "controlnet_cond_embedding":
            if parts[1] == "conv_in":
                idx = 0
            elif parts[1] == "blocks":
                idx = 2 * (int(parts[2]) + 1)
            else:
                assert parts[1] == "conv_out"
                idx = 2 * (n_blocks + 1)
            out[f"input_hint_block.{idx}.{parts[-1]}"] = t
        elif parts[0] == "controlnet_down_blocks":
            out[f"zero_convs.{parts[1]}.0.{parts[2]}"] = t
        elif parts[0] == "controlnet_mid_block":
            out[f"middle_block_out.0.{parts[1]}"] = t
        else:
            unet_part[name] = t
    for name, t in ckpt.unet_to_original(unet_part, layers_per_block, attention_levels).items():
        out[name.removeprefix("model.diffusion_model.")] = t
    assert len(out) == len(sd), "the mapping is not one-to-one"
    return {LDM_PREFIX + k: v.contiguous() for k, v in sorted(out.items())}


def write_checkpoint(saved, folder):
    config = json.loads((folder / "config.json").read_text())
    attention = [t.startswith("CrossAttn") for t in config["down_block_types"]]
    n_blocks = 2 * (len(config["conditioning_embedding_out_channels"]) - 1)
    original = controlnet_to_original(saved, config["layers_per_block"], attention, n_blocks)
    CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
    tmp = CHECKPOINT.with_suffix(".tmp.safetensors")
    save_file(original, tmp)
    # diffusers' own single-file loader must give back exactly the folder's tensors
    loaded = ControlNetModel.from_single_file(str(tmp), config=str(folder), local_files_only=True,
                                              torch_dtype=torch.float16).state_dict()
    if set(loaded) != set(saved):
        tmp.unlink()
        sys.exit(f"from_single_file: names differ: {sorted(set(loaded) ^ set(saved))[:8]}")
    bad = [k for k in saved if not torch.equal(loaded[k], saved[k])]
    if bad:
        tmp.unlink()
        sys.exit(f"from_single_file: tensors differ: {bad[:8]}")
    tmp.replace(CHECKPOINT)
    check = (f"diffusers ControlNetModel.from_single_file(tiny-controlnet.safetensors, "
             f"config=tests/fixtures/tiny-controlnet, torch_dtype=float16) loads all {len(saved)} tensors "
             f"with the folder's names and bit-identical values")
    return original, check


def file_sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(out_dir, family, unet_dir, randomised, n_shared, residuals, extra):
    manifest = {
        "generator": "tools/parity/make_tiny_controlnet.py",
        "versions": tiny.versions(),
        "made_from": str(unet_dir.relative_to(ROOT)),
        "how": f"torch.manual_seed({SEEDS[family]}); ControlNetModel.from_unet(unet (float16 file read as float32), "
               f"conditioning_embedding_out_channels={list(COND_CHANNELS)}); then, in named_parameters order, every "
               f"parameter of {', '.join(p.rstrip('.') for p in ZERO_CONVS)} = torch.randn(shape, generator="
               f"torch.Generator('cpu').manual_seed({RAND_SEEDS[family]})) * std (weights {WEIGHT_STD}, biases "
               f"{BIAS_STD}); cast to float16, save_pretrained, read back",
        "weights_file": {"file": WEIGHTS, "sha256": file_sha(out_dir / WEIGHTS), "dtype": "F16",
                         "metadata": {"format": "pt"}},
        "randomised": randomised,
        "checks": [
            "the safetensors file holds only F16 tensors; read back with from_pretrained(torch_dtype=float32) every "
            "tensor is exactly the saved float16 value upcast",
            f"the {n_shared} UNet-part tensors (conv_in, time_embedding, add_embedding, down_blocks, mid_block) equal "
            f"{unet_dir.relative_to(ROOT)}/{WEIGHTS} bit for bit",
        ] + extra.pop("checks", []),
        "probe_residuals": {
            "inputs": "Generator('cpu').manual_seed(7): sample randn [2,4,8,8], context randn [2,77,dim], controlnet_cond "
                      "rand [2,3,64,64]" + (", text_embeds randn [2,pooled]; time_ids [64,64,0,0,64,64]"
                                            if family == "sdxl" else "") + "; timestep 500",
            "residuals": residuals},
    }
    manifest.update(extra)
    (out_dir / "manifest.json").write_text(json.dumps(tiny.jsonable(manifest), indent=1, allow_nan=False) + "\n")
    return manifest


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    # SD 1.x
    _, cn, randomised = build(SD_UNET, "sd")
    back, saved = save_and_reload(cn, OUT_SD)
    n_shared = unet_part_equal(saved, SD_UNET)
    original, check = write_checkpoint(saved, OUT_SD)
    shapes = {k: list(v.shape) for k, v in original.items()}
    m = write_manifest(OUT_SD, "sd", SD_UNET, randomised, n_shared, probe(back, "sd"), {
        "checks": [check],
        "single_file": {
            "file": str(CHECKPOINT.relative_to(ROOT)), "sha256": file_sha(CHECKPOINT), "dtype": "F16",
            "layout": "original ControlNet (lllyasviel; sd-webui-controlnet): every key prefixed 'control_model.'; "
                      "UNet part as the LDM UNet (time_embed.0/2, input_blocks.N.M, middle_block.0/1/2); "
                      "input_hint_block.{0,2,4,6,8,10,12,14} = controlnet_cond_embedding.conv_in, blocks.0..5, "
                      "conv_out; zero_convs.{i}.0 = controlnet_down_blocks.{i}; middle_block_out.0 = "
                      "controlnet_mid_block; no safetensors metadata",
            "keys": shapes},
    })
    for c in m["checks"]:
        print("check:", c)
    print(f"{OUT_SD.relative_to(ROOT)}: {tiny.dir_size(OUT_SD)} B; residuals {m['probe_residuals']['residuals']}")
    print(f"{CHECKPOINT.relative_to(ROOT)}: {CHECKPOINT.stat().st_size} B, {len(original)} tensors")

    # SDXL
    _, cn, randomised = build(SDXL_UNET, "sdxl")
    assert cn.config.addition_embed_type == "text_time"
    back, saved = save_and_reload(cn, OUT_SDXL)
    n_shared = unet_part_equal(saved, SDXL_UNET)
    m = write_manifest(OUT_SDXL, "sdxl", SDXL_UNET, randomised, n_shared, probe(back, "sdxl"), {})
    for c in m["checks"]:
        print("check:", c)
    print(f"{OUT_SDXL.relative_to(ROOT)}: {tiny.dir_size(OUT_SDXL)} B; residuals {m['probe_residuals']['residuals']}")


if __name__ == "__main__":
    main()
