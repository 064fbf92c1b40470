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
the job. ``results`` and ``experiment`` (a folder and a label) are in no slice.

Scopes (``stage/name``):

    base/<family>         task, the family's entry, base, train.eval_n (the base's test accuracy)
    samples/<setting>     task, the family's entry (setting: family, precision, seed, n_prompts, k)
    train/<group>         task, the runs of the group and their families' entries, train.steps,
                          checkpoint_every, eval_n, the hparams of the group's algorithms
                          (``accelerate`` as well when a family trains on several GPUs)
    entropy/<family>      task, the family's entry, train (steps, checkpoint_every, eval_n,
                          hparams.grpo), the entropy block without its family list
    subnetwork/<family>   task, the family's entry, train (as above, for the subnetwork
                          algorithms), the subnetwork block without its family list, its jobs
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


def _train(config: dict[str, Any], algorithms: Any) -> dict[str, Any]:
    tc = config["train"]
    hp = tc.get("hparams", {}) or {}
    return {**{k: tc[k] for k in _TRAIN_KEYS}, "hparams": {a: hp[a] for a in sorted(set(algorithms)) if a in hp}}


def base_slice(config: dict[str, Any], family: str) -> dict[str, Any]:
    return {"task": config["task"], "families": _families(config, [family]), "base": config["base"],
            "eval_n": config["train"]["eval_n"]}


def train_slice(config: dict[str, Any], group: str) -> dict[str, Any]:
    groups = train_groups(config)
    if group not in groups:
        raise ValueError(f"training group {group!r} is not in the config's grids (groups: {sorted(groups)[:5]} ...)")
    runs = groups[group]
    fams = _families(config, [r.family for r in runs])
    out = {"task": config["task"], "families": fams, "runs": [r.rel for r in runs],
           "train": _train(config, [r.algorithm for r in runs])}
    if any(int((s or {}).get("gpus", 0)) > 1 for s in fams.values()):
        out["accelerate"] = config.get("accelerate", {})
    return out


def entropy_slice(config: dict[str, Any], family: str) -> dict[str, Any]:
    blk = {k: v for k, v in (config.get("entropy") or {}).items() if k != "families"}
    return {"task": config["task"], "families": _families(config, [family]), "train": _train(config, ["grpo"]),
            "entropy": blk}


def subnetwork_slice(config: dict[str, Any], family: str) -> dict[str, Any]:
    from rlsparsity import subnetwork as SN

    jobs = [j for j in SN.subnetwork_jobs(config) if j.run.family == family]
    blk = {k: v for k, v in (config.get("subnetwork") or {}).items() if k != "families"}
    return {"task": config["task"], "families": _families(config, [family]),
            "train": _train(config, [j.run.algorithm for j in jobs]), "subnetwork": blk,
            "jobs": [f"{j.run.rel}/{j.kind}" for j in jobs]}


def causes_slice(config: dict[str, Any], name: str) -> dict[str, Any]:
    from rlsparsity import subnetwork as SN

    settings = SN.causes_settings(config)
    if name == "table":
        return {"causes": config.get("causes"), "settings": [repr(s) for s in settings]}
    mine = [s for s in settings if s.family == name]
    return {"task": config["task"], "families": _families(config, [name]), "train": _train(config, G.ALGORITHMS),
            "causes": config.get("causes"), "settings": [repr(s) for s in mine]}


def samples_name(family: str, precision: str, seed: int, n_prompts: int, k: int) -> str:
    return f"{family}__{precision}__seed{seed}__n{n_prompts}_k{k}"


def samples_slice(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The on-policy preference samples of one (family, precision, seed, n_prompts, k): the
    setting is the name; the family's entry (its gpus pick the device) and the task."""
    family = name.rsplit("__", 3)[0]
    if family not in config["families"]:
        raise ValueError(f"samples scope {name!r}: family {family!r} is not in the config")
    return {"task": config["task"], "families": _families(config, [family])}


def accuracy_slice(config: dict[str, Any], name: str) -> dict[str, Any]:
    return {"runs": [r.rel for r in G.expand_runs(config)]}


_SLICES = {"base": base_slice, "samples": samples_slice, "train": train_slice, "entropy": entropy_slice, "subnetwork": subnetwork_slice,
           "causes": causes_slice, "accuracy": accuracy_slice}
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


def write_job_config(config: dict[str, Any], out: str | Path, stage: str, name: str,
                     log: str | Path | None = None) -> Path:
    """The ``job_config`` rule: the validated config as JSON (what ``rlsparsity ... --config``
    reads); fails, naming the scope, if the scope is not one of the config's jobs."""
    sl = config_slice(config, stage, name)  # raises for a scope the config does not have
    path = write_json_atomic(out, config)
    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        Path(log).write_text(f"{stage}/{name}: slice digest {digest(sl)} -> {out}\n")
    return path
