"""Exact per-chunk diff maths: counts of |θ1 − θ0| > t, below-half-ulp, non-finite, max/l2.

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
  proven exact take the float64 path below. See ``_fast_chunk``. On the CPU a chunk is
  computed in blocks of 2^18 entries, each either by gathering its changed entries or, when
  at least half changed, densely (``_dense_block``). The GPU kernel (``device`` other than
  cpu; the diff only uses it when forced, see ``diff.kernel_device``) runs the compare,
  gather and arithmetic in torch. Counts, masks and max |Δ| are identical on every path;
  the l2 sum may differ in its last bits (summation order).
* Otherwise, for the changed entries only, Δ = fl64(θ1 − θ0). Every comparison ``|Δ| ≤ t`` and
  ``|Δ| < h`` is exact: rounding is monotone, so a wrong decision needs fl64(|Δ|) to equal
  the threshold exactly; those ties are resolved with the TwoSum error term (the exact
  Δ is s + err).
* Chunks where either side stores integers never go through float64 (which is exact
  only up to 2^53): see :mod:`rlsparsity.analysis.exact_int`.
* Non-finite entries (NaN/Inf on either side) count as changed at every tolerance and
  are reported per tensor.

*Below bf16 storage precision*: an entry with 0 < |Δ| < h(θ0), h(w) = half a bf16 ulp of
the base value = 2^(floor(log2|w|) − 8), and for |w| < 2^-126 (zero, bf16 subnormals)
half the smallest bf16 subnormal, 2^-134.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rlsparsity.analysis.header import DType, values64


@dataclass
class Stats:
    """Counts for a set of entries. ``changed[i]``: entries with |Δ| > tolerances[i]."""

    changed: np.ndarray
    below_ulp: int = 0
    nonfinite: int = 0
    max_abs: float = 0.0
    sumsq: float = 0.0

    @classmethod
    def zero(cls, n_tol: int) -> Stats:
        return cls(np.zeros(n_tol, dtype=np.int64))

    def add(self, other: Stats) -> None:
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


def _cpu_fast_chunk(a_bits: np.ndarray, b_bits: np.ndarray, dt: DType, tolerances: tuple[float, ...],
                    mask_tol: float) -> tuple[Stats, np.ndarray]:
    """:func:`_fast_chunk` on the CPU, block by block of BLOCK entries (the temporaries of a block
    stay in cache: ~20 % less CPU per chunk with two busy cores). A block with at least
    DENSE_FRACTION changed entries is computed densely, the others by gathering the changed ones."""
    m = np.empty(len(a_bits), dtype=bool)
    st = Stats.zero(len(tolerances))
    for s in range(0, len(m), BLOCK):
        sl = slice(s, s + BLOCK)
        mb = np.not_equal(a_bits[sl], b_bits[sl], out=m[sl])
        if np.count_nonzero(mb) >= DENSE_FRACTION * mb.size:
            st.add(_dense_block(a_bits[sl], b_bits[sl], mb, dt, tolerances, mask_tol))
        else:
            st.add(_fast_chunk(a_bits[sl], b_bits[sl], dt, tolerances, mask_tol, "cpu", mb)[0])
    return st, m


def _fast_chunk(a_bits: np.ndarray, b_bits: np.ndarray, dt: DType, tolerances: tuple[float, ...],
                mask_tol: float, device: str, m: np.ndarray | None = None) -> tuple[Stats, np.ndarray]:
    """:func:`chunk_stats` for equal FAST32 dtypes and a finite base (see the note above).

    The compare, gather and float32 arithmetic run in numpy on the CPU and in torch on
    another device (where the changed entries' indices stay until the CPU needs a few of
    them); the rare float64 entries always on the CPU. Below-half-ulp needs no
    work for bf16: two distinct bf16 values are at least half a bf16 ulp of the base apart.
    """
    ops: Any = _NumpyOps() if device == "cpu" else _TorchOps(device)
    m, idx, a32, ad = ops.changed32(a_bits, b_bits, dt, m)  # m: bits differ, updated in place if given
    ok = (ad + ad) < abs(a32)
    st = Stats.zero(len(tolerances))
    if ops.count(ok) < len(idx):  # rare: float64 path for the entries not proven exact
        sidx = ops.numpy(idx[~ok])
        sidx, a64, b64 = _drop_equal_values(m, sidx, values64(a_bits[sidx], dt), values64(b_bits[sidx], dt))
        _subset_into(st, m, sidx, a64, b64, tolerances, mask_tol)
        ad, a32, idx = ad[ok], a32[ok], idx[ok]
    n = len(idx)  # every remaining entry has Δ = s ≠ 0 exactly
    st.changed += np.array([n if t == 0 else ops.count(ad > _f32_below(t)) for t in tolerances], dtype=np.int64)
    if n:
        if dt.name != "BF16":
            st.below_ulp += ops.count(ad * 256 < ops.pow2_floor(a32))  # |Δ| < 2^(e−8); ×256 is exact
        st.max_abs = max(st.max_abs, float(ad.max()))
        st.sumsq += ops.sumsq(ad)
        if mask_tol > 0:
            m[ops.numpy(idx[ad <= _f32_below(mask_tol)])] = False
    return st, m


# From this fraction of changed entries on, a block is computed densely (every entry, Δ = 0
# where unchanged) instead of gathering the changed ones: flatnonzero + two gathers cost more per
# changed entry than the dense arithmetic per entry. CPU ms per 2^22 bf16 entries (in 2^18
# blocks) on a 2-core x86 VM: 20 % changed 12 gathered / 22 dense; 50 %: 19 / 21; 100 %: 49 / 26.
DENSE_FRACTION = 0.5
BLOCK = 1 << 18


def _dense_block(a_bits: np.ndarray, b_bits: np.ndarray, m: np.ndarray, dt: DType, tolerances: tuple[float, ...],
                 mask_tol: float) -> Stats:
    """Stats of one dense block; ``m`` (a view) is updated in place. Unchanged entries get
    |s| = 0 and never count; a changed entry on the float32 path has |s| > 0 (the only equal
    values with different bits, ±0, fail 2|s| < |θ0| and take the float64 path)."""
    a32 = _to_f32(a_bits, dt)
    with np.errstate(over="ignore", invalid="ignore"):
        ad = _to_f32(b_bits, dt)
        np.abs(np.subtract(ad, a32, out=ad), out=ad)
        ok = np.less(ad + ad, np.abs(a32))
    st = Stats.zero(len(tolerances))
    sidx = np.flatnonzero(np.greater(m, ok))  # changed and not proven exact: float64 path (rare)
    n = int(np.count_nonzero(m)) - len(sidx)
    if len(sidx):
        ad[sidx] = 0
        sidx, a64, b64 = _drop_equal_values(m, sidx, values64(a_bits[sidx], dt), values64(b_bits[sidx], dt))
        _subset_into(st, m, sidx, a64, b64, tolerances, mask_tol)
    st.changed += np.array([n if t == 0 else int(np.count_nonzero(ad > _f32_below(t))) for t in tolerances],
                           dtype=np.int64)
    if n:
        if dt.name != "BF16":  # entries with |s| = 0 (unchanged, float64 path) satisfy the test too: drop them
            below = np.count_nonzero(ad * 256 < _NumpyOps.pow2_floor(a32)) - np.count_nonzero(ad == 0)
            st.below_ulp += int(below)
        st.max_abs = max(st.max_abs, float(ad.max()))
        st.sumsq += _NumpyOps.sumsq(ad)
        if mask_tol > 0:
            m &= ~((ad <= _f32_below(mask_tol)) & (ad > 0))
    return st


def _to_f32(bits: np.ndarray, dt: DType, fresh: bool = False) -> np.ndarray:
    """Exact float32 values of FAST32 bit patterns, as an array free to be overwritten (F32
    bits are copied unless ``fresh`` says they already are a scratch array)."""
    if dt.name == "BF16":  # a plain widening cast, then an in-place shift: no buffered mixed-type loop
        u = bits.astype(np.uint32)
        return np.left_shift(u, 16, out=u).view(np.float32)
    if dt.name == "F16":
        return bits.view(np.float16).astype(np.float32)
    return bits.view(np.float32) if fresh else bits.view(np.float32).copy()


class _NumpyOps:
    """Array operations of :func:`_fast_chunk` on the CPU (numpy)."""

    @staticmethod
    def changed32(a_bits: np.ndarray, b_bits: np.ndarray, dt: DType, m: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(mask of differing bits (``m`` if given), their flat indices, float32 base there, float32 |s|)."""
        m = a_bits != b_bits if m is None else m
        idx = np.flatnonzero(m)
        a32 = _to_f32(a_bits.take(idx), dt, fresh=True)
        b32 = _to_f32(b_bits.take(idx), dt, fresh=True)
        with np.errstate(over="ignore", invalid="ignore"):  # inf/NaN: not proven exact, float64 path
            d = np.subtract(b32, a32, out=b32)
            return m, idx, a32, np.abs(d, out=d)

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

    def changed32(self, a_bits: np.ndarray, b_bits: np.ndarray, dt: DType, m: None = None
                  ) -> tuple[np.ndarray, Any, Any, Any]:
        torch, signed = self.torch, np.dtype(f"<i{dt.itemsize}")  # torch lacks unsigned ops: use signed
        ta, tb = (torch.from_numpy(x.view(signed)).to(self.device) for x in (a_bits, b_bits))
        tm = ta != tb
        tidx = tm.nonzero().flatten()
        fdt = getattr(torch, dt.torch_name)
        a32 = ta[tidx].view(fdt).float()
        return tm.cpu().numpy(), tidx, a32, (tb[tidx].view(fdt).float() - a32).abs()

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
    if not (da.is_float and db.is_float):
        from rlsparsity.analysis.exact_int import int_chunk

        return int_chunk(a_bits, b_bits, da, db, tolerances, mask_tol)
    if da == db and da.name in FAST32 and not _has_nonfinite(a_bits, da):
        if device == "cpu":
            return _cpu_fast_chunk(a_bits, b_bits, da, tolerances, mask_tol)
        return _fast_chunk(a_bits, b_bits, da, tolerances, mask_tol, device)
    m, idx, a, b = changed_positions(a_bits, b_bits, da, db)
    st = Stats.zero(len(tolerances))
    _subset_into(st, m, idx, a, b, tolerances, mask_tol)
    return st, m
