"""Uncertainty of every compared number, and the three-way verdict rule built on it.

Methods (used by :mod:`rlsparsity.figures.verdicts`; stated again in SUMMARY.md):

* **Accuracy differences** — paired, two-way (crossed) percentile bootstrap over *problems and
  runs*. Each compared unit (a run, or a pair of runs that share a source) holds two 0/1
  correctness vectors over the same held-out problems. One bootstrap replicate draws the units
  with replacement and, independently, the problems with replacement (the same problem draw for
  every unit, since every unit is evaluated on the same test problems), and takes the mean
  difference. ``N_BOOT`` replicates, fixed ``SEED``, 95 % percentile interval. Without
  per-problem outcomes (tables from older runs) it falls back to a t-interval over the units'
  accuracy differences and says so.
* **Sparsity / overlap / agreement** — the mean over units (runs, pairs of runs; families and
  seeds pooled) with a 95 % Student-t interval; one unit gives no interval.
* **Verdict** of a claim "x ≥ threshold" (or "≤"): ``holds`` when the whole interval lies on the
  claimed side, ``fails`` when the whole interval lies on the other side, ``inconclusive``
  otherwise (including: no interval).

Per-problem outcomes travel as compact bit strings ("0110…", one character per problem).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

SEED = 20505117
N_BOOT = 2000
LEVEL = 0.95

HOLDS, FAILS, INCONCLUSIVE, DEPENDS, NODATA = "holds", "fails", "inconclusive", "depends on precision", "no data"

BOOTSTRAP = "paired bootstrap over problems and runs"
T_INTERVAL = "t-interval over runs"

#: two-sided 97.5 % quantiles of Student's t, df = 1 … 30
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788,
         2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639,
         2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


def t975(df: int) -> float:
    """97.5 % quantile of Student's t with ``df`` degrees of freedom (table to 30, then the
    Cornish-Fisher expansion around the normal quantile, error < 1e-4)."""
    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95 % interval (``low``/``high`` NaN when it cannot be had)."""

    estimate: float
    low: float
    high: float
    n: int
    method: str

    @property
    def defined(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    def fmt(self, scale: float = 100.0, digits: int = 1, unit: str = "") -> str:
        if not math.isfinite(self.estimate):
            return "–"
        e = f"{self.estimate * scale:.{digits}f}{unit}"
        if not self.defined:
            return f"{e} (n={self.n}, no interval)"
        return f"{e} [{self.low * scale:.{digits}f}, {self.high * scale:.{digits}f}]"


def encode_bits(outcomes: Iterable[float | bool | int]) -> str:
    """0/1 outcomes -> "0110…" (a truthy / ≥ 1.0 outcome is "1")."""
    return "".join("1" if (o is True or (not isinstance(o, bool) and float(o) >= 1.0)) else "0" for o in outcomes)


def decode_bits(bits: str) -> np.ndarray:
    """"0110…" -> float array of 0/1; anything but 0/1 characters is an error."""
    s = str(bits)
    if not s or set(s) - {"0", "1"}:
        raise ValueError(f"not a per-problem outcome string: {s[:40]!r}")
    return np.frombuffer(s.encode("ascii"), dtype=np.uint8).astype(np.float64) - 48.0


def mean_interval(values: Sequence[float], method: str = T_INTERVAL, share: bool = False) -> Interval:
    """Mean and 95 % Student-t interval over units; NaN values are dropped. ``share``: the
    values are fractions in [0, 1] (sparsity, rank fraction, agreement), so the interval is cut
    to [0, 1]: with 2 units the t-interval of 0.92 and 0.93 reaches past 1, which no share can."""
    x = np.asarray([float(v) for v in values], dtype=np.float64)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, method)
    m = float(x.mean())
    if n == 1:
        return Interval(m, float("nan"), float("nan"), 1, method)
    half = t975(n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    if share:
        return Interval(m, max(0.0, m - half), min(1.0, m + half), n, method)
    return Interval(m, m - half, m + half, n, method)


def paired_bootstrap(pairs: Sequence[tuple[str, str]], n_boot: int = N_BOOT, seed: int = SEED) -> Interval:
    """Mean over units of accuracy(a) − accuracy(b), with a 95 % percentile interval from the
    two-way bootstrap over units and problems (module doc). ``pairs``: (bits_a, bits_b) per
    unit, every string of the same length (same problems)."""
    if not pairs:
        return Interval(float("nan"), float("nan"), float("nan"), 0, BOOTSTRAP)
    rows = []
    for a, b in pairs:
        va, vb = decode_bits(a), decode_bits(b)
        if len(va) != len(vb):
            raise ValueError(f"paired outcomes differ in length: {len(va)} vs {len(vb)} problems")
        rows.append(va - vb)
    if len({len(r) for r in rows}) != 1:
        raise ValueError(f"units evaluated on different numbers of problems: {sorted({len(r) for r in rows})}")
    d = np.stack(rows)  # units x problems
    m, n = d.shape
    est = float(d.mean())
    rng = np.random.default_rng(seed)
    cu = rng.multinomial(m, np.full(m, 1.0 / m), size=n_boot).astype(np.float64)  # B x units
    cp = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)  # B x problems
    reps = ((cu @ d) * cp).sum(axis=1) / (m * n)
    lo, hi = np.quantile(reps, [(1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2])
    return Interval(est, float(lo), float(hi), m, BOOTSTRAP)


def accuracy_difference(pairs: Sequence[tuple[str | None, str | None]], acc_pairs: Sequence[tuple[float, float]]
                        ) -> Interval:
    """Paired bootstrap when every unit has both outcome strings, else (older tables) the
    t-interval over the units' accuracy differences ``acc_pairs``."""
    ok = [(a, b) for a, b in pairs if isinstance(a, str) and isinstance(b, str) and a and b]
    if pairs and len(ok) == len(pairs):
        if len({len(x) for p in ok for x in p}) == 1:
            return paired_bootstrap(ok)
        return mean_interval([a - b for a, b in acc_pairs],
                             method=T_INTERVAL + " (per-problem outcomes of different lengths)")
    return mean_interval([a - b for a, b in acc_pairs], method=T_INTERVAL + " (no per-problem outcomes)")


def decide(iv: Interval, threshold: float, direction: str = ">=") -> str:
    """Three-way verdict of the claim ``x >= threshold`` (``direction='>='``) or ``x <= threshold``
    (``'<='``) from x's interval: holds / fails / inconclusive (module doc)."""
    if direction not in (">=", "<="):
        raise ValueError(f"direction must be '>=' or '<=', got {direction!r}")
    if not iv.defined:
        return INCONCLUSIVE if iv.n > 0 else NODATA
    if direction == ">=":
        return HOLDS if iv.low >= threshold else FAILS if iv.high < threshold else INCONCLUSIVE
    return HOLDS if iv.high <= threshold else FAILS if iv.low > threshold else INCONCLUSIVE


def decide_within(iv: Interval, low: float, high: float) -> str:
    """Claim ``low <= x <= high`` (e.g. "barely changes"): holds when the interval lies inside,
    fails when it lies wholly outside, inconclusive otherwise."""
    if not iv.defined:
        return INCONCLUSIVE if iv.n > 0 else NODATA
    if low <= iv.low and iv.high <= high:
        return HOLDS
    if iv.high < low or iv.low > high:
        return FAILS
    return INCONCLUSIVE


def combine(verdicts: Iterable[str]) -> str:
    """One verdict from several (per precision, per algorithm): all alike -> that one; holds at
    some and fails at others -> depends on precision; otherwise inconclusive. ``no data`` entries
    are ignored."""
    v = [x for x in verdicts if x != NODATA]
    if not v:
        return NODATA
    if len(set(v)) == 1:
        return v[0]
    if HOLDS in v and FAILS in v:
        return DEPENDS
    return INCONCLUSIVE


def binomial_half_width(p: float, n: int) -> float:
    """Half-width of the normal-approximation 95 % interval of one accuracy (p, n problems)."""
    return 1.959964 * math.sqrt(p * (1 - p) / n)


def accuracy_interval(bits: Sequence[str | None], accs: Sequence[float]) -> Interval:
    """Mean accuracy over units with its 95 % interval (the same two-way bootstrap, against an
    all-wrong reference; t-interval over ``accs`` without per-problem outcomes)."""
    pairs = [(b, "0" * len(b) if isinstance(b, str) else None) for b in bits]
    return accuracy_difference(pairs, [(float(a), 0.0) for a in accs])


def error_bar(iv: Interval, scale: float = 100.0) -> tuple[float, float]:
    """(lower, upper) error-bar lengths of an interval around its estimate (0, 0 when undefined)."""
    if not iv.defined:
        return 0.0, 0.0
    return max(0.0, (iv.estimate - iv.low) * scale), max(0.0, (iv.high - iv.estimate) * scale)
