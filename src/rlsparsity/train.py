"""Training stage: one run (family x algorithm x data x precision x seed) and its record.

Each run folder receives the model, checkpoint series, ``run.json`` (algorithm, seed,
precision, data source, hyperparameters, steps, wall time, versions, held-out accuracy
before and after) and a model card ``README.md``. An interrupted run resumes from its last
complete checkpoint of the same config (the algorithm finds ``resume/`` in the run folder;
see :mod:`rlsparsity.algorithms.checkpointing`); a run killed after training but before its
record skips training on the rerun (``training_done.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlsparsity import grid as G


def is_main_process() -> bool:
    """False on the non-zero ranks of an ``accelerate launch`` (torchrun sets RANK): only
    rank 0 saves the model, evaluates and writes run.json, so a multi-GPU run leaves the
    same files as a single-process one."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _rank_device(device: str) -> str:
    """``cuda`` -> ``cuda:<LOCAL_RANK>`` under a multi-process launch (one GPU per rank)."""
    import os

    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def train_run(run: G.Run, config: dict[str, Any], results: str | Path | None = None,
              device: str = "cpu", stop_after: int | None = None,
              samples: list[str | Path] | tuple[str | Path, ...] = ()) -> dict[str, Any]:
    from rlsparsity.algorithms import TrainSpec, get_algorithm
    from rlsparsity.evaluate import evaluate
    from rlsparsity.model_card import write_model_card
    from rlsparsity.modeling import bf16_compute, load_model, load_tokenizer, torch_threads, versions, write_json
    from rlsparsity.tasks import task_from_config

    torch_threads()
    device = _rank_device(device)
    results = results or config["results"]
    base = G.base_dir(run.family, results)
    out = run.dir(results)
    if not (base / "config.json").exists():
        raise FileNotFoundError(f"base model missing: {base} (build it first: snakemake {base}/metrics.json)")
    base_metrics = json.loads((base / "metrics.json").read_text())
    task = task_from_config(config)
    tc = config["train"]
    spec = TrainSpec(run=run, base_dir=base, out_dir=out, task=task, steps=tc["steps"],
                     checkpoint_every=tc["checkpoint_every"],
                     hparams=G.run_hparams(config, run.algorithm, run.precision), device=device,
                     stop_after=stop_after, samples=tuple(Path(p) for p in samples),
                     fsdp_units=G.fsdp_units(config, run.family))
    from rlsparsity.gpu import device_record, reset_peak

    reset_peak(device)
    stats, wall = _train_or_reuse(spec, get_algorithm(run.algorithm))
    _rank_stats(device, wall, stats)
    if device.startswith("cuda"):  # free the trainer's (sharded) states before rank 0 evaluates
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()
    if not is_main_process():
        return {**run.as_dict(), "main_process": False}
    model = load_model(out, "fp32", device)  # evaluate the stored (storage-precision) weights
    tok = load_tokenizer(out)
    after = evaluate(model, tok, task, n=tc["eval_n"])
    acc_base, correct_base = base_metrics["accuracy"], base_metrics.get("correct")
    if (base_metrics.get("n_test") != after["n"] or base_metrics.get("task") != task.name
            or not isinstance(correct_base, str) or len(correct_base) != after["n"]):
        b = evaluate(load_model(base, "fp32", device), tok, task, n=tc["eval_n"])
        acc_base, correct_base = b["accuracy"], b["correct"]
    record = {
        **run.as_dict(),
        "experiment": config.get("experiment"),
        "task": task.name,
        "base": str(base),
        "acc_base": acc_base,
        "acc_trained": after["accuracy"],
        "correct_base": correct_base,
        "correct_trained": after["correct"],
        "mean_reward_trained": after["mean_reward"],
        "n_eval": after["n"],
        "steps": stats.get("steps"),
        "seconds_per_step": stats.get("seconds_per_step"),
        "processes": stats.get("processes", 1),
        "sharding": stats.get("sharding", "none"),
        "fsdp_units": stats.get("fsdp_units"),
        "compute_dtype": stats.get("compute_dtype"),
        "wall_seconds": round(wall, 3),
        "resumed_from": stats.get("resumed_from"),
        "hparams": stats.get("hparams"),
        "data_stats": stats.get("data_stats"),
        "history": stats.get("history"),
        "checkpoint_every": spec.checkpoint_every,
        "storage_dtype": "float32" if run.precision == "fp32" else "bfloat16",
        "bf16_compute": bf16_compute(device) if run.precision == "bf16" else None,
        "samples": after["samples"],
        "versions": versions(),
        "config": config,
        **device_record(device, wall, stats.get("steps")),
    }
    write_model_card(out, record)
    write_json(out / "run.json", record)
    return record


