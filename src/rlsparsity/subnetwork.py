"""Subnetwork finetuning and the causes ablations (SPEC §1 "Subnetwork finetune", "Causes").

Subnetwork finetune
-------------------
For a full run θ_full of the main grid (same family, algorithm, data, precision, seed):

1. mask m = |θ_full − θ_base| > ``mask_tol`` per stored tensor (default ``mask_tol`` = 0:
   exact Δ ≠ 0), computed by the diff engine (:func:`rlsparsity.analysis.diff.diff_checkpoints`)
   from the two checkpoints, or read from a stored exact mask file when ``mask_tol`` = 0;
2. the same training (data, hyperparameters, seed, steps) is rerun from the base with
   ``TrainSpec.mask = m``: masked-out entries get zero gradient and are put back to their
   base values after every optimiser step (weight decay and Adam state cannot move them);
3. the rerun is compared with the full run: held-out accuracy (base, full, subnetwork) and
   the *agreement* — fraction of entries with |θ_sub − θ_full| ≤ t for t ∈ ``tolerances``
   (paper: 94.0% DPO / 90.5% PRIME at 1e-5, 100% at 1e-4) — again with the diff engine
   (full run as "base", subnetwork run as "tuned"; the sparsity of that diff IS the agreement);
4. ``mask_violations`` = entries the rerun changed (vs base) outside its mask (must be 0).

Random control (:mod:`rlsparsity.masks`): by default the same number of True entries as m per
tensor AND per octave of the base weight's magnitude (``random_match: magnitude``; ``uniform``:
per tensor only), trained and compared the same way; each rerun's realised sparsity vs base
(``sparsity_subnetwork``) and its agreement with the full run on the mask's entries
(``agreement_on_mask``, beside the all-entries ``agreement``) are reported.

Mask names are the stored tensor names; a tied ``lm_head.weight`` is stored once, so a
mask without it is fine. Masks are aligned to ``model.named_parameters()`` before training:
names that are not parameters (buffers, tied aliases) are dropped, and a parameter that the
mask does not name is frozen whole (both recorded in ``run.json``).

Causes (SPEC Table 5 and the KL result)
---------------------------------------
Update sparsity vs base in every configured precision for: DPO on on-policy vs off-policy
pairs; SFT on the model's own correct samples (rejection sampling, data ``on_policy``) vs
reference solutions (``off_policy``); GRPO with KL (TRL ``beta``) off vs on; PPO with KL
(``kl_coef``) on vs off. Settings that equal a main-grid run (same data and effective
hyperparameters) reuse it (``results/runs/...``); the others (KL variants) are trained
under ``results/causes/runs/<family>/<algorithm>/kl<coef>/<precision>/seed<seed>/``.

Layout::

    results/subnetwork/<family>/<algorithm>/<data>/<precision>/seed<N>/<kind>/   kind: subnetwork | random
        model.safetensors (+ config, tokenizer), mask.safetensors (training mask), run.json
    results/subnetwork/<family>/subnetwork.csv      per family -> results/tables/subnetwork.csv
    results/causes/runs/...                          KL variants  -> results/tables/causes.csv

This module is imported by the Snakefile: keep its top level light (no torch).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlsparsity import grid as G

MASK_KINDS: tuple[str, ...] = ("subnetwork", "random")
DEFAULT_AGREEMENT_TOLS: tuple[float, ...] = (0.0, 1e-5, 1e-4)
SUBNETWORK_COLUMNS = ["family", "algorithm", "seed", "precision", "mask", "acc_base", "acc_full",
                      "acc_subnetwork", "tolerance", "agreement", "data", "mask_tol", "mask_density",
                      "mask_violations", "sparsity_full", "sparsity_subnetwork", "n_params", "steps",
                      "wall_seconds", "agreement_on_mask", "correct_base", "correct_full", "correct_subnetwork"]
# ======================================================================= config -> jobs (light)

from rlsparsity.causes import (  # noqa: E402,F401  (re-exported: the stage API)
    CAUSES_COLUMNS,
    DEFAULT_KL_ON,
    KL_PARAM,
    Setting,
    _as_list,
    _families,
    causes_settings,
    causes_table,
    causes_to_train,
    causes_train,
)


@dataclass(frozen=True)
class SubJob:
    """One masked rerun: the full run it copies and the kind of mask."""

    run: G.Run
    kind: str  # "subnetwork" | "random"

    def dir(self, results: str | Path) -> Path:
        return Path(results) / "subnetwork" / self.run.rel / self.kind


def subnetwork_settings(config: dict[str, Any]) -> dict[str, Any]:
    b = dict(config.get("subnetwork") or {})
    return {"tolerances": tuple(float(t) for t in b.get("tolerances", DEFAULT_AGREEMENT_TOLS)),
            "mask_tol": float(b.get("mask_tol", 0.0)), "random_control": bool(b.get("random_control", True)),
            "random_seed": int(b.get("random_seed", 0)), "random_match": str(b.get("random_match", "magnitude"))}


def subnetwork_jobs(config: dict[str, Any]) -> list[SubJob]:
    """Masked reruns asked for by the config's optional ``subnetwork`` block."""
    b = config.get("subnetwork")
    if not b:
        return []
    kinds = ["subnetwork"] + (["random"] if b.get("random_control", True) else [])
    algs = _as_list(b.get("algorithms", list(G.PAPER_ALGORITHMS)))
    jobs = []
    for fam in _families(config, b.get("families", "all")):
        for alg in algs:
            data = b.get("data", "on_policy")
            if data not in G.supported_data(alg):
                data = "on_policy"
            for prec in _as_list(b.get("precision", "bf16")):
                for seed in _as_list(b.get("seeds", [1])):
                    for k in kinds:
                        jobs.append(SubJob(G.Run(fam, alg, data, prec, int(seed)), k))
    return sorted(set(jobs), key=lambda j: (j.run, j.kind))


