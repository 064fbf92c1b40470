"""Every verdict rule of SUMMARY.md, both ways (holds and fails, and inconclusive where an interval
can straddle the threshold), on hand-built tables."""

from __future__ import annotations

import pandas as pd
import pytest

from rlsparsity.figures import verdicts as V
from rlsparsity.figures import verdicts_accuracy as A
from rlsparsity.stats import DEPENDS, FAILS, HOLDS, INCONCLUSIVE, NODATA

N = 200


def bits(k: int, start: int = 0, n: int = N) -> str:
    """n outcomes, problems [start, start + k) correct."""
    return "".join("1" if start <= i < start + k else "0" for i in range(n))


def sp_table(values: list[tuple[str, str, str, str, int, float]], tol: float = 1e-5) -> pd.DataFrame:
    """sparsity.csv rows (algorithm, precision, data, family, seed, sparsity)."""
    return pd.DataFrame([{"family": f, "algorithm": a, "data": d, "precision": p, "seed": s, "tolerance": tol,
                          "sparsity": v, "below_bf16_half_ulp": 0.0} for a, p, d, f, s, v in values])


def rl(prec: str, vals: list[float], alg: str = "grpo") -> list[tuple]:
    return [(alg, prec, "on_policy", f"fam{i}", 1, v) for i, v in enumerate(vals)]


# ------------------------------------------------------------------ sparsity side


@pytest.mark.parametrize("vals,expect", [([0.80, 0.82, 0.81], HOLDS), ([0.50, 0.52, 0.51], FAILS),
                                         ([0.62, 0.80], INCONCLUSIVE), ([0.9], INCONCLUSIVE)])
def test_rl_sparse(vals, expect):
    assert V.rl_sparse(sp_table(rl("bf16", vals)))["verdict"] == expect


def test_rl_sparse_per_precision_and_empty():
    t = sp_table(rl("bf16", [0.8, 0.81, 0.82]) + rl("fp32", [0.1, 0.11, 0.12]))
    assert V.rl_sparse(t)["verdict"] == DEPENDS
    assert V.rl_sparse(sp_table([]))["verdict"] == NODATA
    # SFT and off-policy rows are not part of the claim
    t = sp_table(rl("bf16", [0.8, 0.81, 0.82]) + [("sft", "bf16", "on_policy", "fam0", 1, 0.0),
                                                  ("grpo", "bf16", "off_policy", "fam0", 1, 0.0)])
    assert V.rl_sparse(t)["verdict"] == HOLDS


def _sft(rl_vals: list[float], sft_vals: list[float]) -> pd.DataFrame:
    rows = [("grpo", "bf16", "on_policy", "llama", s, v) for s, v in enumerate(rl_vals)]
    rows += [("sft", "bf16", "on_policy", "llama", s, v) for s, v in enumerate(sft_vals)]
    return sp_table(rows)


@pytest.mark.parametrize(
    "rl_vals,sft_vals,expect",
    [([0.8, 0.81], [0.2, 0.2], HOLDS), ([0.8, 0.81], [0.79, 0.8], FAILS), ([0.8, 0.8], [0.75, 0.55], INCONCLUSIVE)],
)
def test_sft_dense(rl_vals, sft_vals, expect):
    assert V.sft_dense(_sft(rl_vals, sft_vals))["verdict"] == expect


@pytest.mark.parametrize(
    "fp32,expect", [([0.80, 0.81, 0.82], HOLDS), ([0.05, 0.06, 0.04], FAILS), ([0.5, 0.9], INCONCLUSIVE)]
)
def test_survives_fp32_asks_the_fp32_runs(fp32, expect):
    t = sp_table(rl("bf16", [0.9, 0.91, 0.92]) + rl("fp32", fp32))
    v = V.survives_fp32(t)
    assert v["verdict"] == expect and "bf16: 91.0" in v["ours"]
    # bf16 alone cannot answer it (the old rule repeated the first claim's computation)
    assert V.survives_fp32(sp_table(rl("bf16", [0.9, 0.91])))["verdict"] == NODATA


