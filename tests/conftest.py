"""Shared fixtures: a tiny task, tiny base models (random and briefly trained)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def task():
    from rlsparsity.tasks import get_task

    return get_task("tiny_arith", n_train=600, n_test=64, seed=7)


def make_random_base(folder: Path, task, family: str = "llama", seed: int = 0) -> Path:
    """A randomly initialised tiny base stored like a real one (bf16 + tokenizer)."""
    from rlsparsity.families import build_tiny
    from rlsparsity.modeling import save_model
    from rlsparsity.tokenizer import build_tokenizer, special_ids, task_corpus

    tok = build_tokenizer(task_corpus(task))
    model = build_tiny(family, len(tok), special_ids(tok), seed=seed)
    save_model(model, tok, folder, "bf16")
    return folder


@pytest.fixture(scope="session")
def random_base(tmp_path_factory, task) -> Path:
    return make_random_base(tmp_path_factory.mktemp("random_base"), task)


@pytest.fixture(scope="session")
def trained_base(tmp_path_factory, task) -> Path:
    """A tiny llama trained until it answers ~15% of validation problems: on-policy
    preference data and group-relative advantages need correct and wrong samples."""
    from rlsparsity.base import train_tiny_base
    from rlsparsity.modeling import write_json

    out = tmp_path_factory.mktemp("trained_base")
    m = train_tiny_base("llama", task, out, seed=0, max_steps=1500, batch_size=32, lr=3e-3,
                        eval_every=100, eval_n=64, target_accuracy=0.15, log=lambda *a: None)
    write_json(out / "metrics.json", m)
    return out
