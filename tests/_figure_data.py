"""Hand-built results tables (the column contracts of results/tables/*.csv) for the figure,
summary and report tests. Values are chosen so every claim has something to decide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

FAMS = ["llama", "qwen2"]
ALGS = ["ppo", "grpo", "dpo"]
TOLS = [0.0, 1e-8, 1e-7, 1e-6, 1e-5]
PRECS = {"bf16": 0.85, "fp32-master": 0.80, "fp32": 0.02}  # sparsity at tol 0


def bits(acc: float, n: int = 200) -> str:
    """Per-problem outcomes with round(acc·n) correct answers, the first ones (so a higher accuracy
    solves a superset of a lower one's problems: paired differences are all ≥ 0)."""
    k = int(round(acc * n))
    return "1" * k + "0" * (n - k)


def sparsity() -> pd.DataFrame:
    rows = []
    for fam_i, fam in enumerate(FAMS):
        for alg_i, alg in enumerate(ALGS + ["sft"]):
            for prec, s0 in PRECS.items():
                for data in (("on_policy", "off_policy") if alg in ("dpo", "sft") else ("on_policy",)):
                    for seed in (1, 2):
                        base = 0.2 if alg == "sft" else s0 - 0.01 * alg_i - 0.02 * fam_i
                        if data == "off_policy":
                            base -= 0.3
                        below = 0.6 if prec == "fp32" else 0.0
                        for t in TOLS:
                            s = base + (0.7 * np.log10(t / 1e-9) / 4 if (prec == "fp32" and t > 0) else 0.0)
                            rows.append({"family": fam, "algorithm": alg, "data": data, "precision": prec,
                                         "seed": seed, "tolerance": t, "sparsity": min(s, 0.99),
                                         "below_bf16_half_ulp": below})
    return pd.DataFrame(rows)


def rank() -> pd.DataFrame:
    rows = []
    rng = np.random.default_rng(1)
    for fam in FAMS:
        for alg in ALGS:
            for seed in (1, 2):
                for mt in ["q", "k", "v", "o", "up", "down", "embed"]:
                    mr = 64
                    r = int(min(mr, rng.integers(60, 65)))
                    rows.append({"family": fam, "algorithm": alg, "data": "on_policy", "precision": "bf16",
                                 "seed": seed, "tensor": f"model.layers.0.{mt}.weight", "matrix_type": mt,
                                 "rank": r, "max_rank": mr, "rank_fraction": r / mr, "method": "gram"})
    return pd.DataFrame(rows)


def overlap() -> pd.DataFrame:
    rows = []
    for fam in FAMS:
        for axis, o, ch in (("seed", 0.55, 0.2), ("algorithm", 0.4, 0.2), ("precision", 0.3, 0.25)):
            for mask, scale in (("exact", 1.0), ("topk:0.01", 0.5)):
                rows.append({"family": fam, "axis": axis, "mask": mask, "run_a": "grpo:on_policy:bf16:s1",
                             "run_b": "grpo:on_policy:bf16:s2" if axis == "seed" else "dpo:on_policy:bf16:s1",
                             "o1": o * scale, "o2": o * scale + 0.01, "o1_random": ch * scale,
                             "o2_random": ch * scale, "jaccard": 0.3, "s1": 0.8, "s2": 0.8})
    return pd.DataFrame(rows)


def layers() -> pd.DataFrame:
    rows = []
    for fam in FAMS:
        for alg in ALGS:
            for layer, mt in [(-1, "embed"), (0, "q"), (0, "v"), (0, "norm"), (1, "q"), (1, "v"), (1, "norm"),
                              (-1, "lm_head")]:
                for t in (0.0, 1e-5):
                    s = 0.95 if mt == "norm" else 0.8 + 0.01 * layer
                    rows.append({"family": fam, "algorithm": alg, "data": "on_policy", "precision": "bf16",
                                 "seed": 1, "layer": layer, "matrix_type": mt, "n_tensors": 1, "numel": 4096,
                                 "tolerance": t, "sparsity": s, "below_bf16_half_ulp": 0.0})
    return pd.DataFrame(rows)


def dynamics() -> pd.DataFrame:
    rows = []
    for fam in FAMS:
        for alg in ALGS:
            ident = {"family": fam, "algorithm": alg, "data": "on_policy", "precision": "bf16", "seed": 1}
            for step, s in ((5, 0.95), (10, 0.9), (15, 0.86), (20, 0.85)):
                for t in TOLS:
                    rows.append({**ident, "point": "final" if step == 20 else f"step-{step:06d}", "step": step,
                                 "quantity": "sparsity", "tolerance": t, "value": s})
            for q, v in (("never_updated", 0.75), ("updated_then_cancelled", 0.1), ("final_subnetwork", 0.15)):
                rows.append({**ident, "point": "final", "step": 20, "quantity": q, "tolerance": 0.0, "value": v})
    return pd.DataFrame(rows)


def accuracy() -> pd.DataFrame:
    rows = []
    for fam in FAMS:
        for alg in ALGS:
            for prec in PRECS:
                for seed in (1, 2):
                    rows.append({"family": fam, "algorithm": alg, "data": "on_policy", "precision": prec,
                                 "seed": seed, "acc_base": 0.25, "acc_trained": 0.30 + 0.01 * seed,
                                 "delta": 0.05 + 0.01 * seed, "steps": 20, "seconds_per_step": 0.1,
                                 "wall_seconds": 2.0})
    df = pd.DataFrame(rows)
    df["delta"] = df["acc_trained"] - df["acc_base"]
    df["correct_base"] = df["acc_base"].map(bits)
    df["correct_trained"] = df["acc_trained"].map(bits)
    return df


def subnetwork() -> pd.DataFrame:
    rows = []
    for fam in FAMS:
        for alg in ("dpo", "grpo"):
            for mask, acc, agree in (("subnetwork", 0.31, 0.93), ("random", 0.22, 0.4)):
                for t in (0.0, 1e-5, 1e-4):
                    rows.append(
                        {
                            "family": fam,
                            "algorithm": alg,
                            "seed": 1,
                            "precision": "bf16",
                            "mask": mask,
                            "acc_base": 0.25,
                            "acc_full": 0.30,
                            "acc_subnetwork": acc,
                            "tolerance": t,
                            "agreement": min(1.0, agree + (0.07 if t >= 1e-4 else 0) - (0.1 if t == 0 else 0)),
                            "agreement_on_mask": min(1.0, agree + (0.05 if t >= 1e-4 else 0) - 0.02 * (alg == "dpo")),
                            "sparsity_subnetwork": 0.9 if mask == "subnetwork" else 0.93,
                            "correct_base": bits(0.25),
                            "correct_full": bits(0.30),
                            "correct_subnetwork": bits(acc),
                        }
                    )
    return pd.DataFrame(rows)


def causes() -> pd.DataFrame:
    rows = []
    for prec in ("bf16", "fp32"):
        d = 0 if prec == "bf16" else 0.6
        for seed in (1, 2):
            for ab, alg, st, s in (
                ("dpo_data", "dpo", "on_policy", 0.85),
                ("dpo_data", "dpo", "off_policy", 0.4),
                ("grpo_kl", "grpo", "kl_on", 0.8),
                ("grpo_kl", "grpo", "kl_off", 0.79),
                ("ppo_kl", "ppo", "kl_on", 0.6),
                ("ppo_kl", "ppo", "kl_off", 0.61),
                ("sft_data", "sft", "on_policy", 0.9),
                ("sft_data", "sft", "off_policy", 0.1),
            ):
                rows.append(
                    {
                        "family": "llama",
                        "ablation": ab,
                        "setting": st,
                        "precision": prec,
                        "algorithm": alg,
                        "seed": seed,
                        "sparsity": max(0.0, s - d + 0.002 * seed),
                    }
                )
    return pd.DataFrame(rows)


def entropy() -> pd.DataFrame:
    rows = []
    for seed in (1, 2):
        for rho, variant, acc, kept in (
            (0.1, "top", 0.30, 0.1),
            (0.2, "top", 0.33, 0.2),
            (0.5, "top", 0.31, 0.5),
            (1.0, "top", 0.30, 1.0),
            (0.8, "bottom", 0.2, 0.8),
        ):
            for norm in ("kept", "all"):
                rows.append(
                    {
                        "family": "llama",
                        "rho": rho,
                        "variant": variant,
                        "normaliser": norm,
                        "seed": seed,
                        "precision": "bf16",
                        "acc_base": 0.25,
                        "acc_trained": acc,
                        "kept_fraction": kept,
                        "sparsity": 0.9 - 0.1 * rho,
                        "o1": 0.5,
                        "o2": 0.5,
                        "o1_random": 0.2,
                        "o2_random": 0.2,
                        "correct_base": bits(0.25),
                        "correct_trained": bits(acc),
                    }
                )
    return pd.DataFrame(rows)


def entropy_stats() -> pd.DataFrame:
    """The entropy stage's wide layout (rlsparsity.entropy.STATS_COLUMNS)."""
    rows = []
    for fam, model, shift, ov in (
        ("llama", "base", 0.0, 1.0),
        ("llama", "top0.2", -0.2, 0.8),
        ("llama", "all", -0.3, 0.7),
        ("qwen2", "base", 0.0, 1.0),
    ):
        rows.append(
            {
                "family": fam,
                "model": model,
                "rho": None if model == "base" else 0.2,
                "variant": None if model == "base" else "top",
                "normaliser": "kept",
                "seed": 1,
                "precision": "bf16",
                "n_responses": 256,
                "n_tokens": 8000,
                "mean_entropy": 1.9 + shift,
                "frac_below_1e-2": 0.02,
                "p80_entropy": 3.07 + shift,
                "top20_overlap_with_base": ov,
                "top20_jaccard_with_base": ov - 0.1,
                "forking_tokens": '"a":3/4',
            }
        )
    return pd.DataFrame(rows)


def precision_rounding() -> pd.DataFrame:
    """rlsparsity.rounding.table_rows of one family's fp32 dpo (2 seeds, all four models, with its
    fp32-master partners) and grpo (1 seed, raw and rounded only, no partner)."""
    from rlsparsity.rounding import COLUMNS, table_rows

    counts = {"n_entries": 100, "n_changed": 90, "n_below": 70, "n_above": 20}

    def rec(alg: str, seed: int, accs: dict[str, float]) -> dict:
        return {"family": "llama", "algorithm": alg, "data": "on_policy", "precision": "fp32", "seed": seed,
                "correct_base": bits(0.25),
                "variants": {v: {"accuracy": a, "correct": bits(a),
                                 "update_counts": counts if v.endswith("ulp") else None} for v, a in accs.items()}}

    recs = [rec("dpo", 1, {"raw": 0.10, "round_bf16": 0.40, "below_half_ulp": 0.35, "above_half_ulp": 0.30}),
            rec("dpo", 2, {"raw": 0.20, "round_bf16": 0.30, "below_half_ulp": 0.25, "above_half_ulp": 0.40}),
            rec("grpo", 1, {"raw": 0.30, "round_bf16": 0.35})]
    partners = {("llama", "dpo", "on_policy", 1): bits(0.40), ("llama", "dpo", "on_policy", 2): bits(0.30)}
    return pd.DataFrame(table_rows(recs, partners), columns=COLUMNS)


ALL = {
    "sparsity": sparsity,
    "rank": rank,
    "overlap": overlap,
    "layers": layers,
    "dynamics": dynamics,
    "accuracy": accuracy,
    "subnetwork": subnetwork,
    "causes": causes,
    "entropy": entropy,
    "entropy_stats": entropy_stats,
    "precision_rounding": precision_rounding,
}


def write_all(folder: Path, names: list[str] | None = None) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names or list(ALL):
        out[name] = folder / f"{name}.csv"
        ALL[name]().to_csv(out[name], index=False)
    return out