def _rank(per_run: list[float]) -> pd.DataFrame:
    rows = [
        {
            "family": "llama",
            "algorithm": "grpo",
            "data": "on_policy",
            "precision": "bf16",
            "seed": s,
            "tensor": f"t{j}",
            "matrix_type": mt,
            "rank": 0,
            "max_rank": 64,
            "rank_fraction": v if mt != "norm" else 0.0,
        }
        for s, v in enumerate(per_run)
        for j, mt in enumerate(["q", "v", "norm"])
    ]
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    "vals,expect", [([1.0, 1.0, 1.0], HOLDS), ([0.9, 0.91, 0.92], FAILS), ([0.97, 1.0], INCONCLUSIVE)]
)
def test_full_rank_ignores_norms(vals, expect):
    assert V.full_rank(_rank(vals))["verdict"] == expect


def _ov(axis: str, gaps: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "family": "llama",
                "axis": axis,
                "mask": "exact",
                "run_a": "grpo:on_policy:bf16:s1",
                "run_b": "grpo:on_policy:bf16:s2",
                "o1": 0.4 + g,
                "o2": 0.4 + g,
                "o1_random": 0.4,
                "o2_random": 0.4,
            }
            for g in gaps
        ]
    )


@pytest.mark.parametrize("axis", ["seed", "algorithm", "data"])
@pytest.mark.parametrize("gaps,expect", [([0.3, 0.31], HOLDS), ([0.0, 0.01, 0.0], FAILS), ([0.0, 0.3], INCONCLUSIVE)])
def test_overlap_each_axis(axis, gaps, expect):
    got = {v["claim"]: v["verdict"] for v in V.overlap(_ov(axis, gaps))}
    claim = next(c for a, c, _ in V.OVERLAP_CLAIMS if a == axis)
    assert got[claim] == expect
    assert [v for c, v in got.items() if c != claim] == [NODATA, NODATA]


def _layers(norm: list[float], rest: float = 0.01, spread: list[float] | None = None) -> pd.DataFrame:
    rows = []
    for s, nv in enumerate(norm):
        sp = (spread or [0.0] * len(norm))[s]
        for layer, mt, v in ((0, "q", rest), (1, "q", rest + sp), (0, "norm", nv), (-1, "embed", 0.0)):
            rows.append(
                {
                    "family": "llama",
                    "algorithm": "grpo",
                    "data": "on_policy",
                    "precision": "bf16",
                    "seed": s,
                    "layer": layer,
                    "matrix_type": mt,
                    "tolerance": 1e-5,
                    "sparsity": v,
                }
            )
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    "spread,expect", [([0.01, 0.02, 0.0], HOLDS), ([0.5, 0.6, 0.55], FAILS), ([0.05, 0.45], INCONCLUSIVE)]
)
def test_layers_spread(spread, expect):
    assert V.layers_spread(_layers([0.9] * len(spread), rest=0.3, spread=spread))["verdict"] == expect


@pytest.mark.parametrize(
    "norm,expect", [([0.95, 0.96, 0.97], HOLDS), ([0.02, 0.02, 0.03], FAILS), ([0.2, 0.9], INCONCLUSIVE)]
)
def test_norms_must_be_mostly_unchanged(norm, expect):
    # rest 1 %: norms at 2 % are "sparser than the rest" (the old rule passed) but not barely updated
    assert V.norms_unchanged(_layers(norm, rest=0.01))["verdict"] == expect


def _dyn(never: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "family": "llama",
                "algorithm": "grpo",
                "data": "on_policy",
                "precision": "bf16",
                "seed": s,
                "point": "final",
                "step": 20,
                "quantity": "never_updated",
                "tolerance": 0.0,
                "value": v,
            }
            for s, v in enumerate(never)
        ]
    )


@pytest.mark.parametrize("never,expect", [([0.75, 0.76], HOLDS), ([0.3, 0.31], FAILS), ([0.3, 0.8], INCONCLUSIVE)])
def test_never_updated(never, expect):
    assert V.never_updated(_dyn(never))["verdict"] == expect
    assert V.never_updated(pd.DataFrame())["verdict"] == NODATA


