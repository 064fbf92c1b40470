"""Token-entropy restriction of the policy gradient ("Beyond the 80/20 rule", arXiv 2506.01939).

Definitions (SPEC §2):

* **Token entropy** H_t = −Σ_j p_tj log p_tj over the full vocabulary, from the training
  policy's logits divided by the sampling temperature (TRL's fused LM head computes it so
  during training; :func:`score_entropies` uses ``rollout.token_logprobs`` for the statistics).
* **Restriction**: on top of the GRPO entry with DAPO settings (loss_type "dapo", clip-higher
  ε_low 0.2 / ε_high 0.28, β = 0, no entropy bonus), each token's clipped term is multiplied by a
  0/1 mask over the response tokens. Selection (``entropy.selection``, :mod:`rlsparsity.entropy_mask`):
  ``exact_k`` (default; official code) keeps exactly k = max(1, int(N·ρ + 0.9999)) top-entropy
  tokens, ties broken deterministically by position; ``threshold`` (TRL) keeps every token with
  H ≥ the (1 − ρ) quantile, all ties kept (kept share ≥ ρ; 100 % when ≥ 1 − ρ of the tokens tie).
  Variant ``top`` keeps the selected tokens; ``bottom`` keeps the complement of the top-20 % set,
  the paper's "train only on the other 80 %".
* **Selection scope**: the whole batch of one optimiser step. The official code selects per
  forward micro-batch on each rank; the trainer requires one micro-batch per generation batch on
  one process (``gradient_accumulation_steps == steps_per_generation == 1``), so the two coincide.
* **Normalisers**, named by source: ``kept`` (official code) — token mean over the kept tokens;
  ``all`` (paper equation / TRL) — the masked sum divided by all response tokens (≈ ρ times
  smaller). The two differ by a per-batch factor N/K only; with gradient clipping and Adam most
  of that factor is absorbed, so they give close (not identical) weights.
* **Kept fraction** is logged every step (``entropy_mask/kept_fraction`` in run.json's history;
  mean / min / max in entropy.csv).

How it is built: :class:`EntropyGRPOTrainer` (:func:`trainer_class`) subclasses TRL 1.16's
GRPOTrainer and overrides only ``get_high_entropy_mask`` (the selection above, complemented for
``bottom``, remembered) and ``_compute_loss`` (TRL's loss, rescaled to the kept-token denominator
for ``kept``; kept fraction / kept tokens / threshold logged). ρ = 1 (``top``) keeps every token;
there ``kept`` and ``all`` are the same objective, so a ρ = 1 run is trained once.

Runs live at ``results/entropy/<family>/rho<ρ>-<variant>-<normaliser>/<precision>/seed<N>/``
(``bottom`` is labelled with ρ = 0.8, the share it keeps). One process per family
(:func:`entropy_family`) trains every configured run, evaluates it, diffs it against the base
with the analysis diff engine (update sparsity, update mask), overlaps its mask with the
full-token (ρ = 1) run of the same seed, and computes the entropy statistics of the base and of
every trained policy on the same held-out responses, sampled once from the base.

This module is imported by the Snakefile: keep torch / transformers imports inside functions.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlsparsity.entropy_mask import BOTTOM_EXCLUDED, BOTTOM_RHO, DAPO, NORMALISERS, VARIANTS  # noqa: F401
from rlsparsity.entropy_stats import LOW_ENTROPY, STATS_TOP  # noqa: F401

ENTROPY_DEFAULTS: dict[str, Any] = {
    "families": "all", "rhos": [0.1, 0.2, 0.5, 1.0], "variants": ["top", "bottom"], "normalisers": ["kept"],
    "normaliser_rhos": {}, "seeds": [1], "precision": "bf16", "steps": None, "checkpoint_every": None,
    "hparams": {}, "stats_prompts": 64, "stats_samples": 4, "eval_n": None, "selection": "exact_k", "task": None,
}

RUN_COLUMNS = ["family", "rho", "variant", "normaliser", "seed", "precision", "acc_base", "acc_trained",
               "kept_fraction", "sparsity", "o1", "o2", "o1_random", "o2_random",
               "kept_fraction_min", "kept_fraction_max", "sparsity_tol0", "below_bf16_half_ulp", "reference",
               "steps", "seconds_per_step", "mean_reward_trained", "n_eval", "selection", "correct_base",
               "correct_trained"]
STATS_COLUMNS = ["family", "model", "rho", "variant", "normaliser", "seed", "precision", "n_responses",
                 "n_tokens", "mean_entropy", "frac_below_1e-2", "p80_entropy", "top20_overlap_with_base",
                 "top20_jaccard_with_base", "forking_tokens"]


# --------------------------------------------------------------------------- run grid (light)
def fmt_rho(rho: float) -> str:
    return format(float(rho), "g")


@dataclass(frozen=True, order=True)
class EntropyRun:
    family: str
    rho: float          # fraction of tokens kept by design (top: ρ; bottom: 0.8)
    variant: str        # top | bottom
    normaliser: str     # kept | all
    precision: str
    seed: int

    @property
    def tag(self) -> str:
        return f"rho{fmt_rho(self.rho)}-{self.variant}-{self.normaliser}"

    @property
    def rel(self) -> str:
        return f"{self.family}/{self.tag}/{self.precision}/seed{self.seed}"

    def dir(self, results: str | Path = "results") -> Path:
        return Path(results) / "entropy" / self.rel

    @property
    def is_full(self) -> bool:
        """ρ = 1 top: every token kept (the all-token reference)."""
        return self.variant == "top" and self.rho >= 1.0

    @property
    def trl_quantile(self) -> float:
        """Value handed to TRL's ``top_entropy_quantile`` (bottom: the top-20% it complements)."""
        return float(self.rho) if self.variant == "top" else BOTTOM_EXCLUDED

    def as_dict(self) -> dict[str, Any]:
        return {"family": self.family, "rho": self.rho, "variant": self.variant, "normaliser": self.normaliser,
                "seed": self.seed, "precision": self.precision}


