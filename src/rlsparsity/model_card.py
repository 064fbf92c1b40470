"""The model card (``README.md``) of a trained run folder, as Hugging Face model folders have.

Front matter (YAML, the keys the Hub reads: ``base_model``, ``library_name``, ``tags``),
then what the run is (base, algorithm, data, precision, seed, task), its hyperparameters
and its metrics (held-out accuracy before/after, steps, wall time). Rendered from the
run's ``run.json`` record and written atomically at the end of training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlsparsity.algorithms.checkpointing import write_text_atomic


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str)
    return str(v)


def _pct(v: Any) -> str:
    return f"{100 * v:.2f} %" if isinstance(v, (int, float)) else "n/a"


def render(record: dict[str, Any]) -> str:
    r = record
    acc_b, acc_t = r.get("acc_base"), r.get("acc_trained")
    delta = (f"{100 * (acc_t - acc_b):+.2f} points" if isinstance(acc_b, (int, float))
             and isinstance(acc_t, (int, float)) else "n/a")
    title = f"{r['family']} / {r['algorithm']} / {r['data']} / {r['precision']} / seed {r['seed']}"
    lines = [
        "---",
        f"base_model: {json.dumps(str(r.get('base')))}",
        "library_name: transformers",
        "tags:",
        "- rlsparsity",
        f"- {r['algorithm']}",
        f"- {r['precision']}",
        "---",
        "",
        f"# {title}",
        "",
        f"Finetuned by `rlsparsity train` (experiment `{r.get('experiment')}`) from the base model "
        f"`{r.get('base')}` with **{r['algorithm']}** on the task `{r.get('task')}`.",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{r.get('base')}` |",
        f"| algorithm | {r['algorithm']} |",
        f"| data | {r['data']} |",
        f"| precision | {r['precision']} (stored as {r.get('storage_dtype')}) |",
        f"| seed | {r['seed']} |",
        f"| task | {r.get('task')} |",
        "",
        "## Metrics",
        "",
        "| metric | value |",
        "|---|---|",
        f"| held-out accuracy before (base) | {_pct(acc_b)} |",
        f"| held-out accuracy after | {_pct(acc_t)} |",
        f"| change | {delta} |",
        f"| evaluation problems | {r.get('n_eval')} |",
        f"| optimiser steps | {r.get('steps')} |",
        f"| seconds per step | {_fmt(r.get('seconds_per_step'))} |",
        f"| wall time (s) | {_fmt(r.get('wall_seconds'))} |",
        "",
        "## Hyperparameters",
        "",
        "| name | value |",
        "|---|---|",
        *[f"| {k} | {_fmt(v)} |" for k, v in sorted((r.get("hparams") or {}).items())],
        "",
        "## Files",
        "",
        "`model.safetensors` + `config.json` + tokenizer (a Hugging Face folder), "
        "`checkpoints/step-NNNNNN/model.safetensors` (weights every "
        f"{r.get('checkpoint_every')} steps), `run.json` (the full record: history, samples, versions).",
        "",
    ]
    return "\n".join(lines)


def write_model_card(out_dir: str | Path, record: dict[str, Any]) -> Path:
    p = Path(out_dir) / "README.md"
    write_text_atomic(p, render(record))
    return p
