#!/usr/bin/env python3
"""Build two SDXL LoRA files for the tiny SDXL model and record what diffusers makes of them.

Run from the repository root (after make_tiny_sdxl.py; needs `peft`):

    python3 tools/parity/make_tiny_lora_sdxl.py

It (re)creates tests/fixtures/lora-sdxl/:

* tiny_xl_a.safetensors  kohya/A1111 SDXL LoRA (fp16, rank 4, alpha 3: scale 0.75) with the
                         UNet named in the original SGM layout (`lora_unet_input_blocks_3_1_…`,
                         `middle_block_…`, `output_blocks_…`): attention q/k/v/out, linear
                         proj_in/proj_out, ff.net.0.proj / ff.net.2, resnet convs as LoCon 3x3
                         (`in_layers_2`, `out_layers_3`), `emb_layers_1`, a 1x1
                         `skip_connection`, the down/upsampler convs, `label_emb_0_0` and
                         `out_2`; both text encoders (`lora_te1_text_model_…` = CLIP-L,
                         `lora_te2_text_model_…` = OpenCLIP-G in transformers' names)
* tiny_xl_b.safetensors  a diffusers/PEFT-style SDXL LoRA (fp32, rank 2, no alpha: alpha =
                         rank): `unet.<diffusers module>.lora_A/lora_B.weight` (one module shared
                         with tiny_xl_a, a 3x3 conv) and `text_encoder_2.…`
* manifest.json + raw little-endian f32 tensors:
  - case "a":  tiny_xl_a at weight 1
  - case "ab": tiny_xl_a at 0.5 and tiny_xl_b at -0.8
  each with: merged weights of a few tensors, the text conditioning for the prompt and the
  negative prompt (context [2, 77, 16], rows uncond / cond, and pooled [2, 12]), one UNet call
  on fixed inputs, and the final latents of a 64x64 DDIM img2img run (strength 0.5, 10 steps,
  CFG 7.5, seed 1234, posterior mean: the project's convention).

Every LoRA goes through diffusers' own loader (`StableDiffusionXLImg2ImgPipeline.
load_lora_weights`, which converts kohya's SGM names itself) + `set_adapters` + `fuse_lora` +
`unload_lora_weights`. The script then checks, for every weight of the three networks, that
exactly the expected weights changed and each equals W + Σ weight·alpha/rank·up·down computed
here in float32 (so the SGM ↔ diffusers pairs below are confirmed by diffusers' converter). A
text-encoder module that diffusers' loader leaves out (it did for SD 1.x kohya LoRAs with
transformers 5, see make_tiny_lora.py) is merged here by that formula instead and listed in the
manifest under `te_merged_by_formula`. The UNet's fused result is also checked against the
un-fused adapters.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from PIL import Image
from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl_img2img as xl_mod

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_lora as sd_lora  # noqa: E402
import make_tiny_sdxl as xl  # noqa: E402

ROOT = xl.ROOT
OUT = ROOT / "tests/fixtures/lora-sdxl"
INPUT = ROOT / "tests/fixtures/parity-sdxl/in_coffee_64x64.png"

# The img2img run is make_tiny_lora.py's (final_latents): the same prompt, negative prompt,
# seed, 10 DDIM steps, CFG 7.5, strength 0.5.
PROMPT = sd_lora.PROMPT
NEGATIVE = sd_lora.NEGATIVE
SEED = sd_lora.SEED
STEPS = sd_lora.STEPS
CFG = sd_lora.CFG
STRENGTH = sd_lora.STRENGTH
SIZE = 64

# tiny-sdxl: 3 levels, layers_per_block 1, so SGM blocks are numbered per level in twos:
# input_blocks 1 (level 0), 2 (its downsampler), 3 (level 1), 4 (downsampler), 5 (level 2);
# output_blocks 0-1 (up level 0, upsampler in 1), 2-3 (up level 1), 4-5 (up level 2).
# Up levels 0 and 1 have transformers, so their upsampler is module 2 of the block.
D1 = "down_blocks.1.attentions.0.transformer_blocks.0"
UNET_A = [  # (kohya SGM module, diffusers module)
    ("input_blocks_3_1_transformer_blocks_0_attn1_to_q", f"{D1}.attn1.to_q"),
    ("input_blocks_3_1_transformer_blocks_0_attn1_to_k", f"{D1}.attn1.to_k"),
    ("input_blocks_3_1_transformer_blocks_0_attn1_to_v", f"{D1}.attn1.to_v"),
    ("input_blocks_3_1_transformer_blocks_0_attn1_to_out_0", f"{D1}.attn1.to_out.0"),
    ("input_blocks_3_1_proj_in", "down_blocks.1.attentions.0.proj_in"),
    ("input_blocks_5_1_transformer_blocks_1_attn2_to_k",
     "down_blocks.2.attentions.0.transformer_blocks.1.attn2.to_k"),
    ("input_blocks_5_1_transformer_blocks_0_ff_net_0_proj",
     "down_blocks.2.attentions.0.transformer_blocks.0.ff.net.0.proj"),
    ("input_blocks_5_1_transformer_blocks_0_ff_net_2",
     "down_blocks.2.attentions.0.transformer_blocks.0.ff.net.2"),
    ("middle_block_1_transformer_blocks_0_attn2_to_v",
     "mid_block.attentions.0.transformer_blocks.0.attn2.to_v"),
    ("middle_block_1_proj_out", "mid_block.attentions.0.proj_out"),
    ("output_blocks_0_1_transformer_blocks_1_attn1_to_q",
     "up_blocks.0.attentions.0.transformer_blocks.1.attn1.to_q"),
    ("output_blocks_3_1_proj_out", "up_blocks.1.attentions.1.proj_out"),
    ("input_blocks_1_0_in_layers_2", "down_blocks.0.resnets.0.conv1"),  # 3x3 LoCon
    ("output_blocks_4_0_out_layers_3", "up_blocks.2.resnets.0.conv2"),  # 3x3 LoCon
    ("middle_block_2_in_layers_2", "mid_block.resnets.1.conv1"),  # 3x3 LoCon
    ("middle_block_0_emb_layers_1", "mid_block.resnets.0.time_emb_proj"),
    ("output_blocks_0_0_skip_connection", "up_blocks.0.resnets.0.conv_shortcut"),  # 1x1 conv
    ("input_blocks_2_0_op", "down_blocks.0.downsamplers.0.conv"),
    ("output_blocks_1_2_conv", "up_blocks.0.upsamplers.0.conv"),
    ("label_emb_0_0", "add_embedding.linear_1"),
    ("out_2", "conv_out"),
]
TE1_A = ["text_model.encoder.layers.0.self_attn.q_proj", "text_model.encoder.layers.1.mlp.fc1"]
TE2_A = [
    "text_model.encoder.layers.0.self_attn.k_proj",
    "text_model.encoder.layers.1.mlp.fc2",
    "text_model.encoder.layers.2.self_attn.v_proj",  # the last layer: changes the pooled output
]
UNET_B = [  # diffusers modules
    f"{D1}.attn1.to_q",  # shared with A
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0",
    "down_blocks.1.resnets.0.conv2",  # 3x3
]
TE2_B = ["text_model.encoder.layers.1.self_attn.q_proj"]

RECORD = [  # merged weights recorded: (component, diffusers weight name)
    ("unet", f"{D1}.attn1.to_q.weight"),
    ("unet", "down_blocks.0.resnets.0.conv1.weight"),
    ("unet", "up_blocks.0.resnets.0.conv_shortcut.weight"),
    ("unet", "up_blocks.0.upsamplers.0.conv.weight"),
    ("unet", "mid_block.resnets.0.time_emb_proj.weight"),
    ("unet", "down_blocks.1.resnets.0.conv2.weight"),
    ("te1", "text_model.encoder.layers.0.self_attn.q_proj.weight"),
    ("te2", "text_model.encoder.layers.1.self_attn.q_proj.weight"),
    ("te2", "text_model.encoder.layers.2.self_attn.v_proj.weight"),
]


def random_pair(w, rank, g):
    """Random (down, up) for weight `w`: 2-D for linears, (rank, in, kh, kw) / (out, rank, 1, 1)
    for convolutions."""
    if w.dim() == 4:
        out_c, in_c, kh, kw = w.shape
        return torch.randn(rank, in_c, kh, kw, generator=g) * 0.3, torch.randn(out_c, rank, 1, 1, generator=g) * 0.3
    out_c, in_c = w.shape
    return torch.randn(rank, in_c, generator=g) * 0.3, torch.randn(out_c, rank, generator=g) * 0.3


def params_of(pipe):
    return {
        "unet": sd_lora.named_params(pipe.unet),
        "te1": sd_lora.named_params(pipe.text_encoder),
        "te2": sd_lora.named_params(pipe.text_encoder_2),
    }


def make_a(params, rank=4, alpha=3.0, dtype=torch.float16, seed=21):
    """The kohya SGM-named LoRA; returns (state dict, updates) where updates are
    (component, diffusers weight name, down, up, alpha/rank) in float32."""
    g = torch.Generator().manual_seed(seed)
    sd, updates = {}, []
    targets = [("unet", "lora_unet_" + sgm, diff) for sgm, diff in UNET_A]
    targets += [("te1", "lora_te1_" + m.replace(".", "_"), m) for m in TE1_A]
    targets += [("te2", "lora_te2_" + m.replace(".", "_"), m) for m in TE2_A]
    for comp, key, module in targets:
        down, up = random_pair(params[comp][module + ".weight"], rank, g)
        down, up = down.to(dtype).contiguous(), up.to(dtype).contiguous()
        sd[key + ".lora_down.weight"] = down
        sd[key + ".lora_up.weight"] = up
        sd[key + ".alpha"] = torch.tensor(alpha, dtype=dtype)
        updates.append((comp, module + ".weight", down.float(), up.float(), alpha / rank))
    return sd, updates


def make_b(params, rank=2, seed=22):
    """The diffusers/PEFT-style LoRA (diffusers module names, no alpha)."""
    g = torch.Generator().manual_seed(seed)
    sd, updates = {}, []
    targets = [("unet", "unet." + m, m) for m in UNET_B]
    targets += [("te2", "text_encoder_2." + m, m) for m in TE2_B]
    for comp, key, module in targets:
        down, up = random_pair(params[comp][module + ".weight"], rank, g)
        sd[key + ".lora_A.weight"] = down.contiguous()
        sd[key + ".lora_B.weight"] = up.contiguous()
        updates.append((comp, module + ".weight", down, up, 1.0))
    return sd, updates


def expected_weights(base, loras):
    """base params + Σ weight·alpha/rank·up·down, by component and weight name (float32)."""
    out = {}
    for updates, weight in loras:
        for comp, name, down, up, scale in updates:
            w = out.get((comp, name), base[comp][name].detach().clone())
            delta = up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)
            out[(comp, name)] = w + weight * scale * delta.reshape(w.shape)
    return out


def load_pipe(tok, tok2):
    pipe = xl.load_pipeline(tok, tok2)
    pipe.scheduler = xl.make_scheduler("ddim")
    return pipe


def mean_mode():
    """The project's convention: the VAE posterior mean, not a sample (see make_tiny_sd.py)."""
    orig = xl_mod.retrieve_latents

    def retrieve_latents(encoder_output, generator=None, sample_mode="sample"):
        return orig(encoder_output, generator=generator, sample_mode="argmax")

    xl_mod.retrieve_latents = retrieve_latents


