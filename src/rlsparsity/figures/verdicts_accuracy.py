"""Verdict rules of the accuracy-side claims (training helps, subnetwork finetune, token entropy):
pure functions from results tables to verdicts.

Accuracy differences use the paired bootstrap over problems and runs
(:func:`rlsparsity.stats.accuracy_difference`; the ``correct_*`` columns hold each run's
per-problem outcomes). Thresholds are tied to the claimed effect:

* "X recovers / matches Y" (subnetwork vs full run, top-20 % tokens vs all tokens) is judged
  against Y's own gain over the base: X may lose at most ``1 − RECOVER_MIN`` of that gain
  (holds when the interval of X − Y lies above −(1 − RECOVER_MIN)·gain, fails when it lies below);
  when Y's gain is not above zero (its interval reaches 0), there is nothing to recover and the
  verdict is inconclusive.
* "X beats Y" / "training improves": the interval of X − Y lies above 0 (holds), at or below
  0 (fails), or straddles it (inconclusive).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from rlsparsity import stats as S
from rlsparsity.figures import paper
from rlsparsity.figures.style import at_tol, order_precisions
from rlsparsity.figures.verdicts import NODATA, judged, verdict
from rlsparsity.grid import PAPER_ALGORITHMS

#: "recovers / matches": keep at least this share of the reference run's gain over the base.
RECOVER_MIN = 0.80
#: subnetwork rerun: share of the MASK's entries identical to the full run at tol 1e-5.
AGREEMENT_MIN = 0.90
#: 80/20 premise: share of tokens with H < 0.01 at least this (paper 50.64 %), per family's base.
LOW_ENTROPY_MIN = 0.40
#: mask active: |measured kept fraction − expected| at most this for every run.
KEPT_TOL = 0.05


def _col(df: pd.DataFrame, c: str) -> list[Any]:
    return list(df[c]) if c in df else [None] * len(df)


def diff_interval(a_bits: list[Any], b_bits: list[Any], a_acc: list[float], b_acc: list[float]) -> S.Interval:
    """Interval of mean accuracy(a) − accuracy(b) over paired units."""
    norm = [(x if isinstance(x, str) else None) for x in a_bits], [(x if isinstance(x, str) else None) for x in b_bits]
    return S.accuracy_difference(
        list(zip(*norm, strict=False)), [(float(x), float(y)) for x, y in zip(a_acc, b_acc, strict=False)]
    )


def improves(iv: S.Interval) -> str:
    """Claim x > 0: holds when low > 0, fails when high ≤ 0, else inconclusive."""
    if not iv.defined:
        return S.INCONCLUSIVE if iv.n else NODATA
    return S.HOLDS if iv.low > 0 else S.FAILS if iv.high <= 0 else S.INCONCLUSIVE


def recovers(diff: S.Interval, gain: S.Interval) -> tuple[str, float]:
    """(verdict, margin) of "X recovers the reference's gain": diff = X − reference, gain =
    reference − base (module doc)."""
    if improves(gain) != S.HOLDS:
        return (S.INCONCLUSIVE if gain.n else NODATA), float("nan")
    margin = (1.0 - RECOVER_MIN) * gain.estimate
    return S.decide(diff, -margin, ">="), margin


def hurts(diff: S.Interval, gain: S.Interval) -> tuple[str, float]:
    """(verdict, margin) of "X hurts": X − reference lies below −(1 − RECOVER_MIN)·gain (holds),
    at or above it (fails); inconclusive when the reference's gain is not above zero."""
    if improves(gain) != S.HOLDS:
        return (S.INCONCLUSIVE if gain.n else NODATA), float("nan")
    margin = (1.0 - RECOVER_MIN) * gain.estimate
    if not diff.defined:
        return S.INCONCLUSIVE, margin
    return (S.HOLDS if diff.high < -margin else S.FAILS if diff.low >= -margin else S.INCONCLUSIVE), margin


def _pts(iv: S.Interval) -> str:
    return iv.fmt(unit=" pts")


# ------------------------------------------------------------------ accuracy of the main grid


