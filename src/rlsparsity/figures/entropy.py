"""80/20 token-entropy figures (arXiv 2506.01939).

``entropy.csv`` (family, rho, variant, normaliser, seed, precision, acc_base, acc_trained,
kept_fraction, sparsity, o1, o2, o1_random, o2_random, correct_*): accuracy by ρ / variant
(error bars: 95 % bootstrap over problems and runs), the kept token fraction (proof that the mask
is active; official exact-k rule: = ρ up to 1/N) and the parameter sparsity of each variant.

``entropy_stats.csv``: token-entropy statistics. Its layout is read tolerantly: long
(``statistic``, ``value`` plus identity columns) or wide (one column per statistic). Recognised
statistics: quantiles ``p<NN>`` / ``q<NN>`` / ``quantile_<0.NN>`` / ``percentile_<NN>`` (drawn as the
quantile function), the share below 0.01 (a name containing ``below`` or ``lt`` and ``0.01``/``1e-2``),
the mean (``mean``), the high-entropy overlap (a name containing ``overlap``), and an optional
histogram (``bin_lo``/``bin_left``, ``bin_hi``/``bin_right``, ``count``/``density``). Rows are
grouped by a ``model``/``checkpoint``/``policy`` column if one exists, else by all identity columns.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rlsparsity.figures import paper
from rlsparsity.figures.style import PAPER_KW, Plot, new_figure, no_data, pct, save
from rlsparsity.stats import accuracy_interval, error_bar

_Q = re.compile(r"^(?:p|q|quantile_?|percentile_?)(0?\.\d+|\d{1,3}(?:\.\d+)?)(?:_entropy|_h)?$", re.I)
_HIST_LO, _HIST_HI, _HIST_N = ("bin_lo", "bin_left", "left", "lo"), ("bin_hi", "bin_right", "right", "hi"), (
    "count", "density", "n")
_ID_HINTS = ("model", "checkpoint", "policy", "stage", "which")


def quantile_level(name: str) -> float | None:
    """p80 / q80 / quantile_0.8 / percentile_80 -> 0.8; anything else -> None."""
    m = _Q.match(str(name).strip())
    if not m:
        return None
    v = float(m.group(1))
    return v if "." in m.group(1) and v < 1 else v / 100.0


def _is_below_001(name: str) -> bool:
    n = str(name).lower()
    return ("below" in n or "lt" in n or "<" in n) and any(t in n for t in ("0.01", "1e-2", "1e-02", "001"))


def stats_wide(stats: pd.DataFrame) -> pd.DataFrame:
    """entropy_stats.csv in wide form (one row per group, one column per statistic)."""
    if stats.empty:
        return stats
    if {"statistic", "value"} <= set(stats.columns):
        ids = [c for c in stats.columns if c not in ("statistic", "value")]
        if ids:
            w = stats.pivot_table(index=ids, columns="statistic", values="value", aggfunc="mean").reset_index()
        else:
            w = stats.set_index("statistic")["value"].to_frame().T.reset_index(drop=True)
        w.columns.name = None
        return w
    return stats


def _group_col(w: pd.DataFrame) -> str | None:
    for c in w.columns:
        if any(h == str(c).lower() or str(c).lower().startswith(h) for h in _ID_HINTS):
            return c
    return None


def entropy_summary(stats: pd.DataFrame) -> dict[str, Any]:
    """Per group: quantile function (levels, values), p80, share below 0.01 (%), mean, overlap (%)."""
    w = stats_wide(stats)
    out: dict[str, Any] = {}
    if w.empty:
        return out
    hist = [c for c in w.columns if str(c).lower() in _HIST_LO]
    gcol = _group_col(w)
    groups = w.groupby(gcol, sort=False) if gcol else [("all", w)]
    for name, g in groups:
        qcols = {c: quantile_level(c) for c in g.columns if quantile_level(c) is not None}
        qs = sorted((lv, float(pd.to_numeric(g[c], errors="coerce").mean())) for c, lv in qcols.items())
        qs = [(lv, v) for lv, v in qs if np.isfinite(v)]
        p80 = next((v for lv, v in qs if np.isclose(lv, 0.8)), None)
        below = [c for c in g.columns if _is_below_001(c)]
        bval = float(pd.to_numeric(g[below[0]], errors="coerce").mean()) if below else None
        if bval is not None and bval <= 1.0:
            bval = pct(bval)
        ov = [c for c in g.columns if "overlap" in str(c).lower() and "jaccard" not in str(c).lower()]
        oval = float(pd.to_numeric(g[ov[0]], errors="coerce").mean()) if ov else None
        if oval is not None and oval <= 1.0:
            oval = pct(oval)
        mcol = next((c for c in ("mean", "mean_entropy", "entropy_mean") if c in g), None)
        mean = float(pd.to_numeric(g[mcol], errors="coerce").mean()) if mcol else None
        entry = {"quantiles": qs, "p80": p80, "frac_below_001": bval, "overlap": oval, "mean": mean}
        if hist:
            hi = next((c for c in g.columns if str(c).lower() in _HIST_HI), None)
            nc = next((c for c in g.columns if str(c).lower() in _HIST_N), None)
            if hi is not None and nc is not None:
                entry["hist"] = g[[hist[0], hi, nc]].to_numpy(dtype=float)
        out[str(name)] = entry
    return out


def cdf_points(e: dict[str, Any]) -> list[tuple[float, float]]:
    """Known points (entropy, cumulative share %) of one model's entropy CDF: the share below
    0.01, every quantile (the 80th percentile among them), or the whole histogram if given."""
    if "hist" in e:
        h = e["hist"]
        c = np.cumsum(h[:, 2])
        return list(zip(h[:, 1], pct(c / c[-1]), strict=False)) if c[-1] > 0 else []
    pts = [(v, pct(lv)) for lv, v in e["quantiles"]]
    if e["p80"] is not None and not any(np.isclose(lv, 0.8) for lv, _ in e["quantiles"]):
        pts.append((e["p80"], 80.0))
    if e["frac_below_001"] is not None:
        pts.append((0.01, e["frac_below_001"]))
    return sorted((max(x, 1e-4), y) for x, y in pts if np.isfinite(x) and np.isfinite(y))


def entropy_distribution(stats: pd.DataFrame, out: str | Path | None = None) -> Plot:
    summ = entropy_summary(stats) if not stats.empty else {}
    fig, axes = new_figure(2, size=(11.0, 4.2), gridspec_kw={"width_ratios": [1.5, 1]})
    ax, axo = axes
    if not summ:
        no_data(ax, "no token-entropy statistics")
        no_data(axo, "")
        return save(Plot(fig, axes, {"summary": summ, "cdf": {}}), out)
    cdf = {}
    for i, (name, e) in enumerate(summ.items()):
        color = f"C{i % 10}"
        pts = cdf[name] = cdf_points(e)
        if pts:
            x, y = zip(*pts, strict=False)
            ax.plot(x, y, marker="o", ms=4, color=color, lw=1, label=name)
        if e["p80"] is not None:
            ax.axvline(max(e["p80"], 1e-4), color=color, lw=0.8, alpha=0.6)
    ax.plot([0.01, paper.ENTROPY_P80], [paper.ENTROPY_FRAC_BELOW_001, 80.0], marker="*", ms=10,
            label=f"paper (Qwen3-8B): {paper.ENTROPY_FRAC_BELOW_001}% < 0.01, p80 {paper.ENTROPY_P80}", **PAPER_KW)
    ax.axhline(80, color="0.5", lw=0.6, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("token entropy H (nats, log scale)")
    ax.set_ylabel("share of response tokens with entropy ≤ H (%)")
    ax.set_ylim(0, 100)
    ax.set_title(
        "Entropy CDF from the known points (share < 0.01, quantiles);\nverticals: each model's 80th percentile"
    )
    ax.legend(fontsize=7, loc="upper left")
    names = [n for n, e in summ.items() if e["overlap"] is not None and n != "base"]  # base vs itself: 100%
    if names:
        vals = [summ[n]["overlap"] for n in names]
        axo.barh(range(len(names)), vals, color=[f"C{list(summ).index(n) % 10}" for n in names])
        axo.axvline(paper.ENTROPY_HIGH_OVERLAP, label=f"paper {paper.ENTROPY_HIGH_OVERLAP}% (after RL)", **PAPER_KW)
        axo.set_yticks(range(len(names)), names)
        axo.invert_yaxis()
        axo.set_xlim(0, 100)
        axo.set_xlabel("top-20% entropy positions shared with the base (%)")
        axo.set_title("High-entropy positions: overlap with base")
        axo.legend(fontsize=7, loc="lower right")
    else:
        no_data(axo, "no high-entropy overlap statistic")
    return save(Plot(fig, axes, {"summary": summ, "cdf": cdf}), out)


def variant_label(rho: float, variant: str) -> str:
    v = str(variant).lower()
    if "bottom" in v or "low" in v:
        return f"bottom {pct(rho):.0f}%"
    return "all tokens (ρ=1)" if np.isclose(rho, 1.0) else f"top {pct(rho):.0f}%"


def expected_kept(rho: float, variant: str) -> float:
    """Share of tokens a variant should keep: ρ (the entropy stage labels the bottom variant
    with the share it keeps, ρ = 0.8)."""
    return float(rho)


def entropy_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (rho, variant, normaliser): mean accuracy base/trained (%), kept fraction, sparsity (%), n."""
    g = df.groupby(["variant", "rho", "normaliser"], dropna=False)
    t = g.agg(
        acc_base=("acc_base", "mean"),
        acc_trained=("acc_trained", "mean"),
        kept_fraction=("kept_fraction", "mean"),
        sparsity=("sparsity", "mean"),
        n=("acc_trained", "size"),
    )
    t = t.reset_index()
    for c in ("acc_base", "acc_trained", "sparsity"):
        t[c] = pct(t[c])
    t["label"] = [variant_label(r, v) for r, v in zip(t["rho"], t["variant"], strict=False)]
    t["expected_kept"] = [expected_kept(r, v) for r, v in zip(t["rho"], t["variant"], strict=False)]
    t["_bottom"] = t["variant"].astype(str).str.lower().str.contains("bottom|low")
    return t.sort_values(["_bottom", "rho", "normaliser"]).drop(columns="_bottom").reset_index(drop=True)