def _data(on: list[float], off: list[float]) -> pd.DataFrame:
    rows = [("dpo", "bf16", "on_policy", "llama", s, v) for s, v in enumerate(on)]
    rows += [("dpo", "bf16", "off_policy", "llama", s, v) for s, v in enumerate(off)]
    return sp_table(rows)


@pytest.mark.parametrize(
    "on,off,expect",
    [
        ([0.8, 0.81], [0.1, 0.1], HOLDS),
        ([0.8, 0.81, 0.8], [0.8, 0.8, 0.8], FAILS),
        ([0.8], [0.1], INCONCLUSIVE),
        ([0.8, 0.8], [0.8, 0.5], INCONCLUSIVE),
    ],
)
def test_data_drives(on, off, expect):
    assert V.data_drives(_data(on, off))["verdict"] == expect


def _kl(cells: dict[str, tuple[list[float], list[float]]], prec: str = "bf16") -> pd.DataFrame:
    rows = []
    for alg, (on, off) in cells.items():
        for setting, vals in (("kl_on", on), ("kl_off", off)):
            rows += [
                {
                    "family": "llama",
                    "ablation": f"{alg}_kl",
                    "setting": setting,
                    "precision": prec,
                    "algorithm": alg,
                    "seed": s,
                    "sparsity": v,
                }
                for s, v in enumerate(vals, 1)
            ]
    return pd.DataFrame(rows)


def test_kl_does_not_pool_algorithms():
    # GRPO ~80 %, PPO ~30 %, KL changes neither: the pooled "range" (50 pts) was the algorithm gap
    t = _kl({"grpo": ([0.80, 0.81, 0.80], [0.80, 0.80, 0.80]), "ppo": ([0.30, 0.31, 0.30], [0.31, 0.31, 0.31])})
    assert V.kl_barely_matters(t)["verdict"] == HOLDS


@pytest.mark.parametrize(
    "on,off,expect",
    [([0.8, 0.81], [0.5, 0.51], FAILS), ([0.8], [0.8], INCONCLUSIVE), ([0.8, 0.9], [0.8, 0.8], INCONCLUSIVE)],
)
def test_kl_fails_and_inconclusive(on, off, expect):
    assert V.kl_barely_matters(_kl({"grpo": (on, off)}))["verdict"] == expect


def test_kl_mixed_and_empty():
    t = _kl({"grpo": ([0.8, 0.81, 0.8], [0.8, 0.8, 0.8]), "ppo": ([0.8, 0.81, 0.8], [0.3, 0.31, 0.3])})
    assert V.kl_barely_matters(t)["verdict"] == "depends on algorithm/precision"
    assert V.kl_barely_matters(pd.DataFrame())["verdict"] == NODATA


# ------------------------------------------------------------------ accuracy side


def _acc(deltas: list[tuple[int, int]], alg: str = "grpo", prec: str = "bf16") -> pd.DataFrame:
    """accuracy.csv rows; (base correct, trained correct) counts, trained solving a superset."""
    return pd.DataFrame(
        [
            {
                "family": f"f{i}",
                "algorithm": alg,
                "data": "on_policy",
                "precision": prec,
                "seed": 1,
                "acc_base": b / N,
                "acc_trained": t / N,
                "correct_base": bits(b),
                "correct_trained": bits(t),
            }
            for i, (b, t) in enumerate(deltas)
        ]
    )


def test_training_improves():
    assert A.training_improves(_acc([(40, 60), (40, 64)]))["verdict"] == HOLDS
    assert A.training_improves(_acc([(40, 40), (40, 40)]))["verdict"] == FAILS  # Δ exactly 0
    assert A.training_improves(_acc([(60, 40), (60, 44)]))["verdict"] == FAILS
    mixed = _acc([(40, 40)])
    mixed.loc[0, "correct_trained"] = bits(39, start=1)[:-1] + "1"  # one problem lost, one gained
    assert A.training_improves(mixed)["verdict"] == INCONCLUSIVE
    assert A.training_improves(pd.DataFrame())["verdict"] == NODATA


