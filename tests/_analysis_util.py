"""Helpers for the analysis tests: tiny checkpoints written with safetensors.torch.save_file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

SRC = str(Path(__file__).resolve().parents[1] / "src")


def save_model(folder: Path, tensors: dict[str, torch.Tensor], config: dict | None = None,
               shards: int = 1) -> Path:
    """Write an HF-style folder: model.safetensors, or `shards` files + index; config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if shards == 1:
        save_file(tensors, folder / "model.safetensors")
    else:
        names = sorted(tensors)
        weight_map = {}
        for i in range(shards):
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: tensors[n] for n in names[i::shards]}
            save_file(part, folder / fname)
            weight_map.update({n: fname for n in part})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config or {"tie_word_embeddings": False}))
    return folder


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "rlsparsity.analysis.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)
