#!/usr/bin/env python3
"""Write tiny single-file checkpoints in the original (CompVis / Stability) layout and check
them against diffusers' own single-file loader.

Run from the repository root (no network needed):

    python3 tools/checkpoint/make_fixtures.py

It writes, deterministically:

* tests/fixtures/checkpoint/tiny-sd.safetensors
      tests/fixtures/tiny-sd (SD 1.x, fp16) in the original layout: UNet under
      model.diffusion_model., VAE under first_stage_model. (mid attention as 1x1 convs),
      CLIP-L under cond_stage_model.transformer.
* tests/fixtures/checkpoint/tiny-sdxl.safetensors
      tests/fixtures/tiny-sdxl (SDXL, fp16) in the original (Stability SGM) layout: UNet under
      model.diffusion_model. (label_emb for the text_time conditioning), VAE under
      first_stage_model., CLIP-L under conditioner.embedders.0.transformer. and the second
      encoder as OpenCLIP under conditioner.embedders.1.model. (fused in_proj, text_projection
      stored transposed).
* tests/fixtures/checkpoint/tiny-sd2-keys.json
* tests/fixtures/checkpoint/tiny-sdxl-keys.json
      names and shapes only: an SD 2.x-style (OpenCLIP-H text encoder, fused in_proj, linear
      transformer projections) and an SDXL-style (CLIP-L + OpenCLIP-bigG with projection,
      label_emb, transformer depth per level) tiny model, each as
      {"original": {name: shape}, "diffusers": {component: {name: shape}}}.

Every file is verified before it is written: diffusers' from_single_file(path, config=<the
diffusers folder>) must load the original-layout file back into exactly the diffusers
model's tensors. The writer below is the inverse of diffusers' conversion, written here
independently of the Rust loader it tests.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests/fixtures/tiny-sd"
TINY_SDXL = ROOT / "tests/fixtures/tiny-sdxl"
OUT = ROOT / "tests/fixtures/checkpoint"

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def unet_to_original(sd, layers_per_block, attention_levels):
    """diffusers UNet2DConditionModel names -> model.diffusion_model.* names."""
    n = layers_per_block
    out = {}
    for name, t in sd.items():
        parts = name.split(".")
        new = None
        if parts[0] in ("time_embedding", "add_embedding"):
            idx = {"linear_1": "0", "linear_2": "2"}[parts[1]]
            base = "time_embed" if parts[0] == "time_embedding" else "label_emb.0"
            new = f"{base}.{idx}.{parts[2]}"
        elif parts[0] == "conv_in":
            new = f"input_blocks.0.0.{parts[1]}"
        elif parts[0] == "conv_norm_out":
            new = f"out.0.{parts[1]}"
        elif parts[0] == "conv_out":
            new = f"out.2.{parts[1]}"
        elif parts[0] == "down_blocks":
            i, kind, j = int(parts[1]), parts[2], int(parts[3])
            rest = parts[4:]
            if kind == "resnets":
                new = f"input_blocks.{1 + i * (n + 1) + j}.0.{RESNET[rest[0]]}.{rest[1]}"
            elif kind == "attentions":
                new = f"input_blocks.{1 + i * (n + 1) + j}.1." + ".".join(rest)
            else:  # downsamplers.0.conv.X
                new = f"input_blocks.{(i + 1) * (n + 1)}.0.op.{rest[1]}"
        elif parts[0] == "mid_block":
            kind, j, rest = parts[1], int(parts[2]), parts[3:]
            if kind == "resnets":
                new = f"middle_block.{2 * j}.{RESNET[rest[0]]}.{rest[1]}"
            else:
                new = "middle_block.1." + ".".join(rest)
        elif parts[0] == "up_blocks":
            i, kind, j = int(parts[1]), parts[2], int(parts[3])
            rest = parts[4:]
            if kind == "resnets":
                new = f"output_blocks.{i * (n + 1) + j}.0.{RESNET[rest[0]]}.{rest[1]}"
            elif kind == "attentions":
                new = f"output_blocks.{i * (n + 1) + j}.1." + ".".join(rest)
            else:
                level = len(attention_levels) - 1 - i
                pos = 2 if attention_levels[level] else 1
                new = f"output_blocks.{i * (n + 1) + n}.{pos}.conv.{rest[1]}"
        if new is None:
            sys.exit(f"unmapped UNet tensor {name}")
        out["model.diffusion_model." + new] = t
    return out


def vae_to_original(sd, levels):
    out = {}
    for name, t in sd.items():
        parts = name.split(".")
        side = parts[0]
        new = None
        if side in ("quant_conv", "post_quant_conv"):
            new = name
        elif parts[1] in ("conv_in", "conv_out"):
            new = name
        elif parts[1] == "conv_norm_out":
            new = f"{side}.norm_out.{parts[2]}"
        elif parts[1] == "mid_block":
            kind, j, rest = parts[2], int(parts[3]), parts[4:]
            if kind == "resnets":
                new = f"{side}.mid.block_{j + 1}.{rest[0]}.{rest[1]}"
            else:
                m = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}[rest[0]]
                param = rest[-1]
                new = f"{side}.mid.attn_1.{m}.{param}"
                if m != "norm" and param == "weight":
                    t = t.reshape(*t.shape, 1, 1)
        else:
            i, kind, j, rest = int(parts[2]), parts[3], int(parts[4]), parts[5:]
            level = i if side == "encoder" else levels - 1 - i
            group = "down" if side == "encoder" else "up"
            if kind == "resnets":
                m = "nin_shortcut" if rest[0] == "conv_shortcut" else rest[0]
                new = f"{side}.{group}.{level}.block.{j}.{m}.{rest[1]}"
            else:
                s = "downsample" if side == "encoder" else "upsample"
                new = f"{side}.{group}.{level}.{s}.conv.{rest[1]}"
        out["first_stage_model." + new] = t
    return out


def clip_to_open_clip(sd, prefix, extra_layer=None):
    """transformers CLIPTextModel(WithProjection) names -> OpenCLIP names under prefix."""
    out = {}
    layers = {}
    for name, t in sd.items():
        if name.endswith("position_ids"):
            continue
        if name == "text_projection.weight":
            out[prefix + "text_projection"] = t.t().contiguous()
            continue
        rest = name.removeprefix("text_model.")
        if rest == "embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = t
        elif rest == "embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = t
        elif rest.startswith("final_layer_norm."):
            out[prefix + "ln_final." + rest.split(".")[-1]] = t
        else:
            p = rest.split(".")  # encoder.layers.I.module...
            i, module, param = int(p[2]), ".".join(p[3:-1]), p[-1]
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                layers.setdefault((i, param), {})[module[10]] = t
                continue
            m = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
                 "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}[module]
            out[f"{prefix}transformer.resblocks.{i}.{m}.{param}"] = t
    for (i, param), qkv in layers.items():
        out[f"{prefix}transformer.resblocks.{i}.attn.in_proj_{param}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
    if extra_layer is not None:
        # SD 2.x stores all 24 OpenCLIP blocks; diffusers keeps 23 (penultimate output).
        n = max(int(k.split(".resblocks.")[1].split(".")[0]) for k in out if ".resblocks." in k)
        for k in list(out):
            if f".resblocks.{n}." in k:
                out[k.replace(f".resblocks.{n}.", f".resblocks.{n + 1}.")] = torch.randn_like(out[k].float()).to(out[k].dtype)
    out[prefix + "logit_scale"] = torch.tensor(4.6052)
    return out


def assert_same(name, expected, loaded):
    # transformers >= 5 leaves out the `text_model.` prefix in state_dict().
    strip = lambda sd: {k.removeprefix("text_model."): v for k, v in sd.items()}
    expected, loaded = strip(expected), strip(loaded)
    missing = set(expected) ^ set(loaded)
    if missing:
        sys.exit(f"{name}: names differ after from_single_file: {sorted(missing)[:8]}")
    for k, v in expected.items():
        if not torch.equal(v.to(loaded[k].dtype), loaded[k]):
            sys.exit(f"{name}: {k} differs after from_single_file")
    print(f"  {name}: {len(expected)} tensors identical after diffusers' from_single_file")


def shapes(sd):
    return {k: list(v.shape) for k, v in sorted(sd.items())}


def sd1():
    from diffusers import StableDiffusionPipeline
    config = json.loads((TINY / "unet/config.json").read_text())
    attention = [t.startswith("CrossAttn") for t in config["down_block_types"]]
    unet = load_file(TINY / "unet/diffusion_pytorch_model.safetensors")
    vae = load_file(TINY / "vae/diffusion_pytorch_model.safetensors")
    text = load_file(TINY / "text_encoder/model.safetensors")
    vae_levels = len(json.loads((TINY / "vae/config.json").read_text())["block_out_channels"])
    original = {}
    original.update(unet_to_original(unet, config["layers_per_block"], attention))
    original.update(vae_to_original(vae, vae_levels))
    original.update({"cond_stage_model.transformer." + k: v for k, v in text.items()})
    original = {k: v.contiguous() for k, v in original.items()}
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "tiny-sd.safetensors"
    save_file(original, path)
    pipe = StableDiffusionPipeline.from_single_file(
        str(path), config=str(TINY), local_files_only=True, torch_dtype=torch.float16,
        safety_checker=None)
    assert_same("unet", unet, pipe.unet.state_dict())
    assert_same("vae", vae, pipe.vae.state_dict())
    te = {k: v for k, v in pipe.text_encoder.state_dict().items() if not k.endswith("position_ids")}
    assert_same("text_encoder", {k: v for k, v in text.items() if not k.endswith("position_ids")}, te)
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")


def sdxl_weights():
    """tests/fixtures/tiny-sdxl as one original-layout SDXL checkpoint, checked with diffusers."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer
    sys.path.insert(0, str(ROOT / "tools/parity"))
    import make_tiny_sd  # the CLIP tokenizer files, built from the shipped BPE list

    config = json.loads((TINY_SDXL / "unet/config.json").read_text())
    attention = [t.startswith("CrossAttn") for t in config["down_block_types"]]
    unet = load_file(TINY_SDXL / "unet/diffusion_pytorch_model.safetensors")
    vae = load_file(TINY_SDXL / "vae/diffusion_pytorch_model.safetensors")
    text = load_file(TINY_SDXL / "text_encoder/model.safetensors")
    text2 = load_file(TINY_SDXL / "text_encoder_2/model.safetensors")
    vae_levels = len(json.loads((TINY_SDXL / "vae/config.json").read_text())["block_out_channels"])
    original = {}
    original.update(unet_to_original(unet, config["layers_per_block"], attention))
    original.update(vae_to_original(vae, vae_levels))
    original.update({"conditioner.embedders.0.transformer." + with_text_model(k): v
                     for k, v in text.items() if not k.endswith("position_ids")})
    original.update(clip_to_open_clip(text2, "conditioner.embedders.1.model."))
    original = {k: v.to(torch.float16).contiguous() for k, v in original.items()}
    path = OUT / "tiny-sdxl.safetensors"
    save_file(original, path)
    with tempfile.TemporaryDirectory() as tmp:
        make_tiny_sd.write_tokenizer(Path(tmp) / "tokenizer")
        tok = CLIPTokenizer.from_pretrained(Path(tmp) / "tokenizer", local_files_only=True)
        tok2 = CLIPTokenizer.from_pretrained(Path(tmp) / "tokenizer", local_files_only=True, pad_token="!")
    # diffusers tells the two text encoders apart by their width; both are 8 wide here, so its
    # pipeline loader would convert CLIP-L's tensors for the second encoder. The second encoder
    # is therefore passed in, and checked below with diffusers' own OpenCLIP conversion.
    encoder_2 = CLIPTextModelWithProjection.from_pretrained(
        TINY_SDXL / "text_encoder_2", local_files_only=True, torch_dtype=torch.float16)
    pipe = StableDiffusionXLPipeline.from_single_file(
        str(path), config=str(TINY_SDXL), local_files_only=True, torch_dtype=torch.float16,
        tokenizer=tok, tokenizer_2=tok2, text_encoder_2=encoder_2)
    print("sdxl (weights):")
    assert_same("unet", unet, pipe.unet.state_dict())
    assert_same("vae", vae, pipe.vae.state_dict())
    plain = lambda sd: {with_text_model(k): v for k, v in sd.items() if not k.endswith("position_ids")}
    assert_same("text_encoder", plain(text), plain(pipe.text_encoder.state_dict()))
    converted = convert_open_clip_checkpoint(encoder_2, load_file(path), prefix="conditioner.embedders.1.model.")
    assert_same("text_encoder_2 (its OpenCLIP conversion)", plain(text2), plain(converted))
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")


