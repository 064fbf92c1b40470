"""Sparsity figures from ``sparsity.csv`` (family, algorithm, data, precision, seed, tolerance,
sparsity, below_bf16_half_ulp): the algorithm × family heatmap next to the paper's Table 1, sparsity
vs tolerance (Table 6 style), and the precision decomposition of what "unchanged" means."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rlsparsity.figures import paper
from rlsparsity.figures.style import (
    ALGORITHM_COLORS,
    HEATMAP_CMAP,
    PAPER_MARKER,
    SPLIT_COLORS,
    Plot,
    annotate_heatmap,
    at_tol,
    new_figure,
    no_data,
    order,
    order_precisions,
    pct,
    prefer,
    save,
    tol_label,
)


def _rl_default(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The paper's setting: bf16 (else the first precision present), on-policy data where present."""
    d, prec = prefer(df, "precision", "bf16")
    if "data" in d and (d["data"] == "on_policy").any():
        d = d[d["data"] == "on_policy"]
    return d, prec or "?"


def heatmap_pivot(df: pd.DataFrame, tol: float = paper.PAPER_TOL) -> tuple[pd.DataFrame, str]:
    """Mean sparsity (%) per algorithm (rows, paper order) × family (columns)."""
    d, prec = _rl_default(at_tol(df, tol))
    if d.empty:
        return pd.DataFrame(), prec
    piv = pct(d.groupby(["algorithm", "family"])["sparsity"].mean().unstack("family"))
    piv = piv.loc[order(piv.index), sorted(piv.columns)]
    return piv, prec


def sparsity_heatmap(df: pd.DataFrame, out: str | Path | None = None, tol: float = paper.PAPER_TOL) -> Plot:
    piv, prec = heatmap_pivot(df, tol)
    if piv.empty:
        fig, axes = new_figure()
        no_data(axes[0], f"no sparsity rows at tolerance {tol:g}")
        return save(Plot(fig, axes, {"pivot": piv}), out)
    n_alg, n_fam = piv.shape
    paper_vals = pd.Series({a: paper.table1_mean(a) for a in piv.index}, dtype=float)
    fig, axes = new_figure(2, size=(1.6 + 0.62 * (n_fam + 2), 1.4 + 0.42 * n_alg),
                           gridspec_kw={"width_ratios": [n_fam, 1.6]})
    ax, axp = axes
    for a in (ax, axp):
        a.grid(False)
    im = ax.imshow(piv.to_numpy(dtype=float), cmap=HEATMAP_CMAP, vmin=0, vmax=100, aspect="auto")
    annotate_heatmap(ax, piv.to_numpy(dtype=float))
    ax.set_xticks(range(n_fam), piv.columns, rotation=45, ha="right")
    ax.set_yticks(range(n_alg), piv.index)
    ax.set_xlabel("model family (this run)")
    ax.set_ylabel("algorithm")
    fig.suptitle(f"Update sparsity (%) at tol {tol:g}, {prec}, mean over seeds")
    pv = paper_vals.to_numpy(dtype=float)[:, None]
    axp.imshow(pv, cmap=HEATMAP_CMAP, vmin=0, vmax=100, aspect="auto", alpha=0.55)
    for i, a in enumerate(piv.index):
        axp.text(0, i, paper.table1_text(a), ha="center", va="center", fontsize=7)
    axp.set_xticks([0], ["paper\nTable 1"])
    axp.set_yticks([])
    fig.colorbar(im, ax=axes, shrink=0.8, label="sparsity (%)")
    return save(Plot(fig, axes, {"pivot": piv, "paper": paper_vals, "precision": prec}), out)


