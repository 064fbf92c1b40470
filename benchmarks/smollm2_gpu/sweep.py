"""Validation-only learning-rate sweep for config/smollm2-gpu.yaml, packed on one GPU.

One representative algorithm per family (grpo for the online RL family grpo/ppo/prime, dpo for
the preference family dpo/kto/orpo/simpo, sft alone) x precision (bf16, fp32-master) x 3 learning
rates, 1 seed. Any other algorithm named in ``--representatives`` (e.g. kto, whose loss has
another scale than dpo's) is swept on its own and leaves its family: it gets its own lr.
Each job trains ``--steps`` optimiser steps, every job its own process, all at once (GPU slots
claimed as in the DAG). Each job is scored by greedy accuracy on the task's VALIDATION split
(``task.val``: disjoint from the test problems every table reports). Writes

* ``<out>/sweep.csv``            one row per job (val accuracy, base val accuracy, s/step, wall)
* ``<out>/chosen_hparams.yaml``  ``train.hparams_by_precision`` with the best lr per (family,
                                 precision), applied to every algorithm of the family; fp32 gets
                                 the fp32-master choice (same arithmetic, other storage). A
                                 second ``--configfile`` for the DAG (tools/gpu/remote.sh dag
                                 passes it when present); commit it next to the CSV.

The offline algorithms (dpo, kto, orpo, simpo, sft) label on-policy samples of the base: they
are drawn ONCE per precision before the jobs start (``rlsparsity preference-samples``, seed
``--seed``, the config's n_prompts / k / sample_temperature, into ``<out>/samples/``), exactly
the files the DAG's ``preference_samples`` rule makes, and every job trains on them (the draw a
job would make itself, so its data is unchanged: rlsparsity.samples). Without it 30 offline jobs
each sampled the same 4,096 completions.

Exact ties go to the smaller lr. On an H200: ~3-4 min.

    python benchmarks/smollm2_gpu/sweep.py --results results/smollm2-gpu --out results/smollm2-gpu/sweep
    python benchmarks/smollm2_gpu/sweep.py --device cpu --steps 2 --val-n 8 ...   # CPU check (tests)
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FAMILIES = {"grpo": ["grpo", "ppo", "prime"], "dpo": ["dpo", "kto", "orpo", "simpo"], "sft": ["sft"]}
ALGORITHMS = [a for members in FAMILIES.values() for a in members]
# Grids (2nd H200 sweep): the 1st sweep's best online lr was its largest (3e-5, sweep.csv of
# 2026-11-30) and the offline runs at 1e-6 left bf16 weights ~99.6 % bit-identical with no
# accuracy change (a step far below half a bf16 ulp), so every grid reaches one step higher.
LRS = {"grpo": [1e-5, 3e-5, 1e-4], "dpo": [3e-6, 1e-5, 3e-5], "sft": [3e-6, 1e-5, 3e-5]}
PRECISIONS = ["bf16", "fp32-master"]


def family_of(alg: str) -> str:
    return next(rep for rep, members in FAMILIES.items() if alg in members)


def members_of(rep: str, reps: list[str]) -> list[str]:
    """The algorithms that take ``rep``'s choice: itself, and its family's members that are not
    swept themselves (a family's representative also covers the members nobody swept)."""
    own = [rep]
    if rep in FAMILIES:
        own += [m for m in FAMILIES[rep] if m != rep and m not in reps]
    return own


def lr_grid(rep: str) -> list[float]:
    return LRS[family_of(rep)]


def load_cfg(path: Path, results: Path, overrides: list[str]) -> dict[str, Any]:
    import yaml

    from rlsparsity.config import validate_config

    cfg = yaml.safe_load(Path(path).read_text())
    cfg["results"] = str(results)
    for stage in ("entropy", "subnetwork", "causes"):  # the sweep trains only: a --set families= must not
        cfg.pop(stage, None)  # fail validation on a stage block that names the config's own families
    for o in overrides:  # KEY.SUB=JSON, e.g. families={"llama": {}}
        key, val = o.split("=", 1)
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = json.loads(val)
    return validate_config(cfg)


def run_job(a: argparse.Namespace) -> int:
    """One sweep job (child process): train ``steps`` steps, score on validation, write JSON."""
    if a.device.startswith("cuda"):
        from rlsparsity.gpu import claim_gpu_slot

        claim_gpu_slot()  # before torch touches CUDA
    import torch

    from rlsparsity.algorithms import TrainSpec, get_algorithm
    from rlsparsity.evaluate import evaluate
    from rlsparsity.gpu import device_record, reset_peak
    from rlsparsity.grid import Run, base_dir, run_hparams
    from rlsparsity.modeling import load_model, load_tokenizer, torch_threads, write_json
    from rlsparsity.tasks import task_from_config

    torch_threads()
    cfg = json.loads(Path(a.config_json).read_text())
    task = task_from_config(cfg)
    fam = next(iter(cfg["families"]))
    run = Run(fam, a.algorithm, "on_policy", a.precision, a.seed)
    out = Path(a.job_out)
    hp = {**run_hparams(cfg, a.algorithm, a.precision), "lr": a.lr}
    spec = TrainSpec(
        run=run,
        base_dir=base_dir(fam, cfg["results"]),
        out_dir=out / "run",
        task=task,
        steps=a.steps,
        checkpoint_every=10**6,
        hparams=hp,
        device=a.device,
        samples=tuple(Path(f) for f in a.samples),
    )
    reset_peak(a.device)
    t0 = time.time()
    stats = get_algorithm(a.algorithm)(spec)
    wall = time.time() - t0
    model = load_model(out / "run", "fp32", a.device)
    val = evaluate(model, load_tokenizer(out / "run"), task, task.val, n=a.val_n)
    write_json(
        out / "result.json",
        {
            "algorithm": a.algorithm,
            "precision": a.precision,
            "lr": a.lr,
            "seed": a.seed,
            "steps": stats.get("steps"),
            "val_accuracy": val["accuracy"],
            "n_val": val["n"],
            "seconds_per_step": stats.get("seconds_per_step"),
            "wall_seconds": round(wall, 1),
            **device_record(a.device, wall, stats.get("steps")),
        },
    )
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    for f in (out / "run").glob("*.safetensors"):  # weights are not kept
        f.unlink()
    return 0


def base_val(cfg: dict[str, Any], device: str, n: int) -> float:
    from rlsparsity.evaluate import evaluate
    from rlsparsity.grid import base_dir
    from rlsparsity.modeling import load_model, load_tokenizer
    from rlsparsity.tasks import task_from_config

    b = base_dir(next(iter(cfg["families"])), cfg["results"])
    task = task_from_config(cfg)
    return evaluate(load_model(b, "fp32", device), load_tokenizer(b), task, task.val, n=n)["accuracy"]


def choose(rows: list[dict[str, Any]], n_val: int) -> dict[str, Any]:
    """Per (swept algorithm, precision): the one-standard-error rule on validation accuracy --
    the SMALLEST lr whose accuracy is within one binomial standard error of the best one,
    sqrt(p(1-p)/n_val) at the best p. With 200 problems one SE is ~3.4 points, so a slightly
    higher score at a larger lr (one seed, 30-40 steps) does not buy a step that may not stay
    stable over the run's 100 steps. (The first sweep took the plain maximum.)"""
    by_prec: dict[str, dict[str, Any]] = {}
    reps = [a for a in ALGORITHMS if any(r["algorithm"] == a for r in rows)]
    for rep in reps:
        members = members_of(rep, reps)
        for prec in PRECISIONS:
            cand = [
                r
                for r in rows
                if r["algorithm"] == rep and r["precision"] == prec and r.get("val_accuracy") not in (None, "")
            ]
            if not cand:
                continue
            top = max(float(r["val_accuracy"]) for r in cand)
            se = math.sqrt(top * (1 - top) / max(1, n_val))
            best = min((r for r in cand if float(r["val_accuracy"]) >= top - se - 1e-12), key=lambda r: float(r["lr"]))
            for prec_out in [prec, "fp32"] if prec == "fp32-master" else [prec]:
                for alg in members:
                    by_prec.setdefault(prec_out, {})[alg] = {"lr": float(best["lr"])}
    return {"train": {"hparams_by_precision": by_prec}}


def write_choice(out: Path, rows: list[dict[str, Any]], steps: Any, n_val: int, seed: Any) -> dict[str, Any]:
    import yaml

    chosen = choose(rows, n_val)
    tmp = out / "chosen_hparams.yaml.tmp"
    tmp.write_text(
        f"# validation-chosen lr (benchmarks/smollm2_gpu/sweep.py: one-standard-error rule; {steps} steps, {n_val}"
        f" validation problems, seed {seed}); see sweep.csv\n" + yaml.safe_dump(chosen, sort_keys=True)
    )
    tmp.replace(out / "chosen_hparams.yaml")
    return chosen


def draw_samples(cfg: dict[str, Any], cfg_json: Path, out: Path, jobs: list[tuple[str, str, float]],
                 a: argparse.Namespace, env: dict[str, str]) -> list[Path] | None:
    """The preference-samples files the offline jobs train on, each drawn once, all in parallel
    (None, after printing why, if a draw failed)."""
    from rlsparsity.grid import Run
    from rlsparsity.samples import needs_samples, sample_params, samples_rel

    fam = next(iter(cfg["families"]))
    want: dict[Path, tuple[str, int, int, float]] = {}
    for alg, prec, _ in jobs:
        if needs_samples(Run(fam, alg, "on_policy", prec, a.seed)):
            n, k, t = sample_params(cfg, alg)
            want[out / samples_rel(fam, prec, a.seed, n, k, t)] = (prec, n, k, t)
    procs = []
    for f, (prec, n, k, t) in want.items():
        if f.exists():
            continue
        f.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "rlsparsity.cli", "preference-samples", "--config", str(cfg_json),
               "--family", fam, "--precision", prec, "--seed", str(a.seed), "--n-prompts", str(n), "--k", str(k),
               "--temperature", repr(t), "--device", "cuda" if a.device.startswith("cuda") else a.device,
               "--out", str(f)]
        procs.append((f, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    for f, p in procs:
        so, se = p.communicate()
        if p.returncode:
            print(f"[sweep] drawing {f} failed (rc {p.returncode}):\n{se[-3000:]}", file=sys.stderr, flush=True)
            return None
        print(f"[sweep] samples {f.relative_to(out)}: {so.strip()}", flush=True)
    return list(want)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO / "config" / "smollm2-gpu.yaml")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides KEY.SUB=JSON (tests: a tiny family)")
    ap.add_argument("--results", type=Path, default=Path("results/smollm2-gpu"))
    ap.add_argument("--out", type=Path, default=None, help="default: <results>/sweep")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--val-n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--representatives", nargs="+", default=list(FAMILIES), choices=ALGORITHMS,
                    help="algorithms to sweep; one of a family's members covers only itself")
    ap.add_argument("--lrs", nargs="*", default=None, help="override every family's lr grid")
    ap.add_argument("--precisions", nargs="+", default=PRECISIONS, choices=PRECISIONS)
    ap.add_argument("--slots", type=int, default=16, help="jobs at once (over all GPUs)")
    ap.add_argument("--gpu-mem", type=int, default=0,
                    help="GB the running jobs may declare in all (config gpu.job_memory_gb; 0: no limit)")
    ap.add_argument("--timeout", type=float, default=290.0, help="seconds for all jobs; late ones are killed")
    ap.add_argument(
        "--choose-from", nargs="+", default=None, help="apply the choice rule to these sweep CSVs, run nothing"
    )
    ap.add_argument("--samples", nargs="*", default=[], help=argparse.SUPPRESS)  # a job's samples files
    ap.add_argument("--job", nargs=5, metavar=("ALG", "PREC", "LR", "CONFIG_JSON", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    command = " ".join(["benchmarks/smollm2_gpu/sweep.py", *(sys.argv[1:] if argv is None else argv)])
    if a.choose_from:  # re-apply the rule to measured CSVs (e.g. a sweep rerun in parts)
        rows = [dict(r) for f in a.choose_from for r in csv.DictReader(open(f))]
        n_val = {int(r["n_val"]) for r in rows if r.get("n_val")}
        if len(n_val) != 1:
            print(f"sweep: --choose-from rows disagree on n_val: {sorted(n_val)}", file=sys.stderr)
            return 1
        out = a.out or Path(a.choose_from[0]).parent
        out.mkdir(parents=True, exist_ok=True)
        steps = {r["steps"] for r in rows if r.get("steps")}
        print(write_choice(out, rows, "/".join(sorted(steps)), n_val.pop(), a.seed))
        return 0
    if a.job:
        a.algorithm, a.precision, lr, a.config_json, a.job_out = a.job
        a.lr = float(lr)
        return run_job(a)

    from rlsparsity.grid import base_dir
    from rlsparsity.modeling import write_json

    out = a.out or a.results / "sweep"
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_cfg(a.config, a.results, a.set)
    fam = next(iter(cfg["families"]))
    cfg_json = out / "config.json"
    write_json(cfg_json, cfg)
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    if a.device.startswith("cuda"):
        env.update(RLSPARSITY_GPU_LOCKS=str(out / ".gpu_locks"), RLSPARSITY_GPU_SLOTS=str(a.slots))
    t0 = time.time()
    base = base_dir(fam, cfg["results"])
    if not (base / "metrics.json").exists():
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "rlsparsity.cli",
                "build-base",
                fam,
                "--out",
                str(base),
                "--config",
                str(cfg_json),
                "--device",
                a.device,
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        if r.returncode:
            print(r.stderr[-3000:], file=sys.stderr)
            return 1
    print(f"[sweep] base ready ({time.time() - t0:.0f} s)", flush=True)
    jobs = [(rep, prec, float(lr)) for rep in a.representatives for prec in a.precisions
            for lr in (a.lrs or lr_grid(rep))]
    from rlsparsity.gpu import gpu_mem_gb

    def mem_of(rep: str, prec: str) -> int:  # the job's declared GPU memory (config gpu.job_memory_gb)
        return gpu_mem_gb(cfg, fam, rep, prec) if a.device.startswith("cuda") else 0

    def fits(job: tuple[str, str, float], running: list[Any]) -> bool:
        """--gpu-mem: start a job only while the running jobs' declared memory leaves room for it
        (the first job always starts); each job claims the GPU with the least declared memory."""
        used = sum(mem_of(r[0][0], r[0][1]) for r in running)
        return not a.gpu_mem or not running or used + mem_of(job[0], job[1]) <= a.gpu_mem

    samples = draw_samples(cfg, cfg_json, out, jobs, a, env)
    if samples is None:
        return 1
    print(f"[sweep] {len(samples)} samples file(s) ready ({time.time() - t0:.0f} s)", flush=True)
    procs: list[tuple[tuple[str, str, float], subprocess.Popen, Path]] = []
    pending = list(jobs)
    running: list[tuple[tuple[str, str, float], subprocess.Popen, Path]] = []
    t1 = time.time()
    bval = None
    while pending or running:
        while pending and len(running) < a.slots and fits(pending[0], running):
            rep, prec, lr = pending.pop(0)
            jdir = out / f"{rep}_{prec}_lr{lr:g}"
            jdir.mkdir(parents=True, exist_ok=True)
            log = open(jdir / "log.txt", "w")
            p = subprocess.Popen(
                [sys.executable, __file__, "--job", rep, prec, repr(lr), str(cfg_json), str(jdir)]
                + ["--steps", str(a.steps), "--val-n", str(a.val_n), "--device", a.device, "--seed", str(a.seed)]
                + ["--samples", *map(str, samples)],
                env={**env, "RLSPARSITY_GPU_MEM_GB": str(mem_of(rep, prec))},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            running.append(((rep, prec, lr), p, jdir))
            procs.append(running[-1])
        if bval is None:  # the base's validation accuracy, while the jobs run
            bval = base_val(cfg, a.device, a.val_n)
        time.sleep(0.5)
        late = time.time() - t1 > a.timeout
        for item in list(running):
            if item[1].poll() is not None or late:
                if late and item[1].poll() is None:
                    item[1].kill()
                running.remove(item)
        if late:
            pending.clear()
    from rlsparsity.stats import binomial_half_width

    rows = []
    for (rep, prec, lr), p, jdir in procs:
        res = jdir / "result.json"
        row = (
            json.loads(res.read_text())
            if res.exists()
            else {"algorithm": rep, "precision": prec, "lr": lr, "val_accuracy": None, "error": f"rc {p.returncode}"}
        )
        row["base_val_accuracy"] = bval
        if row.get("val_accuracy") is not None:  # normal-approximation 95 % half-width over the problems
            row["val_accuracy_95_half_width"] = round(binomial_half_width(row["val_accuracy"], row["n_val"]), 4)
        row["command"] = command
        rows.append(row)
        if not res.exists():  # say why here: the job folders may not come back from the machine
            tail = (
                (jdir / "log.txt").read_text(errors="replace").splitlines()[-12:] if (jdir / "log.txt").exists() else []
            )
            print(f"[sweep] FAILED {rep} {prec} lr {lr:g} ({row['error']}), log tail:", *tail, sep="\n    ", flush=True)
        print(
            f"[sweep] {rep:5s} {prec:11s} lr {lr:<8g} val acc {row.get('val_accuracy')} "
            f"(base {bval:.3f})  {row.get('seconds_per_step')} s/step  {row.get('error', '')}",
            flush=True,
        )
    cols = [
        "algorithm",
        "precision",
        "lr",
        "seed",
        "steps",
        "val_accuracy",
        "val_accuracy_95_half_width",
        "base_val_accuracy",
        "n_val",
        "seconds_per_step",
        "train_seconds_per_step",
        "wall_seconds",
        "device",
        "peak_gpu_memory_mb",
        "error",
        "command",
    ]
    with open(out / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    import yaml

    chosen = write_choice(out, rows, a.steps, a.val_n, a.seed)
    print(f"[sweep] {len(rows)} jobs in {time.time() - t1:.0f} s -> {out / 'sweep.csv'}, {out / 'chosen_hparams.yaml'}")
    print(yaml.safe_dump(chosen, sort_keys=True))
    return 0 if all(r.get("val_accuracy") is not None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
