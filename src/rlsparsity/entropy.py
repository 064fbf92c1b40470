"""Token-entropy restriction of the policy gradient ("Beyond the 80/20 rule", arXiv 2506.01939).

Definitions (SPEC §2):

* **Token entropy** H_t = −Σ_j p_tj log p_tj over the full vocabulary, from the training
  policy's logits divided by the sampling temperature (TRL's fused LM head computes it so
  during training; :func:`score_entropies` uses ``rollout.token_logprobs`` for the statistics).
* **Restriction (Eq. 6)**: on top of the GRPO entry with DAPO settings (loss_type "dapo",
  clip-higher ε_low 0.2 / ε_high 0.28, β = 0, no entropy bonus), each token's clipped term is
  multiplied by 1[H_t ≥ τ_ρ], τ_ρ = the (1 − ρ) quantile (``torch.quantile``, linear
  interpolation) of the entropies of ALL response tokens of the batch (padding excluded);
  ties at τ_ρ are kept. Variant ``top`` keeps those tokens; ``bottom`` keeps the complement of
  the top-20% set (the lowest 80%: H_t < τ_0.2), the paper's "train only on the other 80%".
* **Normalisers**: ``kept`` (paper Eq. 6) — token-mean over the kept tokens; ``all`` (TRL's
  ``top_entropy_quantile``) — the masked sum divided by all completion tokens (≈ ρ times smaller).
  The two differ by a per-batch factor N/K only; with gradient clipping (max_grad_norm 1.0, and
  tiny-model gradient norms of 1–25) and Adam, most of that factor is absorbed, so the two
  normalisers give close (not identical) weights.
* **Ties**: the G samples of one prompt share their prefix, so entropies tie exactly; all ties at
  τ_ρ are kept, and the kept fraction is therefore ≥ ρ (tiny models, G = 8: 0.15 for ρ = 0.1,
  0.24 for ρ = 0.2) and bottom keeps < 80%.

How it is built: :class:`EntropyGRPOTrainer` (made by :func:`trainer_class`) subclasses TRL 1.16's
GRPOTrainer and overrides only

* ``get_high_entropy_mask`` — TRL's own top-ρ mask, complemented for ``bottom``, and remembered;
* ``_compute_loss`` — TRL's loss, rescaled from the all-token to the kept-token denominator for
  ``kept``, and the kept fraction / kept tokens / threshold logged every step.

TRL takes its quantile over the micro-batch, so the trainer requires one micro-batch per
generation batch (``gradient_accumulation_steps == steps_per_generation == 1``, one process):
then "the batch" of Eq. 6 is exactly the batch that is trained on. ρ = 1 (``top``) keeps
every token; there ``kept`` and ``all`` are the same objective, so a ρ = 1 run is trained once.

Runs live at ``results/entropy/<family>/rho<ρ>-<variant>-<normaliser>/<precision>/seed<N>/``
(``bottom`` is labelled with ρ = 0.8, the share it keeps). One process per family
(:func:`entropy_family`) trains every configured run, evaluates it, diffs it against the base
with the analysis diff engine (update sparsity, update mask), overlaps its mask with the
full-token (ρ = 1) run of the same seed, and computes the entropy statistics of the base and of
every trained policy on the same held-out responses, sampled once from the base.

This module is imported by the Snakefile: keep torch / transformers imports inside functions.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VARIANTS: tuple[str, ...] = ("top", "bottom")
NORMALISERS: tuple[str, ...] = ("kept", "all")
#: ``bottom`` keeps the tokens outside the top-20% (paper: "only the lowest 80%").
BOTTOM_EXCLUDED = 0.2
BOTTOM_RHO = 1.0 - BOTTOM_EXCLUDED
#: DAPO settings of the paper (SPEC §2): clip-higher, no KL, no entropy bonus, token-mean loss.
DAPO: dict[str, Any] = dict(loss_type="dapo", epsilon=0.2, epsilon_high=0.28, beta=0.0, entropy_coef=0.0)
#: Paper: the 80th percentile / top 20% defines the high-entropy ("forking") tokens.
STATS_TOP = 0.2
LOW_ENTROPY = 1e-2

ENTROPY_DEFAULTS: dict[str, Any] = {
    "families": "all", "rhos": [0.1, 0.2, 0.5, 1.0], "variants": ["top", "bottom"], "normalisers": ["kept"],
    "normaliser_rhos": {}, "seeds": [1], "precision": "bf16", "steps": None, "checkpoint_every": None,
    "hparams": {}, "stats_prompts": 64, "stats_samples": 4, "eval_n": None,
}

RUN_COLUMNS = ["family", "rho", "variant", "normaliser", "seed", "precision", "acc_base", "acc_trained",
               "kept_fraction", "sparsity", "o1", "o2", "o1_random", "o2_random",
               "kept_fraction_min", "kept_fraction_max", "sparsity_tol0", "below_bf16_half_ulp", "reference",
               "steps", "seconds_per_step", "mean_reward_trained", "n_eval"]
STATS_COLUMNS = ["family", "model", "rho", "variant", "normaliser", "seed", "precision", "n_responses",
                 "n_tokens", "mean_entropy", "frac_below_1e-2", "p80_entropy", "top20_overlap_with_base",
                 "top20_jaccard_with_base", "forking_tokens"]


# --------------------------------------------------------------------------- run grid (light)
def fmt_rho(rho: float) -> str:
    return format(float(rho), "g")


@dataclass(frozen=True, order=True)
class EntropyRun:
    family: str
    rho: float          # fraction of tokens kept by design (top: ρ; bottom: 0.8)
    variant: str        # top | bottom
    normaliser: str     # kept | all
    precision: str
    seed: int

    @property
    def tag(self) -> str:
        return f"rho{fmt_rho(self.rho)}-{self.variant}-{self.normaliser}"

    @property
    def rel(self) -> str:
        return f"{self.family}/{self.tag}/{self.precision}/seed{self.seed}"

    def dir(self, results: str | Path = "results") -> Path:
        return Path(results) / "entropy" / self.rel

    @property
    def is_full(self) -> bool:
        """ρ = 1 top: every token kept (the all-token reference)."""
        return self.variant == "top" and self.rho >= 1.0

    @property
    def trl_quantile(self) -> float:
        """Value handed to TRL's ``top_entropy_quantile`` (bottom: the top-20% it complements)."""
        return float(self.rho) if self.variant == "top" else BOTTOM_EXCLUDED

    def as_dict(self) -> dict[str, Any]:
        return {"family": self.family, "rho": self.rho, "variant": self.variant, "normaliser": self.normaliser,
                "seed": self.seed, "precision": self.precision}


