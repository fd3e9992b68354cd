#!/usr/bin/env python3
"""Build two kohya-format LoRA files for the tiny SD 1.x model and record what diffusers makes
of them.

Run from the repository root (after make_tiny_sd.py; needs `peft`):

    python3 tools/parity/make_tiny_lora.py

It (re)creates tests/fixtures/lora/:

* tiny_a.safetensors   kohya/A1111 LoRA (fp16): UNet attention (attn1 q/k/v/out, attn2 k/v),
                       a 1x1 conv (proj_in), a 3x3 conv ("LoCon": resnets.0.conv1), a ff linear,
                       and text encoder q_proj / v_proj / mlp.fc1; rank 4, alpha 2 (scale 0.5)
* tiny_b.safetensors   a second one (fp32, rank 2, no alpha key: alpha = rank) on other layers
                       plus one layer shared with tiny_a
* manifest.json + raw little-endian f32 tensors:
  - case "a":  tiny_a at weight 0.7
  - case "ab": tiny_a at 0.7 and tiny_b at -0.4
  each with: merged weights of a few tensors (after diffusers' load_lora_weights + fuse_lora),
  the text encoder's last hidden state for the prompt, one UNet call on fixed inputs, and the
  final latents of a 64x64 DDIM img2img run (strength 0.5, 10 steps, CFG 7.5, seed 1234,
  posterior mean as in tests/fixtures/parity, the project's noise convention).

The UNet's LoRA goes through diffusers' loader; the merged UNet is also checked against the
un-fused adapters (forward with LoRA layers), so the references do not depend on fuse_lora
alone. The text encoder's LoRA is merged here by the formula W + weight·alpha/rank·up·down:
diffusers 0.42's loader with transformers 5 attaches adapters to only some kohya text-encoder
modules (here only layers.1.mlp.fc1 of tiny_a) and reports the encoder's weights as missing, so
it is not a usable reference for the text encoder.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import json
import shutil
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from PIL import Image
from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as img2img_mod

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "tests/fixtures/tiny-sd"
OUT = ROOT / "tests/fixtures/lora"
INPUT = ROOT / "tests/fixtures/parity/in_coffee_64x64.png"

PROMPT = "a cup of coffee on a wooden table"
NEGATIVE = "blurry, lowres"
SEED = 1234
STEPS = 10
CFG = 7.5
STRENGTH = 0.5

ATTN = "down_blocks.0.attentions.0.transformer_blocks.0"
UP_ATTN = "up_blocks.1.attentions.1.transformer_blocks.0"
TARGETS_A = {  # diffusers module -> kind
    "unet": [
        f"{ATTN}.attn1.to_q", f"{ATTN}.attn1.to_k", f"{ATTN}.attn1.to_v", f"{ATTN}.attn1.to_out.0",
        f"{ATTN}.attn2.to_k", f"{ATTN}.attn2.to_v", f"{ATTN}.ff.net.2",
        "down_blocks.0.attentions.0.proj_in",  # 1x1 conv
        "down_blocks.0.resnets.0.conv1",  # 3x3 conv (LoCon)
        f"{UP_ATTN}.attn2.to_q",
    ],
    "te": [
        "text_model.encoder.layers.0.self_attn.q_proj",
        "text_model.encoder.layers.0.self_attn.v_proj",
        "text_model.encoder.layers.1.mlp.fc1",
    ],
}
TARGETS_B = {
    "unet": [
        f"{ATTN}.attn1.to_q",  # shared with A
        "mid_block.attentions.0.transformer_blocks.0.attn1.to_v",
        "up_blocks.1.attentions.0.proj_out",
        "up_blocks.1.resnets.1.conv2",
    ],
    "te": ["text_model.encoder.layers.1.self_attn.out_proj"],
}
RECORD = [  # merged weights recorded: (component, diffusers weight name)
    ("unet", f"{ATTN}.attn1.to_q.weight"),
    ("unet", f"{ATTN}.attn2.to_k.weight"),
    ("unet", "down_blocks.0.attentions.0.proj_in.weight"),
    ("unet", "down_blocks.0.resnets.0.conv1.weight"),
    ("unet", "up_blocks.1.resnets.1.conv2.weight"),
    ("te", "text_model.encoder.layers.0.self_attn.q_proj.weight"),
    ("te", "text_model.encoder.layers.1.self_attn.out_proj.weight"),
]


def kohya_name(prefix, module):
    return prefix + module.replace(".", "_")


def make_lora(pipe, targets, rank, alpha, dtype, seed):
    """A kohya state dict with random down/up matrices for `targets`."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    comps = {"unet": (pipe.unet, "lora_unet_"), "te": (pipe.text_encoder, "lora_te_")}
    for comp, modules in targets.items():
        model, prefix = comps[comp]
        params = named_params(model)
        for module in modules:
            w = params[module + ".weight"]
            name = kohya_name(prefix, module)
            if w.dim() == 4:
                out_c, in_c, kh, kw = w.shape
                down = torch.randn(rank, in_c, kh, kw, generator=g) * 0.3
                up = torch.randn(out_c, rank, 1, 1, generator=g) * 0.3
            else:
                out_c, in_c = w.shape
                down = torch.randn(rank, in_c, generator=g) * 0.3
                up = torch.randn(out_c, rank, generator=g) * 0.3
            sd[name + ".lora_down.weight"] = down.to(dtype).contiguous()
            sd[name + ".lora_up.weight"] = up.to(dtype).contiguous()
            if alpha is not None:
                sd[name + ".alpha"] = torch.tensor(float(alpha), dtype=dtype)
    return sd


