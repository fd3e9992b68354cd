#!/usr/bin/env python3
"""ControlNet img2img references on the tiny SD 1.x model, and ControlNet forward references for
the tiny SD 1.x and SDXL ControlNets.

Run from the repository root, after make_tiny_sd.py, make_tiny_sdxl.py, make_tiled_parity.py and
make_tiny_controlnet.py (it reads tests/fixtures/tiny-sd/, tests/fixtures/tiny-controlnet/,
tests/fixtures/tiny-controlnet-sdxl/, tests/fixtures/parity/in_coffee_64x64.png and, for one
self check, tests/fixtures/tiled-parity/):

    python3 tools/parity/make_controlnet_parity.py

It deletes and rewrites tests/fixtures/controlnet-parity/ (input_96x64.png, manifest.json, raw
little-endian .f32 / .u8 files), deterministically and without network access.

img2img in the app's "mean" latent mode with DDIM (tiny-sd's scheduler config), 10 steps,
strength 0.5 (5 steps run), CFG 7.5, seed 1234, the control image being the input image itself
(float32 RGB in [0, 1]). At every step the ControlNet runs on the UNet's input batch
[uncond, cond]; its residuals (down residuals, then the mid residual) are multiplied by a
per-residual scale (control modes "balanced", "prompt" = sd-webui-controlnet's "My prompt is
more important", "controlnet" = "ControlNet is more important") times diffusers' start/end keep
factor, and passed to the UNet. One case is tiled (MultiDiffusion, make_tiled_parity.py's rules)
with each tile's ControlNet seeing the crop of the control image under the tile. The rules are
in manifest.json -> rules and tools/parity/README.md ("ControlNet").

Self checks (manifest.json -> self_checks): the hand-written loop equals diffusers'
StableDiffusionControlNetImg2ImgPipeline for two balanced cases (float rounding only: the
pipeline runs on channels_last tensors), weight 0 equals the loop without ControlNet bit for
bit, the tiled loop without ControlNet reproduces tests/fixtures/tiled-parity/, and a second run
gives identical bytes.

Forward references: one ControlNet call each for tiny-controlnet and tiny-controlnet-sdxl on
fixed inputs, every residual written out.
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
import torch
from PIL import Image
from diffusers import ControlNetModel, StableDiffusionControlNetImg2ImgPipeline, StableDiffusionImg2ImgPipeline
from diffusers.pipelines.controlnet import pipeline_controlnet_img2img as cn_img2img_mod

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_sd as tiny  # noqa: E402  (Tap, Writer, np32, jsonable, versions, paths)
import make_sampler_parity as msp  # noqa: E402  (to_u8, file_digest)
import make_tiled_parity as mtp  # noqa: E402  (tile_starts, axis_weights, tiles_of, make_scheduler, prepare, decode)

ROOT = tiny.ROOT
MODEL_DIR = tiny.MODEL_DIR
CONTROLNET_DIR = ROOT / "tests/fixtures/tiny-controlnet"
CONTROLNET_SDXL_DIR = ROOT / "tests/fixtures/tiny-controlnet-sdxl"
SOURCE_PNG = tiny.REF_DIR / "in_coffee_64x64.png"
TILED_DIR = mtp.OUT_DIR  # tests/fixtures/tiled-parity
OUT_DIR = ROOT / "tests/fixtures/controlnet-parity"
INPUT_TILED = mtp.INPUT  # "input_96x64.png"
WIDTH_TILED, HEIGHT_TILED = mtp.WIDTH, mtp.HEIGHT  # 96, 64

PROMPT = tiny.PROMPT  # "a cup of coffee on a wooden table"
NEGATIVE = tiny.NEGATIVE  # "blurry, lowres"
SEED = mtp.SEED  # 1234
STEPS = mtp.STEPS  # 10
STRENGTH = mtp.STRENGTH  # 0.5
CFG = mtp.CFG  # 7.5
SOFT = 0.825  # sd-webui-controlnet's soft-injection base
FORWARD_SEED = 7
FORWARD_T = 500
TIME_IDS = [64.0, 64.0, 0.0, 0.0, 64.0, 64.0]  # SDXL: original size, crop top-left, target size
F = np.float32

TILING = {"tile": 6, "overlap": 2, "offset": 1}  # = tiled-parity's tiles_t6_o2_off1
# name -> case; "no_controlnet" is the plain img2img loop every case is compared with
CASES = {
    "no_controlnet": None,
    "balanced_w1": {"mode": "balanced", "weight": 1.0, "start": 0.0, "end": 1.0},
    "balanced_w06_s02_e08": {"mode": "balanced", "weight": 0.6, "start": 0.2, "end": 0.8},
    "prompt_w1": {"mode": "prompt", "weight": 1.0, "start": 0.0, "end": 1.0},
    "controlnet_w1": {"mode": "controlnet", "weight": 1.0, "start": 0.0, "end": 1.0},
    "weight0": {"mode": "balanced", "weight": 0.0, "start": 0.0, "end": 1.0},
    "tiled_balanced_w1": {"mode": "balanced", "weight": 1.0, "start": 0.0, "end": 1.0, "tiling": TILING},
}
PIPELINE_CASES = ("balanced_w1", "balanced_w06_s02_e08")

RULES = {
    "control_image": "the img2img input image itself: RGB u8 HWC -> float32(u8)/255 (no normalisation to [-1, 1]), "
                     "NCHW [1, 3, H, W], contiguous; batch [control, control] for the rows (uncond, cond)",
    "keep": "n = number of steps actually run (5), i = 0..n-1: keep_i = 1 - float(i/n < start or (i+1)/n > end), "
            "i/n and (i+1)/n in float64 (diffusers' controlnet_keep)",
    "scales": "N residuals, j = 0..N-1 = the ControlNet's down residuals in order, then the mid residual (N = 5 "
              "for tiny-controlnet: 4 down + mid). balanced: scale_j = weight. prompt (sd-webui-controlnet 'My "
              "prompt is more important', soft injection): scale_j = weight * 0.825**(N-1-j) (SD 1.5, N = 13: "
              "weight * 0.825**(12-j)). controlnet ('ControlNet is more important': soft injection + CFG "
              "injection): scale_j as prompt, and the uncond row's residuals are 0 (only the cond row gets "
              "control)",
    "residual_factor": "residual_j of step i is multiplied by f_ij = float32(scale_j * keep_i) (the product in "
                       "float64, then one float32 multiply of the residual tensor); for mode controlnet the uncond "
                       "row (batch row 0) is replaced by zeros. keep_i = 0 gives all-zero residuals: the UNet output "
                       "is then bit-identical to the UNet without residuals",
    "step": "x_in = scheduler.scale_model_input(latents, t) (identity for DDIM); xx = cat([x_in, x_in]); "
            "down[0..N-2], mid = controlnet(xx, t, encoder_hidden_states=context [uncond; cond], controlnet_cond="
            "[control, control], conditioning_scale=1.0); scale as residual_factor; eps2 = unet(xx, t, context, "
            "down_block_additional_residuals=down, mid_block_additional_residual=mid) (the UNet adds down[k] to "
            "its k-th skip feature, mid to its mid-block output); guided = uncond + 7.5*(cond - uncond); latents = "
            "DDIM.step(guided, t, latents, eta=0).prev_sample",
    "tiled": "tile starts and weights exactly as tests/fixtures/tiled-parity (tile 6, overlap 2, offset 1 latent "
             "pixels: starts_y [0, 1, 2], starts_x [0, 1, 5, 6], 12 tiles of 6x6); per tile (y, x, th, tw), "
             "row-major: crop = x_in[:, :, y:y+th, x:x+tw]; control crop = control[:, :, 8y:8(y+th), "
             "8x:8(x+tw)] (pixels); the untiled step's ControlNet + UNet + CFG on [crop, crop] with "
             "[ccrop, ccrop]; canvas += guided*w, wsum += w; eps = canvas/wsum; one DDIM step on the whole latents",
    "decode": "vae.decode(final_latents / 0.18215); out_u8 = trunc(255*clamp((x+1)/2, 0, 1)) in float32, HWC RGB",
}


# ---------------------------------------------------------------------------------------------
# Control image, keep, scales
# ---------------------------------------------------------------------------------------------
def control_tensor(image):
    u8 = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
    return (u8.to(torch.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


def keeps(n, start, end):
    return [1.0 - float(i / n < start or (i + 1) / n > end) for i in range(n)]


def scales(case, n_res):
    if case["mode"] == "balanced":
        return [case["weight"]] * n_res
    assert case["mode"] in ("prompt", "controlnet"), case
    return [case["weight"] * SOFT ** (n_res - 1 - j) for j in range(n_res)]


def factors(case, n_res, keep):
    """float32 factor per residual for one step."""
    return [F(s * keep) for s in scales(case, n_res)]


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def guided_eps(pipe, cn, x_in, t, context, control, case, keep, calls):
    """CFG noise prediction for one (crop of the) latents; cn None = no ControlNet."""
    xx = torch.cat([x_in, x_in])
    if cn is None:
        out = pipe.unet(xx, t, encoder_hidden_states=context, return_dict=False)[0]
    else:
        down, mid = cn(xx, t, encoder_hidden_states=context, controlnet_cond=torch.cat([control, control]),
                       conditioning_scale=1.0, return_dict=False)
        res = list(down) + [mid]
        f = factors(case, len(res), keep)
        res = [r * float(fj) for r, fj in zip(res, f)]  # tensor * python float = float32 multiply
        if case["mode"] == "controlnet":
            res = [torch.cat([torch.zeros_like(r[:1]), r[1:]]) for r in res]
        calls.append(len(res))
        out = pipe.unet(xx, t, encoder_hidden_states=context, down_block_additional_residuals=res[:-1],
                        mid_block_additional_residual=res[-1], return_dict=False)[0]
    uncond, cond = out.chunk(2)
    return uncond + CFG * (cond - uncond)


def denoise(pipe, cn, context, init, noise, control, case):
    """Returns (final latents, timesteps, keep per step, tile info, residual count)."""
    sched = mtp.make_scheduler()
    sched.set_timesteps(STEPS)
    init_timestep = min(int(STEPS * STRENGTH), STEPS)
    t_start = max(STEPS - init_timestep, 0)
    timesteps = sched.timesteps[t_start * sched.order:]
    latents = sched.add_noise(init, noise, timesteps[:1])
    n = len(timesteps)
    keep = keeps(n, case["start"], case["end"]) if case else None
    tiling = case.get("tiling") if case else None
    _, _, h, w = latents.shape
    info = None
    if tiling is not None:
        tiles, ys, xs, th, tw = mtp.tiles_of(h, w, tiling)
        info = {"starts_y": ys, "starts_x": xs, "tile_h": th, "tile_w": tw, "n_tiles": len(tiles)}
    calls = []
    for i, t in enumerate(timesteps):
        x_in = sched.scale_model_input(latents, t)
        k = keep[i] if keep else None
        if tiling is None:
            eps = guided_eps(pipe, cn, x_in, t, context, control, case, k, calls)
        else:
            canvas = torch.zeros_like(x_in)
            wsum = torch.zeros(h, w, dtype=torch.float32)
            for y, x, th_, tw_, wt in tiles:
                crop = x_in[:, :, y:y + th_, x:x + tw_].contiguous()
                ccrop = control[:, :, 8 * y:8 * (y + th_), 8 * x:8 * (x + tw_)].contiguous()
                guided = guided_eps(pipe, cn, crop, t, context, ccrop, case, k, calls)
                canvas[:, :, y:y + th_, x:x + tw_] += guided * wt
                wsum[y:y + th_, x:x + tw_] += wt
            eps = canvas / wsum
        latents = sched.step(eps, t, latents, eta=0.0, return_dict=False)[0]
    n_res = calls[0] if calls else None
    return latents, [int(t) for t in timesteps], keep, info, n_res


# ---------------------------------------------------------------------------------------------
# diffusers' StableDiffusionControlNetImg2ImgPipeline, "mean" mode, recorded with make_tiny_sd.Tap
# ---------------------------------------------------------------------------------------------
def run_pipeline(pipe, cn, image, case):
    cpipe = StableDiffusionControlNetImg2ImgPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet, controlnet=cn,
        scheduler=mtp.make_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    cpipe.set_progress_bar_config(disable=True)
    seen = []

    def hook(module, args, kwargs, output):
        c = kwargs["controlnet_cond"]
        seen.append({"sample_channels_last": bool(args[0].is_contiguous(memory_format=torch.channels_last)
                                                  and not args[0].is_contiguous()),
                     "cond": c.detach().clone(), "cond_contiguous": bool(c.is_contiguous()), "cond_dtype": str(c.dtype),
                     "conditioning_scale": kwargs["conditioning_scale"], "guess_mode": kwargs["guess_mode"]})

    # the ControlNet pipeline has its own copy of retrieve_latents; route it through the one the Tap patches
    orig = cn_img2img_mod.retrieve_latents
    cn_img2img_mod.retrieve_latents = lambda enc, generator=None, sample_mode="sample": \
        tiny.img2img_mod.retrieve_latents(enc, generator=generator, sample_mode=sample_mode)
    handle = cn.register_forward_hook(hook, with_kwargs=True)
    try:
        generator = torch.Generator("cpu").manual_seed(SEED)
        with torch.no_grad(), tiny.Tap(cpipe, "mean") as tap:
            cpipe(prompt=PROMPT, image=image, control_image=image, strength=STRENGTH, num_inference_steps=STEPS,
                  guidance_scale=CFG, negative_prompt=NEGATIVE, eta=0.0, generator=generator, output_type="np",
                  controlnet_conditioning_scale=case["weight"], control_guidance_start=case["start"],
                  control_guidance_end=case["end"], guess_mode=False)
    finally:
        handle.remove()
        cn_img2img_mod.retrieve_latents = orig
    return tap, seen


# ---------------------------------------------------------------------------------------------
# Forward references
# ---------------------------------------------------------------------------------------------
def forward_refs(w, cn, cn_xl, context, control):
    out = {}
    t = torch.tensor(FORWARD_T)
    cond2 = torch.cat([control, control])
    with torch.no_grad():
        gen = torch.Generator("cpu").manual_seed(FORWARD_SEED)
        sample = torch.randn((2, 4, 8, 8), generator=gen, dtype=torch.float32)
        down, mid = cn(sample, t, encoder_hidden_states=context, controlnet_cond=cond2, conditioning_scale=1.0,
                       return_dict=False)
        res = list(down) + [mid]
        out["sd"] = {
            "model": "tests/fixtures/tiny-controlnet (float16 upcast to float32)",
            "call": f"controlnet(sample, timestep={FORWARD_T} (int64 scalar), encoder_hidden_states=context, "
                    "controlnet_cond=[control, control], conditioning_scale=1.0)",
            "inputs": {
                "sample": w.put("sd_forward.sample", tiny.np32(sample),
                                "NCHW [2, 4, 8, 8]; the first torch.randn draw of torch.Generator('cpu').manual_seed(7)"),
                "context": "context.f32 (common file: [uncond; cond] text context, [2, 77, 8])",
                "controlnet_cond": "control_64x64.f32 (common file, [1, 3, 64, 64]) repeated for both batch rows",
            },
            "outputs": {name: w.put(f"sd_forward.{name}", tiny.np32(r), "NCHW; batch rows as the inputs")
                        for name, r in zip([f"down_{j}" for j in range(len(res) - 1)] + ["mid"], res)},
        }

        gen = torch.Generator("cpu").manual_seed(FORWARD_SEED)
        sample = torch.randn((2, 4, 8, 8), generator=gen, dtype=torch.float32)
        ctx = torch.randn((2, 77, cn_xl.config.cross_attention_dim), generator=gen, dtype=torch.float32)
        pooled = cn_xl.config.projection_class_embeddings_input_dim - 6 * cn_xl.config.addition_time_embed_dim
        text_embeds = torch.randn((2, pooled), generator=gen, dtype=torch.float32)
        time_ids = torch.tensor([TIME_IDS] * 2, dtype=torch.float32)
        down, mid = cn_xl(sample, t, encoder_hidden_states=ctx, controlnet_cond=cond2, conditioning_scale=1.0,
                          added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}, return_dict=False)
        res = list(down) + [mid]
        out["sdxl"] = {
            "model": "tests/fixtures/tiny-controlnet-sdxl (float16 upcast to float32; addition_embed_type text_time, "
                     f"addition_time_embed_dim {cn_xl.config.addition_time_embed_dim}, pooled dim {pooled})",
            "call": f"controlnet(sample, timestep={FORWARD_T} (int64 scalar), encoder_hidden_states=context, "
                    "controlnet_cond=[control, control], conditioning_scale=1.0, added_cond_kwargs={text_embeds, "
                    "time_ids})",
            "inputs": {
                "sample": w.put("sdxl_forward.sample", tiny.np32(sample),
                                "NCHW [2, 4, 8, 8]; torch.Generator('cpu').manual_seed(7), draw 1 of 3"),
                "context": w.put("sdxl_forward.context", tiny.np32(ctx),
                                 f"[2, 77, {ctx.shape[-1]}]; same generator, draw 2 (random, not a text encoding)"),
                "text_embeds": w.put("sdxl_forward.text_embeds", tiny.np32(text_embeds),
                                     f"[2, {pooled}]; same generator, draw 3 (the pooled text embedding)"),
                "time_ids": w.put("sdxl_forward.time_ids", tiny.np32(time_ids),
                                  "[2, 6] float32: [orig_h, orig_w, crop_top, crop_left, target_h, target_w] = "
                                  "[64, 64, 0, 0, 64, 64] per row"),
                "controlnet_cond": "control_64x64.f32 (common file, [1, 3, 64, 64]) repeated for both batch rows",
            },
            "outputs": {name: w.put(f"sdxl_forward.{name}", tiny.np32(r), "NCHW; batch rows as the inputs")
                        for name, r in zip([f"down_{j}" for j in range(len(res) - 1)] + ["mid"], res)},
        }
    return out


# ---------------------------------------------------------------------------------------------
def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(MODEL_DIR, torch_dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    cn = ControlNetModel.from_pretrained(CONTROLNET_DIR, torch_dtype=torch.float32, local_files_only=True).eval()
    cn_xl = ControlNetModel.from_pretrained(CONTROLNET_SDXL_DIR, torch_dtype=torch.float32,
                                            local_files_only=True).eval()
    assert pipe.unet.dtype == cn.dtype == cn_xl.dtype == torch.float32

    if OUT_DIR.exists():
        shutil.rmtree(OUT_DIR)
    OUT_DIR.mkdir(parents=True)
    image = Image.open(SOURCE_PNG).convert("RGB")
    assert image.size == (64, 64)
    image.resize((WIDTH_TILED, HEIGHT_TILED), Image.LANCZOS).save(OUT_DIR / INPUT_TILED)
    image_tiled = Image.open(OUT_DIR / INPUT_TILED).convert("RGB")  # what the Rust test reads
    assert image_tiled.size == (WIDTH_TILED, HEIGHT_TILED)
    assert (OUT_DIR / INPUT_TILED).read_bytes() == (TILED_DIR / INPUT_TILED).read_bytes()
    w = tiny.Writer(OUT_DIR)
    checks = []

    with torch.no_grad():
        context, init, noise = mtp.prepare(pipe, image)
        context_t, init_t, noise_t = mtp.prepare(pipe, image_tiled)
        assert torch.equal(context_t, context)
        control, control_t = control_tensor(image), control_tensor(image_tiled)
        common = {
            "context": w.put("context", tiny.np32(context),
                             "[2, 77, 8]; row 0 uncond (negative prompt), row 1 cond (prompt); the text context of "
                             "every case and of the SD forward reference"),
            "control_64x64": w.put("control_64x64", tiny.np32(control),
                                   "NCHW [1, 3, 64, 64]; float32(u8)/255 of ../parity/in_coffee_64x64.png: the "
                                   "control image of the 64x64 cases and of both forward references"),
            "init_latents": w.put("init_latents", tiny.np32(init),
                                  "NCHW [1, 4, 8, 8]; VAE posterior mean of the 64x64 input * 0.18215"),
            "noise": w.put("noise", tiny.np32(noise),
                           "NCHW [1, 4, 8, 8]; the first torch.randn draw of torch.Generator('cpu').manual_seed(1234)"),
            "init_latents_96x64": w.put("init_latents_96x64", tiny.np32(init_t),
                                        "NCHW [1, 4, 8, 12]; as init_latents, for input_96x64.png"),
            "noise_96x64": w.put("noise_96x64", tiny.np32(noise_t),
                                 "NCHW [1, 4, 8, 12]; first draw of torch.Generator('cpu').manual_seed(1234)"),
        }
        results = {}
        for name, case in CASES.items():
            tiled = bool(case and case.get("tiling"))
            args = (context, init_t, noise_t, control_t) if tiled else (context, init, noise, control)
            final, timesteps, keep, info, n_res = denoise(pipe, None if case is None else cn, *args, case)
            results[name] = (final, mtp.decode(pipe, final), timesteps, keep, info, n_res)
        # the tiled loop without ControlNet: tiled-parity's tiles_t6_o2_off1
        # (with cn None, denoise uses only the case's tiling)
        final0, _, _, info0, _ = denoise(pipe, None, context, init_t, noise_t, control_t, CASES["tiled_balanced_w1"])
        cn_free = (final0, mtp.decode(pipe, final0))
        assert info0 == results["tiled_balanced_w1"][4]

        # 1. the written-out loop is diffusers' StableDiffusionControlNetImg2ImgPipeline
        for name in PIPELINE_CASES:
            case = CASES[name]
            tap, seen = run_pipeline(pipe, cn, image, case)
            final, decoded, timesteps, keep = results[name][:4]
            assert torch.equal(tap.add_noise[0], init) and tap.add_noise[0].is_contiguous(
                memory_format=torch.channels_last)
            assert torch.equal(tap.draws[0][1], noise) and [p for p, _ in tap.draws] == ["img2img_noise"]
            assert [int(s[1]) for s in tap.steps] == timesteps
            assert len(seen) == len(timesteps)
            assert all(torch.equal(s["cond"], torch.cat([control, control])) for s in seen)
            assert [s["conditioning_scale"] for s in seen] == [case["weight"] * k for k in keep]
            assert all(s["sample_channels_last"] and not s["guess_mode"] for s in seen)
            d_lat = float((tap.steps[-1][3] - final).abs().max())
            d_out = float((tap.decoded - decoded).abs().max())
            assert d_lat < 1e-4 and d_out < 1e-3, (name, d_lat, d_out)
            _, u8_pipe = msp.to_u8(tap.decoded)
            _, u8_mine = msp.to_u8(decoded)
            du8 = int(np.abs(u8_pipe.astype(np.int32) - u8_mine.astype(np.int32)).max())
            layout = "contiguous NCHW" if seen[0]["cond_contiguous"] else "not contiguous"
            checks.append(
                f"{name}: the written-out loop vs diffusers' StableDiffusionControlNetImg2ImgPipeline "
                f"(controlnet_conditioning_scale={case['weight']}, control_guidance_start={case['start']}, "
                f"control_guidance_end={case['end']}, guess_mode=False, mean mode via make_tiny_sd.Tap): init "
                f"latents, noise and timesteps equal; the pipeline's control image equals control_64x64 repeated "
                f"bit for bit ({seen[0]['cond_dtype']}, {layout}, in [0, 1], not normalised); its per-call conditioning_scale = weight*keep = {[s['conditioning_scale'] for s in seen]}; it runs "
                f"ControlNet and UNet on channels_last latents, this script on contiguous NCHW, so they differ by "
                f"float rounding only: final latents "
                + ("bit-exact" if d_lat == 0 else f"max |diff| {d_lat:.1e}") + ", decoded "
                + ("bit-exact" if d_out == 0 else f"max |diff| {d_out:.1e}") + f", out_u8 max |diff| {du8}")

        # 2. weight 0 = no ControlNet
        eq = (torch.equal(results["weight0"][0], results["no_controlnet"][0])
              and torch.equal(results["weight0"][1], results["no_controlnet"][1]))
        assert eq
        checks.append("weight0 (balanced, weight 0: every residual multiplied by 0) equals no_controlnet (the loop "
                      "without ControlNet, plain UNet call) bit for bit: final latents and decode")

        # 3. the tiled loop without ControlNet is tiled-parity's tiles_t6_o2_off1
        ref_lat = np.fromfile(TILED_DIR / "tiles_t6_o2_off1.latents.f32", dtype="<f4").reshape(1, 4, 8, 12)
        ref_u8 = np.fromfile(TILED_DIR / "tiles_t6_o2_off1.out_u8.u8", dtype=np.uint8).reshape(64, 96, 3)
        assert np.array_equal(tiny.np32(cn_free[0]), ref_lat)
        assert np.array_equal(msp.to_u8(cn_free[1])[1], ref_u8)
        checks.append("the tiled loop without ControlNet (tile 6, overlap 2, offset 1 on input_96x64.png) reproduces "
                      "../tiled-parity/tiles_t6_o2_off1.latents.f32 and .out_u8.u8 bit for bit")

        # 4. determinism
        for name in ("controlnet_w1", "tiled_balanced_w1"):
            case = CASES[name]
            tiled = bool(case.get("tiling"))
            args = (context, init_t, noise_t, control_t) if tiled else (context, init, noise, control)
            again = denoise(pipe, cn, *args, case)[0]
            assert torch.equal(again, results[name][0]), name
        checks.append("a second in-process run of controlnet_w1 and tiled_balanced_w1 gives identical final latents")

        forward = forward_refs(w, cn, cn_xl, context, control)

    entries, outs = [], {}
    for name, case in CASES.items():
        final, decoded, timesteps, keep, info, n_res = results[name]
        v, u8 = msp.to_u8(decoded)
        outs[name] = (tiny.np32(final), tiny.np32(decoded), v, u8)
        tiled = bool(case and case.get("tiling"))
        lat_shape = "[1, 4, 8, 12]" if tiled else "[1, 4, 8, 8]"
        out_shape = "[64, 96, 3]" if tiled else "[64, 64, 3]"
        files = {"latents": w.put(f"{name}.latents", tiny.np32(final),
                                  f"NCHW {lat_shape}; final latents after the 5 DDIM steps (before / 0.18215)"),
                 "out_u8": w.put(f"{name}.out_u8", u8,
                                 f"HWC {out_shape} RGB u8 = trunc(255*clamp((x+1)/2, 0, 1)), float32")}
        e = {"name": name, "controlnet": case is not None}
        if case is not None:
            sc = scales(case, n_res)
            e.update(mode=case["mode"], weight=case["weight"], start=case["start"], end=case["end"],
                     n_residuals=n_res, scales=sc, keep=keep,
                     factors=[[float(f) for f in factors(case, n_res, k)] for k in keep],
                     uncond_residuals_zero=case["mode"] == "controlnet",
                     input=INPUT_TILED if tiled else "../parity/in_coffee_64x64.png",
                     control_image=("input_96x64.png as float32(u8)/255, cropped per tile" if tiled
                                    else "control_64x64.f32"))
            if tiled:
                e.update(tiling=case["tiling"], **info)
        else:
            e.update(input="../parity/in_coffee_64x64.png", note="the img2img loop without ControlNet (plain UNet)")
        e.update(timesteps=timesteps, files=files)
        entries.append(e)

    def stats(la, da, va, ua, lb, db, vb, ub):
        du = np.abs(ua.astype(np.int32) - ub.astype(np.int32))
        return {"latents_mean_abs": float(np.abs(la - lb).mean()), "latents_max_abs": float(np.abs(la - lb).max()),
                "out_mean_abs": float(np.abs(da - db).mean()),
                "out_clamped_mean_abs": float(np.abs(va - vb).mean()),
                "out_u8_mean_abs": float(du.mean()), "out_u8_max_abs": int(du.max())}

    v0, u0 = msp.to_u8(cn_free[1])
    free_tiled = (tiny.np32(cn_free[0]), tiny.np32(cn_free[1]), v0, u0)
    for e in entries:
        if e["controlnet"]:
            tiled = "tiling" in e
            base = free_tiled if tiled else outs["no_controlnet"]
            e["diff_to_no_controlnet"] = stats(*outs[e["name"]], *base)
            e["diff_to_no_controlnet"]["against"] = ("../tiled-parity/tiles_t6_o2_off1 (the same tiling without "
                                                     "ControlNet)" if tiled else "no_controlnet")
            if e["name"] in ("prompt_w1", "controlnet_w1"):  # the modes are told apart
                e["diff_to_balanced_w1"] = stats(*outs[e["name"]], *outs["balanced_w1"])
    by = {e["name"]: e for e in entries}
    assert by["balanced_w1"]["diff_to_no_controlnet"]["out_u8_mean_abs"] >= 1.0, by["balanced_w1"]
    assert by["weight0"]["diff_to_no_controlnet"]["out_u8_max_abs"] == 0

    manifest = {
        "generator": "tools/parity/make_controlnet_parity.py",
        "versions": tiny.versions(),
        "model": "tests/fixtures/tiny-sd + tests/fixtures/tiny-controlnet (epsilon prediction; fp16 weights upcast "
                 "to float32), CPU, 1 thread",
        "file_format": "raw little-endian, C order (row-major), no header; f32 = IEEE float32, u8 = uint8; "
                       "shape and layout per file",
        "input": {"file_64x64": "../parity/in_coffee_64x64.png", "file_96x64": INPUT_TILED,
                  "made_from": "input_96x64.png = ../parity/in_coffee_64x64.png with Pillow Image.resize((96, 64), "
                               "Image.LANCZOS), saved as PNG and read back (byte-identical to "
                               "../tiled-parity/input_96x64.png)",
                  "how": "img2img: read as RGB: x = float32(u8)/255*2 - 1, NCHW; control: float32(u8)/255"},
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "seed": SEED,
        "generator_device": "cpu",
        "latent_mode": "mean: init latents = VAE posterior mean * 0.18215 (contiguous NCHW); the img2img noise is the "
                       "first draw of torch.Generator('cpu').manual_seed(seed)",
        "sampler": "ddim (DDIMScheduler from tiny-sd/scheduler/scheduler_config.json), eta 0",
        "steps": STEPS,
        "strength": STRENGTH,
        "strength_rule": "init_timestep = min(int(steps*strength), steps); t_start = steps - init_timestep; "
                         "timesteps = all_timesteps[t_start:]; add_noise(init, noise, timesteps[0])",
        "guidance_scale": CFG,
        "cfg": "UNet and ControlNet batch [uncond, cond] (context rows: negative prompt, prompt); guided = uncond + "
               "7.5*(cond - uncond)",
        "rules": RULES,
        "common_files": common,
        "cases": entries,
        "forward": forward,
        "self_checks": checks,
    }
    (OUT_DIR / "manifest.json").write_text(json.dumps(tiny.jsonable(manifest), indent=1, allow_nan=False) + "\n")

    for c in checks:
        print("check:", c)
    for e in entries:
        d = e.get("diff_to_no_controlnet")
        ds = (f"latents mad {d['latents_mean_abs']:.4f} max {d['latents_max_abs']:.4f}; out mad {d['out_mean_abs']:.4f}; "
              f"u8 mad {d['out_u8_mean_abs']:.2f} max {d['out_u8_max_abs']}") if d else ""
        print(f"{e['name']:22s} keep={e.get('keep')} {ds}")
        if "diff_to_balanced_w1" in e:
            d = e["diff_to_balanced_w1"]
            print(f"{'':22s} vs balanced_w1: latents mad {d['latents_mean_abs']:.4f}; u8 mad {d['out_u8_mean_abs']:.2f}")
    for fam, ref in forward.items():
        print(fam, {k: v["shape"] for k, v in ref["outputs"].items()},
              {k: (v["shape"] if isinstance(v, dict) else v) for k, v in ref["inputs"].items()})
    n_files = sum(1 for f in OUT_DIR.rglob("*") if f.is_file())
    print(f"size: {tiny.dir_size(OUT_DIR)} B in {n_files} files; sha256 of the folder (paths + bytes): "
          f"{msp.file_digest(OUT_DIR)}")


if __name__ == "__main__":
    main()