def entropy_block(config: dict[str, Any]) -> dict[str, Any] | None:
    """The config's ``entropy`` block with defaults filled in (None when absent)."""
    blk = config.get("entropy")
    if blk is None:
        return None
    return {**ENTROPY_DEFAULTS, **blk}


def entropy_families(config: dict[str, Any]) -> list[str]:
    blk = entropy_block(config)
    if blk is None:
        return []
    fams = list(config["families"]) if blk["families"] == "all" else list(blk["families"])
    unknown = [f for f in fams if f not in config["families"]]
    if unknown:
        raise ValueError(f"entropy.families names {unknown}, not listed under 'families'")
    return fams


def _normaliser_applies(blk: dict[str, Any], normaliser: str, variant: str, rho: float) -> bool:
    only = blk.get("normaliser_rhos", {}).get(normaliser)
    if only is None:
        return True
    return any((o == "bottom" and variant == "bottom") or (o != "bottom" and variant == "top"
                                                            and math.isclose(float(o), rho)) for o in only)


def expand_entropy_runs(config: dict[str, Any], family: str | None = None) -> list[EntropyRun]:
    """Every configured entropy run: (top × rhos ∪ bottom) × normalisers × seeds, per family.

    ``normaliser_rhos: {all: [0.2]}`` restricts a normaliser to the listed ρ (top variant;
    the string ``bottom`` selects the bottom variant). ρ = 1 top is trained once (with the
    first listed normaliser), since every token is kept and both normalisers coincide.
    """
    blk = entropy_block(config)
    if blk is None:
        return []
    runs: set[EntropyRun] = set()
    shapes = [("top", float(r)) for r in blk["rhos"] if "top" in blk["variants"]]
    if "bottom" in blk["variants"]:
        shapes.append(("bottom", BOTTOM_RHO))
    norms = list(blk["normalisers"])
    for fam in entropy_families(config):
        if family is not None and fam != family:
            continue
        for variant, rho in shapes:
            applicable = [n for n in norms if _normaliser_applies(blk, n, variant, rho)]
            if variant == "top" and rho >= 1.0:
                applicable = applicable[:1] or norms[:1]
            for norm in applicable:
                for seed in blk["seeds"]:
                    runs.add(EntropyRun(fam, rho, variant, norm, blk["precision"], int(seed)))
    return sorted(runs)


