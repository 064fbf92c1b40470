"""Subnetwork finetune from ``subnetwork.csv`` (family, algorithm, seed, precision, mask ∈
{subnetwork, random}, acc_base, acc_full, acc_subnetwork, tolerance, agreement): accuracy of the
full run vs the masked reruns (error bars: 95 % bootstrap over problems and runs), and the share
of entries identical to the full run (all entries; on the mask's entries where recorded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rlsparsity.figures import paper
from rlsparsity.figures.style import (
    ALGORITHM_COLORS,
    PAPER_MARKER,
    Plot,
    new_figure,
    no_data,
    order,
    pct,
    save,
    tol_label,
)
from rlsparsity.stats import accuracy_interval, error_bar

BARS = (("acc_base", "base", "#c7c7c7"), ("acc_full", "full finetune", "#4c72b0"),
        ("acc_subnetwork", "subnetwork mask", "#55a868"), ("acc_random", "random mask (same size)", "#dd8452"))


def subnetwork_tables(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(accuracy % per algorithm: base, full, subnetwork, random; agreement % per algorithm, mask × tolerance)."""
    runs = df.drop_duplicates(["family", "algorithm", "seed", "precision", "mask"])
    sub = runs[runs["mask"] == "subnetwork"].groupby("algorithm")
    acc = pd.DataFrame({"acc_base": pct(sub["acc_base"].mean()), "acc_full": pct(sub["acc_full"].mean()),
                        "acc_subnetwork": pct(sub["acc_subnetwork"].mean())})
    rnd = runs[runs["mask"] == "random"].groupby("algorithm")["acc_subnetwork"].mean()
    acc["acc_random"] = pct(rnd).reindex(acc.index) if len(acc) else pd.Series(dtype=float)
    if acc.empty and len(rnd):
        acc = pd.DataFrame({"acc_random": pct(rnd)})
    acc = acc.reindex(columns=[b[0] for b in BARS])
    acc = acc.loc[order(acc.index)]
    agr = pct(df.groupby(["algorithm", "mask", "tolerance"])["agreement"].mean().unstack("tolerance"))
    if not agr.empty:
        agr = agr[sorted(agr.columns)]
    return acc, agr


def subnetwork_errors(df: pd.DataFrame, algorithms: list[str]) -> dict[str, list[tuple[float, float]]]:
    """Per bar column: (lower, upper) error lengths (points) per algorithm, from the runs' outcomes."""
    runs = df.drop_duplicates(["family", "algorithm", "seed", "precision", "mask"])
    src = {
        "acc_base": ("subnetwork", "correct_base", "acc_base"),
        "acc_full": ("subnetwork", "correct_full", "acc_full"),
        "acc_subnetwork": ("subnetwork", "correct_subnetwork", "acc_subnetwork"),
        "acc_random": ("random", "correct_subnetwork", "acc_subnetwork"),
    }
    out: dict[str, list[tuple[float, float]]] = {}
    for col, (mask, bits, acc) in src.items():
        errs = []
        for alg in algorithms:
            q = runs[(runs["algorithm"] == alg) & (runs["mask"] == mask)]
            errs.append(
                error_bar(accuracy_interval(list(q.get(bits, [None] * len(q))), list(q[acc]))) if len(q) else (0.0, 0.0)
            )
        out[col] = errs
    return out


def subnetwork(df: pd.DataFrame, out: str | Path | None = None) -> Plot:
    fig, axes = new_figure(2, size=(10.0, 3.9))
    ax, axa = axes
    if df.empty:
        no_data(ax, "no subnetwork rows")
        no_data(axa, "")
        return save(Plot(fig, axes, {"accuracy": pd.DataFrame(), "agreement": pd.DataFrame()}), out)
    acc, agr = subnetwork_tables(df)
    x = np.arange(len(acc))
    w = 0.2
    errs = subnetwork_errors(df, list(acc.index))
    for k, (col, label, color) in enumerate(BARS):
        e = np.asarray(errs[col], dtype=float).reshape(-1, 2).T
        ax.bar(
            x + (k - 1.5) * w,
            acc[col].to_numpy(dtype=float),
            width=w,
            color=color,
            label=label,
            yerr=e,
            capsize=2,
            error_kw={"lw": 0.8},
        )
    for i, alg in enumerate(acc.index):
        if alg in paper.SUBNETWORK_ACCURACY:
            name, full, subn = paper.SUBNETWORK_ACCURACY[alg]
            ax.text(i, 2, f"paper {name}:\n{full} → {subn}", ha="center", fontsize=6, rotation=90, va="bottom")
    ax.set_xticks(x, acc.index)
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("Masked rerun vs full finetune (mean, 95 % CI)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    tols = list(agr.columns)
    xt = np.arange(len(tols))
    for (alg, mask), row in agr.iterrows():
        ax_kw = {
            "color": ALGORITHM_COLORS.get(alg),
            "marker": "o",
            "ms": 3,
            "linestyle": "-" if mask == "subnetwork" else ":",
        }
        axa.plot(xt, row.to_numpy(dtype=float), label=f"{alg} ({mask} mask)", **ax_kw)
    for alg, v in paper.SUBNETWORK_AGREEMENT.items():
        j = [i for i, t in enumerate(tols) if np.isclose(t, paper.SUBNETWORK_AGREEMENT_TOL)]
        if j:
            axa.scatter(
                [j[0]],
                [v],
                **{**PAPER_MARKER, "color": ALGORITHM_COLORS.get(alg), "edgecolor": "black"},
                label=f"paper {alg} {v}% at 1e-5",
            )
    axa.set_xticks(xt, [tol_label(t) for t in tols])
    axa.set_xlabel("tolerance")
    axa.set_ylabel("entries identical to the full run (%)")
    axa.set_ylim(0, 102)
    axa.set_title("Agreement with full finetune (paper: 100% at 1e-4)")
    axa.legend(fontsize=6, ncol=2)
    return save(Plot(fig, axes, {"accuracy": acc, "agreement": agr, "errors": errs}), out)
