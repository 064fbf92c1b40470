"""Algorithm registry: name -> ``train(spec: TrainSpec) -> stats``.

Seven algorithms of arXiv 2505.11711 (ppo, grpo, orpo, kto, dpo, simpo, prime), plus
rloo and the dense sft contrast. ppo and prime are written here (TRL has none); the
rest wrap TRL 1.16. Entries are resolved lazily so importing the registry is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from rlsparsity.algorithms.common import TrainFn, TrainSpec
from rlsparsity.grid import ALGORITHMS

_ENTRY: dict[str, tuple[str, str]] = {
    "ppo": ("rlsparsity.algorithms.ppo", "train"),
    "prime": ("rlsparsity.algorithms.prime", "train"),
    "grpo": ("rlsparsity.algorithms.trl_algos", "train_grpo"),
    "rloo": ("rlsparsity.algorithms.trl_algos", "train_rloo"),
    "dpo": ("rlsparsity.algorithms.trl_algos", "train_dpo"),
    "kto": ("rlsparsity.algorithms.trl_algos", "train_kto"),
    "orpo": ("rlsparsity.algorithms.trl_algos", "train_orpo"),
    "simpo": ("rlsparsity.algorithms.trl_algos", "train_simpo"),
    "sft": ("rlsparsity.algorithms.trl_algos", "train_sft"),
}
assert set(_ENTRY) == set(ALGORITHMS), "registry and grid.ALGORITHMS disagree"


def get_algorithm(name: str) -> TrainFn:
    if name not in _ENTRY:
        raise KeyError(f"unknown algorithm {name!r}; known: {sorted(_ENTRY)}")
    mod, fn = _ENTRY[name]
    return getattr(importlib.import_module(mod), fn)


def defaults(name: str) -> dict[str, Any]:
    mod, _ = _ENTRY[name]
    m = importlib.import_module(mod)
    d = m.DEFAULTS
    return dict(d[name]) if name in d and isinstance(d[name], dict) else dict(d)


__all__ = ["TrainSpec", "get_algorithm", "defaults"]
