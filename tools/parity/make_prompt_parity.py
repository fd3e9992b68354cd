#!/usr/bin/env python3
"""A1111 prompt-handling references for the tiny SD 1.x model.

Run from the repository root, after make_tiny_sd.py (it reads tests/fixtures/tiny-sd/):

    python3 tools/parity/make_prompt_parity.py [--trajectories]

It (re)creates, deterministically and without network access, tests/fixtures/prompt-parity/:

* text_encoder/            tiny-sd's CLIP text encoder with seeded, non-trivial LayerNorm
                           parameters (fp16 safetensors, `text_model.` prefix, same config.json)
* embeddings/lbstyle.safetensors   a 3-vector textual-inversion embedding (`emb_params`, f32)
* manifest.json + raw little-endian .f32 / .u8 files: per case the A1111 conditioning (prompt
  schedule, 75-token chunks, multipliers, embedding fixes, encoded tensors) and the img2img
  result of a DDIM loop that uses it the way A1111 does (per-step schedule choice; cond and
  uncond batched only when their token lengths are equal).

The prompt rules below are a re-implementation, from their described behaviour, of what
AUTOMATIC1111's web UI does (prompt_parser.py, sd_hijack_clip.py, sd_emphasis.py, textual
inversion): no A1111 code is used. They are checked against the 120 prompts with A1111's outputs
in /work/shared/testdata/a1111-prompts.json. See tools/parity/README.md.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from PIL import Image
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_sd as tiny  # noqa: E402  (paths, Writer, np32, jsonable, versions, BPE cross-check)

ROOT = tiny.ROOT
MODEL_DIR = tiny.MODEL_DIR
OUT_DIR = ROOT / "tests/fixtures/prompt-parity"
INPUT_PNG = ROOT / "tests/fixtures/parity/in_coffee_64x64.png"
A1111_PROMPTS = [Path("/work/shared/testdata/a1111-prompts.json"), ROOT / "tests/data/a1111-prompts.json"]

STEPS = 10
STRENGTH = 0.5
CFG = 7.5
SEED = 1234
WIDTH = HEIGHT = 64

LN_SEED = 201  # LayerNorm perturbation of the text encoder
LN_WEIGHT_STD, LN_BIAS_STD, LN_BIAS_MEAN = 0.3, 0.2, 0.1
EMB_NAME, EMB_SEED, EMB_VECTORS = "lbstyle", 202, 3

TRAJECTORIES = "--trajectories" in sys.argv[1:]  # also write {case}.latents_trajectory.f32 (not committed)

CHUNK = 75  # prompt tokens per chunk (77 with start and end)
COMMA_BACKTRACK = 20  # A1111 option comma_padding_backtrack (default 20)


# =============================================================================================
# 1. Attention: "(x)", "[x]", "(x:w)", escapes, BREAK
# =============================================================================================
ATTENTION_TOKEN = re.compile(
    r"""
      \\[()\[\]\\]          # \( \) \[ \] \\  -> the character itself
    | \\                    # any other backslash -> dropped
    | [(\[]                 # opening brackets
    | :\s*([+-]?[.\d]+)\s*\)  # ":w)" closes a round bracket with weight w
    | [)\]]                 # closing brackets
    | [^\\()\[\]:]+         # text
    | :                     # a colon that is not part of ":w)"
    """,
    re.X,
)
BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*", re.S)
ROUND_MULT, SQUARE_MULT = 1.1, 1 / 1.1


def parse_prompt_attention(text):
    """[[text, weight], ...]. Brackets multiply the weights of everything appended since they
    opened; unclosed ones apply at the end (all round ones first, then square ones); a closing
    bracket without an open one is text. BREAK inside text gives ["BREAK", -1] (a bracket around
    it multiplies that -1 too, and then it is no longer a break). Adjacent equal weights merge."""
    res = []
    round_open, square_open = [], []

    def multiply_from(start, factor):
        for item in res[start:]:
            item[1] *= factor

    for m in ATTENTION_TOKEN.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token[0] == "\\":
            res.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(res))
        elif token == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            multiply_from(round_open.pop(), float(weight))  # float("1.2.3") raises, as in A1111
        elif token == ")" and round_open:
            multiply_from(round_open.pop(), ROUND_MULT)
        elif token == "]" and square_open:
            multiply_from(square_open.pop(), SQUARE_MULT)
        else:
            for i, part in enumerate(BREAK_SPLIT.split(token)):
                if i:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])
    for start in round_open:
        multiply_from(start, ROUND_MULT)
    for start in square_open:
        multiply_from(start, SQUARE_MULT)
    if not res:
        res = [["", 1.0]]
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res.pop(i + 1)[0]
        else:
            i += 1
    return res


# =============================================================================================
# 2. Prompt editing and alternation: [a:b:when], [a:when], [a::when], [a|b]
# =============================================================================================
class ScheduleSyntaxError(Exception):
    pass


# "[WS] NUMBER [WS] ]" where NUMBER is a signed int or decimal with optional exponent
WHEN_AND_CLOSE = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))\s*\]")


def _items(s, i):
    """A run of prompt items from s[i]: plain text (any characters but \\ [ ] ( ) : |, plus
    backslash escapes of any character but a newline) and bracket constructs. Stops before
    ':', '|', ']', ')', the end, or a bracket or backslash that does not parse."""
    items, n = [], len(s)
    while i < n:
        c = s[i]
        if c in ":|])":
            break
        if c in "([":
            got = _construct(s, i)
            if got is None:
                break
            node, i = got
            items.append(node)
            continue
        j = i
        while j < n:
            if s[j] == "\\" and j + 1 < n and s[j + 1] != "\n":
                j += 2
            elif s[j] not in "\\[]():|":
                j += 1
            else:
                break
        if j == i:  # a backslash at the end or before a newline
            break
        items.append(s[i:j])
        i = j
    return items, i


def _construct(s, i):
    """The construct opening at s[i] ('(' or '['), or None if it does not parse. Nodes: plain
    text is a str; "(..)", "(..:..)" and "[..]" are lists that keep their bracket characters;
    ("edit", before | None, after, when_text) and ("alt", [option items, ...])."""
    n = len(s)
    first, j = _items(s, i + 1)
    if s[i] == "(":
        if j < n and s[j] == ")":
            return ["(", *first, ")"], j + 1
        if j < n and s[j] == ":":
            second, k = _items(s, j + 1)
            if k < n and s[k] == ")":
                return ["(", *first, ":", *second, ")"], k + 1
        return None
    if j >= n:
        return None
    if s[j] == "]":
        return ["[", *first, "]"], j + 1
    if s[j] == "|":
        options = [first]
        while j < n and s[j] == "|":
            option, j = _items(s, j + 1)
            options.append(option)
        if j < n and s[j] == "]":
            return ("alt", options), j + 1
        return None
    if s[j] == ":":
        m = WHEN_AND_CLOSE.match(s, j + 1)
        if m:  # [after:when]
            return ("edit", None, first, m.group(1)), m.end()
        second, k = _items(s, j + 1)
        if k < n and s[k] == ":":
            m = WHEN_AND_CLOSE.match(s, k + 1)
            if m:  # [before:after:when]
                return ("edit", first, second, m.group(1)), m.end()
    return None


def _parse_schedule_tree(s):
    """Top level: items, and also any of ( ) [ ] : that do not form a construct, as text. A '|'
    outside an alternation or a dangling backslash makes the whole prompt unparsable."""
    items, i, n = [], 0, len(s)
    while i < n:
        more, i = _items(s, i)
        items += more
        if i >= n:
            break
        if s[i] in "()[]:":
            items.append(s[i])
            i += 1
        else:
            raise ScheduleSyntaxError(i)
    return items


def prompt_schedule(prompt, steps):
    """[[end_at_step, text], ...] like A1111's get_learned_conditioning_prompt_schedules([prompt],
    steps)[0] (no hires pass, new-style scheduling). A `when` containing '.' is a fraction of
    `steps`, otherwise a step number; min(steps, int(value)) is the switch step and becomes an
    end_at_step if >= 1. Any alternation adds every step 1..steps. At step t an edit gives
    `before` if t <= when else `after`; an alternation gives option (t-1) mod n, of which (as in
    a1111-prompts.json) only the FIRST item is rendered: '[x (y)|z]' gives 'x ' then 'z'."""
    try:
        tree = _parse_schedule_tree(prompt)
    except ScheduleSyntaxError:
        return [[steps, prompt]]
    ends, when_of = {steps}, {}

    def collect(node):
        if isinstance(node, str):
            return
        if isinstance(node, list):
            for x in node:
                collect(x)
        elif node[0] == "edit":
            _, before, after, text = node
            value = float(text) * steps if "." in text else float(text)
            when_of[id(node)] = min(steps, int(value))
            if when_of[id(node)] >= 1:
                ends.add(when_of[id(node)])
            collect(before or [])
            collect(after)
        else:
            ends.update(range(1, steps + 1))
            for option in node[1]:
                collect(option)

    def render(node, step):
        if isinstance(node, str):
            return node
        if isinstance(node, list):
            return "".join(render(x, step) for x in node)
        if node[0] == "edit":
            _, before, after, _ = node
            return render(before or [], step) if step <= when_of[id(node)] else render(after, step)
        option = node[1][(step - 1) % len(node[1])]
        return render(option[0], step) if option else ""

    collect(tree)
    return [[t, render(tree, t)] for t in sorted(ends)]


def schedule_index(schedule, k):
    """The entry A1111 uses at denoiser step k (0 = the first step actually run)."""
    for i, (end_at_step, _) in enumerate(schedule):
        if k <= end_at_step:
            return i
    return 0


# =============================================================================================
# 3. Tokenizing a line into 75-token chunks
# =============================================================================================
class PromptTokenizer:
    def __init__(self, tokenizer, embeddings):
        self.tok = tokenizer
        self.id_start = tokenizer.bos_token_id
        self.id_end = tokenizer.eos_token_id  # SD 1.x pads with the end token too
        self.comma = tokenizer.get_vocab()[",</w>"]
        self.embeddings = embeddings  # name -> tensor [n, hidden]
        # embedding lookup: first token id -> [(ids, name)], longest first
        self.lookup = {}
        for name in sorted(embeddings):
            ids = self.tokenize([name])[0]
            self.lookup.setdefault(ids[0], []).append((ids, name))
            self.lookup[ids[0]].sort(key=lambda x: len(x[0]), reverse=True)

    def tokenize(self, texts):
        return self.tok(texts, truncation=False, add_special_tokens=False)["input_ids"]

    def find_embedding(self, tokens, position):
        for ids, name in self.lookup.get(tokens[position], []):
            if tokens[position:position + len(ids)] == ids:
                return name, len(ids)
        return None, 0

    def empty_chunk(self):
        return {"tokens": [self.id_start] + [self.id_end] * (CHUNK + 1), "multipliers": [1.0] * (CHUNK + 2),
                "fixes": [], "padding_chunk": True}

    def tokenize_line(self, line):
        parsed = parse_prompt_attention(line)
        tokenized = self.tokenize([text for text, _ in parsed])
        chunks = []
        cur = {"tokens": [], "multipliers": [], "fixes": []}
        last_comma = -1

        def close_chunk():
            nonlocal cur, last_comma
            pad = CHUNK - len(cur["tokens"])
            cur["tokens"] = [self.id_start] + cur["tokens"] + [self.id_end] * pad + [self.id_end]
            cur["multipliers"] = [1.0] + cur["multipliers"] + [1.0] * pad + [1.0]
            chunks.append(cur)
            cur = {"tokens": [], "multipliers": [], "fixes": []}
            last_comma = -1

        for tokens, (text, weight) in zip(tokenized, parsed):
            if text == "BREAK" and weight == -1:
                close_chunk()
                continue
            position = 0
            while position < len(tokens):
                token = tokens[position]
                if token == self.comma:
                    last_comma = len(cur["tokens"])
                elif (len(cur["tokens"]) == CHUNK and last_comma != -1
                      and len(cur["tokens"]) - last_comma <= COMMA_BACKTRACK):
                    # move what follows the last comma to the next chunk (its fixes stay behind,
                    # as in A1111)
                    cut = last_comma + 1
                    moved_t, moved_m = cur["tokens"][cut:], cur["multipliers"][cut:]
                    cur["tokens"], cur["multipliers"] = cur["tokens"][:cut], cur["multipliers"][:cut]
                    close_chunk()
                    cur["tokens"], cur["multipliers"] = moved_t, moved_m
                if len(cur["tokens"]) == CHUNK:
                    close_chunk()
                name, n_ids = self.find_embedding(tokens, position)
                if name is None:
                    cur["tokens"].append(token)
                    cur["multipliers"].append(weight)
                    position += 1
                    continue
                n_vec = int(self.embeddings[name].shape[0])
                if len(cur["tokens"]) + n_vec > CHUNK:
                    close_chunk()
                cur["fixes"].append([len(cur["tokens"]), name])
                cur["tokens"] += [0] * n_vec
                cur["multipliers"] += [weight] * n_vec
                position += n_ids
        if cur["tokens"] or not chunks:
            close_chunk()
        return chunks


# =============================================================================================
# 4. Encoding (A1111 "Original" emphasis, clip skip, textual-inversion vectors)
# =============================================================================================
class PromptEncoder:
    def __init__(self, text_encoder, ptok, clip_skip):
        self.te, self.ptok, self.clip_skip = text_encoder, ptok, clip_skip
        # transformers 5's CLIPTextModel holds the modules itself; 4.x under .text_model
        self.inner = getattr(text_encoder, "text_model", text_encoder)

    def encode_batch(self, chunks):
        """One forward of a batch of 77-token chunks; returns z [B, 77, C] after emphasis and the
        means (over the whole batch tensor) before and after applying the multipliers."""
        tokens = torch.tensor([c["tokens"] for c in chunks], dtype=torch.int64)
        fixes = [c["fixes"] for c in chunks]

        def put_vectors(module, args, output):
            out = output.clone()
            for b, fx in enumerate(fixes):
                for offset, name in fx:
                    vec = self.ptok.embeddings[name].to(out.dtype)
                    n = min(out.shape[1] - offset - 1, vec.shape[0])
                    out[b, offset + 1: offset + 1 + n] = vec[:n]
            return out

        hook = self.inner.embeddings.token_embedding.register_forward_hook(put_vectors)
        try:
            out = self.te(input_ids=tokens, output_hidden_states=True)
        finally:
            hook.remove()
        if self.clip_skip <= 1:
            z = out.last_hidden_state
        else:
            z = self.inner.final_layer_norm(out.hidden_states[-self.clip_skip])
        multipliers = torch.asarray([c["multipliers"] for c in chunks])  # float32
        mean_before = z.mean()
        z = z * multipliers.reshape(multipliers.shape + (1,)).expand(z.shape)
        mean_after = z.mean()
        z = z * (mean_before / mean_after)
        return z, float(mean_before), float(mean_after)

    def conditioning(self, prompt, steps):
        """A1111's get_learned_conditioning for one prompt: every schedule text is encoded in ONE
        batch, chunk index by chunk index; texts with fewer chunks get empty chunks (start + 76
        end tokens) so all have the same count, and the emphasis mean is taken over the batch."""
        schedule = prompt_schedule(prompt, steps)
        per_text = [self.ptok.tokenize_line(text) for _, text in schedule]
        n_chunks = max(len(c) for c in per_text)
        zs, stats = [], []
        for i in range(n_chunks):
            batch = [c[i] if i < len(c) else self.ptok.empty_chunk() for c in per_text]
            z, before, after = self.encode_batch(batch)
            zs.append(z)
            stats.append((before, after))
            for c, chunk in zip(per_text, batch):
                if i >= len(c):
                    c.append(chunk)
        z = torch.cat(zs, dim=1)  # [len(schedule), 77 * n_chunks, C]
        entries = []
        for j, ((end_at_step, text), chunks) in enumerate(zip(schedule, per_text)):
            entries.append({"end_at_step": end_at_step, "text": text, "chunks": chunks, "z": z[j:j + 1]})
        return schedule, entries, stats


# =============================================================================================
# 5. The perturbed text encoder and the embedding
# =============================================================================================
def write_text_encoder(dst: Path):
    """tiny-sd's CLIP text encoder with every LayerNorm given seeded, non-trivial parameters
    (weight 1 + 0.3*randn, bias 0.1 + 0.2*randn, drawn in float32 in sorted key order, then
    rounded to float16). Everything else is byte-identical to tiny-sd."""
    src = MODEL_DIR / "text_encoder"
    tensors = safetensors.torch.load_file(src / "model.safetensors")
    assert all(k.startswith("text_model.") for k in tensors) and all(v.dtype == torch.float16 for v in tensors.values())
    ln_keys = sorted(k for k in tensors if "layer_norm" in k)
    assert len(ln_keys) == 2 * (2 * tiny.TEXT_CONFIG["num_hidden_layers"] + 1), ln_keys
    g = torch.Generator("cpu").manual_seed(LN_SEED)
    for k in ln_keys:
        shape = tensors[k].shape
        noise = torch.randn(shape, generator=g, dtype=torch.float32)
        if k.endswith(".weight"):
            tensors[k] = (1.0 + LN_WEIGHT_STD * noise).to(torch.float16)
        else:
            assert k.endswith(".bias")
            tensors[k] = (LN_BIAS_MEAN + LN_BIAS_STD * noise).to(torch.float16)
    dst.mkdir(parents=True)
    shutil.copy(src / "config.json", dst / "config.json")
    safetensors.torch.save_file({k: v.contiguous() for k, v in sorted(tensors.items())},
                                dst / "model.safetensors", metadata={"format": "pt"})
    return ln_keys


def write_embedding(dst: Path):
    g = torch.Generator("cpu").manual_seed(EMB_SEED)
    vec = torch.randn((EMB_VECTORS, tiny.TEXT_CONFIG["hidden_size"]), generator=g, dtype=torch.float32) * 0.5
    dst.mkdir(parents=True)
    path = dst / f"{EMB_NAME}.safetensors"
    safetensors.torch.save_file({"emb_params": vec.contiguous()}, path)
    return path


def load_embedding(path: Path):
    """A1111 accepts a file holding exactly one tensor, of any name; 1-D becomes one vector."""
    data = safetensors.torch.load_file(path)
    assert len(data) == 1
    vec = next(iter(data.values())).detach().to(torch.float32)
    return vec.unsqueeze(0) if vec.dim() == 1 else vec


# =============================================================================================
# 6. img2img (diffusers' StableDiffusionImg2ImgPipeline, DDIM, "mean" latents) with A1111 conds
# =============================================================================================
class Models:
    def __init__(self):
        self.unet = UNet2DConditionModel.from_pretrained(MODEL_DIR, subfolder="unet", torch_dtype=torch.float32,
                                                         local_files_only=True).eval()
        self.vae = AutoencoderKL.from_pretrained(MODEL_DIR, subfolder="vae", torch_dtype=torch.float32,
                                                 local_files_only=True).eval()
        self.scheduler_config = DDIMScheduler.load_config(MODEL_DIR / "scheduler")
        self.processor = VaeImageProcessor(vae_scale_factor=2 ** (len(self.vae.config.block_out_channels) - 1))

    def scheduler(self):
        return DDIMScheduler.from_config(self.scheduler_config)


def init_latents(models, image):
    x = models.processor.preprocess(image).to(torch.float32)  # u8/255*2-1, NCHW
    mean = models.vae.encode(x).latent_dist.mode()  # "mean" mode: posterior mean, no sample
    return models.vae.config.scaling_factor * mean


def run_img2img(models, image, cond_z, uncond_z, cond_sched, uncond_sched, record_both=False):
    """cond_z / uncond_z: lists of [1, T, C] tensors, one per schedule entry."""
    sched = models.scheduler()
    sched.set_timesteps(STEPS)
    init_timestep = min(int(STEPS * STRENGTH), STEPS)
    t_start = max(STEPS - init_timestep, 0)
    timesteps = sched.timesteps[t_start * sched.order:]
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(t_start * sched.order)
    generator = torch.Generator("cpu").manual_seed(SEED)
    lat0 = init_latents(models, image)
    noise = randn_tensor(lat0.shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
    latents = sched.add_noise(lat0, noise, timesteps[:1])
    traj = [latents.clone()]
    passes, which_c, which_u, checks = [], [], [], []
    for k, t in enumerate(timesteps):
        ci, ui = schedule_index(cond_sched, k), schedule_index(uncond_sched, k)
        c, u = cond_z[ci], uncond_z[ui]
        x = sched.scale_model_input(latents, t)
        if c.shape[1] == u.shape[1]:
            out = models.unet(torch.cat([x] * 2), t, encoder_hidden_states=torch.cat([u, c]), return_dict=False)[0]
            eps_u, eps_c = out.chunk(2)
            passes.append("batched")
            if record_both:  # the separate path must agree
                su = models.unet(x, t, encoder_hidden_states=u, return_dict=False)[0]
                sc = models.unet(x, t, encoder_hidden_states=c, return_dict=False)[0]
                checks.append(max(float((su - eps_u).abs().max()), float((sc - eps_c).abs().max())))
        else:
            eps_u = models.unet(x, t, encoder_hidden_states=u, return_dict=False)[0]
            eps_c = models.unet(x, t, encoder_hidden_states=c, return_dict=False)[0]
            passes.append("separate")
        eps = eps_u + CFG * (eps_c - eps_u)
        latents = sched.step(eps, t, latents, eta=0.0, generator=generator, return_dict=False)[0]
        traj.append(latents.clone())
        which_c.append(ci)
        which_u.append(ui)
    decoded = models.vae.decode(latents / models.vae.config.scaling_factor, return_dict=False,
                                generator=generator)[0]
    return {
        "timesteps": [int(t) for t in timesteps], "init_latents": lat0, "latents": latents, "traj": torch.stack(traj),
        "decoded": decoded, "passes": passes, "which_cond": which_c, "which_uncond": which_u,
        "separate_vs_batched_max_abs": max(checks) if checks else None,
    }


def to_u8(decoded):
    """A1111's decode: trunc(255 * clamp((x + 1) / 2, 0, 1)), HWC RGB."""
    x = torch.clamp((decoded[0] + 1.0) / 2.0, min=0.0, max=1.0)
    return (255.0 * np.moveaxis(x.numpy(), 0, 2)).astype(np.uint8)