def tolerance_table(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per precision: mean sparsity (%) per algorithm (rows) × tolerance (columns, ascending)."""
    out = {}
    d = df[df["data"] == "on_policy"] if "data" in df and (df["data"] == "on_policy").any() else df
    for prec in order_precisions(d["precision"].astype(str)):
        sub = d[d["precision"] == prec]
        piv = pct(sub.groupby(["algorithm", "tolerance"])["sparsity"].mean().unstack("tolerance"))
        out[prec] = piv.loc[order(piv.index), sorted(piv.columns)]
    return out


def sparsity_tolerance(df: pd.DataFrame, out: str | Path | None = None) -> Plot:
    tables = tolerance_table(df) if not df.empty else {}
    fig, axes = new_figure(max(1, len(tables)), size=(3.4 * max(1, len(tables)) + 1.2, 3.6), sharey=True)
    if not tables:
        no_data(axes[0], "no sparsity rows")
        return save(Plot(fig, axes, {"tables": tables}), out)
    for ax, (prec, piv) in zip(axes, tables.items(), strict=False):
        x = np.arange(piv.shape[1])
        for alg, row in piv.iterrows():
            ax.plot(x, row.to_numpy(dtype=float), marker="o", ms=3, color=ALGORITHM_COLORS.get(alg), label=alg)
            p = paper.table1_mean(alg)
            tols = list(piv.columns)
            if p is not None and prec == "bf16" and any(np.isclose(t, paper.PAPER_TOL) for t in tols):
                j = [i for i, t in enumerate(tols) if np.isclose(t, paper.PAPER_TOL)][0]
                ax.scatter([j + 0.12], [p], **{**PAPER_MARKER, "color": ALGORITHM_COLORS.get(alg), "s": 60,
                                                "edgecolor": "black", "linewidth": 0.5})
        ax.set_xticks(x, [tol_label(t) for t in piv.columns], rotation=30)
        ax.set_xlabel("tolerance |Δ| ≤ t counts as unchanged")
        ax.set_title(prec)
        ax.set_ylim(-2, 102)
    axes[0].set_ylabel("update sparsity (%)")
    axes[0].scatter([], [], **{**PAPER_MARKER, "s": 60}, label="paper Table 1 (bf16, 1e-5)")
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("Sparsity vs tolerance (Table 6 style), mean over families and seeds")
    return save(Plot(fig, axes, {"tables": tables}), out)


def decomposition_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (algorithm, precision): fractions (%) genuinely unchanged (Δ = 0), changed by less than
    half a bf16 ulp of the base value, and changed by more; plus the reported sparsity at 1e-5."""
    if "data" in df and (df["data"] == "on_policy").any():
        df = df[df["data"] == "on_policy"]
    exact = at_tol(df, 0.0)
    if exact.empty:
        return pd.DataFrame(columns=["algorithm", "precision", "unchanged", "below_half_ulp", "changed"])
    g = exact.groupby(["algorithm", "precision"])
    t = pd.DataFrame({"unchanged": pct(g["sparsity"].mean()), "below_half_ulp": pct(g["below_bf16_half_ulp"].mean())})
    t["changed"] = 100.0 - t["unchanged"] - t["below_half_ulp"]
    at5 = at_tol(df, paper.PAPER_TOL)
    if not at5.empty:
        t["sparsity_1e-05"] = pct(at5.groupby(["algorithm", "precision"])["sparsity"].mean())
    t = t.reset_index()
    key = {a: i for i, a in enumerate(order(t["algorithm"]))}
    pkey = {p: i for i, p in enumerate(order_precisions(t["precision"]))}
    t = t.sort_values(["algorithm", "precision"], key=lambda s: s.map(key if s.name == "algorithm" else pkey))
    return t.reset_index(drop=True)


def precision_decomposition(df: pd.DataFrame, out: str | Path | None = None) -> Plot:
    t = decomposition_table(df) if not df.empty else pd.DataFrame()
    fig, axes = new_figure(size=(max(5.0, 0.42 * len(t) + 2.8), 4.2))
    ax = axes[0]
    if t.empty:
        no_data(ax, "no exact-zero (tol 0) sparsity rows")
        return save(Plot(fig, axes, {"table": t}), out)
    x = np.arange(len(t))
    bottom = np.zeros(len(t))
    labels = {
        "unchanged": "genuinely unchanged (Δ = 0)",
        "below_half_ulp": "0 < |Δ| < ½ bf16 ulp (rounded away in bf16)",
        "changed": "changed (|Δ| ≥ ½ ulp)",
    }
    for part in ("unchanged", "below_half_ulp", "changed"):
        h = t[part].to_numpy(dtype=float)
        ax.bar(x, h, bottom=bottom, color=SPLIT_COLORS[part], label=labels[part], width=0.8)
        bottom += h
    if "sparsity_1e-05" in t:
        ax.scatter(
            x, t["sparsity_1e-05"], marker="_", s=160, color="black", zorder=4, label="reported sparsity at tol 1e-5"
        )
    ax.set_xticks(x, [f"{a}\n{p}" for a, p in zip(t["algorithm"], t["precision"], strict=False)], fontsize=7)
    ax.set_ylabel("share of all parameters (%)")
    ax.set_ylim(0, 100)
    ax.set_title("What 'unchanged' means, by algorithm × weight precision (on-policy runs, mean)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    return save(Plot(fig, axes, {"table": t}), out)