def conditioning(pipe):
    """(context [2, 77, 16] rows uncond/cond, pooled [2, 12]) as the pipeline computes them."""
    with torch.no_grad():
        pe, npe, pooled, npooled = pipe.encode_prompt(
            prompt=PROMPT, negative_prompt=NEGATIVE, do_classifier_free_guidance=True, device="cpu",
        )
    return torch.cat([npe, pe]), torch.cat([npooled, pooled])


def time_ids():
    return torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * 2, dtype=torch.float32)


def unet_call(pipe, context, pooled):
    g = torch.Generator().manual_seed(7)
    latents = torch.randn(2, 4, SIZE // 8, SIZE // 8, generator=g)
    with torch.no_grad():
        out = pipe.unet(latents, 500, encoder_hidden_states=context,
                        added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids()}).sample
    return latents, out


def record(pipe, w, name, image):
    context, pooled = conditioning(pipe)
    latents_in, unet_out = unet_call(pipe, context, pooled)
    entry = {
        "context": w.put(f"{name}.context", context.numpy()),
        "pooled": w.put(f"{name}.pooled", pooled.numpy()),
        "unet_input": w.put(f"{name}.unet_input", latents_in.numpy()),
        "unet_output": w.put(f"{name}.unet_output", unet_out.numpy()),
        "final_latents": w.put(f"{name}.final_latents", sd_lora.final_latents(pipe, image).numpy()),
    }
    return entry, context, pooled, unet_out