# =============================================================================================
# 7. Cases
# =============================================================================================
LONG_PROMPT = (
    "a cup of coffee on a wooden table, morning light, soft shadows, white ceramic mug, latte art, "
    "steam rising, cozy cafe interior, warm colors, shallow depth of field, bokeh background, "
    "film grain, sharp focus, natural window light, rustic brick wall, brown and cream tones, "
    "cinematic composition, golden hour glow, linen napkin, silver spoon, "
    "(croissant on a small plate:1.2), folded newspaper, green plant in the corner, quiet sunday, "
    "vintage photograph, kodak portra, 35mm lens, award winning photo"
)

CASES = [
    dict(name="emphasis", prompt="a (cup:1.3) of [coffee] on a ((wooden)) table", negative_prompt="blurry, lowres",
         clip_skip=1, why="round, square, nested and explicit weights; emphasis mean rescale"),
    dict(name="break", prompt="a cup of coffee BREAK on a wooden table", negative_prompt="blurry", clip_skip=1,
         why="BREAK closes a chunk: cond 2 chunks, uncond 1 -> separate UNet passes"),
    dict(name="clip_skip_2", prompt="a cup of coffee on a wooden table", negative_prompt="blurry, lowres", clip_skip=2,
         why="hidden_states[-2] + final LayerNorm, for cond and uncond"),
    dict(name="embedding", prompt="a cup of coffee, (lbstyle:1.2)", negative_prompt="blurry, lbstyle", clip_skip=1,
         why="textual inversion: 3 placeholder tokens, weighted in the prompt, plain in the negative"),
    dict(name="long_prompt", prompt=LONG_PROMPT, negative_prompt="blurry", clip_skip=1,
         why="over 75 tokens: 2 chunks with the comma backtrack (weighted tokens move); uncond 1 chunk -> separate"),
    dict(name="editing", prompt="a [cat:dog:0.3] on a table", negative_prompt="", clip_skip=1,
         why="prompt editing at 0.3*10 = step 3: counter 0..3 -> entry 0, 4 -> entry 1; empty negative prompt"),
    dict(name="alternation", prompt="a [cat|dog] on a table", negative_prompt="lowres", clip_skip=1,
         why="alternation: 10 schedule entries (end_at_step 1..10); counter k uses the first with k <= end: "
             "entries 0, 0, 1, 2, 3 = cat, cat, dog, cat, dog"),
    dict(name="editing_emphasis", prompt="a [(cat:1.5):dog:0.3] on a table", negative_prompt="", clip_skip=1,
         why="A1111 encodes a prompt's schedule texts as ONE batch: the emphasis mean is over both texts, "
             "so the unweighted 'a dog on a table' is rescaled too"),
    dict(name="editing_chunks", prompt="a [cup of coffee:" + LONG_PROMPT.split(", ", 1)[1] + ":0.3]",
         negative_prompt="blurry, lowres", clip_skip=1,
         why="schedule texts with different chunk counts: the 1-chunk text gets an empty chunk (start + 76 end "
             "tokens) so both have 2 (entry 0 for k = 0..3, entry 1 at k = 4); uncond 1 chunk -> separate"),
]


