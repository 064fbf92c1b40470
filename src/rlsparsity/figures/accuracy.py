"""Held-out accuracy base → trained from ``accuracy.csv`` (family, algorithm, data, precision,
seed, acc_base, acc_trained, delta, steps, seconds_per_step, wall_seconds, correct_base,
correct_trained). Error bars: 95 % paired bootstrap over problems and runs (rlsparsity.stats)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.patches import Patch

from rlsparsity.figures.style import (
    ALGORITHM_COLORS,
    PRECISION_COLORS,
    Plot,
    new_figure,
    no_data,
    order,
    order_precisions,
    pct,
    save,
)
from rlsparsity.stats import accuracy_difference, error_bar


def accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per algorithm: mean base and trained accuracy (%) and the number of runs (all runs)."""
    g = df.groupby("algorithm")
    t = pd.DataFrame({"acc_base": pct(g["acc_base"].mean()), "acc_trained": pct(g["acc_trained"].mean()),
                      "n_runs": g.size()})
    return t.loc[order(t.index)]


def accuracy(df: pd.DataFrame, out: str | Path | None = None) -> Plot:
    fig, axes = new_figure(2, size=(10.0, 3.8))
    ax, axd = axes
    if df.empty:
        no_data(ax, "no accuracy rows")
        no_data(axd, "")
        return save(Plot(fig, axes, {"table": pd.DataFrame()}), out)
    t = accuracy_table(df)
    y = np.arange(len(t))
    for i, (alg, r) in enumerate(t.iterrows()):
        c = ALGORITHM_COLORS.get(alg)
        ax.annotate("", xy=(r["acc_trained"], i), xytext=(r["acc_base"], i),
                    arrowprops={"arrowstyle": "->", "color": c, "lw": 1.6})
    ax.scatter(t["acc_base"], y, color="0.5", zorder=3, label="base")
    ax.scatter(t["acc_trained"], y, color=[ALGORITHM_COLORS.get(a) for a in t.index], zorder=3, label="trained")
    ax.set_yticks(y, [f"{a} (n={n})" for a, n in zip(t.index, t["n_runs"], strict=False)])
    ax.invert_yaxis()
    ax.set_xlabel("held-out greedy accuracy (%)")
    ax.set_title("Accuracy base → trained, mean over runs")
    ax.legend()
    d = df.assign(delta_pct=pct(df["acc_trained"] - df["acc_base"]))
    algs = order(d["algorithm"])
    precs = order_precisions(d["precision"].astype(str))
    w = 0.8 / max(1, len(precs))
    rng = np.random.default_rng(0)
    cis = {}
    for j, prec in enumerate(precs):
        for i, alg in enumerate(algs):
            q = d[(d["algorithm"] == alg) & (d["precision"] == prec)]
            v = q["delta_pct"].to_numpy(dtype=float)
            if len(v):
                xs = i - 0.4 + w * (j + 0.5)
                iv = accuracy_difference(list(zip(q.get("correct_trained", [None] * len(q)),
                                                  q.get("correct_base", [None] * len(q)), strict=False)),
                                         list(zip(q["acc_trained"], q["acc_base"], strict=False)))
                cis[(alg, prec)] = iv
                lo, hi = error_bar(iv)
                axd.bar(xs, v.mean(), width=w * 0.9, color=PRECISION_COLORS.get(prec, "0.5"), alpha=0.75,
                        yerr=[[lo], [hi]], capsize=2, error_kw={"lw": 0.8})
                axd.scatter(xs + rng.uniform(-w / 4, w / 4, len(v)), v, s=6, color="black", zorder=3)
    handles = [Patch(color=PRECISION_COLORS.get(p, "0.5"), alpha=0.75, label=p) for p in precs]
    axd.legend(handles=handles, title="precision")
    axd.axhline(0, color="black", lw=0.8)
    axd.set_xticks(range(len(algs)), algs)
    axd.set_ylabel("Δ accuracy (points)")
    axd.set_title("Change per run (dots), mean with 95 % CI, by precision")
    return save(Plot(fig, axes, {"table": t, "delta_ci": cis}), out)
