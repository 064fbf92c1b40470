"""The token-entropy mask of the policy gradient (arXiv 2506.01939) and the trainer that applies it.

Selection rules (``entropy.selection`` in the config; recorded in each run's hparams):

* ``exact_k`` (default, the official verl-fork code): exactly k = max(1, int(N·ρ + 0.9999)) of the
  N valid response tokens, the highest-entropy ones; ties broken arbitrarily but deterministically
  (here: by position, earlier first). The kept share is ρ up to 1/N, whatever the ties.
* ``threshold`` (TRL's ``top_entropy_quantile``): every token with H ≥ the (1 − ρ) quantile, all
  ties kept — the kept share exceeds ρ under ties and reaches 100 % when ≥ 1 − ρ of the tokens
  share one entropy value (common for near-deterministic template tokens).

Selection scope: the official code selects per forward micro-batch on each rank. Here the trainer
requires one micro-batch per generation batch on one process, so the selection is taken over the
whole batch of one optimiser step — which is that micro-batch.

Normalisers, named by source: ``kept`` — official code: token mean over the kept tokens;
``all`` — paper equation / TRL: the masked sum divided by all response tokens (≈ ρ times smaller).
"""

from __future__ import annotations

from typing import Any

VARIANTS: tuple[str, ...] = ("top", "bottom")
NORMALISERS: tuple[str, ...] = ("kept", "all")
SELECTIONS: tuple[str, ...] = ("exact_k", "threshold")
SELECTION_SCOPE = "whole batch (= the one micro-batch per optimiser step; official: per micro-batch per rank)"
#: ``bottom`` keeps the tokens outside the top-20% (paper: "only the lowest 80%").
BOTTOM_EXCLUDED = 0.2
BOTTOM_RHO = 1.0 - BOTTOM_EXCLUDED
#: DAPO settings of the paper (SPEC §2): clip-higher, no KL, no entropy bonus, token-mean loss.
DAPO: dict[str, Any] = dict(loss_type="dapo", epsilon=0.2, epsilon_high=0.28, beta=0.0, entropy_coef=0.0)


def exact_k(n: int, rho: float) -> int:
    """Official rule's token count: k = max(1, int(n·ρ + 0.9999)) (≈ ⌈ρn⌉); 0 when n = 0."""
    return 0 if n <= 0 else min(n, max(1, int(n * float(rho) + 0.9999)))


def select_exact_k(entropies: Any, mask: Any, rho: float) -> Any:
    """Official (verl fork) rule: exactly k = :func:`exact_k` (valid tokens, ρ) of the valid
    tokens, those of highest entropy; ties broken deterministically by position (a stable
    descending sort over the flattened batch: among equal entropies the earlier token wins)."""
    import torch

    valid = mask.bool()
    flat_idx = torch.nonzero(valid.reshape(-1), as_tuple=False).reshape(-1)
    out = torch.zeros(valid.numel(), dtype=torch.bool, device=valid.device)
    k = exact_k(int(flat_idx.numel()), rho)
    if k:
        vals = entropies.detach().reshape(-1)[flat_idx].float()
        order = torch.sort(vals, descending=True, stable=True).indices[:k]
        out[flat_idx[order]] = True
    return out.reshape(valid.shape)


def select_threshold(entropies: Any, mask: Any, rho: float) -> Any:
    """TRL's rule (``top_entropy_quantile``): every valid token with H ≥ the (1 − ρ) quantile of the
    valid entropies (``torch.quantile``, linear interpolation); all ties at the threshold are kept,
    so the kept share is ≥ ρ and reaches 1 when ≥ 1 − ρ of the tokens share one value."""
    import torch

    valid = mask.bool()
    vals = entropies[valid].float()
    if vals.numel() == 0:
        return torch.zeros_like(valid)
    if rho >= 1.0:
        return valid.clone()
    tau = torch.quantile(vals, 1.0 - float(rho))
    return (entropies.float() >= tau) & valid