# =============================================================================================
# 8. Checks
# =============================================================================================
def check_parser_against_a1111():
    path = next((p for p in A1111_PROMPTS if p.exists()), None)
    if path is None:
        sys.exit(f"a1111-prompts.json not found in {[str(p) for p in A1111_PROMPTS]}")
    data = json.loads(path.read_text())
    bad_att = [e["prompt"] for e in data if parse_prompt_attention(e["prompt"]) != e["attention"]]
    bad_sch = [e["prompt"] for e in data if prompt_schedule(e["prompt"], e["steps"]) != e["schedule"]]
    assert not bad_att, bad_att
    assert not bad_sch, bad_sch
    # the doctest examples of A1111's schedule function (steps 10) and the cases below
    g = lambda p: prompt_schedule(p, 10)  # noqa: E731
    assert g("a [b:3]") == [[3, "a "], [10, "a b"]]
    assert g("a [b : c : 1] d") == [[1, "a b  d"], [10, "a  c  d"]]
    assert g("a[b:[c:d:2]:1]e") == [[1, "abe"], [2, "ace"], [10, "ade"]]
    assert g("((a][:b:c [d:3]") == [[3, "((a][:b:c "], [10, "((a][:b:c d"]]
    assert g("[fe|]male")[:2] == [[1, "female"], [2, "male"]]
    assert g("a [b:3 ]") == [[3, "a "], [10, "a b"]]
    assert g("a [b:c:1.5]") == [[10, "a b"]]  # '.' -> fraction: 15 steps, clipped to 10
    assert g("a [b:c:0]") == [[10, "a c"]]
    assert g("a [b:c:0.3] | x") == [[10, "a [b:c:0.3] | x"]]  # '|' outside [..|..]: unparsable
    assert g("a [cat:dog:0.3] on a table") == [[3, "a cat on a table"], [10, "a dog on a table"]]
    assert g("a [cat|dog] on a table") == [[s, f"a {'cat' if s % 2 else 'dog'} on a table"] for s in range(1, 11)]
    assert parse_prompt_attention("(a BREAK b)") == [["a", 1.1], ["BREAK", -1.1], ["b", 1.1]]
    return f"{path.name}: attention and schedule of all {len(data)} prompts equal A1111's"


