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
* :func:`sample_seeded` — the sampler of multi-process runs: every completion row draws
  from its OWN generator (seeded by the caller from the global row index), by the
  Gumbel-max trick, so the global set of rollouts does not depend on how rows are split
  over ranks; :func:`sample_share` runs it on this rank's share of the prompts, under FSDP
  either on the policy all-gathered once (``gather="full"``) or through FSDP2's per-layer
  all-gathers with every rank stepping until all are done (``gather="layer"``).

The step loop both algorithms share is :func:`rlsparsity.algorithms.steps.run_steps`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


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


class _GumbelRows:
    """Logits processor: ``scores / T + Gumbel noise``, the noise of row i drawn from its own
    generator; greedy decoding of the result is an exact sample from softmax(scores / T)."""

    def __init__(self, generators: list[torch.Generator], temperature: float):
        self.generators, self.temperature = generators, temperature

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        V = scores.shape[-1]
        e = torch.stack([torch.empty(V, device=scores.device, dtype=torch.float32).exponential_(generator=g)
                         for g in self.generators])
        return scores.float() / self.temperature - e.log()


@torch.no_grad()
def sample_seeded(model: Any, tokenizer: Any, prompts: list[str], n: int, max_new_tokens: int,
                  temperature: float, row_seeds: list[int], prompt_len: int,
                  synced_gpus: bool | None = None) -> Rollout:
    """As :func:`sample`, but row ``i`` (prompt ``i // n``) samples from ``torch.Generator``
    seeded with ``row_seeds[i]`` (Gumbel-max over ``logits / temperature``: the same
    distribution as ancestral sampling, not the same stream), prompts are left-padded to
    ``prompt_len`` and completions right-padded to ``max_new_tokens`` columns. A row's tokens
    depend only on its prompt and seed, so ranks that each sample a share of the prompts
    produce, together, the rows one process would (up to last-bit logit differences of a
    different batch size, which could flip a sample only at a near-tie). ``synced_gpus`` is
    passed to HF's ``generate`` unless None (HF's default: True for a module that torch's
    ``fully_shard`` manages, in a process group of more than one): True for a model whose
    forward is a collective (FSDP-sharded), where a rank whose rows have all ended keeps
    running forwards (outputs discarded, no tokens appended, its generators untouched) until
    every rank's rows have ended; False lets each rank stop on its own."""
    from transformers import GenerationConfig, LogitsProcessorList

    device = next(model.parameters()).device
    if len(row_seeds) != len(prompts) * n:
        raise ValueError(f"sample_seeded: {len(row_seeds)} seeds for {len(prompts)} prompts x {n} samples")
    enc = tokenizer(list(prompts), return_tensors="pt", padding="max_length", max_length=int(prompt_len),
                    add_special_tokens=False).to(device)
    if enc["input_ids"].shape[1] != prompt_len:
        raise ValueError(f"sample_seeded: a prompt is longer than prompt_len={prompt_len}")
    ids = enc["input_ids"].repeat_interleave(n, dim=0)
    att = enc["attention_mask"].repeat_interleave(n, dim=0)
    gens = [torch.Generator(device=device).manual_seed(int(s)) for s in row_seeds]
    gc = GenerationConfig(do_sample=False, max_new_tokens=int(max_new_tokens), pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    seq = model.generate(input_ids=ids, attention_mask=att, generation_config=gc,
                         logits_processor=LogitsProcessorList([_GumbelRows(gens, float(temperature))]),
                         **({} if synced_gpus is None else {"synced_gpus": bool(synced_gpus)}))
    comp = seq[:, prompt_len:]
    if comp.shape[1] < max_new_tokens:
        comp = torch.cat([comp, comp.new_full((comp.shape[0], max_new_tokens - comp.shape[1]),
                                              tokenizer.pad_token_id)], dim=1)
    cmask = completion_mask_from_ids(comp, tokenizer.eos_token_id)
    comp = torch.where(cmask.bool(), comp, torch.full_like(comp, tokenizer.pad_token_id))
    texts = tokenizer.batch_decode(comp, skip_special_tokens=True)
    group = torch.arange(len(prompts), device=device).repeat_interleave(n)
    return Rollout(torch.cat([ids, comp], dim=1), torch.cat([att, cmask.long()], dim=1), prompt_len, cmask, texts,
                   group)


def row_seed(base: int, row: int) -> int:
    """The generator seed of global rollout row ``row`` (a 63-bit mix of ``base`` and ``row``)."""
    return (int(base) * 0x9E3779B97F4A7C15 + (int(row) + 1) * 0xBF58476D1CE4E5B9) % (1 << 63)


def sample_share(d: Any, model: Any, tokenizer: Any, task: Any, entries: list[Any], n: int, max_new_tokens: int,
                 temperature: float, base_seed: int, gather: str = "full") -> tuple[Rollout, Tensor]:
    """This rank's share (:func:`distributed.chunk`) of the global prompts ``entries``, ``n``
    samples each, by :func:`sample_seeded` (row seeds from the GLOBAL row index, prompts padded
    to the longest GLOBAL prompt), and the task's scores of those rows.

    Under FSDP, ``gather`` (the ``rollout_gather`` hparam) picks how the sharded policy
    generates: ``"full"`` all-gathers the whole policy once (:func:`distributed.full_params`;
    no collective per decoding step, but a full compute-dtype copy of the policy on every
    GPU); ``"layer"`` calls ``generate`` on the sharded model, so FSDP2 all-gathers each layer
    inside every forward (only the layer being computed, and the next, unsharded at a time,
    besides the root's embeddings and head; the whole policy is all-gathered once per
    decoding step) and ``synced_gpus`` keeps every rank stepping until all are done. The
    gathered parameters are the same values either way, so are the rollouts. ``"full"`` passes
    ``synced_gpus=False`` (HF would otherwise sync an FSDP-managed module: an all-reduce and,
    on a rank done early, wasted forwards every step, which the gathered model does not need).
    Without FSDP (one process, DDP) both are the same call on the plain model, HF's default."""
    from rlsparsity.algorithms.distributed import chunk, full_params

    prompts = [task.prompt(e, tokenizer) for e in entries]
    P = max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    lo, hi = chunk(len(prompts), d.rank, d.world)
    if hi <= lo:
        raise ValueError(f"{len(prompts)} prompts per rollout cannot be shared by {d.world} processes")
    seeds = [row_seed(base_seed, r) for r in range(lo * n, hi * n)]
    if gather == "layer" and d.strategy == "fsdp":
        ro = sample_seeded(model, tokenizer, prompts[lo:hi], n, max_new_tokens, temperature, seeds, P,
                           synced_gpus=True)
    else:
        with full_params(d, model) as gen_model:
            ro = sample_seeded(gen_model, tokenizer, prompts[lo:hi], n, max_new_tokens, temperature, seeds, P,
                               synced_gpus=False if d.strategy == "fsdp" else None)
    scores = torch.tensor([float(task.score(c, entries[lo + g])) for c, g in zip(ro.completions, ro.group.tolist(),
                                                                                  strict=True)],
                          device=ro.input_ids.device)
    return ro, scores


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


def token_mean(x: Tensor, mask: Tensor, count: Tensor | None = None) -> Tensor:
    """:func:`masked_mean` when ``count`` is None; else Σ x·mask / ``count`` — this rank's
    share of a mean over a batch split across ranks (``count`` = the GLOBAL mask sum)."""
    if count is None:
        return masked_mean(x, mask)
    return (x * mask.to(x.dtype)).sum() / count.to(x.dtype).clamp(min=1.0)


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
                  clip: float, count: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Token-mean of max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)), ρ = exp(log π − log π_old) (this rank's
    share of it, and of the statistics, when ``count`` is given: see :func:`token_mean`)."""
    ratio = torch.exp(logp - old_logp)
    l1 = -advantages * ratio
    l2 = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = token_mean(torch.maximum(l1, l2), mask, count)
    with torch.no_grad():
        clipfrac = token_mean((l2 > l1).float(), mask, count).item()
        approx_kl = token_mean(0.5 * (logp - old_logp) ** 2, mask, count).item()
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
