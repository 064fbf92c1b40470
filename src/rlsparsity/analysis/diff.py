"""Streaming, exact update-sparsity diff of two checkpoints (SPEC §1 definitions).

For base θ0 and tuned θ1, an entry is *unchanged at tolerance t* iff |θ1 − θ0| ≤ t,
decided exactly:

* Candidates for change are found on raw bit patterns (bits differ), which is exact for
  equal dtypes once the two IEEE corner cases are fixed up: +0 vs −0 differ in bits but
  are equal (removed again below), and a NaN with equal bits on both sides is caught by a
  per-chunk non-finite check of the base (that chunk then takes the value path). Chunks
  whose dtypes differ take the value path: both sides converted exactly to float64.
* Equal float dtypes of ≤ 32 bits with a finite base (the common case) take a float32
  fast path: for the changed entries Δ = fl32(θ1 − θ0), proven exact entry by entry
  (2|Δ| < |θ0|, Sterbenz), with thresholds rounded down to float32; the few entries not
  proven exact take the float64 path below. See ``_fast_chunk``. With ``--device cuda``
  the fast path's compare, gather and arithmetic run in torch on the GPU; counts, masks
  and max |Δ| are identical to the CPU's, the l2 sum may differ in its last bits
  (summation order).
* Otherwise, for the changed entries only, Δ = fl64(θ1 − θ0). Every comparison ``|Δ| ≤ t`` and
  ``|Δ| < h`` is exact: rounding is monotone, so a wrong decision needs fl64(|Δ|) to equal
  the threshold exactly; those ties are resolved with the TwoSum error term (the exact
  Δ is s + err).
* Non-finite entries (NaN/Inf on either side) count as changed at every tolerance and
  are reported per tensor.

*Below bf16 storage precision*: an entry with 0 < |Δ| < h(θ0), h(w) = half a bf16 ulp of
the base value = 2^(floor(log2|w|) − 8), and for |w| < 2^-126 (zero, bf16 subnormals)
half the smallest bf16 subnormal, 2^-134. ``below_bf16_half_ulp`` is the fraction of
ALL counted entries with that property; ``below_bf16_half_ulp_incl_zero`` adds the
exactly unchanged entries (|Δ| < h including Δ = 0).

Counting: n is the number of entries of every tensor present in both checkpoints (a tied
lm_head stored twice counts once). For a shape mismatch the overlapping slice is
compared, and the tuned entries outside it count as changed (reported under
``mismatched``); base-only entries of such a tensor, and tensors present on one side
only (``missing``), are not counted.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from rlsparsity.analysis.io import Checkpoint, DType, MaskWriter, TensorInfo, read_bits, values64

DEFAULT_TOLERANCES: tuple[float, ...] = (0.0, 1e-8, 1e-7, 1e-6, 1e-5)
CHUNK_ELEMS = 1 << 22  # flat elements per work unit (a multiple of 8: packed masks concatenate);
# measured fastest of 2^18..2^22 on a 2-core machine, ~100 MB per worker thread
EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "embed_in.weight", "word_embeddings.weight")


def tol_key(tol: float) -> str:
    """JSON/CSV key of a tolerance: ``format(tol, "g")`` ("0", "1e-08", "1e-05")."""
    return format(tol, "g")


# ----------------------------------------------------------------- per-chunk kernel


@dataclass
class Stats:
    """Counts for a set of entries. ``changed[i]``: entries with |Δ| > tolerances[i]."""

    changed: np.ndarray
    below_ulp: int = 0
    nonfinite: int = 0
    max_abs: float = 0.0
    sumsq: float = 0.0

    @classmethod
    def zero(cls, n_tol: int) -> "Stats":
        return cls(np.zeros(n_tol, dtype=np.int64))

    def add(self, other: "Stats") -> None:
        self.changed += other.changed
        self.below_ulp += other.below_ulp
        self.nonfinite += other.nonfinite
        self.max_abs = max(self.max_abs, other.max_abs)
        self.sumsq += other.sumsq


def _twosum_err(b: np.ndarray, a: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Exact rounding error of s = fl(b − a): b − a == s + err exactly (Knuth's TwoSum)."""
    na = -a
    bv = s - b
    return (b - (s - bv)) + (na - bv)


def _count_exceeding(ad: np.ndarray, d: np.ndarray, a: np.ndarray, b: np.ndarray, t: float) -> int:
    """Exact count of entries with |b − a| > t (NaN counts), given d = fl(b − a), ad = |d|."""
    n_le = int(np.count_nonzero(ad <= t))
    ties = np.flatnonzero(ad == t)
    if ties.size:
        err = _twosum_err(b[ties], a[ties], d[ties])
        n_le -= int(np.count_nonzero(np.sign(d[ties]) * err > 0))
    return ad.size - n_le


