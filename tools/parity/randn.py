#!/usr/bin/env python3
"""Write the expected values of PyTorch's CPU `torch.randn` for `crates/engine/tests/noise.rs`.

Usage: python tools/parity/randn.py [OUT_DIR]   (default: tests/fixtures/noise)

Needs `torch` (the CPU wheel from PyPI is enough). Writes two files, one per CPU kernel of
`normal_fill` (tensors of 16 elements or more):

- `randn_avx2.json`: PyTorch's AVX2 kernel (`ATEN_CPU_CAPABILITY=avx2`), what every x86-64 CPU
  with AVX2 or AVX-512 runs;
- `randn_portable.json`: the portable kernel (`ATEN_CPU_CAPABILITY=default`), what ARM and old
  x86 run (bit-exact in Rust only with glibc's libm).

Each case is a seed and a list of successive `torch.randn` calls on one generator. For each call
the file holds `numel` and either all values (`bits`, when numel <= 512) or the first and last
256 (`head`, `tail`) plus `fnv1a64`, the 64-bit FNV-1a hash of the little-endian bytes of all
values. Values are f32 bit patterns (u32), so the comparison is bit-exact.
"""

import json
import os
import subprocess
import sys

SEEDS = [0, 1, 42, 1234, 4294967295, 2**32 + 5]
SIZES = [1, 3, 15, 16, 17, 31, 100, 4 * 64 * 64, 4 * 96 * 64]
# Successive calls on one generator: mixes the scalar path (numel < 16, whose Box-Muller
# sine value is cached in the generator across calls), the vectorised path and empty tensors.
SEQUENCES = [
    (7, [3, 1, 17, 5, 16, 0, 2, 33, 1, 1]),
    (42, [4 * 64 * 64, 4 * 64 * 64]),
    (2**32 + 5, [1, 4 * 64 * 64, 15, 4 * 96 * 64, 1]),
]
FULL_LIMIT = 512
EDGE = 256
KERNELS = {"avx2": "avx2", "portable": "default"}


def fnv1a64(data: bytes) -> int:
    """64-bit FNV-1a over bytes."""
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def describe(values) -> dict:
    """One call's expectation from a float32 tensor."""
    import numpy as np

    bits = values.numpy().astype("<f4").view("<u4")
    out = {"numel": int(bits.size)}
    if bits.size <= FULL_LIMIT:
        out["bits"] = [int(b) for b in bits]
    else:
        out["head"] = [int(b) for b in bits[:EDGE]]
        out["tail"] = [int(b) for b in bits[-EDGE:]]
        out["fnv1a64"] = f"{fnv1a64(np.ascontiguousarray(bits).tobytes()):016x}"
    return out


def generate(kernel: str) -> dict:
    """All cases, with the kernel this process runs."""
    import torch

    def calls(seed, sizes):
        g = torch.Generator("cpu").manual_seed(seed)
        return [describe(torch.randn(n, generator=g, dtype=torch.float32)) for n in sizes]

    cases = [{"seed": s, "calls": calls(s, [n])} for s in SEEDS for n in SIZES]
    cases += [{"seed": s, "calls": calls(s, sizes)} for s, sizes in SEQUENCES]
    return {
        "generator": "tools/parity/randn.py",
        "torch_version": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "kernel": kernel,
        "cases": cases,
    }


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        json.dump(generate(sys.argv[2]), sys.stdout)
        return
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/noise"
    os.makedirs(out_dir, exist_ok=True)
    for name, capability in KERNELS.items():
        # The CPU capability is fixed when torch loads, so each kernel needs its own process.
        env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
        text = subprocess.run(
            [sys.executable, __file__, "--child", name],
            env=env, check=True, capture_output=True, text=True,
        ).stdout
        data = json.loads(text)
        expected = {"avx2": {"AVX2", "AVX512"}, "portable": {"DEFAULT"}}[name]
        if data["cpu_capability"] not in expected:
            sys.exit(f"{name}: torch ran with capability {data['cpu_capability']}")
        path = os.path.join(out_dir, f"randn_{name}.json")
        with open(path, "w") as f:
            json.dump(data, f, separators=(",", ":"))
            f.write("\n")
        print(f"{path}: {len(data['cases'])} cases, torch {data['torch_version']}, "
              f"capability {data['cpu_capability']}")


if __name__ == "__main__":
    main()