def training_improves(ac: pd.DataFrame) -> dict[str, str]:
    claim = "Training improves held-out accuracy (sanity, not a paper claim)"
    rule = f"per precision: trained − base accuracy, {S.BOOTSTRAP}; interval above 0"
    if ac.empty:
        return verdict(claim, "–", "–", NODATA, rule)
    parts = {}
    for p in order_precisions(ac["precision"].astype(str)):
        q = ac[ac["precision"].astype(str) == p]
        iv = diff_interval(
            _col(q, "correct_trained"), _col(q, "correct_base"), list(q["acc_trained"]), list(q["acc_base"])
        )
        parts[p] = (iv, improves(iv))
    v, detail = judged(parts, lambda iv: "Δ " + _pts(iv))
    return verdict(claim, "–", detail, v, rule)


def per_algorithm_intervals(ac: pd.DataFrame) -> tuple[str, dict[str, S.Interval]]:
    """(precision with most runs, {paper algorithm: interval of trained − base}) on on-policy runs."""
    main = ac[ac["algorithm"].isin(PAPER_ALGORITHMS)] if not ac.empty else ac
    if "data" in main and (main["data"] == "on_policy").any():
        main = main[main["data"] == "on_policy"]
    if main.empty:
        return "", {}
    prec = str(main["precision"].astype(str).value_counts().idxmax())
    q = main[main["precision"].astype(str) == prec]
    out = {}
    for a in PAPER_ALGORITHMS:
        g = q[q["algorithm"] == a]
        if len(g):
            out[a] = diff_interval(
                _col(g, "correct_trained"), _col(g, "correct_base"), list(g["acc_trained"]), list(g["acc_base"])
            )
    return prec, out


def every_algorithm_improves(ac: pd.DataFrame) -> dict[str, str]:
    rule = (
        f"per paper algorithm (on-policy, the precision with most runs): trained − base, {S.BOOTSTRAP}; holds "
        "if every interval lies above 0, fails if any lies at or below 0, else inconclusive"
    )
    prec, ivs = per_algorithm_intervals(ac)
    claim = f"Every paper algorithm raises held-out accuracy ({prec or 'main grid'}, sanity)"
    if not ivs:
        return verdict(claim, "–", "–", NODATA, rule)
    per = {a: improves(iv) for a, iv in ivs.items()}
    v = S.FAILS if S.FAILS in per.values() else S.HOLDS if set(per.values()) == {S.HOLDS} else S.INCONCLUSIVE
    detail = "; ".join(f"{a}: {_pts(iv)} ({per[a]})" for a, iv in ivs.items())
    return verdict(claim, "–", detail, v, rule)


# ------------------------------------------------------------------ subnetwork finetune


def _sub_runs(sn: pd.DataFrame, kind: str) -> pd.DataFrame:
    s = sn[sn["mask"] == kind]
    return s.drop_duplicates(["family", "algorithm", "seed", "precision"])


def subnetwork_recovers(sn: pd.DataFrame) -> dict[str, str]:
    claim, pap = "Finetuning only the subnetwork recovers full finetuning", "40.3 → 41.9 (DPO); 69.8 → 72.2 (PRIME)"
    rule = (
        f"per precision: sub − full accuracy ({S.BOOTSTRAP}) ≥ −{1 - RECOVER_MIN:.0%} of the full run's gain over "
        "base; inconclusive when that gain's interval reaches 0"
    )
    s = _sub_runs(sn, "subnetwork") if not sn.empty else sn
    if s.empty:
        return verdict(claim, pap, "–", NODATA, rule)
    parts, texts = {}, []
    for p in order_precisions(s["precision"].astype(str)):
        q = s[s["precision"].astype(str) == p]
        gain = diff_interval(_col(q, "correct_full"), _col(q, "correct_base"), list(q["acc_full"]), list(q["acc_base"]))
        diff = diff_interval(
            _col(q, "correct_subnetwork"), _col(q, "correct_full"), list(q["acc_subnetwork"]), list(q["acc_full"])
        )
        v, margin = recovers(diff, gain)
        parts[p] = (diff, v)
        texts.append(
            f"{p}: sub − full {_pts(diff)}, full − base {_pts(gain)}"
            + (f", margin −{margin * 100:.1f} pts" if np.isfinite(margin) else "")
            + f" ({v})"
        )
    v, _ = judged(parts)
    return verdict(claim, pap, "; ".join(texts), v, rule)


