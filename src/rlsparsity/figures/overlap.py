"""Overlap vs chance from ``overlap.csv`` (family, axis, mask, run_a, run_b, o1, o2, o1_random,
o2_random, jaccard, s1, s2): pairs of runs that differ in one axis (seed, algorithm, data,
precision); masks "exact" (Δ ≠ 0) and "topk:P" (CPI-FT core region)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rlsparsity.figures import paper
from rlsparsity.figures.style import PAPER_MARKER, Plot, new_figure, no_data, pct, save

AXIS_ORDER = ("seed", "algorithm", "data", "precision")


def overlap_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per (mask, axis): mean observed overlap (o1 + o2)/2 and chance (o1_random + o2_random)/2, in %."""
    if df.empty:
        return pd.DataFrame(columns=["mask", "axis", "observed", "chance", "n_pairs"])
    d = df.assign(observed=pct((df["o1"] + df["o2"]) / 2), chance=pct((df["o1_random"] + df["o2_random"]) / 2))
    t = d.groupby(["mask", "axis"]).agg(observed=("observed", "mean"), chance=("chance", "mean"),
                                        n_pairs=("observed", "size")).reset_index()
    t["_m"] = t["mask"].map(lambda m: (m != "exact", m))
    t["_a"] = t["axis"].map(lambda a: AXIS_ORDER.index(a) if a in AXIS_ORDER else 99)
    return t.sort_values(["_m", "_a"]).drop(columns=["_m", "_a"]).reset_index(drop=True)


def overlap_vs_chance(df: pd.DataFrame, out: str | Path | None = None) -> Plot:
    t = overlap_summary(df)
    masks = list(dict.fromkeys(t["mask"]))
    fig, axes = new_figure(max(1, len(masks)), size=(3.6 * max(1, len(masks)) + 0.6, 3.8), sharey=True)
    if t.empty:
        no_data(axes[0], "no overlap rows (needs ≥ 2 runs differing in one axis)")
        return save(Plot(fig, axes, {"summary": t}), out)
    for ax, mask in zip(axes, masks, strict=False):
        sub = t[t["mask"] == mask].reset_index(drop=True)
        x = np.arange(len(sub))
        ax.bar(x - 0.2, sub["observed"], width=0.4, color="#4c72b0", label="observed (o1+o2)/2")
        ax.bar(x + 0.2, sub["chance"], width=0.4, color="#c7c7c7", label="chance (same counts, random)")
        rng = np.random.default_rng(0)
        for i, axis in enumerate(sub["axis"]):
            pts = df[(df["mask"] == mask) & (df["axis"] == axis)]
            ax.scatter(i - 0.2 + rng.uniform(-0.08, 0.08, len(pts)), pct((pts["o1"] + pts["o2"]) / 2), s=6,
                       color="black", alpha=0.5, zorder=3)
        if "seed" in list(sub["axis"]) and mask == "exact":
            i = list(sub["axis"]).index("seed")
            ax.scatter([i - 0.2], [(paper.OVERLAP_SEEDS["o1"] + paper.OVERLAP_SEEDS["o2"]) / 2], **PAPER_MARKER,
                       label="paper, seeds: 60.5 / 60.6")
            ax.scatter([i + 0.2], [paper.OVERLAP_SEEDS["o1_random"]], **{**PAPER_MARKER, "marker": "x", "s": 50},
                       label="paper chance 36.7")
        ax.set_xticks(x, [f"{a}\n(n={n})" for a, n in zip(sub["axis"], sub["n_pairs"], strict=False)])
        ax.set_xlabel("runs differ in")
        ax.set_title("mask: Δ ≠ 0" if mask == "exact" else f"mask: {mask} by |Δ| (CPI-FT core)")
        ax.set_ylim(0, 105)
    axes[0].set_ylabel("overlap of updated entries (%)")
    axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2)
    fig.suptitle("Subnetwork overlap vs chance (dots: individual pairs)")
    return save(Plot(fig, axes, {"summary": t}), out)
