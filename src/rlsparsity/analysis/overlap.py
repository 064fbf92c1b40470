"""Overlap of two runs' updated index sets (SPEC §1 "Overlap") and top-p% magnitude masks.

For updated sets I1, I2 over the same n entries, s_i = 1 − |I_i|/n:
o1 = |I1∩I2|/|I1|, o2 = |I1∩I2|/|I2|, chance baselines o1_random = 1 − s2 and
o2_random = 1 − s1 (expected overlap of uniformly random sets of the same sizes),
jaccard = |I1∩I2|/|I1∪I2|. Undefined ratios (empty denominators) are NaN.
Counts come straight from the bit-packed masks (popcount of AND), never unpacked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from rlsparsity.analysis.io import MaskWriter, load_packed_mask

#: A delta stream: called with no arguments, yields (tensor name, first flat element, |Δ| float64).
DeltaStream = Callable[[], Iterable[tuple[str, int, np.ndarray]]]


def _ratio(a: int, b: int) -> float:
    return a / b if b else math.nan


def overlap_stats(n: int, c1: int, c2: int, c12: int) -> dict[str, float | int]:
    """Overlap statistics from n entries, |I1| = c1, |I2| = c2, |I1∩I2| = c12."""
    s1, s2 = 1 - _ratio(c1, n), 1 - _ratio(c2, n)
    return {"n": n, "n_updated_a": c1, "n_updated_b": c2, "n_both": c12, "s1": s1, "s2": s2,
            "o1": _ratio(c12, c1), "o2": _ratio(c12, c2), "o1_random": 1 - s2, "o2_random": 1 - s1,
            "jaccard": _ratio(c12, c1 + c2 - c12)}


def mask_file(arg: str | Path, kind: str = "exact") -> Path:
    """A mask file from a path: the file itself, or inside a diff output folder.

    ``kind`` "exact" -> mask.safetensors, "topk:P" -> mask_topkP.safetensors.
    """
    p = Path(arg)
    if p.is_dir():
        return p / ("mask.safetensors" if kind == "exact" else f"mask_topk{float(kind.split(':')[1]):g}.safetensors")
    return p


def overlap_masks(path_a: str | Path, path_b: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Total and per-tensor overlap of two mask files (tensors present in both, equal shapes)."""
    ma, mb = load_packed_mask(path_a), load_packed_mask(path_b)
    rows, skipped = [], []
    tot = np.zeros(4, dtype=np.int64)
    for name in sorted(set(ma) | set(mb)):
        if name not in ma or name not in mb or ma[name][1] != mb[name][1]:
            skipped.append(name)
            continue
        (pa, shape), (pb, _) = ma[name], mb[name]
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        c = np.array([n, np.bitwise_count(pa).sum(), np.bitwise_count(pb).sum(),
                      np.bitwise_count(pa & pb).sum()], dtype=np.int64)
        tot += c
        rows.append({"tensor": name, **overlap_stats(*map(int, c))})
    total = {**overlap_stats(*map(int, tot)), "skipped": skipped}
    return total, rows


def _hist_key(ad: np.ndarray) -> np.ndarray:
    """Monotone 20-bit key of a non-negative float64: sign-less exponent + 8 mantissa bits."""
    return (ad.view(np.uint64) >> np.uint64(44)).astype(np.int64)


def topk_threshold(stream: DeltaStream, p: float) -> tuple[float, int, int]:
    """Exact k-th largest |Δ| over all entries, k = ceil(p·n), in two streaming passes.

    Pass 1 counts entries per 20-bit key of the float64 bit pattern (a histogram that is
    monotone in |Δ|); pass 2 keeps only the entries of the key holding the k-th largest
    and selects it exactly. Non-finite |Δ| count as +inf. Returns (threshold, k, n).
    """
    hist = np.zeros(1 << 20, dtype=np.int64)
    n = 0
    for _, _, ad in stream():
        hist += np.bincount(_hist_key(np.nan_to_num(ad, nan=np.inf)), minlength=1 << 20)
        n += ad.size
    k = max(1, math.ceil(p * n))
    above = np.cumsum(hist[::-1])[::-1]  # above[j] = #entries with key >= j
    key = int(np.flatnonzero(above >= k)[-1]) if n else 0
    k_in = k - (int(above[key + 1]) if key + 1 < len(above) else 0)
    vals = [a[_hist_key(a) == key] for _, _, a in ((x, y, np.nan_to_num(z, nan=np.inf)) for x, y, z in stream())]
    cand = np.concatenate(vals) if vals else np.zeros(0)
    thr = float(np.partition(cand, cand.size - k_in)[cand.size - k_in]) if cand.size else 0.0
    return thr, k, n


def topk_mask(stream: DeltaStream, p: float, shapes: dict[str, tuple[int, ...]], out: Path) -> dict[str, Any]:
    """Write the top-p mask (CPI-FT "core region") to ``out`` and return its description.

    Mask = |Δ| ≥ the k-th largest |Δ| (k = ceil(p·n), n = all entries of the stream) and
    |Δ| > 0, so ties at the threshold are all included (the count can exceed k) and an
    unchanged entry is never selected (the count is below k when fewer than k changed).
    Three passes over the stream: histogram, exact threshold, mask.
    """
    thr, k, n = topk_threshold(stream, p)
    writer = MaskWriter(out, shapes, {"topk_p": repr(p), "threshold": repr(thr)})
    count = 0
    try:
        for name, start, ad in stream():
            m = (np.nan_to_num(ad, nan=np.inf) >= thr) & (ad != 0)
            count += int(np.count_nonzero(m))
            writer.write(name, start, m)
    finally:
        writer.close()
    return {"p": p, "k": k, "n": n, "threshold": thr, "n_selected": count}
