"""Streaming, exact update-sparsity diff of two checkpoints (SPEC §1 definitions): orchestration.

This module pairs the tensors (:mod:`rlsparsity.analysis.pairing`), cuts them into
chunks, runs the exact per-chunk maths (:mod:`rlsparsity.analysis.kernel`, integer
tensors :mod:`rlsparsity.analysis.exact_int`) on a thread pool, writes the update mask,
and builds the summary and output files. Checkpoint reading and header validation live
in :mod:`rlsparsity.analysis.io` and :mod:`rlsparsity.analysis.header`.

``below_bf16_half_ulp`` is the fraction of ALL counted entries with 0 < |Δ| < h(θ0) (half
a bf16 ulp of the base value, see the kernel); ``below_bf16_half_ulp_incl_zero`` adds the
exactly unchanged entries (|Δ| < h including Δ = 0).

Counting: n is the number of entries of every tensor present in both checkpoints (a tied
lm_head stored twice counts once). For a shape mismatch the overlapping slice is
compared, and the tuned entries outside it count as changed (reported under
``mismatched``); base-only entries of such a tensor, and tensors present on one side
only (``missing``), are not counted. Two checkpoints with no tensor name in common, or
with nothing to compare (n = 0), are an error, never a result with n_params 0.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlsparsity.analysis.exact_int import abs_delta64
from rlsparsity.analysis.io import Checkpoint, CheckpointError, MaskWriter, TensorInfo, read_bits

# Re-exported: the public API of the diff engine stays importable from here.
from rlsparsity.analysis.kernel import Stats, changed_positions, chunk_stats, half_bf16_ulp, subset_stats  # noqa: F401
from rlsparsity.analysis.pairing import EMBED_SUFFIXES, Plan, overlap_shape, plan_pairs, prod, tied_names  # noqa: F401

DEFAULT_TOLERANCES: tuple[float, ...] = (0.0, 1e-8, 1e-7, 1e-6, 1e-5)
CHUNK_ELEMS = 1 << 22  # flat elements per work unit (a multiple of 8: packed masks concatenate);
# measured fastest of 2^18..2^22 on a 2-core machine, ~100 MB per worker thread


MAX_THREADS = 16  # default workers: cores, at most this (H200 host, 16 cores, 0.95 B pair: 8 threads 1.3 s,
# 16 threads 1.07 s against a 0.87 s raw read; peak RSS stays below 1 GB, see benchmarks/diff_bench_h200.json)
GPU_KERNEL_ENV = "RLSPARSITY_DIFF_GPU_KERNEL"


def kernel_device(device: str) -> str:
    """Where the diff's per-chunk maths runs for ``--device``: always the CPU, unless the
    environment variable RLSPARSITY_DIFF_GPU_KERNEL=1 asks for the GPU kernel (benchmarks).

    The rule, measured (benchmarks/diff_bench_h200.json: H200 host, 16 cores, 0.95 B bf16 pair,
    20 % changed): the CPU kernel took 1.0-3.6 s with 2-16 threads, the CUDA kernel 6.1-7.3 s at
    every thread count. Reading the checkpoints happens on the CPU either way and dominates; the
    GPU kernel only adds the device start-up and a host-to-device copy of every chunk and the
    mask back. ``--device`` still selects the GPU for the stages where it pays (rank, training).
    """
    if device.startswith("cpu") or os.environ.get(GPU_KERNEL_ENV) == "1":
        return device
    return "cpu"


def keep_freed_memory() -> None:
    """Let glibc keep freed chunk-sized buffers for reuse instead of returning them to the kernel.

    Every chunk allocates ~10-50 MB of fresh arrays (read buffers, masks, indices). By default
    glibc serves those with mmap (or trims the heap on free), so each chunk pays a page fault
    per 4 KiB touched: measured on a 2-core VM, 4-5k faults and about half of the diff's CPU
    time per 2^22-element bf16 chunk. Raising the mmap threshold to its 32 MiB maximum and the
    trim threshold to 1 GiB makes the freed memory come straight back (0 faults); peak RSS is
    unchanged (the same buffers are live at the peak either way). Process-wide and harmless
    elsewhere; a no-op where the C library has no ``mallopt`` (musl, macOS, Windows).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD


def tol_key(tol: float) -> str:
    """JSON/CSV key of a tolerance: ``format(tol, "g")`` ("0", "1e-08", "1e-05")."""
    return format(tol, "g")