def entropy_block(config: dict[str, Any]) -> dict[str, Any] | None:
    """The config's ``entropy`` block with defaults filled in (None when absent)."""
    blk = config.get("entropy")
    if blk is None:
        return None
    return {**ENTROPY_DEFAULTS, **blk}


def entropy_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config the entropy stage runs under: ``entropy.task`` (when set) replaces the task name
    (same split sizes and seed); everything else is the experiment's."""
    blk = entropy_block(config) or {}
    if not blk.get("task") or blk["task"] == config["task"]["name"]:
        return config
    return {**config, "task": {**config["task"], "name": blk["task"]}}


def entropy_base_dir(config: dict[str, Any], family: str) -> Path:
    """The base the entropy runs start from: the experiment's base of ``family``, or, when the
    entropy stage has its own task, a base trained from scratch on that task under
    ``<results>/entropy/<family>/base-<task>/`` (built by the family job)."""
    from rlsparsity.grid import base_dir

    ec = entropy_config(config)
    if ec is config:
        return base_dir(family, config["results"])
    return Path(config["results"]) / "entropy" / family / f"base-{ec['task']['name']}"


def ensure_entropy_base(config: dict[str, Any], family: str, log: Any = print) -> Path:
    """Build the entropy stage's own base if it needs one and it is not complete yet (metrics.json,
    written last, marks a complete base)."""
    path = entropy_base_dir(config, family)
    ec = entropy_config(config)
    if ec is not config and not (path / "metrics.json").exists():
        from rlsparsity.base import build_base

        log(f"[entropy] {family}: training a base from scratch on {ec['task']['name']} -> {path}")
        m = build_base(family, ec, path)
        log(f"[entropy] {family}: base test accuracy {m['accuracy']:.3f} after {m.get('steps')} steps")
    return path


def entropy_families(config: dict[str, Any]) -> list[str]:
    blk = entropy_block(config)
    if blk is None:
        return []
    fams = list(config["families"]) if blk["families"] == "all" else list(blk["families"])
    unknown = [f for f in fams if f not in config["families"]]
    if unknown:
        raise ValueError(f"entropy.families names {unknown}, not listed under 'families'")
    return fams


def _normaliser_applies(blk: dict[str, Any], normaliser: str, variant: str, rho: float) -> bool:
    only = blk.get("normaliser_rhos", {}).get(normaliser)
    if only is None:
        return True
    return any((o == "bottom" and variant == "bottom") or (o != "bottom" and variant == "top"
                                                            and math.isclose(float(o), rho)) for o in only)


