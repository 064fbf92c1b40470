"""bf16 storage rounding and accuracy, from ``precision_rounding.csv`` (rlsparsity.rounding): the
fp32 runs evaluated as stored, rounded to bf16, and as base + only the part of their update that
rounding erases / keeps, next to their fp32-master partners and the base (pooled over seeds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rlsparsity.figures.style import Plot, new_figure, no_data, save

LABELS = {"base": "base", "raw": "fp32, as stored", "round_bf16": "fp32 rounded\nto bf16",
          "below_half_ulp": "base + erased\nupdates only", "above_half_ulp": "base + kept\nupdates only",
          "fp32_master_run": "fp32-master\nrun"}
COLORS = {"base": "0.6", "raw": "#d95f02", "round_bf16": "#1b9e77", "below_half_ulp": "#dd8452",
          "above_half_ulp": "#4c72b0", "fp32_master_run": "#7570b3"}


def pooled(df: pd.DataFrame) -> pd.DataFrame:
    """The rows pooled over seeds (seed == "all")."""
    return df[df["seed"].astype(str) == "all"] if not df.empty else df


def _groups(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame, int]]:
    """(title, pooled rows, number of seeds) per (family, algorithm, data)."""
    out = []
    for (fam, alg, data), g in df.groupby(["family", "algorithm", "data"]):
        seeds = g.loc[g["seed"].astype(str) != "all", "seed"].nunique()
        out.append((f"{fam} {alg} ({data})", pooled(g), int(seeds)))
    return out


def precision_rounding(df: pd.DataFrame, out: str | Path | None = None) -> Plot:
    groups = _groups(df) if not df.empty else []
    n = max(1, len(groups))
    width = max([len(set(g['model'])) for _, g, _ in groups] or [4])  # bars in the widest panel
    fig, axes = new_figure(n, 1, size=((0.95 * width + 0.8) * n + 0.6, 3.8), sharey=True)
    if not groups:
        no_data(axes[0], "no fp32 runs evaluated")
        return save(Plot(fig, axes, {"bars": {}}), out)
    bars = {}
    for ax, (title, g, seeds) in zip(axes, groups, strict=False):
        g = g.set_index("model")
        models = [m for m in LABELS if m in g.index]
        acc = [100 * float(g.loc[m, "accuracy"]) for m in models]
        bars[title] = dict(zip(models, acc, strict=True))
        ax.bar(range(len(models)), acc, color=[COLORS[m] for m in models])
        for i, m in enumerate(models):
            if m not in ("raw", "base") and np.isfinite(pd.to_numeric(g.loc[m, "vs_raw_pts"], errors="coerce")):
                ax.text(i, acc[i] + 0.5, f"{g.loc[m, 'vs_raw_pts']:+.1f}\n[{g.loc[m, 'vs_raw_lo95']:+.1f}, "
                        f"{g.loc[m, 'vs_raw_hi95']:+.1f}]", ha="center", va="bottom", fontsize=6)
        ax.set_xticks(range(len(models)), [LABELS[m] for m in models], rotation=35, ha="right", fontsize=7)
        ax.set_title(f"{title}, {seeds} seed(s)")
    top = max(v for b in bars.values() for v in b.values())
    axes[0].set_ylim(0, top * 1.3 + 2)  # room for the labels (shared y axis)
    axes[0].set_ylabel("held-out accuracy (%)")
    fig.suptitle("bf16 rounding of fp32 runs (labels: Δ vs fp32 as stored, points [95 % CI])")
    return save(Plot(fig, axes, {"bars": bars}), out)


def section_rounding(df: pd.DataFrame) -> list[str]:
    """SUMMARY.md section (only when the table exists)."""
    if df.empty:
        return []
    out = ["## Precision: how much of an fp32 run is bf16 storage rounding", "",
           "Each fp32 run evaluated on its own test problems as stored, rounded to bf16 (as fp32-master stores it), "
           "and as base + only the updates that rounding erases / keeps (exact fp32 values); mean over seeds, "
           "Δ: paired bootstrap over seeds and problems.", ""]
    rows = []
    for title, g, _ in _groups(df):
        for _, r in g.iterrows():
            if r["model"] == "base":
                continue
            differ = r["answered_differently_from_fp32_master"]
            rows.append([title, LABELS[r["model"]].replace("\n", " "), f"{100 * float(r['accuracy']):.1f}%",
                         "–" if r["model"] == "raw" else
                         f"{r['vs_raw_pts']:+.1f} [{r['vs_raw_lo95']:+.1f}, {r['vs_raw_hi95']:+.1f}]",
                         f"{r['vs_base_pts']:+.1f} [{r['vs_base_lo95']:+.1f}, {r['vs_base_hi95']:+.1f}]",
                         "–" if pd.isna(differ) else f"{int(differ)} / {int(r['n_problems'])}"])
    header = ["runs", "model", "accuracy", "Δ vs fp32 as stored", "Δ vs base", "answers ≠ fp32-master run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + lines + [""]
