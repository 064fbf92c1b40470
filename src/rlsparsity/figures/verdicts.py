"""Verdict rules of the sparsity-side claims: pure functions from results tables to verdicts.

Each rule names the *unit* its interval is taken over (runs, pairs of runs, seeds), computes
the 95 % interval of the claimed quantity (:func:`rlsparsity.stats.mean_interval`: families
and seeds pooled, Student t) and decides holds / fails / inconclusive against the claim's
threshold (:func:`rlsparsity.stats.decide`). A rule evaluated per weight precision combines
the per-precision verdicts (:func:`rlsparsity.stats.combine`). Accuracy-side rules (paired
bootstrap over problems and runs) are in :mod:`rlsparsity.figures.verdicts_accuracy`.

A verdict is a dict: claim, paper, ours (estimates with intervals), verdict, rule.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from rlsparsity import stats as S
from rlsparsity.figures import paper
from rlsparsity.figures.style import at_tol, order_precisions
from rlsparsity.grid import PAPER_ALGORITHMS

#: "RL updates only 5-30 %": on-policy sparsity of the paper's algorithms at tol 1e-5 at least this.
SPARSE_MIN = 0.70
#: "SFT is dense": RL sparsity − SFT sparsity (same family, seed, precision) at least this.
SFT_MARGIN = 0.10
#: "nearly full rank": per-run mean rank / min(m, n) at least this (paper's lowest mean 99.2 %).
RANK_MIN = 0.99
#: "overlap far above chance": (o1+o2)/2 − chance at least this (paper 60.5 − 36.7 = 23.8 points).
OVERLAP_MARGIN = 0.05
#: "all layers similarly sparse": per-run spread (max − min) of per-(layer, type) sparsity at most this.
LAYER_SPREAD_MAX = 0.25
#: "layer norms barely updated": per-run sparsity of the norm tensors at least this (mostly unchanged).
NORMS_MIN = 0.50
#: "most entries never updated" (paper 72 %): per-run never-updated share at least this.
NEVER_MIN = 0.50
#: "in-distribution data drives sparsity": on-policy − off-policy sparsity at least this.
DATA_MARGIN = 0.05
#: "KL on/off barely matters" (paper 69.8 vs 68.8): |KL on − KL off| sparsity at most this.
KL_MARGIN = 0.05

HOLDS, FAILS, INCONCLUSIVE, DEPENDS, NODATA = S.HOLDS, S.FAILS, S.INCONCLUSIVE, S.DEPENDS, S.NODATA
RUN_KEY = ["family", "algorithm", "data", "seed"]


def verdict(claim: str, paper_txt: str, ours: str, v: str, rule: str) -> dict[str, str]:
    return {"claim": claim, "paper": paper_txt, "ours": ours or "–", "verdict": v, "rule": rule}


def judged(parts: dict[str, tuple[S.Interval, str]], fmt: Callable[[S.Interval], str] | None = None
           ) -> tuple[str, str]:
    """(combined verdict, "label: estimate [low, high] (verdict); …") from {label: (interval, verdict)}."""
    fmt = fmt or (lambda iv: iv.fmt())
    detail = "; ".join(f"{k}: {fmt(iv)} ({v})" for k, (iv, v) in parts.items())
    return S.combine(v for _, v in parts.values()), detail


def on_policy(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["data"] == "on_policy"] if "data" in df and (df["data"] == "on_policy").any() else df


def _per_precision(df: pd.DataFrame, value: Callable[[pd.DataFrame], S.Interval], threshold: float,
                   direction: str = ">=") -> dict[str, tuple[S.Interval, str]]:
    out = {}
    if df.empty:
        return out
    for p in order_precisions(df["precision"].astype(str)):
        iv = value(df[df["precision"].astype(str) == p])
        if iv.n:
            out[p] = (iv, S.decide(iv, threshold, direction))
    return out


def _run_values(df: pd.DataFrame, col: str, key: list[str] | None = None) -> list[float]:
    """One value per run (mean of ``col`` over the run's rows)."""
    k = [c for c in (key or RUN_KEY) if c in df]
    return list(df.groupby(k)[col].mean()) if len(df) else []


# ------------------------------------------------------------------ sparsity


def rl_sparse(sp: pd.DataFrame) -> dict[str, str]:
    claim, pap = "RL updates only 5–30 % of parameters (sparsity ≥ 70 %)", "68.5–96.0 % (Table 1, bf16)"
    rule = (f"per precision, on-policy runs of the paper's algorithms, sparsity at tol 1e-5: 95 % t-interval "
            f"over runs ≥ {SPARSE_MIN:.0%}")
    if sp.empty:
        return verdict(claim, pap, "–", NODATA, rule)
    d = on_policy(at_tol(sp, paper.PAPER_TOL))
    rl = d[d["algorithm"].isin(PAPER_ALGORITHMS)]
    parts = _per_precision(rl, lambda q: S.mean_interval(_run_values(q, "sparsity"), share=True), SPARSE_MIN)
    v, detail = judged(parts)
    return verdict(claim, pap, detail, v, rule)


def sft_dense(sp: pd.DataFrame) -> dict[str, str]:
    claim, pap = "SFT is dense by contrast", "6–15 % (SFT) vs 68.5–96.0 % (RL)"
    rule = (f"per precision and (family, seed): mean RL sparsity − SFT sparsity at 1e-5; t-interval over "
            f"(family, seed) ≥ {SFT_MARGIN:.0%} points")
    if sp.empty or not (sp["algorithm"] == "sft").any():
        return verdict(claim, pap, "–", NODATA, rule)
    d = on_policy(at_tol(sp, paper.PAPER_TOL))

    def gap(q: pd.DataFrame) -> S.Interval:
        sft = q[q["algorithm"] == "sft"].groupby(["family", "seed"])["sparsity"].mean()
        rl = q[q["algorithm"].isin(PAPER_ALGORITHMS)].groupby(["family", "seed"])["sparsity"].mean()
        both = sft.index.intersection(rl.index)
        return S.mean_interval(list(rl[both] - sft[both]))

    v, detail = judged(_per_precision(d, gap, SFT_MARGIN), lambda iv: "RL − SFT " + iv.fmt(unit=" pts"))
    return verdict(claim, pap, detail, v, rule)


def survives_fp32(sp: pd.DataFrame) -> dict[str, str]:
    """The sparsity claim asked again of runs trained AND stored in fp32: is it still ≥ SPARSE_MIN?"""
    claim = "Sparsity is intrinsic: it survives fp32 training (not a bf16 storage artifact)"
    pap = "paper: bf16 only; RL's Razor: fp32 → no sparsity"
    rule = (f"on-policy runs of the paper's algorithms trained and stored in fp32, sparsity at 1e-5: t-interval "
            f"over runs ≥ {SPARSE_MIN:.0%} (bf16 shown beside it)")
    d = on_policy(at_tol(sp, paper.PAPER_TOL)) if not sp.empty else sp
    rl = d[d["algorithm"].isin(PAPER_ALGORITHMS)] if not d.empty else d
    if rl.empty or not (rl["precision"] == "fp32").any():
        return verdict(claim, pap, "–", NODATA, rule + " (needs fp32 runs)")
    parts = _per_precision(rl, lambda q: S.mean_interval(_run_values(q, "sparsity"), share=True), SPARSE_MIN)
    v = parts["fp32"][1]
    ours = "; ".join(f"{p}: {i.fmt()}" for p, (i, _) in parts.items())
    return verdict(claim, pap, ours, v, rule)


def full_rank(rk: pd.DataFrame) -> dict[str, str]:
    claim, pap = "Updates are nearly full rank", "99.2–99.8 %"
    rule = (
        "per precision: per-run mean rank / min(m, n) over 2-D update matrices; "
        f"t-interval over runs ≥ {RANK_MIN:.0%}"
    )
    if rk.empty:
        return verdict(claim, pap, "–", NODATA, rule)
    d = rk[np.isfinite(pd.to_numeric(rk["rank_fraction"], errors="coerce")) & (rk["matrix_type"] != "norm")]
    parts = _per_precision(d, lambda q: S.mean_interval(_run_values(q, "rank_fraction"), share=True), RANK_MIN)
    v, detail = judged(parts, lambda iv: iv.fmt(digits=2))
    return verdict(claim, pap, detail, v, rule)


# ------------------------------------------------------------------ overlap, layers, dynamics


def prec_of_label(label: str) -> str:
    parts = str(label).split(":")
    return parts[2] if len(parts) >= 4 else "?"


OVERLAP_CLAIMS = (
    ("seed", "Subnetworks of different seeds overlap far above chance", "60.5 / 60.6 vs 36.7 %"),
    ("algorithm", "Subnetworks of different algorithms overlap above chance", "above chance"),
    ("data", "Subnetworks of different data overlap above chance", "above chance"),
)


def overlap(ov: pd.DataFrame) -> list[dict[str, str]]:
    rule = (
        f"per pair of runs (exact Δ ≠ 0 masks): (o1+o2)/2 − chance; t-interval over pairs ≥ {OVERLAP_MARGIN:.0%} "
        "points (seeds: per precision)"
    )
    out = []
    for axis, claim, pap in OVERLAP_CLAIMS:
        s = ov[(ov["axis"] == axis) & (ov["mask"] == "exact")] if not ov.empty else ov
        if s.empty:
            out.append(verdict(claim, pap, "–", NODATA, rule))
            continue
        s = s.assign(
            precision=s["run_a"].map(prec_of_label) if axis == "seed" else "all",
            gap=(s["o1"] + s["o2"]) / 2 - (s["o1_random"] + s["o2_random"]) / 2,
        )
        parts = _per_precision(s, lambda q: S.mean_interval(list(q["gap"])), OVERLAP_MARGIN)
        v, detail = judged(parts, lambda iv: "obs − chance " + iv.fmt(unit=" pts"))
        out.append(verdict(claim, pap, detail, v, rule))
    return out


def layers_spread(ly: pd.DataFrame) -> dict[str, str]:
    claim, pap = "Updates are spread over all layers and matrix types", "all similarly sparse"
    rule = (
        f"per run: max − min of per-(layer, type) sparsity of the weight matrices (norms, embeddings, lm_head "
        f"excluded) at 1e-5; t-interval over runs ≤ {LAYER_SPREAD_MAX:.0%}"
    )
    if ly.empty:
        return verdict(claim, pap, "–", NODATA, rule)
    d = on_policy(at_tol(ly, paper.PAPER_TOL))
    w = d[~d["matrix_type"].isin(["norm", "embed", "lm_head"])]

    def spread(q: pd.DataFrame) -> S.Interval:
        k = [c for c in RUN_KEY if c in q]
        vals = [
            float(g.groupby(["layer", "matrix_type"])["sparsity"].mean().pipe(lambda c: c.max() - c.min()))
            for _, g in q.groupby(k)
        ]
        return S.mean_interval(vals, share=True)

    v, detail = judged(_per_precision(w, spread, LAYER_SPREAD_MAX, "<="), lambda iv: "spread " + iv.fmt())
    return verdict(claim, pap, detail, v, rule)


def norms_unchanged(ly: pd.DataFrame) -> dict[str, str]:
    claim, pap = "Layer norms are barely updated (mostly unchanged)", "norms barely updated"
    rule = (
        f"per run: sparsity of the norm tensors at 1e-5; t-interval over runs ≥ {NORMS_MIN:.0%} "
        "(the other tensors' mean shown beside it)"
    )
    if ly.empty or not (ly["matrix_type"] == "norm").any():
        return verdict(claim, pap, "–", NODATA, rule)
    d = on_policy(at_tol(ly, paper.PAPER_TOL))
    parts = _per_precision(
        d[d["matrix_type"] == "norm"], lambda q: S.mean_interval(_run_values(q, "sparsity"), share=True), NORMS_MIN
    )
    rest = d[d["matrix_type"] != "norm"].groupby(d["precision"].astype(str))["sparsity"].mean()
    detail = "; ".join(
        f"{p}: norms {iv.fmt()} vs rest {rest.get(p, float('nan')) * 100:.1f} ({v})" for p, (iv, v) in parts.items()
    )
    return verdict(claim, pap, detail, S.combine(v for _, v in parts.values()), rule)


def never_updated(dy: pd.DataFrame) -> dict[str, str]:
    claim, pap = "Most entries are never updated (never / cancelled / final)", "72 / 8 / 20 %"
    rule = f"per run: never-updated share over the saved checkpoints; t-interval over runs ≥ {NEVER_MIN:.0%}"
    q = dy[dy["quantity"] == "never_updated"] if not dy.empty else dy
    if q.empty:
        return verdict(claim, pap, "–", NODATA, rule)
    if "tolerance" in q and np.isclose(pd.to_numeric(q["tolerance"], errors="coerce"), paper.PAPER_TOL).any():
        q = at_tol(q, paper.PAPER_TOL)
    parts = _per_precision(q, lambda g: S.mean_interval(_run_values(g, "value"), share=True), NEVER_MIN)
    v, detail = judged(parts, lambda iv: "never " + iv.fmt())
    return verdict(claim, pap, detail, v, rule)


# ------------------------------------------------------------------ causes


def data_drives(sp: pd.DataFrame) -> dict[str, str]:
    claim, pap = "In-distribution (on-policy) data drives sparsity", "81.4 % vs 6.8–7.7 % (DPO)"
    rule = (
        f"per precision and (algorithm, family, seed) with both data sources: on-policy − off-policy sparsity "
        f"at 1e-5; t-interval over those ≥ {DATA_MARGIN:.0%} points"
    )
    if sp.empty or "data" not in sp or sp["data"].nunique() < 2:
        return verdict(claim, pap, "–", NODATA, rule)
    d = at_tol(sp, paper.PAPER_TOL)

    def gap(q: pd.DataFrame) -> S.Interval:
        t = q.groupby(["algorithm", "family", "seed", "data"])["sparsity"].mean().unstack("data")
        t = t.dropna(subset=[c for c in ("on_policy", "off_policy") if c in t])
        if "on_policy" not in t or "off_policy" not in t:
            return S.mean_interval([])
        return S.mean_interval(list(t["on_policy"] - t["off_policy"]))

    v, detail = judged(_per_precision(d, gap, DATA_MARGIN), lambda iv: "on − off " + iv.fmt(unit=" pts"))
    return verdict(claim, pap, detail, v, rule)


def kl_barely_matters(ca: pd.DataFrame) -> dict[str, str]:
    """Per algorithm AND precision (GRPO and PPO never pooled): KL-on − KL-off sparsity, paired by
    seed; holds when the interval lies within ±KL_MARGIN."""
    claim, pap = "KL on/off barely changes sparsity", "69.8 vs 68.8 %"
    rule = (
        f"per algorithm and precision: sparsity(KL on) − sparsity(KL off) paired by seed; t-interval over "
        f"seeds within ±{KL_MARGIN:.0%} points (one seed: no interval → inconclusive)"
    )
    kl = ca[ca["setting"].astype(str).isin(["kl_on", "kl_off"])] if not ca.empty else ca
    if kl.empty:
        return verdict(claim, pap, "–", NODATA, rule)
    if "algorithm" not in kl:  # the ablation names the algorithm: grpo_kl, ppo_kl
        kl = kl.assign(algorithm=kl["ablation"].astype(str).str.split("_").str[0])
    if "seed" not in kl:
        kl = kl.assign(seed=1)
    parts = {}
    for (alg, p), g in kl.groupby(["algorithm", "precision"], sort=False):
        t = g.groupby(["family", "seed", "setting"])["sparsity"].mean().unstack("setting")
        if {"kl_on", "kl_off"} <= set(t.columns):
            iv = S.mean_interval(list((t["kl_on"] - t["kl_off"]).dropna()))
            parts[f"{alg} {p}"] = (iv, S.decide_within(iv, -KL_MARGIN, KL_MARGIN))
    if not parts:
        return verdict(claim, pap, "–", NODATA, rule)
    v, detail = judged(parts, lambda iv: "on − off " + iv.fmt(unit=" pts"))
    if v == DEPENDS:
        v = "depends on algorithm/precision"
    return verdict(claim, pap, detail, v, rule)


def sparsity_verdicts(T: dict[str, pd.DataFrame]) -> list[dict[str, str]]:
    """Every sparsity-side verdict, in SUMMARY order, from tables {name: frame} (missing = empty)."""
    g = lambda k: T.get(k, pd.DataFrame())  # noqa: E731
    return [
        rl_sparse(g("sparsity")),
        sft_dense(g("sparsity")),
        survives_fp32(g("sparsity")),
        full_rank(g("rank")),
        *overlap(g("overlap")),
        layers_spread(g("layers")),
        norms_unchanged(g("layers")),
        never_updated(g("dynamics")),
        data_drives(g("sparsity")),
        kl_barely_matters(g("causes")),
    ]