from rlsparsity.masks import (  # noqa: E402,F401  (re-exported: the stage API)
    agreement,
    align_mask,
    magnitude_bins,
    mask_from_diff,
    mask_violations,
    masked_agreement,
    random_mask_like,
    random_mask_magnitude_matched,
    read_weights,
    sparsity_vs,
    write_mask,
)

# ======================================================================= training


def _print(*a: Any) -> None:
    print(*a, flush=True)


def train_variant(run: G.Run, config: dict[str, Any], out: str | Path, base: str | Path,
                  hparams: dict[str, Any] | None = None, mask: dict[str, Any] | None = None,
                  extra_record: dict[str, Any] | None = None, device: str = "cpu") -> dict[str, Any]:
    """Train ``run`` from ``base`` into ``out`` exactly as the main grid does (same data,
    hyperparameters, seed, steps), with optional hparam overrides and update mask; evaluate
    the stored weights and write ``run.json``. Any earlier partial state in ``out`` is removed."""
    from rlsparsity.algorithms import TrainSpec, get_algorithm
    from rlsparsity.evaluate import evaluate
    from rlsparsity.modeling import load_model, load_tokenizer, torch_threads, versions, write_json
    from rlsparsity.tasks import task_from_config

    torch_threads()
    out = Path(out)
    for stale in ("resume", "checkpoints"):
        shutil.rmtree(out / stale, ignore_errors=True)
    base = Path(base)
    base_metrics = json.loads((base / "metrics.json").read_text()) if (base / "metrics.json").exists() else {}
    task = task_from_config(config)
    tc = config["train"]
    hp = {**G.run_hparams(config, run.algorithm, run.precision), **(hparams or {})}
    spec = TrainSpec(run=run, base_dir=base, out_dir=out, task=task, steps=tc["steps"],
                     checkpoint_every=tc["checkpoint_every"], hparams=hp, mask=mask, device=device)
    from rlsparsity.gpu import device_record, reset_peak

    reset_peak(device)
    t0 = time.time()
    stats = get_algorithm(run.algorithm)(spec)
    wall = time.time() - t0
    after = evaluate(load_model(out, "fp32", device), load_tokenizer(out), task, n=tc["eval_n"])
    record = {**run.as_dict(), "experiment": config.get("experiment"), "task": task.name, "base": str(base),
              "acc_base": base_metrics.get("accuracy"), "acc_trained": after["accuracy"],
              "correct_base": base_metrics.get("correct"), "correct_trained": after["correct"],
              "mean_reward_trained": after["mean_reward"], "n_eval": after["n"], "steps": stats.get("steps"),
              "seconds_per_step": stats.get("seconds_per_step"), "wall_seconds": round(wall, 3),
              "hparams": stats.get("hparams"), "hparam_overrides": hparams or {},
              "data_stats": stats.get("data_stats"), "history": stats.get("history"),
              "storage_dtype": "float32" if run.precision == "fp32" else "bfloat16",
              "samples": after["samples"], "versions": versions(), **device_record(device, wall, stats.get("steps")),
              **(extra_record or {})}
    write_json(out / "run.json", record)
    return record