def check_and_fix(pipe, base, expected):
    """Compares every weight with `expected` (changed) or `base` (unchanged). The UNet must
    match; a text-encoder weight that diffusers' loader left untouched is set to its expected
    value (one it merged differently fails).
    Returns (worst UNet diff, text-encoder weights merged here)."""
    params = params_of(pipe)
    worst_unet, fixed = 0.0, []
    for comp, named in params.items():
        for name, p in named.items():
            want = expected.get((comp, name), base[comp][name])
            d = float((p.detach() - want).abs().max())
            if comp == "unet":
                assert d < 1e-5, f"diffusers merged unet {name} differently: {d}"
                worst_unet = max(worst_unet, d)
            elif d > 1e-5:
                # Only a weight diffusers left as it was may be merged here.
                untouched = float((p.detach() - base[comp][name]).abs().max()) == 0.0
                assert (comp, name) in expected and untouched, f"diffusers changed {comp} {name}: {d}"
                with torch.no_grad():
                    p.copy_(want)
                fixed.append(f"{comp}:{name}")
    return worst_unet, fixed


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    mean_mode()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    w = sd_lora.Writer(OUT)
    image = Image.open(INPUT).convert("RGB")
    with tempfile.TemporaryDirectory() as tmp:
        tok, tok2 = xl.tokenizers(Path(tmp))
        pipe = load_pipe(tok, tok2)
        base = {c: {k: v.detach().clone() for k, v in named.items()} for c, named in params_of(pipe).items()}
        lora_a, updates_a = make_a(base)
        lora_b, updates_b = make_b(base)
        safetensors.torch.save_file(lora_a, OUT / "tiny_xl_a.safetensors", metadata={"ss_network_dim": "4"})
        safetensors.torch.save_file(lora_b, OUT / "tiny_xl_b.safetensors")
        updates = {"tiny_xl_a": updates_a, "tiny_xl_b": updates_b}

        base_entry, base_context, base_pooled, base_unet = record(pipe, w, "base", image)
        cases = []
        for name, loras in (("a", [("tiny_xl_a", 1.0)]), ("ab", [("tiny_xl_a", 0.5), ("tiny_xl_b", -0.8)])):
            pipe = load_pipe(tok, tok2)
            for lora, _ in loras:
                pipe.load_lora_weights(safetensors.torch.load_file(OUT / f"{lora}.safetensors"), adapter_name=lora)
            names = [n for n, _ in loras]
            pipe.set_adapters(names, adapter_weights=[s for _, s in loras])
            # The un-fused UNet (LoRA layers active) on the base model's conditioning.
            _, unfused_unet = unet_call(pipe, base_context, base_pooled)
            pipe.fuse_lora(components=["unet", "text_encoder", "text_encoder_2"], lora_scale=1.0,
                           adapter_names=names)
            pipe.unload_lora_weights()
            _, fused_unet = unet_call(pipe, base_context, base_pooled)
            expected = expected_weights(base, [(updates[n], s) for n, s in loras])
            worst_weights, fixed = check_and_fix(pipe, base, expected)
            entry, context, pooled, unet_out = record(pipe, w, name, image)
            check = {
                "fused_vs_formula_unet_weights": worst_weights,
                "fused_vs_unfused_unet": float((fused_unet - unfused_unet).abs().max()),
                "vs_base_context": float((context - base_context).abs().max()),
                "vs_base_pooled": float((pooled - base_pooled).abs().max()),
                "vs_base_unet": float((unet_out - base_unet).abs().max()),
            }
            assert check["fused_vs_unfused_unet"] < 1e-4, check
            assert min(check["vs_base_context"], check["vs_base_pooled"], check["vs_base_unet"]) > 1e-2, check
            params = params_of(pipe)
            entry["weights"] = {
                f"{comp}:{key}": w.put(f"{name}.{comp}.{key}", params[comp][key].detach().numpy())
                for comp, key in RECORD
            }
            cases.append({"name": name, "loras": [{"file": f"{n}.safetensors", "weight": s} for n, s in loras],
                          "files": entry, "checks": check, "te_merged_by_formula": fixed})
            print(name, check, "te merged by formula:", fixed)

    manifest = {
        "generator": "tools/parity/make_tiny_lora_sdxl.py",
        "model": "tests/fixtures/tiny-sdxl",
        "how": "diffusers StableDiffusionXLImg2ImgPipeline.load_lora_weights (kohya SGM names and "
               "PEFT) + set_adapters(weights) + fuse_lora(lora_scale=1) + unload_lora_weights, "
               "float32, CPU; every weight checked against W + sum(weight*alpha/rank*up@down)",
        "prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": SEED, "steps": STEPS, "cfg": CFG,
        "strength": STRENGTH, "sampler": "ddim", "input": "tests/fixtures/parity-sdxl/in_coffee_64x64.png",
        "latent_mode": "mean", "unet_timestep": 500, "unet_input_seed": 7,
        "time_ids": time_ids()[0].tolist(),
        "file_format": "raw little-endian f32, C order",
        "module_pairs": [{"kohya": "lora_unet_" + s, "diffusers": d} for s, d in UNET_A],
        "base": base_entry,
        "cases": cases,
        "versions": {"torch": torch.__version__,
                     "diffusers": __import__("diffusers").__version__,
                     "transformers": __import__("transformers").__version__,
                     "peft": __import__("peft").__version__},
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"wrote {OUT} ({size} bytes)")


if __name__ == "__main__":
    main()
