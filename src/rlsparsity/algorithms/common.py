"""What every training algorithm shares: the run spec, precision, checkpoint series,
resumable state, masks (subnetwork finetuning) and run.json provenance.

An algorithm is a function ``train(spec: TrainSpec) -> dict`` that trains
``spec.base_dir`` for ``spec.steps`` optimiser steps and leaves in ``spec.out_dir``:

* the final model saved with :func:`rlsparsity.modeling.save_model` in the run's precision,
* ``checkpoints/step-NNNNNN/model.safetensors`` every ``spec.checkpoint_every`` steps
  (weights only, storage precision; see :func:`save_checkpoint_weights`),
* whatever it needs to resume under ``resume/`` (deleted when the run completes); resume
  points are complete or absent and belong to one config (see :mod:`.checkpointing`).

It returns a dict of training statistics (``steps``, ``seconds_per_step``, per-step
``history`` with loss / reward ...). The caller (:mod:`rlsparsity.train`) evaluates before
and after, and writes ``run.json``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlsparsity.algorithms.checkpointing import (
    STATE_FILE,
    fingerprint,
    read_state,
    start_fresh,
    start_resumed,
    write_state,
)
from rlsparsity.grid import Run
from rlsparsity.tasks import Task


@dataclass
class TrainSpec:
    run: Run                      # family, algorithm, data, precision, seed
    base_dir: Path                # HF folder of the base model (bf16 storage)
    out_dir: Path                 # run folder
    task: Task
    steps: int = 20
    checkpoint_every: int = 5
    hparams: dict[str, Any] = field(default_factory=dict)  # algorithm defaults merged with config overrides
    mask: dict[str, Any] | None = None  # name -> bool tensor: only True entries may move (None: all)
    device: str = "cpu"
    stop_after: int | None = None  # testing hook: stop (as if killed) after this many steps
    samples: tuple[Path, ...] = ()  # on-policy preference sample files (rlsparsity.samples); () = draw here
    fsdp_units: str = "block"  # the family's FSDP2 units under FSDP: block | sublayer (distributed.unit_classes)

    @property
    def precision(self) -> str:
        return self.run.precision

    @property
    def seed(self) -> int:
        return self.run.seed


TrainFn = Callable[[TrainSpec], dict[str, Any]]


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def check_choices(hp: dict[str, Any], choices: dict[str, tuple[str, ...]], algorithm: str) -> None:
    """Every hparam of ``choices`` (an algorithm module's ``CHOICES``) has one of its allowed
    values, else a one-line :class:`~rlsparsity.config.ConfigError` naming the bad value (the
    config check, :mod:`rlsparsity.config_validate`, reads the same ``CHOICES``)."""
    from rlsparsity.config import ConfigError

    for key, allowed in choices.items():
        if hp.get(key) not in allowed:
            raise ConfigError(f"{algorithm}: {key}={hp.get(key)!r} is not one of "
                              f"{', '.join(repr(a) for a in allowed)}")


def checkpoint_path(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step-{step:06d}" / "model.safetensors"


def save_checkpoint_weights(model: Any, spec: TrainSpec, step: int) -> None:
    """Weights at ``step`` in storage precision, for the dynamics analysis (atomic)."""
    from rlsparsity.algorithms.checkpointing import save_series_weights
    from rlsparsity.modeling import state_dict_for_save

    save_series_weights(state_dict_for_save(model, spec.precision), checkpoint_path(spec.out_dir, step),
                        spec.precision)


class Interrupted(RuntimeError):
    """Raised by a trainer when ``spec.stop_after`` is reached (simulates a kill)."""


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # sampling on CUDA draws from these
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_state_path(spec: TrainSpec) -> Path:
    return Path(spec.out_dir) / "resume" / STATE_FILE


def save_resume_state(spec: TrainSpec, model: Any, optimizer: Any, step: int,
                      extra: dict[str, Any] | None = None, extra_models: dict[str, Any] | None = None) -> None:
    """Everything needed to continue bit-identically: weights in the training dtype,
    optimiser state, RNG states, step, and any extra (e.g. value head, PRM). One
    safetensors file (no pickle), written atomically, tagged with the config fingerprint."""
    state = {
        "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "rng": rng_state(), "extra": extra or {},
        "extra_models": {k: m.state_dict() for k, m in (extra_models or {}).items()},
    }
    write_state(resume_state_path(spec), state, fingerprint(spec))


def load_resume_state(spec: TrainSpec) -> dict[str, Any] | None:
    """The complete resume state of this run's config, or None. On None the run starts
    fresh: ``resume/`` and the whole weight series are cleared; on a resume from step s the
    series after s is cleared (those steps are made again)."""
    state = read_state(resume_state_path(spec), fingerprint(spec))
    if state is None:
        start_fresh(spec.out_dir)
        return None
    start_resumed(spec.out_dir, int(state["step"]))
    return state


def apply_mask_to_grads(model: Any, mask: dict[str, Any] | None) -> None:
    """Zero gradients of entries outside the mask (call after backward)."""
    if mask is None:
        return
    for name, p in model.named_parameters():
        if p.grad is not None and name in mask:
            p.grad.mul_(mask[name].to(p.grad.dtype))


def restore_masked(model: Any, mask: dict[str, Any] | None, frozen: dict[str, Any] | None) -> None:
    """After the optimiser step, put masked-out entries back to their base values, so
    neither weight decay nor Adam momentum can move them."""
    if mask is None or frozen is None:
        return
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in mask:
                p.copy_(torch.where(mask[name], p, frozen[name]))