def run_subnetwork_job(job: SubJob, config: dict[str, Any], results: str | Path, out_root: str | Path,
                       mask_tol: float = 0.0, tolerances: Iterable[float] = DEFAULT_AGREEMENT_TOLS,
                       random_seed: int = 0, stored_mask: str | Path | None = None,
                       log: Any = None, random_match: str = "magnitude", device: str = "cpu",
                       standalone: bool = False) -> list[dict[str, Any]]:
    """One masked rerun + its comparison; returns its rows of subnetwork.csv.

    ``standalone``: the job runs in its own process next to the other kind of the same run
    (config ``subnetwork.job_per_run``), so a random job derives the full-run mask into its
    own folder instead of sharing (and racing on) the subnetwork job's mask file."""
    from rlsparsity.analysis.diff import tol_key
    from rlsparsity.analysis.io import load_mask

    log = log or _print
    run, tolerances = job.run, tuple(float(t) for t in tolerances)
    base = G.base_dir(run.family, results)
    full = run.dir(results)
    if not (full / "model.safetensors").exists():
        raise FileNotFoundError(f"full run missing: {full} (train it first: snakemake {full}/model.safetensors)")
    full_rec = json.loads((full / "run.json").read_text())
    out = job.dir(out_root)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    # the subnetwork mask of the full run (always computed/stored next to the subnetwork job)
    sub_mask_path = SubJob(run, "subnetwork").dir(out_root) / "mask.safetensors"
    if standalone and job.kind == "random":
        sub_mask_path = out / "full_mask.safetensors"
    if job.kind == "subnetwork" or not sub_mask_path.exists():
        full_mask = mask_from_diff(base, full, sub_mask_path, mask_tol, stored_mask)
    else:
        full_mask = load_mask(sub_mask_path)
    if job.kind == "random":
        if random_match == "magnitude":
            mask = random_mask_magnitude_matched(full_mask, read_weights(base, full_mask), random_seed + run.seed)
        elif random_match == "uniform":
            mask = random_mask_like(full_mask, random_seed + run.seed)
        else:
            raise ValueError(f"subnetwork.random_match must be 'magnitude' or 'uniform', got {random_match!r}")
        mask_path = write_mask(mask, out / "mask.safetensors", {"kind": "random", "seed": str(random_seed + run.seed),
                                                               "mask_tol": repr(mask_tol), "match": random_match})
    else:
        mask, mask_path = full_mask, sub_mask_path
    aligned, info = align_mask(mask, base)
    rec = train_variant(run, config, out, base, mask=aligned,
                        extra_record={"mask_kind": job.kind, "mask_tol": mask_tol, "mask_info": info,
                                      "full_run": str(full)}, device=device)
    viol = mask_violations(base, out, mask_path, out / "changed.tmp.safetensors")
    agr = agreement(full, out, tolerances)
    agr_mask = masked_agreement(full, out, mask, tolerances)
    sp_sub = sparsity_vs(base, out, (0.0,))
    n_stored = sum(int(v.numel()) for v in mask.values())
    density = sum(int(v.sum()) for v in mask.values()) / n_stored if n_stored else float("nan")
    wall = round(time.time() - t0, 3)
    rec.update({"mask_violations": viol, "agreement": agr, "sparsity_subnetwork": sp_sub["sparsity"]["0"],
                "mask_density": density, "acc_full": full_rec["acc_trained"], "agreement_on_mask": agr_mask,
                "random_match": random_match if job.kind == "random" else None})
    (out / "run.json").write_text(json.dumps(rec, indent=1, default=str) + "\n")
    if viol:
        log(f"WARNING [subnetwork] {run.rel} {job.kind}: {viol} entries moved outside the mask")
    log(f"[subnetwork] {run.rel} {job.kind}: density {density:.4f}, acc base {full_rec['acc_base']:.3f} "
        f"full {full_rec['acc_trained']:.3f} sub {rec['acc_trained']:.3f}, agreement "
        + " ".join(f"{k}:{v:.4f}" for k, v in agr.items()) + f", violations {viol} ({wall:.1f} s)")
    rows = []
    for t in tolerances:
        rows.append({"family": run.family, "algorithm": run.algorithm, "seed": run.seed, "precision": run.precision,
                     "mask": job.kind, "acc_base": full_rec["acc_base"], "acc_full": full_rec["acc_trained"],
                     "acc_subnetwork": rec["acc_trained"], "tolerance": t, "agreement": agr[tol_key(t)],
                     "agreement_on_mask": agr_mask[tol_key(t)], "correct_base": full_rec.get("correct_base"),
                     "correct_full": full_rec.get("correct_trained"), "correct_subnetwork": rec.get("correct_trained"),
                     "data": run.data, "mask_tol": mask_tol, "mask_density": density, "mask_violations": viol,
                     "sparsity_full": 1.0 - density if job.kind == "subnetwork" else float("nan"),
                     "sparsity_subnetwork": sp_sub["sparsity"]["0"], "n_params": sp_sub["n_params"],
                     "steps": rec["steps"], "wall_seconds": wall})
    return rows


