"""PRIME: Process Reinforcement through IMplicit rEwards (Cui et al. 2025, arXiv 2502.01456),
written small on torch + transformers (TRL has no PRIME; the official code is a verl recipe).

What it is
----------
Dense (per-token) rewards without process labels. An *implicit PRM* π_φ — a causal LM
initialised from the base/SFT model, like the policy — defines, against the frozen
reference π_ref (the base),

    per-token process reward   r_φ(y_t) = β · log π_φ(y_t|x,y<t) / π_ref(y_t|x,y<t)
    sequence implicit reward   r_φ(y)   = Σ_t r_φ(y_t)

and is trained ONLINE on the policy's own rollouts with the cross-entropy (outcome-reward
model) loss against the verifier's 0/1 outcome labels r_o:

    L_CE(φ) = −[ r_o · log σ(r_φ(y)) + (1 − r_o) · log(1 − σ(r_φ(y))) ]

Per rollout batch (prompts × K samples, K ≥ 2):
  1. sample K completions per prompt from π_θ; outcome reward r_o = the task's verifier score;
  2. online prompt filtering: keep only prompts whose group accuracy lies in
     ``accuracy_filter`` (paper: [0.2, 0.8]); we sample ``oversample`` × the prompts in one
     go and keep at most ``prompts_per_rollout`` groups that pass (variable batch size, as
     in the paper); if none passes, the unfiltered groups are used so the step still runs;
  3. process rewards r_φ(y_t) from the CURRENT PRM ("single forward"; set
     ``double_forward`` to recompute them after the PRM update);
  4. update the PRM with L_CE (``prm_epochs`` passes of ``prm_minibatch_size`` rows);
  5. advantages, exactly as the official ``compute_rloo_advantage_return``: each reward
     stream gets a leave-one-out baseline within its group — for a stream with per-token
     rewards r_t on response i of K and per-response mean m_i (mean over the tokens that
     carry that stream: all completion tokens for the process stream, the last token for
     the outcome stream), r_t ← r_t · K/(K−1) − Σ_j m_j/(K−1); for the outcome stream this
     is exactly r_o^i − mean_{j≠i} r_o^j placed on the last token. The streams are mixed as
     ``process_coef`` · process + ``outcome_coef`` · outcome, returns are the γ = 1
     reverse cumulative sums over completion tokens, and the advantages are the returns
     whitened over the batch's completion tokens;
  6. update π_θ with the PPO clipped surrogate (ε = 0.2, token mean) over ``epochs``
     passes of minibatches; optional KL loss to π_ref (k3 estimator, ``kl_coef``; the
     PRIME recipe runs without it, the default here is 0).

What a "step" is
----------------
``spec.steps`` counts POLICY optimiser steps, as for PPO: a rollout batch of B rows
(B = kept prompts × K) gives ``epochs × ceil(B / minibatch_size)`` policy steps (defaults:
1 × 64/32 = 2 when all prompts pass the filter); PRM optimiser steps happen once per
rollout batch, before the policy steps, and are not counted.

What it leaves out
------------------
The paper's PRM is initialised from the SFT model and its reference is that same SFT
model — here both are the base (the only model we have), as in the paper's default.
No value model (PRIME does not need one), no learned reward-model warm-up, no separate
verifier format rewards, no learning-rate schedule. The PRM is kept in
fp32 whatever the run precision (it is never saved with the policy); its reference is
an fp32 copy of the base, so the implicit reward is exactly 0 before the first PRM update.

Multi-process
-------------
Launched by ``torchrun``/``accelerate launch`` (see :mod:`.distributed`), policy, PRM and
references are sharded (FSDP2) or replicated (DDP). Each rank samples and scores its share
of the (oversampled) prompts with per-row generators (under FSDP from the policy all-gathered
whole once, or, with ``rollout_gather: layer``, through FSDP2's per-layer all-gathers in every
decoding step: see :func:`rollout.sample_share`); the rows are gathered, so the accuracy
filter and the leave-one-out baselines see whole groups and the whitening sees the whole
batch, identically on every rank; the log-prob forwards of the kept rows are
split over ranks and gathered; PRM and policy losses are local sums over GLOBAL counts.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as Fnn
from torch import Tensor

from rlsparsity.algorithms import distributed as D
from rlsparsity.algorithms.common import TrainSpec, check_choices, seed_everything
from rlsparsity.algorithms.rollout import (
    masked_mean,
    masked_whiten,
    ppo_clip_loss,
    sample,
    sample_share,
    select,
    token_logprobs,
    token_mean,
    trim,
)
from rlsparsity.algorithms.steps import Aux, adamw, checkpointed, finish, local_share, run_steps, sharded_forward
from rlsparsity.modeling import load_tokenizer, max_new_tokens_for, torch_threads

DEFAULTS: dict[str, Any] = {
    "lr": 1e-4,                  # policy AdamW learning rate (tiny bases; as the TRL-backed grpo/rloo)
    "weight_decay": 0.0,
    "prm_lr": 2e-4,              # implicit-PRM learning rate (paper: 2x the policy's, 1e-6 vs 5e-7)
    "prompts_per_rollout": 16,
    "samples_per_prompt": 4,     # K (paper: 4); B = 64 rows when every prompt passes the filter
    "oversample": 2,             # prompts sampled per kept prompt, for the accuracy filter
    "accuracy_filter": [0.2, 0.8],  # keep prompts with lo <= group accuracy <= hi; None: no filter
    "minibatch_size": 32,
    "epochs": 1,                 # policy passes over each rollout batch (PRIME: 1)
    "prm_beta": 0.05,            # β of the implicit reward (paper: 0.05)
    "prm_minibatch_size": None,  # None: the whole rollout batch is one PRM step
    "prm_epochs": 1,
    "process_coef": 5.0,         # reward_dpo_coef of the official recipe
    "outcome_coef": 5.0,         # reward_gt_coef of the official recipe
    "double_forward": False,
    "kl_coef": 0.0,              # k3 KL loss to the reference (0: PRIME's default, KL only logged)
    "clip": 0.2,
    "max_grad_norm": 1.0,
    # recompute each decoder layer's activations in backward (HF gradient checkpointing) for the
    # trained LMs: memory for time at 7-9B (rlsparsity.memory_model counts it); off by default
    "gradient_checkpointing": False,
    "rollout_gather": "full",   # how the FSDP-sharded policy generates: as ppo's (see ppo.DEFAULTS)
    "temperature": 1.0,
    "max_new_tokens": None,      # None: modeling.max_new_tokens_for(model)
}
#: hparams with a fixed set of values: checked at config load (rlsparsity.config_validate reads
#: this literal) and again at the start of train (common.check_choices)
CHOICES: dict[str, tuple[str, ...]] = {"rollout_gather": ("full", "layer")}


def rloo_stream(rewards: Tensor, mask: Tensor, group: Tensor) -> Tensor:
    """The official PRIME ``masked_rloo``: r ← r·K/(K−1) − Σ_{j in group} mean_mask(r_j)/(K−1), on ``mask``.

    Vectorised over groups (no per-group loop): group sums and sizes by ``index_add``."""
    m = mask.to(rewards.dtype)
    per_resp = (rewards * m).sum(-1) / m.sum(-1).clamp(min=1.0)
    _, inv = torch.unique(group, return_inverse=True)
    n_groups = int(inv.max().item()) + 1 if inv.numel() else 0
    size = torch.zeros(n_groups, dtype=rewards.dtype, device=rewards.device).index_add_(
        0, inv, torch.ones_like(per_resp))
    if n_groups and bool((size < 2).any()):
        raise ValueError("PRIME needs at least 2 samples per prompt (samples_per_prompt >= 2)")
    total = torch.zeros(n_groups, dtype=rewards.dtype, device=rewards.device).index_add_(0, inv, per_resp)
    k = size[inv].unsqueeze(-1)
    base = (total[inv] / (size[inv] - 1)).unsqueeze(-1)
    return (rewards * k / (k - 1) - base) * m


def prime_advantages(process: Tensor, scores: Tensor, cm: Tensor, group: Tensor, process_coef: float,
                     outcome_coef: float) -> tuple[Tensor, Tensor]:
    """RLOO of both streams, mixed; returns = reverse cumsum (γ = 1); advantages = whitened returns."""
    last = cm.sum(-1).long() - 1
    rows = torch.arange(cm.shape[0], device=cm.device)
    outcome = torch.zeros_like(cm)
    outcome[rows, last] = scores.to(cm.dtype)
    omask = torch.zeros_like(cm)
    omask[rows, last] = 1.0
    total = torch.zeros_like(cm)
    if process_coef:
        total = total + process_coef * rloo_stream(process, cm, group)
    if outcome_coef:
        total = total + outcome_coef * rloo_stream(outcome, omask, group)
    returns = (total * cm).flip(-1).cumsum(-1).flip(-1)
    return masked_whiten(returns, cm), returns


def train(spec: TrainSpec) -> dict[str, Any]:
    torch_threads()
    hp = {**DEFAULTS, **spec.hparams}
    seed_everything(spec.seed)
    check_choices(hp, CHOICES, "prime")
    d = D.setup(spec.device, spec.fsdp_units)
    D.check_share(d, int(hp["prompts_per_rollout"]), "prime")
    tok = load_tokenizer(spec.base_dir)

    def frozen(precision: str) -> Any:
        return D.wrap(d, D.load_policy_like(d, spec.base_dir, precision).eval().requires_grad_(False),
                      trainable=False)

    ckpt = bool(hp["gradient_checkpointing"])
    policy = D.wrap(d, checkpointed(D.load_policy_like(d, spec.base_dir, spec.precision), ckpt))
    ref = frozen(spec.precision)
    prm_ref = ref if D.unwrap(policy).dtype == torch.float32 else frozen("fp32")
    prm = D.wrap(d, checkpointed(D.load_policy_like(d, spec.base_dir, "fp32").eval(), ckpt))
    if hp["max_new_tokens"] is None:
        hp["max_new_tokens"] = max_new_tokens_for(policy, spec.task)
    K = int(hp["samples_per_prompt"])
    if K < 2:
        raise ValueError("PRIME needs samples_per_prompt >= 2 (leave-one-out baselines)")
    opt = adamw(policy.parameters(), hp["lr"], hp["weight_decay"])
    prm_opt = adamw(prm.parameters(), hp["prm_lr"], hp["weight_decay"])
    task, train_set = spec.task, spec.task.train
    T = float(hp["temperature"])
    beta = float(hp["prm_beta"])

    def prm_update(buf: dict[str, Any], gen: torch.Generator | None) -> float:
        B = buf["input_ids"].shape[0]
        mb = int(hp["prm_minibatch_size"] or B)
        losses = []
        for _ in range(int(hp["prm_epochs"])):
            perm = torch.randperm(B) if gen is None else torch.randperm(B, generator=gen)
            for i in range(0, B, mb):
                b = trim(select(buf, perm[i:i + mb]))
                if d.active:
                    b = local_share(d, b)
                lp = token_logprobs(prm, b["input_ids"], b["attention_mask"], b["prompt_len"], T)
                seq_reward = beta * ((lp - b["prm_ref_logp"]) * b["completion_mask"]).sum(-1)
                target = b["scores"].to(seq_reward.dtype)
                if d.active:  # this rank's rows' share of the mean over the GLOBAL minibatch
                    loss = (Fnn.binary_cross_entropy_with_logits(seq_reward, target, reduction="none")
                            * b["row_weight"]).sum() / b["row_count"]
                else:
                    loss = Fnn.binary_cross_entropy_with_logits(seq_reward, target)
                prm_opt.zero_grad(set_to_none=True)
                (loss * d.loss_scale if d.loss_scale != 1.0 else loss).backward()
                if hp.get("max_grad_norm"):
                    D.clip_grad_norm(d, prm, float(hp["max_grad_norm"]))
                prm_opt.step()
                losses.append(D.all_sum(d, {"loss": float(loss.detach())})["loss"])
        return sum(losses) / len(losses)

    def forwards(b: dict[str, Any]) -> dict[str, Tensor]:
        ids, att, P = b["input_ids"], b["attention_mask"], b["prompt_len"]
        with torch.no_grad():
            old_logp, ent = token_logprobs(policy, ids, att, P, T, with_entropy=True)
            ref_logp = token_logprobs(ref, ids, att, P, T)
            prm_ref_logp = ref_logp if prm_ref is ref else token_logprobs(prm_ref, ids, att, P, T)
            prm_logp = token_logprobs(prm, ids, att, P, T)
        return {"old_logp": old_logp, "ent": ent, "ref_logp": ref_logp, "prm_ref_logp": prm_ref_logp,
                "prm_logp": prm_logp}

    def prm_logps(b: dict[str, Any]) -> dict[str, Tensor]:
        with torch.no_grad():
            return {"prm_logp": token_logprobs(prm, b["input_ids"], b["attention_mask"], b["prompt_len"], T)}

    def make_rollout(rng: Any) -> tuple[dict[str, Any], dict[str, float]]:
        n_prompts = int(hp["prompts_per_rollout"])
        filt = hp.get("accuracy_filter")
        n_sample = n_prompts * int(hp["oversample"]) if filt else n_prompts
        entries = rng.sample(train_set, n_sample)
        gen = None
        if d.active:  # this rank's prompts, then every row of the rollout on every rank
            ro, sc = sample_share(d, policy, tok, task, entries, K, int(hp["max_new_tokens"]), T,
                                  rng.getrandbits(63), str(hp["rollout_gather"]))
            gen = torch.Generator().manual_seed(rng.getrandbits(63))
            g = D.gather_rows(d, {"input_ids": ro.input_ids, "attention_mask": ro.attention_mask,
                                  "completion_mask": ro.completion_mask, "scores": sc}, len(sc))
            ids_all, att_all, cm_all, scores = g["input_ids"], g["attention_mask"], g["completion_mask"], g["scores"]
            group_all = torch.arange(n_sample, device=scores.device).repeat_interleave(K)
        else:
            prompts = [task.prompt(e, tok) for e in entries]
            ro = sample(policy, tok, prompts, K, int(hp["max_new_tokens"]), T)
            scores = torch.tensor(
                [float(task.score(c, entries[g])) for c, g in zip(ro.completions, ro.group.tolist(), strict=False)],
                device=ro.input_ids.device,
            )
            ids_all, att_all, cm_all, group_all = ro.input_ids, ro.attention_mask, ro.completion_mask, ro.group
        acc = scores.view(n_sample, K).mean(-1)
        if filt:
            lo, hi = float(filt[0]), float(filt[1])
            passing = [g for g, a in enumerate(acc.tolist()) if lo <= a <= hi][:n_prompts]
            keep_groups = passing if passing else list(range(n_prompts))
        else:
            keep_groups = list(range(n_prompts))
        rows = (
            torch.tensor(keep_groups, device=scores.device).unsqueeze(-1) * K + torch.arange(K, device=scores.device)
        ).reshape(-1)
        buf = trim(
            {
                "input_ids": ids_all[rows],
                "attention_mask": att_all[rows],
                "prompt_len": ro.prompt_len,
                "completion_mask": cm_all[rows],
            }
        )
        cm = buf["completion_mask"]
        buf["scores"] = scores[rows]
        buf["group"] = group_all[rows]
        f = sharded_forward(d, buf, forwards)
        old_logp, ent, ref_logp, prm_ref_logp = f["old_logp"], f["ent"], f["ref_logp"], f["prm_ref_logp"]
        process = beta * (f["prm_logp"] - prm_ref_logp) * cm
        buf.update(old_logp=old_logp, ref_logp=ref_logp, prm_ref_logp=prm_ref_logp)
        # PRM accuracy before its update: sign of the implicit reward vs the outcome label
        prm_acc = ((process.sum(-1) > 0).float() == buf["scores"]).float().mean().item()
        prm_loss = prm_update(buf, gen)
        if hp.get("double_forward"):
            process = beta * (sharded_forward(d, buf, prm_logps)["prm_logp"] - prm_ref_logp) * cm
        adv, returns = prime_advantages(
            process, buf["scores"], cm, buf["group"], float(hp["process_coef"]), float(hp["outcome_coef"])
        )
        buf.update(advantages=adv, returns=returns)
        kl = (old_logp - ref_logp) * cm
        stats = {
            "reward_mean": scores.mean().item(),
            "reward_kept_mean": buf["scores"].mean().item(),
            "kept_prompts": float(len(keep_groups)),
            "filter_passed": float(bool(filt) and len(passing) > 0),
            "kl": kl.sum(-1).mean().item(),
            "entropy": masked_mean(ent, cm).item(),
            "process_reward_mean": process.sum(-1).mean().item(),
            "prm_loss": prm_loss,
            "prm_accuracy": prm_acc,
            "completion_length": cm.sum(-1).mean().item(),
        }
        return buf, stats

    def policy_loss(b: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        cm, n = b["completion_mask"], b.get("token_count")
        logp = token_logprobs(policy, b["input_ids"], b["attention_mask"], b["prompt_len"], T)
        loss, st = ppo_clip_loss(logp, b["old_logp"], b["advantages"], cm, float(hp["clip"]), n)
        if hp["kl_coef"]:
            d_ = b["ref_logp"] - logp
            k3 = torch.exp(d_) - d_ - 1.0
            loss = loss + float(hp["kl_coef"]) * token_mean(k3, cm, n)
        return loss, st

    stats = run_steps(spec, hp, policy, opt, make_rollout, policy_loss, aux={"prm": Aux(prm, prm_opt)}, d=d)
    finish(spec, policy, tok, d)
    return stats
