"""Algorithms that TRL 1.16 implements: grpo, rloo, dpo, kto, orpo, simpo, sft.

Each wrapper only builds the data and config and hands over to the TRL trainer; what is
ours is the precision handling, the weight-checkpoint series, exact resume and the
optional update mask. Precision: ``bf16`` loads the parameters in bf16 with TRL's
``bf16=False`` (no autocast), so parameters, gradients and AdamW updates are bf16;
``fp32``/``fp32-master`` train in fp32 (the latter is rounded to bf16 when saved).

* grpo  - GRPOTrainer: group-relative advantages from the task reward, no value model.
          ``steps_per_generation`` k (hparam, default TRL's 1): one generation of
          k x batch_size completions feeds k optimiser steps (cheap steps on a GPU).
* rloo  - RLOOTrainer: REINFORCE with leave-one-out baselines.
* dpo   - DPOTrainer (sigmoid loss) on preference pairs.
* kto   - KTOTrainer on unpaired good/bad completions.
* orpo  - trl.experimental ORPOTrainer: NLL + odds-ratio penalty, no reference model.
* simpo - trl.experimental CPOTrainer with loss_type="simpo", cpo_alpha=0: length-
          normalised reward margin with target margin gamma, no reference model.
* sft   - SFTTrainer, loss on the completion only (the dense contrast).

Several processes (``accelerate launch``, config/accelerate/ddp.yaml or fsdp.yaml): the
configured ``batch_size`` stays the GLOBAL batch (each of N ranks takes batch_size / N rows,
and the Trainer averages the gradients), so a sharded run optimises the same objective as a
single-process one. Under FSDP (FSDP2, full shard) the weight series and the final model are
gathered into a full state dict on every rank (a collective) and written by rank 0 alone;
``fp32-master`` keeps fp32 sharded parameters and AdamW state and computes in fp32 (as on
one GPU; bf16 is only the stored model), ``bf16`` shards bf16 parameters, ``fp32`` stays fp32. The Trainer's own
resume checkpoints are FULL_STATE_DICT (rank 0 writes the model and optimiser; loaded with
``weights_only=True``), never DCP's pickled metadata.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlsparsity.algorithms.checkpointing import (
    ResumeError,
    fingerprint,
    finish_run,
    mark_complete,
    prune_trainer_checkpoints,
    save_delay_hook,
    trainer_resume_point,
)
from rlsparsity.algorithms.common import (
    Interrupted,
    TrainSpec,
    apply_mask_to_grads,
    restore_masked,
    save_checkpoint_weights,
    seed_everything,
)
from rlsparsity.modeling import load_model, load_tokenizer, max_new_tokens_for, save_model, snap_to_bf16

# Tiny-model defaults (bf16 main grid, 20 steps), chosen by a sweep over 4 families x 4 seeds
# scored on 1000 held-out problems (see README "Training"): batch 64 (grpo: 8 prompts x 8
# samples); the offline algorithms at lr 5e-5 (at 1e-4 dpo/kto lose accuracy once the
# updates are not rounded away, i.e. in fp32/fp32-master). Override per run in train.hparams.
_TINY_RL = dict(lr=1e-4, batch_size=64, num_generations=8, temperature=1.0, beta=0.0, weight_decay=0.0)
_TINY_PREF = dict(lr=5e-5, batch_size=64, beta=0.1, weight_decay=0.0, n_prompts=640, k=4, sample_temperature=1.0)

#: hyperparameters with a fixed set of values (config_validate reads this literal)
CHOICES: dict[str, tuple[str, ...]] = {"class_balance": ("balanced", "none")}

DEFAULTS: dict[str, dict[str, Any]] = {
    "grpo": dict(_TINY_RL, epsilon=0.2, epsilon_high=0.2, loss_type="dapo", top_entropy_quantile=1.0),
    "rloo": dict(_TINY_RL, beta=0.0),
    "dpo": dict(_TINY_PREF),
    "kto": dict(_TINY_PREF, class_balance="balanced"),  # preference.kto_class_weights
    "orpo": dict(_TINY_PREF, beta=0.1),
    "simpo": dict(_TINY_PREF, beta=2.0, simpo_gamma=0.5),
    "sft": dict(_TINY_PREF),
}


def world_size() -> int:
    """Processes of this run (``accelerate launch`` / torchrun set WORLD_SIZE; 1 otherwise)."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def fsdp_enabled() -> bool:
    """True under ``accelerate launch --config_file config/accelerate/fsdp.yaml``."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and world_size() > 1


def per_rank_batch(batch_size: int, n: int | None = None) -> int:
    """Rows per rank so that the global batch stays ``batch_size`` on ``n`` ranks."""
    n = world_size() if n is None else n
    if batch_size % n:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {n} training processes "
                         "(the configured batch is the global batch): change train.hparams or gpus")
    return batch_size // n


def gathered_state_dict(model: Any, precision: str, main: bool | None = None) -> dict[str, Any] | None:
    """The model's weights in the run's storage dtype as one full state dict on the main
    process (None on the others). For an FSDP-sharded model (DTensor parameters) this is a
    collective: every rank must call it; tied weights are stored once, as
    :func:`rlsparsity.modeling.state_dict_for_save` does for an unsharded model."""
    from rlsparsity.modeling import save_dtype, state_dict_for_save

    main = (int(os.environ.get("RANK", "0")) == 0) if main is None else main
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without torch.distributed
        DTensor = ()  # noqa: N806
    local = model.state_dict()
    if not any(isinstance(t, DTensor) for t in local.values()):
        return state_dict_for_save(model, precision) if main else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    first: dict[int, str] = {}
    drop = set()
    for name, t in model.named_parameters(remove_duplicate=False):  # a tied pair: one Parameter, two names
        if id(t) in first:
            drop.add(name)
        first.setdefault(id(t), name)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not main:
        return None
    dt = save_dtype(precision)
    return {n: t.detach().to("cpu", dt).contiguous() for n, t in full.items() if n not in drop}


def _callback(spec: TrainSpec, model: Any) -> Any:
    """Weight checkpoints every k steps, mask enforcement, simulated kill."""
    from transformers import TrainerCallback

    frozen = mask = None
    if spec.mask is not None and fsdp_enabled():
        raise ValueError("a masked (subnetwork) run cannot be FSDP-sharded: the mask is per full tensor; "
                         "run it on one GPU or with sharding: ddp")
    if spec.mask is not None:
        sd = dict(model.named_parameters())
        frozen = {n: sd[n].detach().clone() for n in spec.mask}
        mask = {n: m.to(sd[n].device).bool() for n, m in spec.mask.items()}  # on the parameters' device (CUDA)

    class _CB(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kw):  # after backward + clipping
            apply_mask_to_grads(model, mask)

        def on_optimizer_step(self, args, state, control, **kw):
            snap_to_bf16(model, spec.precision)
            restore_masked(model, mask, frozen)

        def on_step_end(self, args, state, control, **kw):
            if state.global_step % spec.checkpoint_every == 0:
                _save_series(model, spec, state.global_step, state.is_world_process_zero)
            # resume checkpoints exactly every checkpoint_every steps: transformers' DefaultFlowCallback
            # (which runs before this one) also asks for one at max_steps, which only a resume could
            # use and model.safetensors follows at once. Under FSDP it is the FULL optimiser state on
            # rank 0's disk (~12 bytes/param: 108 GB for the 9B fp32-master run, whose 128 GB host
            # disk it filled on 2 H200s)
            control.should_save = state.global_step % spec.checkpoint_every == 0

        def on_save(self, args, state, control, **kw):
            if spec.stop_after is not None and state.global_step >= spec.stop_after:
                raise Interrupted(f"stopped after step {state.global_step} (stop_after)")

    return _CB()


def _save_series(model: Any, spec: TrainSpec, step: int, main: bool) -> None:
    """Weights at ``step`` into the checkpoint series: rank 0 writes; under FSDP every rank
    takes part in the gather first."""
    from rlsparsity.algorithms.checkpointing import save_series_weights
    from rlsparsity.algorithms.common import checkpoint_path

    if not fsdp_enabled():
        if main:
            save_checkpoint_weights(model, spec, step)
        return
    sd = gathered_state_dict(model, spec.precision, main)
    if sd is not None:
        save_series_weights(sd, checkpoint_path(spec.out_dir, step), spec.precision)


def _save_final(model: Any, tok: Any, spec: TrainSpec, main: bool) -> None:
    """The run's model.safetensors (+ config, tokenizer) in storage dtype, written by rank 0."""
    from rlsparsity.modeling import SAVE_DTYPES

    if not fsdp_enabled():
        if main:
            save_model(model, tok, spec.out_dir, spec.precision)
        return
    sd = gathered_state_dict(model, spec.precision, main)
    if sd is None:
        return
    from safetensors.torch import save_file

    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # the files save_pretrained writes, without calling it on the FSDP-wrapped module on one rank
    model.config.dtype = SAVE_DTYPES[spec.precision]
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(out)