def reference_run(run: EntropyRun, runs: list[EntropyRun]) -> EntropyRun | None:
    """The full-token (ρ = 1) run of the same family, precision and seed."""
    for r in runs:
        if r.is_full and (r.family, r.precision, r.seed) == (run.family, run.precision, run.seed):
            return r
    return None


# --------------------------------------------------------------------------- the token mask
def select_tokens(entropies: Any, mask: Any, rho: float, variant: str = "top") -> Any:
    """Reference implementation of the kept-token set of one batch (single process).

    ``top``: H_t ≥ quantile(H[valid], 1 − ρ) (ρ ≥ 1: every valid token); ``bottom``: the
    valid tokens outside the top-20% set. Padding (mask 0) is never kept. Same rule as
    TRL's ``get_high_entropy_mask`` (which the trainer uses), without the cross-process gather.
    """
    import torch

    valid = mask.bool()
    vals = entropies[valid].float()
    if vals.numel() == 0:
        return torch.zeros_like(valid)
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    q = BOTTOM_EXCLUDED if variant == "bottom" else float(rho)
    if q >= 1.0:
        top = valid.clone()
    else:
        tau = torch.quantile(vals, 1.0 - q)
        top = (entropies.float() >= tau) & valid
    return top if variant == "top" else (~top & valid)


_TRAINER_CLASS: Any = None


def trainer_class() -> Any:
    """EntropyGRPOTrainer (built lazily: importing TRL costs seconds)."""
    global _TRAINER_CLASS
    if _TRAINER_CLASS is not None:
        return _TRAINER_CLASS
    import torch
    from trl import GRPOTrainer

    class EntropyGRPOTrainer(GRPOTrainer):
        """GRPOTrainer (DAPO loss) whose policy gradient is restricted by token entropy.

        Extra keyword arguments: ``entropy_variant`` (top | bottom) and ``entropy_normaliser``
        (kept | all). The kept share is TRL's ``args.top_entropy_quantile`` (ρ for top; 0.2 for
        bottom, whose complement is trained). Per step it logs ``entropy_mask/kept_fraction``,
        ``entropy_mask/kept_tokens``, ``entropy_mask/tokens`` and ``entropy_mask/threshold``.
        """

        def __init__(self, *args: Any, entropy_variant: str = "top", entropy_normaliser: str = "kept",
                     **kwargs: Any) -> None:
            if entropy_variant not in VARIANTS:
                raise ValueError(f"entropy_variant {entropy_variant!r} not in {VARIANTS}")
            if entropy_normaliser not in NORMALISERS:
                raise ValueError(f"entropy_normaliser {entropy_normaliser!r} not in {NORMALISERS}")
            super().__init__(*args, **kwargs)
            a = self.args
            if a.loss_type != "dapo":
                raise ValueError(f"EntropyGRPOTrainer needs loss_type='dapo' (got {a.loss_type!r})")
            if a.gradient_accumulation_steps != 1 or self.accelerator.num_processes != 1:
                raise ValueError("EntropyGRPOTrainer needs one micro-batch per optimiser step on one process "
                                 "(gradient_accumulation_steps = 1): TRL's quantile is taken per micro-batch, "
                                 "Eq. 6 takes it over the update batch")
            # steps_per_generation k > 1 is fine: the generation batch is cut into k update batches
            # (the paper's mini-batches), each one optimiser step with its own quantile
            if self._entropy_bonus_enabled:
                raise ValueError("the paper trains without an entropy bonus: entropy_coef must be 0")
            if entropy_variant == "bottom" and self.top_entropy_quantile >= 1.0:
                raise ValueError("bottom variant needs top_entropy_quantile < 1 (the top set it complements)")
            self.entropy_variant = entropy_variant
            self.entropy_normaliser = entropy_normaliser
            self._selection: Any = None
            self._threshold = float("nan")

        def get_high_entropy_mask(self, entropies: Any, mask: Any, threshold: float) -> Any:
            top = super().get_high_entropy_mask(entropies, mask, threshold)  # TRL: H >= quantile, padding out
            with torch.no_grad():
                kept_h = entropies.detach()[top]
                self._threshold = float(kept_h.min()) if kept_h.numel() else float("nan")
            sel = top if self.entropy_variant == "top" else (~top & mask.bool())
            self._selection = sel
            return sel

        def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> Any:
            self._selection, self._threshold = None, float("nan")
            loss = super()._compute_loss(model, inputs)
            mask = inputs["completion_mask"]
            if "tool_mask" in inputs:
                mask = mask * inputs["tool_mask"]
            n_all = float(mask.sum())
            kept = n_all if self._selection is None else float(self._selection.sum())
            mode = "train" if self.model.training else "eval"
            if self.entropy_normaliser == "kept" and 0 < kept < n_all:
                # TRL's dapo loss is sum(per-token loss · kept) / normaliser with normaliser = the
                # generation batch's completion tokens / steps_per_generation (x accumulation steps,
                # 1 here): replace that normaliser by the number of kept tokens of this update batch
                norm = inputs["num_items_in_batch"].clamp(min=1.0).to(loss.dtype)
                if mode == "train":
                    norm = norm * self.current_gradient_accumulation_steps / self.args.steps_per_generation
                loss = loss * (norm / kept)
            m = self._metrics[mode]
            m["entropy_mask/kept_fraction"].append(kept / n_all if n_all else float("nan"))
            m["entropy_mask/kept_tokens"].append(kept)
            m["entropy_mask/tokens"].append(n_all)
            m["entropy_mask/threshold"].append(self._threshold)
            return loss

    _TRAINER_CLASS = EntropyGRPOTrainer
    return EntropyGRPOTrainer