def check_tolerances(tolerances: Any) -> tuple[float, ...]:
    """Sorted, de-duplicated tolerances; each must be a finite number >= 0 (ValueError otherwise)."""
    out = []
    for t in tolerances:
        t = float(t)
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"tolerance {t!r} is not a finite number >= 0")
        out.append(t)
    if not out:
        raise ValueError("no tolerances given")
    return tuple(sorted(set(out)))


# ----------------------------------------------------------------- the diff


@dataclass
class TensorResult:
    """Per-tensor outcome; ``numel`` is the number of counted entries (tuned entries)."""

    name: str
    shape: tuple[int, ...]
    base_shape: tuple[int, ...]
    dtype_base: str
    dtype_tuned: str
    stats: Stats

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1



@dataclass
class DiffResult:
    """Everything the diff found: per-tensor results and the plan's bookkeeping."""

    tolerances: tuple[float, ...]
    tensors: list[TensorResult]
    plan: Plan

    @property
    def n_params(self) -> int:
        return sum(t.numel for t in self.tensors)

    def totals(self) -> Stats:
        tot = Stats.zero(len(self.tolerances))
        for t in self.tensors:
            tot.add(t.stats)
        return tot

    def summary(self) -> dict[str, Any]:
        """The JSON object of ``rlsparsity diff --json`` (fractions of n_params)."""
        n, tot = self.n_params, self.totals()
        frac = (lambda k: k / n) if n else (lambda k: float("nan"))
        unchanged0 = n - int(tot.changed[self.tolerances.index(0.0)]) if 0.0 in self.tolerances else None
        out: dict[str, Any] = {
            "n_params": n,
            "sparsity": {tol_key(t): 1.0 - frac(int(c)) for t, c in zip(self.tolerances, tot.changed, strict=True)},
            "changed": {tol_key(t): int(c) for t, c in zip(self.tolerances, tot.changed, strict=True)},
            "below_bf16_half_ulp": frac(tot.below_ulp),
            "below_bf16_half_ulp_incl_zero": frac(tot.below_ulp + unchanged0) if unchanged0 is not None else None,
            "max_abs_delta": tot.max_abs,
            "l2_delta": math.sqrt(tot.sumsq),
            "mismatched": self.plan.mismatched,
            "missing": self.plan.missing,
            "nonfinite": [{"name": t.name, "count": t.stats.nonfinite} for t in self.tensors if t.stats.nonfinite],
            "dtype_mismatch": self.plan.dtype_mismatch,
            "tied": self.plan.tied,
        }
        return out


def check_comparable(base: Checkpoint, tuned: Checkpoint, plan: Plan) -> None:
    """CheckpointError unless the plan compares at least one entry (never report n_params 0)."""
    if not plan.pairs:
        nb, nt = sorted(base.tensors), sorted(tuned.tensors)
        raise CheckpointError(f"{base.path} and {tuned.path} have no tensor names in common (base has "
                              f"{len(nb)}, e.g. {nb[:1]}; tuned has {len(nt)}, e.g. {nt[:1]})")
    if not any(t.numel for _, t in plan.pairs):
        raise CheckpointError(f"{base.path} and {tuned.path}: the tensors in common hold no entries "
                              f"(every shape has a 0 dimension): nothing to compare")


def _units(pair: tuple[TensorInfo, TensorInfo]) -> Iterator[tuple[int, int]]:
    b, t = pair
    if b.shape != t.shape:
        yield (0, -1)  # one unit, handled row block by row block
        return
    n = t.numel
    for s in range(0, max(n, 1), CHUNK_ELEMS):
        yield (s, min(s + CHUNK_ELEMS, n))