DONE = "training_done.json"


def _rank_stats(device: str, wall: float, stats: dict[str, Any]) -> None:
    """Benchmark hook (benchmarks/fsdp): with ``RLSPARSITY_RANK_STATS=<folder>`` every rank
    writes its own peak GPU memory and training time to ``<folder>/rank<R>.json`` (outside the
    run folder, which rank 0 alone writes)."""
    import os

    folder = os.environ.get("RLSPARSITY_RANK_STATS")
    if not folder:
        return
    from rlsparsity.algorithms.checkpointing import write_text_atomic
    from rlsparsity.gpu import device_record

    rank = int(os.environ.get("RANK", "0"))
    rec = {"rank": rank, "wall_seconds": wall, "steps": stats.get("steps"),
           **device_record(device, wall, stats.get("steps"))}
    Path(folder).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(folder) / f"rank{rank}.json", json.dumps(rec))


def _train_or_reuse(spec: Any, train: Any) -> tuple[dict[str, Any], float]:
    """Train (resuming if a complete checkpoint of this config exists), unless a previous
    attempt finished training this very config and was killed while evaluating: then its
    saved statistics are reused. Stale records (run.json, README.md) are removed first, so a
    run folder never shows a record that does not belong to its weights."""
    from rlsparsity.algorithms.checkpointing import fingerprint, write_text_atomic

    out = Path(spec.out_dir)
    fp = fingerprint(spec)
    done = out / DONE
    try:
        prev = json.loads(done.read_text()) if done.exists() else None
    except ValueError:
        prev = None
    if (
        isinstance(prev, dict)
        and prev.get("fingerprint") == fp
        and (out / "model.safetensors").exists()
        and not (out / "resume").exists()
    ):
        return prev["stats"], float(prev["wall_seconds"])
    if is_main_process():
        for stale in (DONE, "run.json", "README.md"):
            (out / stale).unlink(missing_ok=True)
    t0 = time.time()
    stats = train(spec)
    wall = time.time() - t0
    if is_main_process():
        write_text_atomic(done, json.dumps({"fingerprint": fp, "wall_seconds": wall, "stats": stats}, default=str))
    return stats, wall


def train_group(
    config: dict[str, Any], key: str, device: str = "cpu", samples: list[str | Path] | tuple[str | Path, ...] = ()
) -> list[dict[str, Any]]:
    """Train every run of the config's grid in group ``key`` (see :func:`rlsparsity.grid.group_runs`)
    one after the other in this process. Each run seeds itself, so its weights are the
    same as when it is trained alone (tested)."""
    runs = G.runs_in_group(G.expand_runs(config), key)
    if not runs:
        raise ValueError(f"group {key!r} matches no run of the config's grids")
    records = []
    for i, run in enumerate(runs, 1):
        t0 = time.time()
        rec = train_run(run, config, device=device, samples=samples)
        print(
            json.dumps(
                {
                    "run": run.rel,
                    "index": f"{i}/{len(runs)}",
                    "seconds": round(time.time() - t0, 2),
                    **{k: rec.get(k) for k in ("acc_base", "acc_trained", "seconds_per_step")},
                }
            ),
            flush=True,
        )
        records.append(rec)
    return records


def accuracy_row(run: G.Run, rec: dict[str, Any]) -> dict[str, Any]:
    """accuracy.csv row of one run from its run.json record."""
    return {
        **run.as_dict(),
        "acc_base": rec["acc_base"],
        "acc_trained": rec["acc_trained"],
        "delta": rec["acc_trained"] - rec["acc_base"],
        "steps": rec["steps"],
        "seconds_per_step": rec["seconds_per_step"],
        "wall_seconds": rec["wall_seconds"],
        "correct_base": rec.get("correct_base"),
        "correct_trained": rec.get("correct_trained"),
    }


