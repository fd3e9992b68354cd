#!/usr/bin/env python3
"""A tiny LCM-LoRA for the tiny SD 1.x model, in the key layout of the real
`latent-consistency/lcm-lora-sdv1-5` file, and diffusers' LCM img2img references with it.

Run from the repository root, after make_tiny_sd.py and make_sampler_parity.py (it reads
tests/fixtures/tiny-sd/, tests/fixtures/parity/in_coffee_64x64.png and, for a self check,
tests/fixtures/sampler-parity/); needs `peft` (0.21.2 used) besides requirements.txt:

    python3 tools/parity/make_tiny_lcm_lora.py

It deletes and rewrites tests/fixtures/lcm-lora/, deterministically and without network access:

* lcm-lora-tiny.safetensors  a UNet-only LoRA, fp16, rank 4, `.alpha` 2 (scale 0.5), random
  (seeded) on every module the LCM-LoRA training script targets (see LAYOUT below), keys
  `lora_unet_<diffusers module path with . as _>.lora_down.weight` / `.lora_up.weight` / `.alpha`
* manifest.json + raw little-endian .f32 / .u8 tensors: three img2img cases with LCMScheduler in
  the app's "mean" latent mode, recorded with make_sampler_parity.py's harness (every noise draw,
  the latents trajectory, the guided noise predictions, the raw decode and its u8 image), plus
  a few merged UNet weights.

LAYOUT. The released LCM-LoRA files were written by diffusers'
examples/consistency_distillation/train_lcm_distill_lora_sd_wds.py: a PEFT LoRA (LoraConfig with
r = lora_rank, lora_alpha, target_modules = to_q, to_k, to_v, to_out.0, proj_in, proj_out,
ff.net.0.proj, ff.net.2, conv1, conv2, conv_shortcut, downsamplers.0.conv, upsamplers.0.conv,
time_emb_proj) saved through its `get_module_kohya_state_dict`: PEFT key
`base_model.model.<module>.lora_A.weight` -> `lora_unet_<module with . as _>.lora_down.weight`
(lora_B -> lora_up), plus `lora_unet_<...>.alpha` = lora_alpha in the weight dtype. So: kohya
spelling with *diffusers* module names (not kohya's SGM `input_blocks_...` names), UNet only,
attention AND resnet convs, time-embedding projections, conv shortcuts and the samplers. Rank 64
x these modules of SD 1.5's UNet is 67.25 M parameters, 134.5 MB in fp16: the published
135 MB / "67.5 M" file. This script resolves the same target list with peft on the tiny UNet
(78 modules) and writes the same key spelling.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import peft
import safetensors
import safetensors.torch
import torch
from PIL import Image
from diffusers import LCMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_sd as tiny  # noqa: E402  (Tap, Writer, np32, jsonable, versions, paths)
import make_sampler_parity as msp  # noqa: E402  (run_case / run_pipeline / to_u8 / replay)

ROOT = tiny.ROOT
MODEL_DIR = tiny.MODEL_DIR
OUT_DIR = ROOT / "tests/fixtures/lcm-lora"
SAMPLER_PARITY = ROOT / "tests/fixtures/sampler-parity"
LORA_FILE = "lcm-lora-tiny.safetensors"

# The training script's default target list, in its order.
TARGET_MODULES = [
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
]
RANK = 4
ALPHA = 2  # an int, as the script's --lora_alpha; stored as a 0-d fp16 tensor. alpha/rank = 0.5
LORA_SEED = 1500
LORA_STD = 0.1  # down and up ~ N(0, LORA_STD^2): changes the image clearly, eps and latents stay in the base range

# (name, steps, strength, guidance, with LoRA). CFG 1 = no CFG: UNet batch 1, no negative prompt.
CASES = [
    ("lora_n4_s050_cfg1", 4, 0.5, 1.0, True),
    ("lora_n6_s070_cfg1p5", 6, 0.7, 1.5, True),
    ("base_n4_s050_cfg1", 4, 0.5, 1.0, False),
]
# merged UNet weights recorded (one per kind of module the LoRA touches)
RECORD_WEIGHTS = [
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",  # linear 32x32
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",  # linear 32x8 (cross-attn)
    "up_blocks.1.attentions.1.proj_in.weight",  # 1x1 conv
    "down_blocks.1.resnets.0.time_emb_proj.weight",  # linear 32x128
    "up_blocks.0.resnets.1.conv_shortcut.weight",  # 1x1 conv 64->32
    "down_blocks.0.downsamplers.0.conv.weight",  # 3x3 conv, stride 2
]


def kohya_key(module):
    return "lora_unet_" + module.replace(".", "_")


def lora_modules():
    """(module name, lora_A shape, lora_B shape) of every module peft targets with TARGET_MODULES
    on the tiny UNet, in peft's state-dict order."""
    unet = UNet2DConditionModel.from_pretrained(MODEL_DIR / "unet", torch_dtype=torch.float32)
    cfg = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGET_MODULES, lora_dropout=0.0)
    unet = inject_adapter_in_model(cfg, unet)
    sd = get_peft_model_state_dict(unet)
    mods = []
    for k, v in sd.items():
        if k.endswith(".lora_A.weight"):
            m = k.removesuffix(".lora_A.weight")
            mods.append((m, tuple(v.shape), tuple(sd[m + ".lora_B.weight"].shape)))
    # the same set by peft's suffix rule, written out
    names = {n for n, mod in UNet2DConditionModel.from_pretrained(MODEL_DIR / "unet").named_modules()
             if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d))
             and any(n == t or n.endswith("." + t) for t in TARGET_MODULES)}
    assert names == {m for m, _, _ in mods}, sorted(names ^ {m for m, _, _ in mods})
    return mods


