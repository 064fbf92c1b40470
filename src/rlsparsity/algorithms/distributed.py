"""Multi-process glue for the in-project on-policy algorithms (PPO, PRIME) on torch.distributed.

The engine is torch's own: FSDP2 (``torch.distributed.fsdp.fully_shard``) or DDP
(``DistributedDataParallel``), full state dicts through ``torch.distributed.checkpoint.state_dict``.
This module only decides which one, wraps the models and moves tensors between ranks.

* :func:`setup` — a run is *distributed* when it was started by ``torchrun`` or ``accelerate
  launch`` (``RANK`` and ``WORLD_SIZE`` in the environment, even with one process). It then
  joins the default process group (``nccl`` on CUDA, ``gloo`` on CPU) and picks the strategy:
  ``RLSPARSITY_SHARDING`` = ``fsdp`` | ``ddp`` if set; else, under ``accelerate launch``, FSDP
  when the accelerate config asks for it (``ACCELERATE_USE_FSDP=true``) and DDP otherwise;
  else (torchrun) FSDP. A plain ``python`` run is not distributed and every helper here is
  the identity, so the single-process path is exactly the code it was before.
* :func:`wrap` — FSDP: ``fully_shard`` on every FSDP unit (:func:`unit_classes`: the
  transformer blocks HF lists in ``_no_split_modules``, and with the family's ``fsdp_units:
  sublayer`` also each block's attention and MLP; resharded after each forward), then on the root. Gradients are
  reduce-scattered as plain SUMs (divide factor 1 plus ``set_force_sum_reduction_for_comms``;
  a divide factor alone makes FSDP2 reduce with PREMUL_SUM, which gloo lacks), so every loss
  is written as (local sum) / (GLOBAL count) and the summed gradient is the gradient of the
  global mean. DDP: a replica per rank, gradients AVERAGED by DDP, so
  :attr:`Dist.loss_scale` (= world size) multiplies each loss before ``backward``. Frozen
  models (references) are sharded under FSDP and plain replicas under DDP.
* :func:`chunk`, :func:`gather_rows`, :func:`all_sum` — the split of a global batch over
  ranks (contiguous, balanced, rank order), its reassembly in global row order, and sums.
* :func:`full_state`, :func:`load_full_state`, :func:`model_for_save` — full (unsharded)
  model and optimiser state dicts, gathered to rank 0 on the CPU (``full_state_dict=True,
  cpu_offload=True``), restored on every rank from the same full dicts; and an unsharded
  HF model on rank 0 carrying the gathered weights, so the existing savers write the same
  files as a single-process run.

FSDP2 works on CPU with gloo in torch 2.13 (its default averaging too; tested here with
the plain sums above): tests/test_distributed_ppo_prime.py runs it with 2 processes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

STRATEGIES = ("fsdp", "ddp")
#: the family's ``fsdp_units``: one FSDP2 unit per decoder block, or also one per large child of it
UNITS = ("block", "sublayer")
#: a child of a block with at least this share of the block's parameters is its own unit (sublayer)
SUBLAYER_SHARE = 0.1


@dataclass(frozen=True)
class Dist:
    """Where this process stands: ``strategy`` is ``none`` for a plain single-process run."""

    rank: int = 0
    world: int = 1
    strategy: str = "none"
    device: str = "cpu"
    units: str = "block"  # FSDP units (:data:`UNITS`), the family's ``fsdp_units``

    @property
    def active(self) -> bool:
        return self.strategy != "none"

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def loss_scale(self) -> float:
        """Factor for each loss before ``backward``: DDP averages gradients over ranks, FSDP
        (as set up by :func:`wrap`) sums them; our losses are local sums / global counts."""
        return float(self.world) if self.strategy == "ddp" else 1.0


_MESH: Any = None


def launched() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def choose_strategy() -> str:
    from rlsparsity.config import ConfigError

    s = os.environ.get("RLSPARSITY_SHARDING")
    if s:
        if s not in STRATEGIES:
            raise ConfigError(f"RLSPARSITY_SHARDING={s!r}: expected one of {', '.join(STRATEGIES)}")
        return s
    if "ACCELERATE_MIXED_PRECISION" in os.environ:  # started by accelerate launch
        return "fsdp" if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" else "ddp"
    return "fsdp"


def check_units(units: str) -> str:
    """``units`` if it is one of :data:`UNITS`, else the one-line error that names it."""
    if units not in UNITS:
        from rlsparsity.config import ConfigError

        raise ConfigError(f"unknown fsdp_units {units!r}: use one of {', '.join(UNITS)}")
    return units


def setup(device: str, units: str = "block") -> Dist:
    """Join the process group of a ``torchrun``/``accelerate launch`` run (once per process)."""
    global _MESH
    check_units(units)
    if not launched():
        return Dist(device=device, units=units)
    import torch.distributed as dist

    if str(device).startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
    strategy = choose_strategy()
    world = dist.get_world_size()
    if strategy == "fsdp" and _MESH is None:
        from torch.distributed.device_mesh import init_device_mesh

        _MESH = init_device_mesh(torch.device(device).type, (world,))
    return Dist(dist.get_rank(), world, strategy, device, units)


def check_share(d: Dist, n_prompts: int, algorithm: str) -> None:
    """Every rank must sample at least one prompt of each rollout (a one-line config error)."""
    from rlsparsity.config import ConfigError

    if d.active and n_prompts < d.world:
        raise ConfigError(f"{algorithm}: prompts_per_rollout={n_prompts} is less than the {d.world} processes "
                          "of this launch; every process samples a share of the prompts")


# --------------------------------------------------------------------------- models
def load_policy_like(d: Dist, folder: Any, precision: str) -> Any:
    """A causal LM for training/reference: :func:`modeling.load_model` (single process, DDP);
    under FSDP loaded on the CPU in the target device's training dtype (``fully_shard`` then
    moves each rank's shard to the device; the whole model is gathered there only while the
    policy generates with ``rollout_gather: full``, see :func:`full_params`)."""
    from rlsparsity.modeling import load_model, resolve_model, snap_to_bf16, train_dtype

    if d.strategy != "fsdp":
        return load_model(folder, precision, d.device)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model(folder), dtype=train_dtype(precision, d.device))
    snap_to_bf16(model, precision)
    return model


def sharded_reference(folder: Any, precision: str, device: str, units: str = "block") -> Any:
    """The frozen reference model of a TRL trainer (dpo, kto) under ``accelerate launch`` with
    FSDP: loaded as the policy is, then sharded per decoder layer by :func:`wrap`, so that a
    reference forward holds about two layers unsharded at a time. TRL's own ``prepare_fsdp``
    shards only the root under FSDP2, so each reference forward all-gathers the WHOLE model
    (on 2 H200s, 1B bf16: dpo's peak per rank 8.2 GB against sft's 4.3 GB, a memory ratio of
    0.85 to one GPU instead of 0.55). TRL leaves a model that is already an FSDP module as it is."""
    d = setup(device, units)
    ref = load_policy_like(d, folder, precision).eval().requires_grad_(False)
    return wrap(d, ref, trainable=False)


def _block_classes(model: nn.Module) -> set[str]:
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    return names


def _numel(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def unit_classes(model: nn.Module, units: str = "block") -> list[str]:
    """Class names of the modules that become FSDP2 units (before the root).

    ``block``: the decoder blocks (``_no_split_modules``), accelerate's default. Backward then
    holds about four blocks' worth of unsharded values at its peak: the block being
    differentiated (its gathered parameters and its full gradients), the next one prefetched,
    and the previous block's reduce-scatter input (benchmarks/fsdp/mem_sim.py).
    ``sublayer``: also every child of a block that holds at least :data:`SUBLAYER_SHARE` of its
    parameters, i.e. attention and MLP in HF's decoders (the norms stay in the block's unit).
    The same four buffers are then attention- or MLP-sized, about half as much in all, for one
    more all-gather and reduce-scatter per block. Only model classes qualify, never a plain
    ``torch.nn`` class (naming ``Linear`` would make every linear layer, lm_head too, a unit)."""
    blocks = _block_classes(model)
    names = set(blocks)
    if check_units(units) == "sublayer":
        for m in model.modules():
            if type(m).__name__ not in blocks:
                continue
            total = _numel(m)
            for c in m.children():
                if not type(c).__module__.startswith("torch.nn") and _numel(c) >= SUBLAYER_SHARE * total:
                    names.add(type(c).__name__)
    return sorted(names)


def wrap(d: Dist, model: nn.Module, trainable: bool = True) -> Any:
    """Shard (FSDP2) or replicate (DDP, trainable models only) ``model``; identity when not
    distributed. Build optimisers AFTER this call (FSDP replaces parameters by DTensors)."""
    if d.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        units = set(unit_classes(model, d.units))
        for m in reversed(list(model.modules())):  # children (attention, MLP) before their block
            if type(m).__name__ in units:
                fully_shard(m, mesh=_MESH, reshard_after_forward=True)
        # the root of a trained model stays gathered from forward to backward (FSDP2's default);
        # a frozen model's root reshards after its forward (there is no backward to free it)
        fully_shard(model, mesh=_MESH, reshard_after_forward=not trainable)
        model._rlsparsity_root_reshard = not trainable
        for m in model.modules():
            if hasattr(m, "set_gradient_divide_factor"):
                m.set_gradient_divide_factor(1.0)
                m.set_force_sum_reduction_for_comms(True)
        return model
    model = model.to(d.device)
    if d.strategy == "ddp" and trainable:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[torch.device(d.device).index] if d.device != "cpu" else None)
    return model


def unwrap(model: Any) -> Any:
    """The module whose parameter names are the HF ones (DDP's ``.module``; FSDP2 keeps names)."""
    return getattr(model, "module", model)


@contextlib.contextmanager
def full_params(d: Dist, model: Any) -> Iterator[Any]:
    """The model to call ``generate`` on. Under FSDP every shard is all-gathered ONCE and kept
    unsharded until the block ends (no collective per decoding step, so ranks may stop
    generating at different lengths: ``generate(synced_gpus=False)``, see
    :func:`rollout.sample_share`); then resharded."""
    if d.strategy != "fsdp":
        yield unwrap(model)
        return
    from torch.distributed.fsdp import FSDPModule

    mods = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in mods:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield model
    finally:
        for m in mods:
            m.reshard()
            m.set_reshard_after_forward(getattr(m, "_rlsparsity_root_reshard", True), recurse=False)


def to_float(t: Any) -> float:
    """A scalar tensor (a replicated DTensor included) as a Python float."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return float(t)


def clip_grad_norm(d: Dist, model: Any, max_norm: float) -> float:
    """``clip_grad_norm_`` over the model's (possibly sharded) gradients: the GLOBAL norm."""
    return to_float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))


