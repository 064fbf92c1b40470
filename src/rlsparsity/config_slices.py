"""Which part of the config each Snakemake job depends on, and the files that carry it.

Every job that reads the experiment config gets it from ``<results>/config/<scope>.json``,
the output of the ``job_config`` rule. That rule's only param is the digest of the job's
*slice* of the config (the keys the job's result depends on), so Snakemake reruns it, and
through the file every job downstream, exactly when that slice changes: editing
``train.steps`` reruns the training jobs (and what reads their runs) but no base model;
editing ``train.hparams.dpo`` reruns only the groups that train dpo. Nothing is written
when the Snakefile is parsed (``snakemake -n`` and ``--lint`` create no file).

The file holds the whole validated config as it was when the slice last changed; keys
outside the slice may be older than the current config, by definition without effect on
the job. ``results`` and ``experiment`` (a folder and a label) are in no slice, nor are
scheduling keys that change no result: ``gpu`` (slots, devices) and ``entropy.job_per_run`` /
``subnetwork.job_per_run`` (one job per run or per family).

Scopes (``stage/name``):

    base/<family>         task, the family's entry on one device (below), base (its per_family
                          entry of this family only), train.eval_n (the base's test accuracy)
    samples/<setting>     task, the family's entry on one device (setting: family, precision, seed,
                          n_prompts, k, temperature)

The base build and the sample draws run in one process on one device, whatever the family's
multi-GPU keys say. Their slices hold the family's entry without ``sharding`` / ``fsdp_units``,
with ``gpus`` above 1 counted as 1 (CPU or GPU is all it changes for them). An entry without those
keys is left as it is, so its digest does not move.
    train/<group>         task, the runs of the group and their families' entries, train.steps,
                          checkpoint_every, eval_n, the hparams of the group's algorithms and
                          hparams_by_precision of its (precision, algorithm) pairs
                          (``accelerate`` as well when a family trains on several GPUs)
    entropy/<family>      task, the family's entry, train (steps, checkpoint_every, eval_n,
                          hparams.grpo, hparams_by_precision of grpo), the entropy block
                          without its family list
    entropy_run/<run>     one run of entropy.job_per_run (name: family__tag__precision__seed<N>):
                          as entropy/<family> without the grid lists and the statistics keys,
                          plus the run
    subnetwork/<family>   task, the family's entry, train (as above, for the subnetwork
                          algorithms), the subnetwork block without its family list, its jobs
    subnetwork_job/<job>  one masked rerun of subnetwork.job_per_run (name: family__algorithm__
                          data__precision__seed<N>__kind): as subnetwork/<family>, for that job
    causes/<family>       task, the family's entry, train, the causes block, its settings
    causes/table          the causes settings (every run's files are inputs)
    accuracy/table        the run list (every run.json is an input)

This module is imported by the Snakefile: keep it light (no torch).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from rlsparsity import grid as G

#: Bumped when a slice's definition changes, so every job config is rewritten once.
SLICE_VERSION = 1
_TRAIN_KEYS = ("steps", "checkpoint_every", "eval_n")


def digest(obj: Any) -> str:
    """sha256 (16 hex digits) of the canonical JSON of ``obj``."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def group_slug(key: str) -> str:
    """``family=llama,precision=bf16,seed=1`` -> ``family_llama__precision_bf16__seed_1``
    (a file-name-safe, one-to-one name of a training group; ``all`` for the single group)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key.replace("=", "_").replace(",", "__")) or "all"


_GROUPS: dict[str, dict[str, list[G.Run]]] = {}


def train_groups(config: dict[str, Any]) -> dict[str, list[G.Run]]:
    """{group slug: runs} of the training jobs. ``train.group_by: []`` -> one group per run
    (grouped by every run field), so both modes share one naming."""
    fields = config["train"]["group_by"] or list(G.GROUP_FIELDS)
    memo = digest([fields, config["grids"], sorted(config["families"])])
    if memo not in _GROUPS:
        out: dict[str, list[G.Run]] = {}
        for key, runs in G.group_runs(G.expand_runs(config), fields).items():
            out[group_slug(key)] = runs
        _GROUPS[memo] = out
    return _GROUPS[memo]


def group_key_of(config: dict[str, Any], slug: str) -> str:
    """The ``FIELD=VALUE,...`` key of a group slug (what ``rlsparsity train-group --group`` takes)."""
    runs = train_groups(config)[slug]
    return G.group_key(runs[0], config["train"]["group_by"] or list(G.GROUP_FIELDS))


def group_of(config: dict[str, Any], run: G.Run) -> str:
    fields = config["train"]["group_by"] or list(G.GROUP_FIELDS)
    return group_slug(G.group_key(run, fields))


def _families(config: dict[str, Any], names: Any) -> dict[str, Any]:
    return {f: config["families"][f] for f in sorted(set(names))}


#: Family keys that shape only a multi-GPU training job (module doc: base and samples slices).
_MULTI_GPU_KEYS = ("sharding", "fsdp_units")


def _families_one_device(config: dict[str, Any], names: Any) -> dict[str, Any]:
    out = {}
    for f, spec in _families(config, names).items():
        if isinstance(spec, dict) and (any(k in spec for k in _MULTI_GPU_KEYS) or int(spec.get("gpus", 0) or 0) > 1):
            spec = {k: v for k, v in spec.items() if k not in _MULTI_GPU_KEYS}
            if int(spec.get("gpus", 0) or 0) > 1:
                spec["gpus"] = 1
        out[f] = spec
    return out


#: Keys of the entropy / subnetwork blocks that only schedule jobs (no result depends on them).
_SCHEDULING = ("families", "job_per_run")


def _train(config: dict[str, Any], algorithms: Any, precisions: Any = None) -> dict[str, Any]:
    """train.steps/checkpoint_every/eval_n, hparams of ``algorithms`` and hparams_by_precision of
    the (precision, algorithm) pairs (every precision of the config when ``precisions`` is None)."""
    tc = config["train"]
    hp = tc.get("hparams", {}) or {}
    algs = sorted(set(algorithms))
    by_prec = tc.get("hparams_by_precision") or {}
    precs = sorted(by_prec) if precisions is None else sorted(set(precisions))
    bp = {p: {a: by_prec[p][a] for a in algs if a in (by_prec.get(p) or {})} for p in precs}
    out = {**{k: tc[k] for k in _TRAIN_KEYS}, "hparams": {a: hp[a] for a in algs if a in hp}}
    bp = {p: v for p, v in bp.items() if v}
    if bp:  # absent when empty, so configs without the key keep their digests
        out["hparams_by_precision"] = bp
    return out


def _block(config: dict[str, Any], name: str, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    return {k: v for k, v in (config.get(name) or {}).items() if k not in _SCHEDULING + drop}


def base_slice(config: dict[str, Any], family: str) -> dict[str, Any]:
    base = {k: v for k, v in config["base"].items() if k != "per_family"}
    own = (config["base"].get("per_family") or {}).get(family)
    if own:
        base["per_family"] = {family: own}
    return {"task": config["task"], "families": _families_one_device(config, [family]), "base": base,
            "eval_n": config["train"]["eval_n"]}


def train_slice(config: dict[str, Any], group: str) -> dict[str, Any]:
    groups = train_groups(config)
    if group not in groups:
        raise ValueError(f"training group {group!r} is not in the config's grids (groups: {sorted(groups)[:5]} ...)")
    runs = groups[group]
    fams = _families(config, [r.family for r in runs])
    out = {"task": config["task"], "families": fams, "runs": [r.rel for r in runs],
           "train": _train(config, [r.algorithm for r in runs], [r.precision for r in runs])}
    if any(int((s or {}).get("gpus", 0)) > 1 for s in fams.values()):
        out["accelerate"] = config.get("accelerate", {})
    return out


def entropy_slice(config: dict[str, Any], family: str) -> dict[str, Any]:
    return {"task": config["task"], "families": _families(config, [family]), "train": _train(config, ["grpo"]),
            "entropy": _block(config, "entropy")}


#: entropy-block keys one entropy run does not depend on (the grid it is one point of, the statistics)
_ENTROPY_GRID = ("rhos", "variants", "normalisers", "normaliser_rhos", "seeds", "precision", "stats_prompts",
                 "stats_samples")


def entropy_run_slice(config: dict[str, Any], name: str) -> dict[str, Any]:
    """One entropy run (entropy.job_per_run); ``name`` is ``family__tag__precision__seed<N>``."""
    from rlsparsity import entropy as E

    runs = {f"{r.family}__{r.tag}__{r.precision}__seed{r.seed}": r for r in E.expand_entropy_runs(config)}
    if name not in runs:
        raise ValueError(f"entropy run {name!r} is not in the config's entropy block (runs: {sorted(runs)[:5]} ...)")
    run = runs[name]
    return {"task": config["task"], "families": _families(config, [run.family]),
            "train": _train(config, ["grpo"], [run.precision]), "entropy": _block(config, "entropy", _ENTROPY_GRID),
            "run": run.rel}


def subnetwork_slice(config: dict[str, Any], family: str) -> dict[str, Any]:
    from rlsparsity import subnetwork as SN

    jobs = [j for j in SN.subnetwork_jobs(config) if j.run.family == family]
    return {"task": config["task"], "families": _families(config, [family]),
            "train": _train(config, [j.run.algorithm for j in jobs], [j.run.precision for j in jobs]),
            "subnetwork": _block(config, "subnetwork"), "jobs": [f"{j.run.rel}/{j.kind}" for j in jobs]}


def subnetwork_job_name(job: Any) -> str:
    r = job.run
    return f"{r.family}__{r.algorithm}__{r.data}__{r.precision}__seed{r.seed}__{job.kind}"


def subnetwork_job_slice(config: dict[str, Any], name: str) -> dict[str, Any]:
    """One masked rerun (subnetwork.job_per_run); ``name``: ``family__algorithm__data__precision__seed<N>__kind``."""
    from rlsparsity import subnetwork as SN

    jobs = {subnetwork_job_name(j): j for j in SN.subnetwork_jobs(config)}
    if name not in jobs:
        raise ValueError(
            f"masked rerun {name!r} is not in the config's subnetwork block (jobs: {sorted(jobs)[:5]} ...)"
        )
    j = jobs[name]
    blk = _block(config, "subnetwork", ("algorithms", "seeds", "precision"))
    return {
        "task": config["task"],
        "families": _families(config, [j.run.family]),
        "train": _train(config, [j.run.algorithm], [j.run.precision]),
        "subnetwork": blk,
        "job": f"{j.run.rel}/{j.kind}",
    }


def causes_slice(config: dict[str, Any], name: str) -> dict[str, Any]:
    from rlsparsity import subnetwork as SN

    settings = SN.causes_settings(config)
    if name == "table":
        return {"causes": config.get("causes"), "settings": [repr(s) for s in settings]}
    mine = [s for s in settings if s.family == name]
    return {
        "task": config["task"],
        "families": _families(config, [name]),
        "train": _train(config, G.ALGORITHMS),
        "causes": config.get("causes"),
        "settings": [repr(s) for s in mine],
    }


def samples_slice(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The on-policy preference samples of one (family, precision, seed, n_prompts, k, temperature): the
    setting is the name; the family's entry on one device (its gpus pick CPU or GPU) and the task."""
    family = name.rsplit("__", 3)[0]
    if family not in config["families"]:
        raise ValueError(f"samples scope {name!r}: family {family!r} is not in the config")
    return {"task": config["task"], "families": _families_one_device(config, [family])}