def named_params(model):
    """Parameters by name, with the text encoder's names always under `text_model.` (as kohya's
    keys spell them), whichever layout this transformers version uses."""
    params = dict(model.named_parameters())
    if any(k.startswith("encoder.layers.") for k in params):
        params = {"text_model." + k: v for k, v in params.items()}
    return params


def merge_text_encoder(model, sd, scale):
    """W += scale * alpha/rank * up @ down for every lora_te_ module of `sd`, in float32."""
    params = named_params(model)
    by_flat = {k.removesuffix(".weight").replace(".", "_"): v for k, v in params.items()}
    with torch.no_grad():
        for key in sd:
            if not (key.startswith("lora_te_") and key.endswith(".lora_down.weight")):
                continue
            module = key.removesuffix(".lora_down.weight")
            down = sd[key].float()
            up = sd[module + ".lora_up.weight"].float()
            rank = down.shape[0]
            alpha = float(sd[module + ".alpha"]) if module + ".alpha" in sd else rank
            weight = by_flat[module.removeprefix("lora_te_")]
            weight += scale * (alpha / rank) * (up @ down)


class Writer:
    def __init__(self, root):
        self.root = root

    def put(self, name, array):
        a = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
        fname = f"{name}.f32"
        a.astype("<f4").tofile(self.root / fname)
        return {"file": fname, "shape": list(a.shape)}


def load_pipe():
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
        MODEL_DIR, torch_dtype=torch.float32, local_files_only=True, safety_checker=None,
        feature_extractor=None,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


def mean_mode():
    """The project's convention: the VAE posterior mean, not a sample (see make_tiny_sd.py)."""
    orig = img2img_mod.retrieve_latents

    def retrieve_latents(encoder_output, generator=None, sample_mode="sample"):
        return orig(encoder_output, generator=generator, sample_mode="argmax")

    img2img_mod.retrieve_latents = retrieve_latents


