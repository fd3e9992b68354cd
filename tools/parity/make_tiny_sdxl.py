#!/usr/bin/env python3
"""Build a tiny SDXL pipeline and record img2img parity references.

Run from the repository root:

    python3 tools/parity/make_tiny_sdxl.py

It (re)creates, deterministically and without network access:

* tests/fixtures/tiny-sdxl/         a diffusers-format SDXL model folder (fp16 safetensors):
                                    UNet with a level without attention, per-level transformer
                                    depth and heads, linear projections and the "text_time"
                                    added conditioning; CLIP-L-style `text_encoder`
                                    (quick_gelu) and OpenCLIP-G-style `text_encoder_2`
                                    (CLIPTextModelWithProjection, gelu); VAE with the SDXL
                                    latent scale 0.13025. The tokenizer folders hold only
                                    `special_tokens_map.json` + `tokenizer_config.json` (the app
                                    ships the CLIP vocabulary); `tokenizer_2` pads with "!" as
                                    SDXL's does.
* tests/fixtures/parity-sdxl/       manifest.json + raw little-endian tensors (.f32 / .u8)
                                    produced by diffusers' StableDiffusionXLImg2ImgPipeline on
                                    CPU in float32, in "mean" latent mode (the VAE posterior
                                    mean, as the app encodes), so the only random draws are the
                                    img2img noise and Euler a's per-step noise, which the app's
                                    TorchGenerator reproduces bit for bit.

Helpers (tokenizer files, writer, scheduler info, resize) come from make_tiny_sd.py.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from PIL import Image
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    UNet2DConditionModel,
)
from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl_img2img as xl_mod
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_sd as sd  # noqa: E402

ROOT = sd.ROOT
MODEL_DIR = ROOT / "tests/fixtures/tiny-sdxl"
REF_DIR = ROOT / "tests/fixtures/parity-sdxl"

PROMPT = sd.PROMPT
NEGATIVE = sd.NEGATIVE
SEED = sd.SEED
STEPS = 10
CFG = 7.5

# ---------------------------------------------------------------------------------------------
# Architecture (SDXL's structure, tiny widths)
# ---------------------------------------------------------------------------------------------
# SDXL's real text encoder configs carry the pre-#24773 `eos_token_id` 2, so transformers pools
# at argmax(input_ids) (the end-of-text token has the highest id); mirrored here.
TEXT_CONFIG = dict(  # CLIP ViT-L-style
    vocab_size=49408,
    hidden_size=8,
    intermediate_size=32,
    num_hidden_layers=3,  # > 2, so "penultimate" is not the first layer
    num_attention_heads=2,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=8,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)
TEXT_2_CONFIG = dict(  # OpenCLIP ViT-bigG-style, with a text projection of another width
    vocab_size=49408,
    hidden_size=8,
    intermediate_size=24,
    num_hidden_layers=3,
    num_attention_heads=2,
    max_position_embeddings=77,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    projection_dim=12,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)
ADD_TIME_DIM = 8  # SDXL: 256

UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(16, 32, 32),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    cross_attention_dim=TEXT_CONFIG["hidden_size"] + TEXT_2_CONFIG["hidden_size"],
    attention_head_dim=(1, 2, 4),  # heads per level, as SDXL's [5, 10, 20]
    transformer_layers_per_block=(1, 1, 2),  # SDXL: [1, 2, 10]; the mid block takes the last
    norm_num_groups=8,
    norm_eps=1e-5,
    flip_sin_to_cos=True,
    freq_shift=0,
    use_linear_projection=True,
    upcast_attention=False,
    addition_embed_type="text_time",
    addition_time_embed_dim=ADD_TIME_DIM,
    projection_class_embeddings_input_dim=6 * ADD_TIME_DIM + TEXT_2_CONFIG["projection_dim"],
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 8, 16, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    act_fn="silu",
    sample_size=64,
    scaling_factor=0.13025,  # SDXL
    force_upcast=True,
    mid_block_add_attention=True,
)

SCHEDULER_CONFIG = dict(  # SDXL base's EulerDiscreteScheduler config
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    trained_betas=None,
    steps_offset=1,
    prediction_type="epsilon",
    timestep_spacing="leading",
    interpolation_type="linear",
    use_karras_sigmas=False,
)

SEEDS = {"text_encoder": 201, "text_encoder_2": 202, "unet": 203, "vae": 204}
SCALE = {
    "unet": [("conv_out.", 3.0), ("attn2.to_out.0.", 2.0), ("add_embedding.", 2.0)],
    "vae": [("decoder.conv_out.", 2.0)],
}


def write_tokenizer_config(dst: Path, pad: str):
    """The two small files of a real SDXL tokenizer folder (vocabulary left out: the app ships
    it and the Python side builds its tokenizer from the same BPE list)."""
    dst.mkdir(parents=True, exist_ok=True)
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": pad,
        "unk_token": "<|endoftext|>",
    }
    (dst / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special}
    (dst / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def build_models():
    torch.manual_seed(SEEDS["text_encoder"])
    te = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)).eval()
    torch.manual_seed(SEEDS["text_encoder_2"])
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_2_CONFIG)).eval()
    torch.manual_seed(SEEDS["unet"])
    unet = UNet2DConditionModel(**UNET_CONFIG).eval()
    sd.scale_params(unet, SCALE["unet"])
    torch.manual_seed(SEEDS["vae"])
    vae = AutoencoderKL(**VAE_CONFIG).eval()
    sd.scale_params(vae, SCALE["vae"])
    return te, te2, unet, vae


def real_layout_text_encoder(path: Path):
    """transformers >= 5 may save without the `text_model.` prefix; the real SDXL repositories
    have it (and `text_projection.weight` at the root). Rewrite in that layout."""
    tensors = safetensors.torch.load_file(path)
    out = {}
    for k, v in tensors.items():
        if not k.startswith("text_model.") and not k.startswith("text_projection."):
            k = "text_model." + k
        out[k] = v.contiguous()
    safetensors.torch.save_file(out, path, metadata={"format": "pt"})


def tokenizers(tmp: Path):
    sd.write_tokenizer(tmp / "tokenizer")
    tok = CLIPTokenizer.from_pretrained(tmp / "tokenizer", local_files_only=True)
    tok2 = CLIPTokenizer.from_pretrained(tmp / "tokenizer", local_files_only=True, pad_token="!")
    assert tok.pad_token_id == 49407 and tok2.pad_token_id == tok2.convert_tokens_to_ids("!") == 0
    return tok, tok2


def save_model(tok, tok2):
    if MODEL_DIR.exists():
        shutil.rmtree(MODEL_DIR)
    te, te2, unet, vae = build_models()
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=vae.to(torch.float16),
        text_encoder=te.to(torch.float16),
        text_encoder_2=te2.to(torch.float16),
        tokenizer=tok,
        tokenizer_2=tok2,
        unet=unet.to(torch.float16),
        scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG),
        requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(MODEL_DIR, safe_serialization=True)
    for name, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        shutil.rmtree(MODEL_DIR / name)
        write_tokenizer_config(MODEL_DIR / name, pad)
    for name in ("text_encoder", "text_encoder_2"):
        real_layout_text_encoder(MODEL_DIR / name / "model.safetensors")
    # SDXL base's scheduler_config.json also carries the DDIM/PNDM keys of the pipeline it was
    # exported from; DDIM built from it (as the app builds every sampler) reads them.
    path = MODEL_DIR / "scheduler/scheduler_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True, sample_max_value=1.0)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def load_pipeline(tok, tok2):
    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        MODEL_DIR, torch_dtype=torch.float32, local_files_only=True, tokenizer=tok, tokenizer_2=tok2
    )
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.dtype == torch.float32 and pipe.text_encoder_2.dtype == torch.float32
    assert pipe.config.force_zeros_for_empty_prompt and not pipe.config.requires_aesthetics_score
    return pipe


def make_scheduler(sampler):
    cfg = EulerDiscreteScheduler.load_config(MODEL_DIR / "scheduler")
    if sampler == "ddim":
        assert cfg["clip_sample"] is False and cfg["set_alpha_to_one"] is False
        return DDIMScheduler.from_config(cfg)
    if sampler == "euler_a":
        return EulerAncestralDiscreteScheduler.from_config(cfg)
    if sampler == "dpmpp_2m_karras":
        return DPMSolverMultistepScheduler.from_config(
            cfg, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
        )
    raise ValueError(sampler)


class Tap:
    """Records what the app must match, and makes the pipeline encode to the posterior mean."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.unet = []  # (sample, timestep, encoder_hidden_states, text_embeds, time_ids, out)
        self.steps = []
        self.draws = []
        self.noised = None
        self._undo = []

    def __enter__(self):
        tap, pipe = self, self.pipe
        orig_randn = torch.randn

        def randn(*a, **k):
            out = orig_randn(*a, **k)
            if k.get("generator") is not None:
                tap.draws.append(out.detach().clone())
            return out

        torch.randn = randn
        self._undo.append(lambda: setattr(torch, "randn", orig_randn))

        orig_retrieve = xl_mod.retrieve_latents

        def retrieve_latents(encoder_output, generator=None, sample_mode="sample"):
            return orig_retrieve(encoder_output, generator=generator, sample_mode="argmax")

        xl_mod.retrieve_latents = retrieve_latents
        self._undo.append(lambda: setattr(xl_mod, "retrieve_latents", orig_retrieve))

        sched = pipe.scheduler
        orig_add_noise, orig_step = sched.add_noise, sched.step

        def add_noise(original, noise, timesteps):
            out = orig_add_noise(original, noise, timesteps)
            tap.noised = out.detach().clone()
            return out

        import functools

        @functools.wraps(orig_step)
        def step(model_output, timestep, sample, *a, **k):
            out = orig_step(model_output, timestep, sample, *a, **k)
            prev = out[0] if isinstance(out, tuple) else out.prev_sample
            tap.steps.append(prev.detach().clone())
            return out

        sched.add_noise, sched.step = add_noise, step
        self._undo.append(lambda: (delattr(sched, "add_noise"), delattr(sched, "step")))

        def unet_hook(module, args, kwargs, output):
            out = output[0] if isinstance(output, tuple) else output.sample
            added = kwargs["added_cond_kwargs"]
            ehs = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
            tap.unet.append(
                tuple(t.detach().clone() if torch.is_tensor(t) else t for t in
                      (args[0], args[1], ehs, added["text_embeds"], added["time_ids"], out))
            )

        h = pipe.unet.register_forward_hook(unet_hook, with_kwargs=True)
        self._undo.append(h.remove)
        return self

    def __exit__(self, *exc):
        for undo in reversed(self._undo):
            undo()
        return False