# --------------------------------------------------------------------------- training entry
def entropy_hparams(spec_hparams: dict[str, Any]) -> dict[str, Any]:
    """GRPO defaults ← DAPO settings ← overrides (``spec.hparams``)."""
    from rlsparsity.algorithms.trl_algos import DEFAULTS

    hp = {**DEFAULTS["grpo"], **DAPO, **spec_hparams}
    hp.pop("top_entropy_quantile", None)  # set from (rho, variant)
    return hp


HISTORY_KEYS = ("loss", "reward", "reward_std", "entropy", "grad_norm", "clip_ratio/region_mean",
                "entropy_mask/kept_fraction", "entropy_mask/kept_tokens", "entropy_mask/tokens",
                "entropy_mask/threshold")


def build_trainer(spec: Any, rho: float, variant: str = "top", normaliser: str = "kept") -> tuple[Any, dict[str, Any]]:
    """An :class:`EntropyGRPOTrainer` for ``spec`` (model loaded, seeded) and its hyperparameters."""
    from trl import GRPOConfig

    from rlsparsity.algorithms.trl_algos import _args, _load, _online_dataset, _reward_fn
    from rlsparsity.modeling import max_new_tokens_for

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    if normaliser not in NORMALISERS:
        raise ValueError(f"unknown normaliser {normaliser!r}; known: {NORMALISERS}")
    if not 0.0 < float(rho) <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    quantile = float(rho) if variant == "top" else BOTTOM_EXCLUDED
    hp = entropy_hparams(spec.hparams)
    model, tok = _load(spec)
    args = _args(GRPOConfig, spec, hp, num_generations=hp["num_generations"],
                 max_completion_length=max_new_tokens_for(model, spec.task), temperature=hp["temperature"],
                 beta=hp["beta"], epsilon=hp["epsilon"], epsilon_high=hp["epsilon_high"],
                 loss_type=hp["loss_type"], top_entropy_quantile=quantile, entropy_coef=hp["entropy_coef"],
                 steps_per_generation=hp.get("steps_per_generation"))
    tr = trainer_class()(model=model, reward_funcs=_reward_fn(spec), args=args,
                         train_dataset=_online_dataset(spec, tok), processing_class=tok,
                         entropy_variant=variant, entropy_normaliser=normaliser)
    hp = {**hp, "top_entropy_quantile": quantile, "rho": float(rho), "variant": variant, "normaliser": normaliser}
    return tr, hp


def train_entropy(spec: Any, rho: float, variant: str = "top", normaliser: str = "kept") -> dict[str, Any]:
    """Train ``spec`` with the entropy-restricted DAPO/GRPO objective; returns the stats dict.

    Algorithm-like entry (see :mod:`rlsparsity.algorithms.common`): the final model, weight
    checkpoints and resume handling are those of the GRPO entry. ``history`` holds the
    per-step kept fraction (``entropy_mask/kept_fraction``)."""
    from rlsparsity.algorithms.trl_algos import _run_trainer

    tr, hp = build_trainer(spec, rho, variant, normaliser)
    stats = _run_trainer(spec, tr, tr.model, tr.processing_class)
    history = [{k: v for k, v in h.items() if k in HISTORY_KEYS or k == "step"}
               for h in tr.state.log_history if "loss" in h]
    kf = [h["entropy_mask/kept_fraction"] for h in history if "entropy_mask/kept_fraction" in h]
    return {**stats, "history": history, "hparams": hp,
            "kept_fraction": sum(kf) / len(kf) if kf else float("nan"),
            "kept_fraction_min": min(kf) if kf else float("nan"),
            "kept_fraction_max": max(kf) if kf else float("nan")}