def entropy_accuracy(df: pd.DataFrame, out: str | Path | None = None) -> Plot:
    fig, axes = new_figure(3, size=(12.0, 3.9), gridspec_kw={"width_ratios": [1.6, 1, 1]})
    if df.empty:
        no_data(axes[0], "no entropy-restriction rows")
        for a in axes[1:]:
            no_data(a, "")
        return save(Plot(fig, axes, {"table": pd.DataFrame()}), out)
    t = entropy_table(df)
    labels = list(dict.fromkeys(t["label"]))
    norms = list(dict.fromkeys(t["normaliser"].astype(str)))
    w = 0.8 / max(1, len(norms))
    ax, axk, axs = axes
    lab = [variant_label(r, v) for r, v in zip(df["rho"], df["variant"], strict=False)]
    d = df.assign(_label=lab)
    errs = {}
    for j, nm in enumerate(norms):
        sub = t[t["normaliser"].astype(str) == nm].set_index("label").reindex(labels)
        xs = np.arange(len(labels)) - 0.4 + w * (j + 0.5)
        e = []
        for lb in labels:
            q = d[(d["_label"] == lb) & (d["normaliser"].astype(str) == nm)]
            e.append(
                error_bar(accuracy_interval(list(q.get("correct_trained", [None] * len(q))), list(q["acc_trained"])))
                if len(q)
                else (0.0, 0.0)
            )
        errs[nm] = e
        ax.bar(
            xs,
            sub["acc_trained"],
            width=w * 0.9,
            color=f"C{j}",
            label=f"trained, {nm} normaliser",
            yerr=np.asarray(e, dtype=float).T,
            capsize=2,
            error_kw={"lw": 0.8},
        )
        axs.bar(xs, sub["sparsity"], width=w * 0.9, color=f"C{j}")
        axk.scatter(sub["expected_kept"], sub["kept_fraction"], color=f"C{j}", label=nm, zorder=3)
    base = float(t["acc_base"].mean())
    ax.axhline(base, color="0.3", lw=1, linestyle=":", label=f"base {base:.1f}%")
    for a in (ax, axs):
        a.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("Accuracy by token subset, 95 % CI (paper: top 20% ≥ all ≫ bottom 80%)")
    ax.legend(fontsize=7)
    lim = [0, 1.05]
    axk.plot(lim, lim, **PAPER_KW, label="kept = expected")
    axk.set_xlim(*lim)
    axk.set_ylim(*lim)
    axk.set_xlabel("ρ: share of tokens kept by design")
    axk.set_ylabel("kept token fraction (measured)")
    axk.set_title("Mask is active: kept ≈ ρ")
    axk.legend(fontsize=7)
    axs.set_ylabel("update sparsity (%)")
    axs.set_title("Parameter sparsity per variant")
    return save(Plot(fig, axes, {"table": t, "errors": errs}), out)
