"""PPO for language models (Ouyang et al. 2022; "The N implementation details of RLHF with PPO",
Huang et al. 2024), written small on torch + transformers (TRL dropped its PPO after 1.12).

What it is
----------
The policy π_θ (loaded from the base) generates completions for prompts of the task; the
episode reward is the task's verifier score at the LAST completion token (the EOS, or the
last token of a truncated completion), and every completion token t also gets a KL
penalty against the frozen reference π_ref (the base itself):

    r_t = −β · (log π_old(y_t|·) − log π_ref(y_t|·))   [+ score on the last token]

(the k1 per-token estimator, as in the recipe; π_ref is loaded in the run's training dtype,
so the penalty is exactly 0 before the first update). A value model V_ψ predicts, from the
state before each completion token, the return. Advantages come from GAE with γ = 1,
λ = 0.95:  δ_t = r_t + γ V(t+1) − V(t),  A_t = δ_t + γλ A_{t+1}  (V = 0 past the last
token); value targets are A_t + V(t); the advantages are then whitened over all completion
tokens of the rollout batch. Each rollout batch is reused for ``epochs`` passes of
shuffled minibatches:

    policy loss  = token-mean of max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)),  ρ = π_θ/π_old, ε = 0.2
    value loss   = ½ · token-mean of max((V − R)², (V_old + clip(V − V_old, ±ε_v) − R)²)

with separate AdamW optimisers for policy and value model, gradient-norm clipping, and
no dropout (models in eval mode, so the log-probs of the update equal the sampler's).

Value model
-----------
A SEPARATE critic: the base model's transformer trunk (``base_model``, i.e. without the
LM head) with a fresh scalar linear head (weights ~ N(0, 1/(d+1)), bias 0, as the
recipe initialises its heads), trained in fp32 whatever the run precision. Why separate
rather than a value head on the policy's own trunk: with a shared trunk the value loss
would update the policy's parameters too, and this project measures exactly which
policy parameters RL changes; a separate critic (the recipe's and TRL's choice, which
initialises it from the reward model — here there is none, the reward is a verifier, so
from the base) keeps the policy's update purely the policy-gradient one. Its parameters
are saved only in the resume state, never with the policy.

What a "step" is
----------------
``spec.steps`` counts POLICY optimiser steps. One rollout batch = ``prompts_per_rollout``
prompts × ``samples_per_prompt`` completions (B rows); it is used for ``epochs`` passes,
each a fresh permutation cut into minibatches of ``minibatch_size`` rows, and every
minibatch is one policy step (and one value-model step). So a rollout yields
``epochs × ceil(B / minibatch_size)`` steps (defaults: 1 × 64/32 = 2); a new rollout is
sampled from the current policy when they are used up, and the last rollout of a run may
be used only partly.

What it leaves out
------------------
No reward model (the reward is the task's verifier, as in RLVR), no adaptive KL
controller (fixed β), no reward whitening/clipping, no EOS-missing penalty, no
learning-rate schedule, no mixed-in pretraining gradient (PPO-ptx), no entropy bonus,
no gradient accumulation.

Multi-process
-------------
Launched by ``torchrun``/``accelerate launch`` (see :mod:`.distributed`), policy, critic and
reference are sharded (FSDP2) or replicated (DDP); each rank samples its contiguous share
of the rollout's prompts with per-row generators (:func:`rollout.sample_share`; under FSDP
from the policy all-gathered whole once, or, with ``rollout_gather: layer``, through FSDP2's
per-layer all-gathers in every decoding step, every rank stepping until all are done: the
same rollouts without a full copy of the policy per GPU) and computes their log-probs and
values; the rows are gathered in global order, so rewards, GAE and the whitening statistics
are computed on the whole batch, identically on every rank; every loss is this rank's token
sum over the GLOBAL token count of the minibatch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from rlsparsity.algorithms import distributed as D
from rlsparsity.algorithms.common import TrainSpec, check_choices, seed_everything
from rlsparsity.algorithms.rollout import (
    gae,
    masked_mean,
    masked_whiten,
    position_ids,
    ppo_clip_loss,
    sample,
    sample_share,
    token_logprobs,
    token_mean,
)
from rlsparsity.algorithms.steps import Aux, adamw, checkpointed, finish, run_steps
from rlsparsity.modeling import load_model, load_tokenizer, max_new_tokens_for, torch_threads

DEFAULTS: dict[str, Any] = {
    "lr": 1e-4,                 # policy AdamW learning rate (tiny bases; as the TRL-backed grpo/rloo)
    "weight_decay": 0.0,        # AdamW decoupled weight decay (policy and value model)
    "vf_lr": 3e-3,              # value-model learning rate (the critic starts from an untrained head)
    "prompts_per_rollout": 16,
    "samples_per_prompt": 4,    # rollout batch B = 64 rows
    "minibatch_size": 32,
    "epochs": 1,                # passes over each rollout batch -> 2 policy steps per rollout
    "kl_coef": 0.05,            # β of the per-token KL penalty in the reward
    "gamma": 1.0,
    "lam": 1.0,                 # GAE λ (verl's default for LLM PPO; 0.95 lets the fresh critic's
                                # errors leak into every token's advantage: measured worse here)
    "clip": 0.2,                # ε of the policy ratio
    "vf_clip": 0.2,             # ε of the value clipping
    "vf_coef": 0.5,
    "max_grad_norm": 1.0,
    # recompute each decoder layer's activations in backward (HF gradient checkpointing) for the
    # trained LMs: memory for time at 7-9B (rlsparsity.memory_model counts it); off by default
    "gradient_checkpointing": False,
    # how the FSDP-sharded policy generates a rollout (rollout.sample_share): "full" all-gathers it
    # whole once (fast; a full compute-dtype copy of the policy on every GPU), "layer" keeps FSDP2's
    # per-layer all-gathers in every decoding step (generate(synced_gpus=True); no such copy, one
    # all-gather of the policy per generated token). Same rollouts either way; single-process and
    # DDP runs ignore it. rlsparsity.memory_model counts the copy for "full" only
    "rollout_gather": "full",
    "temperature": 1.0,
    "max_new_tokens": None,     # None: modeling.max_new_tokens_for(model) (16 for tiny vocabularies)
}
#: hparams with a fixed set of values: checked at config load (rlsparsity.config_validate reads
#: this literal) and again at the start of train (common.check_choices)
CHOICES: dict[str, tuple[str, ...]] = {"rollout_gather": ("full", "layer")}


class ValueModel(nn.Module):
    """Transformer trunk of the base + scalar head; V for the state before each completion token."""

    def __init__(self, trunk: nn.Module, hidden_size: int):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(hidden_size + 1))
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, prompt_len: int) -> Tensor:
        h = self.trunk(input_ids=input_ids, attention_mask=attention_mask,
                       position_ids=position_ids(attention_mask), use_cache=False).last_hidden_state
        # a fresh tensor, not a view (FSDP2 hooks the output of a wrapped module for backward)
        return self.head(h[:, prompt_len - 1:-1].float()).squeeze(-1).clone()


def build_value_model(base_dir: Any) -> ValueModel:
    lm = load_model(base_dir, "fp32")
    trunk = lm.base_model
    hidden = lm.config.get_text_config().hidden_size
    return ValueModel(trunk, hidden)


def train(spec: TrainSpec) -> dict[str, Any]:
    torch_threads()
    hp = {**DEFAULTS, **spec.hparams}
    seed_everything(spec.seed)
    check_choices(hp, CHOICES, "ppo")
    d = D.setup(spec.device, spec.fsdp_units)
    D.check_share(d, int(hp["prompts_per_rollout"]), "ppo")
    tok = load_tokenizer(spec.base_dir)
    ckpt = bool(hp["gradient_checkpointing"])
    policy = D.wrap(d, checkpointed(D.load_policy_like(d, spec.base_dir, spec.precision), ckpt))
    ref = D.wrap(d, D.load_policy_like(d, spec.base_dir, spec.precision).eval().requires_grad_(False), trainable=False)
    critic = build_value_model(spec.base_dir).eval()
    checkpointed(critic.trunk, ckpt)
    critic = D.wrap(d, critic)
    if hp["max_new_tokens"] is None:
        hp["max_new_tokens"] = max_new_tokens_for(policy, spec.task)
    opt = adamw(policy.parameters(), hp["lr"], hp["weight_decay"])
    vopt = adamw(critic.parameters(), hp["vf_lr"], hp["weight_decay"])
    task, train_set = spec.task, spec.task.train
    T = float(hp["temperature"])
    beta = float(hp["kl_coef"])
    K, max_new = int(hp["samples_per_prompt"]), int(hp["max_new_tokens"])

    def score_and_forward(ids: Tensor, att: Tensor, P: int) -> dict[str, Tensor]:
        with torch.no_grad():
            old_logp, ent = token_logprobs(policy, ids, att, P, T, with_entropy=True)
            ref_logp = token_logprobs(ref, ids, att, P, T)
            values = critic(ids, att, P)
        return {"old_logp": old_logp, "ent": ent, "ref_logp": ref_logp, "values": values}

    def to_buffer(ids: Tensor, att: Tensor, P: int, cm: Tensor, scores: Tensor,
                  f: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, float]]:
        old_logp, ent, ref_logp, values = f["old_logp"], f["ent"], f["ref_logp"], f["values"] * cm
        kl = (old_logp - ref_logp) * cm
        rewards = -beta * kl
        last = cm.sum(-1).long() - 1
        rewards[torch.arange(len(last), device=last.device), last] += scores.to(rewards.dtype)
        adv, returns = gae(rewards, values, cm, float(hp["gamma"]), float(hp["lam"]))
        adv = masked_whiten(adv, cm)
        buffer = {
            "input_ids": ids,
            "attention_mask": att,
            "prompt_len": P,
            "completion_mask": cm,
            "old_logp": old_logp,
            "values": values,
            "returns": returns,
            "advantages": adv,
        }
        stats = {
            "reward_mean": scores.mean().item(),
            "kl": kl.sum(-1).mean().item(),
            "non_score_reward": (-beta * kl).sum(-1).mean().item(),
            "entropy": masked_mean(ent, cm).item(),
            "completion_length": cm.sum(-1).long().float().mean().item(),
        }
        return buffer, stats

    def make_rollout(rng: Any) -> tuple[dict[str, Any], dict[str, float]]:
        entries = rng.sample(train_set, int(hp["prompts_per_rollout"]))
        if d.active:  # this rank's prompts, then every row of the rollout on every rank
            ro, scores = sample_share(d, policy, tok, task, entries, K, max_new, T, rng.getrandbits(63),
                                      str(hp["rollout_gather"]))
            f = score_and_forward(ro.input_ids, ro.attention_mask, ro.prompt_len)
            g = D.gather_rows(d, {"input_ids": ro.input_ids, "attention_mask": ro.attention_mask,
                                  "completion_mask": ro.completion_mask, "scores": scores, **f}, len(scores))
            return to_buffer(g.pop("input_ids"), g.pop("attention_mask"), ro.prompt_len, g.pop("completion_mask"),
                             g.pop("scores"), g)
        prompts = [task.prompt(e, tok) for e in entries]
        ro = sample(policy, tok, prompts, K, max_new, T)
        scores = torch.tensor(
            [float(task.score(c, entries[g])) for c, g in zip(ro.completions, ro.group.tolist(), strict=False)],
            device=ro.input_ids.device,
        )
        f = score_and_forward(ro.input_ids, ro.attention_mask, ro.prompt_len)
        return to_buffer(ro.input_ids, ro.attention_mask, ro.prompt_len, ro.completion_mask, scores, f)

    def policy_loss(b: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        cm, P, n = b["completion_mask"], b["prompt_len"], b.get("token_count")
        # value model step on the same minibatch
        v = critic(b["input_ids"], b["attention_mask"], P)
        v_clipped = b["values"] + torch.clamp(v - b["values"], -float(hp["vf_clip"]), float(hp["vf_clip"]))
        vf_loss = 0.5 * token_mean(torch.maximum((v - b["returns"]) ** 2, (v_clipped - b["returns"]) ** 2), cm, n)
        vopt.zero_grad(set_to_none=True)
        vloss = float(hp["vf_coef"]) * vf_loss
        (vloss * d.loss_scale if d.loss_scale != 1.0 else vloss).backward()
        if hp.get("max_grad_norm"):
            D.clip_grad_norm(d, critic, float(hp["max_grad_norm"]))
        vopt.step()
        # policy loss (the caller backpropagates and steps)
        logp = token_logprobs(policy, b["input_ids"], b["attention_mask"], P, T)
        pg, st = ppo_clip_loss(logp, b["old_logp"], b["advantages"], cm, float(hp["clip"]), n)
        return pg, {**st, "value_loss": float(vf_loss.detach())}

    stats = run_steps(spec, hp, policy, opt, make_rollout, policy_loss, aux={"value": Aux(critic, vopt)}, d=d)
    finish(spec, policy, tok, d)
    return stats