def check_tokenizer(ptok, vocab, merges):
    texts = set()
    for c in CASES:
        for p in (c["prompt"], c["negative_prompt"]):
            for _, text in prompt_schedule(p, STEPS):
                texts.update(t for t, w in parse_prompt_attention(text) if t.strip())
    texts.add(EMB_NAME)
    for text in sorted(texts):
        assert ptok.tokenize([text])[0] == tiny.reference_bpe_ids(text, vocab, merges)[1:-1], text
    return f"transformers CLIPTokenizer == reference BPE on all {len(texts)} prompt pieces"


def check_loop_against_parity(models, image):
    """The loop, fed diffusers-style conditioning from tiny-sd's own text encoder, reproduces the
    existing tests/fixtures/parity/mean_ddim_s050_64x64 reference (diffusers' pipeline)."""
    ref = json.loads((tiny.REF_DIR / "manifest.json").read_text())
    e = next(c for c in ref["cases"] if c["name"] == "mean_ddim_s050_64x64")

    def load(key):
        f = e["files"][key]
        return np.fromfile(tiny.REF_DIR / f["file"], dtype="<f4").reshape(f["shape"])

    te = CLIPTextModel.from_pretrained(MODEL_DIR / "text_encoder", torch_dtype=torch.float32, local_files_only=True).eval()
    tok = CLIPTokenizer.from_pretrained(MODEL_DIR / "tokenizer", local_files_only=True)
    ids = tok([e["prompt"], e["negative_prompt"]], padding="max_length", max_length=77, return_tensors="pt").input_ids
    hidden = te(ids).last_hidden_state
    d_hidden = float(np.abs(hidden.numpy() - load("text_hidden")).max())  # that file came from another CPU
    assert d_hidden <= 1e-5, d_hidden
    # the A1111 path with weight-1 text gives the same ids and the same tensor (emphasis is a no-op)
    ptok = PromptTokenizer(tok, {})
    enc = PromptEncoder(te, ptok, 1)
    for row, text in enumerate((e["prompt"], e["negative_prompt"])):
        (chunk,) = ptok.tokenize_line(text)
        assert chunk["tokens"] == ids[row].tolist()
        z, _, _ = enc.encode_batch([chunk])
        assert torch.equal(z[0], hidden[row])
    r = run_img2img(models, image, [hidden[0:1]], [hidden[1:2]], [[STEPS, ""]], [[STEPS, ""]])
    d_traj = float(np.abs(r["traj"].numpy() - load("latents_trajectory")).max())
    d_dec = float(np.abs(r["decoded"].numpy() - load("decoded")).max())
    assert d_traj <= 1e-3 and d_dec <= 1e-3, (d_traj, d_dec)
    return (f"loop == tests/fixtures/parity mean_ddim_s050_64x64 (diffusers pipeline, made on another CPU): max |d| "
            f"text hidden {d_hidden:.1e}, trajectory {d_traj:.1e}, decoded {d_dec:.1e}; A1111 chunking of its "
            "prompts == diffusers' token ids, and A1111 encoding == diffusers' hidden states (bit-exact here)")


