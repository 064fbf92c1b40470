"""Causes of sparsity (paper Table 5) from ``causes.csv`` (family, ablation, setting, precision,
sparsity): one group of bars per ablation, one bar per setting, coloured by precision; the
paper's value, where a setting maps to one, is drawn as a black tick."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.patches import Patch

from rlsparsity.figures import paper
from rlsparsity.figures.style import PRECISION_COLORS, Plot, new_figure, no_data, order_precisions, pct, save


def paper_value(ablation: str, setting: str) -> tuple[float, float] | None:
    """Paper Table 5 range for an (ablation, setting), matched by name; None where the paper has no
    number (e.g. SFT on off-policy reference solutions: Table 5 reports SFT only on the model's own
    samples, so that row must not carry DPO's off-policy value)."""
    a, s = str(ablation).lower(), str(setting).lower()
    key = f"{a} {s}"
    if "kl" in a or s.startswith("kl"):
        if any(t in s for t in ("off", "no", "false", "without", "0")):
            return paper.CAUSES["kl_off"]
        if any(t in s for t in ("on", "with", "true")):
            return paper.CAUSES["kl_on"]
        return None
    if "sft" in key:
        if any(t in key for t in ("rejection", "own", "on_policy", "self")):
            return paper.CAUSES["rejection_sampling_sft"]
        return None
    if "off" in s:
        return paper.CAUSES["dpo_off_policy"]
    if any(t in s for t in ("on_policy", "in_dist", "in-dist", "on-policy")):
        return paper.CAUSES["dpo_in_distribution"]
    return None


def causes_table(df: pd.DataFrame) -> pd.DataFrame:
    t = df.groupby(["ablation", "setting", "precision"], sort=False)["sparsity"].mean().reset_index()
    first = {a: i for i, a in enumerate(dict.fromkeys(df["ablation"]))}
    sfirst = {s: i for i, s in enumerate(dict.fromkeys(df["setting"]))}
    pkey = {p: i for i, p in enumerate(order_precisions(df["precision"].astype(str)))}
    t = t.assign(_a=t["ablation"].map(first), _s=t["setting"].map(sfirst), _p=t["precision"].map(pkey))
    t = t.sort_values(["_a", "_s", "_p"]).drop(columns=["_a", "_s", "_p"]).reset_index(drop=True)
    t["sparsity"] = pct(t["sparsity"])
    t["paper"] = [paper_value(a, s) for a, s in zip(t["ablation"], t["setting"], strict=False)]
    return t


def causes(df: pd.DataFrame, out: str | Path | None = None) -> Plot:
    t = causes_table(df) if not df.empty else pd.DataFrame()
    fig, axes = new_figure(size=(max(5.5, 0.55 * len(t) + 2.5), 4.0))
    ax = axes[0]
    if t.empty:
        no_data(ax, "no causes rows")
        return save(Plot(fig, axes, {"table": t}), out)
    precs = order_precisions(t["precision"].astype(str))
    x, labels = 0.0, []
    xs = []
    prev = None
    for _, r in t.iterrows():
        if prev is not None and r["ablation"] != prev:
            x += 0.6
        xs.append(x)
        labels.append(f"{r['setting']}\n{r['precision']}" if len(precs) > 1 else str(r["setting"]))
        prev = r["ablation"]
        x += 1
    xs = np.asarray(xs)
    ax.bar(xs, t["sparsity"], color=[PRECISION_COLORS.get(p, "0.5") for p in t["precision"]], width=0.8)
    for xi, pv in zip(xs, t["paper"], strict=False):
        if pv is not None:
            ax.plot([xi - 0.4, xi + 0.4], [pv[0], pv[0]], color="black", lw=1.5)
            if pv[1] != pv[0]:
                ax.plot([xi - 0.4, xi + 0.4], [pv[1], pv[1]], color="black", lw=1.5)
    for ab in dict.fromkeys(t["ablation"]):
        m = xs[(t["ablation"] == ab).to_numpy()]
        ax.text(m.mean(), 103, str(ab), ha="center", fontsize=8, fontweight="bold")
    ax.set_xticks(xs, labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylim(0, 110)
    ax.set_ylabel("update sparsity (%)")
    ax.set_title("Causes of sparsity (ablations); black ticks: paper Table 5", pad=16)
    handles = [Patch(color=PRECISION_COLORS.get(p, "0.5"), label=p) for p in precs]
    handles.append(plt_line())
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save(Plot(fig, axes, {"table": t}), out)


def plt_line():
    from matplotlib.lines import Line2D

    return Line2D([], [], color="black", lw=1.5, label="paper")
