"""How much of an fp32 run's result is bf16 storage rounding (the DAG's ``rounding`` stage).

An ``fp32-master`` run trains in fp32 and stores its weights in bf16; an ``fp32`` run stores them
in fp32. With the same lr, data and seed they are the same training up to that storage rounding
(exactly so for deterministic training). So an fp32 run, evaluated four ways on its own test
problems (the task and ``n_eval`` recorded in its run.json), separates what the rounding does:

* ``raw``: the stored fp32 weights (must reproduce the run's own ``correct_trained``);
* ``round_bf16``: every weight rounded to the nearest bf16 value, as fp32-master stores it;
* ``below_half_ulp``: base + only the updates that rounding erases (exact fp32 values);
* ``above_half_ulp``: base + only the updates that rounding keeps (exact fp32 values, unrounded)
  (:mod:`rlsparsity.update_parts`).

:func:`table_rows` turns those evaluations, with each run's fp32-master partner (same family,
algorithm, data and seed) where the grid has it, into ``tables/precision_rounding.csv``: accuracy
per model, paired differences against the raw fp32 model and against the base (95 % two-way
bootstrap over seeds and problems, :func:`rlsparsity.stats.paired_bootstrap`), and how many test
problems each model answers differently from the fp32-master run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

VARIANTS = ("raw", "round_bf16", "below_half_ulp", "above_half_ulp")
MODELS = (*VARIANTS, "fp32_master_run", "base")
KEY = ("family", "algorithm", "data")


class RoundingError(ValueError):
    """A run that cannot be evaluated this way (not fp32, no recorded test outcomes)."""


def evaluate_run(run_dir: str | Path, base_dir: str | Path, device: str = "cpu",
                 batch_size: int | None = None) -> dict[str, Any]:
    """The four evaluations of one fp32 run (module docstring), as a JSON-able record."""
    import torch

    from rlsparsity.evaluate import evaluate
    from rlsparsity.modeling import load_model, load_tokenizer, snap_to_bf16
    from rlsparsity.tasks import task_from_config
    from rlsparsity.update_parts import keep_update_part

    run_dir = Path(run_dir)
    try:
        rec = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError) as e:
        raise RoundingError(f"{run_dir}: no readable run.json ({e.__class__.__name__})") from None
    if rec.get("precision") != "fp32":
        raise RoundingError(f"{run_dir}: precision {rec.get('precision')!r}; only fp32 runs store what rounding "
                            "would change")
    if not isinstance(rec.get("correct_trained"), str) or not isinstance(rec.get("config"), dict):
        raise RoundingError(f"{run_dir}: run.json lacks correct_trained or config (made before they were recorded)")
    task = task_from_config(rec["config"])
    n = int(rec["n_eval"])
    model, tok = load_model(run_dir, "fp32", device), load_tokenizer(run_dir)
    stored = {k: p.detach().to("cpu", copy=True) for k, p in model.named_parameters()}
    out: dict[str, Any] = {}
    for v in VARIANTS:
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(stored[k])
        counts = None
        if v == "round_bf16":
            snap_to_bf16(model, "bf16")
        elif v != "raw":
            counts = keep_update_part(model, base_dir, v.replace("_", "-"))
        res = evaluate(model, tok, task, n=n, batch_size=batch_size)
        out[v] = {"accuracy": res["accuracy"], "correct": res["correct"], "update_counts": counts}
    return {**{k: rec[k] for k in (*KEY, "precision", "seed")}, "run": str(run_dir), "base": str(base_dir),
            "task": task.name, "n": n, "correct_base": rec.get("correct_base"),
            "reproduces_run": out["raw"]["correct"] == rec["correct_trained"], "device": device,
            "variants": out}


def _pts(iv: Any) -> tuple[float, float, float]:
    return round(100 * iv.estimate, 2), round(100 * iv.low, 2), round(100 * iv.high, 2)


def table_rows(records: list[dict[str, Any]], partners: dict[tuple, str]) -> list[dict[str, Any]]:
    """Rows of precision_rounding.csv: per (family, algorithm, data) and per seed, then pooled
    over seeds ("all"), one row per model that every pooled run has. ``partners``: (family,
    algorithm, data, seed) -> the fp32-master run's ``correct_trained``."""
    from rlsparsity.stats import decode_bits, paired_bootstrap

    groups: dict[tuple, list[tuple[int, dict[str, str], dict]]] = {}
    for r in records:
        k = tuple(r[f] for f in KEY)
        bits = {v: e["correct"] for v, e in r["variants"].items()}
        if r.get("correct_base"):
            bits["base"] = r["correct_base"]
        if (*k, int(r["seed"])) in partners:
            bits["fp32_master_run"] = partners[(*k, int(r["seed"]))]
        counts = (r["variants"].get("below_half_ulp") or {}).get("update_counts") or {}
        groups.setdefault(k, []).append((int(r["seed"]), bits, counts))
    rows = []
    for k, runs in sorted(groups.items()):
        runs.sort(key=lambda t: t[0])
        for unit in [*(s for s, _, _ in runs), "all"]:
            chosen = runs if unit == "all" else [t for t in runs if t[0] == unit]
            b = [bits for _, bits, _ in chosen]
            counts = chosen[0][2] if unit != "all" else {}
            for m in (m for m in MODELS if all(m in x for x in b)):
                row = {**dict(zip(KEY, k, strict=True)), "seed": unit, "model": m,
                       "accuracy": round(sum(decode_bits(x[m]).mean() for x in b) / len(b), 4)}
                for ref in ("raw", "base"):
                    est, lo, hi = (_pts(paired_bootstrap([(x[m], x[ref]) for x in b]))
                                   if all(ref in x for x in b) else (None, None, None))
                    row.update({f"vs_{ref}_pts": est, f"vs_{ref}_lo95": lo, f"vs_{ref}_hi95": hi})
                row["answered_differently_from_fp32_master"] = (
                    sum(sum(p != q for p, q in zip(x[m], x["fp32_master_run"], strict=True)) for x in b)
                    if all("fp32_master_run" in x for x in b) else None)
                row.update(n_problems=sum(len(x[m]) for x in b), entries_changed=counts.get("n_changed"),
                           entries_below_half_ulp=counts.get("n_below"), entries_above_half_ulp=counts.get("n_above"))
                rows.append(row)
    return rows


