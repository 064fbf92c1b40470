"""Shared pieces of the hand-written on-policy algorithms (PPO, PRIME).

* :func:`sample` — draw ``n`` completions per prompt from the policy (left-padded batched
  ``model.generate``, pure ancestral sampling at ``temperature``: no top-k / top-p), and
  return token ids, attention mask and a completion mask that stops at (and includes) the
  first EOS; everything after EOS is masked.
* :func:`token_logprobs` — per-token log-probabilities of the completion tokens under any
  causal LM: ``log_softmax(logits / temperature)`` gathered at the sampled ids, computed in
  fp32 with position ids derived from the attention mask (as ``generate`` does for
  left-padded prompts), so the log-probs of the sampling policy equal the sampler's own.
  ``with_entropy=True`` also returns the full-vocabulary token entropy.
* masked statistics (:func:`masked_mean`, :func:`masked_var`, :func:`masked_whiten`),
  the PPO clipped surrogate (:func:`ppo_clip_loss`), GAE (:func:`gae`), and
* :func:`run_steps` — the step loop both algorithms share: rollout buffer → precomputed
  minibatch schedule (``epochs`` shuffled passes) → one policy optimiser step per
  minibatch, gradient masking (subnetwork finetuning), checkpoint series, resumable state
  (rollout buffer and schedule included, so a run resumed mid-rollout continues
  bit-identically), ``stop_after`` interruption.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rlsparsity.algorithms.checkpointing import finish_run
from rlsparsity.algorithms.common import (
    Interrupted,
    TrainSpec,
    apply_mask_to_grads,
    load_resume_state,
    restore_masked,
    resume_state_path,
    save_checkpoint_weights,
    save_resume_state,
    set_rng_state,
)
from rlsparsity.modeling import snap_to_bf16


# --------------------------------------------------------------------------- sampling
@dataclass
class Rollout:
    """``n`` sampled completions per prompt, rows in prompt order (prompt i -> rows i*n .. i*n+n-1)."""

    input_ids: Tensor        # (B, P + C) left-padded prompt, then completion (pad after EOS)
    attention_mask: Tensor   # (B, P + C) 1 on real prompt tokens and on completion tokens up to EOS
    prompt_len: int          # P: completion tokens start at column P
    completion_mask: Tensor  # (B, C) float, 1 up to and including the first EOS
    completions: list[str]   # decoded completions (special tokens removed)
    group: Tensor            # (B,) index of the prompt each row came from

    @property
    def completion_ids(self) -> Tensor:
        return self.input_ids[:, self.prompt_len:]

    @property
    def lengths(self) -> Tensor:
        return self.completion_mask.sum(-1).long()


def completion_mask_from_ids(completion_ids: Tensor, eos_id: int) -> Tensor:
    """1 up to and including the first ``eos_id`` of each row, 0 after it (float)."""
    is_eos = completion_ids == eos_id
    # number of EOS strictly before position t; position t is kept when it is 0
    before = torch.cumsum(is_eos.long(), dim=-1) - is_eos.long()
    return (before == 0).float()


@torch.no_grad()
def sample(model: Any, tokenizer: Any, prompts: list[str], n: int, max_new_tokens: int,
           temperature: float = 1.0) -> Rollout:
    """Sample ``n`` completions for each prompt (one left-padded ``generate`` call).

    Uses the global torch RNG, so it is reproducible under :func:`common.seed_everything`.
    """
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    if enc["input_ids"].shape[1] and (enc["attention_mask"][:, -1] == 0).any():
        raise ValueError("prompts must be left-padded (tokenizer.padding_side = 'left')")
    ids = enc["input_ids"].repeat_interleave(n, dim=0)
    att = enc["attention_mask"].repeat_interleave(n, dim=0)
    gc = GenerationConfig(
        do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0, max_new_tokens=int(max_new_tokens),
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, num_return_sequences=1,
    )
    was_training = model.training
    model.eval()
    seq = model.generate(input_ids=ids, attention_mask=att, generation_config=gc)
    if was_training:
        model.train()
    P = ids.shape[1]
    comp = seq[:, P:]
    cmask = completion_mask_from_ids(comp, tokenizer.eos_token_id)
    comp = torch.where(cmask.bool(), comp, torch.full_like(comp, tokenizer.pad_token_id))
    input_ids = torch.cat([ids, comp], dim=1)
    attention_mask = torch.cat([att, cmask.long()], dim=1)
    texts = tokenizer.batch_decode(comp, skip_special_tokens=True)
    group = torch.arange(len(prompts), device=device).repeat_interleave(n)
    return Rollout(input_ids, attention_mask, P, cmask, texts, group)


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions as ``generate`` assigns them to left-padded rows (pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def token_logprobs(model: Any, input_ids: Tensor, attention_mask: Tensor, prompt_len: int,
                   temperature: float = 1.0, with_entropy: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """log π(y_t | x, y_<t) of every completion token (columns ``prompt_len:``), shape (B, C).

    ``log_softmax(logits / temperature)`` in fp32; gradients flow when called outside
    ``no_grad``. With ``with_entropy`` also the entropy H_t = −Σ_j p_tj log p_tj of the
    same (temperature-scaled) distribution."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                use_cache=False)
    logits = out.logits[:, prompt_len - 1:-1].float() / temperature
    logp = torch.log_softmax(logits, dim=-1)
    lp = logp.gather(-1, input_ids[:, prompt_len:].unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return lp
    ent = -(logp.exp() * logp).sum(-1)
    return lp, ent


# --------------------------------------------------------------------------- masked statistics
def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1.0)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1.0)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n > 1:
            var = var * n / (n - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x − mean) / std over the masked entries (mean added back when ``shift_mean`` is False)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    w = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        w = w + mean
    return w * mask


