#!/usr/bin/env python3
"""PyTorch pickle fixtures for the safe pickle reader (`crates/engine/src/load/checkpoint/pickle.rs`).

Run from the repository root with torch (the parity venv's 2.15.0 was used):

    python3 tools/checkpoint/make_pickles.py

Writes `tests/fixtures/pickles/`:
- `tiny-sd.ckpt`: `tests/fixtures/checkpoint/tiny-sd.safetensors` as A1111-era checkpoints are
  saved, `torch.save({"state_dict": tensors, "global_step": 0})`: the app must give the same
  model as from the .safetensors twin;
- `lbstyle.pt`: the prompt-parity embedding in A1111's textual-inversion layout
  (`string_to_param: {"*": Parameter}`, `name`, `step`, ...);
- refused files: `system.pt` (a reduce of `os.system`; never run), `nested.pt` (`builtins.eval`
  deep inside a state dict), `truncated.pt` (a cut zip); `legacy.pt`: the pre-1.6 format
  (`_use_new_zipfile_serialization=False`), which must be read (its bytes differ from run to run).
"""
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

OUT = Path("tests/fixtures/pickles")


class System:
    """Pickles as a call of os.system, the classic malicious checkpoint (never unpickled here)."""

    def __reduce__(self):
        return (os.system, ("echo this must never run",))


class Eval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    tensors = load_file("tests/fixtures/checkpoint/tiny-sd.safetensors")
    torch.save({"state_dict": tensors, "global_step": 0, "epoch": 0}, OUT / "tiny-sd.ckpt")
    vectors = load_file("tests/fixtures/prompt-parity/embeddings/lbstyle.safetensors")["emb_params"]
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": torch.nn.Parameter(vectors.clone())},
            "name": "lbstyle",
            "step": 100,
            "sd_checkpoint": "0123456789",
            "sd_checkpoint_name": "tiny",
        },
        OUT / "lbstyle.pt",
    )
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": System()}, OUT / "system.pt")
    torch.save({"state_dict": {"w": torch.zeros(2), "meta": [1, {"deep": Eval()}]}}, OUT / "nested.pt")
    data = (OUT / "lbstyle.pt").read_bytes()
    (OUT / "truncated.pt").write_bytes(data[: len(data) // 2])
    torch.save({"state_dict": {"w": torch.tensor([1.5, -2.0, 0.25])}}, OUT / "legacy.pt", _use_new_zipfile_serialization=False)
    for p in sorted(OUT.iterdir()):
        print(f"{p.name}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