def select_tokens(entropies: Any, mask: Any, rho: float, variant: str = "top", selection: str = "exact_k") -> Any:
    """The kept-token set of one batch (single process). ``top``: the top-ρ tokens by entropy under
    ``selection`` (``exact_k``: the official rule, default; ``threshold``: TRL's); ``bottom``: the
    valid tokens outside the top-20 % set. Padding (mask 0) is never kept."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; known: {SELECTIONS}")
    q = BOTTOM_EXCLUDED if variant == "bottom" else float(rho)
    valid = mask.bool()
    top = valid.clone() if q >= 1.0 else (select_exact_k if selection == "exact_k" else select_threshold)(
        entropies, mask, q)
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

        Extra keyword arguments: ``entropy_variant`` (top | bottom), ``entropy_normaliser``
        (kept | all) and ``entropy_selection`` (exact_k | threshold). The kept share is TRL's
        ``args.top_entropy_quantile`` (ρ for top; 0.2 for bottom, whose complement is trained).
        Per step it logs ``entropy_mask/kept_fraction``,
        ``entropy_mask/kept_tokens``, ``entropy_mask/tokens`` and ``entropy_mask/threshold``.
        """

        def __init__(
            self,
            *args: Any,
            entropy_variant: str = "top",
            entropy_normaliser: str = "kept",
            entropy_selection: str = "exact_k",
            **kwargs: Any,
        ) -> None:
            if entropy_variant not in VARIANTS:
                raise ValueError(f"entropy_variant {entropy_variant!r} not in {VARIANTS}")
            if entropy_normaliser not in NORMALISERS:
                raise ValueError(f"entropy_normaliser {entropy_normaliser!r} not in {NORMALISERS}")
            if entropy_selection not in SELECTIONS:
                raise ValueError(f"entropy_selection {entropy_selection!r} not in {SELECTIONS}")
            super().__init__(*args, **kwargs)
            a = self.args
            if a.loss_type != "dapo":
                raise ValueError(f"EntropyGRPOTrainer needs loss_type='dapo' (got {a.loss_type!r})")
            if a.gradient_accumulation_steps != 1 or self.accelerator.num_processes != 1:
                raise ValueError(
                    "EntropyGRPOTrainer needs one micro-batch per optimiser step on one process "
                    "(gradient_accumulation_steps = 1): the selection is taken per micro-batch, "
                    "and here the micro-batch must be the whole update batch"
                )
            # steps_per_generation k > 1 is fine: the generation batch is cut into k update batches
            # (the official code's mini-batches), each one optimiser step with its own selection
            if self._entropy_bonus_enabled:
                raise ValueError("the paper trains without an entropy bonus: entropy_coef must be 0")
            if entropy_variant == "bottom" and self.top_entropy_quantile >= 1.0:
                raise ValueError("bottom variant needs top_entropy_quantile < 1 (the top set it complements)")
            self.entropy_variant = entropy_variant
            self.entropy_normaliser = entropy_normaliser
            self.entropy_selection = entropy_selection
            self._selection: Any = None
            self._threshold = float("nan")

        def get_high_entropy_mask(self, entropies: Any, mask: Any, threshold: float) -> Any:
            if self.entropy_selection == "threshold":
                top = super().get_high_entropy_mask(entropies, mask, threshold)  # TRL: H >= quantile, ties kept
            else:
                rho = float(self.top_entropy_quantile)  # TRL passes threshold = 1 − this (a quantile level)
                top = select_exact_k(entropies, mask, rho) if rho < 1.0 else mask.bool().clone()
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


HISTORY_KEYS = (
    "loss",
    "reward",
    "reward_std",
    "entropy",
    "grad_norm",
    "clip_ratio/region_mean",
    "entropy_mask/kept_fraction",
    "entropy_mask/kept_tokens",
    "entropy_mask/tokens",
    "entropy_mask/threshold",
)


def build_trainer(
    spec: Any, rho: float, variant: str = "top", normaliser: str = "kept", selection: str = "exact_k"
) -> tuple[Any, dict[str, Any]]:
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
    args = _args(
        GRPOConfig,
        spec,
        hp,
        num_generations=hp["num_generations"],
        max_completion_length=max_new_tokens_for(model, spec.task),
        temperature=hp["temperature"],
        beta=hp["beta"],
        epsilon=hp["epsilon"],
        epsilon_high=hp["epsilon_high"],
        loss_type=hp["loss_type"],
        top_entropy_quantile=quantile,
        entropy_coef=hp["entropy_coef"],
        steps_per_generation=hp.get("steps_per_generation"),
    )
    tr = trainer_class()(
        model=model,
        reward_funcs=_reward_fn(spec),
        args=args,
        train_dataset=_online_dataset(spec, tok),
        processing_class=tok,
        entropy_variant=variant,
        entropy_normaliser=normaliser,
        entropy_selection=selection,
    )
    hp = {
        **hp,
        "top_entropy_quantile": quantile,
        "rho": float(rho),
        "variant": variant,
        "normaliser": normaliser,
        "selection": selection,
        "selection_scope": SELECTION_SCOPE,
    }
    return tr, hp


def train_entropy(
    spec: Any, rho: float, variant: str = "top", normaliser: str = "kept", selection: str = "exact_k"
) -> dict[str, Any]:
    """Train ``spec`` with the entropy-restricted DAPO/GRPO objective; returns the stats dict.

    Algorithm-like entry (see :mod:`rlsparsity.algorithms.common`): the final model, weight
    checkpoints and resume handling are those of the GRPO entry. ``history`` holds the
    per-step kept fraction (``entropy_mask/kept_fraction``)."""
    from rlsparsity.algorithms.trl_algos import _run_trainer

    tr, hp = build_trainer(spec, rho, variant, normaliser, selection)
    stats = _run_trainer(spec, tr, tr.model, tr.processing_class)
    history = [
        {k: v for k, v in h.items() if k in HISTORY_KEYS or k == "step"} for h in tr.state.log_history if "loss" in h
    ]
    kf = [h["entropy_mask/kept_fraction"] for h in history if "entropy_mask/kept_fraction" in h]
    return {
        **stats,
        "history": history,
        "hparams": hp,
        "kept_fraction": sum(kf) / len(kf) if kf else float("nan"),
        "kept_fraction_min": min(kf) if kf else float("nan"),
        "kept_fraction_max": max(kf) if kf else float("nan"),
    }
