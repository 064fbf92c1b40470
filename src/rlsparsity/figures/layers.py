"""Layer × matrix-type sparsity heatmap from ``layers.csv`` (family, algorithm, data, precision,
seed, layer, matrix_type, n_tensors, numel, tolerance, sparsity, below_bf16_half_ulp).
Layer −1 holds the tensors outside the numbered blocks (embeddings, final norm, lm_head)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from rlsparsity.figures import paper
from rlsparsity.figures.style import (
    HEATMAP_CMAP,
    Plot,
    annotate_heatmap,
    at_tol,
    new_figure,
    no_data,
    order,
    pct,
    prefer,
    save,
)

MATRIX_ORDER = ("embed", "q", "k", "v", "qkv", "kv", "o", "gate", "up", "gate_up", "down", "expert", "router",
                "norm", "lm_head", "other")


def layer_pivots(df: pd.DataFrame, tol: float = paper.PAPER_TOL) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(matrix type × layer, algorithm × matrix type) mean sparsity (%) at ``tol``, preferring bf16."""
    d, prec = prefer(at_tol(df, tol), "precision", "bf16")
    if d.empty:
        return pd.DataFrame(), pd.DataFrame(), prec or "?"
    lp = pct(d.groupby(["matrix_type", "layer"])["sparsity"].mean().unstack("layer"))
    lp = lp.loc[order(lp.index, MATRIX_ORDER), sorted(lp.columns)]
    ap = pct(d.groupby(["algorithm", "matrix_type"])["sparsity"].mean().unstack("matrix_type"))
    ap = ap.loc[order(ap.index), order(ap.columns, MATRIX_ORDER)]
    return lp, ap, prec or "?"


def layers_heatmap(df: pd.DataFrame, out: str | Path | None = None, tol: float = paper.PAPER_TOL) -> Plot:
    lp, ap, prec = layer_pivots(df, tol) if not df.empty else (pd.DataFrame(), pd.DataFrame(), "?")
    if lp.empty:
        fig, axes = new_figure()
        no_data(axes[0], f"no layer rows at tolerance {tol:g}")
        return save(Plot(fig, axes, {"layer_pivot": lp, "algorithm_pivot": ap}), out)
    w1, w2 = lp.shape[1], ap.shape[1]
    fig, axes = new_figure(2, size=(2.5 + 0.55 * (w1 + w2), 1.5 + 0.36 * max(lp.shape[0], ap.shape[0])),
                           gridspec_kw={"width_ratios": [max(w1, 2), max(w2, 2)]})
    for ax, piv, title, xl in ((axes[0], lp, "matrix type × layer", "layer (−1: outside the blocks)"),
                               (axes[1], ap, "algorithm × matrix type", "matrix type")):
        ax.grid(False)
        im = ax.imshow(piv.to_numpy(dtype=float), cmap=HEATMAP_CMAP, vmin=0, vmax=100, aspect="auto")
        annotate_heatmap(ax, piv.to_numpy(dtype=float), fmt="{:.0f}")
        ax.set_xticks(range(piv.shape[1]), [str(c) for c in piv.columns], rotation=45 if piv is ap else 0,
                      ha="right" if piv is ap else "center")
        ax.set_yticks(range(piv.shape[0]), piv.index)
        ax.set_xlabel(xl)
        ax.set_title(title)
    fig.colorbar(im, ax=axes, shrink=0.8, label="sparsity (%)")
    fig.suptitle(f"Sparsity by layer and matrix type (tol {tol:g}, {prec}, mean over runs)\n"
                 "paper: all layers and matrix types similarly sparse, layer norms barely updated")
    return save(Plot(fig, axes, {"layer_pivot": lp, "algorithm_pivot": ap, "precision": prec}), out)