def with_text_model(name):
    """transformers' CLIP names with the `text_model.` prefix checkpoints use."""
    if name.startswith("text_model.") or name.startswith("text_projection"):
        return name
    return "text_model." + name


def build(tmp, unet_cfg, text_cfgs, family):
    """A random tiny pipeline folder, its original-layout tensors and diffusers tensors."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_cfg)
    vae = AutoencoderKL(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=32,
                        layers_per_block=1)
    texts = []
    for cls, cfg in text_cfgs:
        model = (CLIPTextModelWithProjection if cls == "proj" else CLIPTextModel)(CLIPTextConfig(**cfg))
        texts.append(model)
    attention = [t.startswith("CrossAttn") for t in unet_cfg["down_block_types"]]
    original = {}
    original.update(unet_to_original(unet.state_dict(), unet_cfg["layers_per_block"], attention))
    original.update(vae_to_original(vae.state_dict(), 2))
    if family == "sd2":
        original.update(clip_to_open_clip(texts[0].state_dict(), "cond_stage_model.model.", extra_layer=True))
    else:
        original.update({"conditioner.embedders.0.transformer." + with_text_model(k): v
                         for k, v in texts[0].state_dict().items() if not k.endswith("position_ids")})
        original.update(clip_to_open_clip(texts[1].state_dict(), "conditioner.embedders.1.model."))
    diffusers = {"unet": unet.state_dict(), "vae": vae.state_dict()}
    for i, t in enumerate(texts):
        diffusers["text_encoder" if i == 0 else "text_encoder_2"] = {
            with_text_model(k): v for k, v in t.state_dict().items() if not k.endswith("position_ids")}
    return unet, vae, texts, original, diffusers


def save_folder(folder, unet, vae, texts, family):
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPTokenizer
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    names = ["text_encoder", "text_encoder_2"]
    for name, t in zip(names, texts):
        t.save_pretrained(folder / name)
    EulerDiscreteScheduler(beta_schedule="scaled_linear").save_pretrained(folder / "scheduler")
    tok = CLIPTokenizer(str(TINY / "tokenizer/vocab.json"), str(TINY / "tokenizer/merges.txt"))
    for name in (["tokenizer", "tokenizer_2"] if family == "sdxl" else ["tokenizer"]):
        tok.save_pretrained(folder / name)
    index = {"_class_name": "StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline",
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "EulerDiscreteScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}
    if family == "sdxl":
        index.update({"text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                      "tokenizer_2": ["transformers", "CLIPTokenizer"], "force_zeros_for_empty_prompt": True})
    else:
        index.update({"safety_checker": [None, None], "feature_extractor": [None, None],
                      "requires_safety_checker": False})
    (folder / "model_index.json").write_text(json.dumps(index))


def keys_fixture(family):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    text = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_attention_heads=1,
                max_position_embeddings=77, layer_norm_eps=1e-5)
    if family == "sd2":
        unet_cfg = dict(block_out_channels=[64, 128], layers_per_block=2, cross_attention_dim=64,
                        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], attention_head_dim=[1, 2],
                        use_linear_projection=True, norm_num_groups=32, sample_size=8)
        texts = [("plain", dict(text, num_hidden_layers=2, hidden_act="gelu"))]
    else:
        unet_cfg = dict(block_out_channels=[32, 64, 128], layers_per_block=2, cross_attention_dim=192,
                        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                        attention_head_dim=[1, 1, 2], transformer_layers_per_block=[1, 2, 3],
                        use_linear_projection=True, norm_num_groups=32, sample_size=8,
                        addition_embed_type="text_time", addition_time_embed_dim=8,
                        projection_class_embeddings_input_dim=128 + 6 * 8)
        texts = [("plain", dict(text, num_hidden_layers=2, hidden_act="quick_gelu")),
                 ("proj", dict(text, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                               num_attention_heads=2, hidden_act="gelu", projection_dim=128))]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        unet, vae, text_models, original, diffusers = build(tmp, unet_cfg, texts, family)
        folder = tmp / "folder"
        save_folder(folder, unet, vae, text_models, family)
        path = tmp / "model.safetensors"
        save_file({k: v.contiguous() for k, v in original.items()}, path)
        cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
        extra = {} if family == "sdxl" else {"safety_checker": None}
        pipe = cls.from_single_file(str(path), config=str(folder), local_files_only=True, **extra)
        print(f"{family}:")
        assert_same("unet", diffusers["unet"], pipe.unet.state_dict())
        assert_same("vae", diffusers["vae"], pipe.vae.state_dict())
        for name in [n for n in diffusers if n.startswith("text_encoder")]:
            loaded = {k: v for k, v in getattr(pipe, name).state_dict().items() if not k.endswith("position_ids")}
            assert_same(name, diffusers[name], loaded)
    fixture = {"original": shapes(original), "diffusers": {c: shapes(sd) for c, sd in diffusers.items()}}
    path = OUT / f"tiny-{family}-keys.json"
    path.write_text(json.dumps(fixture, indent=0, sort_keys=True) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    only = sys.argv[1:] or ["sd1", "sdxl-weights", "sd2", "sdxl"]
    if "sd1" in only:
        sd1()
    if "sdxl-weights" in only:
        sdxl_weights()
    for family in ("sd2", "sdxl"):
        if family in only:
            keys_fixture(family)