# --------------------------------------------------------------------------- estimators and losses
def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over completion tokens (right-padded rows).

    δ_t = r_t + γ V_{t+1} − V_t (V = 0 after the last token), A_t = δ_t + γλ A_{t+1};
    returns A and the value targets A + V, both zero outside ``mask``."""
    values = values * mask
    rewards = rewards * mask
    C = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(C)):
        nxt = values[:, t + 1] if t + 1 < C else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * nxt - values[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    adv = adv * mask
    return adv, (adv + values) * mask


def ppo_clip_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
                  clip: float) -> tuple[Tensor, dict[str, float]]:
    """Token-mean of max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)), ρ = exp(log π − log π_old)."""
    ratio = torch.exp(logp - old_logp)
    l1 = -advantages * ratio
    l2 = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(l1, l2), mask)
    with torch.no_grad():
        clipfrac = masked_mean((l2 > l1).float(), mask).item()
        approx_kl = masked_mean(0.5 * (logp - old_logp) ** 2, mask).item()
    return loss, {"clipfrac": clipfrac, "approx_kl_old": approx_kl}


def select(buffer: dict[str, Any], idx: Tensor) -> dict[str, Any]:
    """Rows ``idx`` of every batch tensor in a rollout buffer (other entries passed as is)."""
    B = buffer["input_ids"].shape[0]
    return {k: (v[idx] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == B else v)
            for k, v in buffer.items()}


def trim(batch: dict[str, Any]) -> dict[str, Any]:
    """Drop completion columns that are padding in every row of a minibatch (saves compute;
    results identical since those tokens are masked and come after every real token)."""
    C = int(batch["completion_mask"].sum(0).nonzero().max().item()) + 1 if batch["completion_mask"].any() else 1
    P = int(batch["prompt_len"])
    out = {}
    for k, v in batch.items():
        if isinstance(v, Tensor) and v.dim() == 2:
            out[k] = v[:, : P + C] if k in ("input_ids", "attention_mask") else v[:, :C]
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------- the shared step loop
def finish(spec: TrainSpec, policy: Any, tokenizer: Any) -> None:
    """Save the final policy in the run's storage precision, then drop the resume state."""
    from rlsparsity.modeling import save_model

    save_model(policy, tokenizer, spec.out_dir, spec.precision)
    finish_run(spec.out_dir)


@dataclass
class Aux:
    """A model the algorithm trains besides the policy (value model, PRM): saved in the
    resume state, never in the output folder."""

    model: Any
    optimizer: Any


def adamw(params: Any, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999),
          eps: float = 1e-8) -> torch.optim.AdamW:
    # foreach=False: one code path whatever the dtype (bf16 params keep bf16 state)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, foreach=False)


def log_step(spec: TrainSpec, h: dict[str, Any], seconds: float) -> None:
    """One progress line per policy step (the log of a ppo/prime run, like TRL's per-step lines)."""
    def f(k: str) -> str:
        v = h.get(k)
        return "nan" if v is None else f"{float(v):.4g}"

    print(f"[{spec.run.algorithm}] step {h['step']}/{spec.steps} loss {f('loss')} reward_mean {f('reward_mean')} "
          f"kl {f('kl')} grad_norm {f('grad_norm')} {seconds:.3f} s/step", flush=True)