# TRL configs whose trainers build the reference model themselves from model_init_kwargs
_BUILDS_REFERENCE = frozenset({"DPOConfig", "KTOConfig", "GRPOConfig", "RLOOConfig"})


def _args(cls: Any, spec: TrainSpec, hp: dict[str, Any], **extra: Any) -> Any:
    import torch

    # No autocast in any layout (bf16=False below): the run's precision is its compute precision,
    # on one GPU, under DDP and under FSDP alike (fp32-master = fp32 sharded weights, AdamW and
    # compute; bf16 only in the stored model), so sharding changes results only by reduction order.
    # Under FSDP, TRL builds the reference model (dpo, kto; grpo/rloo with beta > 0) itself with
    # device_map="auto" -- it resets device_map only for MULTI_GPU/DEEPSPEED, not FSDP -- so the
    # reference was spread over both GPUs with dispatch hooks and DPO failed on 2 H200s ("index is
    # on cuda:0, different from other tensors on cuda:1"). Put it whole on this rank's GPU (the
    # policy is already there), as on one GPU; TRL then shards it (prepare_fsdp). Only for the
    # trainers that build a reference from model_init_kwargs: CPOTrainer (simpo) and ORPOTrainer
    # raise "model is already instantiated" when model_init_kwargs is set with a model object --
    # orpo and simpo failed that way on both ranks of 2 H200s when this applied to every config.
    if fsdp_enabled() and str(spec.device).startswith("cuda") and cls.__name__ in _BUILDS_REFERENCE:
        extra = {"model_init_kwargs": {"device_map": {"": str(spec.device)}}, **extra}
    return cls(
        output_dir=str(Path(spec.out_dir) / "resume"), max_steps=spec.steps, learning_rate=hp["lr"],
        per_device_train_batch_size=per_rank_batch(hp["batch_size"]), gradient_accumulation_steps=1,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=hp["weight_decay"],
        max_grad_norm=hp.get("max_grad_norm", 1.0), seed=spec.seed, data_seed=spec.seed,
        # TRL turns activation checkpointing on by default: pure recompute cost for small models
        gradient_checkpointing=bool(hp.get("gradient_checkpointing", False)),
        bf16=False, fp16=False, use_cpu=spec.device == "cpu" or not torch.cuda.is_available(),
        # no save_total_limit: the previous checkpoint is deleted only once the new one is complete
        save_strategy="steps", save_steps=spec.checkpoint_every, save_total_limit=None,
        report_to="none", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
        **({"use_vllm": True, "vllm_mode": "colocate"} if hp.get("use_vllm") else {}),  # grpo/rloo only
        **extra,
    )