# --------------------------------------------------------------------------- entropy statistics
def sample_responses(model: Any, tok: Any, task: Any, n_prompts: int, n_samples: int, temperature: float,
                     seed: int = 0, max_new_tokens: int | None = None, batch_prompts: int = 16) -> dict[str, Any]:
    """Held-out responses sampled once from ``model``: ``n_samples`` per test prompt.

    Returns right-aligned tensors padded to one width: input_ids, attention_mask, prompt_len,
    completion_mask (1 up to and including the first EOS)."""
    import torch

    from rlsparsity.algorithms.common import seed_everything
    from rlsparsity.algorithms.rollout import sample
    from rlsparsity.modeling import max_new_tokens_for

    seed_everything(seed)
    mnt = max_new_tokens or max_new_tokens_for(model, task)
    prompts = [task.prompt(e, tok) for e in task.test[:n_prompts]]
    parts = []
    for i in range(0, len(prompts), batch_prompts):
        parts.append(sample(model, tok, prompts[i:i + batch_prompts], n_samples, mnt, temperature))
    P = max(r.prompt_len for r in parts)
    C = max(r.completion_mask.shape[1] for r in parts)
    pad = tok.pad_token_id
    ids, att, cm = [], [], []
    for r in parts:
        B, p = r.input_ids.shape[0], r.prompt_len
        c = r.completion_mask.shape[1]
        left = P - p
        dev = r.input_ids.device
        prompt_ids = torch.cat([torch.full((B, left), pad, dtype=r.input_ids.dtype, device=dev),
                                r.input_ids[:, :p]], 1)
        prompt_att = torch.cat([torch.zeros(B, left, dtype=r.attention_mask.dtype, device=dev),
                                r.attention_mask[:, :p]], 1)
        comp = torch.cat([r.input_ids[:, p:], torch.full((B, C - c), pad, dtype=r.input_ids.dtype, device=dev)], 1)
        catt = torch.cat([r.attention_mask[:, p:], torch.zeros(B, C - c, dtype=r.attention_mask.dtype, device=dev)], 1)
        ids.append(torch.cat([prompt_ids, comp], 1))
        att.append(torch.cat([prompt_att, catt], 1))
        cm.append(torch.cat([r.completion_mask, torch.zeros(B, C - c, device=dev)], 1))
    return {"input_ids": torch.cat(ids), "attention_mask": torch.cat(att), "prompt_len": P,
            "completion_mask": torch.cat(cm), "temperature": float(temperature)}


def score_entropies(model: Any, responses: dict[str, Any], batch_size: int = 64) -> Any:
    """Token entropies (B, C) of the responses' completion tokens under ``model`` (0 on padding)."""
    import torch

    from rlsparsity.algorithms.rollout import token_logprobs

    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, responses["input_ids"].shape[0], batch_size):
            _, ent = token_logprobs(model, responses["input_ids"][i:i + batch_size],
                                    responses["attention_mask"][i:i + batch_size], responses["prompt_len"],
                                    responses["temperature"], with_entropy=True)
            out.append(ent.float())
    if was_training:
        model.train()
    return torch.cat(out) * responses["completion_mask"]


def entropy_stats(entropies: Any, mask: Any) -> dict[str, Any]:
    """Fraction of tokens with H < 1e-2, the 80th percentile, mean, token count."""
    import torch

    v = entropies[mask.bool()].double()
    if v.numel() == 0:
        return {"n_tokens": 0, "mean_entropy": math.nan, "frac_below_1e-2": math.nan, "p80_entropy": math.nan}
    return {"n_tokens": int(v.numel()), "mean_entropy": float(v.mean()),
            "frac_below_1e-2": float((v < LOW_ENTROPY).double().mean()),
            "p80_entropy": float(torch.quantile(v, 1.0 - STATS_TOP))}


def position_overlap(a: Any, b: Any) -> dict[str, float]:
    """|A ∩ B| / |A| (share of A's positions that are also in B) and the Jaccard index."""
    inter, na, union = int((a & b).sum()), int(a.sum()), int((a | b).sum())
    return {"overlap": inter / na if na else math.nan, "jaccard": inter / union if union else math.nan}


