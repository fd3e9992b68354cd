#!/usr/bin/env python3
"""Build a tiny Stable Diffusion 1.x pipeline and record img2img parity references.

Run from the repository root:

    python3 tools/parity/make_tiny_sd.py

It (re)creates, deterministically and without network access:

* tests/fixtures/tiny-sd/    a diffusers-format SD 1.x model folder (fp16 safetensors,
                             CLIP tokenizer as vocab.json + merges.txt, DDIM scheduler)
* tests/fixtures/tiny-sd-v/  an overlay of that folder with a v-prediction scheduler config
                             (model_index.json + scheduler/ only; weights stay in tiny-sd/)
* tests/fixtures/parity/     manifest.json + raw little-endian tensors (.f32 / .u8 / .i64)
                             produced by diffusers' StableDiffusionImg2ImgPipeline on CPU

See tools/parity/README.md for what every file means.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import functools
import gzip
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import PIL
import safetensors
import safetensors.torch
import tokenizers
import torch
import transformers
import diffusers
from PIL import Image
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    UNet2DConditionModel,
)
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as img2img_mod
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "tests/fixtures/tiny-sd"
MODEL_V_DIR = ROOT / "tests/fixtures/tiny-sd-v"
REF_DIR = ROOT / "tests/fixtures/parity"
PHOTO = ROOT / "tests/data/coffee.png"
BPE_GZ = Path("/work/shared/testdata/clip-bpe/bpe_simple_vocab_16e6.txt.gz")
if not BPE_GZ.exists():  # allow a copy next to the photo
    BPE_GZ = ROOT / "tests/data/bpe_simple_vocab_16e6.txt.gz"

PROMPT = "a cup of coffee on a wooden table"
NEGATIVE = "blurry, lowres"
SEED = 1234
STEPS = 10
CFG = 7.5

# ---------------------------------------------------------------------------------------------
# Architecture. Every value that differs from the library default is spelled out.
# ---------------------------------------------------------------------------------------------
TEXT_CONFIG = dict(
    vocab_size=49408,  # the real CLIP vocabulary, so the real tokenizer works
    hidden_size=8,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,  # head dim 4
    max_position_embeddings=77,
    hidden_act="quick_gelu",  # as OpenAI CLIP ViT-L/14 (SD 1.x)
    layer_norm_eps=1e-5,
    projection_dim=8,  # unused by CLIPTextModel
)

UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    cross_attention_dim=TEXT_CONFIG["hidden_size"],
    # diffusers (and SD 1.x configs) use `attention_head_dim` as the NUMBER of heads:
    # 2 heads -> head dim 16 at 32 channels.
    attention_head_dim=2,
    norm_num_groups=8,  # not 32: candle 0.11's DownBlock2D/UpBlock2D ignored this; our UNet must not
    norm_eps=1e-5,
    act_fn="silu",
    flip_sin_to_cos=True,
    freq_shift=0,
    downsample_padding=1,
    use_linear_projection=False,  # SD 1.x: proj_in/proj_out are 1x1 convs
    upcast_attention=False,
    transformer_layers_per_block=1,
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 16, 16, 32),  # 4 blocks -> 3 downsamplings -> factor 8
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    act_fn="silu",
    sample_size=64,
    scaling_factor=0.18215,
    force_upcast=True,
    mid_block_add_attention=True,
    use_quant_conv=True,
    use_post_quant_conv=True,
)

SCHEDULER_CONFIG = dict(  # SD 1.5-style DDIM
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    trained_betas=None,
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
    timestep_spacing="leading",
)

SEEDS = {"text_encoder": 101, "unet": 102, "vae": 103}

# Default initialisation gives an epsilon prediction of std ~0.35 with a weak text influence
# (|cond - uncond| ~0.04) and a VAE whose decoded images stay within about +-0.4. These
# multipliers (applied in float32 before the cast to float16) make the model's effect visible:
# eps std ~1, |cond - uncond| ~0.1-0.2 (so CFG 7.5 matters), and decoded images that span, and
# partly clip at, both ends of [-1, 1].
SCALE = {
    "unet": [("conv_out.", 3.0), ("attn2.to_out.0.", 2.0)],
    "vae": [("decoder.conv_out.", 2.0)],
}

assert 2 ** (len(VAE_CONFIG["block_out_channels"]) - 1) == 8


# ---------------------------------------------------------------------------------------------
# CLIP tokenizer files from the OpenAI BPE merge list
# ---------------------------------------------------------------------------------------------
def byte_symbols():
    """The 256 byte symbols in CLIP's vocabulary order: printable bytes as themselves, then the
    remaining bytes, in byte order, as U+0100, U+0101, ..."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    symbols = {b: chr(b) for b in printable}
    rest = [b for b in range(256) if b not in symbols]
    for i, b in enumerate(rest):
        symbols[b] = chr(0x100 + i)
    order = [symbols[b] for b in printable] + [symbols[b] for b in rest]
    return symbols, order