def expand_entropy_runs(config: dict[str, Any], family: str | None = None) -> list[EntropyRun]:
    """Every configured entropy run: (top × rhos ∪ bottom) × normalisers × seeds, per family.

    ``normaliser_rhos: {all: [0.2]}`` restricts a normaliser to the listed ρ (top variant;
    the string ``bottom`` selects the bottom variant). ρ = 1 top is trained once (with the
    first listed normaliser), since every token is kept and both normalisers coincide.
    """
    blk = entropy_block(config)
    if blk is None:
        return []
    runs: set[EntropyRun] = set()
    shapes = [("top", float(r)) for r in blk["rhos"] if "top" in blk["variants"]]
    if "bottom" in blk["variants"]:
        shapes.append(("bottom", BOTTOM_RHO))
    norms = list(blk["normalisers"])
    for fam in entropy_families(config):
        if family is not None and fam != family:
            continue
        for variant, rho in shapes:
            applicable = [n for n in norms if _normaliser_applies(blk, n, variant, rho)]
            if variant == "top" and rho >= 1.0:
                applicable = applicable[:1] or norms[:1]
            for norm in applicable:
                for seed in blk["seeds"]:
                    runs.add(EntropyRun(fam, rho, variant, norm, blk["precision"], int(seed)))
    return sorted(runs)


def reference_run(run: EntropyRun, runs: list[EntropyRun]) -> EntropyRun | None:
    """The full-token (ρ = 1) run of the same family, precision and seed."""
    for r in runs:
        if r.is_full and (r.family, r.precision, r.seed) == (run.family, run.precision, run.seed):
            return r
    return None


from rlsparsity.entropy_mask import (  # noqa: E402,F401  (re-exported: the stage API)
    SELECTIONS,
    build_trainer,
    entropy_hparams,
    exact_k,
    select_exact_k,
    select_threshold,
    select_tokens,
    train_entropy,
    trainer_class,
)
from rlsparsity.entropy_stats import (  # noqa: E402,F401
    compare_entropies,
    entropy_stats,
    forking_tokens,
    format_forking,
    position_overlap,
    sample_responses,
    score_entropies,
    stats_rows,
)


# --------------------------------------------------------------------------- one family, end to end
def _spec_for(run: EntropyRun, config: dict[str, Any], results: Path, device: str = "cpu") -> Any:
    from rlsparsity.algorithms.common import TrainSpec
    from rlsparsity.grid import Run
    from rlsparsity.tasks import task_from_config

    blk = entropy_block(config)
    tc = config["train"]
    from rlsparsity.grid import fsdp_units, run_hparams

    hp = {**run_hparams(config, "grpo", run.precision), **blk.get("hparams", {})}
    return TrainSpec(run=Run(run.family, "grpo", "on_policy", run.precision, run.seed),
                     base_dir=entropy_base_dir({**config, "results": str(results)}, run.family),
                     out_dir=run.dir(results), task=task_from_config(entropy_config(config)),
                     steps=blk["steps"] or tc["steps"],
                     checkpoint_every=blk["checkpoint_every"] or tc["checkpoint_every"], hparams=hp, device=device,
                     fsdp_units=fsdp_units(config, run.family))


def train_entropy_run(run: EntropyRun, config: dict[str, Any], results: Path, device: str = "cpu") -> dict[str, Any]:
    """Train one entropy run, evaluate the stored weights, write ``run.json``."""
    from rlsparsity.evaluate import evaluate
    from rlsparsity.gpu import device_record, reset_peak
    from rlsparsity.modeling import load_model, load_tokenizer, versions, write_json

    spec = _spec_for(run, config, results, device)
    base_metrics = json.loads((spec.base_dir / "metrics.json").read_text())
    reset_peak(device)
    t0 = time.time()
    blk = entropy_block(config)
    stats = train_entropy(spec, run.rho, run.variant, run.normaliser, blk["selection"])
    wall = time.time() - t0
    model = load_model(spec.out_dir, "fp32", device)
    after = evaluate(model, load_tokenizer(spec.out_dir), spec.task, n=blk["eval_n"] or config["train"]["eval_n"])
    rec = {
        **run.as_dict(),
        "experiment": config.get("experiment"),
        "task": spec.task.name,
        "base": str(spec.base_dir),
        "acc_base": base_metrics["accuracy"],
        "acc_trained": after["accuracy"],
        "correct_base": base_metrics.get("correct"),
        "correct_trained": after["correct"],
        "selection": blk["selection"],
        "mean_reward_trained": after["mean_reward"],
        "n_eval": after["n"],
        "steps": stats["steps"],
        "seconds_per_step": stats["seconds_per_step"],
        "wall_seconds": round(wall, 3),
        "kept_fraction": stats["kept_fraction"],
        "kept_fraction_min": stats["kept_fraction_min"],
        "kept_fraction_max": stats["kept_fraction_max"],
        "hparams": stats["hparams"],
        "history": stats["history"],
        "checkpoint_every": spec.checkpoint_every,
        "storage_dtype": "float32" if run.precision == "fp32" else "bfloat16",
        "samples": after["samples"],
        "versions": versions(),
        "config": config,
        **device_record(device, wall, stats["steps"]),
    }
    write_json(spec.out_dir / "run.json", rec)
    return rec