def like_param(param: Any, full: Tensor) -> Any:
    """``full`` (a whole-parameter tensor, e.g. an update mask) laid out like ``param``: under
    FSDP the rank's shard as a DTensor (sliced locally, no communication); else ``full``."""
    if hasattr(param, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(param.device_mesh.device_type), param.device_mesh, param.placements,
                                 src_data_rank=None)
    return full


# --------------------------------------------------------------------------- batches across ranks
def chunk(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of ``n`` that rank ``rank`` owns: contiguous, in rank order, sizes
    differing by at most one (the first ``n % world`` ranks get one more)."""
    q, r = divmod(n, world)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (1 if rank < r else 0)


def barrier(d: Dist) -> None:
    if d.active:
        import torch.distributed as dist

        dist.barrier()


def all_sum(d: Dist, values: dict[str, float]) -> dict[str, float]:
    """Each key summed over ranks (float64 on the wire); identity when not distributed."""
    if not d.active or not values:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_comm_device(d))
    dist.all_reduce(t)
    return {k: float(v) for k, v in zip(keys, t.tolist(), strict=True)}


def all_int(d: Dist, value: int, op: str = "max") -> int:
    """The max (or min) of an integer over ranks."""
    if not d.active:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.int64, device=_comm_device(d))
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.MIN)
    return int(t.item())


def _comm_device(d: Dist) -> torch.device:
    return torch.device(d.device) if str(d.device).startswith("cuda") else torch.device("cpu")


def gather_rows(d: Dist, tensors: dict[str, Tensor], count: int) -> dict[str, Tensor]:
    """Concatenate each rank's first ``count`` rows of every tensor, in rank order (so a batch
    split with :func:`chunk` comes back in its global row order, bit for bit). Trailing
    dimensions must agree across ranks; rows are padded to the largest count for the
    ``all_gather`` and the padding dropped."""
    if not d.active:
        return {k: v[:count] for k, v in tensors.items()}
    import torch.distributed as dist

    dev = _comm_device(d)
    counts = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(d.world)]
    dist.all_gather(counts, torch.tensor([count], dtype=torch.int64, device=dev))
    n = [int(c.item()) for c in counts]
    top = max(n)
    out = {}
    for k in sorted(tensors):
        v = tensors[k][:count].to(dev)
        pad = torch.zeros((top - v.shape[0], *v.shape[1:]), dtype=v.dtype, device=dev)
        parts = [torch.empty_like(torch.cat([v, pad])) for _ in range(d.world)]
        dist.all_gather(parts, torch.cat([v, pad]).contiguous())
        out[k] = torch.cat([p[:c] for p, c in zip(parts, n, strict=True)]).to(tensors[k].device)
    return out


# --------------------------------------------------------------------------- full state dicts
def full_state(d: Dist, model: Any, optimizer: Any | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Full model (and optimiser) state dicts, parameter-name keyed, on rank 0's CPU (other
    ranks get empty dicts). Collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if optimizer is None:
        return get_model_state_dict(model, options=opts), {}
    msd, osd = get_state_dict(model, optimizer, options=opts)
    return msd, osd


def load_full_state(d: Dist, model: Any, optimizer: Any | None, msd: dict[str, Any],
                    osd: dict[str, Any] | None) -> None:
    """Load full dicts (as :func:`full_state` made them) on every rank; each keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

    opts = StateDictOptions(full_state_dict=True)
    if optimizer is None:
        set_model_state_dict(model, msd, options=opts)
    else:
        set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict=osd or {}, options=opts)


def model_for_save(model: Any, msd: dict[str, Any]) -> Any:
    """An unsharded copy of the HF model ``model`` holding the gathered weights ``msd`` (rank
    0): built on the meta device, weights assigned (no copy), tied weights re-tied — what
    :func:`modeling.save_model` and the checkpoint series expect."""
    from transformers import AutoModelForCausalLM

    hf = unwrap(model)
    with torch.device("meta"):
        skel = AutoModelForCausalLM.from_config(hf.config)
    skel.load_state_dict(msd, strict=True, assign=True)
    skel.tie_weights()
    return skel
