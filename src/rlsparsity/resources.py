"""Cluster resources of the heavy rules, computed from the family's config and the size of
its stored base model, so that one SLURM profile serves tiny and 7-9B families alike.

Threads (-> ``--cpus-per-task``) are needed when Snakemake builds the DAG, before any model
exists, so they come from the config alone: a pretrained family (``path:``, or not in the
tiny registry) gets many cores, a tiny one few. Memory and wall time come from the base
model's ``model.safetensors`` (stored in bf16: 2 bytes per parameter), which exists once the
job is ready to be submitted (Snakemake re-evaluates resources then); before that (dry run)
the tiny-model values are shown. The constants reproduce the hand-set values the profile
used to carry for 7-9B models (8B parameters: training 200 GB / 24 h for 500 steps, analysis
64 GB / 48 h for 42 runs) and stay small for tiny models.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

BYTES_PER_STORED_PARAM = 2  # base models are stored in bf16

MIN_MEM_MB = 2000  # a Python process with torch + transformers imported, and its data
TRAIN_BYTES_PER_PARAM = 25  # fp32 weights, fp32 master + AdamW states, gradients, activations
LOAD_BYTES_PER_PARAM = 4  # per process of a multi-GPU job: the base loaded in fp32 on the host
GATHER_BYTES_PER_PARAM = 12  # rank 0: full fp32 weights + AdamW moments gathered for a checkpoint
TRAIN_BASE_MINUTES = 30
TRAIN_MINUTES_PER_STEP_PER_BPARAM = 0.36  # 8B params: ~2.9 min per step (500 steps ~ 24 h)
ANALYSIS_BYTES_PER_STORED_BYTE = 4  # two models' tensors in fp32 at a time + SVD workspace
ANALYSIS_BASE_MINUTES = 10
ANALYSIS_MINUTES_PER_RUN_PER_BPARAM = 8.5  # full-rank SVDs of ~250 matrices of an 8B model: ~68 min per run

THREADS = {  # (tiny, pretrained)
    "base": (1, 8),       # building a tiny base / converting + evaluating a hub model on CPU
    "train": (1, 8),      # CPU training of a tiny model; per GPU: data loading, tokenisation
    "analysis": (2, 16),  # SVD threads of the rank analysis
}


def is_pretrained(family: str, spec: dict[str, Any] | None) -> bool:
    """A family loaded from the hub or a folder (``path:``), or not in the tiny registry."""
    from rlsparsity.families import is_tiny

    return bool((spec or {}).get("path")) or not is_tiny(family)


def threads(stage: str, family: str, spec: dict[str, Any] | None, gpus: int = 0) -> int:
    """Cores of one ``stage`` job (base, train, analysis) for ``family``; a training job on
    N GPUs gets the pretrained count per GPU."""
    if stage not in THREADS:
        raise ValueError(f"unknown stage {stage!r} for threads: use one of {sorted(THREADS)}")
    tiny, big = THREADS[stage]
    n = big if is_pretrained(family, spec) else tiny
    return n * max(1, gpus) if stage == "train" and gpus > 0 else n


def stored_params(model_file: str | os.PathLike[str]) -> int | None:
    """Parameter count of a stored (bf16) base model from its file size; None if it does not exist yet."""
    try:
        return os.path.getsize(model_file) // BYTES_PER_STORED_PARAM
    except FileNotFoundError:
        return None


def base_model_file(metrics_or_model: str | os.PathLike[str]) -> Path:
    """``results/base/<family>/model.safetensors`` from either of the base rule's outputs."""
    p = Path(metrics_or_model)
    return p if p.name == "model.safetensors" else p.parent / "model.safetensors"


def train_mem_mb(params: int | None, gpus: int = 0) -> int:
    """Host memory of a training job. One process: 25 bytes/param (a CPU run holds everything
    in RAM). N > 1 processes (ddp/fsdp): each loads the base in fp32 before it is moved or
    sharded onto its GPU (4 bytes/param each), and rank 0 gathers the full fp32 weights and
    AdamW state into RAM for checkpoints (FULL_STATE_DICT: 12 bytes/param)."""
    per_param = TRAIN_BYTES_PER_PARAM if gpus <= 1 else LOAD_BYTES_PER_PARAM * gpus + GATHER_BYTES_PER_PARAM
    return max(MIN_MEM_MB, math.ceil((params or 0) * per_param / 1e6))


def train_runtime(params: int | None, steps: int) -> int:
    """Minutes of one training run of ``steps`` steps."""
    return math.ceil(TRAIN_BASE_MINUTES + steps * (params or 0) / 1e9 * TRAIN_MINUTES_PER_STEP_PER_BPARAM)


def analysis_mem_mb(params: int | None) -> int:
    stored = (params or 0) * BYTES_PER_STORED_PARAM
    return max(MIN_MEM_MB, math.ceil(MIN_MEM_MB + stored * ANALYSIS_BYTES_PER_STORED_BYTE / 1e6))


#: largest base (parameters) whose runs the analysis job analyses several at a time, each
#: worker process holding its own tensors (at 8B one run at a time needs ~64 GB already)
ANALYSIS_PARALLEL_MAX_PARAMS = 2 * 10**9
ANALYSIS_THREADS_PER_WORKER = 2


def analysis_workers(params: int | None, threads: int, n_runs: int) -> int:
    """Worker processes of one ``analyze`` job (``analyze-family --workers auto``): runs of a
    base up to 2B parameters are analysed ``threads // 2`` at a time (each worker 2 threads),
    larger ones one at a time. Scheduling only: every worker count gives the same tables."""
    if params is not None and params > ANALYSIS_PARALLEL_MAX_PARAMS:
        return 1
    return max(1, min(n_runs, threads // ANALYSIS_THREADS_PER_WORKER))


def analysis_runtime(params: int | None, n_runs: int) -> int:
    """Minutes to diff ``n_runs`` runs of one family against its base (SVD-bound)."""
    return math.ceil(ANALYSIS_BASE_MINUTES + n_runs * (params or 0) / 1e9 * ANALYSIS_MINUTES_PER_RUN_PER_BPARAM)


def accelerate_config(config: dict[str, Any], family: str) -> str:
    """The shell-quoted accelerate config file of a multi-GPU ``family``: config key
    ``accelerate.<sharding>``, default ``config/accelerate/<sharding>.yaml``; the sharding is the
    family's own or the memory model's choice (:func:`rlsparsity.memory_model.family_sharding`)."""
    import shlex

    from rlsparsity.memory_model import family_sharding

    sharding = family_sharding(config, family)
    return shlex.quote(str((config.get("accelerate") or {}).get(sharding, f"config/accelerate/{sharding}.yaml")))


def base_mem_mb(family: str, spec: dict[str, Any] | None) -> int:
    """A 7-9B model loaded in fp32 (~36 GB) plus its bf16 copy; tiny bases are small."""
    return 64000 if is_pretrained(family, spec) else MIN_MEM_MB


def base_runtime(family: str, spec: dict[str, Any] | None) -> int:
    """Download from the hub + CPU evaluation; a tiny base trains from scratch in minutes."""
    return 720 if is_pretrained(family, spec) else 60