def accuracy_slice(config: dict[str, Any], name: str) -> dict[str, Any]:
    return {"runs": [r.rel for r in G.expand_runs(config)]}


_SLICES = {
    "base": base_slice,
    "samples": samples_slice,
    "train": train_slice,
    "entropy": entropy_slice,
    "entropy_run": entropy_run_slice,
    "subnetwork": subnetwork_slice,
    "subnetwork_job": subnetwork_job_slice,
    "causes": causes_slice,
    "accuracy": accuracy_slice,
}
STAGES: tuple[str, ...] = tuple(_SLICES)


def config_slice(config: dict[str, Any], stage: str, name: str) -> dict[str, Any]:
    """The part of ``config`` that job ``stage/name`` depends on."""
    if stage not in _SLICES:
        raise ValueError(f"unknown config scope {stage!r}; known: {list(_SLICES)}")
    return {"slice_version": SLICE_VERSION, "scope": f"{stage}/{name}", **_SLICES[stage](config, name)}


def slice_digest(config: dict[str, Any], stage: str, name: str) -> str:
    return digest(config_slice(config, stage, name))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` through a temporary file in the same folder."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def write_job_config(
    config: dict[str, Any], out: str | Path, stage: str, name: str, log: str | Path | None = None
) -> Path:
    """The ``job_config`` rule: the validated config as JSON (what ``rlsparsity ... --config``
    reads); fails, naming the scope, if the scope is not one of the config's jobs."""
    sl = config_slice(config, stage, name)  # raises for a scope the config does not have
    path = write_json_atomic(out, config)
    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        Path(log).write_text(f"{stage}/{name}: slice digest {digest(sl)} -> {out}\n")
    return path