def _atomic_checkpoints(spec: TrainSpec, trainer: Any, fp: str) -> None:
    """Wrap the Trainer's ``_save_checkpoint``: after it has written ``checkpoint-N``, mark the
    folder complete (fsync, then ``complete.json`` with the config fingerprint), and only then
    delete the older checkpoints. A kill at any instant leaves a complete checkpoint to
    resume from (or none), never only an incomplete one."""
    save = trainer._save_checkpoint
    resume_dir = Path(spec.out_dir) / "resume"

    def _save_checkpoint(model: Any, trial: Any, *a: Any, **kw: Any) -> None:
        save(model, trial, *a, **kw)
        trainer.accelerator.wait_for_everyone()  # every rank has written its files (rng_state_<rank>.pth)
        if trainer.args.should_save:
            folder = resume_dir / f"checkpoint-{trainer.state.global_step}"
            mark_complete(folder, fp, trainer.state.global_step)
            prune_trainer_checkpoints(resume_dir, keep=folder)

    trainer._save_checkpoint = _save_checkpoint
    if os.environ.get("RLSPARSITY_TEST_SAVE_DELAY"):  # test hook: let a kill land mid-write of the Trainer's files
        inner = trainer._save_optimizer_and_scheduler

        def _slow(output_dir: str) -> None:
            inner(output_dir)
            save_delay_hook()

        trainer._save_optimizer_and_scheduler = _slow


