#!/usr/bin/env python3
"""Half-precision (float16 / bfloat16) CPU references on the tiny SD 1.x model: how far PyTorch's
own half-precision img2img runs stay from its float32 run.

Run from the repository root, after make_tiny_sd.py (it reads tests/fixtures/tiny-sd/ and
tests/fixtures/parity/in_coffee_64x64.png):

    python3 tools/parity/make_half_parity.py

It deletes and rewrites tests/fixtures/half-parity/ (manifest.json, raw little-endian .f32 / .u8
files), deterministically and without network access.

The harness is make_tiled_parity.py's untiled loop: img2img in the app's "mean" latent mode with
DDIM (tiny-sd's scheduler config), 10 steps, strength 0.5 (5 steps run), CFG 7.5, seed 1234, the
coffee prompts, on the 64x64 input. Cases, all on the CPU:

  f32        everything float32 (the reference)
  unet_f16   the UNet in float16 (its inputs cast to f16, its output cast back to f32); guidance,
             DDIM, text encoder and VAE float32
  unet_bf16  the same with bfloat16
  all_f16    text encoder, UNet, VAE, latents and the scheduler arithmetic in float16, as
             diffusers' StableDiffusionImg2ImgPipeline runs with torch_dtype=torch.float16
  all_bf16   the same with bfloat16

For every case: final latents (float32), out_u8, and in manifest.json the differences to f32,
whether any intermediate was non-finite, and the largest activation magnitude per model.

Each network alone in float16 / bfloat16 (manifest.json -> components), for tests of one network
at a time: the text encoder (the all_* context against f32's), the VAE encoder (the all_* init
latents against f32's) and the VAE decoder, which the loops never isolate: f32's final latents
cast to the half dtype and decoded by the half-precision VAE, against f32's decode.

Self checks (manifest.json -> self_checks): the f32 loop equals diffusers' pipeline (same harness
as make_tiled_parity.py), the all_* loops equal diffusers' pipeline loaded with torch_dtype=that
dtype, and a second in-process run of every case gives identical bytes. See tools/parity/README.md
("Half precision").
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import hashlib
import inspect
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_sd as tiny  # noqa: E402  (Writer, np32, jsonable, versions, dir_size, paths)
import make_sampler_parity as msp  # noqa: E402  (run_pipeline, to_u8, file_digest)

ROOT = tiny.ROOT
MODEL_DIR = tiny.MODEL_DIR
INPUT_PNG = tiny.REF_DIR / "in_coffee_64x64.png"
OUT_DIR = ROOT / "tests/fixtures/half-parity"
WIDTH, HEIGHT = 64, 64
LATENT_SHAPE = [1, 4, HEIGHT // 8, WIDTH // 8]

PROMPT = tiny.PROMPT  # "a cup of coffee on a wooden table"
NEGATIVE = tiny.NEGATIVE  # "blurry, lowres"
SEED = 1234
STEPS = 10
STRENGTH = 0.5
CFG = 7.5

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
DTYPE_NAME = {F32: "float32", F16: "float16", BF16: "bfloat16"}

# name -> dtypes of (text encoder, UNet, VAE, latents + scheduler arithmetic)
CASES = {
    "f32": {"text_encoder": F32, "unet": F32, "vae": F32, "latents": F32},
    "unet_f16": {"text_encoder": F32, "unet": F16, "vae": F32, "latents": F32},
    "unet_bf16": {"text_encoder": F32, "unet": BF16, "vae": F32, "latents": F32},
    "all_f16": {"text_encoder": F16, "unet": F16, "vae": F16, "latents": F16},
    "all_bf16": {"text_encoder": BF16, "unet": BF16, "vae": BF16, "latents": BF16},
}

RULES = {
    "common": "img2img, 'mean' latent mode, DDIM (tiny-sd's scheduler config, eta 0), 10 steps, strength 0.5 -> "
              "timesteps 401, 301, 201, 101, 1; CFG 7.5 with UNet batch [uncond, cond]; input "
              "../parity/in_coffee_64x64.png read as RGB, x = float32(u8)/255*2 - 1; every tensor the loop makes "
              "is plain contiguous NCHW (see self_checks for diffusers' channels_last strides)",
    "weights": "the fp16 safetensors of tests/fixtures/tiny-sd loaded with the case's dtype: float32 and float16 "
               "are the stored values exactly; bfloat16 is the float16 values rounded to nearest-even (10 -> 7 "
               "mantissa bits), i.e. from_pretrained(torch_dtype=torch.bfloat16)",
    "noise": "torch.randn([1, 4, 8, 8], generator=torch.Generator('cpu').manual_seed(1234)) drawn in float32 and cast "
             "to the latents' dtype; diffusers draws with dtype=float16/bfloat16 directly, which torch 2.15 on the "
             "CPU makes bit-identical to the cast for this shape (checked; not for every size: see noise_draw)",
    "f32": "everything float32: the reference",
    "unet_f16": "text encoder and VAE float32; at every step the UNet (weights float16) gets cat([x, x]).to(f16), "
                "t (int64), context.to(f16); its output is cast .to(float32) and guidance "
                "uncond + 7.5*(cond - uncond) and DDIM.step run in float32 on float32 latents; decode in float32",
    "unet_bf16": "as unet_f16 with bfloat16",
    "all_f16": "as diffusers' StableDiffusionImg2ImgPipeline with torch_dtype=torch.float16 on the CPU: text "
               "encoder float16 -> context float16; image.to(f16) -> vae.encode (float16) -> posterior mean * "
               "0.18215 (f16); noise cast to f16; DDIM add_noise and step are diffusers' own code applied to f16 "
               "tensors (alphas_cumprod is cast to f16 in add_noise; in step the 0-dim float32 alphas do not "
               "promote, so the results stay f16); guidance in f16; vae.decode(latents / 0.18215) in float16 (no "
               "VAE upcast: see vae_upcast); the f16 decode is cast to float32 before out_u8",
    "all_bf16": "as all_f16 with bfloat16",
    "out_u8": "HWC RGB u8 = trunc(255*clamp((x+1)/2, 0, 1)) computed in float32 from the decode cast to float32 "
              "(diffusers' own postprocess would denormalise in f16; this one does not)",
    "diff_to_f32": "latents: final latents (before / 0.18215) cast to float32 minus f32's; decoded: raw decode (before "
                   "clamping) cast to float32 minus f32's; out_u8: |level difference|; max and mean over all elements",
    "components": "each network alone in the half dtype against float32, the rest float32: text_encoder = the "
                  "all_* case's context (the encoder's only input is token ids), vae_encode = the all_* case's "
                  "init latents (image cast to the half dtype, posterior mean * 0.18215 in it), vae_decode = "
                  "vae.decode(f32 final latents cast to the half dtype / 0.18215) in the half dtype, cast to float32 "
                  "(raw decode and out_u8 differences to f32's decode)",
    "use": "a Rust test runs its engine's f16/bf16 CPU path and its f32 path on the same inputs and requires each "
           "difference to be at most the matching case's diff_to_f32 here (times a stated margin)",
}


# ---------------------------------------------------------------------------------------------
# The img2img loop, written out (make_tiled_parity.py's untiled loop, with dtypes per component)
# ---------------------------------------------------------------------------------------------
def make_scheduler():
    cfg = DDIMScheduler.load_config(MODEL_DIR / "scheduler")
    assert cfg["prediction_type"] == "epsilon" and cfg["timestep_spacing"] == "leading"
    return DDIMScheduler.from_config(cfg)


def load_pipe(dtype):
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(MODEL_DIR, torch_dtype=dtype, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.dtype == dtype and pipe.vae.dtype == dtype and pipe.text_encoder.dtype == dtype
    return pipe


class Watch:
    """Forward hooks on every submodule of the given models: the largest |value| of any module's
    floating-point output (and where), how many outputs had non-finite values, and per call of each
    top-level model whether its output was finite."""

    def __init__(self, models):
        self.models = models  # {label: module}
        self.stats = {}
        self.calls = {label: [] for label in models}
        self._hooks = []

    @staticmethod
    def tensors(out):
        if torch.is_tensor(out):
            return [out] if out.is_floating_point() else []
        if isinstance(out, dict):  # diffusers BaseOutput, transformers ModelOutput
            out = list(out.values())
        if isinstance(out, (tuple, list)):
            return [t for o in out for t in Watch.tensors(o)]
        return []

    def __enter__(self):
        for label, model in self.models.items():
            st = self.stats.setdefault(label, {"max_abs": 0.0, "max_abs_module": None, "nonfinite_outputs": 0,
                                               "nonfinite_modules": []})
            for name, mod in model.named_modules():
                def hook(mod, args, out, name=name, label=label, st=st):
                    for t in Watch.tensors(out):
                        t = t.detach().float()
                        fin = torch.isfinite(t)
                        if not bool(fin.all()):
                            st["nonfinite_outputs"] += 1
                            if name not in st["nonfinite_modules"]:
                                st["nonfinite_modules"].append(name)
                        if bool(fin.any()):
                            m = float(t[fin].abs().max())
                            if m > st["max_abs"]:
                                st["max_abs"], st["max_abs_module"] = m, name or "(top)"
                    if name == "":
                        self.calls[label].append(all(bool(torch.isfinite(t).all()) for t in Watch.tensors(out)))
                self._hooks.append(mod.register_forward_hook(hook))
        return self

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()
        return False


def prepare(pipes, case, image, keep_strides=False):
    """Text context [uncond; cond], init latents (posterior mean * scaling) and noise, in the
    dtypes the case's components produce (init and noise in the latents' dtype)."""
    dt = CASES[case]
    te_pipe, vae = pipes[dt["text_encoder"]], pipes[dt["vae"]].vae
    cond, uncond = te_pipe.encode_prompt(PROMPT, torch.device("cpu"), 1, True, NEGATIVE)
    context = torch.cat([uncond, cond])
    assert context.dtype == dt["text_encoder"]
    x = te_pipe.image_processor.preprocess(image).to(torch.float32)
    mean = vae.encode(x.to(dt["vae"])).latent_dist.mean
    init = vae.config.scaling_factor * mean  # the pipeline's order of operands
    # The posterior mean comes out with channels_last strides and diffusers' pipeline keeps them (its
    # UNet then runs on channels_last latents, which rounds differently). The loop here, like the
    # Rust engine, uses plain contiguous NCHW unless keep_strides (used only for the self check).
    assert init.is_contiguous(memory_format=torch.channels_last) and not init.is_contiguous()
    if not keep_strides:
        init = init.contiguous()
    init = init.to(dt["latents"])
    noise = torch.randn(init.shape, generator=torch.Generator("cpu").manual_seed(SEED), dtype=torch.float32)
    return context, init, noise.to(dt["latents"])


def denoise(pipes, case, context, init, noise):
    """Returns (final latents, timesteps run, latents after every step)."""
    dt = CASES[case]
    unet = pipes[dt["unet"]].unet
    sched = make_scheduler()
    sched.set_timesteps(STEPS)
    init_timestep = min(int(STEPS * STRENGTH), STEPS)
    t_start = max(STEPS - init_timestep, 0)
    timesteps = sched.timesteps[t_start * sched.order:]
    latents = sched.add_noise(init, noise, timesteps[:1])
    assert latents.dtype == dt["latents"]
    ctx = context.to(dt["unet"])
    per_step = []
    for t in timesteps:
        x_in = sched.scale_model_input(torch.cat([latents] * 2), t)
        out = unet(x_in.to(dt["unet"]), t, encoder_hidden_states=ctx, return_dict=False)[0]
        assert out.dtype == dt["unet"]
        uncond, cond = out.to(dt["latents"]).chunk(2)
        eps = uncond + CFG * (cond - uncond)
        latents = sched.step(eps, t, latents, eta=0.0, return_dict=False)[0]
        assert latents.dtype == dt["latents"]
        per_step.append(latents.clone())
    return latents, [int(t) for t in timesteps], per_step


def decode(pipes, case, latents):
    vae = pipes[CASES[case]["vae"]].vae
    out = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    assert out.dtype == CASES[case]["vae"]
    return out


def run_case(pipes, case, image, keep_strides=False):
    dt = CASES[case]
    models = {"text_encoder": pipes[dt["text_encoder"]].text_encoder, "unet": pipes[dt["unet"]].unet,
              "vae_encoder": pipes[dt["vae"]].vae.encoder, "vae_decoder": pipes[dt["vae"]].vae.decoder}
    with torch.no_grad(), Watch(models) as watch:
        context, init, noise = prepare(pipes, case, image, keep_strides)
        final, timesteps, per_step = denoise(pipes, case, context, init, noise)
        decoded = decode(pipes, case, final)
    return {"context": context, "init": init, "noise": noise, "final": final, "timesteps": timesteps,
            "per_step": per_step, "decoded": decoded, "watch": watch}


# ---------------------------------------------------------------------------------------------
def noise_draw_check():
    """Does torch.randn(dtype=half) equal torch.randn(float32).to(half) for the same generator?"""
    res = {}
    for dtype in (F16, BF16):
        bad = []
        for n in range(1, 257):
            a = torch.randn(n, generator=torch.Generator("cpu").manual_seed(SEED), dtype=torch.float32)
            b = torch.randn(n, generator=torch.Generator("cpu").manual_seed(SEED), dtype=dtype)
            if not torch.equal(a.to(dtype), b):
                bad.append(n)
        a = torch.randn(LATENT_SHAPE, generator=torch.Generator("cpu").manual_seed(SEED), dtype=torch.float32)
        b = torch.randn(LATENT_SHAPE, generator=torch.Generator("cpu").manual_seed(SEED), dtype=dtype)
        same = torch.equal(a.to(dtype), b)
        assert same, dtype  # the cases' noise below relies on it
        expected = [n for n in range(1, 257) if n > 16 and n % 16 != 0]
        res[DTYPE_NAME[dtype]] = {
            "latent_shape_identical": same,
            "sizes_1_to_256_identical_iff_n_le_16_or_n_multiple_of_16": bad == expected,
            "sizes_1_to_256_that_differ": len(bad),
        }
    return res


def vae_upcast_facts(pipe16):
    src = inspect.getsource(StableDiffusionImg2ImgPipeline)
    xl_src = inspect.getsource(StableDiffusionXLImg2ImgPipeline)
    return {
        "tiny_vae_config_force_upcast": bool(pipe16.vae.config.force_upcast),
        "sd_img2img_pipeline_source_mentions_force_upcast_or_upcast_vae":
            "force_upcast" in src or "upcast_vae" in src,
        "sdxl_img2img_pipeline_source_mentions_force_upcast": "force_upcast" in xl_src,
    }


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    pipes = {dtype: load_pipe(dtype) for dtype in (F32, F16, BF16)}
    # weights: float16 on disk; f32 = exact upcast, f16 = stored, bf16 = the f16 values rounded
    for dtype in (F16, BF16):
        for comp in ("unet", "vae", "text_encoder"):
            p32 = dict(getattr(pipes[F32], comp).named_parameters())
            for k, v in getattr(pipes[dtype], comp).named_parameters():
                assert torch.equal(v, p32[k].to(dtype)), (dtype, comp, k)

    if OUT_DIR.exists():
        shutil.rmtree(OUT_DIR)
    OUT_DIR.mkdir(parents=True)
    image = Image.open(INPUT_PNG).convert("RGB")
    assert image.size == (WIDTH, HEIGHT)
    w = tiny.Writer(OUT_DIR)
    checks = []
    noise_draw = noise_draw_check()
    checks.append("torch.randn(shape [1, 4, 8, 8], dtype=float16/bfloat16) with the seeded CPU generator is "
                  "bit-identical to the float32 draw cast to that dtype, so every case sees the same noise")
    vae_upcast = vae_upcast_facts(pipes[F16])

    results, dropped = {}, {}
    for case in CASES:
        try:
            results[case] = run_case(pipes, case, image)
        except (RuntimeError, NotImplementedError) as e:  # an op without a half kernel on the CPU
            if case == "f32":
                raise
            dropped[case] = f"{type(e).__name__}: {e}"
    ref = results["f32"]

    # 1. the f32 loop is diffusers' pipeline (make_tiled_parity.py's harness)
    tap, _, _, _ = msp.run_pipeline(pipes[F32], make_scheduler(), image, STEPS, STRENGTH, CFG)
    assert torch.equal(tap.add_noise[0], ref["init"]) and torch.equal(tap.draws[0][1], ref["noise"])
    assert [p for p, _ in tap.draws] == ["img2img_noise"]
    assert [int(s[1]) for s in tap.steps] == ref["timesteps"]
    d_lat = float((tap.steps[-1][3] - ref["final"]).abs().max())
    d_out = float((tap.decoded - ref["decoded"]).abs().max())
    assert d_lat < 1e-4 and d_out < 1e-3, (d_lat, d_out)
    strided = run_case(pipes, "f32", image, keep_strides=True)
    exact32 = torch.equal(strided["final"], tap.steps[-1][3]) and torch.equal(strided["decoded"], tap.decoded)
    assert exact32
    checks.append("f32 loop vs diffusers' StableDiffusionImg2ImgPipeline (float32, mean mode, make_sampler_parity.py's "
                  "harness): init latents, noise and timesteps equal; final latents "
                  + ("bit-exact" if d_lat == 0 else f"max |diff| {d_lat:.1e}") + ", decoded "
                  + ("bit-exact" if d_out == 0 else f"max |diff| {d_out:.1e}")
                  + " (the pipeline keeps the VAE mean's channels_last strides, the loop uses contiguous NCHW); "
                    "the same loop keeping the channels_last strides is bit-exact")

    # 2. the all_* loops are diffusers' pipeline loaded with torch_dtype = that dtype
    pipe_vs_loop = {}
    for case, dtype in (("all_f16", F16), ("all_bf16", BF16)):
        if case in dropped:
            continue
        pipe = pipes[dtype]
        tap, _, _, _ = msp.run_pipeline(pipe, make_scheduler(), image, STEPS, STRENGTH, CFG)
        assert pipe.vae.dtype == dtype and tap.decoded.dtype == dtype  # the pipeline never upcast its VAE
        assert tap.draws[0][1].dtype == dtype and torch.equal(tap.draws[0][1], results[case]["noise"])
        assert all(s[0].dtype == dtype and s[3].dtype == dtype for s in tap.steps)
        assert [int(s[1]) for s in tap.steps] == results[case]["timesteps"]
        strided = run_case(pipes, case, image, keep_strides=True)
        exact = torch.equal(strided["final"], tap.steps[-1][3]) and torch.equal(strided["decoded"], tap.decoded)
        assert exact, case
        dl = float((tap.steps[-1][3].float() - results[case]["final"].float()).abs().max())
        dd = float((tap.decoded.float() - results[case]["decoded"].float()).abs().max())
        _, u8_pipe = msp.to_u8(tap.decoded.float())
        _, u8_loop = msp.to_u8(results[case]["decoded"].float())
        _, u8_ref = msp.to_u8(ref["decoded"].float())
        dp = (tap.decoded.float() - ref["decoded"]).abs()
        du = np.abs(u8_pipe.astype(np.int32) - u8_ref.astype(np.int32))
        pipe_vs_loop[case] = {
            "what": "diffusers' pipeline (channels_last latents, as it runs) vs this script's contiguous loop",
            "latents_max_abs": dl, "decoded_max_abs": dd,
            "out_u8_max_abs": int(np.abs(u8_pipe.astype(np.int32) - u8_loop.astype(np.int32)).max()),
            "pipeline_diff_to_f32": {"latents_max_abs": float((tap.steps[-1][3].float() - ref["final"]).abs().max()),
                                     "decoded_max_abs": float(dp.max()), "decoded_mean_abs": float(dp.mean()),
                                     "out_u8_max_abs": int(du.max()), "out_u8_mean_abs": float(du.mean())},
        }
        checks.append(f"{case} loop kept on channels_last strides vs diffusers' StableDiffusionImg2ImgPipeline with "
                      f"torch_dtype={DTYPE_NAME[dtype]}: final latents and decode bit-exact (noise drawn by the "
                      f"pipeline in {DTYPE_NAME[dtype]}, every scheduler step and the decode in "
                      f"{DTYPE_NAME[dtype]}: the pipeline does not upcast the VAE); the contiguous loop written here "
                      f"differs from it by latents max |diff| {dl:.2e}, decoded max |diff| {dd:.2e}")

    # 3. determinism
    for case in results:
        again = run_case(pipes, case, image)
        assert torch.equal(again["final"], results[case]["final"]), case
        assert torch.equal(again["decoded"], results[case]["decoded"]), case
    checks.append("a second in-process run of every case gives identical final latents and decodes")

    def dabs(a, b):
        d = (a.float() - b.float()).abs()
        return float(d.max()), float(d.mean())

    common = {
        "noise": w.put("noise", tiny.np32(ref["noise"]), "NCHW [1, 4, 8, 8]; the first torch.randn draw of "
                       "torch.Generator('cpu').manual_seed(1234), float32 (cast to the case's latents dtype)"),
        "f32.out": w.put("f32.out", tiny.np32(ref["decoded"]),
                         "NCHW [1, 3, 64, 64]; f32's raw vae.decode(final / 0.18215), before clamping"),
    }
    entries = []
    _, ref_u8 = msp.to_u8(ref["decoded"].float())
    for case, dt in CASES.items():
        e = {"name": case, "dtypes": {k: DTYPE_NAME[v] for k, v in dt.items()}}
        if case in dropped:
            e["dropped"] = dropped[case]
            entries.append(e)
            continue
        r = results[case]
        _, u8 = msp.to_u8(r["decoded"].float())
        e["timesteps"] = r["timesteps"]
        e["files"] = {
            "init_latents": w.put(f"{case}.init_latents", tiny.np32(r["init"]),
                                  "NCHW [1, 4, 8, 8]; VAE posterior mean * 0.18215 in the case's dtypes, as float32"),
            "latents": w.put(f"{case}.latents", tiny.np32(r["final"]),
                             "NCHW [1, 4, 8, 8]; final latents after the 5 DDIM steps (before / 0.18215), as float32"),
            "out_u8": w.put(f"{case}.out_u8", u8,
                            "HWC [64, 64, 3] RGB u8 = trunc(255*clamp((x+1)/2, 0, 1)) in float32"),
        }
        watch = r["watch"]
        e["nonfinite"] = {
            "any": any(not ok for calls in watch.calls.values() for ok in calls)
                   or any(s["nonfinite_outputs"] for s in watch.stats.values()),
            "unet_output_per_step": [not ok for ok in watch.calls["unet"]],
            "vae_decode_output": not all(watch.calls["vae_decoder"]),
            "vae_encode_output": not all(watch.calls["vae_encoder"]),
            "text_encoder_output": not all(watch.calls["text_encoder"]),
            "module_outputs_nonfinite": {k: s["nonfinite_outputs"] for k, s in watch.stats.items()},
        }
        e["max_abs_activation"] = {k: {"value": s["max_abs"], "module": s["max_abs_module"]}
                                   for k, s in watch.stats.items()}
        if case != "f32":
            lm, la = dabs(r["final"], ref["final"])
            dm, da = dabs(r["decoded"], ref["decoded"])
            du = np.abs(u8.astype(np.int32) - ref_u8.astype(np.int32))
            cm, ca = dabs(r["context"], ref["context"])
            im, ia = dabs(r["init"], ref["init"])
            e["diff_to_f32"] = {
                "latents_max_abs": lm, "latents_mean_abs": la,
                "decoded_max_abs": dm, "decoded_mean_abs": da,
                "out_u8_max_abs": int(du.max()), "out_u8_mean_abs": float(du.mean()),
                "out_u8_levels_differing": int((du > 0).sum()),
                "context_max_abs": cm, "context_mean_abs": ca,
                "init_latents_max_abs": im, "init_latents_mean_abs": ia,
                "latents_max_abs_per_step": [dabs(a, b)[0] for a, b in zip(r["per_step"], ref["per_step"])],
            }
        entries.append(e)

    # 4. each network alone in the half dtype (the loops isolate the text encoder and the VAE encoder, not the
    # VAE decoder)
    components = {}
    for dtype in (F16, BF16):
        case = "all_" + {F16: "f16", BF16: "bf16"}[dtype]
        if case in dropped:
            continue
        d = next(e["diff_to_f32"] for e in entries if e["name"] == case)
        vae = pipes[dtype].vae
        with torch.no_grad():
            dec = vae.decode(ref["final"].to(dtype) / vae.config.scaling_factor, return_dict=False)[0]
        assert dec.dtype == dtype
        dm, da = dabs(dec, ref["decoded"])
        _, u8 = msp.to_u8(dec.float())
        du = np.abs(u8.astype(np.int32) - ref_u8.astype(np.int32))
        components[DTYPE_NAME[dtype]] = {
            "text_encoder": {"context_max_abs": d["context_max_abs"], "context_mean_abs": d["context_mean_abs"]},
            "vae_encode": {"init_latents_max_abs": d["init_latents_max_abs"],
                           "init_latents_mean_abs": d["init_latents_mean_abs"]},
            "vae_decode": {"decoded_max_abs": dm, "decoded_mean_abs": da,
                           "out_u8_max_abs": int(du.max()), "out_u8_mean_abs": float(du.mean())},
        }

    manifest = {
        "generator": "tools/parity/make_half_parity.py",
        "versions": tiny.versions(),
        "model": "tests/fixtures/tiny-sd (epsilon prediction; fp16 weights), CPU, 1 thread, "
                 "torch.use_deterministic_algorithms(True)",
        "file_format": "raw little-endian, C order (row-major), no header; f32 = IEEE float32, u8 = uint8; "
                       "shape and layout per file",
        "input": {"file": "../parity/in_coffee_64x64.png", "width": WIDTH, "height": HEIGHT,
                  "sha256": hashlib.sha256(INPUT_PNG.read_bytes()).hexdigest(),
                  "how": "read as RGB: x = float32(u8)/255*2 - 1, NCHW"},
        "latent_shape": LATENT_SHAPE,
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "seed": SEED,
        "generator_device": "cpu",
        "latent_mode": "mean: init latents = VAE posterior mean * 0.18215; the img2img noise is the first draw of "
                       "torch.Generator('cpu').manual_seed(seed), shape [1, 4, 8, 8]",
        "sampler": "ddim (DDIMScheduler from tiny-sd/scheduler/scheduler_config.json), eta 0",
        "steps": STEPS,
        "strength": STRENGTH,
        "guidance_scale": CFG,
        "rules": RULES,
        "vae_upcast": dict(vae_upcast, finding=(
            "tiny-sd/vae/config.json says force_upcast: true, but diffusers 0.42.1's StableDiffusionImg2ImgPipeline "
            "never reads it (only the SDXL pipelines and the upscaler do): with torch_dtype=float16 on the CPU it "
            "encodes and decodes with the float16 VAE (checked: vae.dtype and the decode stay float16, and the "
            "all_f16 loop with an f16 VAE is bit-exact to the pipeline). all_f16 / all_bf16 therefore run the VAE "
            "in half precision.")),
        "noise_draw": noise_draw,
        "dropped_cases": dropped,
        "unsupported_ops": ("none: every op of the five cases ran in float16 and bfloat16 on the CPU"
                            if not dropped else "see dropped_cases"),
        "common_files": common,
        "cases": entries,
        "components": components,
        "pipeline_vs_contiguous_loop": pipe_vs_loop,
        "self_checks": checks,
    }
    (OUT_DIR / "manifest.json").write_text(json.dumps(tiny.jsonable(manifest), indent=1, allow_nan=False) + "\n")

    for c in checks:
        print("check:", c)
    print("vae_upcast:", vae_upcast)
    if dropped:
        print("dropped:", dropped)
    for e in entries:
        d = e.get("diff_to_f32")
        if d:
            print(f"{e['name']:10s} latents max {d['latents_max_abs']:.3e} mean {d['latents_mean_abs']:.3e} | "
                  f"decoded max {d['decoded_max_abs']:.3e} mean {d['decoded_mean_abs']:.3e} | "
                  f"u8 max {d['out_u8_max_abs']} mean {d['out_u8_mean_abs']:.4f} | nonfinite {e['nonfinite']['any']}")
        print(f"{'':10s} max|act| " + ", ".join(f"{k} {v['value']:.1f} ({v['module']})"
                                                for k, v in e.get("max_abs_activation", {}).items()))
    for name, c in components.items():
        print(f"{name:10s} alone: " + "; ".join(f"{net} " + ", ".join(f"{k} {v:.3e}" for k, v in m.items())
                                                for net, m in c.items()))
    n_files = sum(1 for f in OUT_DIR.rglob("*") if f.is_file())
    print(f"size: {tiny.dir_size(OUT_DIR)} B in {n_files} files; sha256 of the folder (paths + bytes): "
          f"{msp.file_digest(OUT_DIR)}")


if __name__ == "__main__":
    main()