def half_bf16_ulp(w: np.ndarray) -> np.ndarray:
    """2^(floor(log2|w|) − 8), with floor(log2|w|) clamped below at −126 (w = 0 included).

    Built from float64 bits: floor(log2|w|) = biased exponent − 1023 for every w that is
    normal in float64 (all bf16/fp16/fp32 values), and the result's biased exponent is
    max(E, 1023 − 126) − 8.
    """
    e = (np.ascontiguousarray(w, dtype=np.float64).view(np.uint64) >> np.uint64(52)) & np.uint64(0x7FF)
    return ((np.maximum(e, np.uint64(897)) - np.uint64(8)) << np.uint64(52)).view(np.float64)


def _count_below_ulp(ad: np.ndarray, d: np.ndarray, a: np.ndarray, b: np.ndarray) -> int:
    """Exact count of entries with 0 < |b − a| < half_bf16_ulp(a) (all entries here have Δ ≠ 0)."""
    h = half_bf16_ulp(a)
    n = int(np.count_nonzero(ad < h))
    ties = np.flatnonzero(ad == h)
    if ties.size:
        err = _twosum_err(b[ties], a[ties], d[ties])
        n += int(np.count_nonzero(np.sign(d[ties]) * err < 0))
    return n


def subset_stats(a: np.ndarray, b: np.ndarray, tolerances: tuple[float, ...]) -> tuple[Stats, np.ndarray]:
    """Stats of entries whose values differ (float64 a = base, b = tuned; no equal pairs).

    Returns the stats and |Δ| (for masks at a tolerance > 0).
    """
    with np.errstate(invalid="ignore"):  # inf - inf: NaN, counted as non-finite
        d = b - a
    ad = np.abs(d)
    fin = np.isfinite(d)
    n_fin = int(np.count_nonzero(fin))
    st = Stats(np.array([ad.size if t == 0 else _count_exceeding(ad, d, a, b, t) for t in tolerances],
                        dtype=np.int64))
    st.nonfinite = ad.size - n_fin
    if n_fin < ad.size:
        a, b, d, ad = a[fin], b[fin], d[fin], ad[fin]
    if ad.size:
        st.below_ulp = _count_below_ulp(ad, d, a, b)
        st.max_abs = float(ad.max())
        st.sumsq = float(np.dot(d, d))
    return st, ad


def _has_nonfinite(bits: np.ndarray, dt: DType) -> bool:
    """Any NaN/Inf among float bit patterns: two reductions over the unsigned and signed views
    (negative non-finite patterns are the largest unsigned ones, positive the largest signed)."""
    if not dt.is_float or bits.size == 0:
        return False
    sign = 1 << (8 * dt.itemsize - 1)
    return int(bits.max()) >= (sign | dt.nonfinite_at) or int(bits.view(f"<i{dt.itemsize}").max()) >= dt.nonfinite_at