def _run_trainer(spec: TrainSpec, trainer: Any, model: Any, tok: Any) -> dict[str, Any]:
    trainer.add_callback(_callback(spec, model))
    # FSDP's Trainer checkpoints (pytorch_model_fsdp.bin, optimizer.bin) differ from the plain
    # ones: a resume point belongs to one of the two layouts (any number of processes)
    fp = fingerprint(spec, {"trainer_checkpoint": "fsdp_full_state_dict"} if fsdp_enabled() else None)
    main = trainer.accelerator.is_main_process
    ckpt = trainer_resume_point(spec.out_dir, fp, main=main)  # complete and of this config, or None
    last = str(ckpt) if ckpt is not None else None
    trainer.accelerator.wait_for_everyone()  # rank 0 has cleared what is not resumed
    _atomic_checkpoints(spec, trainer, fp)
    t0 = time.time()
    try:
        trainer.train(resume_from_checkpoint=last)
    except pickle.UnpicklingError as e:  # the Trainer loads optimizer/scheduler/rng with weights_only=True
        if last is None:
            raise
        raise ResumeError(f"checkpoint {last} holds a file that is not a plain tensor file, refused to load it "
                          f"({str(e).splitlines()[0][:160]}); delete {Path(last).parent} to retrain") from e
    dt = time.time() - t0
    _save_final(model, tok, spec, main)  # one writer under accelerate launch (DDP/FSDP: after a gather)
    if main:
        finish_run(spec.out_dir)
    keep = ("loss", "reward", "rewards/reward/mean", "entropy", "rewards/margins", "rewards/accuracies",
            "grad_norm", "kl", "num_tokens")
    history = [{k: v for k, v in h.items() if k in keep or k == "step"} for h in trainer.state.log_history
               if "loss" in h]
    return {"steps": trainer.state.global_step, "seconds_per_step": dt / max(1, spec.steps),
            "resumed_from": last, "history": history, "processes": world_size(),
            "sharding": "fsdp" if fsdp_enabled() else ("ddp" if world_size() > 1 else "none"),
            "fsdp_units": spec.fsdp_units if fsdp_enabled() else None,
            "compute_dtype": "bfloat16" if getattr(trainer.args, "bf16", False) else None}


def _load(spec: TrainSpec) -> tuple[Any, Any]:
    seed_everything(spec.seed)
    model = load_model(spec.base_dir, spec.precision, spec.device)
    tok = load_tokenizer(spec.base_dir)
    _fsdp_units(spec, model)
    return model, tok


def _fsdp_units(spec: TrainSpec, model: Any) -> None:
    """Under FSDP with the family's ``fsdp_units: sublayer``: tell accelerate (which wraps the
    policy when the trainer prepares it) to make attention and MLP units too, through its own
    setting ``FSDP_TRANSFORMER_CLS_TO_WRAP`` (= ``fsdp_transformer_layer_cls_to_wrap``), read
    when the trainer builds its Accelerator. ``block`` leaves accelerate's default, the
    ``_no_split_modules`` blocks, or what the accelerate config names."""
    from rlsparsity.algorithms.distributed import check_units, unit_classes

    if check_units(spec.fsdp_units) == "sublayer" and fsdp_enabled():
        os.environ["FSDP_TRANSFORMER_CLS_TO_WRAP"] = ",".join(unit_classes(model, "sublayer"))


def _reference(spec: TrainSpec) -> Any | None:
    """dpo/kto's reference: under FSDP sharded per layer by us (``distributed.sharded_reference``;
    the DPOConfig is built first, so accelerate's process group exists), else None: TRL builds it."""
    if not fsdp_enabled():
        return None
    from rlsparsity.algorithms.distributed import sharded_reference

    return sharded_reference(spec.base_dir, spec.precision, spec.device, spec.fsdp_units)


def _reward_fn(spec: TrainSpec) -> Callable[..., list[float]]:
    task = spec.task

    def reward(prompts: list[str], completions: list[str], entry: list[str], **_: Any) -> list[float]:
        return task.rewards(completions, [json.loads(e) for e in entry])

    reward.__name__ = f"{task.name}_correct"
    return reward


def _online_dataset(spec: TrainSpec, tok: Any) -> Any:
    from datasets import Dataset

    rows = [{"prompt": spec.task.prompt(e, tok), "entry": json.dumps(e, default=list)} for e in spec.task.train]
    return Dataset.from_list(rows)


def train_grpo(spec: TrainSpec) -> dict[str, Any]:
    tr, model, tok, hp = grpo_trainer(spec)
    return {**_run_trainer(spec, tr, model, tok), "hparams": hp}


def grpo_trainer(spec: TrainSpec) -> tuple[Any, Any, Any, dict[str, Any]]:
    """The GRPOTrainer of ``train_grpo`` (model loaded, seeded), for benchmarks."""
    from trl import GRPOConfig, GRPOTrainer

    hp = {**DEFAULTS["grpo"], **spec.hparams}
    model, tok = _load(spec)
    args = _args(GRPOConfig, spec, hp, num_generations=hp["num_generations"],
                 max_completion_length=max_new_tokens_for(model, spec.task), temperature=hp["temperature"],
                 beta=hp["beta"], epsilon=hp["epsilon"], epsilon_high=hp["epsilon_high"],
                 loss_type=hp["loss_type"], top_entropy_quantile=hp["top_entropy_quantile"],
                 steps_per_generation=hp.get("steps_per_generation"))
    tr = GRPOTrainer(model=model, reward_funcs=_reward_fn(spec), args=args,
                     train_dataset=_online_dataset(spec, tok), processing_class=tok)
    return tr, model, tok, hp