def entropy_family(
    config: dict[str, Any],
    family: str,
    out_dir: Path | None = None,
    device: str = "cpu",
    threads: int | None = 1,
    log: Any = print,
) -> dict[str, Path]:
    """The DAG job of one family: train, evaluate, diff, overlap, entropy statistics.

    Writes ``<results>/entropy/<family>/{entropy,entropy_stats}.csv``."""
    from rlsparsity.analysis.diff import DEFAULT_TOLERANCES, tol_key
    from rlsparsity.analysis.io import open_checkpoint
    from rlsparsity.analysis.overlap import overlap_masks
    from rlsparsity.analysis.tables import diff_run, write_csv
    from rlsparsity.modeling import torch_threads
    from rlsparsity.tasks import task_from_config

    torch_threads()
    results = Path(config["results"])
    runs = expand_entropy_runs(config, family)
    if not runs:
        raise ValueError(f"no entropy runs configured for family {family!r}")
    out_dir = Path(out_dir or results / "entropy" / family)
    base_path = ensure_entropy_base(config, family, log)
    if not (base_path / "config.json").exists():
        raise FileNotFoundError(f"base model missing: {base_path}")
    records = {}
    for run in runs:
        rj = run.dir(results) / "run.json"
        if rj.exists():
            records[run] = json.loads(rj.read_text())
            log(f"[entropy] {run.rel}: done already")
            continue
        records[run] = rec = train_entropy_run(run, config, results, device)
        log(
            f"[entropy] {run.rel}: acc {rec['acc_base']:.3f} -> {rec['acc_trained']:.3f}, kept fraction "
            f"{rec['kept_fraction']:.3f} ({rec['seconds_per_step']:.3f} s/step)"
        )
    # parameter sparsity of every run and overlap of its update mask with the full-token run
    base_ck = open_checkpoint(base_path)
    summaries = {
        run: diff_run(
            base_ck,
            str(base_path),
            run.dir(results),
            run.dir(results) / "diff",
            tuple(DEFAULT_TOLERANCES),
            None,
            threads,
        )
        for run in runs
    }
    rows = []
    for run in runs:
        rec, s = records[run], summaries[run]
        ref = reference_run(run, runs)
        ov = dict.fromkeys(("o1", "o2", "o1_random", "o2_random"), math.nan)
        if ref is not None:
            tot, _ = overlap_masks(
                run.dir(results) / "diff" / "mask.safetensors", ref.dir(results) / "diff" / "mask.safetensors"
            )
            ov = {k: tot[k] for k in ov}
        rows.append(
            {
                **run.as_dict(),
                "acc_base": rec["acc_base"],
                "acc_trained": rec["acc_trained"],
                "selection": rec.get("selection", "threshold"),
                "correct_base": rec.get("correct_base"),
                "correct_trained": rec.get("correct_trained"),
                "kept_fraction": rec["kept_fraction"],
                "sparsity": s["sparsity"][tol_key(1e-5)],
                **ov,
                "kept_fraction_min": rec["kept_fraction_min"],
                "kept_fraction_max": rec["kept_fraction_max"],
                "sparsity_tol0": s["sparsity"][tol_key(0.0)],
                "below_bf16_half_ulp": s["below_bf16_half_ulp"],
                "reference": ref.tag if ref else "",
                "steps": rec["steps"],
                "seconds_per_step": rec["seconds_per_step"],
                "mean_reward_trained": rec["mean_reward_trained"],
                "n_eval": rec["n_eval"],
            }
        )
    write_csv(out_dir / "entropy.csv", rows, RUN_COLUMNS)
    # entropy statistics on the same held-out responses, sampled once from the base
    blk = entropy_block(config)
    from rlsparsity.grid import run_hparams

    hp = entropy_hparams({**run_hparams(config, "grpo", blk["precision"]), **blk.get("hparams", {})})
    models = {run.rel.split("/", 1)[1]: run.dir(results) for run in runs}
    extra = {run.rel.split("/", 1)[1]: {k: v for k, v in run.as_dict().items() if k != "family"} for run in runs}
    stats, info = stats_rows(
        base_path,
        models,
        task_from_config(entropy_config(config)),
        blk["stats_prompts"],
        blk["stats_samples"],
        hp["temperature"],
        seed=0,
        row_extra=extra,
        family=family,
        device=device,
    )
    write_csv(out_dir / "entropy_stats.csv", stats, STATS_COLUMNS)
    (out_dir / "responses.json").write_text(json.dumps(info, indent=1) + "\n")
    log(
        f"[entropy] {family}: base mean H {stats[0]['mean_entropy']:.3f}, H<1e-2 {stats[0]['frac_below_1e-2']:.3f}, "
        f"p80 {stats[0]['p80_entropy']:.3f} over {info['n_tokens']} tokens"
    )
    return {"entropy": out_dir / "entropy.csv", "entropy_stats": out_dir / "entropy_stats.csv"}