def text_hidden(pipe):
    ids = pipe.tokenizer(PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def unet_call(pipe, hidden):
    g = torch.Generator().manual_seed(7)
    latents = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        return latents, pipe.unet(latents, 500, encoder_hidden_states=hidden).sample


def final_latents(pipe, image):
    captured = {}

    def on_end(p, i, t, kw):
        captured["latents"] = kw["latents"].detach().clone()
        return kw

    with torch.no_grad():
        pipe(prompt=PROMPT, negative_prompt=NEGATIVE, image=image, strength=STRENGTH,
             num_inference_steps=STEPS, guidance_scale=CFG, eta=0.0,
             generator=torch.Generator("cpu").manual_seed(SEED), output_type="np",
             callback_on_step_end=on_end)
    return captured["latents"]


def record(pipe, w, name, image):
    hidden = text_hidden(pipe)
    latents_in, unet_out = unet_call(pipe, hidden)
    entry = {
        "text_hidden": w.put(f"{name}.text_hidden", hidden.numpy()),
        "unet_input": w.put(f"{name}.unet_input", latents_in.numpy()),
        "unet_output": w.put(f"{name}.unet_output", unet_out.numpy()),
        "final_latents": w.put(f"{name}.final_latents", final_latents(pipe, image).numpy()),
    }
    return entry, hidden, unet_out


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    mean_mode()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    w = Writer(OUT)
    image = Image.open(INPUT).convert("RGB")

    pipe = load_pipe()
    lora_a = make_lora(pipe, TARGETS_A, rank=4, alpha=2.0, dtype=torch.float16, seed=11)
    lora_b = make_lora(pipe, TARGETS_B, rank=2, alpha=None, dtype=torch.float32, seed=12)
    safetensors.torch.save_file(lora_a, OUT / "tiny_a.safetensors", metadata={"ss_network_dim": "4"})
    safetensors.torch.save_file(lora_b, OUT / "tiny_b.safetensors")

    base_entry, base_hidden, base_unet = record(pipe, w, "base", image)
    cases = []
    for name, loras in (("a", [("tiny_a", 0.7)]), ("ab", [("tiny_a", 0.7), ("tiny_b", -0.4)])):
        pipe = load_pipe()
        files = {n: safetensors.torch.load_file(OUT / f"{n}.safetensors") for n, _ in loras}
        for lora, _ in loras:
            unet_sd = {k: v for k, v in files[lora].items() if k.startswith("lora_unet_")}
            pipe.load_lora_weights(unet_sd, adapter_name=lora)
        pipe.set_adapters([n for n, _ in loras], adapter_weights=[s for _, s in loras])
        for lora, scale in loras:
            merge_text_encoder(pipe.text_encoder, files[lora], scale)
        # un-fused UNet forward (LoRA layers active)
        unfused_hidden = text_hidden(pipe)
        _, unfused_unet = unet_call(pipe, unfused_hidden)
        pipe.fuse_lora(components=["unet"], lora_scale=1.0, adapter_names=[n for n, _ in loras])
        pipe.unload_lora_weights()
        entry, hidden, unet_out = record(pipe, w, name, image)
        check = {
            "fused_vs_unfused_text_hidden": float((hidden - unfused_hidden).abs().max()),
            "fused_vs_unfused_unet": float((unet_out - unfused_unet).abs().max()),
            "vs_base_text_hidden": float((hidden - base_hidden).abs().max()),
            "vs_base_unet": float((unet_out - base_unet).abs().max()),
        }
        assert check["fused_vs_unfused_text_hidden"] < 1e-4, check
        assert check["fused_vs_unfused_unet"] < 1e-4, check
        assert check["vs_base_text_hidden"] > 1e-2 and check["vs_base_unet"] > 1e-2, check
        params = {"unet": named_params(pipe.unet), "te": named_params(pipe.text_encoder)}
        weights = {}
        for comp, key in RECORD:
            weights[f"{comp}:{key}"] = w.put(f"{name}.{comp}.{key}", params[comp][key].detach().numpy())
        entry["weights"] = weights
        cases.append({"name": name, "loras": [{"file": f"{n}.safetensors", "weight": s} for n, s in loras],
                      "files": entry, "checks": check})
        print(name, check)

    manifest = {
        "generator": "tools/parity/make_tiny_lora.py",
        "model": "tests/fixtures/tiny-sd",
        "how": "diffusers StableDiffusionImg2ImgPipeline.load_lora_weights (kohya format) + "
               "set_adapters(weights) + fuse_lora(lora_scale=1) + unload_lora_weights, float32, CPU",
        "prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": SEED, "steps": STEPS, "cfg": CFG,
        "strength": STRENGTH, "sampler": "ddim", "input": "tests/fixtures/parity/in_coffee_64x64.png",
        "latent_mode": "mean", "unet_timestep": 500, "unet_input_seed": 7,
        "file_format": "raw little-endian f32, C order",
        "base": base_entry,
        "cases": cases,
        "versions": {"torch": torch.__version__,
                     "diffusers": __import__("diffusers").__version__,
                     "peft": __import__("peft").__version__},
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"wrote {OUT} ({size} bytes)")


if __name__ == "__main__":
    main()