def _mismatched_unit(b: TensorInfo, t: TensorInfo, tolerances, mask_tol, device) -> tuple[Stats, np.ndarray]:
    """Compare the overlapping slice row block by row block; tuned entries outside count changed."""
    ov = overlap_shape(b.shape, t.shape)
    st = Stats.zero(len(tolerances))
    mask = np.ones(t.shape, dtype=bool)
    if prod(ov) and len(ov) >= 1:
        rb, rt = prod(b.shape[1:]), prod(t.shape[1:])
        step = max(1, CHUNK_ELEMS // max(rt, 1))
        inner = tuple(slice(0, o) for o in ov[1:])
        for r0 in range(0, ov[0], step):
            r1 = min(r0 + step, ov[0])
            ab = read_bits(b, r0 * rb, r1 * rb).reshape((r1 - r0,) + b.shape[1:])[(slice(None),) + inner]
            tb = read_bits(t, r0 * rt, r1 * rt).reshape((r1 - r0,) + t.shape[1:])[(slice(None),) + inner]
            cst, m = chunk_stats(np.ascontiguousarray(ab).ravel(), np.ascontiguousarray(tb).ravel(),
                                 b.dtype, t.dtype, tolerances, mask_tol, device)
            st.add(cst)
            mask[(slice(r0, r1),) + inner] = m.reshape(ab.shape)
    st.changed += t.numel - prod(ov)
    return st, mask.ravel()


def diff_checkpoints(base: Checkpoint, tuned: Checkpoint, tolerances: tuple[float, ...] = DEFAULT_TOLERANCES,
                     mask_path: Path | None = None, mask_tol: float = 0.0, threads: int | None = None,
                     device: str = "cpu", progress: bool = False, log: Any = None) -> DiffResult:
    """Diff two opened checkpoints tensor by tensor (chunked, thread pool over chunks).

    With ``mask_path`` the update mask |Δ| > mask_tol is written there (see MaskWriter). A
    sharded tuned checkpoint gets one progress line per finished shard on ``log`` (default
    stderr; the logs of the analysis jobs), see :class:`ShardLog`.
    """
    tolerances = check_tolerances(tolerances)
    if not (math.isfinite(mask_tol) and mask_tol >= 0):
        raise ValueError(f"mask tolerance {mask_tol!r} is not a finite number >= 0")
    keep_freed_memory()
    if kernel_device(device) != device:
        (log or (lambda msg: print(msg, file=sys.stderr, flush=True)))(
            f"[diff] --device {device}: the diff runs on the CPU, which is faster (reading dominates; "
            f"{GPU_KERNEL_ENV}=1 forces the GPU kernel)")
        device = "cpu"
    plan = plan_pairs(base, tuned)
    check_comparable(base, tuned, plan)
    writer = MaskWriter(mask_path, {t.name: t.shape for _, t in plan.pairs},
                        {"mask_tol": repr(mask_tol)}) if mask_path else None
    units = [(p, s, e) for p in plan.pairs for s, e in _units(p)]

    def work(unit: tuple[tuple[TensorInfo, TensorInfo], int, int]) -> tuple[str, Stats, int]:
        (b, t), s, e = unit
        if e < 0:
            st, m = _mismatched_unit(b, t, tolerances, mask_tol, device)
            s, nbytes = 0, b.nbytes + t.nbytes
        else:
            st, m = chunk_stats(read_bits(b, s, e), read_bits(t, s, e), b.dtype, t.dtype, tolerances, mask_tol, device)
            nbytes = (e - s) * (b.dtype.itemsize + t.dtype.itemsize)
        if writer:
            writer.write(t.name, s, m)
        return t.name, st, nbytes

    per: dict[str, Stats] = {t.name: Stats.zero(len(tolerances)) for _, t in plan.pairs}
    bar = _progress(sum(b.nbytes + t.nbytes for b, t in plan.pairs), progress)
    shards = ShardLog([(t.name, t.file) for (_, t), _, _ in units], log)
    n_threads = threads or min(MAX_THREADS, os.cpu_count() or 1)
    try:
        with _torch_single_thread(), ThreadPoolExecutor(max(1, n_threads)) as pool:
            for name, st, nbytes in pool.map(work, units):
                per[name].add(st)
                bar.update(nbytes)
                shards.done(name, nbytes)
    finally:
        bar.close()
        if writer:
            writer.close()
    results = [TensorResult(t.name, t.shape, b.shape, b.dtype.name, t.dtype.name, per[t.name]) for b, t in plan.pairs]
    return DiffResult(tolerances, results, plan)


class ShardLog:
    """One line per finished shard of a sharded (tuned) checkpoint: ``[diff] shard 2/4
    model-00002-of-00004.safetensors: 123 tensors, 4.2 GB compared, 31 s``. Nothing for a
    single-file checkpoint (its diff is one step; the job's own line says it is done)."""

    def __init__(self, units: list[tuple[str, Path]], log: Any = None) -> None:
        self.left: dict[Path, int] = {}
        self.tensors: dict[Path, set[str]] = {}
        for name, file in units:
            self.left[file] = self.left.get(file, 0) + 1
            self.tensors.setdefault(file, set()).add(name)
        self.file_of = {name: file for name, file in units}
        self.bytes = dict.fromkeys(self.left, 0)
        self.n, self.finished, self.t0 = len(self.left), 0, time.time()
        self.log = log if log is not None else (lambda msg: print(msg, file=sys.stderr, flush=True))

    def done(self, name: str, nbytes: int) -> None:
        if self.n < 2:
            return
        f = self.file_of[name]
        self.left[f] -= 1
        self.bytes[f] += nbytes
        if self.left[f] == 0:
            self.finished += 1
            self.log(f"[diff] shard {self.finished}/{self.n} {Path(f).name}: {len(self.tensors[f])} tensors, "
                     f"{self.bytes[f] / 1e9:.2f} GB compared, {time.time() - self.t0:.0f} s")


class _torch_single_thread:
    """Pin torch intra-op threads to 1 while Python threads provide the parallelism."""

    def __enter__(self):
        if "torch" in sys.modules:
            import torch

            self.n = torch.get_num_threads()
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if "torch" in sys.modules and hasattr(self, "n"):
            import torch

            torch.set_num_threads(self.n)


class _NoBar:
    """Stand-in for a disabled tqdm bar (tqdm's import costs ~0.2 s of CLI start-up)."""

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not (enabled and sys.stderr.isatty()):
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc="diff", file=sys.stderr)