def run_case(pipe, w, case, image):
    pipe.scheduler = make_scheduler(case["sampler"])
    generator = torch.Generator("cpu").manual_seed(SEED)
    with torch.no_grad(), Tap(pipe) as tap:
        result = pipe(
            prompt=PROMPT,
            image=image,
            strength=case["strength"],
            num_inference_steps=STEPS,
            guidance_scale=case["guidance_scale"],
            negative_prompt=case["negative_prompt"],
            eta=0.0,
            generator=generator,
            output_type="np",
        )
    out = result.images[0].astype(np.float32)
    assert np.isfinite(out).all()
    u8 = (out.clip(0, 1) * np.float32(255)).astype(np.uint8)
    name = case["name"]
    np32 = sd.np32
    entry = dict(case)
    entry.update(width=image.size[0], height=image.size[1], seed=SEED, num_inference_steps=STEPS,
                 prompt=PROMPT, n_steps_run=len(tap.steps), scheduler=sd.scheduler_info(pipe.scheduler))
    files = {}
    files["noise_draws"] = w.put(f"{name}.noise_draws", np.stack([np32(t) for t in tap.draws]),
                                 "[draw, N, C, h, w]: the img2img noise, then Euler a's per-step draws")
    traj = [np32(tap.noised)] + [np32(s) for s in tap.steps]
    files["latents_trajectory"] = w.put(f"{name}.latents_trajectory", np.stack(traj),
                                        "[k, N, C, h, w]; k=0 noised initial latents, k=i+1 after step i")
    files["out"] = w.put(f"{name}.out", out, "HWC, float in [0,1]")
    files["out_u8"] = w.put(f"{name}.out_u8", u8, "HWC RGB u8 = trunc(255*clip(out,0,1))")
    sample, t, ehs, text_embeds, time_ids, unet_out = tap.unet[0]
    files["unet_input"] = w.put(f"{name}.unet_input", np32(sample), "first UNet call: sample (after scale_model_input)")
    files["encoder_hidden_states"] = w.put(f"{name}.encoder_hidden_states", np32(ehs),
                                           "[B, 77, 16]: penultimate states of text_encoder | text_encoder_2; "
                                           "B=2: row 0 uncond, row 1 cond")
    files["text_embeds"] = w.put(f"{name}.text_embeds", np32(text_embeds),
                                 "[B, 12]: pooled output of text_encoder_2 (text_projection); rows as above")
    files["time_ids"] = w.put(f"{name}.time_ids", np32(time_ids), "[B, 6]: (orig h, w, crop top, left, target h, w)")
    files["unet_output"] = w.put(f"{name}.unet_output", np32(unet_out), "first UNet call: output")
    entry["first_timestep"] = float(t)
    entry["files"] = files
    return entry


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    with tempfile.TemporaryDirectory() as tmp:
        tok, tok2 = tokenizers(Path(tmp))
        save_model(tok, tok2)
        pipe = load_pipeline(tok, tok2)

        if REF_DIR.exists():
            shutil.rmtree(REF_DIR)
        REF_DIR.mkdir(parents=True)
        w = sd.Writer(REF_DIR)
        photo = Image.open(sd.PHOTO).convert("RGB")
        inputs = {}
        for size in ((64, 64), (64, 48)):
            fname = f"in_coffee_{size[0]}x{size[1]}.png"
            sd.crop_and_resize(photo, *size).save(REF_DIR / fname)
            inputs[size] = (fname, Image.open(REF_DIR / fname).convert("RGB"))

        cases = []

        def add(sampler, strength, size=(64, 64), guidance=CFG, negative=NEGATIVE):
            tag = f"{sampler}_s{round(strength * 100):03d}_{size[0]}x{size[1]}"
            if guidance != CFG:
                tag += f"_cfg{guidance:g}".replace(".", "p")
            if negative is None:
                tag += "_noneg"
            cases.append((dict(name=tag, sampler=sampler, strength=strength, guidance_scale=guidance,
                               negative_prompt=negative, input=inputs[size][0]), size))

        for s in ("ddim", "euler_a", "dpmpp_2m_karras"):
            add(s, 0.5)
            add(s, 1.0)
        add("ddim", 0.5, size=(64, 48))
        add("dpmpp_2m_karras", 0.5, size=(64, 48))
        add("ddim", 0.5, negative=None)  # force_zeros_for_empty_prompt: zero uncond
        add("euler_a", 0.5, guidance=1.0)  # no guidance: one UNet row

        entries = []
        for case, size in cases:
            e = run_case(pipe, w, case, inputs[size][1])
            entries.append(e)
            st = e["files"]["out"]["stats"]
            print(f"{e['name']:32s} steps={e['n_steps_run']:2d} mean={st['mean']:.4f} std={st['std']:.4f}")

        outs = {e["name"]: np.fromfile(REF_DIR / e["files"]["out"]["file"], dtype="<f4") for e in entries}
        ref = outs["ddim_s050_64x64"]
        differences = {n: round(float(np.abs(o - ref).mean()), 5) for n, o in outs.items()
                       if o.shape == ref.shape and n != "ddim_s050_64x64"}
        manifest = {
            "generator": "tools/parity/make_tiny_sdxl.py",
            "versions": sd.versions(),
            "model": "tests/fixtures/tiny-sdxl",
            "reference_dtype": "float32 (weights re-loaded from disk and upcast), CPU, 1 thread",
            "latent_mode": "mean (VAE posterior mean; the img2img noise is the first generator draw)",
            "file_format": "raw little-endian, C order, no header; f32 = float32, u8 = uint8",
            "prompt": PROMPT,
            "cases": entries,
            "mean_abs_diff_vs_ddim_s050_64x64": differences,
        }
        (REF_DIR / "manifest.json").write_text(json.dumps(sd.jsonable(manifest), indent=1, allow_nan=False) + "\n")
        print("differences:", differences)
        print(f"sizes: tiny-sdxl {sd.dir_size(MODEL_DIR)} B, parity-sdxl {sd.dir_size(REF_DIR)} B")


if __name__ == "__main__":
    main()
