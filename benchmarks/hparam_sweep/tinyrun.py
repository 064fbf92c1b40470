"""One tiny training run scored on the VALIDATION split, shared by ``sweep_precision.py`` and
``benchmarks/bf16_native_vs_emulated/run.py``.

A run trains ``algorithm`` from ``bases/<family>`` (built with ``rlsparsity build-base``) with the
package's algorithm code and the experiment config (``--config``, default config/config.yaml; its
``train.steps`` and per-run overrides), then scores greedy accuracy on the first ``n_val``
validation problems. The test split is never evaluated (``rlsparsity.train.train_run`` would also
score test; it is not used here). Sparsity = share of the base's entries whose stored value is
bit-for-bit unchanged (the pipeline's tolerance-0 sparsity of the whole model)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

FIELDS = ["family", "algorithm", "precision", "bf16_compute", "lr", "seed", "val_base", "val_trained",
          "val_delta", "sparsity", "seconds", "correct_base", "correct_trained", "error"]

_VAL_BASE: dict[tuple[str, int], tuple[float, str]] = {}


def init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def val_eval(folder: Path, task: Any, n: int, to_bf16: bool = False) -> tuple[float, str]:
    import torch

    from rlsparsity.evaluate import evaluate
    from rlsparsity.modeling import load_model, load_tokenizer

    model = load_model(folder, "fp32")
    if to_bf16:  # the stored weights rounded to bf16, held in fp32 (= an fp32-master checkpoint)
        with torch.no_grad():
            for q in model.parameters():
                q.copy_(q.to(torch.bfloat16))
    r = evaluate(model, load_tokenizer(folder), task, task.val, n=n)
    return float(r["accuracy"]), str(r["correct"])


def unchanged_share(base: Path, tuned: Path, to_bf16: bool = False) -> float:
    """Share of entries with the same stored value (bf16 base vs bf16/fp32 checkpoint, compared
    in fp32, exact), over every tensor of the base. ``to_bf16``: round the checkpoint to bf16
    first (an fp32 run's weights as fp32-master would store them)."""
    import torch
    from safetensors.torch import load_file

    b = load_file(str(base / "model.safetensors"))
    t = load_file(str(tuned / "model.safetensors"))
    if to_bf16:
        t = {k: v.to(torch.bfloat16) for k, v in t.items()}
    same = total = 0
    for k, v in b.items():
        w = t.get(k)
        if w is None:  # tied weights stored once
            continue
        same += int((v.float() == w.float()).sum())
        total += v.numel()
    return same / total


def train_and_score(cfg: dict[str, Any], bases: Path, scratch: Path, family: str, algorithm: str,
                    precision: str, lr: float | None, seed: int, n_val: int, bf16_mode: str = "auto",
                    extra: dict[str, Any] | None = None, also_master: bool = False) -> list[dict[str, Any]]:
    """Train one run in ``scratch`` (deleted afterwards) and return its row of :data:`FIELDS`.
    ``also_master`` (precision ``fp32``): also score the weights rounded to bf16, a second row with
    precision ``fp32-master`` — fp32-master trains exactly as fp32 (fp32 parameters and AdamW
    state, same seed, same data) and differs only in storing the result rounded to bf16."""
    from rlsparsity import grid as G
    from rlsparsity.algorithms import TrainSpec, get_algorithm
    from rlsparsity.modeling import bf16_compute
    from rlsparsity.tasks import task_from_config

    os.environ["RLSPARSITY_BF16_COMPUTE"] = bf16_mode
    run = G.Run(family, algorithm, "on_policy", precision, seed)
    hp = G.run_hparams(cfg, algorithm, precision)
    if lr is not None:
        hp["lr"] = lr
    hp.update(extra or {})
    task = task_from_config(cfg)
    out = scratch / f"{family}-{algorithm}-{precision}-{bf16_mode}-{lr}-{seed}"
    shutil.rmtree(out, ignore_errors=True)
    row: dict[str, Any] = {"family": family, "algorithm": algorithm, "precision": precision,
                           "bf16_compute": bf16_compute("cpu") if precision == "bf16" else "",
                           "lr": hp.get("lr", ""), "seed": seed, "error": ""}
    extra_rows: list[dict[str, Any]] = []
    t = time.time()
    try:
        base = bases / family
        key = (family, n_val)
        if key not in _VAL_BASE:
            _VAL_BASE[key] = val_eval(base, task, n_val)
        spec = TrainSpec(run=run, base_dir=base, out_dir=out, task=task, steps=cfg["train"]["steps"],
                         checkpoint_every=cfg["train"]["steps"], hparams=hp)
        stats = get_algorithm(algorithm)(spec)
        if row["lr"] == "":
            row["lr"] = (stats.get("hparams") or {}).get("lr", "")
        acc, bits = val_eval(out, task, n_val)
        vb, bb = _VAL_BASE[key]
        row.update(val_base=vb, val_trained=acc, val_delta=round(acc - vb, 4),
                   sparsity=round(unchanged_share(base, out), 6), correct_base=bb, correct_trained=bits)
        if also_master and precision == "fp32":
            acc_m, bits_m = val_eval(out, task, n_val, to_bf16=True)
            extra_rows.append({**row, "precision": "fp32-master", "val_trained": acc_m,
                               "val_delta": round(acc_m - vb, 4), "correct_trained": bits_m,
                               "sparsity": round(unchanged_share(base, out, to_bf16=True), 6)})
    except Exception as e:  # keep sweeping; the row says why
        row["error"] = repr(e)[:200].replace(",", ";").replace("\n", " ")
    row["seconds"] = round(time.time() - t, 1)
    for r in extra_rows:
        r["seconds"] = row["seconds"]
    shutil.rmtree(out, ignore_errors=True)
    return [row, *extra_rows]
