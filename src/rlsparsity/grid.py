"""Expand the experiment config into the list of training runs and their paths.

This module is imported by the Snakefile, so it must stay light (no torch).
The path layout is the contract between stages:

    results/base/<family>/                      base model folder + metrics.json
    results/runs/<family>/<algorithm>/<data>/<precision>/seed<seed>/
        model.safetensors, config.json, tokenizer files, run.json
        checkpoints/step-NNNNNN/model.safetensors   (weights only, for dynamics)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The seven algorithms of arXiv 2505.11711 Table 1, in the paper's order.
PAPER_ALGORITHMS: tuple[str, ...] = ("ppo", "grpo", "orpo", "kto", "dpo", "simpo", "prime")
#: Everything the training registry knows (paper seven + RLOO + the SFT contrast).
ALGORITHMS: tuple[str, ...] = PAPER_ALGORITHMS + ("rloo", "sft")
#: Online algorithms generate their own rollouts: their data is on-policy by construction.
ONLINE_ALGORITHMS: frozenset[str] = frozenset({"ppo", "grpo", "rloo", "prime"})
PRECISIONS: tuple[str, ...] = ("bf16", "fp32-master", "fp32")
DATA_SOURCES: tuple[str, ...] = ("on_policy", "off_policy")


def supported_data(algorithm: str) -> tuple[str, ...]:
    """Data sources an algorithm can train on.

    ``on_policy``: samples from the base model itself (preference pairs labelled by the
    task scorer; for ``sft`` rejection sampling of the model's own correct answers).
    ``off_policy``: data not drawn from the model (reference solutions vs corrupted
    answers; for ``sft`` the reference solutions).
    """
    if algorithm in ONLINE_ALGORITHMS:
        return ("on_policy",)
    return DATA_SOURCES


@dataclass(frozen=True, order=True)
class Run:
    family: str
    algorithm: str
    data: str
    precision: str
    seed: int

    @property
    def rel(self) -> str:
        return f"{self.family}/{self.algorithm}/{self.data}/{self.precision}/seed{self.seed}"

    def dir(self, results: str | Path = "results") -> Path:
        return Path(results) / "runs" / self.rel

    @property
    def label(self) -> str:
        """A compact, unique, filesystem-safe name for tables and figures."""
        return f"{self.algorithm}:{self.data}:{self.precision}:s{self.seed}"

    def as_dict(self) -> dict[str, Any]:
        return {"family": self.family, "algorithm": self.algorithm, "data": self.data,
                "precision": self.precision, "seed": self.seed}


def run_hparams(config: dict[str, Any], algorithm: str, precision: str) -> dict[str, Any]:
    """Config overrides of one run: ``train.hparams[algorithm]``, then
    ``train.hparams_by_precision[precision][algorithm]`` (e.g. a validation-chosen lr per precision)."""
    tc = config.get("train") or {}
    by_prec = ((tc.get("hparams_by_precision") or {}).get(precision) or {}).get(algorithm) or {}
    return {**dict((tc.get("hparams") or {}).get(algorithm, {}) or {}), **dict(by_prec)}


def fsdp_units(config: dict[str, Any], family: str) -> str:
    """The family's FSDP2 units under ``sharding: fsdp`` (``block`` when not set)."""
    return str((config["families"].get(family) or {}).get("fsdp_units") or "block")


def base_dir(family: str, results: str | Path = "results") -> Path:
    return Path(results) / "base" / family


def family_names(config: dict[str, Any]) -> list[str]:
    return list(config["families"].keys())


def expand_runs(config: dict[str, Any]) -> list[Run]:
    """Union of the cross products in ``config['grids']``, sorted and de-duplicated.

    Combinations an algorithm cannot train on (e.g. ``grpo`` with ``off_policy`` data)
    are dropped: an online algorithm has no off-policy variant.
    """
    families = family_names(config)
    runs: set[Run] = set()
    for block in config.get("grids", []):
        fams: Iterable[str] = families if block["families"] == "all" else block["families"]
        for fam in fams:
            if fam not in families:
                raise ValueError(f"grid names family {fam!r} which is not in config['families']")
            for alg in block["algorithms"]:
                for data in block["data"]:
                    if data not in supported_data(alg):
                        continue
                    for prec in block["precisions"]:
                        for seed in block["seeds"]:
                            runs.add(Run(fam, alg, data, prec, int(seed)))
    return sorted(runs)


def runs_for(config: dict[str, Any], family: str, algorithm: str) -> list[Run]:
    return [r for r in expand_runs(config) if r.family == family and r.algorithm == algorithm]


def family_algorithm_pairs(config: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted({(r.family, r.algorithm) for r in expand_runs(config)})


def parse_run_dir(path: str | Path) -> Run:
    """Inverse of :meth:`Run.dir` (accepts any prefix before ``runs/``)."""
    parts = Path(path).parts
    i = len(parts) - 1 - list(reversed(parts)).index("runs")
    fam, alg, data, prec, seed = parts[i + 1 : i + 6]
    if not seed.startswith("seed"):
        raise ValueError(f"not a run folder: {path}")
    return Run(fam, alg, data, prec, int(seed[4:]))


#: Run fields a training job may be grouped by (config ``train.group_by``).
GROUP_FIELDS: tuple[str, ...] = ("family", "algorithm", "data", "precision", "seed")


def group_key(run: Run, fields: Iterable[str]) -> str:
    """``family=llama,precision=bf16,seed=1`` for ``fields = [family, precision, seed]``;
    ``""`` (one group of everything) for no fields."""
    d = run.as_dict()
    return ",".join(f"{f}={d[f]}" for f in fields)


def parse_group_key(key: str) -> dict[str, str]:
    """Inverse of :func:`group_key`; raises ``ValueError`` naming a bad field."""
    out: dict[str, str] = {}
    for part in filter(None, key.split(",")):
        field, sep, value = part.partition("=")
        if not sep or field not in GROUP_FIELDS:
            raise ValueError(f"bad group {key!r}: expected FIELD=VALUE pairs with FIELD in {GROUP_FIELDS}")
        out[field] = value
    return out


def group_runs(runs: Iterable[Run], fields: Iterable[str]) -> dict[str, list[Run]]:
    """Partition runs into training jobs: runs that agree on ``fields`` share one process
    (torch + transformers + trl take ~7-10 s to import; a tiny run trains in 3-10 s)."""
    fields = list(fields)
    bad = [f for f in fields if f not in GROUP_FIELDS]
    if bad:
        raise ValueError(f"train.group_by: unknown run field(s) {bad}; choose from {list(GROUP_FIELDS)}")
    groups: dict[str, list[Run]] = {}
    for r in sorted(runs):
        groups.setdefault(group_key(r, fields), []).append(r)
    return groups


def runs_in_group(runs: Iterable[Run], key: str) -> list[Run]:
    want = parse_group_key(key)
    return [r for r in sorted(runs) if all(str(r.as_dict()[f]) == v for f, v in want.items())]
