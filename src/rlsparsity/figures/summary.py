"""results/SUMMARY.md: every headline number of this run next to the paper's, and one verdict
per claim (rendering only: the verdict rules are pure functions in
:mod:`rlsparsity.figures.verdicts` and :mod:`rlsparsity.figures.verdicts_accuracy`; only the
papers' numbers, in :mod:`rlsparsity.figures.paper`, are constants).

Verdicts: ``holds`` / ``fails`` (the claim's 95 % interval lies wholly on one side of its
threshold), ``inconclusive`` (it straddles the threshold, or one unit gives no interval),
``depends on precision`` (holds at some weight precisions, fails at others), ``no data``.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rlsparsity import stats as S
from rlsparsity.figures import FIGURES, paper
from rlsparsity.figures.rounding import section_rounding
from rlsparsity.figures.style import at_tol, order, order_precisions, read_table
from rlsparsity.figures.verdicts import on_policy, prec_of_label, sparsity_verdicts
from rlsparsity.figures.verdicts_accuracy import accuracy_verdicts, diff_interval, per_algorithm_intervals

HOLDS, FAILS, INCONCLUSIVE, DEPENDS, NODATA = S.HOLDS, S.FAILS, S.INCONCLUSIVE, S.DEPENDS, S.NODATA

METHODS = (f"Accuracy differences: {S.BOOTSTRAP} (runs and problems resampled independently, the same problem "
           f"draw for every run; {S.N_BOOT} replicates, seed {S.SEED}, 95 % percentile interval). Sparsity, overlap, "
           "rank, agreement and entropy shares: mean over runs (or pairs of runs; families and seeds pooled) with a "
           "95 % Student-t interval; one unit gives no interval. A verdict holds/fails only when the whole "
           "interval lies on one side of the claim's threshold, otherwise it is inconclusive.")


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


def _ci(values: Any, share: bool = True) -> str:
    """Mean [95 % t-interval]; ``share``: a fraction, its interval cut to [0, 1]."""
    return S.mean_interval(list(values), share=share).fmt()


def n_problems(T: dict[str, pd.DataFrame]) -> int | None:
    """Held-out problems per evaluation, from the per-problem outcome strings of any table."""
    for name, col in (("accuracy", "correct_trained"), ("subnetwork", "correct_full"), ("entropy", "correct_trained")):
        df = T.get(name, pd.DataFrame())
        if col in df:
            lens = {len(x) for x in df[col] if isinstance(x, str) and x}
            if lens:
                return max(lens)
    return None


# ------------------------------------------------------------------ sections (tables only)


def section_sparsity(sp: pd.DataFrame) -> list[str]:
    out = ["## Update sparsity (paper Table 1; tol 1e-5; mean [95 % t-interval over runs])", ""]
    if sp.empty:
        return out + ["No sparsity table in this run.", ""]
    d = on_policy(at_tol(sp, paper.PAPER_TOL))
    precs = order_precisions(d["precision"].astype(str))
    rows = []
    for alg in order(d["algorithm"]):
        cells = []
        for p in precs:
            q = d[(d["algorithm"] == alg) & (d["precision"] == p)]
            cells.append(_ci(q["sparsity"]) if len(q) else "–")
        rows.append([alg, paper.table1_text(alg)] + cells)
    out += [_table(["algorithm", "paper Table 1 (bf16)"] + [f"this run, {p}" for p in precs], rows), ""]
    dd = on_policy(sp)
    tols = sorted(dd["tolerance"].unique())
    t = dd.groupby(["precision", "algorithm", "tolerance"])["sparsity"].mean()
    rows = [[p, a] + [_f(t.get((p, a, tt))) for tt in tols]
            for p in precs for a in order(dd.loc[dd["precision"] == p, "algorithm"])]
    out += ["### Sparsity vs tolerance (paper Table 6 style; the paper reports 1e-8 … 1e-5, default 1e-5)", "",
            _table(["precision", "algorithm"] + [("0 (exact)" if tt == 0 else f"{tt:g}") for tt in tols], rows), ""]
    return out


def section_precision(sp: pd.DataFrame) -> list[str]:
    out = ["## Precision: genuinely unchanged vs below bf16 storage precision", ""]
    if sp.empty:
        return out + ["No sparsity table.", ""]
    from rlsparsity.figures.sparsity import decomposition_table

    t = decomposition_table(sp)
    rows = [[r["algorithm"], r["precision"], _f(r["unchanged"] / 100), _f(r["below_half_ulp"] / 100),
             _f(r["changed"] / 100), _f(r.get("sparsity_1e-05", float("nan")) / 100)] for _, r in t.iterrows()]
    return out + [_table(["algorithm", "precision", "unchanged (Δ=0)", "0<|Δ|<½ulp", "changed", "sparsity @1e-5"],
                         rows), ""]


def section_rank(rk: pd.DataFrame) -> list[str]:
    out = ["## Update rank (rank / min(m, n), mean over matrices)", ""]
    if rk.empty:
        return out + ["No rank table.", ""]
    d = rk[np.isfinite(pd.to_numeric(rk["rank_fraction"], errors="coerce")) & (rk["matrix_type"] != "norm")]
    rows = []
    for a in order(d["algorithm"]):
        for p in order_precisions(d.loc[d["algorithm"] == a, "precision"].astype(str)):
            q = d[(d["algorithm"] == a) & (d["precision"] == p)]
            rows.append([a, p, f"{paper.RANK[a][1]} % ({paper.RANK[a][0]})" if a in paper.RANK else "–",
                         _f(q["rank_fraction"].mean(), 2), _f(q["rank_fraction"].min(), 1), len(q)])
    return out + [_table(["algorithm", "precision", "paper mean", "this run mean", "min", "matrices"], rows), ""]


def section_overlap(ov: pd.DataFrame) -> list[str]:
    out = ["## Subnetwork overlap vs chance (mean [95 % t-interval over pairs of runs])", ""]
    if ov.empty:
        return out + ["No overlap table.", ""]
    d = ov.assign(obs=(ov["o1"] + ov["o2"]) / 2, chance=(ov["o1_random"] + ov["o2_random"]) / 2,
                  precision=ov["run_a"].map(prec_of_label))
    rows = []
    for (m, a), g in d.groupby(["mask", "axis"]):
        rows.append([m, a, _ci(g["o1"]), _ci(g["o2"]), _f(g["o1_random"].mean()), _f(g["o2_random"].mean()),
                     _ci(g["obs"] - g["chance"], share=False), len(g),
                     "60.5 / 60.6 vs 36.7 / 36.7" if (a == "seed" and m == "exact") else "above chance"])
    return out + [_table(["mask", "runs differ in", "o1", "o2", "o1 random", "o2 random", "obs − chance", "pairs",
                          "paper"], rows), ""]


def section_layers(ly: pd.DataFrame) -> list[str]:
    out = ["## Layer distribution", ""]
    if ly.empty:
        return out + ["No layers table.", ""]
    d = on_policy(at_tol(ly, paper.PAPER_TOL))
    g = d.groupby(["precision", "matrix_type"])["sparsity"].agg(["mean", "min", "max"]).reset_index()
    rows = [[r["precision"], r["matrix_type"], _f(r["mean"]), _f(r["min"]), _f(r["max"])] for _, r in g.iterrows()]
    return out + [_table(["precision", "matrix type", "mean sparsity", "min", "max"], rows), ""]


def section_dynamics(dy: pd.DataFrame) -> list[str]:
    out = ["## Dynamics", ""]
    q = dy[dy["quantity"].isin(list(paper.DYNAMICS_SPLIT))] if not dy.empty else dy
    if q.empty:
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
    return out


def section_data(sp: pd.DataFrame, ca: pd.DataFrame) -> list[str]:
    out = ["## Causes: in-distribution data (paper Table 5)", ""]
    if not sp.empty and "data" in sp and sp["data"].nunique() > 1:
        d = at_tol(sp, paper.PAPER_TOL)
        t = d.groupby(["precision", "algorithm", "data"])["sparsity"].mean().unstack("data").dropna()
        rows = [[p, a, _f(r.get("on_policy")), _f(r.get("off_policy"))] for (p, a), r in t.iterrows()]
        out += [_table(["precision", "algorithm", "on-policy data", "off-policy data"], rows),
                "", "Paper: DPO off-policy 6.8–7.7 %, in-distribution 81.4 %; rejection-sampling SFT 91.2 %.", ""]
    if not ca.empty:
        from rlsparsity.figures.causes import causes_table

        ct = causes_table(ca)
        rows = [[r["ablation"], r["setting"], r["precision"], _f(r["sparsity"] / 100),
                 ("–" if r["paper"] is None else (f"{r['paper'][0]}" if r["paper"][0] == r["paper"][1]
                                                  else f"{r['paper'][0]}–{r['paper'][1]}") + " %")]
                for _, r in ct.iterrows()]
        cols = ["ablation", "setting", "precision", "sparsity", "paper"]
        out += ["### Ablations (causes.csv)", "", _table(cols, rows), ""]
    if len(out) == 2:
        out += ["No data-source axis or causes table in this run.", ""]
    return out


def section_accuracy(ac: pd.DataFrame) -> list[str]:
    out = [f"## Held-out accuracy (Δ: mean [95 % {S.BOOTSTRAP}])", ""]
    if ac.empty:
        return out + ["No accuracy table.", ""]
    rows = []
    for (p, a), q in ac.groupby(["precision", "algorithm"]):
        iv = diff_interval(
            list(q.get("correct_trained", [None] * len(q))),
            list(q.get("correct_base", [None] * len(q))),
            list(q["acc_trained"]),
            list(q["acc_base"]),
        )
        rows.append([p, a, _f(q["acc_base"].mean()), _f(q["acc_trained"].mean()), iv.fmt(unit=" pts"), len(q)])
    out += [_table(["precision", "algorithm", "base", "trained", "Δ [95 % CI]", "runs"], rows), ""]
    prec, ivs = per_algorithm_intervals(ac)
    if ivs:
        out += [
            f"Per paper algorithm ({prec}, on-policy, all families and seeds): "
            + "; ".join(f"{a} {iv.fmt(unit=' pts')}" for a, iv in ivs.items()),
            "",
        ]
    return out


def section_subnetwork(sn: pd.DataFrame) -> list[str]:
    out = ["## Subnetwork finetune", ""]
    if sn.empty:
        return out + ["No subnetwork table in this run.", ""]
    runs = sn.drop_duplicates(["family", "algorithm", "seed", "precision", "mask"])
    a5 = at_tol(sn, paper.SUBNETWORK_AGREEMENT_TOL)
    rows = []
    for (p, a, m), q in runs.groupby(["precision", "algorithm", "mask"]):
        g5 = a5[(a5["precision"] == p) & (a5["algorithm"] == a) & (a5["mask"] == m)]
        pa = paper.SUBNETWORK_ACCURACY.get(a)
        rows.append(
            [
                p,
                a,
                m,
                _f(q["acc_base"].mean()),
                _f(q["acc_full"].mean()),
                _f(q["acc_subnetwork"].mean()),
                _f(q["sparsity_subnetwork"].mean()) if "sparsity_subnetwork" in q else "–",
                _f(g5["agreement_on_mask"].mean()) if "agreement_on_mask" in g5 else "–",
                _f(g5["agreement"].mean()),
                f"{pa[1]} → {pa[2]}; {paper.SUBNETWORK_AGREEMENT[a]} %" if pa else "–",
            ]
        )
    return out + [
        _table(
            [
                "precision",
                "algorithm",
                "mask",
                "base",
                "full",
                "masked rerun",
                "rerun sparsity (realised)",
                "agreement @1e-5 on mask",
                "all entries",
                "paper (acc full → sub; agreement, all)",
            ],
            rows,
        ),
        "",
    ]


def section_entropy(en: pd.DataFrame, es: pd.DataFrame) -> list[str]:
    out = ["## Token entropy (arXiv 2506.01939)", ""]
    from rlsparsity.figures.entropy import entropy_summary, entropy_table

    if not es.empty:
        summ = entropy_summary(es)
        rows = [
            [
                "paper (Qwen3-8B)",
                f"{paper.ENTROPY_FRAC_BELOW_001} %",
                paper.ENTROPY_P80,
                "–",
                f"{paper.ENTROPY_HIGH_OVERLAP} %",
            ]
        ]
        rows += [
            [
                k,
                _f(e["frac_below_001"], scale=1),
                "–" if e["p80"] is None else f"{e['p80']:.3g}",
                "–" if e["mean"] is None else f"{e['mean']:.3g}",
                _f(e["overlap"], scale=1),
            ]
            for k, e in summ.items()
        ]
        out += [_table(["model", "H < 0.01", "p80 (nats)", "mean", "high-H overlap"], rows), ""]
    if en.empty:
        return out + ["No entropy-restriction table in this run.", ""]
    t = entropy_table(en)
    rows = [
        [
            r["label"],
            r["normaliser"],
            _f(r["acc_base"] / 100),
            _f(r["acc_trained"] / 100),
            f"{r['kept_fraction']:.3f}",
            _f(r["sparsity"] / 100),
            r["n"],
        ]
        for _, r in t.iterrows()
    ]
    out += [
        _table(["tokens trained", "normaliser", "base", "trained", "kept fraction", "sparsity", "runs"], rows),
        "",
        "Normalisers by source: *kept* = official code (token mean over the kept tokens), *all* = paper "
        "equation / TRL (divided by all response tokens). Paper (Qwen3-32B): AIME'24 55.83 → 63.54, AIME'25 "
        "45.63 → 56.67 (all tokens → top 20 %); bottom 80 % hurts badly.",
        "",
    ]
    return out


def section_public(pp: pd.DataFrame) -> list[str]:
    if pp.empty:
        return []
    col = "sparsity_1e-05" if "sparsity_1e-05" in pp else None
    rows = [
        [r["pair"], r["algorithm"], r["paper_sparsity"], _f(r[col]) if col else "–", _f(r.get("below_bf16_half_ulp"))]
        for _, r in pp.iterrows()
    ]
    return [
        "## Public pairs (the paper's own checkpoints)",
        "",
        _table(["pair", "algorithm", "paper %", "this run @1e-5", "below ½ ulp"], rows),
        "",
    ]


def build_summary(tables: dict[str, Path], figures_dir: str | None = None) -> tuple[str, list[dict[str, str]]]:
    """(markdown, verdicts) from whichever tables exist."""
    T = {k: read_table(p) if Path(p).exists() else pd.DataFrame() for k, p in tables.items()}
    get: Callable[[str], pd.DataFrame] = lambda k: T.get(k, pd.DataFrame())  # noqa: E731
    V = sparsity_verdicts(T) + accuracy_verdicts(T)
    body: list[str] = []
    body += section_sparsity(get("sparsity"))
    body += section_precision(get("sparsity"))
    body += section_rounding(get("precision_rounding"))
    body += section_rank(get("rank"))
    body += section_overlap(get("overlap"))
    body += section_layers(get("layers"))
    body += section_dynamics(get("dynamics"))
    body += section_data(get("sparsity"), get("causes"))
    body += section_subnetwork(get("subnetwork"))
    body += section_entropy(get("entropy"), get("entropy_stats"))
    body += section_accuracy(get("accuracy"))
    body += section_public(get("public_pairs"))
    used = [f"`{Path(p).name}`" for k, p in tables.items() if not get(k).empty]
    n = n_problems(T)
    probs = f"{n} held-out problems per evaluation" if n else "held-out problems (count not recorded in these tables)"
    head = [
        "# rlsparsity — results summary",
        "",
        f"Generated by `rlsparsity summary` on {_dt.date.today().isoformat()} from {', '.join(used) or 'no tables'}. "
        "Every number of this run is computed from those tables; the papers' numbers come from "
        f"`rlsparsity.figures.paper` (arXiv 2505.11711, arXiv 2506.01939). Tiny models and {probs}: read the "
        "verdicts as whether the *pattern* holds here, not as a replication of the values.",
        "",
        "## Verdicts",
        "",
        METHODS,
        "",
        _table(
            ["claim", "paper", "this run: estimate [95 % interval]", "verdict"],
            [[v["claim"], v["paper"], v["ours"], f"**{v['verdict']}**"] for v in V],
        ),
        "",
        "Decision rules: " + "; ".join(f"*{v['claim']}*: {v['rule']}" for v in V if v["verdict"] != NODATA) + ".",
        "",
    ]
    if figures_dir:
        head += [
            "Figures: "
            + ", ".join(
                f"[{f.name}]({figures_dir}/{f.name}.png)"
                for f in FIGURES
                if f.tables and all(not get(t).empty for t in f.tables)
            ),
            "",
        ]
    return "\n".join(head + body).rstrip() + "\n", V


def write_summary(tables: dict[str, Path], out: str | Path, figures_dir: str | None = None) -> list[dict[str, str]]:
    import os

    md, V = build_summary(tables, figures_dir)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(md)
    os.replace(tmp, out)
    return V
