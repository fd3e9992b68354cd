#!/usr/bin/env python3
"""Tiled denoising (MultiDiffusion) references on the tiny SD 1.x model.

Run from the repository root, after make_tiny_sd.py (it reads tests/fixtures/tiny-sd/ and
tests/fixtures/parity/in_coffee_64x64.png):

    python3 tools/parity/make_tiled_parity.py

It deletes and rewrites tests/fixtures/tiled-parity/ (input_96x64.png, manifest.json, raw
little-endian .f32 / .u8 files), deterministically and without network access.

img2img in the app's "mean" latent mode with DDIM (tiny-sd's scheduler config), 10 steps,
strength 0.5 (5 steps run), CFG 7.5, on a 96x64 image (latents 12 wide, 8 high). At every step
the noise prediction is computed tile by tile: each tile of the (scaled) latents is run through
the UNet with CFG, the guided predictions are blended with per-tile ramp weights, and the
scheduler steps the whole latents with the blend. The tiling rules (tile starts, weights) are
implemented here from the project's specification, not taken from a library; see
tools/parity/README.md ("Tiled denoising").

Self checks (in manifest.json -> self_checks): the hand-written untiled loop equals diffusers'
StableDiffusionImg2ImgPipeline (same harness as make_sampler_parity.py), a single tile covering
the latents equals the untiled loop, the weights of every tiling cover every latent pixel, and a
second run of one tiled case gives identical bytes.
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
from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_sd as tiny  # noqa: E402  (Writer, np32, jsonable, versions, paths)
import make_sampler_parity as msp  # noqa: E402  (run_pipeline, to_u8, file_digest)

ROOT = tiny.ROOT
MODEL_DIR = tiny.MODEL_DIR
SOURCE_PNG = tiny.REF_DIR / "in_coffee_64x64.png"
OUT_DIR = ROOT / "tests/fixtures/tiled-parity"
INPUT = "input_96x64.png"
WIDTH, HEIGHT = 96, 64

PROMPT = tiny.PROMPT  # "a cup of coffee on a wooden table"
NEGATIVE = tiny.NEGATIVE  # "blurry, lowres"
SEED = 1234
STEPS = 10
STRENGTH = 0.5
CFG = 7.5
F = np.float32

# name -> tiling (tile size T, overlap O, offset off; latent pixels), None = untiled
CASES = {
    "untiled": None,
    "one_tile": {"tile": 12, "overlap": 0, "offset": 0},
    "tiles_t6_o2_off0": {"tile": 6, "overlap": 2, "offset": 0},
    "tiles_t6_o2_off1": {"tile": 6, "overlap": 2, "offset": 1},
    "tiles_t4_o2_off1": {"tile": 4, "overlap": 2, "offset": 1},
}
# raw decodes (73,728 bytes each) only for these, to keep the folder under 300 KB; every case has
# its final latents and out_u8
OUT_F32_CASES = ("untiled", "tiles_t4_o2_off1")

RULES = {
    "tile_starts": "along an axis of length L with tile size T, overlap O, offset off (0 <= off < T - O), "
                   "stride S = T - O: if L <= T one tile at 0 of length L; else the sorted, de-duplicated set "
                   "{0, L - T} U {off + k*S : k >= 0, 0 < off + k*S < L - T}, every tile of length T",
    "weights": "per axis, tile at a of length n: w(i) = min(r_lo(i), r_hi(i)), r_lo(i) = min(1, (i+1)/(O+1)) if a > 0 "
               "else 1, r_hi(i) = min(1, (n-i)/(O+1)) if a + n < L else 1, float32; the tile's weight is the outer "
               "product w_y[:, None] * w_x[None, :] (float32)",
    "step": "x_in = scheduler.scale_model_input(latents, t) (identity for DDIM); canvas = 0, wsum = 0 ([1,4,h,w] and "
            "[h,w], float32); for every tile, row-major (y starts outer, x starts inner): crop = x_in[:, :, y:y+th, "
            "x:x+tw]; unet(cat([crop, crop]), t, context = cat([uncond, cond])) -> rows (uncond, cond); guided = "
            "uncond + 7.5*(cond - uncond); canvas[tile] += guided*w; wsum[tile] += w; then eps = canvas / wsum and "
            "latents = DDIM.step(eps, t, latents, eta=0).prev_sample on the whole latents",
    "decode": "vae.decode(final_latents / 0.18215); out_u8 = trunc(255*clamp((x+1)/2, 0, 1)) in float32, HWC RGB",
}


# ---------------------------------------------------------------------------------------------
# Tiling
# ---------------------------------------------------------------------------------------------
def tile_starts(length, tile, overlap, offset):
    """(starts, tile length) along one axis."""
    assert 0 <= overlap < tile and 0 <= offset < tile - overlap, (tile, overlap, offset)
    if length <= tile:
        return [0], length
    stride = tile - overlap
    starts = {0, length - tile}
    k = 0
    while offset + k * stride < length - tile:
        p = offset + k * stride
        if p > 0:
            starts.add(p)
        k += 1
    return sorted(starts), tile


def axis_weights(start, n, length, overlap):
    """float32 ramp of one tile along one axis."""
    one, den = F(1), F(overlap + 1)
    w = np.empty(n, dtype=F)
    for i in range(n):
        lo = min(one, F(i + 1) / den) if start > 0 else one
        hi = min(one, F(n - i) / den) if start + n < length else one
        w[i] = min(lo, hi)
    return w


def tiles_of(h, w, tiling):
    """[(y, x, th, tw, weight [th, tw] float32 tensor)] in row-major order, and the starts."""
    T, O, off = tiling["tile"], tiling["overlap"], tiling["offset"]
    ys, th = tile_starts(h, T, O, off)
    xs, tw = tile_starts(w, T, O, off)
    tiles = []
    for y in ys:
        wy = torch.from_numpy(axis_weights(y, th, h, O))
        for x in xs:
            wx = torch.from_numpy(axis_weights(x, tw, w, O))
            tiles.append((y, x, th, tw, wy[:, None] * wx[None, :]))
    return tiles, ys, xs, th, tw


# ---------------------------------------------------------------------------------------------
# The img2img loop, written out (diffusers' StableDiffusionImg2ImgPipeline, "mean" mode, DDIM)
# ---------------------------------------------------------------------------------------------
def make_scheduler():
    cfg = DDIMScheduler.load_config(MODEL_DIR / "scheduler")
    assert cfg["prediction_type"] == "epsilon" and cfg["timestep_spacing"] == "leading"
    return DDIMScheduler.from_config(cfg)


def prepare(pipe, image):
    """Text context [uncond; cond], init latents (posterior mean * scaling), noise, timesteps."""
    cond, uncond = pipe.encode_prompt(PROMPT, torch.device("cpu"), 1, True, NEGATIVE)
    context = torch.cat([uncond, cond])
    x = pipe.image_processor.preprocess(image).to(torch.float32)
    init = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
    # The posterior mean comes out of the VAE with channels_last strides (384, 1, 48, 4), and
    # diffusers' pipeline keeps them: its UNet then runs on channels_last latents, which rounds
    # differently (~1e-6 per call) from the same values in plain NCHW. Every loop here, like the
    # Rust engine, works on plain contiguous NCHW tensors (tile crops are made contiguous anyway).
    assert init.is_contiguous(memory_format=torch.channels_last) and not init.is_contiguous()
    init = init.contiguous()
    generator = torch.Generator("cpu").manual_seed(SEED)
    noise = torch.randn(init.shape, generator=generator, dtype=torch.float32)
    return context, init, noise


def denoise(pipe, context, init, noise, tiling):
    """Returns (noised latents, final latents, timesteps run, tile info)."""
    sched = make_scheduler()
    sched.set_timesteps(STEPS)
    init_timestep = min(int(STEPS * STRENGTH), STEPS)
    t_start = max(STEPS - init_timestep, 0)
    timesteps = sched.timesteps[t_start * sched.order:]
    if hasattr(sched, "set_begin_index"):  # as the pipeline does; DDIM has none
        sched.set_begin_index(t_start * sched.order)
    latents = sched.add_noise(init, noise, timesteps[:1])
    noised = latents.clone()
    _, c, h, w = latents.shape
    info = None
    if tiling is not None:
        tiles, ys, xs, th, tw = tiles_of(h, w, tiling)
        wsum_check = torch.zeros(h, w)
        for y, x, th_, tw_, wt in tiles:
            wsum_check[y:y + th_, x:x + tw_] += wt
        assert bool((wsum_check > 0).all()), tiling  # every latent pixel is covered
        info = {"starts_y": ys, "starts_x": xs, "tile_h": th, "tile_w": tw, "n_tiles": len(tiles),
                "weights_y": [[float(v) for v in axis_weights(y, th, h, tiling["overlap"])] for y in ys],
                "weights_x": [[float(v) for v in axis_weights(x, tw, w, tiling["overlap"])] for x in xs],
                "weight_sum_min": float(wsum_check.min()), "weight_sum_max": float(wsum_check.max())}
    for t in timesteps:
        x_in = sched.scale_model_input(latents, t)
        if tiling is None:
            out = pipe.unet(torch.cat([x_in] * 2), t, encoder_hidden_states=context, return_dict=False)[0]
            uncond, cond = out.chunk(2)
            eps = uncond + CFG * (cond - uncond)
        else:
            canvas = torch.zeros_like(x_in)
            wsum = torch.zeros(h, w, dtype=torch.float32)
            for y, x, th_, tw_, wt in tiles:
                crop = x_in[:, :, y:y + th_, x:x + tw_].contiguous()
                out = pipe.unet(torch.cat([crop, crop]), t, encoder_hidden_states=context, return_dict=False)[0]
                uncond, cond = out.chunk(2)
                guided = uncond + CFG * (cond - uncond)
                canvas[:, :, y:y + th_, x:x + tw_] += guided * wt
                wsum[y:y + th_, x:x + tw_] += wt
            eps = canvas / wsum
        latents = sched.step(eps, t, latents, eta=0.0, return_dict=False)[0]
    return noised, latents, [int(t) for t in timesteps], info


def decode(pipe, latents):
    return pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]


# ---------------------------------------------------------------------------------------------
def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(MODEL_DIR, torch_dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.dtype == torch.float32 and pipe.vae.dtype == torch.float32

    if OUT_DIR.exists():
        shutil.rmtree(OUT_DIR)
    OUT_DIR.mkdir(parents=True)
    src = Image.open(SOURCE_PNG).convert("RGB")
    assert src.size == (64, 64)
    src.resize((WIDTH, HEIGHT), Image.LANCZOS).save(OUT_DIR / INPUT)
    image = Image.open(OUT_DIR / INPUT).convert("RGB")  # what the Rust test reads
    assert image.size == (WIDTH, HEIGHT)
    w = tiny.Writer(OUT_DIR)
    checks = []

    with torch.no_grad():
        context, init, noise = prepare(pipe, image)
        assert tuple(init.shape) == (1, 4, HEIGHT // 8, WIDTH // 8)
        common = {
            "init_latents": w.put("init_latents", tiny.np32(init),
                                  "NCHW [1, 4, 8, 12]; VAE posterior mean of the input * 0.18215"),
            "noise": w.put("noise", tiny.np32(noise),
                           "NCHW [1, 4, 8, 12]; the first torch.randn draw of torch.Generator('cpu').manual_seed(1234)"),
        }
        results = {}
        for name, tiling in CASES.items():
            noised, final, timesteps, info = denoise(pipe, context, init, noise, tiling)
            decoded = decode(pipe, final)
            results[name] = (noised, final, decoded, timesteps, info)
        common["noised_latents"] = w.put(
            "noised_latents", tiny.np32(results["untiled"][0]),
            "NCHW [1, 4, 8, 12]; DDIM add_noise(init_latents, noise, timesteps[0]), the latents before the first step")
        assert all(torch.equal(r[0], results["untiled"][0]) for r in results.values())

        # 1. the written-out untiled loop is diffusers' pipeline
        tap, out_np, _, _ = msp.run_pipeline(pipe, make_scheduler(), image, STEPS, STRENGTH, CFG)
        ref_final = tap.steps[-1][3]
        assert torch.equal(tap.add_noise[0], init) and tap.add_noise[0].is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(tap.draws[0][1], noise)
        assert [p for p, _ in tap.draws] == ["img2img_noise"]
        assert [int(s[1]) for s in tap.steps] == results["untiled"][3]
        d_lat = float((ref_final - results["untiled"][1]).abs().max())
        d_out = float((tap.decoded - results["untiled"][2]).abs().max())
        assert d_lat < 1e-4 and d_out < 1e-3, (d_lat, d_out)
        checks.append("the written-out untiled loop vs diffusers' StableDiffusionImg2ImgPipeline (mean mode, same "
                      "harness as make_sampler_parity.py): init latents and noise equal, timesteps equal; the pipeline "
                      "runs the UNet on channels_last-strided latents (the VAE's posterior mean keeps them), this "
                      "script on contiguous NCHW, so they differ by float rounding only: final latents "
                      + ("bit-exact" if d_lat == 0 else f"max |diff| {d_lat:.1e}") + ", decoded "
                      + ("bit-exact" if d_out == 0 else f"max |diff| {d_out:.1e}"))

        # 2. one tile covering everything = untiled
        d1 = float((results["one_tile"][1] - results["untiled"][1]).abs().max())
        d1o = float((results["one_tile"][2] - results["untiled"][2]).abs().max())
        checks.append("one_tile (T = 12: one tile [0, 8) x [0, 12), weight 1) vs untiled: final latents "
                      + ("bit-exact" if d1 == 0 else f"max |diff| {d1:.1e}") + ", decoded "
                      + ("bit-exact" if d1o == 0 else f"max |diff| {d1o:.1e}"))
        assert d1 == 0 and d1o == 0, (d1, d1o)

        # 3. determinism
        _, again, _, _ = denoise(pipe, context, init, noise, CASES["tiles_t4_o2_off1"])
        assert torch.equal(again, results["tiles_t4_o2_off1"][1])
        checks.append("a second in-process run of tiles_t4_o2_off1 gives identical final latents")
        checks.append("every tiling's summed weights are > 0 on every latent pixel (weight_sum_min/max per case)")

    entries, outs = [], {}
    for name, tiling in CASES.items():
        noised, final, decoded, timesteps, info = results[name]
        v, u8 = msp.to_u8(decoded)
        outs[name] = (tiny.np32(final), tiny.np32(decoded), v, u8)
        files = {"latents": w.put(f"{name}.latents", tiny.np32(final),
                                  "NCHW [1, 4, 8, 12]; final latents after the 5 DDIM steps (before / 0.18215)")}
        if name in OUT_F32_CASES:
            files["out"] = w.put(f"{name}.out", tiny.np32(decoded),
                                 "NCHW [1, 3, 64, 96]; raw vae.decode(final / 0.18215), before clamping")
        files["out_u8"] = w.put(f"{name}.out_u8", u8, "HWC [64, 96, 3] RGB u8 = trunc(255*clamp((x+1)/2, 0, 1)), float32")
        e = {"name": name, "tiled": tiling is not None}
        if tiling is not None:
            e.update(tile=tiling["tile"], overlap=tiling["overlap"], offset=tiling["offset"],
                     stride=tiling["tile"] - tiling["overlap"], **info)
        e.update(timesteps=timesteps, unet_calls=len(timesteps) * (info["n_tiles"] if info else 1), unet_batch=2,
                 files=files)
        entries.append(e)

    def diff(a, b):
        la, da, va, ua = outs[a]
        lb, db, vb, ub = outs[b]
        du = np.abs(ua.astype(np.int32) - ub.astype(np.int32))
        return {"latents_mean_abs": float(np.abs(la - lb).mean()), "latents_max_abs": float(np.abs(la - lb).max()),
                "out_mean_abs": float(np.abs(da - db).mean()),
                "out_clamped_mean_abs": float(np.abs(va - vb).mean()),
                "out_u8_mean_abs": float(du.mean()), "out_u8_max_abs": int(du.max())}

    for e in entries:
        if e["name"] != "untiled":
            e["diff_to_untiled"] = diff(e["name"], "untiled")

    manifest = {
        "generator": "tools/parity/make_tiled_parity.py",
        "versions": tiny.versions(),
        "model": "tests/fixtures/tiny-sd (epsilon prediction; fp16 weights upcast to float32), CPU, 1 thread",
        "file_format": "raw little-endian, C order (row-major), no header; f32 = IEEE float32, u8 = uint8; "
                       "shape and layout per file",
        "input": {"file": INPUT, "width": WIDTH, "height": HEIGHT,
                  "made_from": "../parity/in_coffee_64x64.png with Pillow Image.resize((96, 64), Image.LANCZOS), saved "
                               "as PNG and read back",
                  "how": "read as RGB: x = float32(u8)/255*2 - 1, NCHW"},
        "latent_shape": [1, 4, HEIGHT // 8, WIDTH // 8],
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "seed": SEED,
        "generator_device": "cpu",
        "latent_mode": "mean: init latents = VAE posterior mean * 0.18215; the img2img noise is the first draw of "
                       "torch.Generator('cpu').manual_seed(seed), shape [1, 4, 8, 12]",
        "sampler": "ddim (DDIMScheduler from tiny-sd/scheduler/scheduler_config.json), eta 0",
        "steps": STEPS,
        "strength": STRENGTH,
        "strength_rule": "init_timestep = min(int(steps*strength), steps); t_start = steps - init_timestep; "
                         "timesteps = all_timesteps[t_start:]; add_noise(init, noise, timesteps[0])",
        "guidance_scale": CFG,
        "cfg": "UNet batch [uncond, cond] (context rows: negative prompt, prompt); guided = uncond + 7.5*(cond - uncond)",
        "rules": RULES,
        "common_files": common,
        "cases": entries,
        "self_checks": checks,
    }
    (OUT_DIR / "manifest.json").write_text(json.dumps(tiny.jsonable(manifest), indent=1, allow_nan=False) + "\n")

    for c in checks:
        print("check:", c)
    for e in entries:
        tiles = f"y={e['starts_y']} x={e['starts_x']} ({e['n_tiles']} tiles of {e['tile_h']}x{e['tile_w']})" \
            if e["tiled"] else "-"
        d = e.get("diff_to_untiled")
        ds = (f"latents mad {d['latents_mean_abs']:.4f} max {d['latents_max_abs']:.4f}; out mad {d['out_mean_abs']:.4f}; "
              f"u8 mad {d['out_u8_mean_abs']:.2f} max {d['out_u8_max_abs']}") if d else ""
        print(f"{e['name']:18s} {tiles:50s} {ds}")
    n_files = sum(1 for f in OUT_DIR.rglob("*") if f.is_file())
    print(f"size: {tiny.dir_size(OUT_DIR)} B in {n_files} files; sha256 of the folder (paths + bytes): "
          f"{msp.file_digest(OUT_DIR)}")


if __name__ == "__main__":
    main()
