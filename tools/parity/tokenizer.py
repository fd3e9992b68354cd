#!/usr/bin/env python3
"""Reference data for the CLIP tokenizer (`crates/engine/src/conditioning/tokenizer/`).

Two modes:

    python tools/parity/tokenizer.py [OUT_DIR]   # fixtures (default tests/fixtures/tokenizer)
    python tools/parity/tokenizer.py tables      # crates/engine/src/conditioning/tokenizer/tables.rs

Fixtures need `transformers<5` (whose `CLIPTokenizer` is the pure-Python "slow" tokenizer that
Stable Diffusion pipelines and A1111 use; 4.46.3 was used) and `ftfy` (installed in A1111, and
it changes the text clean-up), plus `regex`. The vocabulary is derived from the same
`crates/engine/assets/clip/bpe_simple_vocab_16e6.txt.gz` the app bundles, written as vocab.json/merges.txt to a
temporary folder (as Hugging Face's `openai/clip-vit-large-patch14` ships them).

The expected A1111 chunks come from `a1111_chunks` below: a port of the chunking rule of
A1111's `modules/sd_hijack_clip.py` (`FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line`)
without its emphasis parsing, `BREAK` and textual-inversion embeddings, with
`comma_padding_backtrack = 20` (A1111's default).

Tables mode needs `regex` and `ftfy`: it writes the Unicode letter/number ranges of the
pre-tokenisation pattern (`\\p{L}`, `\\p{N}` as the `regex` module defines them) and the data
of the ftfy fixes the Rust code reproduces.
"""

import gzip
import html.entities
import json
import os
import sys
import tempfile
import unicodedata

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BPE_GZ = os.path.join(ROOT, "crates", "engine", "assets", "clip", "bpe_simple_vocab_16e6.txt.gz")
TABLES_RS = os.path.join(ROOT, "crates", "engine", "src", "conditioning", "tokenizer", "tables.rs")

CHUNK_LENGTH = 75
COMMA_BACKTRACK = 20
BOS, EOS = 49406, 49407


# ----------------------------------------------------------------------------------------------
# Vocabulary files derived from the .gz (the construction described in crates/engine/assets/clip/README.md)

def byte_chars():
    """The 256 printable stand-ins of bytes, in vocabulary order (byte, char)."""
    printable = (list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100)))
    pairs = [(b, chr(b)) for b in printable]
    extra = 0
    for b in range(256):
        if b not in printable:
            pairs.append((b, chr(256 + extra)))
            extra += 1
    return pairs