# ----------------------------------------------------------------- outputs


def tensor_rows(result: DiffResult) -> list[dict[str, Any]]:
    """Rows of tensors.csv: one per compared tensor (counts, not fractions)."""
    from rlsparsity.analysis.layers import parse_name

    rows = []
    for t in result.tensors:
        layer, mtype = parse_name(t.name)
        row: dict[str, Any] = {"name": t.name, "layer": layer, "matrix_type": mtype,
                               "shape": "x".join(map(str, t.shape)), "numel": t.numel}
        changed = zip(result.tolerances, t.stats.changed, strict=True)
        row.update({f"changed_{tol_key(tol)}": int(c) for tol, c in changed})
        row.update(
            {
                "below_ulp": t.stats.below_ulp,
                "nonfinite": t.stats.nonfinite,
                "max_abs_delta": t.stats.max_abs,
                "l2_delta": math.sqrt(t.stats.sumsq),
                "dtype_base": t.dtype_base,
                "dtype_tuned": t.dtype_tuned,
            }
        )
        rows.append(row)
    return rows


def provenance(base: str, tuned: str, tolerances: tuple[float, ...], seconds: float) -> dict[str, Any]:
    import platform

    import safetensors

    from rlsparsity import __version__

    return {
        "base": str(base),
        "tuned": str(tuned),
        "tolerances": list(tolerances),
        "versions": {
            "rlsparsity": __version__,
            "numpy": np.__version__,
            "safetensors": safetensors.__version__,
            "python": platform.python_version(),
        },
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(seconds, 3),
    }


def write_outputs(out: Path, result: DiffResult, prov: dict[str, Any]) -> dict[str, Any]:
    """Write tensors.csv and summary.json into ``out`` (the mask is written during the diff)."""
    import csv

    out.mkdir(parents=True, exist_ok=True)
    rows = tensor_rows(result)
    cols = list(rows[0]) if rows else ["name"]
    with open(out / "tensors.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    summary = {**result.summary(), **prov}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=True) + "\n")
    return summary


def delta_stream(base: Checkpoint, tuned: Checkpoint) -> tuple[Any, dict[str, tuple[int, ...]]]:
    """A re-iterable stream of (name, first element, |fp64(θ1) − fp64(θ0)|) chunks over the
    equal-shape tensor pairs, and their shapes (for :func:`rlsparsity.analysis.overlap.topk_mask`).
    Non-finite entries give NaN or inf."""
    pairs = [(b, t) for b, t in plan_pairs(base, tuned).pairs if b.shape == t.shape]

    def stream() -> Iterator[tuple[str, int, np.ndarray]]:
        for b, t in pairs:
            for s, e in _units((b, t)):
                yield t.name, s, abs_delta64(read_bits(b, s, e), read_bits(t, s, e), b.dtype, t.dtype)

    return stream, {t.name: t.shape for _, t in pairs}