COLUMNS = [*KEY, "seed", "model", "accuracy", "vs_raw_pts", "vs_raw_lo95", "vs_raw_hi95", "vs_base_pts",
           "vs_base_lo95", "vs_base_hi95", "answered_differently_from_fp32_master", "n_problems",
           "entries_changed", "entries_below_half_ulp", "entries_above_half_ulp"]


def partner_bits(records: list[dict[str, Any]], results: str | Path) -> dict[tuple, str]:
    """The fp32-master partners of ``records`` that exist under ``results`` (their run.json)."""
    from rlsparsity.grid import Run

    out = {}
    for r in records:
        run = Run(r["family"], r["algorithm"], r["data"], "fp32-master", int(r["seed"]))
        f = run.dir(results) / "run.json"
        if f.exists():
            out[(*(r[k] for k in KEY), int(r["seed"]))] = json.loads(f.read_text())["correct_trained"]
    return out


def _cmd_eval(args: argparse.Namespace) -> int:
    from rlsparsity.analysis.io import CheckpointError
    from rlsparsity.cli import CLIError
    from rlsparsity.cliargs import check_device
    from rlsparsity.modeling import torch_threads, write_json
    from rlsparsity.update_parts import UpdatePartError

    check_device(args.device)
    torch_threads()
    try:
        rec = evaluate_run(args.run, args.base, args.device, args.batch_size)
    except (RoundingError, UpdatePartError, CheckpointError) as e:
        raise CLIError(str(e)) from None
    write_json(args.out, rec)
    if not rec["reproduces_run"]:
        print(f"warning: {args.run}: the stored model's answers differ from run.json's (nondeterministic device?)")
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    from rlsparsity.analysis.tables import write_csv
    from rlsparsity.cli import CLIError

    records = []
    for f in args.evals:
        try:
            records.append(json.loads(Path(f).read_text()))
        except (OSError, ValueError) as e:
            raise CLIError(f"{f}: not a rounding-eval record ({e.__class__.__name__})") from None
    write_csv(args.out, table_rows(records, partner_bits(records, args.results)), COLUMNS)
    return 0


def register(sub: Any) -> None:
    from rlsparsity.cliargs import device, positive_int

    p = sub.add_parser("rounding-eval", help="evaluate an fp32 run as stored, rounded to bf16, and base + each "
                                              "part of its update (rlsparsity.rounding)")
    p.add_argument("run", help="the fp32 run folder (model + run.json)")
    p.add_argument("--base", required=True, help="its base model folder")
    p.add_argument("--out", required=True, type=Path, help="JSON record")
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.set_defaults(func=_cmd_eval)
    p = sub.add_parser("rounding-table", help="precision_rounding.csv from rounding-eval records")
    p.add_argument("evals", nargs="+", help="rounding-eval JSON records")
    p.add_argument("--results", required=True, help="the results folder (fp32-master partners' run.json)")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=_cmd_table)