def run_steps(spec: TrainSpec, hp: dict[str, Any], policy: Any, optimizer: Any,
              make_rollout: Callable[[random.Random], tuple[dict[str, Any], dict[str, float]]],
              policy_loss: Callable[[dict[str, Any]], tuple[Tensor, dict[str, float]]],
              aux: dict[str, Aux] | None = None) -> dict[str, Any]:
    """Train ``policy`` for ``spec.steps`` optimiser steps; returns the stats dict.

    Each rollout buffer (``make_rollout(data_rng)`` → (tensors, rollout stats)) is used for
    ``hp["epochs"]`` passes, each a fresh random permutation of its rows cut into minibatches
    of ``hp["minibatch_size"]`` rows; every minibatch is ONE policy optimiser step (a spec
    step). A new rollout is drawn when the schedule is exhausted, so the last rollout may be
    used only partly. ``policy_loss(minibatch)`` may also step auxiliary models."""
    aux = aux or {}
    mask = spec.mask
    frozen = None
    if mask is not None:
        named = dict(policy.named_parameters())
        unknown = sorted(set(mask) - set(named))
        if unknown:
            raise KeyError(f"mask names not in the model: {unknown[:5]}")
        frozen = {k: named[k].detach().clone() for k in mask}
        mask = {k: v.to(named[k].device).bool() for k, v in mask.items()}

    data_rng = random.Random(spec.seed)
    step, cursor = 0, 0
    buffer: dict[str, Any] | None = None
    rstats: dict[str, float] = {}
    schedule: list[Tensor] = []
    history: list[dict[str, Any]] = []
    resumed_from: str | None = None
    state = load_resume_state(spec)
    if state is not None:
        resumed_from = f"{resume_state_path(spec)}@step-{state['step']:06d}"
        policy.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        ex = state["extra"]
        for name, a in aux.items():
            a.model.load_state_dict(state["extra_models"][name])
            a.optimizer.load_state_dict(ex["aux_optimizers"][name])
        step, cursor, buffer, rstats = state["step"], ex["cursor"], ex["buffer"], ex["rollout_stats"]
        # the state is loaded onto the CPU: the rollout buffer goes back to the policy's device
        dev = next(policy.parameters()).device
        buffer = {k: (v.to(dev) if isinstance(v, Tensor) else v) for k, v in buffer.items()} if buffer else buffer
        schedule, history = ex["schedule"], ex["history"]
        data_rng.setstate(ex["data_rng"])
        set_rng_state(state["rng"])

    epochs, mb = int(hp["epochs"]), int(hp["minibatch_size"])
    max_norm = hp.get("max_grad_norm")
    start_step, t0 = step, time.perf_counter()
    if resumed_from:
        print(f"[{spec.run.algorithm}] resumed from {resumed_from}", flush=True)
    policy.eval()  # no dropout: log-probs of the update match those of the rollout
    while step < spec.steps:
        t_step = time.perf_counter()
        if buffer is None or cursor >= len(schedule):
            buffer, rstats = make_rollout(data_rng)
            B = buffer["input_ids"].shape[0]
            schedule = [perm[i:i + mb] for _ in range(epochs) for perm in [torch.randperm(B)]
                        for i in range(0, B, mb)]
            cursor = 0
        batch = trim(select(buffer, schedule[cursor]))
        cursor += 1
        optimizer.zero_grad(set_to_none=True)
        loss, lstats = policy_loss(batch)
        loss.backward()
        apply_mask_to_grads(policy, mask)
        grad_norm = float("nan")
        if max_norm:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(policy.parameters(), float(max_norm)))
        optimizer.step()
        snap_to_bf16(policy, spec.precision)
        restore_masked(policy, mask, frozen)
        step += 1
        history.append({"step": step, "loss": float(loss.detach()), **rstats, **lstats, "grad_norm": grad_norm})
        log_step(spec, history[-1], time.perf_counter() - t_step)
        if step % spec.checkpoint_every == 0:
            save_checkpoint_weights(policy, spec, step)
            save_resume_state(
                spec, policy, optimizer, step,
                extra={"cursor": cursor, "buffer": buffer, "rollout_stats": rstats, "schedule": schedule,
                       "history": history, "data_rng": data_rng.getstate(),
                       "aux_optimizers": {k: a.optimizer.state_dict() for k, a in aux.items()}},
                extra_models={k: a.model for k, a in aux.items()})
        if spec.stop_after is not None and step >= spec.stop_after and step < spec.steps:
            raise Interrupted(f"stopped after step {step} (stop_after={spec.stop_after})")
    done = step - start_step
    spent = time.perf_counter() - t0
    return {"steps": step, "seconds_per_step": spent / done if done else float("nan"), "history": history,
            "hparams": dict(hp), "resumed_from": resumed_from}