def clip_vocab_and_merges():
    lines = gzip.open(BPE_GZ, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : 1 + 49408 - 512 - 2]  # 48,894 merges; line 0 is a header
    assert len(merges) == 48894 and all(len(m.split(" ")) == 2 for m in merges)
    _, order = byte_symbols()
    tokens = order + [s + "</w>" for s in order] + [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == 49408 == len(set(tokens))
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer(dst: Path):
    """vocab.json + merges.txt + special_tokens_map.json + tokenizer_config.json, the file set of
    the tokenizer/ folder of the real SD 1.x/2.x repositories (no tokenizer.json)."""
    vocab, merges = clip_vocab_and_merges()
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False, separators=(",", ":")), encoding="utf-8"
    )
    (dst / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",  # SD 1.x; SD 2.x tokenizers pad with "!"
    }
    (dst / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "add_prefix_space": False,
        "errors": "replace",
        **special,
    }
    (dst / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return vocab, merges


def reference_bpe_ids(text, vocab, merges):
    """An independent, minimal CLIP BPE for lower-case ASCII prompts, used only to cross-check the
    transformers tokenizer built from the files above."""
    import re

    rank = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
    symbols, _ = byte_symbols()
    text = " ".join(text.strip().split()).lower()
    assert text.isascii()
    ids = [vocab["<|startoftext|>"]]
    for word in re.findall(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+", text):
        parts = [symbols[b] for b in word.encode("utf-8")]
        parts[-1] += "</w>"
        while len(parts) > 1:
            pairs = [(rank.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            best, i = min(pairs)
            if best == 1 << 30:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        ids += [vocab[p] for p in parts]
    ids.append(vocab["<|endoftext|>"])
    return ids


# ---------------------------------------------------------------------------------------------
# Model construction and saving
# ---------------------------------------------------------------------------------------------
def scale_params(module, rules):
    with torch.no_grad():
        for name, p in module.named_parameters():
            for pattern, factor in rules:
                if pattern in name:
                    p.mul_(factor)


def build_models():
    torch.manual_seed(SEEDS["text_encoder"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)).eval()
    torch.manual_seed(SEEDS["unet"])
    unet = UNet2DConditionModel(**UNET_CONFIG).eval()
    scale_params(unet, SCALE["unet"])
    torch.manual_seed(SEEDS["vae"])
    vae = AutoencoderKL(**VAE_CONFIG).eval()
    scale_params(vae, SCALE["vae"])
    return text_encoder, unet, vae


def prefix_text_encoder_keys(path: Path):
    """transformers >= 5 saves CLIPTextModel without the `text_model.` key prefix; the real SD
    repositories (saved by transformers 4.x) have it. Rewrite the file in the real-world layout
    (transformers 5 loads both)."""
    tensors = safetensors.torch.load_file(path)
    if all(k.startswith("text_model.") for k in tensors):
        return
    tensors = {("text_model." + k): v.contiguous() for k, v in tensors.items()}
    safetensors.torch.save_file(tensors, path, metadata={"format": "pt"})


def save_model():
    for d in (MODEL_DIR, MODEL_V_DIR):
        if d.exists():
            shutil.rmtree(d)
    text_encoder, unet, vae = build_models()
    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = write_tokenizer(Path(tmp) / "tokenizer")
        tokenizer = CLIPTokenizer.from_pretrained(Path(tmp) / "tokenizer", local_files_only=True)
        pipe = StableDiffusionImg2ImgPipeline(
            vae=vae.to(torch.float16),
            text_encoder=text_encoder.to(torch.float16),
            tokenizer=tokenizer,
            unet=unet.to(torch.float16),
            scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(MODEL_DIR, safe_serialization=True)
        # transformers 5 writes tokenizer.json + tokenizer_config.json; mirror the real repos.
        shutil.rmtree(MODEL_DIR / "tokenizer")
        shutil.copytree(Path(tmp) / "tokenizer", MODEL_DIR / "tokenizer")
    prefix_text_encoder_keys(MODEL_DIR / "text_encoder/model.safetensors")

    # v-prediction overlay: same weights, SD 2.x-style scheduler config (SD 2.1's config has no
    # timestep_spacing key, i.e. "leading").
    (MODEL_V_DIR / "scheduler").mkdir(parents=True)
    shutil.copy(MODEL_DIR / "model_index.json", MODEL_V_DIR / "model_index.json")
    DDIMScheduler(**{**SCHEDULER_CONFIG, "prediction_type": "v_prediction"}).save_config(
        MODEL_V_DIR / "scheduler"
    )
    return vocab, merges


def load_pipelines():
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
        MODEL_DIR, torch_dtype=torch.float32, local_files_only=True
    )
    pipe_v = StableDiffusionImg2ImgPipeline.from_pretrained(
        MODEL_V_DIR,
        torch_dtype=torch.float32,
        local_files_only=True,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=pipe.unet,
        safety_checker=None,
        feature_extractor=None,
    )
    for p in (pipe, pipe_v):
        p.set_progress_bar_config(disable=True)
        assert p.unet.dtype == torch.float32 and p.vae.dtype == torch.float32
        assert p.text_encoder.dtype == torch.float32
    assert pipe_v.scheduler.config.prediction_type == "v_prediction"
    return pipe, pipe_v


# ---------------------------------------------------------------------------------------------
# Inputs: A1111 "crop and resize" (resize mode 1) with Pillow LANCZOS
# ---------------------------------------------------------------------------------------------
def crop_and_resize(im, width, height):
    w0, h0 = im.size
    ratio, src_ratio = width / height, w0 / h0
    src_w = width if ratio > src_ratio else w0 * height // h0
    src_h = height if ratio <= src_ratio else h0 * width // w0
    resized = im.resize((src_w, src_h), Image.LANCZOS)
    out = Image.new("RGB", (width, height))
    out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    return out


# ---------------------------------------------------------------------------------------------
# Recording what the pipeline does
# ---------------------------------------------------------------------------------------------
class Tap:
    """Patches the pipeline (for one call) to record every tensor the Rust engine must match, and
    optionally makes it use the VAE posterior mean instead of a sample."""

    def __init__(self, pipe, latent_mode):
        assert latent_mode in ("sample", "mean")
        self.pipe, self.latent_mode = pipe, latent_mode
        self.phase = "before_vae_encode"
        self.draws = []  # (phase, tensor) of every torch.randn call that used a generator
        self.text = []  # (input_ids, last_hidden_state) per text-encoder call
        self.vae_in = None
        self.posterior = None
        self.init_latents_unscaled = None
        self.add_noise = None
        self.unet = []  # (sample_in, timestep, output) per UNet call
        self.steps = []  # (model_output, timestep, sample, prev_sample, kwarg names)
        self.decoded = None
        self._undo = []

    def __enter__(self):
        pipe, tap = self.pipe, self
        orig_randn = torch.randn

        @functools.wraps(orig_randn)
        def randn(*args, **kwargs):
            out = orig_randn(*args, **kwargs)
            if kwargs.get("generator") is not None:
                tap.draws.append((tap.phase, out.detach().clone()))
            return out

        torch.randn = randn
        self._undo.append(lambda: setattr(torch, "randn", orig_randn))

        orig_retrieve = img2img_mod.retrieve_latents

        def retrieve_latents(encoder_output, generator=None, sample_mode="sample"):
            dist = encoder_output.latent_dist
            tap.posterior = (dist.mean.detach().clone(), dist.std.detach().clone())
            tap.phase = "vae_posterior_sample"
            mode = "argmax" if tap.latent_mode == "mean" else sample_mode
            out = orig_retrieve(encoder_output, generator=generator, sample_mode=mode)
            tap.init_latents_unscaled = out.detach().clone()
            tap.phase = "img2img_noise"
            return out

        img2img_mod.retrieve_latents = retrieve_latents
        self._undo.append(lambda: setattr(img2img_mod, "retrieve_latents", orig_retrieve))

        vae, sched = pipe.vae, pipe.scheduler
        orig_encode, orig_decode = vae.encode, vae.decode

        def encode(x, *a, **k):
            tap.vae_in = x.detach().clone()
            return orig_encode(x, *a, **k)

        def decode(z, *a, **k):
            out = orig_decode(z, *a, **k)
            tap.decoded = (out[0] if isinstance(out, tuple) else out.sample).detach().clone()
            return out

        vae.encode, vae.decode = encode, decode
        self._undo.append(lambda: (delattr(vae, "encode"), delattr(vae, "decode")))

        orig_add_noise, orig_step = sched.add_noise, sched.step

        def add_noise(original, noise, timesteps):
            out = orig_add_noise(original, noise, timesteps)
            tap.add_noise = tuple(t.detach().clone() for t in (original, noise, timesteps, out))
            return out

        @functools.wraps(orig_step)  # keeps the signature the pipeline inspects for eta/generator
        def step(model_output, timestep, sample, *a, **k):
            tap.phase = f"scheduler_step_{len(tap.steps)}"
            out = orig_step(model_output, timestep, sample, *a, **k)
            prev = out[0] if isinstance(out, tuple) else out.prev_sample
            tap.steps.append(
                (model_output.detach().clone(), timestep, sample.detach().clone(),
                 prev.detach().clone(), sorted(k))
            )
            tap.phase = "after_step"
            return out

        sched.add_noise, sched.step = add_noise, step
        self._undo.append(lambda: (delattr(sched, "add_noise"), delattr(sched, "step")))

        def unet_hook(module, args, kwargs, output):
            out = output[0] if isinstance(output, tuple) else output.sample
            tap.unet.append((args[0].detach().clone(), args[1], out.detach().clone()))

        def text_hook(module, args, kwargs, output):
            ids = args[0] if args else kwargs["input_ids"]
            tap.text.append((ids.detach().clone(), output[0].detach().clone()))

        h1 = pipe.unet.register_forward_hook(unet_hook, with_kwargs=True)
        h2 = pipe.text_encoder.register_forward_hook(text_hook, with_kwargs=True)
        self._undo += [h1.remove, h2.remove]
        return self

    def __exit__(self, *exc):
        for undo in reversed(self._undo):
            undo()
        return False


# ---------------------------------------------------------------------------------------------
# Writing references
# ---------------------------------------------------------------------------------------------
class Writer:
    def __init__(self, root: Path):
        self.root = root
        self.total = 0

    def put(self, name, array, layout):
        a = np.ascontiguousarray(array)
        if a.dtype == np.float32:
            ext, dt = "f32", "<f4"
        elif a.dtype == np.uint8:
            ext, dt = "u8", "u1"
        elif a.dtype == np.int64:
            ext, dt = "i64", "<i8"
        else:
            raise TypeError(a.dtype)
        fname = f"{name}.{ext}"
        data = a.astype(dt).tobytes()
        (self.root / fname).write_bytes(data)
        self.total += len(data)
        entry = {"file": fname, "dtype": ext, "shape": list(a.shape), "layout": layout}
        if a.dtype != np.int64:
            f = a.astype(np.float64)
            entry["stats"] = {k: round(float(v), 6) for k, v in
                              (("min", f.min()), ("max", f.max()), ("mean", f.mean()), ("std", f.std()))}
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        return entry


def np32(t):
    return t.detach().cpu().to(torch.float32).numpy()


def jsonable(v):
    """Strict JSON (no NaN/Infinity): non-finite floats become the strings "inf"/"-inf"/"nan"."""
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, float) and not np.isfinite(v):
        return str(v)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def scheduler_info(sched):
    cfg = jsonable({k: v for k, v in dict(sched.config).items() if k != "_use_default_values"})
    info = {"class": type(sched).__name__, "config": cfg, "order": sched.order,
            "all_timesteps": [float(t) if sched.timesteps.is_floating_point() else int(t) for t in sched.timesteps]}
    if getattr(sched, "sigmas", None) is not None and sched.sigmas is not None and len(sched.sigmas):
        info["all_sigmas"] = [float(s) for s in sched.sigmas]
    if getattr(sched, "begin_index", None) is not None:
        info["begin_index"] = int(sched.begin_index)
    return info


def make_scheduler(pipe, sampler, prediction_type):
    """The sampler's scheduler, configured from the scheduler_config.json on disk (tiny-sd for
    epsilon, the tiny-sd-v overlay for v_prediction), as an app would."""
    src = MODEL_V_DIR if prediction_type == "v_prediction" else MODEL_DIR
    cfg = DDIMScheduler.load_config(src / "scheduler")
    assert cfg["prediction_type"] == prediction_type
    if sampler == "ddim":
        return DDIMScheduler.from_config(cfg)
    if sampler == "euler_a":
        return EulerAncestralDiscreteScheduler.from_config(cfg)
    if sampler == "dpmpp_2m_karras":
        return DPMSolverMultistepScheduler.from_config(
            cfg, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
        )
    raise ValueError(sampler)


def run_case(pipe, w, case, image, intermediates):
    """Run one img2img call and write its references. Returns the manifest entry."""
    pipe.scheduler = make_scheduler(pipe, case["sampler"], case["prediction_type"])
    generator = torch.Generator("cpu").manual_seed(SEED)
    with torch.no_grad(), Tap(pipe, case["latent_mode"]) as tap:
        result = pipe(
            prompt=PROMPT,
            image=image,
            strength=case["strength"],
            num_inference_steps=STEPS,
            guidance_scale=case["guidance_scale"],
            negative_prompt=NEGATIVE,
            eta=0.0,
            generator=generator,
            output_type="np",
        )
    out = result.images[0].astype(np.float32)  # (H, W, 3) in [0, 1]
    assert np.isfinite(out).all()
    u8 = (out.clip(0, 1) * np.float32(255)).astype(np.uint8)  # trunc(255 * clip(x, 0, 1))

    name = case["name"]
    cfg = case["guidance_scale"] > 1.0
    steps = tap.steps
    timesteps = [s[1] for s in steps]
    ts_json = [float(t) if torch.is_tensor(t) and t.is_floating_point() else int(t) for t in timesteps]
    entry = dict(case)
    entry.update(
        width=image.size[0], height=image.size[1], seed=SEED, num_inference_steps=STEPS, eta=0.0,
        prompt=PROMPT, negative_prompt=NEGATIVE if cfg else None,
        timesteps=ts_json, n_steps_run=len(steps),
        scheduler=scheduler_info(pipe.scheduler),
        scheduler_step_kwargs=steps[0][4],
    )

    # every draw from the generator, in order, with what it was used for
    labels = [p for p, _ in tap.draws]
    assert "before_vae_encode" not in labels and "after_step" not in labels, labels
    files = {}
    files["noise_draws"] = w.put(f"{name}.noise_draws",
                                 np.stack([np32(t) for _, t in tap.draws]), "[draw, N, C, h, w]")
    entry["noise_draw_labels"] = labels

    orig, noise, t0, noised = tap.add_noise
    assert torch.equal(noise, tap.draws[labels.index("img2img_noise")][1])
    traj = [np32(noised)] + [np32(s[3]) for s in steps]
    files["latents_trajectory"] = w.put(f"{name}.latents_trajectory", np.stack(traj),
                                        "[k, N, C, h, w]; k=0 noised initial latents, k=i+1 after step i")
    files["out"] = w.put(f"{name}.out", out, "HWC, float in [0,1] (diffusers output_type='np')")
    files["out_u8"] = w.put(f"{name}.out_u8", u8, "HWC RGB u8 = trunc(255*clip(out,0,1))")

    if intermediates:
        ids = [t[0] for t in tap.text]
        hid = [t[1] for t in tap.text]
        # encode_prompt encodes the prompt first, then the negative prompt
        files["token_ids"] = w.put(f"{name}.token_ids", torch.cat(ids).numpy().astype(np.int64),
                                   "[2, 77]; row 0 prompt (cond), row 1 negative prompt (uncond)")
        files["text_hidden"] = w.put(f"{name}.text_hidden", np.concatenate([np32(h) for h in hid]),
                                     "[2, 77, hidden]; row 0 cond, row 1 uncond; last_hidden_state (after final LayerNorm)")
        files["vae_input"] = w.put(f"{name}.vae_input", np32(tap.vae_in), "NCHW, u8/255*2-1")
        files["posterior_mean"] = w.put(f"{name}.posterior_mean", np32(tap.posterior[0]), "NCHW, unscaled")
        files["posterior_std"] = w.put(f"{name}.posterior_std", np32(tap.posterior[1]),
                                       "NCHW, exp(0.5*clamp(logvar,-30,20))")
        files["init_latents_unscaled"] = w.put(f"{name}.init_latents_unscaled", np32(tap.init_latents_unscaled),
                                               "NCHW; = posterior_mean (mean mode) or mean+std*eps (sample mode)")
        files["init_latents"] = w.put(f"{name}.init_latents", np32(orig), "NCHW; init_latents_unscaled*0.18215")
        files["noise"] = w.put(f"{name}.noise", np32(noise), "NCHW; the img2img noise")
        files["noised_latents"] = w.put(f"{name}.noised_latents", np32(noised),
                                        "NCHW; scheduler.add_noise(init_latents, noise, timesteps[0])")
        unet_in = np.stack([np32(u[0]) for u in tap.unet])
        unet_out = np.stack([np32(u[2]) for u in tap.unet])
        lay = "[step, 2, C, h, w]; batch row 0 uncond, row 1 cond" if cfg else "[step, 1, C, h, w]"
        files["unet_input"] = w.put(f"{name}.unet_input", unet_in, lay + "; after scale_model_input")
        files["unet_output"] = w.put(f"{name}.unet_output", unet_out, lay)
        files["guided_noise_pred"] = w.put(f"{name}.guided_noise_pred", np.stack([np32(s[0]) for s in steps]),
                                           "[step, 1, C, h, w]; uncond + g*(cond-uncond), passed to scheduler.step")
        files["decoded"] = w.put(f"{name}.decoded", np32(tap.decoded),
                                 "NCHW; raw vae.decode(final_latents/0.18215), before clamp")
        entry["token_ids_cond"] = ids[0][0].tolist()
        entry["token_ids_uncond"] = ids[1][0].tolist() if len(ids) > 1 else None
        # the final latents are the last row of latents_trajectory
    entry["files"] = files
    return entry, out, u8


def load(entry, key):
    f = entry["files"][key]
    dt = {"f32": "<f4", "u8": "u1", "i64": "<i8"}[f["dtype"]]
    return np.fromfile(REF_DIR / f["file"], dtype=dt).reshape(f["shape"])


def self_checks(pipe, by_name, image64):
    """Checks of what the README claims about the references; raise on failure."""
    checks = []
    sf = np.float32(pipe.vae.config.scaling_factor)
    acp = pipe.scheduler.alphas_cumprod.numpy()  # DDIM epsilon pipeline's schedule
    for mode in ("mean", "sample"):
        e = by_name[f"{mode}_ddim_s050_64x64"]
        mean, std = load(e, "posterior_mean"), load(e, "posterior_std")
        unscaled, draws = load(e, "init_latents_unscaled"), load(e, "noise_draws")
        if mode == "mean":
            assert np.array_equal(unscaled, mean)
            assert e["noise_draw_labels"] == ["img2img_noise"]
        else:
            assert e["noise_draw_labels"] == ["vae_posterior_sample", "img2img_noise"]
            assert np.allclose(unscaled, mean + std * draws[0], rtol=0, atol=1e-6)
        assert np.allclose(load(e, "init_latents"), unscaled * sf, rtol=0, atol=1e-7)
        assert np.array_equal(load(e, "noise"), draws[-1])
        t = e["timesteps"][0]
        a = np.float32(acp[t])
        want = np.sqrt(a) * load(e, "init_latents") + np.sqrt(np.float32(1) - a) * load(e, "noise")
        assert np.allclose(load(e, "noised_latents"), want, rtol=0, atol=1e-5)
        uo, g = load(e, "unet_output"), load(e, "guided_noise_pred")
        assert np.allclose(g[:, 0], uo[:, 0] + np.float32(CFG) * (uo[:, 1] - uo[:, 0]), rtol=0, atol=1e-5)
        traj = load(e, "latents_trajectory")
        assert np.array_equal(load(e, "unet_input")[:, 0], traj[:-1, 0])  # DDIM: no input scaling
        out = load(e, "out")
        dec = load(e, "decoded")[0].transpose(1, 2, 0)
        assert np.array_equal(out, np.clip(dec * np.float32(0.5) + np.float32(0.5), 0, 1))
    checks.append("posterior / scaling / add_noise / CFG / decode relations hold")

    # "mean" mode equals handing the pipeline pre-encoded latents (a 4-channel `image` is used
    # as init latents as is), i.e. the patch does nothing else. torch's CPU VAE encoder returns
    # its latents in channels_last memory format, and that format reaches the UNet's convolutions
    # and changes their rounding: bit-exact only with the same memory format.
    e = by_name["mean_ddim_s050_64x64"]
    diffs = {}
    for fmt in (torch.channels_last, torch.contiguous_format):
        pipe.scheduler = make_scheduler(pipe, "ddim", "epsilon")
        lat = torch.from_numpy(load(e, "init_latents").copy()).contiguous(memory_format=fmt)
        with torch.no_grad():
            out = pipe(prompt=PROMPT, image=lat, strength=0.5, num_inference_steps=STEPS,
                       guidance_scale=CFG, negative_prompt=NEGATIVE, eta=0.0,
                       generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images[0]
        diffs[str(fmt)] = float(np.abs(out - load(e, "out")).max())
    assert diffs["torch.channels_last"] == 0.0, diffs
    assert diffs["torch.contiguous_format"] < 1e-4, diffs
    checks.append("mean mode == pipeline(image=scaled posterior mean latents): bit-exact with "
                  "channels_last latents (as the VAE returns them); with NCHW-contiguous latents the "
                  f"output differs by up to {diffs['torch.contiguous_format']:.2e} (float rounding only)")

    # the unpatched pipeline reproduces the "sample" set
    e = by_name["sample_euler_a_s050_64x64"]
    pipe.scheduler = make_scheduler(pipe, "euler_a", "epsilon")
    with torch.no_grad():
        out = pipe(prompt=PROMPT, image=image64, strength=0.5, num_inference_steps=STEPS,
                   guidance_scale=CFG, negative_prompt=NEGATIVE,
                   generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images[0]
    assert np.array_equal(out, load(e, "out"))
    checks.append("sample set == plain, unpatched diffusers call, bit-exact")
    return checks


def versions():
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "Pillow": PIL.__version__,
    }


def dir_size(d: Path):
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    vocab, merges = save_model()
    pipe, pipe_v = load_pipelines()

    # tokenizer cross-check
    for text in (PROMPT, NEGATIVE):
        got = pipe.tokenizer(text).input_ids
        assert got == reference_bpe_ids(text, vocab, merges), (text, got)
    assert pipe.tokenizer.model_max_length == 77 and pipe.tokenizer.pad_token_id == 49407

    if REF_DIR.exists():
        shutil.rmtree(REF_DIR)
    REF_DIR.mkdir(parents=True)
    w = Writer(REF_DIR)

    photo = Image.open(PHOTO).convert("RGB")
    inputs = {}
    for (iw, ih) in ((64, 64), (64, 48), (72, 40)):
        im = crop_and_resize(photo, iw, ih)
        fname = f"in_coffee_{iw}x{ih}.png"
        im.save(REF_DIR / fname)
        inputs[(iw, ih)] = (fname, Image.open(REF_DIR / fname).convert("RGB"))

    cases = []

    def add(mode, sampler, strength, size=(64, 64), guidance=CFG, pred="epsilon", inter=False):
        tag = f"{mode}_{sampler}_s{round(strength * 100):03d}_{size[0]}x{size[1]}"
        if guidance != CFG:
            tag += f"_cfg{guidance:g}".replace(".", "p")
        if pred != "epsilon":
            tag += "_v"
        cases.append(dict(name=tag, latent_mode=mode, sampler=sampler, strength=strength,
                          guidance_scale=guidance, prediction_type=pred, input=inputs[size][0],
                          intermediates=inter, _size=size))

    samplers = ("ddim", "euler_a", "dpmpp_2m_karras")
    for mode in ("mean", "sample"):
        for s in samplers:
            for strength in (0.5, 0.8):
                add(mode, s, strength, inter=(s == "ddim" and strength == 0.5))
        add(mode, "ddim", 0.5, guidance=1.0)
    for s in samplers:
        add("mean", s, 0.5, size=(64, 48))
        add("mean", s, 0.5, pred="v_prediction")
    add("mean", "ddim", 0.35)  # the app's default strength: floor(10*0.35) = 3 steps
    add("mean", "euler_a", 1.0)  # the whole schedule
    # Latents 9x5: odd sizes, so the UNet upsamples to the skip connection's size.
    add("mean", "ddim", 0.5, size=(72, 40))

    entries, outs = [], {}
    for c in cases:
        size = c.pop("_size")
        p = pipe_v if c["prediction_type"] == "v_prediction" else pipe
        entry, out, u8 = run_case(p, w, c, inputs[size][1], c["intermediates"])
        entries.append(entry)
        outs[c["name"]] = (out, u8)
        st = entry["files"]["out"]["stats"]
        print(f"{c['name']:42s} steps={entry['n_steps_run']:2d} draws={len(entry['noise_draw_labels']):2d} "
              f"mean={st['mean']:.4f} std={st['std']:.4f}")

    by_name = {e["name"]: e for e in entries}
    checks = self_checks(pipe, by_name, inputs[(64, 64)][1])
    for c in checks:
        print("check:", c)

    # how different the cases are (to show the model does something)
    def mad(a, b):
        return round(float(np.abs(outs[a][0] - outs[b][0]).mean()), 5)

    def maxd(a, b):
        return int(np.abs(outs[a][1].astype(int) - outs[b][1].astype(int)).max())

    comparisons = []
    pairs = []
    for mode in ("mean", "sample"):
        for strength in ("050", "080"):
            n = [f"{mode}_{s}_s{strength}_64x64" for s in samplers]
            pairs += [(n[0], n[1]), (n[0], n[2]), (n[1], n[2])]
        pairs.append((f"{mode}_ddim_s050_64x64", f"{mode}_ddim_s080_64x64"))
        pairs.append((f"{mode}_ddim_s050_64x64", f"{mode}_ddim_s050_64x64_cfg1"))
    pairs += [(f"mean_{s}_s050_64x64", f"sample_{s}_s050_64x64") for s in samplers]
    pairs += [(f"mean_{s}_s050_64x64", f"mean_{s}_s050_64x64_v") for s in samplers]
    for a, b in pairs:
        comparisons.append({"a": a, "b": b, "mean_abs_diff_out": mad(a, b), "max_abs_diff_u8": maxd(a, b)})
    in64 = np.asarray(inputs[(64, 64)][1], dtype=np.float32) / 255
    input_diff = {n: round(float(np.abs(o[0] - in64).mean()), 5) for n, o in outs.items() if o[0].shape == in64.shape}

    manifest = {
        "generator": "tools/parity/make_tiny_sd.py",
        "versions": versions(),
        "model": "tests/fixtures/tiny-sd",
        "model_v_overlay": "tests/fixtures/tiny-sd-v (scheduler only; weights from tests/fixtures/tiny-sd)",
        "model_weights_dtype_on_disk": "float16",
        "reference_dtype": "float32 (weights re-loaded from disk and upcast), CPU, 1 thread",
        "file_format": "raw little-endian, C order (row-major), no header; dtype f32 = IEEE float32, "
                       "u8 = uint8, i64 = int64; shape and layout given per file",
        "inputs": {f"{k[0]}x{k[1]}": {"file": v[0], "how": "coffee.png, A1111 crop-and-resize (mode 1): "
                   "Pillow LANCZOS resize keeping aspect, centred crop"} for k, v in inputs.items()},
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "seed": SEED,
        "generator_device": "cpu",
        "num_inference_steps": STEPS,
        "latent_modes": {
            "sample": "diffusers default: retrieve_latents(vae.encode(x), generator, sample_mode='sample') = "
                      "mean + std*eps, eps = the FIRST draw from the generator; img2img noise is the second draw",
            "mean": "retrieve_latents(..., sample_mode='argmax') = latent_dist.mode() = mean (patched in); "
                    "the img2img noise is the first draw. THE APP MATCHES THIS SET.",
        },
        "cases": entries,
        "self_checks": checks,
        "comparisons": comparisons,
        "mean_abs_diff_vs_input_64x64": input_diff,
    }
    (REF_DIR / "manifest.json").write_text(json.dumps(jsonable(manifest), indent=1, allow_nan=False) + "\n")

    print("comparisons:")
    for c in comparisons:
        print(f"  {c['a']:32s} vs {c['b']:36s} mad={c['mean_abs_diff_out']:.4f} max_u8={c['max_abs_diff_u8']}")
    print(f"sizes: tiny-sd {dir_size(MODEL_DIR)} B, tiny-sd-v {dir_size(MODEL_V_DIR)} B, "
          f"parity {dir_size(REF_DIR)} B")


if __name__ == "__main__":
    main()