def test_training_improves_without_outcomes_uses_t_interval():
    df = _acc([(40, 60), (40, 64), (40, 62)]).drop(columns=["correct_base", "correct_trained"])
    v = A.training_improves(df)
    # deltas 10, 12, 11 pts: mean 11, half-width t(2) · 1 / √3 = 4.3027 / 1.7321 = 2.48 pts
    assert (
        v["verdict"] == HOLDS
        and "Δ 11.0 pts [8.5, 13.5]" in v["ours"]
        and "no per-problem" in v["rule"] + A.diff_interval([None] * 3, [None] * 3, [0.3, 0.32, 0.31], [0.2] * 3).method
    )


def test_every_algorithm_improves():
    ok = pd.concat([_acc([(40, 60), (40, 62)], alg=a) for a in ("grpo", "dpo")])
    assert A.every_algorithm_improves(ok)["verdict"] == HOLDS
    bad = pd.concat([_acc([(40, 60), (40, 62)], alg="grpo"), _acc([(40, 30), (40, 30)], alg="dpo")])
    assert A.every_algorithm_improves(bad)["verdict"] == FAILS
    unsure = pd.concat([_acc([(40, 60), (40, 62)], alg="grpo"), _acc([(40, 40), (40, 42)], alg="dpo")])
    assert A.every_algorithm_improves(unsure)["verdict"] == INCONCLUSIVE


def _sn(
    cases: list[tuple[int, int, int, int]], agree_mask: list[float] | None = None, agree_all: float = 0.99
) -> pd.DataFrame:
    """subnetwork.csv rows at tol 1e-5: (base, full, subnetwork, random) correct counts per source run."""
    rows = []
    for i, (b, f, s, r) in enumerate(cases):
        for mask, k, sparsity in (("subnetwork", s, 0.9), ("random", r, 0.95)):
            rows.append(
                {
                    "family": f"f{i}",
                    "algorithm": "grpo",
                    "seed": 1,
                    "precision": "bf16",
                    "mask": mask,
                    "tolerance": 1e-5,
                    "acc_base": b / N,
                    "acc_full": f / N,
                    "acc_subnetwork": k / N,
                    "agreement": agree_all,
                    "agreement_on_mask": (agree_mask or [0.95] * len(cases))[i],
                    "sparsity_subnetwork": sparsity,
                    "correct_base": bits(b),
                    "correct_full": bits(f),
                    "correct_subnetwork": bits(k),
                }
            )
    return pd.DataFrame(rows)


def test_subnetwork_recovers_is_judged_against_the_gain():
    assert A.subnetwork_recovers(_sn([(40, 80, 80, 40), (40, 82, 82, 40)]))["verdict"] == HOLDS
    assert A.subnetwork_recovers(_sn([(40, 80, 40, 40), (40, 82, 42, 40)]))["verdict"] == FAILS
    # full run gained 1 problem in 200: nothing to recover, whatever the subnetwork does
    assert A.subnetwork_recovers(_sn([(40, 41, 30, 40)]))["verdict"] == INCONCLUSIVE
    # the margin scales with the gain: losing 3 of a 40-problem gain is within 20 %, of a 10-problem gain not
    big = A.subnetwork_recovers(_sn([(40, 80, 77, 40), (40, 80, 77, 40)]))
    small = A.subnetwork_recovers(_sn([(40, 50, 47, 40), (40, 50, 47, 40)]))
    assert big["verdict"] == HOLDS and small["verdict"] in (FAILS, INCONCLUSIVE) and "margin −4.0 pts" in big["ours"]


