"""results/SUMMARY.md: every headline number of this run next to the paper's, and one verdict
per claim, computed from the results tables (only the papers' numbers, in
:mod:`rlsparsity.figures.paper`, are constants).

Verdicts: ``holds``, ``fails``, ``depends on precision`` (holds at some weight precisions and
fails at others), ``no data`` (the table or the rows the claim needs are absent). The decision
rules and their thresholds are the constants below; each verdict line says what was compared.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from rlsparsity.figures import FIGURES, paper
from rlsparsity.figures.style import at_tol, order, order_precisions, read_table
from rlsparsity.grid import PAPER_ALGORITHMS
from rlsparsity.train import accuracy_by_algorithm

#: "RL updates only 5-30 %": mean sparsity of the paper's algorithms at tol 1e-5 must reach this.
SPARSE_MIN = 0.70
#: "SFT is dense": SFT sparsity must be below the RL mean by at least this much (same family/precision).
SFT_MARGIN = 0.10
#: "nearly full rank": mean rank / min(m, n) at least this (paper's lowest mean 99.2 %).
RANK_MIN = 0.99
#: "overlap far above chance": mean (o1+o2)/2 − chance at least this (paper 60.5 − 36.7 = 23.8 points).
OVERLAP_MARGIN = 0.05
#: "all layers similarly sparse": spread (max − min) of per-(layer, matrix type) sparsity of the
#: weight matrices (norms, embeddings, lm_head excluded) at most this.
LAYER_SPREAD_MAX = 0.25
#: "most entries never updated" (paper 72 %): never_updated share at least this.
NEVER_MIN = 0.50
#: "in-distribution data drives sparsity": on-policy minus off-policy sparsity at least this.
DATA_MARGIN = 0.05
#: accuracy comparisons (held-out accuracy from 200–1000 problems): equal within this.
ACC_TOL = 0.02
#: subnetwork rerun: share of entries identical to the full run at tol 1e-5 (paper 94.0 / 90.5 %).
AGREEMENT_MIN = 0.90
#: 80/20 premise: share of tokens with H < 0.01 at least this (paper 50.64 %).
LOW_ENTROPY_MIN = 0.40
#: mask active: measured kept fraction within this of the expected one.
KEPT_TOL = 0.05

HOLDS, FAILS, DEPENDS, NODATA = "holds", "fails", "depends on precision", "no data"


def _f(x: Any, digits: int = 1, scale: float = 100.0, unit: str = "%") -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "–"
    return "–" if not math.isfinite(v) else f"{v * scale:.{digits}f}{unit}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def combine(per_precision: dict[str, bool]) -> str:
    """holds / fails / depends on precision from {precision: holds?}."""
    vals = [v for v in per_precision.values() if v is not None]
    if not vals:
        return NODATA
    if all(vals):
        return HOLDS
    if not any(vals):
        return FAILS
    return DEPENDS


def _detail(per: dict[str, bool], vals: dict[str, str]) -> str:
    return "; ".join(f"{p}: {vals[p]} ({'yes' if per[p] else 'no'})" for p in order_precisions(per))


def _verdict(claim: str, paper_txt: str, ours: str, verdict: str, rule: str) -> dict[str, str]:
    return {"claim": claim, "paper": paper_txt, "ours": ours, "verdict": verdict, "rule": rule}


def _on_policy(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["data"] == "on_policy"] if "data" in df and (df["data"] == "on_policy").any() else df


def _prec_of_label(label: str) -> str:
    parts = str(label).split(":")
    return parts[2] if len(parts) >= 4 else "?"


# ------------------------------------------------------------------ sections


def section_sparsity(sp: pd.DataFrame, V: list) -> list[str]:
    out = ["## Update sparsity (paper Table 1; tol 1e-5)", ""]
    if sp.empty:
        V.append(_verdict("RL updates only 5–30 % of parameters", "sparsity 68.5–96.0 %", "–", NODATA, "sparsity.csv"))
        V.append(_verdict("SFT is dense by contrast", "6–15 % sparsity", "–", NODATA, "sparsity.csv"))
        return out + ["No sparsity table in this run.", ""]
    d = _on_policy(at_tol(sp, paper.PAPER_TOL))
    precs = order_precisions(d["precision"].astype(str))
    g = d.groupby(["algorithm", "precision"])["sparsity"]
    mean, n = g.mean(), g.size()
    rows = []
    for alg in order(d["algorithm"]):
        rows.append([alg, paper.table1_text(alg)] +
                    [f"{_f(mean.get((alg, p)))} (n={n.get((alg, p), 0)})" if (alg, p) in mean else "–" for p in precs])
    out += [_table(["algorithm", "paper Table 1 (bf16)"] + [f"this run, {p}" for p in precs], rows), ""]
    rl = d[d["algorithm"].isin(PAPER_ALGORITHMS)]
    per, vals = {}, {}
    for p in precs:
        m = rl.loc[rl["precision"] == p].groupby("algorithm")["sparsity"].mean()
        if len(m):
            per[p], vals[p] = bool(m.mean() >= SPARSE_MIN), _f(m.mean())
    V.append(_verdict("RL updates only 5–30 % of parameters (sparsity ≥ 70 %)", "68.5–96.0 % (Table 1, bf16)",
                      _detail(per, vals) or "–", combine(per),
                      f"mean over the paper's algorithms of on-policy sparsity at tol 1e-5 ≥ {SPARSE_MIN:.0%}"))
    # SFT contrast: same family and precision
    per, vals = {}, {}
    sft = d[d["algorithm"] == "sft"]
    for p in precs:
        s = sft[sft["precision"] == p]
        r = rl[(rl["precision"] == p) & rl["family"].isin(set(s["family"]))]
        if len(s) and len(r):
            per[p] = bool(s["sparsity"].mean() <= r["sparsity"].mean() - SFT_MARGIN)
            vals[p] = f"SFT {_f(s['sparsity'].mean())} vs RL {_f(r['sparsity'].mean())}"
    V.append(_verdict("SFT is dense by contrast", "6–15 % (SFT) vs 68.5–96.0 % (RL)", _detail(per, vals) or "–",
                      combine(per), f"SFT sparsity ≤ RL sparsity − {SFT_MARGIN:.0%} (same families, precision)"))
    # tolerance table (Table 6 style)
    dd = _on_policy(sp)
    tols = sorted(dd["tolerance"].unique())
    t = dd.groupby(["precision", "algorithm", "tolerance"])["sparsity"].mean()
    rows = [[p, a] + [_f(t.get((p, a, tt))) for tt in tols]
            for p in precs for a in order(dd.loc[dd["precision"] == p, "algorithm"])]
    out += ["### Sparsity vs tolerance (paper Table 6 style; the paper reports 1e-8 … 1e-5, default 1e-5)", "",
            _table(["precision", "algorithm"] + [("0 (exact)" if tt == 0 else f"{tt:g}") for tt in tols], rows), ""]
    return out


def section_precision(sp: pd.DataFrame, V: list) -> list[str]:
    out = ["## Precision: genuinely unchanged vs below bf16 storage precision", ""]
    if sp.empty:
        V.append(_verdict("Sparsity is not a bf16 artifact (survives fp32 training)", "RL's Razor: fp32 → no sparsity",
                          "–", NODATA, "sparsity.csv"))
        return out + ["No sparsity table.", ""]
    from rlsparsity.figures.sparsity import decomposition_table

    t = decomposition_table(sp)
    rows = [[r["algorithm"], r["precision"], _f(r["unchanged"] / 100), _f(r["below_half_ulp"] / 100),
             _f(r["changed"] / 100), _f(r.get("sparsity_1e-05", float("nan")) / 100)] for _, r in t.iterrows()]
    out += [_table(["algorithm", "precision", "unchanged (Δ=0)", "0<|Δ|<½ulp", "changed", "sparsity @1e-5"], rows),
            "", f"Reference (SPEC §3, tiny model, 20 GRPO steps): bf16 {paper.PRECISION_MEASURED['bf16 lr1e-6']} % "
            f"(lr 1e-6) / {paper.PRECISION_MEASURED['bf16 lr1e-5']} % (lr 1e-5) unchanged; fp32 "
            f"{paper.PRECISION_MEASURED['fp32']} %.", ""]
    d = _on_policy(at_tol(sp, paper.PAPER_TOL))
    rl = d[d["algorithm"].isin(PAPER_ALGORITHMS)]
    per, vals = {}, {}
    for p in order_precisions(rl["precision"].astype(str)):
        m = rl.loc[rl["precision"] == p, "sparsity"].mean()
        per[p], vals[p] = bool(m >= SPARSE_MIN), _f(m)
    v = combine(per)
    V.append(_verdict("Sparsity is intrinsic, not a storage-precision artifact", "paper: bf16 only; RL's Razor: fp32 → none",
                      _detail(per, vals) or "–", v,
                      f"RL sparsity at 1e-5 ≥ {SPARSE_MIN:.0%} at every precision trained"))
    return out


def section_rank(rk: pd.DataFrame, V: list) -> list[str]:
    out = ["## Update rank (rank / min(m, n), mean over matrices)", ""]
    if rk.empty:
        V.append(_verdict("Updates are nearly full rank", "99.2–99.8 %", "–", NODATA, "rank.csv"))
        return out + ["No rank table.", ""]
    d = rk[np.isfinite(pd.to_numeric(rk["rank_fraction"], errors="coerce"))]
    d = d[~d["matrix_type"].isin(["norm"])]
    g = d.groupby(["algorithm", "precision"])["rank_fraction"]
    m, mn, n = g.mean(), g.min(), g.size()
    rows = [[a, p, f"{paper.RANK[a][1]} % ({paper.RANK[a][0]})" if a in paper.RANK else "–", _f(m[(a, p)], 2),
             _f(mn[(a, p)], 1), n[(a, p)]] for a, p in sorted(m.index, key=lambda k: (order(d["algorithm"]).index(k[0]),
                                                                                    order_precisions(d["precision"]).index(k[1])))]
    out += [_table(["algorithm", "precision", "paper mean", "this run mean", "min", "matrices"], rows), ""]
    per, vals = {}, {}
    for p in order_precisions(d["precision"].astype(str)):
        v = d.loc[d["precision"] == p, "rank_fraction"].mean()
        per[p], vals[p] = bool(v >= RANK_MIN), _f(v, 2)
    V.append(_verdict("Updates are nearly full rank", "99.2–99.8 %", _detail(per, vals), combine(per),
                      f"mean rank / min(m, n) over 2-D update matrices ≥ {RANK_MIN:.0%}"))
    return out


def section_overlap(ov: pd.DataFrame, V: list) -> list[str]:
    out = ["## Subnetwork overlap vs chance", ""]
    if ov.empty:
        V.append(_verdict("Subnetworks of different seeds overlap far above chance", "60.5 / 60.6 vs 36.7 %", "–",
                          NODATA, "overlap.csv"))
        return out + ["No overlap table.", ""]
    d = ov.assign(precision=ov["run_a"].map(_prec_of_label), obs=(ov["o1"] + ov["o2"]) / 2,
                  chance=(ov["o1_random"] + ov["o2_random"]) / 2)
    g = d.groupby(["mask", "axis"])
    t = g.agg(o1=("o1", "mean"), o2=("o2", "mean"), o1r=("o1_random", "mean"), o2r=("o2_random", "mean"),
              n=("o1", "size")).reset_index()
    rows = [[r["mask"], r["axis"], _f(r["o1"]), _f(r["o2"]), _f(r["o1r"]), _f(r["o2r"]), r["n"],
             "60.5 / 60.6 vs 36.7 / 36.7" if (r["axis"] == "seed" and r["mask"] == "exact") else "above chance"]
            for _, r in t.iterrows()]
    out += [_table(["mask", "runs differ in", "o1", "o2", "o1 random", "o2 random", "pairs", "paper"], rows), ""]
    for axis, claim in (("seed", "Subnetworks of different seeds overlap far above chance"),
                        ("algorithm", "Subnetworks of different algorithms overlap above chance"),
                        ("data", "Subnetworks of different data overlap above chance")):
        s = d[(d["axis"] == axis) & (d["mask"] == "exact")]
        per, vals = {}, {}
        if axis == "seed":
            for p in order_precisions(s["precision"].astype(str)):
                q = s[s["precision"] == p]
                per[p] = bool((q["obs"] - q["chance"]).mean() >= OVERLAP_MARGIN)
                vals[p] = f"{_f(q['obs'].mean())} vs {_f(q['chance'].mean())}"
        elif len(s):
            per["all"] = bool((s["obs"] - s["chance"]).mean() >= OVERLAP_MARGIN)
            vals["all"] = f"{_f(s['obs'].mean())} vs {_f(s['chance'].mean())}"
        v = combine(per)
        V.append(_verdict(claim, "60.5 / 60.6 vs 36.7 %" if axis == "seed" else "above chance",
                          _detail(per, vals) or "–", v,
                          f"mean (o1+o2)/2 − chance ≥ {OVERLAP_MARGIN:.0%} points (Δ ≠ 0 masks)"))
    return out


def section_layers(ly: pd.DataFrame, V: list) -> list[str]:
    out = ["## Layer distribution", ""]
    if ly.empty:
        V.append(_verdict("Updates are spread over all layers and matrix types", "similarly sparse; norms barely updated",
                          "–", NODATA, "layers.csv"))
        return out + ["No layers table.", ""]
    d = _on_policy(at_tol(ly, paper.PAPER_TOL))
    g = d.groupby(["precision", "matrix_type"])["sparsity"].agg(["mean", "min", "max"]).reset_index()
    rows = [[r["precision"], r["matrix_type"], _f(r["mean"]), _f(r["min"]), _f(r["max"])] for _, r in g.iterrows()]
    out += [_table(["precision", "matrix type", "mean sparsity", "min", "max"], rows), ""]
    per, vals = {}, {}
    w = d[~d["matrix_type"].isin(["norm", "embed", "lm_head"])]
    for p in order_precisions(w["precision"].astype(str)):
        cell = w[w["precision"] == p].groupby(["layer", "matrix_type"])["sparsity"].mean()
        spread = float(cell.max() - cell.min())
        per[p], vals[p] = bool(spread <= LAYER_SPREAD_MAX), f"spread {_f(spread)}"
    V.append(_verdict("Updates are spread over all layers and matrix types", "all similarly sparse",
                      _detail(per, vals) or "–", combine(per),
                      f"max − min of per-(layer, type) sparsity of weight matrices ≤ {LAYER_SPREAD_MAX:.0%}"))
    per, vals = {}, {}
    for p in order_precisions(d["precision"].astype(str)):
        q = d[d["precision"] == p]
        nm, wm = q.loc[q["matrix_type"] == "norm", "sparsity"].mean(), q.loc[
            ~q["matrix_type"].isin(["norm"]), "sparsity"].mean()
        if np.isfinite(nm) and np.isfinite(wm):
            per[p], vals[p] = bool(nm >= wm), f"norms {_f(nm)} vs rest {_f(wm)}"
    V.append(_verdict("Layer norms are barely updated", "norms sparser than the rest", _detail(per, vals) or "–",
                      combine(per), "mean norm sparsity ≥ mean sparsity of the other tensors"))
    return out


def section_dynamics(dy: pd.DataFrame, V: list) -> list[str]:
    out = ["## Dynamics", ""]
    q = dy[dy["quantity"].isin(list(paper.DYNAMICS_SPLIT))] if not dy.empty else dy
    if q.empty:
        V.append(_verdict("Most entries are never updated; some updates cancel", "72 / 8 / 20 %", "–", NODATA,
                          "dynamics.csv"))
        return out + ["No dynamics table.", ""]
    t = q.groupby(["precision", "algorithm", "quantity"])["value"].mean().unstack("quantity")
    rows = [["paper", "–"] + [f"{paper.DYNAMICS_SPLIT[k]:.0f}%" for k in paper.DYNAMICS_SPLIT]]
    rows += [[p, a] + [_f(t.loc[(p, a)].get(k)) for k in paper.DYNAMICS_SPLIT] for p, a in t.index]
    out += [_table(["precision", "algorithm", "never updated", "updated then cancelled", "final subnetwork"], rows),
            "", "Cancelled is a lower bound: only the saved checkpoints are seen.", ""]
    sp = at_tol(dy[dy["quantity"] == "sparsity"], paper.PAPER_TOL)
    if len(sp):
        c = sp.groupby(["precision", "step"])["value"].mean()
        out += ["Sparsity at tol 1e-5 per checkpoint step (mean over runs): " + "; ".join(
            f"{p}: " + ", ".join(f"{int(s)}→{_f(c[(p, s)])}" for s in c[p].index) for p in c.index.levels[0]), ""]
    per, vals = {}, {}
    for p in order_precisions(q["precision"].astype(str)):
        m = q[q["precision"] == p].groupby("quantity")["value"].mean()
        per[p] = bool(m.get("never_updated", 0) >= NEVER_MIN)
        vals[p] = "/".join(_f(m.get(k), 0, unit="") for k in paper.DYNAMICS_SPLIT) + " %"
    V.append(_verdict("Most entries are never updated (never / cancelled / final)", "72 / 8 / 20 %",
                      _detail(per, vals), combine(per), f"never-updated share ≥ {NEVER_MIN:.0%}"))
    return out


def section_data(sp: pd.DataFrame, ca: pd.DataFrame, V: list) -> list[str]:
    out = ["## Causes: in-distribution data (paper Table 5)", ""]
    per, vals = {}, {}
    if not sp.empty and "data" in sp and sp["data"].nunique() > 1:
        d = at_tol(sp, paper.PAPER_TOL)
        t = d.groupby(["precision", "algorithm", "data"])["sparsity"].mean().unstack("data")
        t = t.dropna()
        rows = [[p, a, _f(r.get("on_policy")), _f(r.get("off_policy"))] for (p, a), r in t.iterrows()]
        out += [_table(["precision", "algorithm", "on-policy data", "off-policy data"], rows),
                "", "Paper: DPO off-policy 6.8–7.7 %, in-distribution 81.4 %; rejection-sampling SFT 91.2 %.", ""]
        for p in order_precisions(t.index.get_level_values(0)):
            r = t.loc[p]
            diff = float((r["on_policy"] - r["off_policy"]).mean())
            per[p], vals[p] = bool(diff >= DATA_MARGIN), f"on − off {_f(diff)}"
    if not ca.empty:
        from rlsparsity.figures.causes import causes_table

        ct = causes_table(ca)
        rows = [[r["ablation"], r["setting"], r["precision"], _f(r["sparsity"] / 100),
                 ("–" if r["paper"] is None else (f"{r['paper'][0]}" if r["paper"][0] == r["paper"][1]
                                                  else f"{r['paper'][0]}–{r['paper'][1]}") + " %")]
                for _, r in ct.iterrows()]
        out += ["### Ablations (causes.csv)", "", _table(["ablation", "setting", "precision", "sparsity", "paper"], rows), ""]
        kl = ct[ct["ablation"].astype(str).str.lower().str.contains("kl")]
        if len(kl):
            kper, kvals = {}, {}
            for p in order_precisions(kl["precision"].astype(str)):
                s = kl.loc[kl["precision"] == p, "sparsity"] / 100
                kper[p], kvals[p] = bool(s.max() - s.min() <= 0.05), f"range {_f(s.max() - s.min())}"
            V.append(_verdict("KL on/off barely changes sparsity", "69.8 vs 68.8 %", _detail(kper, kvals),
                              combine(kper), "max − min sparsity over KL settings ≤ 5 points"))
    if not per and not out[2:]:
        out += ["No data-source axis or causes table in this run.", ""]
    V.append(_verdict("In-distribution (on-policy) data drives sparsity", "81.4 % vs 6.8–7.7 % (DPO)",
                      _detail(per, vals) or "–", combine(per),
                      f"on-policy minus off-policy sparsity at 1e-5 ≥ {DATA_MARGIN:.0%} (same algorithm, precision)"))
    return out


def section_accuracy(ac: pd.DataFrame, V: list) -> list[str]:
    out = ["## Held-out accuracy", ""]
    if ac.empty:
        V.append(_verdict("Training improves held-out accuracy (sanity)", "–", "–", NODATA, "accuracy.csv"))
        return out + ["No accuracy table.", ""]
    g = ac.groupby(["precision", "algorithm"])
    t = g.agg(base=("acc_base", "mean"), trained=("acc_trained", "mean"), n=("acc_base", "size")).reset_index()
    rows = [[r["precision"], r["algorithm"], _f(r["base"]), _f(r["trained"]), _f(r["trained"] - r["base"], unit=" pts"),
             r["n"]] for _, r in t.iterrows()]
    out += [_table(["precision", "algorithm", "base", "trained", "Δ", "runs"], rows), ""]
    per, vals = {}, {}
    for p in order_precisions(ac["precision"].astype(str)):
        q = ac[ac["precision"] == p]
        dlt = float((q["acc_trained"] - q["acc_base"]).mean())
        per[p], vals[p] = bool(dlt > 0), f"Δ {_f(dlt, unit=' pts')}"
    V.append(_verdict("Training improves held-out accuracy (sanity, not a paper claim)", "–", _detail(per, vals),
                      combine(per), "mean acc_trained − acc_base > 0"))
    # every paper algorithm, on the grid it is run on for every family (most runs: the main grid)
    main = _on_policy(ac[ac["algorithm"].isin(PAPER_ALGORITHMS)])
    if not main.empty:
        prec = main["precision"].astype(str).value_counts().idxmax()
        q = main[main["precision"] == prec]
        t = accuracy_by_algorithm(q.assign(data="pooled")).set_index("algorithm")  # one row per algorithm
        fams = q.groupby("algorithm")["family"].nunique()
        algs = [a for a in PAPER_ALGORITHMS if a in t.index]
        ups = {a: bool(t.loc[a, "delta_mean"] > 0) for a in algs}
        rows = [[a, int(t.loc[a, "n_runs"]), int(fams[a]), _f(t.loc[a, "delta_mean"], 2, unit=" pts"),
                 _f(t.loc[a, "delta_se"], 2, unit=" pts"), int(t.loc[a, "n_up"]), int(t.loc[a, "n_down"])]
                for a in algs]
        out += [f"Per paper algorithm ({prec}, on-policy, all families and seeds):", "",
                _table(["algorithm", "runs", "families", "mean Δ", "s.e.", "runs up", "runs down"], rows), ""]
        up = [a for a, ok in ups.items() if ok]
        V.append(_verdict(f"Every paper algorithm raises mean held-out accuracy ({prec}, sanity)", "–",
                          f"{len(up)}/{len(ups)} algorithms: " + ", ".join(f"{a} {'+' if ups[a] else '−'}" for a in ups),
                          HOLDS if len(up) == len(ups) else FAILS, "mean Δ > 0 for each algorithm"))
    return out


def section_subnetwork(sn: pd.DataFrame, V: list) -> list[str]:
    out = ["## Subnetwork finetune", ""]
    if sn.empty:
        V.append(_verdict("Finetuning only the subnetwork recovers full finetuning", "40.3 → 41.9; 69.8 → 72.2", "–",
                          NODATA, "subnetwork.csv"))
        V.append(_verdict("Subnetwork rerun reproduces the full run's values", "94.0 / 90.5 % at 1e-5", "–", NODATA,
                          "subnetwork.csv"))
        return out + ["No subnetwork table in this run.", ""]
    runs = sn.drop_duplicates(["family", "algorithm", "seed", "precision", "mask"])
    t = runs.groupby(["precision", "algorithm", "mask"]).agg(full=("acc_full", "mean"), sub=("acc_subnetwork", "mean"),
                                                              base=("acc_base", "mean"), n=("acc_full", "size"))
    a5 = at_tol(sn, paper.SUBNETWORK_AGREEMENT_TOL).groupby(["precision", "algorithm", "mask"])["agreement"].mean()
    rows = []
    for (p, a, m), r in t.iterrows():
        pa = paper.SUBNETWORK_ACCURACY.get(a)
        rows.append([p, a, m, _f(r["base"]), _f(r["full"]), _f(r["sub"]), _f(a5.get((p, a, m))),
                     f"{pa[1]} → {pa[2]}; {paper.SUBNETWORK_AGREEMENT[a]} %" if pa else "–"])
    out += [_table(["precision", "algorithm", "mask", "base", "full", "masked rerun", "agreement @1e-5",
                    "paper (acc full → sub; agreement)"], rows), ""]
    per, vals = {}, {}
    s = runs[runs["mask"] == "subnetwork"]
    for p in order_precisions(s["precision"].astype(str)):
        q = s[s["precision"] == p]
        dlt = float((q["acc_subnetwork"] - q["acc_full"]).mean())
        per[p], vals[p] = bool(dlt >= -ACC_TOL), f"sub − full {_f(dlt, unit=' pts')}"
    V.append(_verdict("Finetuning only the subnetwork recovers full finetuning", "40.3 → 41.9 (DPO); 69.8 → 72.2 (PRIME)",
                      _detail(per, vals) or "–", combine(per), f"subnetwork-mask accuracy ≥ full − {ACC_TOL:.0%}"))
    per, vals = {}, {}
    s5 = at_tol(sn[sn["mask"] == "subnetwork"], paper.SUBNETWORK_AGREEMENT_TOL)
    for p in order_precisions(s5["precision"].astype(str)):
        v = float(s5.loc[s5["precision"] == p, "agreement"].mean())
        per[p], vals[p] = bool(v >= AGREEMENT_MIN), _f(v)
    V.append(_verdict("Subnetwork rerun reproduces the full run's values", "94.0 / 90.5 % identical at 1e-5",
                      _detail(per, vals) or "–", combine(per), f"agreement at 1e-5 ≥ {AGREEMENT_MIN:.0%}"))
    rnd = runs[runs["mask"] == "random"]
    if len(rnd) and len(s):
        ok = bool(s["acc_subnetwork"].mean() > rnd["acc_subnetwork"].mean())
        V.append(_verdict("The subnetwork beats a random mask of the same size", "(control, not in the paper)",
                          f"{_f(s['acc_subnetwork'].mean())} vs {_f(rnd['acc_subnetwork'].mean())}",
                          HOLDS if ok else FAILS, "mean accuracy subnetwork mask > random mask"))
    return out


def section_entropy(en: pd.DataFrame, es: pd.DataFrame, V: list) -> list[str]:
    out = ["## Token entropy (arXiv 2506.01939)", ""]
    from rlsparsity.figures.entropy import entropy_summary, entropy_table

    if not es.empty:
        summ = entropy_summary(es)
        rows = [["paper (Qwen3-8B)", f"{paper.ENTROPY_FRAC_BELOW_001} %", paper.ENTROPY_P80, "–",
                 f"{paper.ENTROPY_HIGH_OVERLAP} %"]]
        rows += [[k, _f(e["frac_below_001"], scale=1), "–" if e["p80"] is None else f"{e['p80']:.3g}",
                  "–" if e["mean"] is None else f"{e['mean']:.3g}", _f(e["overlap"], scale=1)] for k, e in summ.items()]
        out += [_table(["model", "H < 0.01", "p80 (nats)", "mean", "high-H overlap"], rows), ""]
        fr = [e["frac_below_001"] for e in summ.values() if e["frac_below_001"] is not None]
        v = (HOLDS if min(fr) >= 100 * LOW_ENTROPY_MIN else FAILS) if fr else NODATA
        V.append(_verdict("Most tokens are low-entropy (80/20 premise)", "50.64 % below 0.01; p80 0.672",
                          ", ".join(f"{_f(x, scale=1)}" for x in fr) or "–", v,
                          f"share of tokens with H < 0.01 ≥ {LOW_ENTROPY_MIN:.0%}"))
    else:
        V.append(_verdict("Most tokens are low-entropy (80/20 premise)", "50.64 % below 0.01; p80 0.672", "–", NODATA,
                          "entropy_stats.csv"))
    if en.empty:
        V.append(_verdict("Top-20 % high-entropy tokens match or beat all tokens", "AIME'24 55.83 → 63.54", "–",
                          NODATA, "entropy.csv"))
        return out + ["No entropy-restriction table in this run.", ""]
    t = entropy_table(en)
    rows = [[r["label"], r["normaliser"], _f(r["acc_base"] / 100), _f(r["acc_trained"] / 100),
             f"{r['kept_fraction']:.3f}", _f(r["sparsity"] / 100), r["n"]] for _, r in t.iterrows()]
    out += [_table(["tokens trained", "normaliser", "base", "trained", "kept fraction", "sparsity", "runs"], rows), "",
            "Paper (Qwen3-32B): AIME'24 55.83 → 63.54, AIME'25 45.63 → 56.67 (all tokens → top 20 %); "
            "bottom 80 % hurts badly.", ""]
    top = t[(~t["label"].str.startswith("bottom")) & np.isclose(t["rho"], paper.ENTROPY_RHO)]
    full = t[np.isclose(t["rho"], 1.0) & ~t["label"].str.startswith("bottom")]
    bot = t[t["label"].str.startswith("bottom")]
    if len(top) and len(full):
        dlt = float(top["acc_trained"].mean() - full["acc_trained"].mean()) / 100
        V.append(_verdict("Top-20 % high-entropy tokens match or beat all tokens", "+7.7 / +11.0 AIME points",
                          f"top-20 % − all {_f(dlt, unit=' pts')}", HOLDS if dlt >= -ACC_TOL else FAILS,
                          f"accuracy(top 20 %) ≥ accuracy(all) − {ACC_TOL:.0%}"))
    else:
        V.append(_verdict("Top-20 % high-entropy tokens match or beat all tokens", "+7.7 / +11.0 AIME points", "–",
                          NODATA, "rows ρ = 0.2 and ρ = 1"))
    if len(bot) and len(full):
        dlt = float(bot["acc_trained"].mean() - full["acc_trained"].mean()) / 100
        V.append(_verdict("Training only on the bottom-80 % tokens hurts", "hurts badly",
                          f"bottom − all {_f(dlt, unit=' pts')}", HOLDS if dlt < -ACC_TOL else FAILS,
                          f"accuracy(bottom) < accuracy(all) − {ACC_TOL:.0%}"))
    err = (t["kept_fraction"] - t["expected_kept"]).abs().max()
    V.append(_verdict("The entropy mask is active (kept fraction ≈ ρ)", "(the official code once trained the baseline)",
                      f"max |kept − expected| {err:.3f}", HOLDS if err <= KEPT_TOL else FAILS,
                      f"|kept fraction − expected| ≤ {KEPT_TOL} for every variant"))
    return out


def section_public(pp: pd.DataFrame) -> list[str]:
    if pp.empty:
        return []
    col = "sparsity_1e-05" if "sparsity_1e-05" in pp else None
    rows = [[r["pair"], r["algorithm"], r["paper_sparsity"], _f(r[col]) if col else "–",
             _f(r.get("below_bf16_half_ulp"))] for _, r in pp.iterrows()]
    return ["## Public pairs (the paper's own checkpoints)", "",
            _table(["pair", "algorithm", "paper %", "this run @1e-5", "below ½ ulp"], rows), ""]


def build_summary(tables: dict[str, Path], figures_dir: str | None = None) -> tuple[str, list[dict[str, str]]]:
    """(markdown, verdicts) from whichever tables exist."""
    T = {k: read_table(p) if Path(p).exists() else pd.DataFrame() for k, p in tables.items()}
    get: Callable[[str], pd.DataFrame] = lambda k: T.get(k, pd.DataFrame())  # noqa: E731
    V: list[dict[str, str]] = []
    body: list[str] = []
    body += section_sparsity(get("sparsity"), V)
    body += section_precision(get("sparsity"), V)
    body += section_rank(get("rank"), V)
    body += section_overlap(get("overlap"), V)
    body += section_layers(get("layers"), V)
    body += section_dynamics(get("dynamics"), V)
    body += section_data(get("sparsity"), get("causes"), V)
    body += section_subnetwork(get("subnetwork"), V)
    body += section_entropy(get("entropy"), get("entropy_stats"), V)
    body += section_accuracy(get("accuracy"), V)
    body += section_public(get("public_pairs"))
    used = [f"`{Path(p).name}`" for k, p in tables.items() if not get(k).empty]
    head = ["# rlsparsity — results summary", "",
            f"Generated by `rlsparsity summary` on {_dt.date.today().isoformat()} from {', '.join(used) or 'no tables'}. "
            "Every number of this run is computed from those tables; the papers' numbers come from "
            "`rlsparsity.figures.paper` (arXiv 2505.11711, arXiv 2506.01939). Tiny models and ~200 held-out "
            "problems: read the verdicts as whether the *pattern* holds here, not as a replication of the values.", "",
            "## Verdicts", "",
            _table(["claim", "paper", "this run", "verdict"], [[v["claim"], v["paper"], v["ours"], f"**{v['verdict']}**"]
                                                               for v in V]), "",
            "Decision rules: " + "; ".join(f"*{v['claim']}*: {v['rule']}" for v in V if v["verdict"] != NODATA) + ".", ""]
    if figures_dir:
        head += ["Figures: " + ", ".join(f"[{f.name}]({figures_dir}/{f.name}.png)" for f in FIGURES
                                         if f.tables and all(not get(t).empty for t in f.tables)), ""]
    return "\n".join(head + body).rstrip() + "\n", V


def write_summary(tables: dict[str, Path], out: str | Path, figures_dir: str | None = None) -> list[dict[str, str]]:
    md, V = build_summary(tables, figures_dir)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    return V
