#!/usr/bin/env python3
"""Times Pillow on the ops that crates/core/benches/image_ops.rs (and crates/core/benches/resize.rs) time in Rust.

Run from the repository root:

    python3 tools/bench/pillow_ops.py [--runs N] [--json]

The input is tests/data/coffee.png resized to 1024x1024 with LANCZOS, as in the Rust benches.
Prints the median of N runs per op in milliseconds; --json prints {op: ms} instead.
"""

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

import PIL
from PIL import Image, ImageEnhance, ImageFilter

RESIZE_COLOR = os.path.join("tools", "fixtures", "resize_color.py")


def load_input():
    """coffee.png as RGB, resized to 1024x1024 with LANCZOS."""
    photo = Image.open(os.path.join("tests", "data", "coffee.png")).convert("RGB")
    return photo.resize((1024, 1024), Image.LANCZOS)


def enhance(cls, factor):
    """An op that applies ImageEnhance `cls` with `factor`."""
    return lambda im: cls(im).enhance(factor)


def finish_chain(im):
    """The chain timed as "finish chain" in crates/core/benches/image_ops.rs."""
    im = ImageEnhance.Sharpness(im).enhance(1.5)
    im = ImageEnhance.Brightness(im).enhance(1.2)
    im = ImageEnhance.Color(im).enhance(1.3)
    im = ImageEnhance.Contrast(im).enhance(1.1)
    for kernel in (ImageFilter.DETAIL, ImageFilter.SMOOTH, ImageFilter.BLUR, ImageFilter.CONTOUR):
        im = im.filter(kernel)
    return im


def finishing_ops():
    """(name, op) for every finishing op, named as in crates/core/benches/image_ops.rs."""
    ops = [
        (name, lambda im, k=getattr(ImageFilter, name): im.filter(k))
        for name in (
            "DETAIL",
            "SMOOTH",
            "BLUR",
            "CONTOUR",
            "SHARPEN",
            "EDGE_ENHANCE",
            "SMOOTH_MORE",
        )
    ]
    ops += [
        ("Sharpness 1.5", enhance(ImageEnhance.Sharpness, 1.5)),
        ("Brightness 1.2", enhance(ImageEnhance.Brightness, 1.2)),
        ("Color 1.3", enhance(ImageEnhance.Color, 1.3)),
        ("Contrast 1.1", enhance(ImageEnhance.Contrast, 1.1)),
        ("finish chain", finish_chain),
    ]
    return ops


def resize_color_module():
    """tools/fixtures/resize_color.py as a module, or None if it is not there."""
    if not os.path.exists(RESIZE_COLOR):
        return None
    spec = importlib.util.spec_from_file_location("resize_color", RESIZE_COLOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resize_ops(notes):
    """(name, op) for the resize cases of crates/core/benches/resize.rs; appends to `notes` what is skipped."""
    ops = [
        ("lanczos 1024x1024->1536x1536", lambda im: im.resize((1536, 1536), Image.LANCZOS)),
        ("lanczos 1024x1024->512x512", lambda im: im.resize((512, 512), Image.LANCZOS)),
    ]
    module = resize_color_module()
    if module is None or not hasattr(module, "resize_image"):
        notes.append(f"A1111 resize modes skipped: {RESIZE_COLOR} has no resize_image")
        return ops
    ops += [
        ("crop-and-resize 1024x1024->1024x768", lambda im: module.resize_image(1, im, 1024, 768)),
        ("resize-and-fill 1024x1024->1024x768", lambda im: module.resize_image(2, im, 1024, 768)),
    ]
    return ops


def time_op(op, im, runs):
    """Median wall time of `op(im)` over `runs` runs, in milliseconds, after one warm-up."""
    op(im)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        op(im)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def main(argv=None):
    """Times every op and prints the table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per op (default 15)")
    parser.add_argument("--json", action="store_true", help="print {op: ms} as JSON")
    args = parser.parse_args(argv)

    im = load_input()
    notes = []
    results = {name: time_op(op, im, args.runs) for name, op in finishing_ops() + resize_ops(notes)}
    if args.json:
        print(json.dumps({"pillow": PIL.__version__, "runs": args.runs, "ms": results}, indent=1))
    else:
        print(f"Pillow {PIL.__version__}, 1024x1024 RGB, median of {args.runs} runs")
        print(f"{'op':40} {'Pillow ms':>10}")
        for name, ms in results.items():
            print(f"{name:40} {ms:10.3f}")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


if __name__ == "__main__":
    main()