def forking_tokens(entropies: Any, mask: Any, completion_ids: Any, tok: Any, k: int = 10) -> list[dict[str, Any]]:
    """The tokens most often in the top-20% entropy set: token, count in the top set, count overall."""
    from collections import Counter

    top = select_tokens(entropies, mask, STATS_TOP, "top")
    in_top = Counter(completion_ids[top].tolist())
    total = Counter(completion_ids[mask.bool()].tolist())
    out = []
    for tid, c in in_top.most_common(k):
        out.append({"token": tok.convert_ids_to_tokens(int(tid)), "id": int(tid), "top20": c, "total": total[tid]})
    return out


def format_forking(items: list[dict[str, Any]]) -> str:
    return " ".join(f"{json.dumps(x['token'])}:{x['top20']}/{x['total']}" for x in items)


def compare_entropies(base_ent: Any, other_ent: Any, mask: Any) -> dict[str, float]:
    """Overlap of the top-20% positions of two entropy maps over the same responses."""
    a = select_tokens(base_ent, mask, STATS_TOP, "top")
    b = select_tokens(other_ent, mask, STATS_TOP, "top")
    return position_overlap(a, b)


def stats_rows(base_dir: Path, models: dict[str, Path], task: Any, n_prompts: int, n_samples: int,
               temperature: float, seed: int = 0, row_extra: dict[str, dict[str, Any]] | None = None,
               family: str = "", device: str = "cpu") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """entropy_stats rows: the base and every model in ``models`` (label -> folder), scored on
    the same responses sampled once from the base."""
    from rlsparsity.modeling import load_model, load_tokenizer

    tok = load_tokenizer(base_dir)
    base = load_model(base_dir, "fp32", device)
    resp = sample_responses(base, tok, task, n_prompts, n_samples, temperature, seed,
                            batch_prompts=16 if device == "cpu" else 128)
    h0 = score_entropies(base, resp).cpu()
    resp = {k: (v.cpu() if hasattr(v, "cpu") else v) for k, v in resp.items()}  # statistics on the CPU
    mask = resp["completion_mask"]
    comp_ids = resp["input_ids"][:, resp["prompt_len"]:]
    n_resp = int(mask.shape[0])
    rows = [{"family": family, "model": "base", **(row_extra or {}).get("base", {}), "n_responses": n_resp,
             **entropy_stats(h0, mask), "top20_overlap_with_base": 1.0, "top20_jaccard_with_base": 1.0,
             "forking_tokens": format_forking(forking_tokens(h0, mask, comp_ids, tok))}]
    for label, folder in models.items():
        m = load_model(folder, "fp32", device)
        h = score_entropies(m, {k: (v.to(device) if hasattr(v, "to") else v) for k, v in resp.items()}).cpu()
        ov = compare_entropies(h0, h, mask)
        rows.append({"family": family, "model": label, **(row_extra or {}).get(label, {}), "n_responses": n_resp,
                     **entropy_stats(h, mask), "top20_overlap_with_base": ov["overlap"],
                     "top20_jaccard_with_base": ov["jaccard"],
                     "forking_tokens": format_forking(forking_tokens(h, mask, comp_ids, tok))})
    info = {"n_responses": n_resp, "n_tokens": int(mask.sum()), "temperature": temperature,
            "mean_completion_tokens": float(mask.sum(1).mean())}
    return rows, info


# --------------------------------------------------------------------------- one family, end to end
def _spec_for(run: EntropyRun, config: dict[str, Any], results: Path, device: str = "cpu") -> Any:
    from rlsparsity.algorithms.common import TrainSpec
    from rlsparsity.grid import Run, base_dir
    from rlsparsity.tasks import task_from_config

    blk = entropy_block(config)
    tc = config["train"]
    from rlsparsity.grid import run_hparams

    hp = {**run_hparams(config, "grpo", run.precision), **blk.get("hparams", {})}
    return TrainSpec(run=Run(run.family, "grpo", "on_policy", run.precision, run.seed),
                     base_dir=base_dir(run.family, results), out_dir=run.dir(results),
                     task=task_from_config(config), steps=blk["steps"] or tc["steps"],
                     checkpoint_every=blk["checkpoint_every"] or tc["checkpoint_every"], hparams=hp, device=device)