def subnetwork_agreement(sn: pd.DataFrame) -> dict[str, str]:
    claim = "Subnetwork rerun reproduces the full run's values (on the mask's entries)"
    pap = "94.0 / 90.5 % identical at 1e-5 (all entries)"
    rule = (
        f"per precision: share of the mask's entries with |θ_sub − θ_full| ≤ 1e-5, t-interval over runs "
        f"≥ {AGREEMENT_MIN:.0%} (all-entries agreement beside it: frozen entries agree by construction)"
    )
    s = at_tol(sn[sn["mask"] == "subnetwork"], paper.SUBNETWORK_AGREEMENT_TOL) if not sn.empty else sn
    if s.empty or "agreement_on_mask" not in s or s["agreement_on_mask"].isna().all():
        return verdict(claim, pap, "–", NODATA, rule + " (needs agreement_on_mask)")
    parts, texts = {}, []
    for p in order_precisions(s["precision"].astype(str)):
        q = s[s["precision"].astype(str) == p]
        iv = S.mean_interval(list(q["agreement_on_mask"]), share=True)
        v = S.decide(iv, AGREEMENT_MIN)
        parts[p] = (iv, v)
        everywhere = S.mean_interval(list(q["agreement"]), share=True)
        texts.append(f"{p}: on mask {iv.fmt()}, all entries {everywhere.fmt()} ({v})")
    v, _ = judged(parts)
    return verdict(claim, pap, "; ".join(texts), v, rule)


def subnetwork_beats_random(sn: pd.DataFrame) -> dict[str, str]:
    claim, pap = "The subnetwork beats a random mask of the same size", "(control, not in the paper)"
    rule = (
        f"subnetwork − random-mask accuracy, paired per source run, {S.BOOTSTRAP}; interval above 0 "
        "(each control's realised sparsity shown)"
    )
    if sn.empty or not (sn["mask"] == "random").any():
        return verdict(claim, pap, "–", NODATA, rule)
    key = ["family", "algorithm", "seed", "precision"]
    m = _sub_runs(sn, "subnetwork").merge(_sub_runs(sn, "random"), on=key, suffixes=("_s", "_r"))
    if m.empty:
        return verdict(claim, pap, "–", NODATA, rule)
    iv = diff_interval(
        _col(m, "correct_subnetwork_s"),
        _col(m, "correct_subnetwork_r"),
        list(m["acc_subnetwork_s"]),
        list(m["acc_subnetwork_r"]),
    )
    v = improves(iv)
    rs = S.mean_interval(list(m["sparsity_subnetwork_r"]), share=True) if "sparsity_subnetwork_r" in m else None
    ss = S.mean_interval(list(m["sparsity_subnetwork_s"]), share=True) if "sparsity_subnetwork_s" in m else None
    ours = f"sub − random {_pts(iv)}" + (f"; realised sparsity sub {ss.fmt()}, random {rs.fmt()}" if rs and ss else "")
    return verdict(claim, pap, ours, v, rule)


# ------------------------------------------------------------------ token entropy


def low_entropy_premise(es: pd.DataFrame) -> dict[str, str]:
    claim, pap = "Most tokens are low-entropy (80/20 premise)", "50.64 % below 0.01; p80 0.672"
    rule = f"share of the base's sampled tokens with H < 0.01, one value per family; t-interval ≥ {LOW_ENTROPY_MIN:.0%}"
    col = "frac_below_1e-2"
    b = es[es["model"].astype(str) == "base"] if not es.empty and "model" in es and col in es else pd.DataFrame()
    if b.empty:
        return verdict(claim, pap, "–", NODATA, rule)
    iv = S.mean_interval(list(b.groupby("family")[col].mean()))
    return verdict(claim, pap, f"{iv.fmt()} (families: {iv.n})", S.decide(iv, LOW_ENTROPY_MIN), rule)


def _entropy_pairs(en: pd.DataFrame, rho: float, variant: str) -> pd.DataFrame:
    """Runs of (ρ, variant) joined with the all-token run (ρ = 1, top) of the same family, seed,
    precision and normaliser ``kept``."""
    key = ["family", "seed", "precision", "normaliser"]
    ref = en[np.isclose(en["rho"], 1.0) & (en["variant"] == "top")]
    x = en[np.isclose(en["rho"], rho) & (en["variant"] == variant)]
    if "normaliser" in en and (en["normaliser"] == "kept").any():
        ref, x = ref[ref["normaliser"] == "kept"], x[x["normaliser"] == "kept"]
    return x.merge(ref, on=[k for k in key if k in en], suffixes=("_x", "_all"))


