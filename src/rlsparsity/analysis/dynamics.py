"""Update dynamics over a training run's checkpoint series (SPEC §1 "Dynamics").

Series: ``run_dir/checkpoints/step-NNNNNN/model.safetensors`` in step order, then the final
``run_dir/model.safetensors``. Each point is diffed against the base (sparsity at every
tolerance). The entries are split, using exact change (Δ ≠ 0):

* never updated:          Δ == 0 at every sampled checkpoint and at the final model;
* updated then cancelled: Δ ≠ 0 at some sampled checkpoint, Δ == 0 at the final model;
* final subnetwork:       Δ ≠ 0 at the final model.

The three fractions sum to 1. Only the sampled checkpoints are seen: an entry that moved
and came back between two checkpoints counts as never updated, so "cancelled" is a lower
bound and "never updated" an upper bound (paper: 72% / 8% / 20%).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from rlsparsity.analysis.diff import DEFAULT_TOLERANCES, diff_checkpoints, tol_key
from rlsparsity.analysis.io import Checkpoint, load_packed_mask, open_checkpoint

_STEP = re.compile(r"^step-(\d+)$")


def checkpoint_series(run_dir: Path) -> list[tuple[str, int | None, Path]]:
    """(label, step, weights path) for each checkpoint in step order, then ("final", steps, model)."""
    ckpts = []
    for d in (run_dir / "checkpoints").glob("step-*"):
        m = _STEP.match(d.name)
        if m and (d / "model.safetensors").exists():
            ckpts.append((d.name, int(m.group(1)), d / "model.safetensors"))
    ckpts.sort(key=lambda c: c[1])
    run_json = run_dir / "run.json"
    steps = json.loads(run_json.read_text()).get("steps") if run_json.exists() else None
    final_step = int(steps) if steps is not None else (ckpts[-1][1] if ckpts else None)
    return ckpts + [("final", final_step, run_dir / "model.safetensors")]


def split_counts(mask_paths: list[Path]) -> dict[str, int]:
    """Entry counts of the three-way split; the last mask is the final model's."""
    masks = [load_packed_mask(p) for p in mask_paths]
    final = masks[-1]
    out = {"n": 0, "never_updated": 0, "updated_then_cancelled": 0, "final_subnetwork": 0}
    for name, (fin, shape) in final.items():
        ever = np.zeros_like(fin)
        for m in masks[:-1]:
            if name in m and m[name][1] == shape:
                ever |= m[name][0]
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        n_final = int(np.bitwise_count(fin).sum())
        n_cancel = int(np.bitwise_count(ever & ~fin).sum())
        out["n"] += n
        out["final_subnetwork"] += n_final
        out["updated_then_cancelled"] += n_cancel
        out["never_updated"] += n - n_final - n_cancel
    return out


def run_dynamics(base: Checkpoint | str | Path, run_dir: Path, tolerances: tuple[float, ...] = DEFAULT_TOLERANCES,
                 threads: int | None = None) -> list[dict[str, Any]]:
    """Tidy rows (point, step, quantity, tolerance, value) for one run.

    quantity "sparsity" per point and tolerance; quantities "never_updated",
    "updated_then_cancelled", "final_subnetwork" once, at the final point, tolerance 0,
    as fractions of all entries of the final model's compared tensors.
    """
    base_ck = base if isinstance(base, Checkpoint) else open_checkpoint(base)
    series = checkpoint_series(Path(run_dir))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rlsparsity-dyn-") as tmp:
        masks = []
        for i, (label, step, path) in enumerate(series):
            mask = Path(tmp) / f"{i}.safetensors"
            res = diff_checkpoints(base_ck, open_checkpoint(path), tolerances, mask_path=mask, threads=threads)
            summ = res.summary()
            for tol in res.tolerances:
                rows.append({"point": label, "step": step, "quantity": "sparsity", "tolerance": tol,
                             "value": summ["sparsity"][tol_key(tol)]})
            masks.append(mask)
        split = split_counts(masks)
    label, step, _ = series[-1]
    for q in ("never_updated", "updated_then_cancelled", "final_subnetwork"):
        rows.append({"point": label, "step": step, "quantity": q, "tolerance": 0.0,
                     "value": split[q] / split["n"] if split["n"] else float("nan")})
    return rows