def train_entropy_run(run: EntropyRun, config: dict[str, Any], results: Path, device: str = "cpu") -> dict[str, Any]:
    """Train one entropy run, evaluate the stored weights, write ``run.json``."""
    from rlsparsity.evaluate import evaluate
    from rlsparsity.modeling import load_model, load_tokenizer, versions, write_json

    from rlsparsity.gpu import device_record, reset_peak

    spec = _spec_for(run, config, results, device)
    base_metrics = json.loads((spec.base_dir / "metrics.json").read_text())
    reset_peak(device)
    t0 = time.time()
    stats = train_entropy(spec, run.rho, run.variant, run.normaliser)
    wall = time.time() - t0
    blk = entropy_block(config)
    model = load_model(spec.out_dir, "fp32", device)
    after = evaluate(model, load_tokenizer(spec.out_dir), spec.task, n=blk["eval_n"] or config["train"]["eval_n"])
    rec = {**run.as_dict(), "experiment": config.get("experiment"), "task": spec.task.name,
           "base": str(spec.base_dir), "acc_base": base_metrics["accuracy"], "acc_trained": after["accuracy"],
           "mean_reward_trained": after["mean_reward"], "n_eval": after["n"], "steps": stats["steps"],
           "seconds_per_step": stats["seconds_per_step"], "wall_seconds": round(wall, 3),
           "kept_fraction": stats["kept_fraction"], "kept_fraction_min": stats["kept_fraction_min"],
           "kept_fraction_max": stats["kept_fraction_max"], "hparams": stats["hparams"],
           "history": stats["history"], "checkpoint_every": spec.checkpoint_every,
           "storage_dtype": "float32" if run.precision == "fp32" else "bfloat16", "samples": after["samples"],
           "versions": versions(), "config": config, **device_record(device, wall, stats["steps"])}
    write_json(spec.out_dir / "run.json", rec)
    return rec


def entropy_family(config: dict[str, Any], family: str, out_dir: Path | None = None, device: str = "cpu",
                   threads: int | None = 1, log: Any = print) -> dict[str, Path]:
    """The DAG job of one family: train, evaluate, diff, overlap, entropy statistics.

    Writes ``<results>/entropy/<family>/{entropy,entropy_stats}.csv``."""
    from rlsparsity.analysis.diff import DEFAULT_TOLERANCES, tol_key
    from rlsparsity.analysis.io import open_checkpoint
    from rlsparsity.analysis.overlap import overlap_masks
    from rlsparsity.analysis.tables import diff_run, write_csv
    from rlsparsity.grid import base_dir
    from rlsparsity.modeling import torch_threads
    from rlsparsity.tasks import task_from_config

    torch_threads()
    results = Path(config["results"])
    runs = expand_entropy_runs(config, family)
    if not runs:
        raise ValueError(f"no entropy runs configured for family {family!r}")
    out_dir = Path(out_dir or results / "entropy" / family)
    base_path = base_dir(family, results)
    if not (base_path / "config.json").exists():
        raise FileNotFoundError(f"base model missing: {base_path}")
    records = {}
    for run in runs:
        rj = run.dir(results) / "run.json"
        if rj.exists():
            records[run] = json.loads(rj.read_text())
            log(f"[entropy] {run.rel}: done already")
            continue
        records[run] = rec = train_entropy_run(run, config, results, device)
        log(f"[entropy] {run.rel}: acc {rec['acc_base']:.3f} -> {rec['acc_trained']:.3f}, kept fraction "
            f"{rec['kept_fraction']:.3f} ({rec['seconds_per_step']:.3f} s/step)")
    # parameter sparsity of every run and overlap of its update mask with the full-token run
    base_ck = open_checkpoint(base_path)
    summaries = {run: diff_run(base_ck, str(base_path), run.dir(results), run.dir(results) / "diff",
                               tuple(DEFAULT_TOLERANCES), None, threads) for run in runs}
    rows = []
    for run in runs:
        rec, s = records[run], summaries[run]
        ref = reference_run(run, runs)
        ov = dict.fromkeys(("o1", "o2", "o1_random", "o2_random"), math.nan)
        if ref is not None:
            tot, _ = overlap_masks(run.dir(results) / "diff" / "mask.safetensors",
                                   ref.dir(results) / "diff" / "mask.safetensors")
            ov = {k: tot[k] for k in ov}
        rows.append({**run.as_dict(), "acc_base": rec["acc_base"], "acc_trained": rec["acc_trained"],
                     "kept_fraction": rec["kept_fraction"], "sparsity": s["sparsity"][tol_key(1e-5)], **ov,
                     "kept_fraction_min": rec["kept_fraction_min"], "kept_fraction_max": rec["kept_fraction_max"],
                     "sparsity_tol0": s["sparsity"][tol_key(0.0)], "below_bf16_half_ulp": s["below_bf16_half_ulp"],
                     "reference": ref.tag if ref else "", "steps": rec["steps"],
                     "seconds_per_step": rec["seconds_per_step"], "mean_reward_trained": rec["mean_reward_trained"],
                     "n_eval": rec["n_eval"]})
    write_csv(out_dir / "entropy.csv", rows, RUN_COLUMNS)
    # entropy statistics on the same held-out responses, sampled once from the base
    blk = entropy_block(config)
    from rlsparsity.grid import run_hparams

    hp = entropy_hparams({**run_hparams(config, "grpo", blk["precision"]), **blk.get("hparams", {})})
    models = {run.rel.split("/", 1)[1]: run.dir(results) for run in runs}
    extra = {run.rel.split("/", 1)[1]: {k: v for k, v in run.as_dict().items() if k != "family"} for run in runs}
    stats, info = stats_rows(base_path, models, task_from_config(config), blk["stats_prompts"],
                             blk["stats_samples"], hp["temperature"], seed=0, row_extra=extra, family=family,
                             device=device)
    write_csv(out_dir / "entropy_stats.csv", stats, STATS_COLUMNS)
    (out_dir / "responses.json").write_text(json.dumps(info, indent=1) + "\n")
    log(f"[entropy] {family}: base mean H {stats[0]['mean_entropy']:.3f}, H<1e-2 {stats[0]['frac_below_1e-2']:.3f}, "
        f"p80 {stats[0]['p80_entropy']:.3f} over {info['n_tokens']} tokens")
    return {"entropy": out_dir / "entropy.csv", "entropy_stats": out_dir / "entropy_stats.csv"}