def derive_vocab_files(folder):
    """Writes vocab.json and merges.txt for the bundled merges; returns their paths."""
    lines = gzip.open(BPE_GZ).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    chars = [c for _, c in byte_chars()]
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == 49408
    vocab_path = os.path.join(folder, "vocab.json")
    merges_path = os.path.join(folder, "merges.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(merges_path, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return vocab_path, merges_path


# ----------------------------------------------------------------------------------------------
# A1111 chunking, ported from tokenize_line (emphasis, BREAK and embeddings left out)

def a1111_chunks(ids, comma_id, pad_id):
    """Splits token ids into 77-token chunks as A1111 does."""
    chunks = []
    chunk = []
    last_comma = -1

    def close(tokens):
        padded = tokens + [EOS] * (CHUNK_LENGTH - len(tokens))
        full = [BOS] + padded + [EOS]
        if pad_id != EOS:  # A1111 process_tokens: everything after the first EOS becomes pad
            first = full.index(EOS)
            full = full[:first + 1] + [pad_id] * (len(full) - first - 1)
        chunks.append(full)

    for token in ids:
        if token == comma_id:
            last_comma = len(chunk)
        elif (COMMA_BACKTRACK != 0 and len(chunk) == CHUNK_LENGTH and last_comma != -1
              and len(chunk) - last_comma <= COMMA_BACKTRACK):
            moved = chunk[last_comma + 1:]
            close(chunk[:last_comma + 1])
            last_comma = -1
            chunk = moved
        if len(chunk) == CHUNK_LENGTH:
            close(chunk)
            last_comma = -1
            chunk = []
        chunk.append(token)
    if chunk or not chunks:
        close(chunk)
    return chunks


# ----------------------------------------------------------------------------------------------
# Prompts

LONG_TAGS = (
    "masterpiece, best quality, ultra detailed, 8k, photorealistic, 1girl, solo, long hair, "
    "looking at viewer, smile, open mouth, blue eyes, blonde hair, shirt, long sleeves, dress, "
    "holding, jewelry, standing, full body, flower, outdoors, sky, day, cloud, water, tree, "
    "blue sky, petals, grass, building, scenery, reflection, mountain, sunlight, city, "
    "cityscape, bridge, river, cherry blossoms, lake, tower, skyscraper, landscape, "
    "depth of field, bokeh, cinematic lighting, volumetric lighting, ray tracing, "
    "sharp focus, intricate details, highly detailed skin, film grain"
)
LONG_PROSE = (
    "A breathtaking panoramic view of an ancient city built into the side of a towering "
    "mountain at sunset, with golden light spilling across terraced gardens and winding "
    "stone staircases while flocks of birds circle the spires of a crystal cathedral and "
    "merchants in colourful robes haggle over spices in the crowded marketplace below the "
    "great waterfall that thunders down into a turquoise lagoon surrounded by palm trees "
    "and lanterns that begin to glow as the first stars appear in the violet sky"
)

PROMPTS = [
    "",
    " ",
    "a photo of a cat",
    "A Photo Of A CAT",
    "a photograph of an astronaut riding a horse",
    "masterpiece, best quality, 1girl, solo",
    "(masterpiece:1.2), (best quality:1.1), [blurry], ((sharp))",
    "<lora:add_detail:0.8> <hypernet:foo:1> portrait",
    "photo of a woman, 8k, uhd, dslr, soft lighting, high quality, film grain, Fujifilm XT3",
    "1girl, 2boys, 3d, 4k, 16:9, 1920x1080, 0.5, 3.14159, 1,000,000",
    "don't stop, it's fine, they're here, we've won, I'm ok, you'll see, he'd go",
    "DON'T SHOUT, IT'S LOUD",
    "rock'n'roll o'clock 'quoted' ''double'' '",
    "wow!!! what??? ...hmm... --- ___ *** ### @@@ $$$ %%% ^^^ &&& ~~~ ``` |||",
    "a   lot    of     spaces",
    "tabs\tand\nnewlines\r\nand\u00a0nbsp\u3000ideographic space",
    "  leading and trailing  ",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 fa\u00e7ade",
    "Stra\u00dfe gro\u00df \u1e9e",
    "\u65e5\u672c\u8a9e\u306e\u30d7\u30ed\u30f3\u30d7\u30c8 \u4e2d\u6587 \ud55c\uad6d\uc5b4",
    "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440, \u0395\u039b\u039b\u0397\u039d\u0399\u039a\u0391 \u03c3\u03bf\u03c6\u03af\u03b1\u03a3",
    "emoji \U0001F600\U0001F525 \u2764\ufe0f \U0001F468\u200d\U0001F469\u200d\U0001F467 \U0001F1EF\U0001F1F5",
    "arabic \u0645\u0631\u062d\u0628\u0627 hebrew \u05e9\u05dc\u05d5\u05dd hindi \u0928\u092e\u0938\u094d\u0924\u0947",
    "digits \u0661\u0662\u0663 \u00bd \u2163 \u2460 \u00b2",
    "Tom &amp; Jerry &lt;3 &gt; &quot;quoted&quot; &#39;apos&#39; &#x1F600; &hellip;",
    "&amp;amp; double escaped, &EACUTE;t&eacute; &copy; &nbsp;x &bogus; &#99999999; &#150;",
    "<lora:x:1> then &amp; stays escaped",
    "first line &amp;\n<b> second &amp;",
    "first &amp;\n&lt;b> second &amp;",
    "curly \u201cquotes\u201d and \u2018single\u2019 don\u2019t",
    "\ufb01ne \ufb02ower \uff21\uff22\uff23\uff11\uff12\uff13\uff01 \uff71\uff72\uff73",
    "ctrl\x01chars\x7f here\ufeff and\x1b[31mred\x1b[0m",
    "c1 \x85 \x96 \x80 controls",
    "<|startoftext|>hello<|endoftext|>",
    "a <|endoftext|> b <|ENDOFTEXT|> c",
    "!!<|endoftext|>!!",
    "it'\u017f long s",
    "\u212a kelvin \u0130stanbul \u03a3\u0391\u03a3",
    "e\u0301 decomposed accent",
    "snake_case_words and kebab-case-words and CamelCaseWords",
    "url https://example.com/path?q=1&x=2 email me@example.org",
    "hashtags #sd #ai @user",
    "(((masterpiece))), {{{best}}}, [[[low quality]]]",
    "score_9, score_8_up, score_7_up, source_anime, rating_safe",
    "antidisestablishmentarianism supercalifragilisticexpialidocious",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "x" * 300,
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, "
    "cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, "
    "watermark, username, blurry",
    LONG_TAGS,
    LONG_PROSE,
    LONG_TAGS + ", " + LONG_PROSE,
    ", ".join(["red"] * 100),
    " ".join(["word"] * 80) + ", comma, after",
    " ".join(["word"] * 60) + ", " + " ".join(["more"] * 40),
    " ".join(["w"] * 74) + ", tail",
    " ".join(["w"] * 75),
    " ".join(["w"] * 76),
    " ".join(["w"] * 150),
    " ".join(["w"] * 50) + ", " + " ".join(["w"] * 24) + ", " + " ".join(["w"] * 30),
    ",".join(["w"] * 80),
    " ".join(["w"] * 40) + " <|endoftext|> " + " ".join(["w"] * 60),
    "comma,at,end," * 30,
]


# ----------------------------------------------------------------------------------------------
# Fixtures

def pad(ids, pad_id):
    """Pads truncated ids to 77."""
    return ids + [pad_id] * (77 - len(ids))


def fixtures(out_dir):
    import ftfy
    import regex
    import transformers
    from transformers import CLIPTokenizer

    if int(transformers.__version__.split(".")[0]) >= 5:
        sys.exit("needs transformers<5 (the slow, pure-Python CLIPTokenizer)")
    with tempfile.TemporaryDirectory() as tmp:
        vocab_path, merges_path = derive_vocab_files(tmp)
        sd1 = CLIPTokenizer(vocab_path, merges_path)
    assert sd1.fix_text is not None, "ftfy must be installed"
    comma = sd1.get_vocab()[",</w>"]
    assert comma == 267 and sd1.pad_token_id == EOS

    cases = []
    for prompt in PROMPTS:
        ids = sd1.encode(prompt, add_special_tokens=False)
        case = {
            "prompt": prompt,
            "ids": ids,
            "decoded": sd1.decode(ids),
            "padded_sd1": sd1(prompt, padding="max_length", max_length=77,
                              truncation=True)["input_ids"],
            # SD 2.x / SDXL padding with "!" (id 0). Not from CLIPTokenizer(pad_token="!"):
            # that makes "!" an added token, split out of the text before tokenization (a
            # diffusers-only quirk; A1111 tokenizes those models with open_clip, which has none).
            "padded_sd2": pad(sd1(prompt, max_length=77, truncation=True)["input_ids"], 0),
        }
        if len(ids) > CHUNK_LENGTH or prompt == "":
            case["chunks_sd1"] = a1111_chunks(ids, comma, EOS)
            case["chunks_sd2"] = a1111_chunks(ids, comma, 0)
        cases.append(case)
    data = {
        "generator": "tools/parity/tokenizer.py",
        "transformers_version": transformers.__version__,
        "ftfy_version": ftfy.__version__,
        "regex_version": regex.__version__,
        "chunking": "A1111 tokenize_line rule ported to Python (no emphasis, BREAK or "
                    "embeddings), comma_padding_backtrack=20",
        "cases": cases,
    }
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "clip_cases.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=0)
        f.write("\n")
    chunked = sum("chunks_sd1" in c for c in cases)
    print(f"{path}: {len(cases)} prompts ({chunked} chunked), transformers "
          f"{transformers.__version__}, ftfy {ftfy.__version__}")


# ----------------------------------------------------------------------------------------------
# Tables

def char_ranges(pattern):
    import regex

    compiled = regex.compile(pattern, regex.IGNORECASE)  # as the tokenizer compiles it
    out, start, prev = [], None, None
    for cp in range(0x110000):
        if compiled.match(chr(cp)):
            if start is None:
                start = cp
            prev = cp
        elif start is not None:
            out.append((start, prev))
            start = None
    if start is not None:
        out.append((start, prev))
    return out


def rust_str(s):
    return '"' + "".join(
        c if (0x20 <= ord(c) < 0x7F and c not in '"\\') else f"\\u{{{ord(c):x}}}" for c in s
    ) + '"'


def range_table(name, doc, ranges):
    lines = [f"/// {doc}", f"pub(super) const {name}: &[(u32, u32)] = &["]
    row = []
    for lo, hi in ranges:
        row.append(f"(0x{lo:x}, 0x{hi:x}),")
        if len(row) == 5:
            lines.append("    " + " ".join(row))
            row = []
    if row:
        lines.append("    " + " ".join(row))
    lines.append("];")
    return "\n".join(lines)


def map_table(name, doc, key_type, items):
    lines = [f"/// {doc}", f"pub(super) const {name}: &[({key_type}, &str)] = &["]
    for key, value in items:
        key_text = rust_str(key) if isinstance(key, str) else f"0x{key:x}"
        lines.append(f"    ({key_text}, {rust_str(value)}),")
    lines.append("];")
    return "\n".join(lines)


def primary_compositions():
    """(first, second, composed) for every pair NFC composes into one character (Hangul
    syllables excepted: they are composed arithmetically)."""
    out = []
    for cp in range(0x110000):
        if 0xAC00 <= cp <= 0xD7A3:
            continue
        parts = unicodedata.decomposition(chr(cp)).split()
        if len(parts) != 2 or parts[0].startswith("<"):
            continue
        first, second = (int(p, 16) for p in parts)
        if unicodedata.normalize("NFC", chr(first) + chr(second)) == chr(cp):
            out.append((first, second, cp))
    return sorted(out)


def composition_table(items):
    lines = ["/// Canonical compositions (first, second, composed) of NFC, sorted; Hangul excepted.",
             "pub(super) const COMPOSITIONS: &[(u32, u32, u32)] = &["]
    row = []
    for a, b, c in items:
        row.append(f"(0x{a:x}, 0x{b:x}, 0x{c:x}),")
        if len(row) == 4:
            lines.append("    " + " ".join(row))
            row = []
    if row:
        lines.append("    " + " ".join(row))
    lines.append("];")
    return "\n".join(lines)


# Characters whose HTML entities are decoded: Latin-1, general punctuation and a few symbols
# that show up in prompts. Entity names come from Python's html5 table, plus the upper-case
# variants that ftfy also accepts.
ENTITY_CHARS = (
    set(map(chr, range(0xA0, 0x100))) | set("&<>\"'") | set(map(chr, range(0x2010, 0x2027)))
    | set(map(chr, range(0x2030, 0x203F))) | set("€™←↑→↓↔♥♠♣♦★☆✓✗∞≈≠≤≥−∗√∑∏πΩαβγδμσ")
)


def tables():
    import regex
    from ftfy import chardata

    letters = char_ranges(r"[\p{L}]")
    numbers = char_ranges(r"[\p{N}]")
    entities = sorted(
        (k, v) for k, v in chardata.HTML_ENTITIES.items()
        if v in ENTITY_CHARS or chardata.HTML_ENTITIES.get(k.lower()) in ENTITY_CHARS
    )
    width = sorted(chardata.WIDTH_MAP.items())
    ligatures = sorted(chardata.LIGATURES.items())
    cp1252 = [(b, bytes([b]).decode("cp1252", errors="ignore") or chr(b))
              for b in range(0x80, 0xA0)]
    compositions = primary_compositions()
    parts = [
        "//! Unicode and character data for the CLIP tokenizer.",
        "//!",
        "//! @generated by `python tools/parity/tokenizer.py tables`; do not edit by hand.",
        f"//! Letters and numbers as `regex` {regex.__version__} classifies them; the ftfy data "
        f"from ftfy {__import__('ftfy').__version__}",
        f"//! (Python {sys.version.split()[0]}, `unicodedata` {unicodedata.unidata_version}).",
        "",
        range_table("LETTERS", "Code point ranges of `\\p{L}` (letters).", letters),
        "",
        range_table("NUMBERS", "Code point ranges of `\\p{N}` (numbers).", numbers),
        "",
        map_table("HTML_ENTITIES",
                  "HTML entities decoded (with `&` and `;`), sorted by name: those of "
                  "Latin-1, punctuation and common symbols, with ftfy's upper-case variants.",
                  "&str", entities),
        "",
        map_table("WIDTH_MAP", "ftfy's `fix_character_width`: full- and half-width forms to "
                  "their standard forms (NFKC), sorted.", "u32", width),
        "",
        map_table("LIGATURES", "ftfy's `fix_latin_ligatures`, sorted.", "u32", ligatures),
        "",
        composition_table(compositions),
        "",
        map_table("CP1252_C1", "Windows-1252 meaning of bytes 0x80..=0x9F (undefined ones "
                  "unchanged), for C1 controls and HTML character references.", "u32", cp1252),
        "",
    ]
    with open(TABLES_RS, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    print(f"{TABLES_RS}: {len(letters)} letter ranges, {len(numbers)} number ranges, "
          f"{len(entities)} entities, {len(width)} width forms, "
          f"{len(compositions)} compositions")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "tables":
        tables()
    else:
        fixtures(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "fixtures",
                                                                    "tokenizer"))


if __name__ == "__main__":
    main()
