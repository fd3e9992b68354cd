#!/usr/bin/env python3
"""Times Pillow 9.5 / A1111's stack on the cases of `crates/core/benches/resize.rs`.

Run from the repository root: `python3 tools/bench/resize_color.py`. Prints the median
wall time of each case in ms. The input is `tests/data/coffee.png` stretched to 1024x1024
(with Pillow's LANCZOS here; the Rust bench uses the image crate's Lanczos3, which gives
slightly different pixels but the same work).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))
import resize_color as rc  # noqa: E402


def timed(fn, repeat: int) -> float:
    """Median wall time of `fn()` over `repeat` runs, after one warm-up, in ms."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def main() -> None:
    """Runs every case and prints a table."""
    img = Image.open("tests/data/coffee.png").convert("RGB").resize((1024, 1024), Image.LANCZOS)
    reference = Image.open("tests/data/chelsea.png").convert("RGB")
    correction = rc.setup_color_correction(reference)
    cases = [
        ("lanczos 1024x1024->1536x1536", lambda: img.resize((1536, 1536), Image.LANCZOS), 30),
        ("lanczos 1024x1024->512x512", lambda: img.resize((512, 512), Image.LANCZOS), 30),
        ("crop-and-resize 1024x1024->1024x768", lambda: rc.resize_image(1, img, 1024, 768), 30),
        ("resize-and-fill 1024x1024->1024x768", lambda: rc.resize_image(2, img, 1024, 768), 30),
        ("color-correction 1024x1024", lambda: rc.apply_color_correction(correction, img), 3),
    ]
    for name, fn, repeat in cases:
        print(f"{name:40} {timed(fn, repeat):10.2f} ms", flush=True)


if __name__ == "__main__":
    main()
