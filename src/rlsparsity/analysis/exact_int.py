"""Exact diff statistics for chunks where a side stores integers (I8..I64, U8, BOOL).

float64 holds integers exactly only up to 2^53, so integer values are never converted
to it: 2^53 and 2^53 + 1 are different entries and their Δ is 1. Integer pairs are
compared and subtracted in int64 (exact for |value| < 2^62; larger values, and pairs of
an integer and a float, take a Python path with exact integers and fractions). A
tolerance t is applied as |Δ| > t with the exact Δ. Below half a bf16 ulp of the base:
for an integer base w ≠ 0, h(w) = 2^(floor(log2|w|) − 8), with floor(log2|w|) from the
integer's bit length (no rounding). Max |Δ| and the l2 norm are reported as floats.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from rlsparsity.analysis.header import DType, ints64, values64
from rlsparsity.analysis.kernel import Stats, half_bf16_ulp

_SAFE = 1 << 62  # |a|, |b| < 2^62: b − a and |b − a| fit int64


def _exact_values(bits: np.ndarray, dt: DType) -> np.ndarray:
    return values64(bits, dt) if dt.is_float else ints64(bits, dt)


def _changed_mixed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact a != b (or non-finite) for one int64 and one float64 array."""
    ints, flts = (a, b) if a.dtype == np.int64 else (b, a)
    with np.errstate(invalid="ignore"):
        m = (ints.astype(np.float64) != flts) | ~np.isfinite(flts)
    big = np.flatnonzero((ints > 1 << 53) | (ints < -(1 << 53)))
    for i in big.tolist():  # float64(int) may round: compare as Python int == float (exact)
        f = float(flts[i])
        m[i] = not (math.isfinite(f) and int(ints[i]) == f)
    return m


def _half_ulp(x: int | float) -> float:
    """h(x) exactly, for an integer or float base value."""
    if isinstance(x, int):
        return math.ldexp(1.0, max(abs(x).bit_length() - 1, -126) - 8) if x else 2.0 ** -134
    return float(half_bf16_ulp(np.array([x]))[0])


def _python_stats(st: Stats, m: np.ndarray, idx: np.ndarray, av: list, bv: list,
                  tolerances: tuple[float, ...], mask_tol: float) -> None:
    """Exact stats of changed entries with Python ints/fractions (large or mixed values)."""
    for i, x, y in zip(idx.tolist(), av, bv, strict=True):
        if any(isinstance(v, float) and not math.isfinite(v) for v in (x, y)):
            st.nonfinite += 1
            st.changed += 1
            continue
        d = y - x if isinstance(x, int) and isinstance(y, int) else Fraction(y) - Fraction(x)
        ad = abs(d)
        if ad == 0:  # e.g. 0 vs -0.0
            m[i] = False
            continue
        st.changed += np.array([ad > t for t in tolerances], dtype=np.int64)
        st.below_ulp += int(ad < _half_ulp(x))
        st.max_abs = max(st.max_abs, float(ad))
        st.sumsq += float(ad) ** 2
        if mask_tol > 0 and ad <= mask_tol:
            m[i] = False


def _floor_exponent(ax: np.ndarray) -> np.ndarray:
    """floor(log2 ax) for int64 1 <= ax < 2^62, exactly (float64 rounding corrected)."""
    e = np.frexp(ax.astype(np.float64))[1].astype(np.int64) - 1
    return e - (np.left_shift(np.int64(1), e) > ax)


def _int_stats(st: Stats, m: np.ndarray, idx: np.ndarray, x: np.ndarray, y: np.ndarray,
               tolerances: tuple[float, ...], mask_tol: float) -> None:
    """Exact stats of changed int64 entries with |x|, |y| < 2^62 (vectorised)."""
    ad = np.abs(y - x)
    st.changed += np.array([int(np.count_nonzero(ad > math.floor(t))) if t < 2.0 ** 63 else 0
                            for t in tolerances], dtype=np.int64)
    ax = np.abs(x)
    nz = ax > 0
    e = np.where(nz, _floor_exponent(np.where(nz, ax, 1)), 0)
    h = np.where(e >= 9, np.left_shift(np.int64(1), np.clip(e - 8, 0, 62)), 0)
    st.below_ulp += int(np.count_nonzero(ad < h))
    if ad.size:
        st.max_abs = max(st.max_abs, float(ad.max()))
        adf = ad.astype(np.float64)
        st.sumsq += float(np.dot(adf, adf))
    if mask_tol > 0 and mask_tol < 2.0 ** 63:
        m[idx[ad <= math.floor(mask_tol)]] = False


def int_chunk(a_bits: np.ndarray, b_bits: np.ndarray, da: DType, db: DType, tolerances: tuple[float, ...],
              mask_tol: float = 0.0) -> tuple[Stats, np.ndarray]:
    """:func:`rlsparsity.analysis.kernel.chunk_stats` when da or db is an integer dtype."""
    a, b = _exact_values(a_bits, da), _exact_values(b_bits, db)
    both_int = not (da.is_float or db.is_float)
    m = (a != b) if both_int else _changed_mixed(a, b)
    idx = np.flatnonzero(m)
    st = Stats.zero(len(tolerances))
    x, y = a[idx], b[idx]
    if both_int:
        safe = (x > -_SAFE) & (x < _SAFE) & (y > -_SAFE) & (y < _SAFE)
        _int_stats(st, m, idx[safe], x[safe], y[safe], tolerances, mask_tol)
        x, y, idx = x[~safe], y[~safe], idx[~safe]
    _python_stats(st, m, idx, x.tolist(), y.tolist(), tolerances, mask_tol)
    return st, m


def abs_delta64(a_bits: np.ndarray, b_bits: np.ndarray, da: DType, db: DType) -> np.ndarray:
    """|θ1 − θ0| as float64 (rounded; NaN/inf for non-finite entries), non-zero exactly where
    the entries differ, also for integers beyond 2^53 (for top-k masks)."""
    with np.errstate(invalid="ignore"):
        ad = np.abs(values64(b_bits, db) - values64(a_bits, da))
    if da.is_float and db.is_float:
        return ad
    a, b = _exact_values(a_bits, da), _exact_values(b_bits, db)
    m = (a != b) if not (da.is_float or db.is_float) else _changed_mixed(a, b)
    for i in np.flatnonzero(m & (ad == 0)).tolist():  # equal after rounding to float64, yet different
        ad[i] = float(abs(Fraction(b[i].item()) - Fraction(a[i].item())))
    return ad
