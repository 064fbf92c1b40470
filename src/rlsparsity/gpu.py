"""GPU packing and the device record of every run.

Packing. A 135M model leaves an H200 mostly idle, so several training processes share one
GPU. Snakemake does the counting: every job of a family with ``gpus: 1`` asks for one
``gpu_slots`` resource (:func:`gpu_slots`), and the DAG is started with
``--resources gpu_slots=<slots_per_gpu x GPUs>`` (config ``gpu.slots_per_gpu``), so at most that
many run at once. Which GPU a job uses is decided by the job itself, at start, before CUDA is
initialised (:func:`claim_gpu_slot`, called by the CLI for ``--device cuda``): it takes an
exclusive ``flock`` on the first free slot file ``<locks>/gpu<g>-slot<s>.lock``, visiting
slot 0 of every GPU before slot 1 (so jobs spread over the GPUs), holds it until the process
exits (the kernel drops the lock even on a crash) and sets ``CUDA_VISIBLE_DEVICES=<g>``.
The rules pass ``RLSPARSITY_GPU_LOCKS`` / ``RLSPARSITY_GPU_SLOTS`` / ``RLSPARSITY_GPU_DEVICES``
(:func:`job_env`). A job started with ``CUDA_VISIBLE_DEVICES`` already set (SLURM, a user)
claims nothing.

Record. :func:`device_record` gives run.json's ``device`` (``cuda: <card name>`` or ``cpu``)
and the peak GPU memory of the process since :func:`reset_peak`.
"""

from __future__ import annotations

import math
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

_HELD: list[Any] = []  # open lock files: a claim lasts as long as the process


def slots_per_gpu(config: dict[str, Any]) -> int:
    return int((config.get("gpu") or {}).get("slots_per_gpu", 1) or 1)


def family_gpus(config: dict[str, Any], family: str) -> int:
    return int((config["families"].get(family) or {}).get("gpus", 0) or 0)


def gpu_slots(config: dict[str, Any], family: str, gpus: int | None = None) -> int:
    """``gpu_slots`` one job of ``family`` takes: 0 on CPU, 1 for a one-GPU job (packed
    ``slots_per_gpu`` to a GPU), whole GPUs' worth (gpus x slots_per_gpu) for multi-GPU jobs."""
    n = family_gpus(config, family) if gpus is None else int(gpus)
    if n <= 0:
        return 0
    return 1 if n == 1 else n * slots_per_gpu(config)


def gpu_mem_gb(config: dict[str, Any], family: str, algorithm: str | None, precision: str | None,
               gpus: int | None = None) -> int:
    """``gpu_mem_gb`` resource of one packed job: config ``gpu.job_memory_gb[algorithm]`` (else
    its ``default``; ``algorithm=None`` = an evaluation-only job, key ``eval``), times
    ``gpu.fp32_memory_factor`` for fp32 / fp32-master, rounded up. A key
    ``"<algorithm>@<precision>"`` is that pair's measured peak itself and takes no factor (ppo and
    prime hold a bf16 reference beside their fp32 models, so x1.85 overstates them). 0 for CPU
    jobs, for multi-GPU jobs (they hold whole GPUs through gpu_slots) and when no table is
    configured."""
    n = family_gpus(config, family) if gpus is None else int(gpus)
    table = (config.get("gpu") or {}).get("job_memory_gb") or {}
    if n != 1 or not table:
        return 0
    key = algorithm if algorithm is not None else "eval"
    if precision is not None and f"{key}@{precision}" in table:
        return int(math.ceil(float(table[f"{key}@{precision}"])))
    gb = float(table.get(key, table.get("default", 0)))
    if precision in ("fp32", "fp32-master"):
        gb *= float((config.get("gpu") or {}).get("fp32_memory_factor", 1.8))
    return int(math.ceil(gb))


def job_env(config: dict[str, Any], results: str | Path, mem_gb: int | float | None = 0) -> str:
    """Shell prefix that lets a GPU job claim a slot (see module doc); paths are quoted.
    ``mem_gb``: the job's ``gpu_mem_gb`` resource, so that it picks the least-loaded GPU."""
    env = {"RLSPARSITY_GPU_LOCKS": str(Path(results) / ".gpu_locks"),
           "RLSPARSITY_GPU_SLOTS": str(slots_per_gpu(config))}
    if mem_gb:
        env["RLSPARSITY_GPU_MEM_GB"] = str(int(mem_gb))
    dev = (config.get("gpu") or {}).get("devices")
    if dev:
        env["RLSPARSITY_GPU_DEVICES"] = str(int(dev))
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " "


def count_gpus() -> int:
    """GPUs on the host without initialising CUDA: RLSPARSITY_GPU_DEVICES, else ``nvidia-smi -L``."""
    env = os.environ.get("RLSPARSITY_GPU_DEVICES")
    if env:
        return max(1, int(env))
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 1
    return max(1, sum(1 for line in out.splitlines() if line.startswith("GPU ")))


def claim_gpu_slot(lock_dir: str | Path | None = None, n_gpus: int | None = None, slots: int | None = None,
                   wait_s: float = 600.0, poll_s: float = 1.0) -> int | None:
    """Claim a free (GPU, slot) and point CUDA_VISIBLE_DEVICES at that GPU; returns the GPU index.

    No-op (None) when CUDA_VISIBLE_DEVICES is already set or no lock folder is configured.
    Waits up to ``wait_s`` for a free slot (Snakemake's resource count makes that rare)."""
    import fcntl

    lock_dir = lock_dir or os.environ.get("RLSPARSITY_GPU_LOCKS")
    if not lock_dir or os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return None
    n_gpus = n_gpus or count_gpus()
    slots = slots or int(os.environ.get("RLSPARSITY_GPU_SLOTS", "1"))
    d = Path(lock_dir)
    d.mkdir(parents=True, exist_ok=True)
    mem = int(os.environ.get("RLSPARSITY_GPU_MEM_GB", "0") or 0)
    deadline = time.monotonic() + wait_s
    while True:
        # GPUs by the memory their held slots declare (least first, then index); within a GPU
        # the lowest free slot. Without declared memory: slot 0 of every GPU before slot 1.
        held = _held_memory(d, n_gpus, slots)
        order = sorted(range(n_gpus), key=lambda g: (held[g][0], held[g][1], g)) if mem else None
        cands = ([(g, s) for g in order for s in range(slots)] if order is not None
                 else [(g, s) for s in range(slots) for g in range(n_gpus)])
        for g, s in cands:
            f = open(d / f"gpu{g}-slot{s}.lock", "a+")
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()} {mem}\n")
            f.flush()
            _HELD.append(f)
            os.environ["CUDA_VISIBLE_DEVICES"] = str(g)
            return g
        if time.monotonic() > deadline:
            raise RuntimeError(f"no free GPU slot in {d} after {wait_s:.0f} s ({n_gpus} GPU(s) x {slots} slots): "
                               "run Snakemake with --resources gpu_slots=<GPUs x gpu.slots_per_gpu>")
        time.sleep(poll_s)


def _held_memory(d: Path, n_gpus: int, slots: int) -> list[tuple[int, int]]:
    """Per GPU: (GB declared by its held slot files, number of held slots). A slot is held while
    its file is flocked by a live process (probed with a non-blocking shared lock)."""
    import fcntl

    out = []
    for g in range(n_gpus):
        gb = n = 0
        for s in range(slots):
            path = d / f"gpu{g}-slot{s}.lock"
            if not path.exists():
                continue
            with open(path) as f:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)
                    continue  # free
                except OSError:
                    parts = f.read().split()
                    n += 1
                    gb += int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        out.append((gb, n))
    return out


def release_gpu_slots() -> None:
    while _HELD:
        _HELD.pop().close()


def device_name(device: str) -> str:
    """``cuda: <card name>`` for a CUDA device, else the device string (``cpu``)."""
    if str(device).startswith("cuda"):
        import torch

        return f"cuda: {torch.cuda.get_device_name(torch.device(device))}"
    return str(device)


def cuda_device(device: str) -> Any:
    """The torch.device whose memory this process uses: ``cuda:<i>`` as given; a bare ``cuda`` is
    this rank's GPU under a launcher (LOCAL_RANK) and the current device otherwise. CUDA is
    initialised here: the memory-stat calls fail on a process that has not touched CUDA yet
    ("Invalid device argument: did you call init?", seen under torchrun on an H200 host)."""
    import torch

    dev = torch.device(device)
    if dev.index is None:
        local = os.environ.get("LOCAL_RANK")
        dev = torch.device("cuda", int(local) if local is not None and os.environ.get("WORLD_SIZE", "1") != "1"
                           else torch.cuda.current_device())
    torch.cuda.init()
    return dev


def reset_peak(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(cuda_device(device))


def device_record(device: str, train_seconds: float | None = None, steps: int | None = None) -> dict[str, Any]:
    """run.json fields: device, peak GPU memory (MiB, None on CPU) since :func:`reset_peak`, and
    seconds per optimiser step over the training wall time (loading + data + steps, no evaluation)."""
    peak = None
    if str(device).startswith("cuda"):
        import torch

        peak = round(torch.cuda.max_memory_allocated(cuda_device(device)) / 2**20, 1)
    sps = round(train_seconds / steps, 4) if train_seconds is not None and steps else None
    return {"device": device_name(device), "peak_gpu_memory_mb": peak, "train_seconds_per_step": sps,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