def test_subnetwork_agreement_counts_the_mask_entries():
    assert A.subnetwork_agreement(_sn([(40, 80, 80, 40)] * 3, [0.95, 0.96, 0.95]))["verdict"] == HOLDS
    # 99 % of all entries agree (frozen entries agree by construction), half the mask's entries do not
    v = A.subnetwork_agreement(_sn([(40, 80, 80, 40)] * 2, [0.50, 0.52], agree_all=0.99))
    assert v["verdict"] == FAILS and "all entries 99.0" in v["ours"]
    assert A.subnetwork_agreement(_sn([(40, 80, 80, 40)] * 2, [0.80, 0.99]))["verdict"] == INCONCLUSIVE
    assert A.subnetwork_agreement(_sn([(40, 80, 80, 40)]).drop(columns="agreement_on_mask"))["verdict"] == NODATA


def test_subnetwork_beats_random():
    v = A.subnetwork_beats_random(_sn([(40, 80, 80, 40), (40, 80, 78, 42)]))
    assert v["verdict"] == HOLDS and "random 95.0" in v["ours"]  # the control's realised sparsity is shown
    assert A.subnetwork_beats_random(_sn([(40, 80, 60, 60)]))["verdict"] == FAILS
    t = _sn([(40, 80, 60, 60)])
    t.loc[t["mask"] == "random", "correct_subnetwork"] = bits(60, start=1)
    assert A.subnetwork_beats_random(t)["verdict"] == INCONCLUSIVE
    assert A.subnetwork_beats_random(t[t["mask"] == "subnetwork"])["verdict"] == NODATA


def _es(fracs: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"family": f"f{i}", "model": m, "frac_below_1e-2": v if m == "base" else 0.0}
            for i, v in enumerate(fracs)
            for m in ("base", "top0.2")
        ]
    )


@pytest.mark.parametrize(
    "fracs,expect",
    [([0.5, 0.52, 0.51], HOLDS), ([0.02, 0.03], FAILS), ([0.1, 0.8], INCONCLUSIVE), ([0.9], INCONCLUSIVE)],
)
def test_low_entropy_premise(fracs, expect):
    assert A.low_entropy_premise(_es(fracs))["verdict"] == expect


def _en(cases: list[tuple[int, int, int, int]], kept_err: float = 0.0) -> pd.DataFrame:
    """entropy.csv rows: (base, all-tokens, top-20 %, bottom-80 %) correct counts per (family, seed)."""
    rows = []
    for i, (b, a, t, bo) in enumerate(cases):
        for rho, var, k in ((1.0, "top", a), (0.2, "top", t), (0.8, "bottom", bo)):
            rows.append(
                {
                    "family": f"f{i}",
                    "seed": 1,
                    "precision": "bf16",
                    "normaliser": "kept",
                    "rho": rho,
                    "variant": var,
                    "acc_base": b / N,
                    "acc_trained": k / N,
                    "kept_fraction": rho + kept_err,
                    "correct_base": bits(b),
                    "correct_trained": bits(k),
                }
            )
    return pd.DataFrame(rows)


def test_top20_matches_all():
    assert A.top20_matches_all(_en([(40, 80, 84, 40), (40, 80, 80, 40)]))["verdict"] == HOLDS
    assert A.top20_matches_all(_en([(40, 80, 50, 40), (40, 80, 52, 40)]))["verdict"] == FAILS
    assert A.top20_matches_all(_en([(40, 40, 60, 40)]))["verdict"] == INCONCLUSIVE  # all tokens did not learn
    assert A.top20_matches_all(pd.DataFrame())["verdict"] == NODATA


def test_bottom80_hurts():
    assert A.bottom80_hurts(_en([(40, 80, 80, 40), (40, 80, 80, 42)]))["verdict"] == HOLDS
    assert A.bottom80_hurts(_en([(40, 80, 80, 80), (40, 80, 80, 82)]))["verdict"] == FAILS
    assert A.bottom80_hurts(_en([(40, 40, 40, 30)]))["verdict"] == INCONCLUSIVE


def test_mask_active():
    assert A.mask_active(_en([(40, 80, 80, 40)], kept_err=0.004))["verdict"] == HOLDS
    assert A.mask_active(_en([(40, 80, 80, 40)], kept_err=0.2))["verdict"] == FAILS
    assert A.mask_active(pd.DataFrame())["verdict"] == NODATA
