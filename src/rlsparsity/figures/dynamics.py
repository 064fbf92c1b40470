"""Dynamics from ``dynamics.csv`` (family, algorithm, data, precision, seed, point, step, quantity,
tolerance, value): sparsity of each checkpoint vs step, and the never updated / updated then
cancelled / final subnetwork split (paper 72 / 8 / 20 %)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rlsparsity.figures import paper
from rlsparsity.figures.style import ALGORITHM_COLORS, Plot, at_tol, new_figure, no_data, order, pct, prefer, save

SPLIT = ("never_updated", "updated_then_cancelled", "final_subnetwork")
SPLIT_LABELS = {"never_updated": "never updated", "updated_then_cancelled": "updated, then cancelled",
                "final_subnetwork": "final subnetwork"}
SPLIT_COLORS = {"never_updated": "#c7c7c7", "updated_then_cancelled": "#dd8452", "final_subnetwork": "#4c72b0"}


def dynamics_tables(df: pd.DataFrame, tol: float = paper.PAPER_TOL) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(algorithm × step mean sparsity %, algorithm × split mean fraction % + paper row), bf16 preferred."""
    d, prec = prefer(df, "precision", "bf16")
    if d.empty:
        d = pd.DataFrame(columns=["algorithm", "step", "quantity", "tolerance", "value"])
    sp = at_tol(d[d["quantity"] == "sparsity"], tol)
    curve = pct(sp.groupby(["algorithm", "step"])["value"].mean().unstack("step"))
    if not curve.empty:
        curve = curve.loc[order(curve.index), sorted(curve.columns)]
    s = d[d["quantity"].isin(SPLIT)]
    split = pct(s.groupby(["algorithm", "quantity"])["value"].mean().unstack("quantity"))
    split = split.reindex(columns=list(SPLIT)).loc[order(split.index)] if not split.empty \
        else pd.DataFrame(columns=list(SPLIT), dtype=float)
    split.loc["paper"] = [paper.DYNAMICS_SPLIT[q] for q in SPLIT]
    return curve, split, prec or "?"


def dynamics(df: pd.DataFrame, out: str | Path | None = None, tol: float = paper.PAPER_TOL) -> Plot:
    curve, split, prec = dynamics_tables(df, tol) if not df.empty else (pd.DataFrame(), pd.DataFrame(), "?")
    fig, axes = new_figure(2, size=(10.0, 3.9), gridspec_kw={"width_ratios": [1.1, 1]})
    ax, axb = axes
    if curve.empty:
        no_data(ax, "no checkpoint sparsity rows")
    else:
        for alg, row in curve.iterrows():
            ok = row.notna()
            ax.plot(np.asarray(row.index[ok], dtype=float), row[ok].to_numpy(dtype=float), marker="o", ms=3,
                    color=ALGORITHM_COLORS.get(alg), label=alg)
        ax.set_xlabel("training step (checkpoint)")
        ax.set_ylabel(f"sparsity vs base at tol {tol:g} (%)")
        ax.set_title(f"Sparsity over training ({prec}); paper: falls, then plateaus")
        ax.legend(ncol=2)
    if split.empty:
        no_data(axb, "no never/cancelled/final rows")
    else:
        x = np.arange(len(split))
        bottom = np.zeros(len(split))
        for q in SPLIT:
            h = split[q].fillna(0).to_numpy(dtype=float)
            axb.bar(x, h, bottom=bottom, color=SPLIT_COLORS[q], label=SPLIT_LABELS[q], width=0.75,
                    edgecolor=["black" if i == "paper" else "none" for i in split.index])
            for xi, (b, v) in enumerate(zip(bottom, h, strict=False)):
                if v >= 6:
                    axb.text(xi, b + v / 2, f"{v:.0f}", ha="center", va="center", fontsize=6)
            bottom += h
        axb.set_xticks(x, split.index, rotation=45, ha="right")
        axb.set_ylabel("share of all entries (%)")
        axb.set_ylim(0, 100)
        axb.set_title("Entry fate (exact Δ ≠ 0), paper 72 / 8 / 20")
        axb.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=3)
    return save(Plot(fig, axes, {"curve": curve, "split": split, "precision": prec}), out)