# --------------------------------------------------------------------------- CLI
def _cmd_family(args: argparse.Namespace) -> int:
    from rlsparsity.config import load_config

    cfg = load_config(args.config)
    if args.results:
        cfg["results"] = args.results
    entropy_family(cfg, args.family, device=args.device, threads=args.threads)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from rlsparsity.config import load_config

    cfg = load_config(args.config)
    runs = [
        r
        for r in expand_entropy_runs(cfg, args.family)
        if r.tag == args.tag
        and (args.seed is None or r.seed == args.seed)
        and (args.precision is None or r.precision == args.precision)
    ]
    if len(runs) != 1:
        known = sorted(
            {f"{r.tag} --precision {r.precision} --seed {r.seed}" for r in expand_entropy_runs(cfg, args.family)}
        )
        what = "is not in the config" if not runs else "is ambiguous (give --precision and --seed)"
        from rlsparsity.cli import CLIError

        raise CLIError(f"entropy run {args.family}/{args.tag} {what} (known: {known})")
    rec = train_entropy_run(runs[0], cfg, Path(cfg["results"]), args.device)
    print(json.dumps({k: rec.get(k) for k in ("acc_base", "acc_trained", "kept_fraction", "seconds_per_step")}))
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    from rlsparsity.analysis.tables import concat_tables

    concat_tables([Path(p) for p in args.inputs], Path(args.out))
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from rlsparsity.analysis.tables import write_csv
    from rlsparsity.modeling import torch_threads
    from rlsparsity.tasks import get_task

    torch_threads()
    task = get_task(args.task, n_test=max(args.n, 1), seed=args.split_seed)
    models = {
        Path(m).name if not args.labels else lab: Path(m)
        for m, lab in zip(args.models, args.labels or [None] * len(args.models), strict=False)
    }
    rows, info = stats_rows(Path(args.base), models, task, args.n, args.samples, args.temperature, args.seed)
    if args.out:
        write_csv(Path(args.out), rows, STATS_COLUMNS)
    print(json.dumps({"info": info, "rows": rows}, indent=1 if not args.json else None))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("entropy-family", help="DAG job: entropy-restricted GRPO runs of one family + stats")
    p.add_argument("family")
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--results", default=None, help="override config 'results'")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="diff worker threads")
    p.set_defaults(func=_cmd_family)

    p = sub.add_parser("entropy-run", help="train one entropy run of a family (config entropy.job_per_run)")
    p.add_argument("family")
    p.add_argument("tag", help="e.g. rho0.2-top-kept (EntropyRun.tag)")
    p.add_argument("--precision", default=None, help="the run's precision (needed when the config has several)")
    p.add_argument("--seed", type=int, default=None, help="the run's seed (needed when the config has several)")
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("entropy-table", help="stack per-family entropy CSVs")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_table)

    p = sub.add_parser(
        "entropy-stats",
        help="token-entropy statistics of a base and tuned models on the same responses sampled from the base",
    )
    p.add_argument("base", help="base model folder (responses are sampled from it)")
    p.add_argument("models", nargs="*", help="tuned model folders scored on the same responses")
    p.add_argument("--labels", nargs="*", help="labels for MODELS (default: folder names)")
    p.add_argument("--task", required=True)
    p.add_argument("--n", type=int, default=64, help="held-out prompts")
    p.add_argument("--samples", type=int, default=4, help="responses per prompt")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--split-seed", type=int, default=1234)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="CSV")
    p.add_argument("--json", action="store_true", help="one-line JSON")
    p.set_defaults(func=_cmd_stats)