def subnetwork_family(config: dict[str, Any], family: str, out_csv: str | Path, results: str | Path | None = None,
                      out_root: str | Path | None = None, algorithms: list[str] | None = None,
                      kinds: list[str] | None = None, log: Any = None, device: str = "cpu") -> list[dict[str, Any]]:
    """Every configured masked rerun of one family (one process), rows -> ``out_csv``."""
    from rlsparsity.analysis.tables import write_csv

    log = log or _print
    results = results or config["results"]
    out_root = out_root or results
    st = subnetwork_settings(config)
    jobs = [j for j in subnetwork_jobs(config) if j.run.family == family
            and (not algorithms or j.run.algorithm in algorithms) and (not kinds or j.kind in kinds)]
    # subnetwork before random: the random job reuses the subnetwork mask file
    jobs.sort(key=lambda j: (j.run, MASK_KINDS.index(j.kind)))
    rows: list[dict[str, Any]] = []
    for job in jobs:
        rows += run_subnetwork_job(job, config, results, out_root, st["mask_tol"], st["tolerances"],
                                   st["random_seed"], log=log, random_match=st["random_match"], device=device)
    write_csv(Path(out_csv), rows, SUBNETWORK_COLUMNS)
    return rows


def subnetwork_one(config: dict[str, Any], job: SubJob, out_csv: str | Path, results: str | Path | None = None,
                   device: str = "cpu", log: Any = None) -> list[dict[str, Any]]:
    """One configured masked rerun in its own process (``subnetwork.job_per_run``): rows -> ``out_csv``."""
    from rlsparsity.analysis.tables import write_csv

    if job not in subnetwork_jobs(config):
        raise ValueError(f"{job.run.rel} {job.kind}: not a masked rerun of the config's subnetwork block")
    results = results or config["results"]
    st = subnetwork_settings(config)
    rows = run_subnetwork_job(job, config, results, results, st["mask_tol"], st["tolerances"], st["random_seed"],
                              log=log, random_match=st["random_match"], device=device, standalone=True)
    write_csv(Path(out_csv), rows, SUBNETWORK_COLUMNS)
    return rows