def make_lora(mods):
    """Kohya-spelled state dict, fp16, as get_module_kohya_state_dict writes it."""
    g = torch.Generator().manual_seed(LORA_SEED)
    sd = {}
    for m, a_shape, b_shape in mods:
        down = torch.randn(a_shape, generator=g) * LORA_STD
        up = torch.randn(b_shape, generator=g) * LORA_STD
        key = kohya_key(m)
        sd[key + ".lora_down.weight"] = down.to(torch.float16).contiguous()
        sd[key + ".lora_up.weight"] = up.to(torch.float16).contiguous()
        sd[key + ".alpha"] = torch.tensor(ALPHA).to(torch.float16)
    return sd


def load_pipe():
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(MODEL_DIR, torch_dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.dtype == torch.float32 and pipe.vae.dtype == torch.float32
    return pipe


def unet_probe(pipe):
    """One UNet call on fixed inputs (to compare fused and un-fused LoRA)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ctx = torch.randn(1, 77, 8, generator=g)
    with torch.no_grad():
        return pipe.unet(x, 499, encoder_hidden_states=ctx).sample


def apply_lora(pipe, sd):
    """As a user does: load_lora_weights(file) + fuse_lora(lora_scale=1.0), then drop the adapter
    layers. Checks the fused UNet against the un-fused one and every weight against
    W + alpha/rank * up @ down. Returns the checks and the fused UNet's probe output."""
    base = {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}
    pipe.load_lora_weights(str(OUT_DIR), weight_name=LORA_FILE)
    unfused = unet_probe(pipe)
    pipe.fuse_lora(lora_scale=1.0)
    pipe.unload_lora_weights()
    fused = unet_probe(pipe)
    merged = pipe.unet.state_dict()
    assert set(merged) == set(base), sorted(set(merged) ^ set(base))[:5]

    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    expected = set()
    by_flat = {k.removesuffix(".weight").replace(".", "_"): k for k in base if k.endswith(".weight")}
    worst = 0.0
    for key in sd:
        if not key.endswith(".lora_down.weight"):
            continue
        mod = key.removesuffix(".lora_down.weight")
        wname = by_flat[mod.removeprefix("lora_unet_")]
        expected.add(wname)
        down, up = sd[key].float(), sd[mod + ".lora_up.weight"].float()
        scale = float(sd[mod + ".alpha"]) / down.shape[0]
        delta = (up.flatten(1) @ down.flatten(1)).reshape(base[wname].shape) * scale
        want = base[wname] + delta
        worst = max(worst, float((merged[wname] - want).abs().max()))
    assert changed == expected, (sorted(changed - expected)[:5], sorted(expected - changed)[:5])
    return {
        "modules_changed": len(changed),
        "merged_vs_formula_max_abs": worst,
        "fused_vs_unfused_unet_max_abs": float((fused - unfused).abs().max()),
    }, fused


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    image = Image.open(msp.INPUT_PNG).convert("RGB")
    assert image.size == (64, 64)

    if OUT_DIR.exists():
        shutil.rmtree(OUT_DIR)
    OUT_DIR.mkdir(parents=True)
    msp.OUT_DIR = OUT_DIR  # msp.replay reads the case files and init_latents.f32 from here
    w = tiny.Writer(OUT_DIR)

    mods = lora_modules()
    sd = make_lora(mods)
    safetensors.torch.save_file(sd, OUT_DIR / LORA_FILE, metadata={"format": "pt"})

    base_pipe = load_pipe()
    base_probe = unet_probe(base_pipe)
    # the scheduler the cases use is LCMScheduler.from_config(pipe.scheduler.config), as a user writes it
    assert dict(LCMScheduler.from_config(base_pipe.scheduler.config).config) == dict(msp.make_scheduler("lcm", "automatic").config)

    lora_pipe = load_pipe()
    lora_checks, lora_probe = apply_lora(lora_pipe, sd)
    lora_checks["vs_base_unet_max_abs"] = float((lora_probe - base_probe).abs().max())
    assert lora_checks["fused_vs_unfused_unet_max_abs"] < 1e-4, lora_checks
    assert lora_checks["merged_vs_formula_max_abs"] < 1e-5, lora_checks
    assert lora_checks["vs_base_unet_max_abs"] > 1e-2, lora_checks
    print("lora:", lora_checks)

    entries, outs, init = [], {}, None
    for name, steps, strength, guidance, with_lora in CASES:
        case = {"name": name, "sampler": "lcm", "schedule": "automatic", "steps": steps,
                "strength": strength, "guidance_scale": guidance}
        pipe = lora_pipe if with_lora else base_pipe
        entry, tap, decoded, u8, orig = msp.run_case(pipe, w, case, image)
        assert len(tap.text) == (2 if guidance > 1 else 1), name  # CFG 1: no negative prompt encoded
        if init is None:
            init = tiny.np32(orig)
            init_file = w.put("init_latents", init, "NCHW [1, 4, 8, 8]; VAE posterior mean * 0.18215, the same for every case")
        assert np.array_equal(tiny.np32(orig), init)
        entry["lora"] = {"file": LORA_FILE, "weight": 1.0} if with_lora else None
        entries.append(entry)
        outs[name] = (tiny.np32(decoded), u8, tap)
        print(f"{name:22s} unet={entry['unet_calls']} batch={entry['unet_batch']} draws={len(entry['noise_draw_labels'])} "
              f"t={entry['timesteps']}")

    checks = []
    checks.append(f"the LoRA file holds {len(mods)} modules (3 keys each), exactly the tiny UNet's Linear/Conv2d modules "
                  f"that peft {peft.__version__} targets with the training script's list; after load_lora_weights + "
                  f"fuse_lora(1.0) + unload_lora_weights exactly those {lora_checks['modules_changed']} weights differ "
                  "from the base model, each equal to W + alpha/rank * up @ down (computed in float32 torch) within "
                  f"{lora_checks['merged_vs_formula_max_abs']:.1e}")
    checks.append("one UNet call on fixed inputs: fused vs un-fused adapters max |diff| "
                  f"{lora_checks['fused_vs_unfused_unet_max_abs']:.1e}; with vs without the LoRA "
                  f"{lora_checks['vs_base_unet_max_abs']:.3f}")

    # the harness reproduces sampler-parity's lcm_automatic_n4_s050 (no LoRA) from its files
    ref = next(e for e in json.loads((SAMPLER_PARITY / "manifest.json").read_text())["cases"]
               if e["name"] == "lcm_automatic_n4_s050")
    tap, _, _, _ = msp.run_pipeline(base_pipe, msp.make_scheduler("lcm", "automatic"), image, 4, 0.5, ref["guidance_scale"])
    loadref = lambda key: np.fromfile(SAMPLER_PARITY / ref["files"][key]["file"], dtype="<f4").reshape(ref["files"][key]["shape"])
    traj = np.stack([tiny.np32(tap.add_noise[3])] + [tiny.np32(s[3]) for s in tap.steps])
    d_traj = float(np.abs(traj - loadref("latents_trajectory")).max())
    d_out = float(np.abs(tiny.np32(tap.decoded) - loadref("out")).max())
    assert d_traj < 1e-4 and d_out < 1e-4, (d_traj, d_out)
    assert np.array_equal(np.fromfile(SAMPLER_PARITY / "init_latents.f32", dtype="<f4").reshape(init.shape), init)
    checks.append("without the LoRA this harness reproduces sampler-parity/lcm_automatic_n4_s050 (CFG 1.5): "
                  + ("bit-exact" if d_traj == 0 and d_out == 0 else f"trajectory {d_traj:.1e}, out {d_out:.1e}")
                  + "; init_latents.f32 equals sampler-parity's")

    # determinism in-process: the second LoRA case again
    name, steps, strength, guidance, _ = CASES[1]
    tap, _, _, _ = msp.run_pipeline(lora_pipe, msp.make_scheduler("lcm", "automatic"), image, steps, strength, guidance)
    assert np.array_equal(tiny.np32(tap.decoded), outs[name][0])
    checks.append(f"a second in-process run of {name} gives an identical decoded image")

    # every trajectory replayed from row 0, model_outputs and draws with the README's LCM formulas
    acp = msp.make_scheduler("lcm", "automatic").alphas_cumprod.numpy()
    for e in entries:
        assert max(msp.replay(e, acp, msp.TorchScalars)) == 0.0, e["name"]
        e["replay_libm_max_abs"] = max(msp.replay(e, acp, msp.LibmScalars))
    checks.append("every trajectory replayed in float32 numpy from init_latents, model_outputs and noise_draws with "
                  "README \"Samplers\" LCM formulas and torch's scalar math: bit-exact; with IEEE sqrtf: max |diff| "
                  f"{max(e['replay_libm_max_abs'] for e in entries):.1e}")

    def cmp(a, b):
        return {"a": a, "b": b,
                "mean_abs_diff_out": round(float(np.abs(outs[a][0] - outs[b][0]).mean()), 5),
                "max_abs_diff_out": round(float(np.abs(outs[a][0] - outs[b][0]).max()), 5),
                "mean_abs_diff_u8": round(float(np.abs(outs[a][1].astype(int) - outs[b][1].astype(int)).mean()), 3),
                "max_abs_diff_u8": int(np.abs(outs[a][1].astype(int) - outs[b][1].astype(int)).max()),
                "final_latents_mean_abs_diff": round(float(np.abs(tiny.np32(outs[a][2].steps[-1][3])
                                                                  - tiny.np32(outs[b][2].steps[-1][3])).mean()), 5)}

    comparisons = [cmp("lora_n4_s050_cfg1", "base_n4_s050_cfg1")]
    for c in comparisons:
        assert c["mean_abs_diff_out"] > 0.02 and c["max_abs_diff_u8"] > 10, c

    weights = {}
    merged = lora_pipe.unet.state_dict()
    for k in RECORD_WEIGHTS:
        layout = ("[out, in, kh, kw]" if merged[k].dim() == 4 else "[out, in]") + \
                 "; merged UNet weight W + 1.0 * alpha/rank * up @ down after diffusers' fuse_lora, float32"
        weights[k] = w.put(f"merged.{k.removesuffix('.weight')}", tiny.np32(merged[k]), layout)

    manifest = {
        "generator": "tools/parity/make_tiny_lcm_lora.py",
        "versions": {**tiny.versions(), "peft": peft.__version__},
        "model": "tests/fixtures/tiny-sd (epsilon prediction; fp16 weights upcast to float32), CPU, 1 thread",
        "file_format": "raw little-endian, C order (row-major), no header; f32 = IEEE float32, u8 = uint8; "
                       "shape and layout per file (as tests/fixtures/sampler-parity/)",
        "lora": {
            "file": LORA_FILE,
            "layout": "kohya spelling of diffusers UNet module names, as latent-consistency/lcm-lora-sdv1-5's "
                      "pytorch_lora_weights.safetensors (diffusers' train_lcm_distill_lora_sd_wds.py, "
                      "get_module_kohya_state_dict): lora_unet_<module, . as _>.lora_down.weight [rank, in(, kh, kw)], "
                      ".lora_up.weight [out, rank(, 1, 1)], .alpha (0-d); UNet only, no text encoder",
            "dtype": "float16 (alpha too)",
            "rank": RANK, "alpha": ALPHA, "scale_alpha_over_rank": ALPHA / RANK,
            "target_modules": TARGET_MODULES,
            "n_modules": len(mods),
            "modules": [m for m, _, _ in mods],
            "seed": LORA_SEED, "std": LORA_STD,
            "safetensors_metadata": {"format": "pt"},
            "how_applied": "StableDiffusionImg2ImgPipeline.load_lora_weights(dir, weight_name=file) + "
                           "fuse_lora(lora_scale=1.0) + unload_lora_weights(); the prompt tag <lora:lcm-lora-tiny:1> "
                           "or --lora FILE:1 in the app",
        },
        "input": {"file": "../parity/" + msp.INPUT, "how": "read as PIL RGB: x = float32(u8)/255*2 - 1, NCHW"},
        "prompt": msp.PROMPT,
        "negative_prompt": msp.NEGATIVE + " (CFG > 1 only; with CFG 1 no negative prompt is encoded)",
        "seed": msp.SEED,
        "generator_device": "cpu",
        "latent_mode": "mean: init latents = VAE posterior mean * 0.18215 (retrieve_latents sample_mode='argmax'); "
                       "the img2img noise is the FIRST draw of torch.Generator('cpu').manual_seed(seed)",
        "scheduler": "LCMScheduler.from_config(tiny-sd scheduler_config.json), no options (README \"Samplers\", lcm)",
        "strength_rule": "init_timestep = min(int(steps*strength), steps); t_start = steps - init_timestep; "
                         "timesteps = all_timesteps[t_start:]; add_noise(init, noise, timesteps[:1])",
        "init_latents": init_file,
        "lora_checks": lora_checks,
        "merged_weights": weights,
        "cases": entries,
        "self_checks": checks,
        "comparisons": comparisons,
    }
    (OUT_DIR / "manifest.json").write_text(json.dumps(tiny.jsonable(manifest), indent=1, allow_nan=False) + "\n")
    for c in checks:
        print("check:", c)
    for c in comparisons:
        print("compare:", c)
    n_files = sum(1 for f in OUT_DIR.rglob("*") if f.is_file())
    print(f"size: {tiny.dir_size(OUT_DIR)} B in {n_files} files; sha256 of the folder (paths + bytes): "
          f"{msp.file_digest(OUT_DIR)}")


if __name__ == "__main__":
    main()