# --------------------------------------------------------------------------- CLI
def _cmd_family(args: argparse.Namespace) -> int:
    from rlsparsity.config import load_config

    cfg = load_config(args.config)
    if args.results:
        cfg["results"] = args.results
    entropy_family(cfg, args.family, device=args.device, threads=args.threads)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from rlsparsity.config import load_config

    cfg = load_config(args.config)
    runs = [r for r in expand_entropy_runs(cfg, args.family) if r.tag == args.tag]
    if len(runs) != 1:
        known = sorted(r.tag for r in expand_entropy_runs(cfg, args.family))
        raise ValueError(f"entropy run {args.family}/{args.tag} is not in the config (known: {known})")
    rec = train_entropy_run(runs[0], cfg, Path(cfg["results"]), args.device)
    print(json.dumps({k: rec.get(k) for k in ("acc_base", "acc_trained", "kept_fraction", "seconds_per_step")}))
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    from rlsparsity.analysis.tables import concat_tables

    concat_tables([Path(p) for p in args.inputs], Path(args.out))
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from rlsparsity.analysis.tables import write_csv
    from rlsparsity.modeling import torch_threads
    from rlsparsity.tasks import get_task

    torch_threads()
    task = get_task(args.task, n_test=max(args.n, 1), seed=args.split_seed)
    models = {Path(m).name if not args.labels else lab: Path(m)
              for m, lab in zip(args.models, args.labels or [None] * len(args.models))}
    rows, info = stats_rows(Path(args.base), models, task, args.n, args.samples, args.temperature, args.seed)
    if args.out:
        write_csv(Path(args.out), rows, STATS_COLUMNS)
    print(json.dumps({"info": info, "rows": rows}, indent=1 if not args.json else None))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("entropy-family", help="DAG job: entropy-restricted GRPO runs of one family + stats")
    p.add_argument("family")
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--results", default=None, help="override config 'results'")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="diff worker threads")
    p.set_defaults(func=_cmd_family)

    p = sub.add_parser("entropy-run", help="train one entropy run of a family (config entropy.job_per_run)")
    p.add_argument("family")
    p.add_argument("tag", help="e.g. rho0.2-top-kept (EntropyRun.tag)")
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("entropy-table", help="stack per-family entropy CSVs")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_table)

    p = sub.add_parser("entropy-stats", help="token-entropy statistics of a base and tuned models on the "
                                             "same responses sampled from the base")
    p.add_argument("base", help="base model folder (responses are sampled from it)")
    p.add_argument("models", nargs="*", help="tuned model folders scored on the same responses")
    p.add_argument("--labels", nargs="*", help="labels for MODELS (default: folder names)")
    p.add_argument("--task", required=True)
    p.add_argument("--n", type=int, default=64, help="held-out prompts")
    p.add_argument("--samples", type=int, default=4, help="responses per prompt")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--split-seed", type=int, default=1234)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="CSV")
    p.add_argument("--json", action="store_true", help="one-line JSON")
    p.set_defaults(func=_cmd_stats)
