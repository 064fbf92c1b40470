"""The step loop PPO and PRIME share (:func:`run_steps`), single- or multi-process.

Rollout buffer → precomputed minibatch schedule (``epochs`` shuffled passes) → one policy
optimiser step per minibatch, gradient masking (subnetwork finetuning), checkpoint series,
resumable state (rollout buffer and schedule included, so a run resumed mid-rollout
continues bit-identically), ``stop_after`` interruption.

Multi-process (see :mod:`.distributed`): ``make_rollout`` returns the GLOBAL rollout buffer,
the same on every rank (each rank sampled and scored its share of the prompts, the rows
were gathered in global order). The schedule is drawn from a generator seeded from the
shared data RNG, so it is the same on every rank and for every world size; each global
minibatch is split over ranks by :func:`local_share` (contiguous rows, plus the GLOBAL
token and row counts the losses divide by); the engine sums the gradients; logged
statistics are summed over ranks (each rank returns its share of every mean). Rank 0
alone writes: the checkpoint series and the resume state (full, unsharded state dicts:
world-size independent), progress lines and the final model.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rlsparsity.algorithms import distributed as D
from rlsparsity.algorithms.checkpointing import (
    ResumeError,
    fingerprint,
    finish_run,
    read_state,
    save_series_weights,
    start_fresh,
    start_resumed,
    write_state,
)
from rlsparsity.algorithms.common import (
    Interrupted,
    TrainSpec,
    apply_mask_to_grads,
    checkpoint_path,
    load_resume_state,
    restore_masked,
    resume_state_path,
    rng_state,
    save_checkpoint_weights,
    save_resume_state,
    set_rng_state,
)
from rlsparsity.algorithms.rollout import select, trim
from rlsparsity.modeling import snap_to_bf16, state_dict_for_save

# what makes a multi-process run's resume state different from a single-process one's
DIST_FINGERPRINT = {"rollouts": "per-row seeded, global buffer, full state dicts"}


@dataclass
class Aux:
    """A model the algorithm trains besides the policy (value model, PRM): saved in the
    resume state, never in the output folder."""

    model: Any
    optimizer: Any


def checkpointed(model: Any, on: bool) -> Any:
    """Activation checkpointing of every decoder layer (``hparams.gradient_checkpointing``):
    torch's own ``checkpoint_wrapper`` (non-reentrant) around each module whose class the model
    lists in ``_no_split_modules``, applied before sharding, as in torch's FSDP examples. Unlike
    HF's ``gradient_checkpointing_enable`` it does not depend on ``model.training`` (these loops
    keep models in eval mode: no dropout). The layer's forward is recomputed in backward with
    the same inputs, so gradients are unchanged; parameter names are unchanged (the wrapper's
    state-dict hooks strip its prefix)."""
    if not on:
        return model
    import functools

    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )

    names = set(getattr(model, "_no_split_modules", None) or [])
    if not names:
        raise ValueError(f"gradient_checkpointing: {type(model).__name__} names no decoder layer class")
    apply_activation_checkpointing(
        model, checkpoint_wrapper_fn=functools.partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
        check_fn=lambda m: type(m).__name__ in names)
    return model


def adamw(params: Any, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999),
          eps: float = 1e-8) -> torch.optim.AdamW:
    # foreach=False: one code path whatever the dtype (bf16 params keep bf16 state)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, foreach=False)


def finish(spec: TrainSpec, policy: Any, tokenizer: Any, d: D.Dist | None = None) -> None:
    """Save the final policy in the run's storage precision (rank 0, from the gathered full
    state when distributed), then drop the resume state."""
    from rlsparsity.modeling import save_model

    d = d or D.Dist()
    if not d.active:
        save_model(policy, tokenizer, spec.out_dir, spec.precision)
        finish_run(spec.out_dir)
        return
    msd, _ = D.full_state(d, policy)
    if d.main:
        save_model(D.model_for_save(policy, msd), tokenizer, spec.out_dir, spec.precision)
        finish_run(spec.out_dir)
    D.barrier(d)


def log_step(spec: TrainSpec, h: dict[str, Any], seconds: float) -> None:
    """One progress line per policy step (the log of a ppo/prime run, like TRL's per-step lines)."""
    def f(k: str) -> str:
        v = h.get(k)
        return "nan" if v is None else f"{float(v):.4g}"

    print(f"[{spec.run.algorithm}] step {h['step']}/{spec.steps} loss {f('loss')} reward_mean {f('reward_mean')} "
          f"kl {f('kl')} grad_norm {f('grad_norm')} {seconds:.3f} s/step", flush=True)


def local_share(d: D.Dist, batch: dict[str, Any]) -> dict[str, Any]:
    """This rank's rows of a global minibatch (:func:`distributed.chunk`), with ``token_count``
    (the GLOBAL completion-token count), ``row_count`` (global rows) and ``row_weight`` (1
    per real row). A rank left without rows gets one row with zero masks and weight, so it
    still runs the forward/backward every rank must run, contributing exactly 0."""
    n = batch["input_ids"].shape[0]
    cm = batch["completion_mask"]
    lo, hi = D.chunk(n, d.rank, d.world)
    dev = cm.device
    if hi > lo:
        local = select(batch, torch.arange(lo, hi, device=dev))
        weight = torch.ones(hi - lo, dtype=cm.dtype, device=dev)
    else:
        local = select(batch, torch.arange(0, 1, device=dev))
        local["completion_mask"] = torch.zeros_like(local["completion_mask"])
        weight = torch.zeros(1, dtype=cm.dtype, device=dev)
    return {**local, "token_count": cm.sum(), "row_count": torch.tensor(float(n), dtype=cm.dtype, device=dev),
            "row_weight": weight}


def sharded_forward(d: D.Dist, batch: dict[str, Any],
                    fn: Callable[[dict[str, Any]], dict[str, Tensor]]) -> dict[str, Tensor]:
    """``fn`` (per-row tensors of a batch) on this rank's chunk of the rows, gathered back in
    global row order on every rank; ``fn(batch)`` when not distributed. A rank without rows
    runs ``fn`` on one row (every rank must run the same forwards) and contributes nothing."""
    if not d.active:
        return fn(batch)
    n = batch["input_ids"].shape[0]
    lo, hi = D.chunk(n, d.rank, d.world)
    dev = batch["input_ids"].device
    out = fn(select(batch, torch.arange(lo, hi, device=dev) if hi > lo else torch.arange(0, 1, device=dev)))
    return D.gather_rows(d, out, hi - lo)


def _load_state(spec: TrainSpec, d: D.Dist) -> dict[str, Any] | None:
    """Every rank reads the same complete resume state (or none); then rank 0 clears what a
    fresh start or this resume point makes stale."""
    if not d.active:
        return load_resume_state(spec)
    path = resume_state_path(spec)
    state = read_state(path, fingerprint(spec, DIST_FINGERPRINT))
    step = int(state["step"]) if state is not None else -1
    if D.all_int(d, step, "max") != D.all_int(d, step, "min"):
        raise ResumeError(f"ranks read different resume states from {path}; delete {path.parent} to retrain")
    D.barrier(d)  # nobody clears before everyone has read
    if state is None:
        start_fresh(spec.out_dir, d.main)
    else:
        start_resumed(spec.out_dir, step, d.main)
    D.barrier(d)
    return state


def _save_state(spec: TrainSpec, d: D.Dist, policy: Any, optimizer: Any, step: int, extra: dict[str, Any],
                aux: dict[str, Aux]) -> None:
    """Checkpoint weights (storage dtype) and the resume state; full state dicts gathered to
    rank 0, which alone writes (same files and format as a single-process run)."""
    if not d.active:
        save_checkpoint_weights(policy, spec, step)
        save_resume_state(spec, policy, optimizer, step,
                          extra={**extra, "aux_optimizers": {k: a.optimizer.state_dict() for k, a in aux.items()}},
                          extra_models={k: a.model for k, a in aux.items()})
        return
    msd, osd = D.full_state(d, policy, optimizer)
    aux_sd = {k: D.full_state(d, a.model, a.optimizer) for k, a in aux.items()}
    if d.main:
        save_series_weights(state_dict_for_save(D.model_for_save(policy, msd), spec.precision),
                            checkpoint_path(spec.out_dir, step), spec.precision)
        state = {"step": step, "model": msd, "optimizer": osd, "rng": rng_state(),
                 "extra": {**extra, "aux_optimizers": {k: s[1] for k, s in aux_sd.items()}},
                 "extra_models": {k: s[0] for k, s in aux_sd.items()}}
        write_state(resume_state_path(spec), state, fingerprint(spec, DIST_FINGERPRINT))
    D.barrier(d)


def run_steps(spec: TrainSpec, hp: dict[str, Any], policy: Any, optimizer: Any,
              make_rollout: Callable[[random.Random], tuple[dict[str, Any], dict[str, float]]],
              policy_loss: Callable[[dict[str, Any]], tuple[Tensor, dict[str, float]]],
              aux: dict[str, Aux] | None = None, d: D.Dist | None = None) -> dict[str, Any]:
    """Train ``policy`` for ``spec.steps`` optimiser steps; returns the stats dict.

    Each rollout buffer (``make_rollout(data_rng)`` → (tensors, rollout stats)) is used for
    ``hp["epochs"]`` passes, each a fresh random permutation of its rows cut into minibatches
    of ``hp["minibatch_size"]`` rows; every minibatch is ONE policy optimiser step (a spec
    step). A new rollout is drawn when the schedule is exhausted, so the last rollout may be
    used only partly. ``policy_loss(minibatch)`` may also step auxiliary models; when
    distributed it gets :func:`local_share` of the minibatch and returns this rank's share of
    the loss and of every statistic (they are summed over ranks)."""
    aux = aux or {}
    d = d or D.Dist()
    named_model = D.unwrap(policy)
    mask = spec.mask
    frozen = None
    if mask is not None:
        named = dict(named_model.named_parameters())
        unknown = sorted(set(mask) - set(named))
        if unknown:
            raise KeyError(f"mask names not in the model: {unknown[:5]}")
        frozen = {k: named[k].detach().clone() for k in mask}
        mask = {k: D.like_param(named[k], v.to(named[k].device).bool()) for k, v in mask.items()}

    data_rng = random.Random(spec.seed)
    step, cursor = 0, 0
    buffer: dict[str, Any] | None = None
    rstats: dict[str, float] = {}
    schedule: list[Tensor] = []
    history: list[dict[str, Any]] = []
    resumed_from: str | None = None
    state = _load_state(spec, d)
    if state is not None:
        resumed_from = f"{resume_state_path(spec)}@step-{state['step']:06d}"
        ex = state["extra"]
        if d.active:
            D.load_full_state(d, policy, optimizer, state["model"], state["optimizer"])
            for name, a in aux.items():
                D.load_full_state(d, a.model, a.optimizer, state["extra_models"][name], ex["aux_optimizers"][name])
        else:
            policy.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            for name, a in aux.items():
                a.model.load_state_dict(state["extra_models"][name])
                a.optimizer.load_state_dict(ex["aux_optimizers"][name])
        step, cursor, buffer, rstats = state["step"], ex["cursor"], ex["buffer"], ex["rollout_stats"]
        # the state is loaded onto the CPU: the rollout buffer goes back to the policy's device
        dev = torch.device(d.device) if d.active else next(policy.parameters()).device
        buffer = {k: (v.to(dev) if isinstance(v, Tensor) else v) for k, v in buffer.items()} if buffer else buffer
        schedule, history = ex["schedule"], ex["history"]
        data_rng.setstate(ex["data_rng"])
        set_rng_state(state["rng"])

    epochs, mb = int(hp["epochs"]), int(hp["minibatch_size"])
    max_norm = hp.get("max_grad_norm")
    start_step, t0 = step, time.perf_counter()
    if resumed_from and d.main:
        print(f"[{spec.run.algorithm}] resumed from {resumed_from}", flush=True)
    policy.eval()  # no dropout: log-probs of the update match those of the rollout
    while step < spec.steps:
        t_step = time.perf_counter()
        if buffer is None or cursor >= len(schedule):
            buffer, rstats = make_rollout(data_rng)
            B = buffer["input_ids"].shape[0]
            if d.active:  # the same schedule on every rank, whatever the world size
                g = torch.Generator().manual_seed(data_rng.getrandbits(63))
                schedule = [perm[i:i + mb] for _ in range(epochs) for perm in [torch.randperm(B, generator=g)]
                            for i in range(0, B, mb)]
            else:
                schedule = [perm[i:i + mb] for _ in range(epochs) for perm in [torch.randperm(B)]
                            for i in range(0, B, mb)]
            cursor = 0
        batch = trim(select(buffer, schedule[cursor]))
        if d.active:
            batch = local_share(d, batch)
        cursor += 1
        optimizer.zero_grad(set_to_none=True)
        loss, lstats = policy_loss(batch)
        (loss * d.loss_scale if d.loss_scale != 1.0 else loss).backward()
        apply_mask_to_grads(named_model, mask)
        grad_norm = float("nan")
        if max_norm:
            grad_norm = D.clip_grad_norm(d, policy, float(max_norm))
        optimizer.step()
        snap_to_bf16(policy, spec.precision)
        restore_masked(named_model, mask, frozen)
        step += 1
        summed = D.all_sum(d, {"loss": float(loss.detach()), **lstats})
        loss_value = summed.pop("loss")
        lstats = {k: summed[k] for k in lstats}
        history.append({"step": step, "loss": loss_value, **rstats, **lstats, "grad_norm": grad_norm})
        if d.main:
            log_step(spec, history[-1], time.perf_counter() - t_step)
        if step % spec.checkpoint_every == 0:
            _save_state(spec, d, policy, optimizer, step,
                        {"cursor": cursor, "buffer": buffer, "rollout_stats": rstats, "schedule": schedule,
                         "history": history, "data_rng": data_rng.getstate()}, aux)
        if spec.stop_after is not None and step >= spec.stop_after and step < spec.steps:
            raise Interrupted(f"stopped after step {step} (stop_after={spec.stop_after})")
    done = step - start_step
    spent = time.perf_counter() - t0
    return {"steps": step, "seconds_per_step": spent / done if done else float("nan"), "history": history,
            "hparams": dict(hp), "resumed_from": resumed_from,
            "sharding": d.strategy if d is not None else "none",  # run.json: fsdp | ddp | none
            "fsdp_units": d.units if d is not None and d.strategy == "fsdp" else None}