def changed_positions(a_bits: np.ndarray, b_bits: np.ndarray, da: DType, db: DType
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Boolean mask of entries whose values differ or are non-finite, their flat indices,
    and the float64 base/tuned values there (the general, all-float64 path)."""
    if da == db and not _has_nonfinite(a_bits, da):
        m = a_bits != b_bits
        idx = np.flatnonzero(m)
        a, b = values64(a_bits[idx], da), values64(b_bits[idx], db)
        idx, a, b = _drop_equal_values(m, idx, a, b)
        return m, idx, a, b
    a64, b64 = values64(a_bits, da), values64(b_bits, db)
    m = (a64 != b64) | ~np.isfinite(a64) | ~np.isfinite(b64)
    idx = np.flatnonzero(m)
    return m, idx, a64[idx], b64[idx]


def _drop_equal_values(m: np.ndarray, idx: np.ndarray, a: np.ndarray, b: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Remove +0/−0 pairs (different bits, equal values) from ``m`` and the gathered arrays."""
    same = a == b
    if same.any():
        m[idx[same]] = False
        keep = ~same
        idx, a, b = idx[keep], a[keep], b[keep]
    return idx, a, b


def _subset_into(st: Stats, m: np.ndarray, idx: np.ndarray, a: np.ndarray, b: np.ndarray,
                 tolerances: tuple[float, ...], mask_tol: float) -> None:
    """Add the exact float64 stats of changed entries ``idx`` to ``st``; apply ``mask_tol`` to ``m``."""
    sst, ad = subset_stats(a, b, tolerances)
    st.add(sst)
    if mask_tol > 0:
        with np.errstate(invalid="ignore"):
            fin = np.isfinite(b - a)
        # ad holds finite entries only; non-finite entries stay in the mask (changed)
        m[idx[fin][ad <= mask_tol] if ad.size else idx[:0]] = False


# Fast path for equal float dtypes of at most 32 bits (the common case): Δ in float32.
#
# s = fl32(θ1 − θ0) is exact whenever 2|s| < |θ0|: if the subtraction were inexact, θ1/θ0
# would lie outside [1/2, 2] (Sterbenz) or the signs would differ, so |Δ| ≥ |θ0|/2 and, by
# monotone rounding, 2|s| ≥ |θ0|. Those entries (sign flips, |Δ| ≥ |θ0|/2, θ0 = ±0,
# overflow, non-finite tuned values) are rare and take the float64 path above. For the
# rest Δ = s exactly, so |Δ| ≤ t ⇔ |s| ≤ T32(t), T32(t) the largest float32 ≤ t.
FAST32 = ("BF16", "F16", "F32")


def _f32_below(t: float) -> float:
    """The largest float32 ≤ t (t ≥ 0): |s| ≤ t ⇔ |s| ≤ this, for every float32 s."""
    f = np.float32(t)
    return float(np.nextafter(f, np.float32(0)) if float(f) > t else f)


def _fast_chunk(a_bits: np.ndarray, b_bits: np.ndarray, dt: DType, tolerances: tuple[float, ...],
                mask_tol: float, device: str) -> tuple[Stats, np.ndarray]:
    """:func:`chunk_stats` for equal FAST32 dtypes and a finite base (see the note above).

    The compare, gather and float32 arithmetic run in numpy on the CPU and in torch on
    another device; the rare float64 entries always on the CPU. Below-half-ulp needs no
    work for bf16: two distinct bf16 values are at least half a bf16 ulp of the base apart.
    """
    ops = _NumpyOps() if device == "cpu" else _TorchOps(device)
    m, idx, a32, ad = ops.changed32(a_bits, b_bits, dt)
    ok = (ad + ad) < abs(a32)
    st = Stats.zero(len(tolerances))
    if ops.count(ok) < len(idx):  # rare: float64 path for the entries not proven exact
        sidx = idx[ops.numpy(~ok)]
        sidx, a64, b64 = _drop_equal_values(m, sidx, values64(a_bits[sidx], dt), values64(b_bits[sidx], dt))
        _subset_into(st, m, sidx, a64, b64, tolerances, mask_tol)
        ad, a32, idx = ad[ok], a32[ok], idx[ops.numpy(ok)]
    n = len(idx)  # every remaining entry has Δ = s ≠ 0 exactly
    st.changed += np.array([n if t == 0 else ops.count(ad > _f32_below(t)) for t in tolerances], dtype=np.int64)
    if n:
        if dt.name != "BF16":
            st.below_ulp += ops.count(ad * 256 < ops.pow2_floor(a32))  # |Δ| < 2^(e−8); ×256 is exact
        st.max_abs = max(st.max_abs, float(ad.max()))
        st.sumsq += ops.sumsq(ad)
        if mask_tol > 0:
            m[idx[ops.numpy(ad <= _f32_below(mask_tol))]] = False
    return st, m


def _to_f32(bits: np.ndarray, dt: DType) -> np.ndarray:
    """Exact float32 values of FAST32 bit patterns."""
    if dt.name == "BF16":
        return np.left_shift(bits, 16, dtype=np.uint32).view(np.float32)
    return bits.view(np.float16).astype(np.float32) if dt.name == "F16" else bits.view(np.float32)


class _NumpyOps:
    """Array operations of :func:`_fast_chunk` on the CPU (numpy)."""

    @staticmethod
    def changed32(a_bits: np.ndarray, b_bits: np.ndarray, dt: DType
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(mask of differing bits, their flat indices, float32 base there, float32 |s|)."""
        m = a_bits != b_bits
        idx = np.flatnonzero(m)
        a32 = _to_f32(a_bits[idx], dt)
        with np.errstate(over="ignore", invalid="ignore"):  # inf/NaN: not proven exact, float64 path
            return m, idx, a32, np.abs(_to_f32(b_bits[idx], dt) - a32)

    count = staticmethod(lambda x: int(np.count_nonzero(x)))
    numpy = staticmethod(lambda x: x)

    @staticmethod
    def sumsq(ad: np.ndarray) -> float:
        return float(np.einsum("i,i->", ad, ad, dtype=np.float64))  # float32 squares are exact in float64

    @staticmethod
    def pow2_floor(a32: np.ndarray) -> np.ndarray:
        """2^floor(log2|a|), at least 2^-126 (zero and subnormals)."""
        e = a32.view(np.uint32) & np.uint32(0x7F80_0000)
        return np.maximum(e, np.uint32(0x0080_0000)).view(np.float32)


class _TorchOps:
    """Array operations of :func:`_fast_chunk` on a torch device (index arrays come back to numpy)."""

    def __init__(self, device: str):
        import torch

        self.torch, self.device = torch, device

    def changed32(self, a_bits: np.ndarray, b_bits: np.ndarray, dt: DType
                  ) -> tuple[np.ndarray, np.ndarray, Any, Any]:
        torch, signed = self.torch, np.dtype(f"<i{dt.itemsize}")  # torch lacks unsigned ops: use signed
        ta, tb = (torch.from_numpy(x.view(signed)).to(self.device) for x in (a_bits, b_bits))
        tm = ta != tb
        tidx = tm.nonzero().flatten()
        fdt = getattr(torch, dt.torch_name)
        a32 = ta[tidx].view(fdt).float()
        return tm.cpu().numpy(), tidx.cpu().numpy(), a32, (tb[tidx].view(fdt).float() - a32).abs()

    def count(self, x: Any) -> int:
        return int(self.torch.count_nonzero(x))

    @staticmethod
    def numpy(x: Any) -> np.ndarray:
        return x.cpu().numpy()

    def sumsq(self, ad: Any) -> float:
        return float(self.torch.sum(ad.double() ** 2))

    def pow2_floor(self, a32: Any) -> Any:
        e = a32.view(self.torch.int32) & 0x7F80_0000
        return e.clamp_min(0x0080_0000).view(self.torch.float32)


def chunk_stats(a_bits: np.ndarray, b_bits: np.ndarray, da: DType, db: DType, tolerances: tuple[float, ...],
                mask_tol: float = 0.0, device: str = "cpu") -> tuple[Stats, np.ndarray]:
    """Stats of one chunk (equal-length flat bit arrays) and its update mask |Δ| > mask_tol."""
    if da == db and da.name in FAST32 and not _has_nonfinite(a_bits, da):
        return _fast_chunk(a_bits, b_bits, da, tolerances, mask_tol, device)
    m, idx, a, b = changed_positions(a_bits, b_bits, da, db)
    st = Stats.zero(len(tolerances))
    _subset_into(st, m, idx, a, b, tolerances, mask_tol)
    return st, m


# ----------------------------------------------------------------- pairing of tensors


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


def _bytes_equal(x: TensorInfo, y: TensorInfo) -> bool:
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    for s in range(0, x.numel, CHUNK_ELEMS):
        e = min(s + CHUNK_ELEMS, x.numel)
        if not np.array_equal(read_bits(x, s, e), read_bits(y, s, e)):
            return False
    return True


def tied_names(ck: Checkpoint) -> dict[str, str]:
    """Tensors that duplicate another one of the same checkpoint: name -> the one kept.

    Two cases: the same bytes of the same file listed under two names (shared storage),
    and ``lm_head.weight`` byte-identical to the input embedding while config.json's
    ``tie_word_embeddings`` is true (the HF default when absent).
    """
    out: dict[str, str] = {}
    seen: dict[tuple[Path, int, int], str] = {}
    for name, info in sorted(ck.tensors.items()):
        key = (info.file, info.offset, info.nbytes)
        if info.nbytes and key in seen:
            out[name] = seen[key]
        else:
            seen[key] = name
    head = ck.tensors.get("lm_head.weight")
    emb = next((n for n in sorted(ck.tensors) if n.endswith(EMBED_SUFFIXES)), None)
    if head is not None and emb and "lm_head.weight" not in out and ck.config.get("tie_word_embeddings", True):
        if _bytes_equal(head, ck.tensors[emb]):
            out["lm_head.weight"] = emb
    return out


@dataclass
class Plan:
    """Which tensors are compared and how; the bookkeeping lists go into the summary."""

    pairs: list[tuple[TensorInfo, TensorInfo]] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)
    mismatched: list[dict[str, Any]] = field(default_factory=list)
    dtype_mismatch: list[dict[str, Any]] = field(default_factory=list)
    tied: list[dict[str, Any]] = field(default_factory=list)


def plan_pairs(base: Checkpoint, tuned: Checkpoint) -> Plan:
    """Pair tensors by name; a tied duplicate is skipped only if tied on every side storing it."""
    tb, tt = tied_names(base), tied_names(tuned)
    plan = Plan()
    for name in sorted(set(base.tensors) | set(tuned.tensors)):
        in_b, in_t = name in base.tensors, name in tuned.tensors
        if (not in_b or name in tb) and (not in_t or name in tt):
            plan.tied.append({"name": name, "tied_to": tb.get(name) or tt.get(name)})
            continue
        if not (in_b and in_t):
            info = (tuned if in_t else base).tensors[name]
            plan.missing.append({"name": name, "side": "base" if in_t else "tuned",
                                 "present_in": "tuned" if in_t else "base",
                                 "shape": list(info.shape), "numel": info.numel})
            continue
        b, t = base.tensors[name], tuned.tensors[name]
        plan.pairs.append((b, t))
        if b.dtype != t.dtype:
            plan.dtype_mismatch.append({"name": name, "base_dtype": b.dtype.name, "tuned_dtype": t.dtype.name})
        if b.shape != t.shape:
            ov = _overlap_shape(b.shape, t.shape)
            plan.mismatched.append({"name": name, "base_shape": list(b.shape), "tuned_shape": list(t.shape),
                                    "compared_shape": list(ov),
                                    "extra_tuned_counted_changed": t.numel - _prod(ov),
                                    "extra_base_not_counted": b.numel - _prod(ov)})
    return plan


def _prod(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def _overlap_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    if len(a) != len(b):
        return (0,)
    return tuple(min(x, y) for x, y in zip(a, b))


# ----------------------------------------------------------------- the diff


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
            "sparsity": {tol_key(t): 1.0 - frac(int(c)) for t, c in zip(self.tolerances, tot.changed)},
            "changed": {tol_key(t): int(c) for t, c in zip(self.tolerances, tot.changed)},
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
    ov = _overlap_shape(b.shape, t.shape)
    st = Stats.zero(len(tolerances))
    mask = np.ones(t.shape, dtype=bool)
    if _prod(ov) and len(ov) >= 1:
        rb, rt = _prod(b.shape[1:]), _prod(t.shape[1:])
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
    st.changed += t.numel - _prod(ov)
    return st, mask.ravel()


def diff_checkpoints(base: Checkpoint, tuned: Checkpoint, tolerances: tuple[float, ...] = DEFAULT_TOLERANCES,
                     mask_path: Path | None = None, mask_tol: float = 0.0, threads: int | None = None,
                     device: str = "cpu", progress: bool = False) -> DiffResult:
    """Diff two opened checkpoints tensor by tensor (chunked, thread pool over chunks).

    With ``mask_path`` the update mask |Δ| > mask_tol is written there (see MaskWriter).
    """
    tolerances = tuple(sorted(set(float(t) for t in tolerances)))
    plan = plan_pairs(base, tuned)
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
    n_threads = threads or min(8, os.cpu_count() or 1)
    try:
        with _torch_single_thread(), ThreadPoolExecutor(max(1, n_threads)) as pool:
            for name, st, nbytes in pool.map(work, units):
                per[name].add(st)
                bar.update(nbytes)
    finally:
        bar.close()
        if writer:
            writer.close()
    results = [TensorResult(t.name, t.shape, b.shape, b.dtype.name, t.dtype.name, per[t.name]) for b, t in plan.pairs]
    return DiffResult(tolerances, results, plan)


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
        row.update({f"changed_{tol_key(tol)}": int(c) for tol, c in zip(result.tolerances, t.stats.changed)})
        row.update({"below_ulp": t.stats.below_ulp, "nonfinite": t.stats.nonfinite,
                    "max_abs_delta": t.stats.max_abs, "l2_delta": math.sqrt(t.stats.sumsq),
                    "dtype_base": t.dtype_base, "dtype_tuned": t.dtype_tuned})
        rows.append(row)
    return rows


def provenance(base: str, tuned: str, tolerances: tuple[float, ...], seconds: float) -> dict[str, Any]:
    import platform

    import safetensors

    from rlsparsity import __version__

    return {"base": str(base), "tuned": str(tuned), "tolerances": list(tolerances),
            "versions": {"rlsparsity": __version__, "numpy": np.__version__, "safetensors": safetensors.__version__,
                         "python": platform.python_version()},
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(seconds, 3)}


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
                with np.errstate(invalid="ignore"):
                    yield t.name, s, np.abs(values64(read_bits(t, s, e), t.dtype) - values64(read_bits(b, s, e), b.dtype))

    return stream, {t.name: t.shape for _, t in pairs}