def train_rloo(spec: TrainSpec) -> dict[str, Any]:
    from trl import RLOOConfig, RLOOTrainer

    hp = {**DEFAULTS["rloo"], **spec.hparams}
    model, tok = _load(spec)
    args = _args(RLOOConfig, spec, hp, num_generations=hp["num_generations"],
                 max_completion_length=max_new_tokens_for(model, spec.task), temperature=hp["temperature"],
                 beta=hp["beta"])
    tr = RLOOTrainer(model=model, reward_funcs=_reward_fn(spec), args=args,
                     train_dataset=_online_dataset(spec, tok), processing_class=tok)
    return {**_run_trainer(spec, tr, model, tok), "hparams": hp}


def _offline(spec: TrainSpec, name: str, kind: str,
             make: Callable[[Any, Any, Any, dict[str, Any]], Any]) -> dict[str, Any]:
    from datasets import Dataset

    from rlsparsity.preference import build_dataset

    hp = {**DEFAULTS[name], **spec.hparams}
    model, tok = _load(spec)
    drawn = None
    if spec.samples and spec.run.data == "on_policy":
        from rlsparsity.samples import find

        drawn = find(list(spec.samples), spec.run.family, spec.precision, spec.seed, hp["n_prompts"], hp["k"],
                     spec.task.name, temperature=hp["sample_temperature"])
    rows, stats = build_dataset(kind, spec.run.data, model, tok, spec.task, hp["n_prompts"], hp["k"], spec.seed,
                                drawn=drawn, temperature=hp["sample_temperature"])
    if kind == "unpaired":  # kto: class weights from the data's counts (recorded with the hparams)
        from rlsparsity.preference import kto_class_weights

        w = kto_class_weights(stats["n_desirable"], stats["n_undesirable"], hp["class_balance"])
        hp = {**hp, "desirable_weight": w[0], "undesirable_weight": w[1]}
    seed_everything(spec.seed)
    trainer = make(model, tok, Dataset.from_list(rows), hp)
    return {**_run_trainer(spec, trainer, model, tok), "hparams": hp, "data_stats": stats}


def train_dpo(spec: TrainSpec) -> dict[str, Any]:
    from trl import DPOConfig, DPOTrainer

    def make(model: Any, tok: Any, ds: Any, hp: dict[str, Any]) -> Any:
        args = _args(DPOConfig, spec, hp, beta=hp["beta"], max_length=256)
        return DPOTrainer(model=model, ref_model=_reference(spec), args=args, train_dataset=ds, processing_class=tok)

    return _offline(spec, "dpo", "pairs", make)


def train_kto(spec: TrainSpec) -> dict[str, Any]:
    from trl import KTOConfig, KTOTrainer

    def make(model: Any, tok: Any, ds: Any, hp: dict[str, Any]) -> Any:
        args = _args(KTOConfig, spec, hp, beta=hp["beta"], max_length=256,
                     desirable_weight=hp["desirable_weight"], undesirable_weight=hp["undesirable_weight"])
        return KTOTrainer(model=model, ref_model=_reference(spec), args=args, train_dataset=ds, processing_class=tok)

    return _offline(spec, "kto", "unpaired", make)


def train_orpo(spec: TrainSpec) -> dict[str, Any]:
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    def make(model: Any, tok: Any, ds: Any, hp: dict[str, Any]) -> Any:
        args = _args(ORPOConfig, spec, hp, beta=hp["beta"], max_length=256)
        return ORPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)

    return _offline(spec, "orpo", "pairs", make)


def train_simpo(spec: TrainSpec) -> dict[str, Any]:
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    def make(model: Any, tok: Any, ds: Any, hp: dict[str, Any]) -> Any:
        args = _args(CPOConfig, spec, hp, loss_type="simpo", cpo_alpha=0.0, beta=hp["beta"],
                     simpo_gamma=hp["simpo_gamma"], max_length=256)
        return CPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)

    return _offline(spec, "simpo", "pairs", make)


def train_sft(spec: TrainSpec) -> dict[str, Any]:
    from trl import SFTConfig, SFTTrainer

    def make(model: Any, tok: Any, ds: Any, hp: dict[str, Any]) -> Any:
        args = _args(SFTConfig, spec, hp, max_length=256, completion_only_loss=True)
        return SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)

    return _offline(spec, "sft", "sft", make)