def accuracy_table(config: dict[str, Any], out_csv: str | Path, by_algorithm_csv: str | Path | None = None) -> Any:
    """``results/tables/accuracy.csv``: one row per run (and, if asked, the per-algorithm summary
    :func:`accuracy_by_algorithm` as ``accuracy_by_algorithm.csv``)."""
    import pandas as pd

    rows = [accuracy_row(run, json.loads((run.dir(config["results"]) / "run.json").read_text()))
            for run in G.expand_runs(config)]
    df = pd.DataFrame(rows)
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_csv, index=False)
    if by_algorithm_csv is not None:
        accuracy_by_algorithm(df).to_csv(by_algorithm_csv, index=False)
    return df


def accuracy_by_algorithm(df: Any) -> Any:
    """Per (precision, data, algorithm): mean held-out accuracy before/after, the mean change
    with its standard error over runs, and how many runs went up / down / stayed."""
    import pandas as pd

    out = []
    for (prec, data, alg), g in df.groupby(["precision", "data", "algorithm"], sort=True):
        d = g["acc_trained"] - g["acc_base"]
        n = len(d)
        out.append(
            {
                "precision": prec,
                "data": data,
                "algorithm": alg,
                "n_runs": n,
                "acc_base": g["acc_base"].mean(),
                "acc_trained": g["acc_trained"].mean(),
                "delta_mean": d.mean(),
                "delta_se": d.std(ddof=1) / n**0.5 if n > 1 else float("nan"),
                "n_up": int((d > 0).sum()),
                "n_down": int((d < 0).sum()),
                "n_same": int((d == 0).sum()),
            }
        )
    return pd.DataFrame(out)


def _cmd_train_run(args: argparse.Namespace) -> int:
    from rlsparsity.config import load_config

    cfg = load_config(args.config)
    run = G.Run(args.family, args.algorithm, args.data, args.precision, args.seed)
    with _resume_errors():
        rec = train_run(run, cfg, device=args.device, samples=args.samples)
    if not is_main_process():
        return 0
    print(json.dumps({k: rec[k] for k in ("acc_base", "acc_trained", "steps", "seconds_per_step")}))
    return 0


def _cmd_train_group(args: argparse.Namespace) -> int:
    from rlsparsity.config import load_config

    with _resume_errors():
        train_group(load_config(args.config), args.group, device=args.device, samples=args.samples)
    return 0


@contextlib.contextmanager
def _resume_errors() -> Iterator[None]:
    """A refused resume point (corrupt or tampered checkpoint) is a one-line CLI error."""
    from rlsparsity.algorithms.checkpointing import ResumeError
    from rlsparsity.cli import CLIError

    try:
        yield
    except ResumeError as e:
        raise CLIError(str(e)) from e


def _cmd_accuracy_table(args: argparse.Namespace) -> int:
    from rlsparsity.config import load_config

    accuracy_table(load_config(args.config), args.out, args.by_algorithm)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("train", help="train one run")
    p.add_argument("family")
    p.add_argument("algorithm", choices=G.ALGORITHMS)
    p.add_argument("--data", default="on_policy", choices=G.DATA_SOURCES)
    p.add_argument("--precision", default="bf16", choices=G.PRECISIONS)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--samples",
        nargs="*",
        default=[],
        metavar="FILE",
        help="on-policy preference samples (rlsparsity preference-samples); default: draw them here",
    )
    p.set_defaults(func=_cmd_train_run)

    p = sub.add_parser(
        "train-group",
        help="train every run of one group in one process (saves the torch/transformers/trl start-up per run)",
    )
    p.add_argument(
        "--group",
        required=True,
        help="FIELD=VALUE[,FIELD=VALUE...] over family/algorithm/data/precision/seed, "
        "e.g. family=llama,precision=bf16,seed=1",
    )
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--samples",
        nargs="*",
        default=[],
        metavar="FILE",
        help="on-policy preference samples for the group's runs; default: draw them here",
    )
    p.set_defaults(func=_cmd_train_group)

    p = sub.add_parser("accuracy-table", help="collect run.json files into accuracy.csv")
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--out", required=True)
    p.add_argument("--by-algorithm", default=None, help="also write the per-algorithm summary CSV here")
    p.set_defaults(func=_cmd_accuracy_table)
