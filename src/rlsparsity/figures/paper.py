"""The papers' own numbers (docs: /work/shared/SPEC.md), used for figure annotations and
SUMMARY.md. They are reference values for comparison, never test expectations.

arXiv 2505.11711 ("RL finetunes small subnetworks") and arXiv 2506.01939 ("Beyond the 80/20
rule"). Percentages are stored as percentages (81.4 = 81.4 %).
"""

from __future__ import annotations

#: Table 1: update sparsity (%) at tol 1e-5 on bf16 weights, per algorithm: (model, value).
#: Must agree with config/public_pairs.yaml (tests check it).
TABLE1: dict[str, list[tuple[str, float]]] = {
    "ppo": [("Math-Shepherd-Mistral-7B", 80.8)],
    "grpo": [("DeepSeek-Math-7B", 68.5), ("DeepSeek-R1-Zero", 86.0)],
    "orpo": [("Mistral-7B ORPO-beta", 76.9)],
    "kto": [("Eurus-7B", 96.0), ("Llama-3-8B", 81.2)],
    "dpo": [("Tulu-3-8B", 81.4), ("Tulu-3-70B", 95.2)],
    "simpo": [("Llama-3-8B-Instruct", 86.5)],  # the paper's Table 6 says 76.42 for this model
    "prime": [("Eurus-2-7B", 77.0)],
}
#: Paper's default tolerance for "unchanged".
PAPER_TOL: float = 1e-5
#: "RL changes only 5-30 % of the parameters": sparsity range (%) of the claim.
RL_SPARSITY_RANGE: tuple[float, float] = (70.0, 95.0)
#: "SFT, by contrast, is dense (6-15 % sparsity)".
SFT_SPARSITY_RANGE: tuple[float, float] = (6.0, 15.0)

#: Mean rank / min(m, n) (%) of the update matrices.
RANK: dict[str, tuple[str, float]] = {
    "dpo": ("Tulu-8B", 99.8), "prime": ("Eurus-2-7B", 99.5), "kto": ("Llama-3-8B", 99.2),
    "grpo": ("DeepSeek-Math-7B", 99.4),
}
RANK_RANGE: tuple[float, float] = (99.2, 99.8)

#: Overlap between seeds 42 and 123 (%): o1, o2, o1_random, o2_random.
OVERLAP_SEEDS: dict[str, float] = {"o1": 60.5, "o2": 60.6, "o1_random": 36.7, "o2_random": 36.7}

#: Dynamics: split of all entries (%).
DYNAMICS_SPLIT: dict[str, float] = {"never_updated": 72.0, "updated_then_cancelled": 8.0, "final_subnetwork": 20.0}

#: Subnetwork finetune: % entries identical to the full run at tol 1e-5 (100 % at 1e-4), and
#: accuracy full -> subnetwork.
SUBNETWORK_AGREEMENT: dict[str, float] = {"dpo": 94.0, "prime": 90.5}
SUBNETWORK_AGREEMENT_TOL: float = 1e-5
SUBNETWORK_ACCURACY: dict[str, tuple[str, float, float]] = {
    "dpo": ("DPO avg", 40.3, 41.9), "prime": ("PRIME MATH500", 69.8, 72.2),
}

#: Table 5 (causes): sparsity (%) by ablation.
CAUSES: dict[str, tuple[float, float]] = {  # (low, high) ranges; a point value has low == high
    "dpo_off_policy": (6.8, 7.7),
    "dpo_in_distribution": (81.4, 81.4),
    "rejection_sampling_sft": (91.2, 91.2),
    "kl_on": (69.8, 69.8),
    "kl_off": (68.8, 68.8),
}

#: arXiv 2506.01939 token-entropy statistics (Qwen3-8B) and results (Qwen3-32B).
ENTROPY_FRAC_BELOW_001: float = 50.64  # % of tokens with H < 0.01
ENTROPY_P80: float = 0.672  # 80th-percentile entropy (nats)
ENTROPY_HIGH_OVERLAP: float = 86.67  # % overlap of high-entropy positions base vs RL
ENTROPY_RHO: float = 0.2
ENTROPY_AIME: dict[str, tuple[float, float]] = {"AIME'24": (55.83, 63.54), "AIME'25": (45.63, 56.67)}

#: SPEC §3, measured here on a tiny model (20 GRPO steps): % unchanged.
PRECISION_MEASURED: dict[str, float] = {"bf16 lr1e-6": 99.05, "bf16 lr1e-5": 92.6, "fp32": 0.16}


def table1_mean(algorithm: str) -> float | None:
    vals = [v for _, v in TABLE1.get(algorithm, [])]
    return sum(vals) / len(vals) if vals else None


def table1_text(algorithm: str) -> str:
    vals = [v for _, v in TABLE1.get(algorithm, [])]
    return " / ".join(f"{v:.1f}" for v in vals) if vals else "–"