def check_against_pipeline(models, image, entry, cond_z, uncond_z, latents_final):
    """Single-schedule, equal-length cases: diffusers' own pipeline with prompt_embeds /
    negative_prompt_embeds (and the mean latents as `image`) gives the same final latents."""
    pipe = StableDiffusionImg2ImgPipeline(
        vae=models.vae, text_encoder=None, tokenizer=None, unet=models.unet, scheduler=models.scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    lat = init_latents(models, image)
    out = pipe(prompt_embeds=cond_z, negative_prompt_embeds=uncond_z, image=lat, strength=STRENGTH,
               num_inference_steps=STEPS, guidance_scale=CFG, eta=0.0,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="latent").images
    d = float((out - latents_final).abs().max())
    assert d <= 1e-5, (entry["name"], d)
    return d


# =============================================================================================
# 9. Main
# =============================================================================================
def compact_json(obj):
    """indent=1 JSON with innermost lists of numbers on one line."""
    text = json.dumps(obj, indent=1, allow_nan=False, ensure_ascii=False)
    return re.sub(r"\[\s+([^\[\]{}\"]*?)\s+\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_grad_enabled(False)

    checks = [check_parser_against_a1111()]

    if OUT_DIR.exists():
        shutil.rmtree(OUT_DIR)
    OUT_DIR.mkdir(parents=True)
    ln_keys = write_text_encoder(OUT_DIR / "text_encoder")
    emb_path = write_embedding(OUT_DIR / "embeddings")

    te = CLIPTextModel.from_pretrained(OUT_DIR / "text_encoder", torch_dtype=torch.float32, local_files_only=True).eval()
    on_disk = safetensors.torch.load_file(OUT_DIR / "text_encoder/model.safetensors")
    loaded = te.state_dict()
    for k, v in on_disk.items():
        key = k if k in loaded else k[len("text_model."):]
        assert torch.equal(loaded[key], v.to(torch.float32)), k
    tiny_te = safetensors.torch.load_file(MODEL_DIR / "text_encoder/model.safetensors")
    assert set(tiny_te) == set(on_disk)
    assert all(torch.equal(tiny_te[k], on_disk[k]) != (k in ln_keys) for k in on_disk)
    checks.append(f"text encoder: {len(ln_keys)} LayerNorm tensors changed, the other {len(on_disk) - len(ln_keys)} "
                  "identical to tiny-sd; reloaded float32 weights == the float16 file")

    tokenizer = CLIPTokenizer.from_pretrained(MODEL_DIR / "tokenizer", local_files_only=True)
    embeddings = {EMB_NAME: load_embedding(emb_path)}
    ptok = PromptTokenizer(tokenizer, embeddings)
    vocab, merges = tiny.clip_vocab_and_merges()
    checks.append(check_tokenizer(ptok, vocab, merges))

    models = Models()
    image = Image.open(INPUT_PNG).convert("RGB")
    assert image.size == (WIDTH, HEIGHT)
    checks.append(check_loop_against_parity(models, image))

    w = tiny.Writer(OUT_DIR)
    entries, pipeline_diffs, sep_diffs = [], {}, {}
    print(f"{'case':18s} cond(entries x chunks) uncond   passes              which_cond  max|z|   mean before/after")
    for case in CASES:
        name = case["name"]
        enc = PromptEncoder(te, ptok, case["clip_skip"])
        sides = {}
        for side, prompt in (("cond", case["prompt"]), ("uncond", case["negative_prompt"])):
            schedule, ents, stats = enc.conditioning(prompt, STEPS)
            recs, written = [], {}
            for i, e in enumerate(ents):
                rec = {"end_at_step": e["end_at_step"], "text": e["text"], "chunks": e["chunks"]}
                z = tiny.np32(e["z"])
                key = (e["text"], z.tobytes())
                if key not in written:  # identical schedule texts (alternation) share one file
                    written[key] = w.put(f"{name}.{side}{i}", z, "[1, 77*k, hidden]; chunks concatenated along tokens")
                f = written[key]
                rec["file"], rec["shape"], rec["sha256"] = f["file"], f["shape"], f["sha256"]
                recs.append(rec)
            sides[side] = dict(schedule=schedule, recs=recs, z=[e["z"] for e in ents], stats=stats)

        r = run_img2img(models, image, sides["cond"]["z"], sides["uncond"]["z"],
                        sides["cond"]["schedule"], sides["uncond"]["schedule"], record_both=True)
        if r["separate_vs_batched_max_abs"] is not None:
            sep_diffs[name] = r["separate_vs_batched_max_abs"]
            assert sep_diffs[name] <= 1e-5, (name, sep_diffs[name])
        if len(sides["cond"]["z"]) == 1 and len(sides["uncond"]["z"]) == 1 and set(r["passes"]) == {"batched"}:
            pipeline_diffs[name] = check_against_pipeline(models, image, case, sides["cond"]["z"][0],
                                                          sides["uncond"]["z"][0], r["latents"])
        decoded = r["decoded"]
        assert torch.isfinite(decoded).all()
        files = {
            "out_f32": w.put(f"{name}.out", tiny.np32(decoded), "NCHW [1, 3, H, W]; raw vae.decode output (nominally "
                                                               "[-1, 1]; the tiny VAE overshoots) before clamping"),
            "out_u8": w.put(f"{name}.out_u8", to_u8(decoded), "HWC RGB u8 = trunc(255*clamp((x+1)/2, 0, 1))"),
        }
        if TRAJECTORIES:  # opt-in (size budget): --trajectories
            files["latents_trajectory"] = w.put(f"{name}.latents_trajectory", tiny.np32(r["traj"]),
                                                "[k+1, 1, 4, h, w]; row 0 noised init latents, row i+1 after step i")
        entry = {
            "name": name, "why": case["why"], "prompt": case["prompt"], "negative_prompt": case["negative_prompt"],
            "clip_skip": case["clip_skip"], "steps": STEPS, "strength": STRENGTH, "cfg": CFG, "seed": SEED,
            "sampler": "ddim", "eta": 0.0, "scheduler_config": "../tiny-sd/scheduler/scheduler_config.json",
            "latent_mode": "mean", "input": "../parity/in_coffee_64x64.png", "width": WIDTH, "height": HEIGHT,
            "cond": sides["cond"]["recs"], "uncond": sides["uncond"]["recs"],
            "emphasis_means": {s: [{"mean_before": b, "mean_after": a} for b, a in sides[s]["stats"]]
                               for s in ("cond", "uncond")},
            "timesteps": r["timesteps"], "steps_run": len(r["timesteps"]), "passes": r["passes"],
            "which_cond": r["which_cond"], "which_uncond": r["which_uncond"],
            **files,
        }
        entries.append(entry)
        zmax = max(float(z.abs().max()) for s in sides.values() for z in s["z"])
        nc = [len(x["chunks"]) for x in entry["cond"]]
        nu = [len(x["chunks"]) for x in entry["uncond"]]
        means = " ".join(f"{b:+.3f}/{a:+.3f}" for b, a in sides["cond"]["stats"])
        print(f"{name:18s} {len(nc):2d} x {max(nc)}{'':12s} {len(nu)} x {max(nu)}    "
              f"{','.join(p[0] for p in r['passes']):18s}  {r['which_cond']!s:11s} {zmax:6.3f}   {means}")

    by = {e["name"]: e for e in entries}
    # What the cases are meant to show
    e = by["long_prompt"]["cond"][0]["chunks"]
    assert len(e) == 2 and e[0]["tokens"].index(49407) < 76 and e[0]["tokens"][e[0]["tokens"].index(49407) - 1] == 267
    moved = e[0]["tokens"].index(49407) - 1
    assert any(m != 1.0 for m in e[1]["multipliers"][1:CHUNK + 1 - moved]), "weighted tokens should move"
    checks.append(f"long_prompt: chunk 0 ends at its last comma ({moved} tokens + padding), the rest (with weighted "
                  "tokens) moved to chunk 1")
    emb = by["embedding"]
    assert emb["cond"][0]["chunks"][0]["fixes"] == [[5, EMB_NAME]]
    assert emb["uncond"][0]["chunks"][0]["fixes"] == [[2, EMB_NAME]]
    assert emb["cond"][0]["chunks"][0]["tokens"][6:9] == [0, 0, 0]
    assert emb["cond"][0]["chunks"][0]["multipliers"][6:9] == [1.2] * 3
    assert by["editing"]["which_cond"] == [0, 0, 0, 0, 1]
    # k <= end_at_step: entry 0 (end 1) serves k = 0 and 1, then 1, 2, 3 (cat, cat, dog, cat, dog)
    assert by["alternation"]["which_cond"] == [0, 0, 1, 2, 3]
    assert [len(x["chunks"]) for x in by["break"]["cond"]] == [2] and by["break"]["passes"] == ["separate"] * 5
    ec = by["editing_chunks"]["cond"]
    assert [len(x["chunks"]) for x in ec] == [2, 2] and ec[0]["chunks"][1].get("padding_chunk")
    assert by["editing_chunks"]["which_cond"] == [0, 0, 0, 0, 1]
    # editing_emphasis: the batch mean rescales the unweighted text too
    z1 = torch.from_numpy(np.fromfile(OUT_DIR / by["editing_emphasis"]["cond"][1]["file"], dtype="<f4"))
    z2 = torch.from_numpy(np.fromfile(OUT_DIR / by["editing"]["cond"][1]["file"], dtype="<f4"))
    ratio = float((z1 / z2).mean())
    assert abs(ratio - 1) > 1e-3 and float((z1 - z2 * ratio).abs().max()) < 1e-5
    checks.append(f"editing_emphasis: 'a dog on a table' = editing's tensor x {ratio:.6f} (batch-wide emphasis mean)")
    for n, d in sep_diffs.items():
        checks.append(f"{n}: separate UNet passes == batched within {d:.1e}")
    for n, d in pipeline_diffs.items():
        checks.append(f"{n}: diffusers StableDiffusionImg2ImgPipeline(prompt_embeds=cond, negative_prompt_embeds="
                      f"uncond) final latents == the loop's within {d:.1e}")

    manifest = {
        "generator": "tools/parity/make_prompt_parity.py",
        "versions": {**tiny.versions(), "attn_implementation": te.config._attn_implementation},
        "model": "../tiny-sd with text_encoder/ replaced by ./text_encoder (LayerNorms perturbed)",
        "text_encoder": {"dir": "text_encoder", "changed_tensors": ln_keys,
                         "how": f"seed {LN_SEED}: weight = 1 + {LN_WEIGHT_STD}*randn, bias = {LN_BIAS_MEAN} + "
                                f"{LN_BIAS_STD}*randn, float32 draws in sorted key order, then float16"},
        "embeddings": {EMB_NAME: {"file": f"embeddings/{EMB_NAME}.safetensors", "tensor": "emb_params",
                                  "shape": list(embeddings[EMB_NAME].shape), "dtype": "float32",
                                  "how": f"seed {EMB_SEED}: 0.5*randn", "name_token_ids": ptok.tokenize([EMB_NAME])[0]}},
        "file_format": "raw little-endian, C order, no header; .f32 float32, .u8 uint8",
        "rules": {
            "attention": "A1111 parse_prompt_attention: (x) x1.1, [x] /1.1, (x:w) x w, nested multiply, escapes "
                         "\\( \\) \\[ \\] \\\\, unclosed brackets apply to the end, BREAK splits text as [\"BREAK\", -1], "
                         "empty -> [[\"\", 1.0]], adjacent equal weights merged",
            "schedule": "get_learned_conditioning_prompt_schedules([prompt], steps)[0] with steps = the user's steps "
                        "(10), not the 5 img2img runs; a `when` with '.' is a fraction of steps, else a step; "
                        "alternation renders only the first item of an option (as in a1111-prompts.json)",
            "step_choice": "denoiser counter k = 0 at the first step actually run; entry = first with k <= end_at_step; "
                           "the same for cond and uncond",
            "chunks": "each attention piece tokenized separately (no special tokens); 75 tokens per chunk; at a full "
                      "chunk a non-comma token moves the tokens after the last comma (if within 20) to the next chunk; "
                      "BREAK closes the chunk; an embedding name (its token ids, longest first) becomes n tokens 0 "
                      "with fix [offset, name], offset = index before the start token, in a new chunk if it does "
                      "not fit; closing pads with 49407 (multiplier 1) and adds 49406 ... 49407 -> 77",
            "batch": "all schedule texts of one prompt are encoded as one batch per chunk index; texts with fewer "
                     "chunks get empty chunks (49406 + 76 x 49407, multipliers 1, marked padding_chunk); "
                     "the emphasis means are over that whole batch tensor [n_texts, 77, hidden]",
            "encoding": "token embeddings with rows offset+1 .. offset+n replaced by the embedding vectors, + position "
                        "embeddings, transformer; clip_skip 1: last_hidden_state, N > 1: final_layer_norm("
                        "hidden_states[-N]); z = z * multipliers; z = z * (mean_before / mean_after); chunks "
                        "concatenated along tokens -> [1, 77k, hidden]",
            "unet": "equal cond/uncond lengths: one UNet call with batch [uncond, cond]; different lengths: two calls "
                    "(uncond, then cond), batch 1 each (A1111 default, pad_cond_uncond off); "
                    "eps = uncond + cfg * (cond - uncond)",
            "img2img": "diffusers StableDiffusionImg2ImgPipeline for DDIM in mean mode: latents = VAE posterior mean "
                       "* 0.18215; noise = torch.randn(generator cpu seed 1234) (the first draw); set_timesteps(10), "
                       "the last int(10 * 0.5) = 5 timesteps; add_noise at the first; scheduler.step(eta=0); "
                       "decode latents / 0.18215",
        },
        "cases": entries,
        "self_checks": checks,
    }
    (OUT_DIR / "manifest.json").write_text(compact_json(tiny.jsonable(manifest)) + "\n")
    for c in checks:
        print("check:", c)
    print(f"size: {tiny.dir_size(OUT_DIR)} B in {sum(1 for f in OUT_DIR.rglob('*') if f.is_file())} files")


if __name__ == "__main__":
    main()
