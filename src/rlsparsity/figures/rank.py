"""Update-rank distribution from ``rank.csv`` (family, algorithm, data, precision, seed, tensor,
matrix_type, rank, max_rank, rank_fraction, method): rank / min(m, n) per 2-D update matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rlsparsity.figures import paper
from rlsparsity.figures.style import ALGORITHM_COLORS, Plot, new_figure, no_data, order, pct, prefer, save


def rank_fractions(df: pd.DataFrame) -> tuple[dict[str, np.ndarray], str]:
    """rank_fraction (%) per algorithm (finite values only), preferring bf16 runs."""
    d, prec = prefer(df, "precision", "bf16")
    d = d[np.isfinite(pd.to_numeric(d.get("rank_fraction"), errors="coerce"))] if not d.empty else d
    out = {a: pct(d.loc[d["algorithm"] == a, "rank_fraction"].to_numpy(dtype=float)) for a in order(d["algorithm"])} \
        if not d.empty else {}
    return out, prec or "?"


def rank_distribution(df: pd.DataFrame, out: str | Path | None = None) -> Plot:
    fr, prec = rank_fractions(df) if not df.empty else ({}, "?")
    n = max(1, len(fr))
    ncols = min(n, 4)
    nrows = int(np.ceil(n / ncols))
    fig, axes = new_figure(ncols, nrows, size=(2.6 * ncols + 0.6, 2.2 * nrows + 0.6), sharex=True)
    if not fr:
        no_data(axes[0], "no rank rows")
        return save(Plot(fig, axes, {"fractions": fr, "means": pd.Series(dtype=float)}), out)
    lo = min([90.0] + [float(np.floor(v.min())) - 1 for v in fr.values() if len(v)])
    bins = np.linspace(lo, 100, 31)
    means = {}
    for ax, (alg, vals) in zip(axes, fr.items(), strict=False):
        means[alg] = float(np.mean(vals)) if len(vals) else float("nan")
        ax.hist(vals, bins=bins, color=ALGORITHM_COLORS.get(alg), alpha=0.85)
        ax.axvspan(*paper.RANK_RANGE, color="0.2", alpha=0.25, lw=0)
        ax.axvline(means[alg], color="crimson", lw=1.2)
        ref = paper.RANK.get(alg)
        txt = f"mean {means[alg]:.1f}%" + (f"\npaper {ref[1]:.1f}% ({ref[0]})" if ref else "\npaper 99.2–99.8%")
        ax.text(0.03, 0.95, txt, transform=ax.transAxes, va="top", fontsize=7)
        ax.set_title(f"{alg} (n={len(vals)})")
    for ax in axes[len(fr):]:
        ax.set_axis_off()
    for ax in axes[: len(fr)]:
        ax.set_xlim(lo, 100.5)
    for ax in axes[-ncols:]:
        ax.set_xlabel("rank / min(m, n) (%)")
    for ax in axes[::ncols]:
        ax.set_ylabel("matrices")
    fig.suptitle(f"Rank of the update ΔW per matrix ({prec}); grey band: paper means 99.2–99.8%, red: this run's mean")
    return save(Plot(fig, axes, {"fractions": fr, "means": pd.Series(means, dtype=float), "precision": prec}), out)