# ======================================================================= CLI


def _load(args: argparse.Namespace) -> dict[str, Any]:
    from rlsparsity.config import load_config

    cfg = load_config(args.config)
    if getattr(args, "results", None):
        cfg["results"] = args.results
    return cfg


def _cmd_subnetwork_family(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if args.tolerances:
        cfg.setdefault("subnetwork", {})["tolerances"] = args.tolerances
    if args.mask_tol is not None:
        cfg.setdefault("subnetwork", {})["mask_tol"] = args.mask_tol
    subnetwork_family(cfg, args.family, args.out, out_root=args.out_root, algorithms=args.algorithms,
                      kinds=args.kinds, device=args.device)
    return 0


def _cmd_subnetwork_job(args: argparse.Namespace) -> int:
    cfg = _load(args)
    job = SubJob(G.Run(args.family, args.algorithm, args.data, args.precision, args.seed), args.kind)
    subnetwork_one(cfg, job, args.out, device=args.device)
    return 0


def _cmd_subnetwork_table(args: argparse.Namespace) -> int:
    from rlsparsity.analysis.tables import concat_tables

    concat_tables([Path(p) for p in args.inputs], Path(args.out))
    return 0


def _cmd_causes_train(args: argparse.Namespace) -> int:
    causes_train(_load(args), args.family)
    return 0


def _cmd_causes_table(args: argparse.Namespace) -> int:
    causes_table(_load(args), args.out)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("subnetwork-family",
                       help="masked reruns (subnetwork + random control) of one family's full runs, compared")
    p.add_argument("family")
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--out", required=True, help="per-family CSV")
    p.add_argument("--results", default=None, help="where base/ and runs/ are read (default: config 'results')")
    p.add_argument("--out-root", default=None, help="where subnetwork/ is written (default: --results)")
    p.add_argument("--algorithms", nargs="*", default=None, help="only these algorithms")
    p.add_argument("--kinds", nargs="*", default=None, choices=MASK_KINDS)
    p.add_argument("--tolerances", nargs="*", type=float, default=None)
    p.add_argument("--mask-tol", type=float, default=None)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_subnetwork_family)

    p = sub.add_parser("subnetwork-job", help="one masked rerun (subnetwork or random) of one full run, compared")
    p.add_argument("family")
    p.add_argument("algorithm", choices=G.ALGORITHMS)
    p.add_argument("--data", default="on_policy", choices=G.DATA_SOURCES)
    p.add_argument("--precision", default="bf16", choices=G.PRECISIONS)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--kind", required=True, choices=MASK_KINDS)
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--results", default=None)
    p.add_argument("--out", required=True, help="CSV of this job's rows")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_subnetwork_job)

    p = sub.add_parser("subnetwork-table", help="stack per-family subnetwork CSVs")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_subnetwork_table)

    p = sub.add_parser("causes-train", help="train the causes settings no main-grid run provides (KL variants)")
    p.add_argument("family")
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--results", default=None)
    p.set_defaults(func=_cmd_causes_train)

    p = sub.add_parser("causes-table", help="update sparsity of every causes setting -> causes.csv")
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--results", default=None)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_causes_table)