def _entropy_compare(en: pd.DataFrame, rho: float, variant: str) -> tuple[S.Interval, S.Interval] | None:
    m = _entropy_pairs(en, rho, variant) if not en.empty else pd.DataFrame()
    if m.empty:
        return None
    diff = diff_interval(
        _col(m, "correct_trained_x"),
        _col(m, "correct_trained_all"),
        list(m["acc_trained_x"]),
        list(m["acc_trained_all"]),
    )
    gain = diff_interval(
        _col(m, "correct_trained_all"), _col(m, "correct_base_all"), list(m["acc_trained_all"]), list(m["acc_base_all"])
    )
    return diff, gain


def top20_matches_all(en: pd.DataFrame) -> dict[str, str]:
    claim, pap = "Top-20 % high-entropy tokens match or beat all tokens", "+7.7 / +11.0 AIME points"
    rule = (
        f"top-20 % − all-token accuracy (normaliser: official code, kept), {S.BOOTSTRAP}, ≥ −{1 - RECOVER_MIN:.0%} "
        "of the all-token run's gain over base; inconclusive when that gain's interval reaches 0"
    )
    c = _entropy_compare(en, paper.ENTROPY_RHO, "top")
    if c is None:
        return verdict(claim, pap, "–", NODATA, rule)
    diff, gain = c
    v, margin = recovers(diff, gain)
    return verdict(claim, pap, f"top-20 % − all {_pts(diff)}; all − base {_pts(gain)}", v, rule)


def bottom80_hurts(en: pd.DataFrame) -> dict[str, str]:
    claim, pap = "Training only on the bottom-80 % tokens hurts", "hurts badly"
    rule = (
        f"bottom-80 % − all-token accuracy, {S.BOOTSTRAP}: below −{1 - RECOVER_MIN:.0%} of the all-token run's "
        "gain (holds), at or above it (fails); inconclusive when that gain's interval reaches 0"
    )
    en_b = en
    if not en.empty:
        rho_b = en.loc[en["variant"] == "bottom", "rho"]
        rho = float(rho_b.iloc[0]) if len(rho_b) else 0.8
        c = _entropy_compare(en_b, rho, "bottom")
    else:
        c = None
    if c is None:
        return verdict(claim, pap, "–", NODATA, rule)
    diff, gain = c
    v, _ = hurts(diff, gain)
    return verdict(claim, pap, f"bottom − all {_pts(diff)}; all − base {_pts(gain)}", v, rule)


def mask_active(en: pd.DataFrame) -> dict[str, str]:
    claim, pap = "The entropy mask is active (kept fraction ≈ ρ)", "(the official code once trained the baseline)"
    rule = f"every run: |mean kept fraction − expected| ≤ {KEPT_TOL} (expected: ρ for top-ρ, 0.8 for bottom-80 %)"
    if en.empty or "kept_fraction" not in en:
        return verdict(claim, pap, "–", NODATA, rule)
    err = float((en["kept_fraction"] - en["rho"]).abs().max())
    return verdict(
        claim,
        pap,
        f"max |kept − expected| {err:.3f} over {len(en)} runs",
        S.HOLDS if err <= KEPT_TOL else S.FAILS,
        rule,
    )


def accuracy_verdicts(T: dict[str, pd.DataFrame]) -> list[dict[str, str]]:
    """Every accuracy-side verdict, in SUMMARY order."""
    g = lambda k: T.get(k, pd.DataFrame())  # noqa: E731
    return [
        subnetwork_recovers(g("subnetwork")),
        subnetwork_agreement(g("subnetwork")),
        subnetwork_beats_random(g("subnetwork")),
        low_entropy_premise(g("entropy_stats")),
        top20_matches_all(g("entropy")),
        bottom80_hurts(g("entropy")),
        mask_active(g("entropy")),
        training_improves(g("accuracy")),
        every_algorithm_improves(g("accuracy")),
    ]
